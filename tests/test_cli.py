import json
import os

import pytest

from flows.cli import main
from supergen.outputs import read_mp4


def test_render_writes_every_output(tmp_path, capsys):
    out = tmp_path / "r"
    rc = main(["render", "--prompt", "a red circle moving", "--width", "128", "--height", "96", "--frames", "5",
               "--steps", "4", "--refine-steps", "2", "--seed", "3", "--out", str(out), "--quiet"])
    assert rc == 0
    assert capsys.readouterr().out.strip() == f"file://{out}/video.mp4"
    video, sketch = read_mp4(str(out / "video.mp4")), read_mp4(str(out / "sketch.mp4"))
    assert video.shape == (5, 96, 128, 3) and sketch.shape[0] == 5 and sketch.shape[2] < 128
    from PIL import Image

    with Image.open(out / "contact_sheet.png") as im:
        assert im.size[1] == 2 * 96
    rec = json.loads((out / "render.json").read_text())
    assert rec["spec"]["seed"] == 3 and rec["seed"] == 3 and rec["spec"]["width"] == 128
    # the world preset at half the schedule refined clamps the windows: 3x3 of them once shifted, not 2x2
    assert rec["spec"]["boundary"] == "clamp" and rec["tiles_per_step"] == [9, 9]
    assert rec["forwards"] == {"sketch": 8, "refine": 36}  # two CFG branches a tile
    assert set(rec["timings_s"]) == {"load", "sketch", "upscale", "refine", "decode"}
    assert {"torch", "diffusers", "supergen"} <= set(rec["versions"])


@pytest.mark.parametrize("args,field", [
    (["--width", "101"], "width"),
    (["--frames", "6"], "frames"),
    (["--tile", "40x8"], "tile"),
    (["--model", "/does/not/exist"], "model"),
    (["--refine-steps", "9", "--steps", "4"], "refine_steps"),
])
def test_bad_input_fails_early_and_writes_nothing(args, field, tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["render", "--prompt", "x", "--out", str(out), "--quiet", *args]) == 2
    err = capsys.readouterr().err
    assert f"`{field}`" in err and "error" in err
    assert not out.exists()


def test_spec_errors_come_before_weights_load(tiny_dir, tmp_path):
    """A folder whose weights are unreadable still gets the spec error, not a load error: proof that the
    spec is checked against configs alone."""
    import supergen
    from conftest import broken_copy

    broken = broken_copy(tiny_dir("wan-t2v"), tmp_path / "broken")
    with pytest.raises(supergen.SpecError, match="`frames`"):  # not 1 + a multiple of the VAE's time factor
        supergen.render(supergen.RenderSpec(prompt="x", model=str(broken), frames=6))
    with pytest.raises(supergen.BackendError, match="loading"):
        supergen.render(supergen.RenderSpec(prompt="x", model=str(broken), width=128, height=128, frames=5,
                                            steps=2))


def test_help_documents_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["render", "--help"])
    text = capsys.readouterr().out
    for opt in ("--prompt", "--width", "--height", "--frames", "--steps", "--refine-steps", "--guidance", "--seed",
                "--model", "--tile", "--out", "--quiet", "--boundary", "--shift-every"):
        assert opt in text
    flat = " ".join(text.split())  # argparse wraps the help to the terminal's width
    assert "[default: the model's measured preset" in flat and "[default: world]" in flat


def test_the_experts_note_comes_from_the_configs_before_weights_load(tiny_dir, tmp_path, capsys):
    """Wan 2.2's two experts: the user is told where the refinement starts against the switch, from the
    configs alone (this folder's weights are unreadable, so the note precedes the load's failure)."""
    from conftest import broken_copy

    broken = broken_copy(tiny_dir("wan22-t2v"), tmp_path / "broken")
    rc = main(["render", "--prompt", "x", "--model", str(broken), "--width", "128", "--height", "128", "--frames",
               "5", "--steps", "20", "--refine-steps", "18", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert rc != 0 and "loading" in err
    assert "note: the experts switch at step 6 of 20" in err and "first 4 steps run the high-noise expert" in err
