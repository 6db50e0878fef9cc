"""Distributed refinement: one plain Dask task per tile window per step, placed by cache locality.

Per refinement step i (keys read well on the Dask dashboard; the suffix is the render id):

    gather-s{i}-t{m}-{rid}   assemble window m from the pieces its cells' owners sent   (locality worker)
    denoise-s{i}-t{m}-{rid}  predict or reuse window m                                  (rebalanced worker)
    branch-s{i}-t{m}-b{b}-{rid}  CFG branch b of window m, when balancing sends it elsewhere (a light worker)
    advance-s{i}-t{k}-{rid}  merge + scheduler step on core k, cut next-step pieces     (core k's worker)
    strips-s{i}-t{m}-to{k}-{rid}  the part of window m's prediction on core k, cut where m was denoised
                                  (only when core k advances on another worker)
    pieces-s{i}-t{k}-to{m}-{rid}  the part of core k that window m needs: runs where it lives, so only
                                  strips that change owner move, worker to worker
    thresholds-s{i}-{rid}    the region cache's new per-tile thresholds, on the steps that update them

The client only sees small metadata (cache observations, task timings); latents never pass through it.
With the region cache the driver waits once per step, for the observations its skip decisions need, and
reads the previous step's task metadata in the same round trip. Without it, nothing in a step depends on
the client, so the driver keeps one step in flight: the workers find step i + 1 queued when step i ends.
"""

from __future__ import annotations

import itertools
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
from distributed import Client

from flows import interrupt, tilemap
from flows.watch import Watch, WorkerLost
from supergen import pair
from supergen.backends import expert_plan, model_identity, model_info
from supergen.cache import CacheConfig, CacheReport
from supergen.cache.policy import decide
from supergen.cache.state import canvas_observation
from supergen.refine import RefinePlan
from supergen.stepplan import plan_compute, plan_gather
from supergen.tiling import Window, intersections
from tasks import refine as T
from tasks.model import ModelHolder
from tasks.preload import pin_resource


@dataclass
class StepStats:
    step: int
    tiles: int
    computed: int
    bytes_moved: int  # pieces and inputs that crossed workers
    allgather_bytes: int  # what the official scheme moves: all-gather of predictions + latent re-sync
    busy_s: dict[str, float]  # seconds of tile forwards per worker
    idle_s: dict[str, float]  # the busiest worker's time minus each worker's
    wall_s: float
    calls: dict[str, int] = field(default_factory=dict)  # model calls per worker (the balance, noise-free)
    tile_map: dict = field(default_factory=dict)  # which worker denoised which tile, which were skipped (tilemap)
    tile_totals: dict = field(default_factory=dict)  # per worker: [tiles computed, skipped] over the steps so far


@dataclass
class RefineStats:
    workers: list[str]
    steps: list[StepStats] = field(default_factory=list)
    tasks: int = 0
    forwards: int = 0
    wall_s: float = 0.0
    balance: str = "branches"
    branches_moved: int = 0  # CFG branches run away from their tile's worker
    strips_moved: int = 0  # prediction strips sent to the worker advancing an overlapped core
    cache: dict = field(default_factory=dict)
    tiles_per_step: list[int] = field(default_factory=list)

    def summary(self) -> dict:
        moved = sum(s.bytes_moved for s in self.steps)
        allg = sum(s.allgather_bytes for s in self.steps)
        idle = sum(sum(s.idle_s.values()) for s in self.steps)
        busy = sum(sum(s.busy_s.values()) for s in self.steps)
        return {"workers": self.workers, "steps": len(self.steps), "tasks": self.tasks, "forwards": self.forwards,
                "wall_s": round(self.wall_s, 3), "bytes_moved": moved, "allgather_bytes": allg,
                "bytes_moved_vs_allgather": round(moved / allg, 4) if allg else None,
                "busy_s": round(busy, 3), "idle_s": round(idle, 3), "balance": self.balance,
                "branches_moved": self.branches_moved, "strips_moved": self.strips_moved}

    def to_dict(self) -> dict:
        return {**self.summary(), "per_step": [asdict(s) for s in self.steps]}


def workers_info(client: Client) -> dict:
    """Every worker's scheduler record by address, asked of the scheduler now. Not `scheduler_info()`: it
    returns the client's shared copy, which the client's periodic refresh replaces with one that lists no
    workers, so a driver thread reading it while another render's thread refreshes it can find a worker
    missing (seen: a render of a queue failed with KeyError for a worker's name)."""
    return client.sync(client.scheduler.identity, n_workers=-1)["workers"]


def worker_names(client: Client) -> list:
    """Exact worker names from the scheduler (pinning to a name that does not exist hangs silently)."""
    return sorted((w["name"] for w in workers_info(client).values()), key=str)


def pin_kwargs(client: Client) -> dict:
    """submit() arguments that pin a task to each worker: its pin resource when it has one (survives
    restarts), else a hard name restriction."""
    out = {}
    for w in workers_info(client).values():
        res = pin_resource(w["name"])
        out[w["name"]] = ({"resources": {res: 1}} if res in (w.get("resources") or {})
                          else {"workers": [w["name"]], "allow_other_workers": False})
    return out


def check_workers(client: Client, spec, memory: bool = False) -> list:
    """Fail early, naming each worker and what it lacks, when a worker cannot run the spec: its device
    (and, with `memory`, the estimated peak against its free memory). The spec was built and validated
    wherever the client runs, which may have no GPU at all; only the workers can say."""
    from supergen.errors import SupergenError
    from tasks.stages import worker_problem

    names = worker_names(client)
    if not names:
        raise SupergenError(f"the cluster at {client.scheduler.address} has no workers")
    if not memory and not spec.device.startswith("cuda"):
        return names  # every worker has a CPU: nothing to ask them (the flow asked the rest before any stage)
    models = {m: model_identity(m) for m in (spec.model, spec.render_model) if m is not None}
    raise_problems(client, client.run(worker_problem, spec, memory, models), "cannot run this render")
    return names


def check_store_reach(client: Client, store) -> None:
    """Fail early, naming each worker, when a worker's host does not reach the store this host does: a
    probe file written here must be the one each worker reads back. A folder on this host's own disk
    passes only where every worker shares it (one host, or a shared mount at the same path)."""
    with store.reach_probe() as probe:
        found = client.run(store.sees, probe)
    raise_problems(client, found, f"cannot use the store {store.url}",
                   fix="give a store every host reaches: an object-store URL (--store s3://bucket/prefix, with an "
                       "endpoint the workers can connect to) or a folder mounted at the same path on every host")


def raise_problems(client: Client, found: dict, what: str, fix: str = "") -> None:
    """Raise one error naming every worker (and its address) whose answer in `found` (address: problem or
    None, from `client.run`) is a problem; `fix` says what to do about it."""
    from supergen.errors import SupergenError

    info = workers_info(client)
    problems = sorted((str(info[a]["name"]), a, p) for a, p in found.items() if p and a in info)
    if problems:
        raise SupergenError("; ".join(f"worker {name} ({address}) {what}: {p}" for name, address, p in problems)
                            + (f". Fix: {fix}" if fix else ""))


def cell_bytes(channels: int, frames: int, cache_on: bool) -> int:
    """Bytes one latent cell of tile state weighs: the float32 latent and, with the cache, its maps, sized
    from the cache state's own layout (`cache.state`)."""
    from supergen.cache.state import SCALARS, TENSORS, scalar_dtype

    per = channels * frames * 4
    if cache_on:
        per += len(TENSORS) * channels * frames * 4 + sum(scalar_dtype(k).itemsize for k in SCALARS)
    return per


@dataclass
class _Submitted:
    """A refinement step in flight: what the driver knows of it before its metadata comes back."""

    step: int
    tiles: int
    computed: int
    moved: int
    metas: list  # futures of DenoiseMeta: the step's tiles, then its CFG branches run apart
    layout: tuple = ()  # (grid, each tile's worker, {split tile: its branches' workers}) for the tile map


class TileFailure(RuntimeError):
    """A tile task kept killing its workers (out of memory, a crashing driver): names tile, step, worker."""


def refine_on_cluster(client: Client, store, spec, *, workers: list | None = None, **kwargs) -> RefineStats:
    """Run the refinement stage of `spec` (resolved) on the cluster behind `client`, from the store's start
    latent or its last checkpoint; writes checkpoints and final/latent into the store.

    A worker gone for good (`flows.watch`) costs the steps since the last checkpoint: the stage starts again
    from it on the workers left, and gives the same latent (placement never changes the result). A tile
    whose task kills its worker `distributed.scheduler.allowed-failures` + 1 times raises `TileFailure`; the
    store keeps its last checkpoint, so `supergen resume` continues from there."""
    from distributed.scheduler import KilledWorker

    kept: list[StepStats] = []  # steps of attempts that lost a worker, up to the checkpoint the next resumes
    tasks, rid = 0, kwargs.pop("render_id", None) or uuid.uuid4().hex[:8]
    for attempt in itertools.count():  # each under its own keys: Dask may still hold a cancelled attempt's
        driver = _driver(client, store, spec, workers=workers, render_id=rid if not attempt else f"{rid}w{attempt}",
                         **kwargs)
        try:
            stats = driver.run()
        except WorkerLost as e:
            manifest = store.checkpoint_manifest()
            last = -1 if manifest is None else manifest.step
            kept = [st for st in kept + driver.stats.steps if st.step <= last]
            tasks += driver.stats.tasks
            workers = [w for w in driver.workers if str(w) not in set(e.lost)]
            run_logger().warning("%s; refining again from %s on %s", e,
                                 f"step {last + 1}" if last >= 0 else "the start", workers)
            if not workers:
                raise
            continue
        except KilledWorker as e:
            raise _tile_failure(store, e) from None
        stats.steps[:0] = kept  # the last attempt began where they end, at the checkpoint after them
        stats.tasks += tasks
        return stats


def run_logger():
    """The Prefect run's logger inside a flow or task run (its lines show in the run's logs), else
    supergen's."""
    import logging

    from prefect.exceptions import MissingContextError
    from prefect.logging import get_run_logger

    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger("supergen")


def _tile_failure(store, e) -> TileFailure:
    key = str(e.task)
    step, tile = task_step_tile(key)
    last = getattr(e, "last_worker", None)
    worker = getattr(last, "name", None) or getattr(last, "address", None) or str(last)
    return TileFailure(f"task {key} (tile {tile}, refinement step {step}) killed worker {worker} repeatedly "
                       f"(out of memory?); {store.url} keeps its {checkpoint_words(store)}: `supergen resume` "
                       "continues it")


def checkpoint_words(store) -> str:
    """'last checkpoint after step N' or 'no checkpoint yet': what a failed render leaves to resume from."""
    manifest = store.checkpoint_manifest()
    return "no checkpoint yet" if manifest is None else f"last checkpoint after step {manifest.step}"


def task_step_tile(key: str) -> tuple[int | None, int | None]:
    """(step, tile) from a tile task key such as 'denoise-s012-t03-<id>'."""
    m = re.match(r"^[a-z]+-s(\d+)-t(\d+)", key)
    return (int(m.group(1)), int(m.group(2))) if m else (None, None)


BALANCE = ("locality", "tiles", "branches")


def _driver(client: Client, store, spec, *, balance: str = "branches", render_id: str | None = None,
            on_step: Callable[[StepStats], None] | None = None, workers: list | None = None) -> _Driver:
    if balance not in BALANCE:
        raise ValueError(f"balance must be one of {BALANCE}, got {balance!r}")
    return _Driver(client, store, spec, balance, render_id or uuid.uuid4().hex[:8], on_step, workers)


class _Driver:
    """Submits each refinement step's plan (`supergen.stepplan`) as Dask tasks and accounts for it. Per step:
    `_gather` (inputs from the store or the previous step's pieces), `_decide` (cache decisions from small
    observations), `_denoise` (tiles and CFG branches where the plan puts them), `_advance` (merge + step on
    every core, checkpoint chunks), then `_commit` or keep the step in flight."""

    def __init__(self, client: Client, store, spec, balance: str, rid: str, on_step, workers):
        info = model_info(spec.model)
        check_distributable(spec, info)
        self.client, self.store, self.spec, self.balance, self.rid, self.on_step = \
            client, store, spec, balance, rid, on_step
        self.plan = RefinePlan.from_spec(spec, info.vae_spatial, info.native_latent)
        self.canvas = tuple(self.plan.canvas)
        self.cfg = CacheConfig.from_spec(spec, pair.fresh_at(expert_plan(spec.model, spec.steps, self.plan.start)[0],
                                                             store.stage_record("sketch"), self.plan.start,
                                                             self.plan.refine_steps))
        self.cache_on = self.cfg.policy != "none"
        names = check_workers(client, spec)
        self.workers = names if workers is None else [w for w in names if w in set(workers)]
        client.register_plugin(ModelHolder())
        self.stats = RefineStats([str(w) for w in self.workers], balance=balance)
        self.branches = info.branches(spec.guidance)  # model calls per tile-step (Conditioning.branches)
        self.report = CacheReport(self.cfg.policy, self.cfg.threshold, self.cfg.alpha)
        self.start_shape = store.group["start/latent"].shape
        channels, frames = self.start_shape[1], self.start_shape[2]
        self.cell_bytes = cell_bytes(channels, frames, self.cache_on)
        self.pred_cell_bytes = cell_bytes(channels, frames, False)  # one cell of a float32 prediction
        self.canvas_elems = channels * frames * self.canvas[0] * self.canvas[1]
        self.pins = pin_kwargs(client)
        self.watch = Watch(client, self.workers)
        self.held: list = []  # every future since the last checkpoint: the lineage Dask replays if a worker dies
        self.pending: list[_Submitted] = []  # steps submitted whose metadata the driver has not read yet
        self.tiles_per_step: list[int] = []
        self.forwards = 0
        manifest = store.checkpoint_manifest()
        self.first, self.source = (0, "start") if manifest is None else (manifest.step + 1, "checkpoint")
        self.tilemap = tilemap.TileMap(store, self.first)
        if manifest is not None:
            rec = manifest.record
            self.tiles_per_step, self.forwards = list(rec.get("tiles_per_step", [])), rec.get("refine_forwards", 0)
            self.report.restore(rec.get("cache", {}))

    def run(self) -> RefineStats:
        try:
            return self._run()
        except BaseException:  # a failed tile, a stage timeout, a Ctrl-C: nothing of this try runs on
            self.client.cancel(self.held + [f for sub in self.pending for f in sub.metas])
            raise

    def _run(self) -> RefineStats:
        self.t0 = self.t_last = time.perf_counter()
        prev, from_store = None, True  # the first step reads the start latent (or the checkpoint) from the store
        for i in range(self.first, self.plan.refine_steps):
            interrupt.check()  # a Ctrl-C some library swallowed on the way
            grid = self.plan.grid(i)
            gp = plan_gather(i, grid, None if prev is None else prev[:2], self.workers, self.cell_bytes, from_store)
            gathered = self._gather(i, grid, gp, prev, from_store)
            decisions = self._decide(i, gathered, gp.workers)
            computing = [d is None or d.compute for d in decisions]
            cp = plan_compute(gp, grid, computing, self.workers, self.balance, self.cache_on, self.branches,
                              self.cell_bytes, self.pred_cell_bytes)
            denoised, metas, taus = self._denoise(i, grid, cp, gp.workers, gathered, decisions)
            self.tiles_per_step.append(len(grid))
            last = i == self.plan.refine_steps - 1
            due = bool(self.spec.checkpoint_every) and ((i + 1) % self.spec.checkpoint_every == 0 or last)
            slot, arrays = self._begin_checkpoint(grid, due)
            advanced = self._advance(i, gp.cores, cp, gathered, denoised, taus, slot)
            branches = {m: [cp.branch_worker(m, b) for b in range(self.branches)] for m in cp.split}
            self.pending.append(_Submitted(i, len(grid), sum(computing), gp.moved_bytes + cp.moved_bytes, metas,
                                           (grid, list(cp.workers), branches)))
            if due:
                self._commit(i, grid, gp.cores, advanced, slot, arrays)
            else:  # nothing waited on this step: it stays in flight while the driver reads the one before
                self._read([], keep=1)
            prev = (list(gp.cores), list(cp.workers), advanced)
            from_store = due and not last  # checkpoints cut lineage: the next step reads the store
            if from_store:
                self.held = []  # release it: a lost worker now costs at most the steps since this checkpoint
        self._read([])
        self._write_final(prev)
        self.stats.wall_s, self.stats.forwards = time.perf_counter() - self.t0, self.forwards
        self.stats.cache, self.stats.tiles_per_step = self.report.to_dict(), self.tiles_per_step
        return self.stats

    # -- one step ---------------------------------------------------------------------------------
    def _gather(self, i: int, grid, gp, prev, from_store: bool) -> list:
        """Each window assembled where most of its cells are, from the store or the owners' pieces."""
        rid, g_workers = self.rid, gp.workers
        if from_store:
            src = self.source if prev is None else "checkpoint"
            sources = [[self._submit(T.start_pieces, self.store, src, win, key=f"read-s{i:03d}-t{m:02d}-{rid}",
                                     worker=g_workers[m])] for m, win in enumerate(grid.windows)]
        else:
            p_workers, p_adv = prev[1], prev[2]
            sources = [[] for _ in grid.windows]
            for pc in gp.pieces:
                sources[pc.window].append(self._submit(
                    T.pick, p_adv[pc.core], pc.window, pc.crosses, worker=p_workers[pc.core],
                    key=f"pieces-s{i - 1:03d}-t{pc.core:02d}-to{pc.window:02d}-{rid}"))
        fresh = i in self.cfg.fresh_at
        return [self._submit(T.gather_tile, rid, self.spec, self.store, i, m, win, gp.cores[m], self.canvas, fresh,
                             *sources[m], key=f"gather-s{i:03d}-t{m:02d}-{rid}", worker=g_workers[m])
                for m, win in enumerate(grid.windows)]

    def _decide(self, i: int, gathered: list, g_workers) -> list:
        """Cache decisions on the client, from small observations only (the one wait of a cached step)."""
        if not self.cache_on:
            return [None] * len(gathered)
        obs = self._read([self._submit(T.observation, g, key=f"observe-s{i:03d}-t{m:02d}-{self.rid}",
                                       worker=g_workers[m]) for m, g in enumerate(gathered)])
        steps = self.plan.refine_steps
        if self.cfg.policy == "uniform":
            decisions = [decide(canvas_observation([s for _, s in obs]), i, steps, self.cfg)] * len(obs)
        else:
            decisions = [decide(o, i, steps, self.cfg) for o, _ in obs]
        self.report.begin(len(obs))
        for m, (d, (o, _)) in enumerate(zip(decisions, obs)):
            self.report.record(m, d, o.threshold)
        return decisions

    def _denoise(self, i: int, grid, cp, g_workers, gathered: list, decisions: list):
        """Computing tiles rebalanced over workers when skips leave some idle, the last imbalance evened out
        in CFG branches (a split tile runs every branch as its own task, ahead of whole tiles). Returns the
        denoise futures, their metadata futures and the region thresholds' future (or None)."""
        rid, spec, store, plan = self.rid, self.spec, self.store, self.plan
        self.stats.branches_moved += len(cp.branches)
        self.stats.strips_moved += len(cp.strips)
        split: dict[int, list] = {}  # split window -> its branch futures
        side = []  # (branch future, its worker)
        for m in cp.split:
            x_in = self._submit(T.window_input, gathered[m], key=f"input-s{i:03d}-t{m:02d}-{rid}",
                                worker=g_workers[m], priority=1)
            for b in range(self.branches):
                w = cp.branch_worker(m, b)
                fut = self._submit(T.branch_tile, rid, spec, store, plan, i, m, grid.windows[m], x_in, b,
                                   key=f"branch-s{i:03d}-t{m:02d}-b{b}-{rid}", worker=w, priority=1)
                split.setdefault(m, []).append(fut)
                side.append((fut, w))
        denoised = [self._submit(T.denoise_tile, rid, spec, store, plan, i, m, gathered[m], decisions[m],
                                 *split.get(m, []), key=f"denoise-s{i:03d}-t{m:02d}-{rid}", worker=cp.workers[m])
                    for m in range(len(grid))]
        metas = ([self._submit(T.denoise_meta, d, key=f"meta-s{i:03d}-t{m:02d}-{rid}", worker=cp.workers[m])
                  for m, d in enumerate(denoised)]
                 + [self._submit(T.denoise_meta, bf, key=f"meta-{bf.key}", worker=w) for bf, w in side])
        taus = None  # region thresholds from this step's outputs, computed where they are, read by advance
        if self.cfg.policy == "region" and (i + 1) % self.cfg.update_every == 0:
            taus = self._submit(T.thresholds, self.cfg.threshold, self.cfg.alpha, *metas[:len(grid)],
                                key=f"thresholds-s{i:03d}-{rid}", worker=self.workers[0])
        return denoised, metas, taus

    def _advance(self, i: int, cores, cp, gathered: list, denoised: list, taus, slot) -> list:
        """Merge + step on every core where its window was denoised: overlapping windows' predictions whole
        where local, else only their strips on the core; checkpoint chunks written by their owners."""
        crossing = {(st.window, st.core) for st in cp.strips}
        advanced = []
        for k, core in enumerate(cores):
            deps = [denoised[m] if (m, k) not in crossing else
                    self._submit(T.prediction_strips, denoised[m], m, core, self.canvas, worker=cp.workers[m],
                                 key=f"strips-s{i:03d}-t{m:02d}-to{k:02d}-{self.rid}")
                    for m in cp.overlaps[k]]
            advanced.append(self._submit(T.advance_tile, self.rid, self.spec, self.plan, i, k, gathered[k], taus, slot,
                                         self.store, *deps, key=f"advance-s{i:03d}-t{k:02d}-{self.rid}",
                                         worker=cp.workers[k]))
        return advanced

    def _begin_checkpoint(self, grid, due: bool):
        if not due:
            return None, None
        shape = tuple(self.start_shape[:-2]) + grid.tile
        arrays = {"latent": (shape, torch.float32)}
        if self.cache_on:
            arrays.update(_cache_arrays(shape, grid.tile))
        return self.store.begin_checkpoint(len(grid), arrays), arrays

    def _commit(self, i: int, grid, cores, advanced: list, slot, arrays) -> None:
        self._read([])  # this step's forwards go into the checkpoint record
        self.watch.wait(advanced)
        for a in advanced:  # wait without pulling tile data to the client; re-raise the first tile failure
            if a.exception() is not None:
                a.result()
        self.store.commit_checkpoint(i, slot, grid.windows, list(cores), self.canvas, sorted(arrays),
                                     {"tiles_per_step": self.tiles_per_step, "refine_forwards": self.forwards,
                                      "cache": self.report.progress()})

    def _write_final(self, prev) -> None:
        """The refined canvas, assembled once on one worker and written to the store."""
        full, (p_cores, p_workers, p_adv) = Window(0, 0, *self.canvas), prev
        parts = [self._submit(T.pick, p_adv[k], 0, p_workers[k] != self.workers[0], worker=p_workers[k],
                              key=f"pieces-final-t{k:02d}-{self.rid}")
                 for k in range(len(p_cores)) if intersections(p_cores[k], full, self.canvas)]
        done = self._submit(T.write_final, self.store, self.rid, self.canvas, *parts, key=f"write-final-{self.rid}",
                            worker=self.workers[0])
        self.watch.wait([done])
        done.result()

    # -- submission and accounting ------------------------------------------------------------------
    def _submit(self, fn, *args, key, worker, priority=0):
        self.stats.tasks += 1
        fut = self.client.submit(fn, *args, key=key, pure=False, priority=priority, **self.pins[worker])
        self.held.append(fut)
        return fut

    def _read(self, futures: list, keep: int = 0) -> list:
        """Gather `futures` and, in the same round trip, the metadata of the pending steps but the newest
        `keep`, finishing those."""
        due = self.pending[:len(self.pending) - keep]
        if not due and not futures:
            return []
        del self.pending[:len(due)]
        wanted = futures + [f for sub in due for f in sub.metas]
        self.watch.wait(wanted)
        got = self.client.gather(wanted)
        out, rest = got[:len(futures)], got[len(futures):]
        for sub in due:
            self._finish(sub, rest[:len(sub.metas)])
            rest = rest[len(sub.metas):]
        return out

    def _finish(self, sub: _Submitted, metas: list) -> None:
        """Account a step once its denoise metadata is in (the forwards, per-worker time, the callback)."""
        self.forwards += sum(mt.calls for mt in metas)
        busy: dict[str, float] = {str(w): 0.0 for w in self.workers}
        calls: dict[str, int] = {str(w): 0 for w in self.workers}
        for mt in metas:
            busy[mt.worker] = busy.get(mt.worker, 0.0) + mt.seconds
            calls[mt.worker] = calls.get(mt.worker, 0) + mt.calls
        longest = max(busy.values(), default=0.0)
        now = time.perf_counter()
        allgather = 2 * (len(self.workers) - 1) * self.canvas_elems * 2
        grid, tile_workers, branches = sub.layout
        record = tilemap.step_record(sub.step, grid, tile_workers, branches, [mt.computed for mt in metas[:sub.tiles]])
        self.tilemap.add(record)
        st = StepStats(sub.step, sub.tiles, sub.computed, sub.moved, allgather, busy,
                       {w: round(longest - b, 4) for w, b in busy.items()}, now - self.t_last, calls, record,
                       tilemap.totals(self.tilemap.steps))
        self.t_last = now
        self.stats.steps.append(st)
        if self.on_step is not None:
            self.on_step(st)


def check_distributable(spec, info=None) -> None:
    """Refuse, before any stage runs, a render whose refinement cannot be split over workers."""
    from supergen.errors import SupergenError

    info = info or model_info(spec.model)
    if info.stochastic_step:
        raise SupergenError(f"{info.scheduler} draws noise for the whole canvas at every step, so its step "
                            "cannot be split over workers and still match the reference; render in process, or "
                            "give the model a deterministic scheduler (CogVideoXDDIMScheduler, as the SuperGen "
                            "authors did)")


def _cache_arrays(shape, tile):
    from supergen.cache.state import SCALARS, TENSORS, scalar_dtype

    out = {f"cache/{k}": (tuple(shape), torch.float32) for k in TENSORS}
    for k in SCALARS:
        out[f"cache/{k}"] = (tuple(tile), scalar_dtype(k))
    return out
