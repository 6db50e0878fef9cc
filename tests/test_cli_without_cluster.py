"""The base install is enough for everything in process: `supergen render`, `inspect`, `compare` and
`quality` run in a Python that cannot import the `cluster` extra (nor s3fs), and the commands that need a
cluster say which extra to install, before anything is written."""

import subprocess
import sys

import pytest

ABSENT = ("prefect", "prefect_dask", "dask", "distributed", "bokeh", "fastapi", "sqlalchemy", "s3fs")
# A Python in which importing any of ABSENT fails as it does where the package is not installed.
BOOT = f"""
import sys


class Absent:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {ABSENT!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)


sys.meta_path.insert(0, Absent())
from flows.cli import main

sys.exit(main(sys.argv[1:]))
"""
TINY = ["--model", "tiny", "--prompt", "a red circle moving", "--width", "128", "--height", "128", "--frames", "5",
        "--steps", "4", "--refine-steps", "2", "--seed", "3"]
HINT = "pip install 'supergen[cluster]'"


def without_cluster(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BOOT, *argv], capture_output=True, text=True, timeout=300)


def test_in_process_commands_need_no_cluster_extra(tmp_path):
    out = tmp_path / "r"
    r = without_cluster("render", *TINY, "--out", str(out), "--quiet")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"file://{out}/video.mp4"
    for argv in (["inspect", str(out)], ["compare", str(out), str(out)],
                 ["quality", str(out), "--out", str(tmp_path / "q")]):
        r = without_cluster(*argv)
        assert r.returncode == 0, (argv, r.stderr)
    assert (tmp_path / "q" / "quality.json").exists()


@pytest.mark.parametrize("command", ["render", "resume", "serve"])
def test_cluster_commands_name_the_extra_before_writing(command, tmp_path):
    store = tmp_path / "s"
    argv = {"render": ["render", *TINY, "--out", str(store), "--cluster", "local"],
            "resume": ["resume", str(store), "--cluster", "local"],
            "serve": ["serve", *TINY, "--store", str(store), "--cluster", "tcp://127.0.0.1:8786"]}[command]
    r = without_cluster(*argv)
    assert r.returncode == 2, r.stderr
    assert HINT in r.stderr and "Traceback" not in r.stderr
    assert not store.exists()
