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
      sketch/video                  float32 (batch, 3, frame, y, x): the sketch decoded by the workers together
    <url>/progress.json             status and the checkpoint manifest: written only by the lease owner,
                                    only forward
    <url>/lease/<n>.json            ownership (storage/lease.py): one live render per store
    <url>/inputs/image.<ext>        the conditioning image, byte for byte, so no worker needs its path
    <url>/inputs/lora-<k>.safetensors  each LoRA adapter's weights, byte for byte, for the same reason
    <url>/inputs/lora-<k>.sha256    its SHA-256: a host fetches each adapter once, into a file of that name
    <url>/video.mp4 sketch.mp4 contact_sheet.png cache_skips.png render.json
    <url>/COMPLETE                  written last, by the owner: only its presence makes a render complete

Files live beside the Zarr group, not in it, so Zarr tools list the group without tripping over them.
The store stores what it is given: checkpoints follow storage/checkpoints.py's slot protocol, and the
outputs are encoded by supergen/outputs.py.
"""

from __future__ import annotations

import contextlib
import json
import posixpath
import os
import time
import uuid
from typing import Any

import numpy as np
import torch

from supergen import lora
from supergen.errors import SpecError
from supergen.inputs import read_image
from supergen.tiling import Window, intersections

from . import checkpoints
from . import lease as leases
from .location import (MISSING, StoreError, StoreNotFound, bucket_of, check_reachable, describe, filesystem,
                       normalize, redact)

LAYOUT_VERSION = 2
DATA = "data.zarr"
PROGRESS = "progress.json"
MARKER = "COMPLETE"
FILES = ("video.mp4", "sketch.mp4", "contact_sheet.png", "cache_skips.png", "render.json")
INPUTS = "inputs/"
STATUSES = ("created", "sketched", "refining", "refined", "complete")  # the only order status moves in
STAGES = ("sketch", "start", "final")  # saving STAGES[i] moves the status to STATUSES[i + 1]


class RenderStore:
    """One render's store. Pickles as (url, storage_options, read_only); never prints the options.

    A read-only store refuses every write of the render itself (arrays, progress, ownership, its inputs,
    outputs and marker) in one place, `_require_writable`; it may still add files of its own beside them
    (`supergen quality` writes quality.json into a finished render).

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
    def _connect(self) -> tuple[Any, str]:
        """(fsspec filesystem, the store's path on it), made on first use: the store travels as a recipe."""
        if self._fs is None:
            self._fs, self._path = filesystem(self.url, self.storage_options)
        return self._fs, self._path

    @property
    def fs(self):
        return self._connect()[0]

    def _key(self, name: str) -> str:
        return f"{self._connect()[1].rstrip('/')}/{name}"

    def _fail(self, what: str, e: Exception) -> StoreError:
        return StoreError(redact(f"{what} {self.url}: {describe(e)}", self.storage_options))

    def _require_writable(self) -> None:
        """Refuse a write through a read-only store: the one check every verb that writes the render makes."""
        if self.read_only:
            raise StoreError(f"{self.url} is open read-only: this write needs the store opened writable")

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
        except MISSING + (ValueError,):  # no zarr.json at the root, or not a Zarr one: not a layout-1 store
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
        try:
            if bucket is not None:
                self._check_bucket(bucket)
            probe = self._probe_path("write")
            self.fs.pipe_file(probe, b"ok")
            self.fs.rm_file(probe)
        except StoreError:
            raise
        except PermissionError as e:
            raise StoreError(redact(f"no permission to write to {self.url}: {describe(e)}",
                                    self.storage_options)) from None
        except Exception as e:
            raise self._fail("cannot write to", e) from None

    def _probe_path(self, kind: str) -> str:
        """A fresh name for a probe file at the store's location. A folder not made yet lends its nearest
        existing parent, so a check makes and removes nothing another render may be using; the name is
        its own (renders race)."""
        where = self._connect()[1]
        if self.url.startswith("file://"):
            while not self.fs.exists(where) and posixpath.dirname(where) != where:
                where = posixpath.dirname(where)
        return f"{where.rstrip('/')}/.supergen-{kind}-probe-{uuid.uuid4().hex}"

    @contextlib.contextmanager
    def reach_probe(self):
        """A probe file at the store's location for as long as the `with` lasts: (its path, its content),
        for other hosts to look for (`sees`); a host that does not find it does not share this location."""
        path, token = self._probe_path("reach"), uuid.uuid4().hex.encode()
        try:
            self.fs.pipe_file(path, token)
        except Exception as e:
            raise self._fail("cannot write to", e) from None
        try:
            yield path, token
        finally:
            self.fs.rm_file(path)

    def sees(self, probe: tuple[str, bytes]) -> str | None:
        """Run where the store will be used (a worker's host): why this host does not see the location
        that holds `probe` (`reach_probe`), or None when it reads the very file."""
        path, token = probe
        try:
            check_reachable(self.storage_options)
            found = self.fs.cat_file(path)
        except StoreError as e:
            return str(e)
        except FileNotFoundError:
            if self.url.startswith("file://"):
                return (f"{self.url} is a folder this host does not see (no shared disk with the host that "
                        "submitted the render)")
            return f"{self.url} holds no probe {path} here: this host reaches another storage than the submitter"
        except Exception as e:
            return redact(f"cannot read {self.url}: {describe(e)}", self.storage_options)
        if found != token:
            return f"{self.url} is another folder on this host than on the submitter's (a local disk at the same path)"
        return None

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
        self._require_writable()
        leases.hold(*self._connect(), self._lease_key(), self.url)

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
        """{"status", "checkpoint" (the latest `CheckpointManifest` as a dict, or None)}; a store without
        progress.json is new."""
        try:
            return json.loads(self.fs.cat_file(self._key(PROGRESS)))
        except MISSING:
            return {"status": "created", "checkpoint": None}
        except Exception as e:
            raise self._fail("cannot read progress of", e) from None

    def advance(self, status: str | None = None, checkpoint: checkpoints.CheckpointManifest | None = None) -> None:
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
            if old is not None and checkpoint.step <= old["step"]:
                raise StoreError(f"{self.url}: checkpoint cannot go back from step {old['step']} to "
                                 f"{checkpoint.step}")
            new["checkpoint"] = checkpoint.to_dict()
        self._write_progress(new)

    def _write_progress(self, progress: dict) -> None:
        self._require_writable()
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
            # a live owner is the cause to name: its store may be mid-initialisation, or its render another
            leases.Lease(*store._connect()).refuse_if_live(store.url)
            raise StoreError(f"{store.url} {problem}; pass --overwrite to replace it")
        if problem is None and store.complete:
            return store
        fresh = problem is not None or not store.exists()  # a store to initialise copies the image: read it now,
        image = read_image(spec.image) if fresh and spec.image is not None else None  # so a bad one writes nothing
        store.acquire()
        try:
            problem = store.problem_with(spec)  # again, now that no one else can change it
            if problem is not None and not overwrite:
                raise StoreError(f"{store.url} {problem}; pass --overwrite to replace it")
            if problem is None and store.exists():
                return store
            store.clear()
            if spec.image is not None:  # before the attributes: a store that exists holds its inputs
                store.write_file(image_name(spec.image), image if image is not None else read_image(spec.image))
            for k, entry in enumerate(spec.lora):  # adapters too: workers on other hosts load these copies
                adapter = lora.parse(entry)
                store._put_input(lora_name(k), adapter.file)
                store.write_file(lora_name(k, ".sha256"), lora.sha256(adapter).encode())
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
            raise StoreNotFound(f"no render store at {store.url}")
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
        old = attrs.get("spec") or {}
        try:  # a field added since the store was written takes its default, the behaviour it then had
            old = json.loads(json.dumps(type(spec).from_dict(old).to_dict()))
        except SpecError:  # not a spec this supergen reads: compared as stored
            pass
        if old != json.loads(json.dumps(spec.to_dict())):
            new = spec.to_dict()
            fields = sorted(k for k in set(old) | set(new) if old.get(k) != json.loads(json.dumps(new.get(k))))
            return f"already holds a render of a different spec (differs in {fields})"
        return None

    def clear(self) -> None:
        """Remove everything but the lease (the owner only: ownership is what makes clearing safe)."""
        self._owner_check()
        self._require_writable()
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
        except MISSING:
            return False
        except Exception as e:
            raise self._fail("cannot read", e) from None

    def finish(self) -> None:
        """The owner's last act: status complete, then the marker, then the lease goes."""
        self.advance("complete")
        self.write_file(MARKER, b"")
        self.release()

    # -- stage tensors (RenderSink) ------------------------------------------------------------------
    def _write_array(self, name: str, data: np.ndarray, chunks: tuple[int, ...], dims: list[str],
                     compressors=None, attributes: dict | None = None) -> None:
        self._require_writable()
        try:
            arr = self.group.create_array(name, shape=data.shape, dtype=data.dtype, chunks=chunks,
                                          compressors=compressors, fill_value=0, dimension_names=dims,
                                          overwrite=True, attributes=attributes)
            arr[...] = data
        except Exception as e:
            raise self._fail(f"cannot write {name} to", e) from None

    def _begin_array(self, name: str, shape: tuple[int, ...], dtype, chunks: tuple[int, ...], dims: list[str],
                     compressors=None) -> None:
        """An empty array that several writers then fill region by region (`write_region`)."""
        self._require_writable()
        try:
            self.group.create_array(name, shape=shape, dtype=dtype, chunks=chunks, compressors=compressors,
                                    fill_value=0, dimension_names=dims, overwrite=True)
        except Exception as e:
            raise self._fail(f"cannot create {name} in", e) from None

    def write_region(self, name: str, index: tuple, data: np.ndarray) -> None:
        """`data` into `index` of the array `name`. Zarr rewrites a chunk whole: two writers of one chunk
        must not overlap in time (`supergen.vaetiles.pieces` orders them)."""
        self._require_writable()
        try:
            self.group[name][index] = data
        except Exception as e:
            raise self._fail(f"cannot write {name} to", e) from None

    def _read_array(self, name: str) -> np.ndarray | None:
        try:
            return self.group[name][...]
        except MISSING:
            return None

    def has_array(self, name: str) -> bool:
        try:
            self.group[name]
            return True
        except MISSING:
            return False

    def _stage_chunks(self, name: str, shape: tuple[int, ...]) -> tuple[int, ...]:
        tile = self.attrs["spec"]["tile"]
        return shape if name == "sketch" else tuple(shape[:-2]) + tuple(min(t, s) for t, s in zip(tile, shape[-2:]))

    def save_stage(self, name: str, tensor: torch.Tensor, record: dict | None = None) -> None:
        """A stage latent, `record` in its array's attributes (written with its metadata, before its data)."""
        data = tensor.detach().float().cpu().numpy()
        self._write_array(f"{name}/latent", data, self._stage_chunks(name, data.shape),
                          ["batch", "channel", "frame", "y", "x"], attributes={"record": record} if record else None)
        if self.owned:  # in process; on a cluster the workers write stages and the driver advances
            self.advance(STATUSES[STAGES.index(name) + 1])

    def begin_stage(self, name: str, shape: tuple[int, ...]) -> tuple[int, ...]:
        """An empty stage latent (chunked as `save_stage` chunks it) for region writers; its chunk shape."""
        chunks = self._stage_chunks(name, shape)
        self._begin_array(f"{name}/latent", shape, np.float32, chunks, ["batch", "channel", "frame", "y", "x"])
        return chunks

    def stage_shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.group[f"{name}/latent"].shape)

    def stage_region(self, name: str, y: slice, x: slice) -> torch.Tensor:
        """A (y, x) region of a stage latent, all frames and channels."""
        return torch.from_numpy(np.ascontiguousarray(self.group[f"{name}/latent"][..., y, x]))

    def begin_video(self, name: str, shape: tuple[int, ...]) -> tuple[int, ...]:
        """An empty decoded video (B, 3, F, H, W) float32 in [-1, 1] for region writers (the decoded sketch,
        which the upscale and the export both read); its chunk shape."""
        chunks = tuple(shape[:3]) + tuple(min(256, n) for n in shape[3:])
        self._begin_array(f"{name}/video", shape, np.float32, chunks, ["batch", "channel", "frame", "y", "x"])
        return chunks

    def load_video(self, name: str) -> torch.Tensor | None:
        data = self._read_array(f"{name}/video")
        return None if data is None else torch.from_numpy(np.ascontiguousarray(data))

    def stage_record(self, name: str) -> dict | None:
        """The record saved with a stage latent (`save_stage`), or None."""
        try:
            return dict(self.group[f"{name}/latent"].attrs).get("record")
        except MISSING:
            return None

    def load_stage(self, name: str) -> torch.Tensor | None:
        data = self._read_array(f"{name}/latent")
        return None if data is None else torch.from_numpy(np.ascontiguousarray(data))

    def stage_pieces(self, name: str, win: Window) -> list:
        """The pieces of `win` (which may wrap) of a stage latent, read region by region."""
        from supergen.tilestep import Piece

        arr = self.group[f"{name}/latent"]
        canvas = tuple(arr.shape[-2:])
        out = []
        for r in intersections(win, Window(0, 0, *canvas), canvas):
            data = arr[..., r.top : r.top + r.height, r.left : r.left + r.width]
            out.append(Piece(r, {"latent": torch.from_numpy(np.ascontiguousarray(data))}))
        return out

    # -- checkpoints: storage/checkpoints.py's slot protocol as this store's verbs (CheckpointStore) ---
    save_checkpoint = checkpoints.save
    load_checkpoint = checkpoints.load
    begin_checkpoint = checkpoints.begin
    write_checkpoint_tile = checkpoints.write_tile
    commit_checkpoint = checkpoints.commit
    checkpoint_manifest = checkpoints.manifest
    checkpoint_pieces = checkpoints.pieces

    # -- inputs and outputs: bytes and frames as given (supergen/outputs.py encodes them) -------------
    def write_file(self, name: str, data: bytes) -> None:
        """`data` as the file `name` beside the Zarr group. The render's own files (outputs, marker, inputs)
        need a writable store; other files annotate a render from outside (quality.json)."""
        if name in FILES + (MARKER,) or name.startswith(INPUTS):
            self._require_writable()
        try:
            self.fs.pipe_file(self._key(name), data)
        except Exception as e:
            raise self._fail(f"cannot write {name} to", e) from None

    def _put_input(self, name: str, path: str) -> None:
        """The local file at `path` as the input `name`, streamed (an adapter may weigh hundreds of MB)."""
        self._require_writable()
        try:
            self.fs.put_file(path, self._key(name))
        except Exception as e:
            raise self._fail(f"cannot copy {path} as {name} to", e) from None

    def fetch_lora(self, k: int, folder: str) -> str | None:
        """The render's k-th LoRA adapter as a file in the local `folder`, named by its SHA-256 (kept beside
        the store's copy), so a host fetches each adapter once whatever render or stage asks; None for a store
        written before it kept copies."""
        import hashlib

        try:
            sha = self.fs.cat_file(self._key(lora_name(k, ".sha256"))).decode().strip()
        except MISSING:
            return None
        except Exception as e:
            raise self._fail(f"cannot read {lora_name(k, '.sha256')} from", e) from None
        path = os.path.join(folder, f"{sha}.safetensors")
        if os.path.isfile(path):
            return path
        try:
            data = self.fs.cat_file(self._key(lora_name(k)))
        except Exception as e:
            raise self._fail(f"cannot read {lora_name(k)} from", e) from None
        if hashlib.sha256(data).hexdigest() != sha:
            raise StoreError(f"{self.url}: {lora_name(k)} is not the adapter the render was given (its SHA-256 "
                             "differs from the one recorded with it)")
        os.makedirs(folder, exist_ok=True)
        part = f"{path}.{uuid.uuid4().hex}.part"  # workers of one host fetch at once: rename is atomic
        with open(part, "wb") as f:
            f.write(data)
        os.replace(part, path)
        return path

    def read_file(self, name: str) -> bytes:
        try:
            return self.fs.cat_file(self._key(name))
        except MISSING:
            raise StoreError(f"{self.url} has no {name}") from None
        except Exception as e:
            raise self._fail(f"cannot read {name} from", e) from None

    def input_image(self) -> bytes | None:
        """The conditioning image's file, byte for byte, from the store's copy (no worker needs the original
        path); None for a render without an image. A store written before it kept the copy reads the path."""
        path = self.attrs["spec"].get("image")
        if path is None:
            return None
        try:
            return self.fs.cat_file(self._key(image_name(path)))
        except MISSING:
            return read_image(path)  # a missing or unreadable original is refused naming its path
        except Exception as e:
            raise self._fail("cannot read the conditioning image from", e) from None

    @staticmethod
    def _frame_chunks(shape: tuple[int, ...], fps: int, tile: tuple[int, int] | None) -> tuple[int, ...]:
        f, h, w, _ = shape
        th, tw = tile or (h, w)
        return min(f, fps), min(h, th), min(w, tw), 3

    def save_frames(self, name: str, frames: np.ndarray, fps: int, tile: tuple[int, int] | None = None) -> None:
        """`name`/frames: (frames, y, x, rgb) uint8, zstd(1), one chunk per second (`fps` frames) and per
        `tile` pixels (the whole frame when None), so a reader of one region of one second reads one chunk."""
        from zarr.codecs import ZstdCodec

        self._write_array(f"{name}/frames", frames, self._frame_chunks(frames.shape, fps, tile),
                          ["frame", "y", "x", "rgb"], compressors=[ZstdCodec(level=1)])

    def begin_frames(self, name: str, shape: tuple[int, ...], fps: int, tile: tuple[int, int] | None = None
                     ) -> tuple[int, ...]:
        """Empty `name`/frames (chunked as `save_frames` chunks them) for region writers; its chunk shape."""
        from zarr.codecs import ZstdCodec

        chunks = self._frame_chunks(shape, fps, tile)
        self._begin_array(f"{name}/frames", shape, np.uint8, chunks, ["frame", "y", "x", "rgb"],
                          compressors=[ZstdCodec(level=1)])
        return chunks

    def video_frames(self, frames: slice = slice(None), y: slice = slice(None), x: slice = slice(None)):
        """A region of the output frames without reading the rest (chunked by frame blocks and tiles)."""
        return self.group["video/frames"][frames, y, x, :]

    def sketch_frames(self) -> np.ndarray | None:
        """The decoded sketch (frame, y, x, rgb) uint8, None for stores written before it was kept."""
        return self._read_array("sketch/frames")

    # -- inspection ----------------------------------------------------------------------------------
    def inspect(self) -> dict:
        attrs, progress = self.attrs, self.progress()
        m = self.checkpoint_manifest()
        report = {"url": self.url, "status": progress.get("status"), "complete": self.complete,
                  "layout": attrs.get("supergen_layout"), "seed": attrs.get("seed"),
                  "spec": attrs.get("spec"),
                  "last_checkpoint_step": None if m is None else m.step,
                  "stages": [s for s in STAGES if self.has_array(f"{s}/latent")],
                  "models": self.stage_record("sketch")}  # SRDiffusion: where the switch fell and why
        if m is not None and m.record.get("cache", {}).get("skip_map"):
            sm = m.record["cache"]["skip_map"]
            total = sum(len(r) for r in sm)
            report["skip_ratio_so_far"] = round(sum(map(sum, sm)) / total, 4) if total else 0.0
        report["outputs_bytes"] = self.outputs()
        report["owner"] = self._owner_report()
        from supergen.executor import memory_summary

        report["memory_estimate"] = memory_summary(self.spec())
        return report

    def outputs(self) -> dict[str, int]:
        """Bytes of each output file written so far (and of the completion marker)."""
        outs = {}
        for name in FILES + (MARKER,):
            try:
                outs[name] = self.fs.size(self._key(name))
            except MISSING:
                pass
            except Exception as e:
                raise self._fail(f"cannot read {name} of", e) from None
        return outs

    def _owner_report(self) -> dict | None:
        n, cur = leases.Lease(*self._connect()).current()
        if cur is None:
            return None
        now = time.time()
        state = leases.judge(cur, now, leases.owner_id())
        return {"owner": cur.get("owner"), "generation": n, "state": {"mine": "live"}.get(state, state),
                "heartbeat_age_s": round(now - float(cur.get("heartbeat", now)), 1)}


def lora_name(k: int, ext: str = ".safetensors") -> str:
    """Where the store keeps the render's k-th LoRA adapter (its weights file, byte for byte; `.sha256`: the
    file's hash, which names a host's local copy)."""
    return f"{INPUTS}lora-{k}{ext}"


def image_name(path: str) -> str:
    """Where the store keeps the conditioning image at `path`: `inputs/image` with the file's extension."""
    return f"{INPUTS}image{os.path.splitext(path)[1].lower()}"
