"""Refinement checkpoints in the render store: two slots, one chunk per tile, the manifest written last.

A checkpoint holds every tile's window of the latent, scheduler and cache maps after one refinement step,
in `data.zarr/checkpoints/slot{0,1}/<array>` of shape (tiles, ...window) with one chunk per tile, and
counts once its `CheckpointManifest` is in progress.json. The in-process executor writes a checkpoint whole
(`save`); on a cluster the driver opens the free slot (`begin`), each core's worker writes its own tile
(`write_tile`) and the driver, which owns the store, commits it (`commit`).

`RenderStore` takes these functions as its checkpoint verbs (`begin_checkpoint` is `begin`, and so on);
`CheckpointStore` states the verbs the executors rely on.

Note for implementers: the slot swap is what makes a crash harmless. `begin` always creates the slot the
manifest does *not* name; tiles write disjoint chunks (no two writers share one: a shared-chunk
read-modify-write loses updates on S3); the manifest moves only after every tile is written. A crash at
any point thus leaves the manifest on the previous, intact slot. Writing the manifest before its tiles, or
writing into the slot the manifest names, breaks resume.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np
import torch

from supergen.sink import Checkpoint
from supergen.tiling import Window, crop, intersections, local, paste

if TYPE_CHECKING:
    from supergen.tilestep import Piece

    from .store import RenderStore

SLOTS = "checkpoints/slot{}"


@dataclass(frozen=True)
class CheckpointManifest:
    """Where a committed checkpoint lives and what it holds (progress.json's `checkpoint`)."""

    step: int  # the last refinement step it holds (0-based)
    slot: int  # 0 or 1: the slot its arrays are in
    arrays: tuple[str, ...]  # "latent", "scheduler/<name>", "cache/<name>"
    canvas: tuple[int, int]  # (H, W) latent cells
    windows: tuple[Window, ...]  # the step's grid, row-major: tile k's window is chunk k
    cores: tuple[Window, ...]  # tile k's owned cells; the cores partition the canvas
    record: dict = field(default_factory=dict)  # counters and the cache report so far, JSON-able

    def to_dict(self) -> dict:
        return {"step": self.step, "slot": self.slot, "arrays": list(self.arrays), "canvas": list(self.canvas),
                "windows": [_box(w) for w in self.windows], "cores": [_box(c) for c in self.cores],
                "record": self.record}

    @classmethod
    def from_dict(cls, d: dict) -> CheckpointManifest:
        return cls(d["step"], d["slot"], tuple(d["arrays"]), tuple(d["canvas"]),
                   tuple(Window(*w) for w in d["windows"]), tuple(Window(*c) for c in d["cores"]), d["record"])


@runtime_checkable
class CheckpointStore(Protocol):
    """The checkpoint verbs the executors use: the in-process one saves and loads whole checkpoints; the
    distributed one begins a slot, has each tile's worker write its chunk, commits, and resumes window by
    window from the pieces it reads."""

    def save_checkpoint(self, ckpt: Checkpoint) -> None: ...

    def load_checkpoint(self) -> Checkpoint | None: ...

    def begin_checkpoint(self, n_tiles: int, arrays: dict[str, tuple[tuple[int, ...], torch.dtype]]) -> int: ...

    def write_checkpoint_tile(self, slot: int, k: int, win: Window, core: Window, maps: dict[str, torch.Tensor],
                              canvas: tuple[int, int]) -> None: ...

    def commit_checkpoint(self, step: int, slot: int, windows, cores, canvas, names, record: dict) -> None: ...

    def checkpoint_manifest(self) -> CheckpointManifest | None: ...

    def checkpoint_pieces(self, win: Window) -> list[Piece]: ...


def save(store: RenderStore, ckpt: Checkpoint) -> None:
    """Write every tile's window of the latent, scheduler and cache maps into the free slot, then commit:
    the in-process executor's checkpoint, the same slot protocol as a cluster's."""
    tensors = {"latent": ckpt.latent, **{f"scheduler/{k}": v for k, v in ckpt.scheduler.items()},
               **{f"cache/{k}": v for k, v in ckpt.cache.items()}}
    win, canvas = ckpt.windows[0], tuple(ckpt.latent.shape[-2:])
    slot = begin(store, len(ckpt.windows), {n: (tuple(t.shape[:-2]) + (win.height, win.width), t.dtype)
                                            for n, t in tensors.items()})
    for k, (w, core) in enumerate(zip(ckpt.windows, ckpt.cores)):
        write_tile(store, slot, k, w, core, {n: crop(t.detach().cpu(), core) for n, t in tensors.items()}, canvas)
    commit(store, ckpt.step, slot, ckpt.windows, ckpt.cores, canvas, sorted(tensors), ckpt.record)


def begin(store: RenderStore, n_tiles: int, arrays: dict[str, tuple[tuple[int, ...], torch.dtype]]) -> int:
    """Create the free slot's arrays, (n_tiles, *shape) each, chunked per tile (metadata only; bfloat16 is
    kept as float32). Returns the slot the tiles then write into."""
    store._require_writable()
    latest = manifest(store)
    slot = 0 if latest is None else 1 - latest.slot
    for name, (shape, dtype) in arrays.items():
        np_dtype = np.float32 if dtype == torch.bfloat16 else torch.empty(0, dtype=dtype).numpy().dtype
        try:
            store.group.create_array(f"{SLOTS.format(slot)}/{name}", shape=(n_tiles,) + tuple(shape), dtype=np_dtype,
                                     chunks=(1,) + tuple(shape), compressors=None, fill_value=0,
                                     dimension_names=["tile"] + [f"d{i}" for i in range(len(shape) - 2)] + ["y", "x"],
                                     overwrite=True)
        except Exception as e:
            raise store._fail("cannot create checkpoint arrays in", e) from None
    return slot


def write_tile(store: RenderStore, slot: int, k: int, win: Window, core: Window, maps: dict[str, torch.Tensor],
               canvas: tuple[int, int]) -> None:
    """Tile k's chunk of every array of `slot`: its core's cells (`maps`, core-sized) at their place in the
    window; the rest of the chunk is zeros (the cores partition the canvas, so no other tile needs them)."""
    store._require_writable()
    ys, xs = local(core, win, canvas)
    for name, core_data in maps.items():
        arr = store.group[f"{SLOTS.format(slot)}/{name}"]
        chunk = np.zeros(arr.shape[1:], dtype=arr.dtype)
        core_data = core_data.detach().cpu()  # tile state may live on a worker's GPU
        chunk[..., ys, xs] = core_data.float().numpy() if core_data.dtype == torch.bfloat16 else core_data.numpy()
        arr[k] = chunk


def commit(store: RenderStore, step: int, slot: int, windows, cores, canvas, names, record: dict) -> None:
    """The manifest, written after every tile, by the owner: only now does the checkpoint count."""
    store.advance(checkpoint=CheckpointManifest(step, slot, tuple(names), tuple(canvas), tuple(windows), tuple(cores),
                                                json.loads(json.dumps(record))))


def manifest(store: RenderStore) -> CheckpointManifest | None:
    """The latest committed checkpoint's manifest; None before the first."""
    d = store.progress().get("checkpoint")
    return None if d is None else CheckpointManifest.from_dict(d)


def load(store: RenderStore) -> Checkpoint | None:
    """The latest checkpoint as whole-canvas tensors, each tile's core pasted back bit-exactly."""
    m = manifest(store)
    if m is None:
        return None
    out: dict[str, torch.Tensor] = {}
    for name in m.arrays:
        tiles = torch.from_numpy(np.ascontiguousarray(store.group[f"{SLOTS.format(m.slot)}/{name}"][...]))
        canvas = torch.zeros(tiles.shape[1:-2] + m.canvas, dtype=tiles.dtype)
        for t, win, core in zip(tiles, m.windows, m.cores):
            ys, xs = local(core, win, m.canvas)
            paste(canvas, core, t[..., ys, xs])
        out[name] = canvas
    return Checkpoint(m.step, list(m.windows), list(m.cores), out.pop("latent"),
                      {k.split("/", 1)[1]: v for k, v in out.items() if k.startswith("scheduler/")},
                      {k.split("/", 1)[1]: v for k, v in out.items() if k.startswith("cache/")}, m.record)


def pieces(store: RenderStore, win: Window) -> list[Piece]:
    """The pieces of `win` from the latest checkpoint, reading only the chunks of tiles whose cores overlap
    it (what a worker resuming one window needs), under the tile work's map names."""
    from supergen.tilestep import Piece

    m = manifest(store)
    out = []
    for k, (w, c) in enumerate(zip(m.windows, m.cores)):
        rects = intersections(c, win, m.canvas)
        if not rects:
            continue
        chunk = {n: torch.from_numpy(np.ascontiguousarray(store.group[f"{SLOTS.format(m.slot)}/{n}"][k]))
                 for n in m.arrays}
        for r in rects:
            ys, xs = local(r, w, m.canvas)
            out.append(Piece(r, {n: t[..., ys, xs].clone() for n, t in chunk.items()}))
    return out


def _box(w: Window) -> list[int]:
    return [w.top, w.left, w.height, w.width]
