"""The render store's contract, one test class run over every kind of location a render writes to: a
local folder, `memory://` and `s3://` (a real endpoint with authentication enforced), the way zarr-python
tests its stores. Synthetic tensors, no model: what is tested is the store."""

from __future__ import annotations

import json
import time
import uuid

import pytest
import torch

from storage import RenderStore, StoreError
from storage import lease as leases
from storage.location import StoreBusy
from supergen import RenderSpec
from supergen.executor import prepare
from supergen.sink import Checkpoint
from supergen.tiling import cores, step_grid

SPEC = dict(prompt="contract", model="tiny", width=128, height=96, frames=5, steps=4, refine_steps=2)


@pytest.fixture(params=["local", "memory", "s3"])
def location(request, tmp_path):
    """(url, storage options) of a fresh location of each kind."""
    name = uuid.uuid4().hex[:8]
    if request.param == "local":
        return str(tmp_path / name), None
    if request.param == "memory":
        return f"memory://contract-{name}", None
    s3 = request.getfixturevalue("s3")
    return f"s3://renders/contract/{name}", s3.options()


@pytest.fixture(scope="module")
def spec():
    return prepare(RenderSpec(**SPEC))


def _checkpoint(step: int, canvas=(12, 16), value: float = 1.0) -> Checkpoint:
    grid = step_grid(step, canvas, (8, 8), "wrap", 1, 16)
    latent = torch.arange(16 * 2 * canvas[0] * canvas[1], dtype=torch.float32).reshape(1, 16, 2, *canvas) * value
    return Checkpoint(step, grid.windows, cores(grid), latent, {}, {}, {"step": step})


class TestStoreContract:
    def test_create_round_trips_stages_and_files(self, location, spec):
        url, opts = location
        store = RenderStore.create(url, spec, opts)
        assert store.exists() and store.spec() == spec and store.progress()["status"] == "created"
        x = torch.randn(1, 16, 2, 12, 16)
        store.save_stage("start", x)
        assert torch.equal(store.load_stage("start"), x) and store.load_stage("final") is None
        assert store.progress()["status"] == "refining"  # the owner's stage write moves it
        store.write_file("render.json", b"{}")
        assert store.read_file("render.json") == b"{}"
        with pytest.raises(StoreError, match="has no nothing.bin"):
            store.read_file("nothing.bin")
        store.release()

    def test_checkpoints_restore_exactly_and_only_move_forward(self, location, spec):
        url, opts = location
        store = RenderStore.create(url, spec, opts)
        first, second = _checkpoint(0), _checkpoint(1, value=2.0)
        store.save_checkpoint(first)
        store.save_checkpoint(second)
        back = store.load_checkpoint()
        assert back.step == 1 and torch.equal(back.latent, second.latent)
        assert back.windows == second.windows and back.cores == second.cores
        with pytest.raises(StoreError, match="cannot go back"):
            store.save_checkpoint(_checkpoint(0))
        assert store.load_checkpoint().step == 1  # the refused write left the previous one
        store.release()

    def test_only_the_owner_writes_progress_and_completion(self, location, spec):
        url, opts = location
        store = RenderStore.create(url, spec, opts)
        store.release()
        reader = RenderStore.open(url, opts)
        with pytest.raises(StoreError, match="only the render that owns the store"):
            reader.advance("sketched")
        with pytest.raises(StoreError, match="only the render that owns the store"):
            reader.finish()
        assert not reader.complete
        owner = RenderStore.open(url, opts, read_only=False)
        owner.advance("refined")
        owner.advance("sketched")  # a resumed render passing an earlier stage: status stays
        assert owner.progress()["status"] == "refined"
        owner.finish()
        assert reader.complete and reader.progress()["status"] == "complete"
        assert reader.inspect()["owner"]["state"] == "free"

    def test_a_live_foreign_owner_is_refused_and_a_dead_one_taken_over(self, location, spec):
        url, opts = location
        store = RenderStore.create(url, spec, opts)
        store.release()
        lease = leases.Lease(store.fs, store._path)
        n, _ = lease.current()
        foreign = {"owner": "elsewhere:4242:abcd", "host": "elsewhere", "pid": 4242, "acquired": time.time(),
                   "heartbeat": time.time()}
        assert lease._create(n + 1, foreign)
        assert not lease._create(n + 1, foreign)  # exclusive: a second creator of a generation loses
        with pytest.raises(StoreBusy, match="elsewhere:4242:abcd"):
            RenderStore.open(url, opts, read_only=False)
        with pytest.raises(StoreBusy):
            RenderStore.create(url, spec.replace(seed=9), opts, overwrite=True)  # no overwrite under it
        assert RenderStore.open(url, opts).spec() == spec
        stale = {**foreign, "heartbeat": time.time() - 2 * leases.TTL_S}
        store.fs.pipe_file(lease._path(n + 1), json.dumps(stale).encode())
        taken = RenderStore.open(url, opts, read_only=False)
        cur = lease.current()[1]
        assert cur["owner"] == leases.owner_id() and cur["took_over"] == "elsewhere:4242:abcd"
        taken.release()

    def test_overwrite_clears_everything_but_the_lease(self, location, spec):
        url, opts = location
        store = RenderStore.create(url, spec, opts)
        store.save_stage("start", torch.ones(1, 16, 2, 12, 16))
        store.release()
        with pytest.raises(StoreError, match="different spec"):
            RenderStore.create(url, spec.replace(seed=9), opts)
        again = RenderStore.create(url, spec.replace(seed=9), opts, overwrite=True)
        assert again.attrs["seed"] == 9 and again.load_stage("start") is None
        assert again.fs.exists(again._key("lease")) and again.progress()["status"] == "created"
        again.release()
