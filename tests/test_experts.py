"""Two-expert models (Wan 2.2 A14B, the tiny `wan22-t2v`): where the refinement meets the experts' switch,
and a region cache that starts afresh there instead of carrying the high-noise expert's residuals into
the low-noise expert's steps."""

import pytest

import supergen
from supergen import RenderSpec, experts
from supergen.backends import expert_plan, load_backend, model_info, schedule
from supergen.executor import prepare

# threshold 1e9, no warm-up: every tile that may skip does, so a carried residual would show as a skip
CACHED = dict(prompt="a red circle moving", width=128, height=128, frames=5, steps=20, refine_steps=18,
              cache="region", cache_threshold=1e9, cache_warmup=1, max_consecutive_skips=100, checkpoint_every=0)


@pytest.mark.parametrize("kind", ["wan22-t2v", "hunyuan-t2v", "cogvideox15-t2v"])
def test_the_schedule_from_configs_is_the_backends(kind, tiny_dir):
    """Also where the pipeline passes its own sigmas (HunyuanVideo)."""
    assert schedule(tiny_dir(kind), 12).tolist() == load_backend(tiny_dir(kind)).timesteps(12).tolist()


def test_the_expert_plan_from_configs(tiny_dir):
    assert model_info(tiny_dir("wan22-t2v")).expert_boundary == 875.0
    assert model_info(tiny_dir("wan-t2v")).expert_boundary is None
    assert expert_plan(tiny_dir("wan-t2v"), 20, 2) == ((), None)
    ts = schedule(tiny_dir("wan22-t2v"), 20).tolist()
    assert expert_plan(tiny_dir("wan22-t2v"), 20, 2) == (experts.switches(ts, 875.0, 2), experts.note(ts, 875.0, 2))


def test_switches_and_the_note_place_the_refinement_against_the_boundary(tiny_dir):
    ts = schedule(tiny_dir("wan22-t2v"), 12).tolist()
    switch = next(i for i, t in enumerate(ts) if t < 875.0)
    assert 2 < switch < 12  # the tiny model's shifted schedule switches inside it
    assert experts.switches(ts, 875.0, 2) == (switch - 2,)
    assert experts.switches(ts, 875.0, switch) == () and experts.switches(ts, None, 0) == ()
    before = experts.note(ts, 875.0, 2)
    assert f"first {switch - 2} steps run the high-noise expert" in before and "afresh" in before
    assert "low-noise expert alone" in experts.note(ts, 875.0, switch)
    assert experts.note(ts, None, 2) is None


def test_the_cache_starts_afresh_at_the_switch(tiny_dir):
    """Before the switch the tiles skip (nothing stops them); at the switch every tile computes twice, the
    two real forwards a gain needs, with no history: the first expert's residuals are gone."""
    spec = prepare(RenderSpec(model=tiny_dir("wan22-t2v"), **CACHED))
    out = supergen.render(spec)
    start = spec.steps - spec.refine_steps
    (i,) = experts.switches(schedule(spec.model, spec.steps).tolist(), 875.0, start)
    rows = out.cache.skip_map
    assert i >= 3 and any(rows[i - 1]), "the steps before the switch skip"
    assert not any(rows[i]) and not any(rows[i + 1])
    assert any(rows[i + 2]), "the low-noise expert's own history lets the tiles skip again"
    assert any("afresh at the switch" in w for w in out.warnings)
