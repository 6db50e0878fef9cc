"""The render store's contract: one base class of tests, run over every kind of location a render writes
to (a local folder, `memory://`, and `s3://` on a real endpoint with authentication enforced), the way
zarr-python's StoreTests runs over its stores. Synthetic tensors, no model: what is tested is the store.
Checks read and write underneath the store (`raw`, `put`) where the store's own verbs are under test."""

from __future__ import annotations

import json
import os
import time
import uuid

import numpy as np
import pytest
import torch

from storage import LAYOUT_VERSION, RenderStore, StoreError
from storage import lease as leases
from storage.checkpoints import CheckpointManifest, CheckpointStore
from storage.location import StoreBusy, StoreNotFound
from supergen import RenderSpec
from supergen.cache.state import SCALARS, TENSORS, scalar_dtype
from supergen.executor import prepare
from supergen.sink import Checkpoint
from supergen.tiling import Window, cores, crop, step_grid
from supergen.tilestep import assemble

SPEC = dict(prompt="contract", model="tiny", width=128, height=96, frames=5, steps=4, refine_steps=2)
CANVAS = (12, 16)  # latent cells of SPEC


@pytest.fixture(scope="module")
def spec():
    return prepare(RenderSpec(**SPEC))


def _checkpoint(step: int, value: float = 1.0, cache: bool = False) -> Checkpoint:
    """A checkpoint of distinct values everywhere (so a misplaced cell shows), with a solver history and,
    with `cache`, every cache map in its own dtype."""
    grid = step_grid(step, CANVAS, (8, 8), "wrap", 1, 16)
    latent = torch.arange(16 * 2 * CANVAS[0] * CANVAS[1], dtype=torch.float32).reshape(1, 16, 2, *CANVAS) * value
    maps = {}
    if cache:
        maps = {k: latent + i for i, k in enumerate(TENSORS)}
        maps |= {k: torch.arange(CANVAS[0] * CANVAS[1]).reshape(CANVAS).to(scalar_dtype(k)) + i
                 for i, k in enumerate(SCALARS)}
    return Checkpoint(step, grid.windows, cores(grid), latent, {"x0": -latent}, maps, {"step": step})


class RenderStoreTests:
    """The contract. A subclass gives `location`: (url, storage options) of a fresh, empty place."""

    @pytest.fixture
    def location(self):
        raise NotImplementedError

    @pytest.fixture
    def store(self, location, spec):
        """A new store, owned by this test."""
        url, opts = location
        store = RenderStore.create(url, spec, opts)
        yield store
        store.release()

    @staticmethod
    def raw(store: RenderStore, name: str) -> bytes:
        return store.fs.cat_file(store._key(name))

    @staticmethod
    def put(store: RenderStore, name: str, data: bytes) -> None:
        store.fs.pipe_file(store._key(name), data)

    # -- create, open, exists --------------------------------------------------------------------------
    def test_create_open_and_exists(self, location, spec):
        url, opts = location
        assert not RenderStore(url, opts).exists()
        with pytest.raises(StoreNotFound, match="no render store at") as e:
            RenderStore.open(url, opts)
        assert isinstance(e.value, FileNotFoundError)
        store = RenderStore.create(url, spec, opts)
        store.release()
        back = RenderStore.open(url, opts)
        assert back.exists() and back.read_only and back.spec() == spec
        assert back.attrs["supergen_layout"] == LAYOUT_VERSION and back.attrs["seed"] == spec.seed
        assert back.progress()["status"] == "created" and back.checkpoint_manifest() is None
        assert json.loads(self.raw(back, "progress.json"))["status"] == "created"

    def test_missing_reads_none(self, store):
        assert store.load_stage("sketch") is None and not store.has_array("sketch/latent")
        assert store.load_checkpoint() is None and store.checkpoint_manifest() is None
        assert store.sketch_frames() is None and store.input_image() is None  # a text-to-video render
        assert not store.complete and store.inspect()["outputs_bytes"] == {}
        with pytest.raises(StoreError, match="has no nothing.bin"):
            store.read_file("nothing.bin")

    # -- read-only ------------------------------------------------------------------------------------
    def test_a_read_only_store_refuses_every_write_of_the_render(self, store, location):
        reader = RenderStore.open(location[0], location[1])  # this process owns the store: only read_only stops it
        ckpt = _checkpoint(0)
        writes = {
            "save_stage": lambda: reader.save_stage("start", torch.ones(1, 16, 2, *CANVAS)),
            "save_frames": lambda: reader.save_frames("video", np.zeros((2, 8, 8, 3), np.uint8), 8),
            "begin_frames": lambda: reader.begin_frames("video", (2, 8, 8, 3), 8),
            "begin_stage": lambda: reader.begin_stage("start", (1, 16, 2, *CANVAS)),
            "write_region": lambda: reader.write_region("video/frames", (slice(None),), np.zeros((2, 8, 8, 3))),
            "write output": lambda: reader.write_file("video.mp4", b"x"),
            "write marker": lambda: reader.write_file("COMPLETE", b""),
            "write input": lambda: reader.write_file("inputs/image.png", b"x"),
            "advance": lambda: reader.advance("sketched"),
            "acquire": reader.acquire,
            "clear": reader.clear,
            "save_checkpoint": lambda: reader.save_checkpoint(ckpt),
            "begin_checkpoint": lambda: reader.begin_checkpoint(1, {"latent": ((1, 16, 2, 8, 8), torch.float32)}),
            "write_checkpoint_tile": lambda: reader.write_checkpoint_tile(
                0, 0, ckpt.windows[0], ckpt.cores[0], {"latent": crop(ckpt.latent, ckpt.cores[0])}, CANVAS),
            "finish": reader.finish,
        }
        for what, write in writes.items():
            with pytest.raises(StoreError, match="read-only"):
                write()
        assert store.load_stage("start") is None and store.progress()["status"] == "created"
        assert store.checkpoint_manifest() is None and not store.complete
        reader.write_file("quality.json", b"{}")  # an annotation beside the render, not the render
        assert self.raw(store, "quality.json") == b"{}"

    # -- stages and files ------------------------------------------------------------------------------
    def test_stages_and_files_round_trip(self, store):
        x = torch.randn(1, 16, 2, *CANVAS)
        store.save_stage("start", x)
        assert torch.equal(store.load_stage("start"), x) and store.has_array("start/latent")
        assert store.progress()["status"] == "refining"  # the owner's stage write moves it
        win = Window(8, 12, 8, 8)  # wraps over both edges
        got = assemble(win, store.stage_pieces("start", win), CANVAS, "cpu")["latent"]
        assert torch.equal(got, crop(x, win))
        frames = np.random.default_rng(0).integers(0, 255, (5, 24, 32, 3), dtype=np.uint8)
        store.save_frames("video", frames, 2, (16, 16))
        assert store.group["video/frames"].chunks == (2, 16, 16, 3)
        assert np.array_equal(store.video_frames(slice(1, 3), slice(16, 24), slice(0, 32)), frames[1:3, 16:24])
        store.write_file("render.json", b"{}")
        assert store.read_file("render.json") == b"{}" and self.raw(store, "render.json") == b"{}"

    def test_arrays_filled_region_by_region_as_workers_fill_them(self, store):
        """What a spread VAE writes (`flows/vae.py`): an empty array, then regions, two of them in one
        chunk one after the other; each region lands, the chunking is the whole-array writer's."""
        frames = np.random.default_rng(1).integers(0, 255, (5, 24, 32, 3), dtype=np.uint8)
        assert store.begin_frames("video", frames.shape, 2, (16, 16)) == (2, 16, 16, 3)
        for y, x in ((slice(0, 10), slice(0, 20)), (slice(10, 24), slice(0, 20)), (slice(0, 24), slice(20, 32))):
            store.write_region("video/frames", (slice(None), y, x), frames[:, y, x])
        assert np.array_equal(store.video_frames(), frames)
        x = torch.randn(1, 16, 2, *CANVAS)
        store.begin_stage("start", tuple(x.shape))
        assert store.stage_shape("start") == tuple(x.shape)
        for xs in (slice(0, 5), slice(5, 16)):
            store.write_region("start/latent", (..., slice(None), xs), x[..., xs].numpy())
        assert torch.equal(store.load_stage("start"), x)
        assert torch.equal(store.stage_region("start", slice(2, 7), slice(3, 11)), x[..., 2:7, 3:11])

    # -- checkpoints -----------------------------------------------------------------------------------
    def test_the_store_speaks_the_checkpoint_protocol(self, store):
        assert isinstance(store, CheckpointStore)

    def test_checkpoint_slots_round_trip_tile_by_tile(self, store):
        """The cluster's way: begin the free slot, each tile writes its core, the owner commits."""
        for step, slot in ((0, 0), (1, 1), (2, 0)):  # slots alternate
            ck = _checkpoint(step, value=step + 1.0)
            shape = (1, 16, 2, 8, 8)
            assert store.begin_checkpoint(len(ck.windows), {"latent": (shape, torch.float32),
                                                            "scheduler/x0": (shape, torch.float32)}) == slot
            for k, (w, c) in enumerate(zip(ck.windows, ck.cores)):
                store.write_checkpoint_tile(slot, k, w, c, {"latent": crop(ck.latent, c),
                                                            "scheduler/x0": crop(ck.scheduler["x0"], c)}, CANVAS)
            assert store.checkpoint_manifest() is None or store.checkpoint_manifest().step == step - 1
            store.commit_checkpoint(step, slot, ck.windows, ck.cores, CANVAS, ["latent", "scheduler/x0"],
                                    {"tiles_per_step": [len(ck.windows)] * (step + 1)})
            m = store.checkpoint_manifest()
            assert m == CheckpointManifest(step, slot, ("latent", "scheduler/x0"), CANVAS, tuple(ck.windows),
                                           tuple(ck.cores), {"tiles_per_step": [len(ck.windows)] * (step + 1)})
            back = store.load_checkpoint()
            assert back.step == step and torch.equal(back.latent, ck.latent)
            assert torch.equal(back.scheduler["x0"], ck.scheduler["x0"]) and back.windows == ck.windows
        win = Window(4, 12, 8, 8)  # a window of the next step, across cores and the wrap
        got = assemble(win, store.checkpoint_pieces(win), CANVAS, "cpu")
        assert torch.equal(got["latent"], crop(ck.latent, win)) and torch.equal(got["scheduler/x0"], crop(-ck.latent, win))

    def test_checkpoint_chunks_are_per_tile_and_a_torn_checkpoint_is_ignored(self, store):
        store.save_checkpoint(_checkpoint(0, cache=True))
        store.save_checkpoint(_checkpoint(1, value=2.0, cache=True))
        latest = store.checkpoint_manifest()
        arr = store.group[f"checkpoints/slot{latest.slot}/latent"]
        assert arr.shape[0] == len(latest.windows) and arr.chunks == (1,) + arr.shape[1:]
        chunks = [k for k in store.fs.find(store._key(f"data.zarr/checkpoints/slot{latest.slot}/latent"))
                  if "/c/" in k]
        assert len(chunks) == len(latest.windows)  # one chunk object per tile: one writer each
        before = store.load_checkpoint()
        other = store.group[f"checkpoints/slot{1 - latest.slot}/latent"]  # a crash while writing the free slot
        other[...] = np.full(other.shape, 7.0, dtype=other.dtype)
        after = store.load_checkpoint()
        assert after.step == before.step == 1 and torch.equal(after.latent, before.latent)
        assert sorted(after.cache) == sorted(TENSORS + SCALARS)
        for k, v in _checkpoint(1, value=2.0, cache=True).cache.items():
            assert after.cache[k].dtype == v.dtype and torch.equal(after.cache[k], v)

    def test_checkpoints_only_move_forward(self, store):
        store.save_checkpoint(_checkpoint(0))
        store.save_checkpoint(_checkpoint(1, value=2.0))
        with pytest.raises(StoreError, match="cannot go back"):
            store.save_checkpoint(_checkpoint(0))
        assert store.load_checkpoint().step == 1  # the refused write left the previous one

    # -- progress, ownership, completion ---------------------------------------------------------------
    def test_only_the_owner_moves_progress_forward_and_completes(self, location, spec):
        url, opts = location
        RenderStore.create(url, spec, opts).release()
        reader = RenderStore.open(url, opts)
        with pytest.raises(StoreError, match="only the render that owns the store"):
            reader.advance("sketched")
        with pytest.raises(StoreError, match="only the render that owns the store"):
            reader.finish()
        assert not reader.complete
        owner = RenderStore.open(url, opts, read_only=False)
        owner.advance("refined")
        owner.advance("sketched")  # a resumed render passing an earlier stage: status stays
        assert owner.progress()["status"] == "refined" and not owner.complete
        owner.finish()
        assert reader.complete and reader.progress()["status"] == "complete"
        assert reader.inspect()["owner"]["state"] == "free" and "COMPLETE" in reader.inspect()["outputs_bytes"]

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
        with pytest.raises(StoreBusy, match="elsewhere:4242:abcd"):  # the owner is the cause, not the spec
            RenderStore.create(url, spec.replace(seed=9), opts)
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
        store.save_stage("start", torch.ones(1, 16, 2, *CANVAS))
        store.release()
        with pytest.raises(StoreError, match="different spec"):
            RenderStore.create(url, spec.replace(seed=9), opts)
        again = RenderStore.create(url, spec.replace(seed=9), opts, overwrite=True)
        assert again.attrs["seed"] == 9 and again.load_stage("start") is None
        assert again.fs.exists(again._key("lease")) and again.progress()["status"] == "created"
        again.release()

    # -- inputs ----------------------------------------------------------------------------------------
    def test_the_conditioning_image_is_kept_and_outlives_its_file(self, location, image_path, tmp_path):
        url, opts = location
        path = str(tmp_path / "cond.png")
        with open(image_path, "rb") as f:
            original = f.read()
        with open(path, "wb") as f:
            f.write(original)
        spec = prepare(RenderSpec(**{**SPEC, "model": "tiny-i2v", "image": path}))
        RenderStore.create(url, spec, opts).release()
        os.remove(path)
        store = RenderStore.open(url, opts)
        assert self.raw(store, "inputs/image.png") == original and store.input_image() == original


class TestLocalStore(RenderStoreTests):
    @pytest.fixture
    def location(self, tmp_path):
        return str(tmp_path / uuid.uuid4().hex[:8]), None


class TestMemoryStore(RenderStoreTests):
    @pytest.fixture
    def location(self):
        return f"memory://contract-{uuid.uuid4().hex[:8]}", None


class TestS3Store(RenderStoreTests):
    @pytest.fixture
    def location(self, s3):
        return f"s3://renders/contract/{uuid.uuid4().hex[:8]}", s3.options()


def test_the_manifest_round_trips_through_json():
    ck = _checkpoint(3)
    m = CheckpointManifest(3, 1, ("cache/acc", "latent"), CANVAS, tuple(ck.windows), tuple(ck.cores),
                           {"tiles_per_step": [4, 4]})
    assert CheckpointManifest.from_dict(json.loads(json.dumps(m.to_dict()))) == m
