"""The render store: one render's stages, checkpoints and outputs at any fsspec URL.

Layout 2 (docs/store.md has shapes, chunking and dtypes):

    <url>/data.zarr/                the Zarr v3 group: root attributes (layout, resolved spec, seed,
                                    versions; written once) and every array:
      sketch/latent                 the native-size sketch latent
      start/latent                  the re-noised full-size latent that refinement starts from
      checkpoints/slot{0,1}/...     per-tile windows (latent, scheduler and cache maps) of a checkpoint;
                                    one chunk per tile, so concurrent tile writers never share a chunk
      final/latent                  the refined latent
      video/frames, sketch/frames   uint8 (frame, y, x, rgb) of the output and of the decoded sketch
    <url>/progress.json             status and the checkpoint manifest: written only by the lease owner,
                                    only forward
    <url>/lease/<n>.json            ownership (storage/lease.py): one live render per store
    <url>/video.mp4 sketch.mp4 contact_sheet.png cache_skips.png render.json
    <url>/COMPLETE                  written last, by the owner: only its presence makes a render complete

Files live beside the Zarr group, not in it, so Zarr tools list the group without tripping over them.
Checkpoints alternate between two slots and the manifest moves only after every tile of a slot is written,
so a crash mid-checkpoint leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import time
from typing import Any

import numpy as np
import torch

from supergen.sink import Checkpoint
from supergen.tiling import Window, crop, intersections, local, paste

from . import lease as leases
from .location import StoreError, bucket_of, check_reachable, describe, filesystem, normalize, redact

LAYOUT_VERSION = 2
DATA = "data.zarr"
PROGRESS = "progress.json"
MARKER = "COMPLETE"
FILES = ("video.mp4", "sketch.mp4", "contact_sheet.png", "cache_skips.png", "render.json")
STAGE_STATUS = {"sketch": "sketched", "start": "refining", "final": "refined"}
STATUSES = ("created", "sketched", "refining", "refined", "complete")  # the only order status moves in


class RenderStore:
    """One render's store. Pickles as (url, storage_options, read_only); never prints the options.

    Notes: the store does not close the fsspec filesystem it uses (fsspec caches and shares instances).
    """

    def __init__(self, url: str, storage_options: dict[str, Any] | None = None, read_only: bool = False,
                 bucket_root: bool = False):
        self.url = normalize(url, bucket_root=bucket_root)
        self.storage_options = dict(storage_options or {})
        self.read_only = read_only
        self._fs = self._path = self._group = None

    def __reduce__(self):
        return (type(self), (self.url, self.storage_options, self.read_only))

    def __repr__(self) -> str:
        return f"RenderStore({self.url!r}{', read_only' if self.read_only else ''})"

    # -- plumbing ------------------------------------------------------------------------------------
    @property
    def fs(self):
        if self._fs is None:
            self._fs, self._path = filesystem(self.url, self.storage_options)
        return self._fs

    def _key(self, name: str) -> str:
        self.fs
        return f"{self._path.rstrip('/')}/{name}"

    def _fail(self, what: str, e: Exception) -> StoreError:
        return StoreError(redact(f"{what} {self.url}: {describe(e)}", self.storage_options))

    @property
    def group(self):
        if self._group is None:
            import zarr
            from zarr.storage import FsspecStore

            try:
                if self.url.startswith("file://"):
                    from zarr.storage import LocalStore

                    zs = LocalStore(f"{self.url[len('file://'):]}/{DATA}", read_only=self.read_only)
                else:
                    zs = FsspecStore.from_url(f"{self.url}/{DATA}", storage_options=self.storage_options or None,
                                              read_only=self.read_only)
                self._group = zarr.open_group(store=zs, mode="r" if self.read_only else "a", zarr_format=3)
            except Exception as e:
                raise self._fail("cannot open the render store at", e) from None
        return self._group

    def exists(self) -> bool:
        try:
            return self.fs.exists(self._key(f"{DATA}/zarr.json"))
        except Exception as e:
            raise self._fail("cannot read", e) from None

    def _legacy_layout(self) -> int | None:
        """The layout of a store written before the Zarr group moved into data.zarr (layout 1)."""
        try:
            return json.loads(self.fs.cat_file(self._key("zarr.json")))["attributes"].get("supergen_layout")
        except Exception:
            return None

    @property
    def attrs(self) -> dict:
        """The store's fixed facts (layout, spec, seed, versions): written once, when it is created."""
        return dict(self.group.attrs)

    def check_writable(self) -> None:
        """Fail early (before any model loads) when the location cannot take writes, naming the cause:
        unreachable endpoint, unknown option or profile, wrong key or secret, missing bucket, denied write."""
        check_reachable(self.storage_options)
        bucket = bucket_of(self.url)
        made = False
        try:
            if bucket is not None:
                self._check_bucket(bucket)
            if self.url.startswith("file://") and not self.fs.exists(self._path):
                self.fs.makedirs(self._path, exist_ok=True)
                made = True
            probe = self._key(".supergen-write-probe")
            self.fs.pipe_file(probe, b"ok")
            self.fs.rm_file(probe)
        except StoreError:
            raise
        except PermissionError as e:
            raise StoreError(redact(f"no permission to write to {self.url}: {describe(e)}",
                                    self.storage_options)) from None
        except Exception as e:
            raise self._fail("cannot write to", e) from None
        finally:
            if made:  # a check leaves nothing behind: the render makes the folder when it writes
                self.fs.rm(self._path, recursive=True)

    def _check_bucket(self, bucket: str) -> None:
        try:
            self.fs.info(bucket)
            return
        except FileNotFoundError:
            raise StoreError(f"bucket {bucket!r} does not exist ({self.url}); create it first") from None
        except PermissionError:
            pass
        try:  # a HEAD carries no reason; a listing's error body says which credential is wrong
            self.fs.ls(self._path, detail=False)
        except FileNotFoundError:
            return  # the bucket answers listings: a new prefix
        except Exception as e:
            raise self._fail("cannot access", e) from None

    # -- ownership and progress ----------------------------------------------------------------------
    def _lease_key(self) -> str:
        return self.url

    def acquire(self) -> None:
        """Own this store (storage/lease.py), or raise StoreBusy naming the live render that does."""
        self.fs
        leases.hold(self.fs, self._path, self._lease_key(), self.url)

    def release(self) -> None:
        lease = leases.held(self._lease_key())
        if lease is not None:
            lease.release()

    @property
    def owned(self) -> bool:
        return leases.held(self._lease_key()) is not None

    def _owner_check(self) -> None:
        lease = leases.held(self._lease_key())
        if lease is None:
            raise StoreError(f"{self.url}: only the render that owns the store writes its progress")
        lease.check(self.url)

    def progress(self) -> dict:
        """{"status", "checkpoint" (the latest manifest or None)}; a store without progress.json is new."""
        try:
            return json.loads(self.fs.cat_file(self._key(PROGRESS)))
        except FileNotFoundError:
            return {"status": "created", "checkpoint": None}
        except Exception as e:
            raise self._fail("cannot read progress of", e) from None

    def advance(self, status: str | None = None, checkpoint: dict | None = None) -> None:
        """Move status and/or the checkpoint pointer forward (the owner only). Status never goes back: a
        resumed render that passes a stage again leaves it where it is. A checkpoint older than the
        current one is a bug, refused."""
        self._owner_check()
        cur = self.progress()
        new = dict(cur)
        if status is not None:
            new["status"] = max(status, cur.get("status", "created"), key=STATUSES.index)
        if checkpoint is not None:
            old = cur.get("checkpoint")
            if old is not None and checkpoint["step"] <= old["step"]:
                raise StoreError(f"{self.url}: checkpoint cannot go back from step {old['step']} to "
                                 f"{checkpoint['step']}")
            new["checkpoint"] = checkpoint
        self._write_progress(new)

    def _write_progress(self, progress: dict) -> None:
        try:
            self.fs.pipe_file(self._key(PROGRESS), json.dumps({**progress, "updated": time.time()}).encode())
        except Exception as e:
            raise self._fail("cannot write progress to", e) from None

    # -- lifecycle -----------------------------------------------------------------------------------
    @classmethod
    def create(cls, url: str, spec, storage_options=None, overwrite: bool = False,
               bucket_root: bool = False) -> RenderStore:
        """Own the store for rendering `spec` (a resolved RenderSpec): a new store is initialised; one that
        holds the same spec is reused as is (a retry or resume continues it); one with another spec, an
        older or newer layout, is refused unless `overwrite`, which clears it first. A store another live
        render owns is refused, naming it; nothing is written before ownership is settled."""
        store = cls(url, storage_options, bucket_root=bucket_root)
        store.check_writable()
        problem = store.problem_with(spec)  # refusals and finished renders need no ownership: no write
        if problem is not None and not overwrite:
            raise StoreError(f"{store.url} {problem}; pass --overwrite to replace it")
        if problem is None and store.complete:
            return store
        store.acquire()
        try:
            problem = store.problem_with(spec)  # again, now that no one else can change it
            if problem is not None and not overwrite:
                raise StoreError(f"{store.url} {problem}; pass --overwrite to replace it")
            if problem is None and store.exists():
                return store
            store.clear()
            from supergen.versions import versions

            store.group.attrs.update({"supergen_layout": LAYOUT_VERSION, "spec": spec.to_dict(),
                                      "seed": spec.seed, "versions": versions()})
            store._write_progress({"status": "created", "checkpoint": None})
        except BaseException:
            store.release()
            raise
        return store

    @classmethod
    def open(cls, url: str, storage_options=None, read_only: bool = True) -> RenderStore:
        """An existing store; writable (`read_only=False`, what resume needs) means owned: a store another
        live render owns is refused, a dead owner's is taken over."""
        store = cls(url, storage_options, read_only=read_only, bucket_root=True)
        check_reachable(store.storage_options)
        if not store.exists():
            legacy = store._legacy_layout()
            if legacy is not None:
                raise StoreError(f"{store.url} has store layout {legacy}, written by an older supergen; its "
                                 f"video.mp4 stays readable as a file; render it again to use this version")
            raise StoreError(f"no render store at {store.url}")
        layout = store.attrs.get("supergen_layout")
        if layout is None or layout > LAYOUT_VERSION:
            raise StoreError(f"{store.url} has store layout {layout!r}; this supergen reads layout "
                             f"<= {LAYOUT_VERSION}: upgrade supergen")
        if not read_only:
            store.acquire()
        return store

    def problem_with(self, spec) -> str | None:
        """Why rendering `spec` here would be refused (None: a new store, or the same render)."""
        if not self.exists():
            legacy = self._legacy_layout()
            return None if legacy is None else f"has store layout {legacy}, written by an older supergen"
        return self._incompatibility(self.attrs, spec)

    @staticmethod
    def _incompatibility(attrs: dict, spec) -> str | None:
        layout = attrs.get("supergen_layout")
        if layout is None:
            return "is not a supergen render store"
        if layout > LAYOUT_VERSION:
            return f"was written with store layout {layout}, newer than this supergen's {LAYOUT_VERSION}"
        if layout < LAYOUT_VERSION:
            return f"has store layout {layout}, written by an older supergen"
        if attrs.get("spec") != json.loads(json.dumps(spec.to_dict())):
            old, new = attrs.get("spec") or {}, spec.to_dict()
            fields = sorted(k for k in set(old) | set(new) if old.get(k) != json.loads(json.dumps(new.get(k))))
            return f"already holds a render of a different spec (differs in {fields})"
        return None

    def clear(self) -> None:
        """Remove everything but the lease (the owner only: ownership is what makes clearing safe)."""
        self._owner_check()
        try:
            if self.fs.exists(self._path):
                for p in self.fs.ls(self._path, detail=False):
                    if p.rstrip("/").rsplit("/", 1)[-1] != "lease":
                        self.fs.rm(p, recursive=True)
        except Exception as e:
            raise self._fail("cannot clear", e) from None
        self._group = None

    def spec(self):
        from supergen import RenderSpec

        return RenderSpec.from_dict(self.attrs["spec"])

    @property
    def complete(self) -> bool:
        """True only once the completion marker exists; nothing else makes a render complete."""
        try:
            return self.fs.exists(self._key(MARKER))
        except Exception:
            return False

    def finish(self) -> None:
        """The owner's last act: status complete, then the marker, then the lease goes."""
        self.advance("complete")
        self.write_file(MARKER, b"")
        self.release()

    # -- stage tensors (RenderSink) ------------------------------------------------------------------
    def _write_array(self, name: str, data: np.ndarray, chunks: tuple[int, ...], dims: list[str],
                     compressors=None) -> None:
        try:
            arr = self.group.create_array(name, shape=data.shape, dtype=data.dtype, chunks=chunks,
                                          compressors=compressors, fill_value=0, dimension_names=dims,
                                          overwrite=True)
            arr[...] = data
        except Exception as e:
            raise self._fail(f"cannot write {name} to", e) from None

    def _read_array(self, name: str) -> np.ndarray | None:
        try:
            return self.group[name][...]
        except KeyError:
            return None

    def has_array(self, name: str) -> bool:
        try:
            self.group[name]
            return True
        except KeyError:
            return False

    def save_stage(self, name: str, tensor: torch.Tensor) -> None:
        data = tensor.detach().float().cpu().numpy()
        tile = self.attrs["spec"]["tile"]
        chunks = data.shape if name == "sketch" else data.shape[:-2] + tuple(min(t, s) for t, s in
                                                                            zip(tile, data.shape[-2:]))
        self._write_array(f"{name}/latent", data, chunks, ["batch", "channel", "frame", "y", "x"])
        if self.owned:  # in process; on a cluster the workers write stages and the driver advances
            self.advance(STAGE_STATUS[name])

    def load_stage(self, name: str) -> torch.Tensor | None:
        data = self._read_array(f"{name}/latent")
        return None if data is None else torch.from_numpy(np.ascontiguousarray(data))

    # -- checkpoints (RenderSink) --------------------------------------------------------------------
    def save_checkpoint(self, ckpt: Checkpoint) -> None:
        """Write every tile's window of the latent, scheduler and cache maps into the free slot (one chunk
        per tile), then the manifest. The in-process executor writes all tiles; on a cluster each tile's
        owner writes its own chunk (`write_checkpoint_tile`) and the driver commits."""
        tensors = {"latent": ckpt.latent, **{f"scheduler/{k}": v for k, v in ckpt.scheduler.items()},
                   **{f"cache/{k}": v for k, v in ckpt.cache.items()}}
        win = ckpt.windows[0]
        slot = self.begin_checkpoint(len(ckpt.windows), {n: (tuple(t.shape[:-2]) + (win.height, win.width), t.dtype)
                                                          for n, t in tensors.items()})
        for k, (w, core) in enumerate(zip(ckpt.windows, ckpt.cores)):
            self.write_checkpoint_tile(slot, k, w, core, {n: crop(t.detach().cpu(), core) for n, t in tensors.items()},
                                       tuple(ckpt.latent.shape[-2:]))
        self.commit_checkpoint(ckpt.step, slot, ckpt.windows, ckpt.cores, tuple(ckpt.latent.shape[-2:]),
                               sorted(tensors), ckpt.record)

    def begin_checkpoint(self, n_tiles: int, arrays: dict[str, tuple[tuple[int, ...], torch.dtype]]) -> int:
        """Create the free slot's arrays (metadata only); returns the slot tiles then write into."""
        latest = self.checkpoint_manifest()
        slot = 0 if latest is None else 1 - latest["slot"]
        for name, (shape, dtype) in arrays.items():
            full = (n_tiles,) + tuple(shape)
            np_dtype = torch.empty(0, dtype=dtype).numpy().dtype if dtype != torch.bfloat16 else np.float32
            try:
                self.group.create_array(f"checkpoints/slot{slot}/{name}", shape=full, dtype=np_dtype,
                                        chunks=(1,) + tuple(shape), compressors=None, fill_value=0,
                                        dimension_names=["tile"] + [f"d{i}" for i in range(len(shape) - 2)]
                                        + ["y", "x"], overwrite=True)
            except Exception as e:
                raise self._fail("cannot create checkpoint arrays in", e) from None
        return slot

    def write_checkpoint_tile(self, slot: int, k: int, win: Window, core: Window, maps: dict[str, torch.Tensor],
                              canvas: tuple[int, int]) -> None:
        """Tile k's chunk of every checkpoint array: its core's cells at their place in the window."""
        ys, xs = local(core, win, canvas)
        for name, core_data in maps.items():
            arr = self.group[f"checkpoints/slot{slot}/{name}"]
            chunk = np.zeros(arr.shape[1:], dtype=arr.dtype)
            core_data = core_data.detach().cpu()  # tile state may live on a worker's GPU
            chunk[..., ys, xs] = core_data.float().numpy() if core_data.dtype == torch.bfloat16 else core_data.numpy()
            arr[k] = chunk

    def commit_checkpoint(self, step: int, slot: int, windows, cores, canvas, names, record: dict) -> None:
        """The manifest, written after every tile, by the owner: only now does the checkpoint count."""
        manifest = {"step": step, "slot": slot, "arrays": list(names), "canvas": list(canvas),
                    "windows": [_win(w) for w in windows], "cores": [_win(c) for c in cores], "record": record}
        self.advance(checkpoint=json.loads(json.dumps(manifest)))

    def checkpoint_manifest(self) -> dict | None:
        return self.progress().get("checkpoint")

    def load_checkpoint(self) -> Checkpoint | None:
        m = self.checkpoint_manifest()
        if m is None:
            return None
        windows = [Window(*w) for w in m["windows"]]
        cores = [Window(*c) for c in m["cores"]]
        H, W = m["canvas"]
        out: dict[str, torch.Tensor] = {}
        for name in m["arrays"]:
            tiles = torch.from_numpy(np.ascontiguousarray(self.group[f"checkpoints/slot{m['slot']}/{name}"][...]))
            canvas = torch.zeros(tiles.shape[1:-2] + (H, W), dtype=tiles.dtype)
            for t, win, core in zip(tiles, windows, cores):
                ys, xs = local(core, win, (H, W))
                paste(canvas, core, t[..., ys, xs])
            out[name] = canvas
        return Checkpoint(m["step"], windows, cores, out.pop("latent"),
                          {k.split("/", 1)[1]: v for k, v in out.items() if k.startswith("scheduler/")},
                          {k.split("/", 1)[1]: v for k, v in out.items() if k.startswith("cache/")},
                          m["record"])

    def checkpoint_pieces(self, win: Window) -> list:
        """The pieces of `win` from the latest checkpoint, reading only the chunks of tiles whose cores
        overlap it (what a worker resuming one window needs)."""
        from supergen.tilework import Piece

        m = self.checkpoint_manifest()
        canvas = tuple(m["canvas"])
        pieces = []
        for k, (w, c) in enumerate(zip(m["windows"], m["cores"])):
            w, c = Window(*w), Window(*c)
            rects = intersections(c, win, canvas)
            if not rects:
                continue
            chunk = {n: torch.from_numpy(np.ascontiguousarray(self.group[f"checkpoints/slot{m['slot']}/{n}"][k]))
                     for n in m["arrays"]}
            for r in rects:
                ys, xs = local(r, w, canvas)
                pieces.append(Piece(r, {_map_name(n): t[..., ys, xs].clone() for n, t in chunk.items()}))
        return pieces

    def stage_pieces(self, name: str, win: Window) -> list:
        """The pieces of `win` (which may wrap) of a stage latent, read region by region."""
        from supergen.tilework import Piece

        arr = self.group[f"{name}/latent"]
        canvas = tuple(arr.shape[-2:])
        out = []
        for r in intersections(win, Window(0, 0, *canvas), canvas):
            data = arr[..., r.top : r.top + r.height, r.left : r.left + r.width]
            out.append(Piece(r, {"x": torch.from_numpy(np.ascontiguousarray(data))}))
        return out

    # -- outputs -------------------------------------------------------------------------------------
    def write_file(self, name: str, data: bytes) -> None:
        try:
            self.fs.pipe_file(self._key(name), data)
        except Exception as e:
            raise self._fail(f"cannot write {name} to", e) from None

    def read_file(self, name: str) -> bytes:
        try:
            return self.fs.cat_file(self._key(name))
        except FileNotFoundError:
            raise StoreError(f"{self.url} has no {name}") from None
        except Exception as e:
            raise self._fail(f"cannot read {name} from", e) from None

    def write_outputs(self, result) -> None:
        """Final latent, frames and files; the owner then calls `finish` (status and marker)."""
        from supergen import outputs

        spec = result.spec
        if self.load_stage("final") is None:
            self.save_stage("final", result.latent)
        s = spec.canvas_size[0] // result.latent.shape[-1]  # pixels per latent cell
        frames = result.video.numpy()
        chunk = (min(len(frames), spec.fps), min(frames.shape[1], spec.tile[0] * s),
                 min(frames.shape[2], spec.tile[1] * s), 3)
        from zarr.codecs import ZstdCodec

        self._write_array("video/frames", frames, chunk, ["frame", "y", "x", "rgb"], compressors=[ZstdCodec(level=1)])
        # lossless, so quality checks compare the output with the sketch itself, not with sketch.mp4's codec
        sketch = result.sketch_video.numpy()
        self._write_array("sketch/frames", sketch, (min(len(sketch), spec.fps),) + sketch.shape[1:],
                          ["frame", "y", "x", "rgb"], compressors=[ZstdCodec(level=1)])
        self.write_file("video.mp4", outputs.mp4_bytes(result.video, spec.fps))
        self.write_file("sketch.mp4", outputs.mp4_bytes(result.sketch_video, spec.fps))
        self.write_file("contact_sheet.png", outputs.png_bytes(outputs.contact_sheet(result.sketch_video,
                                                                                      result.video)))
        self.write_file("cache_skips.png", outputs.png_bytes(outputs.skip_heatmap(
            result.cache.skip_map if result.cache else [])))
        self.write_file("render.json", json.dumps(result.report(), indent=1).encode())

    def video_frames(self, frames: slice = slice(None), y: slice = slice(None), x: slice = slice(None)):
        """A region of the output frames without reading the rest (chunked by frame blocks and tiles)."""
        return self.group["video/frames"][frames, y, x, :]

    def sketch_frames(self) -> np.ndarray | None:
        """The decoded sketch (frame, y, x, rgb) uint8, None for stores written before it was kept."""
        return self._read_array("sketch/frames")

    # -- inspection ----------------------------------------------------------------------------------
    def inspect(self) -> dict:
        attrs, progress = self.attrs, self.progress()
        m = progress.get("checkpoint")
        report = {"url": self.url, "status": progress.get("status"), "complete": self.complete,
                  "layout": attrs.get("supergen_layout"), "seed": attrs.get("seed"),
                  "spec": attrs.get("spec"),
                  "last_checkpoint_step": None if m is None else m["step"],
                  "stages": [s for s in ("sketch", "start", "final") if self.has_array(f"{s}/latent")]}
        if m is not None and m["record"].get("cache", {}).get("skip_map"):
            sm = m["record"]["cache"]["skip_map"]
            total = sum(len(r) for r in sm)
            report["skip_ratio_so_far"] = round(sum(map(sum, sm)) / total, 4) if total else 0.0
        outs = {}
        for name in FILES + (MARKER,):
            try:
                outs[name] = self.fs.size(self._key(name))
            except FileNotFoundError:
                pass
            except Exception:
                pass
        report["outputs_bytes"] = outs
        report["owner"] = self._owner_report()
        from supergen.executor import memory_summary

        report["memory_estimate"] = memory_summary(self.spec())
        return report

    def _owner_report(self) -> dict | None:
        n, cur = leases.Lease(self.fs, self._path).current()
        if cur is None:
            return None
        now = time.time()
        state = leases.judge(cur, now, leases.owner_id())
        return {"owner": cur.get("owner"), "generation": n, "state": {"mine": "live"}.get(state, state),
                "heartbeat_age_s": round(now - float(cur.get("heartbeat", now)), 1)}


def _map_name(array_name: str) -> str:
    """Store array names -> tile-work map names ("latent" -> "x", "scheduler/k" -> "sched/k")."""
    if array_name == "latent":
        return "x"
    return array_name.replace("scheduler/", "sched/", 1)


def _win(w: Window) -> list[int]:
    return [w.top, w.left, w.height, w.width]
