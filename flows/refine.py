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

import re
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
from distributed import Client

from supergen.backends import model_info
from supergen.cache import CacheConfig, CacheReport
from supergen.cache.policy import decide
from supergen.refine import RefinePlan
from supergen.stepplan import plan_compute, plan_gather
from supergen.tiling import Window, intersections
from supergen.tilework import canvas_observation
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


def worker_names(client: Client) -> list:
    """Exact worker names from the scheduler (pinning to a name that does not exist hangs silently)."""
    info = client.scheduler_info(n_workers=-1)["workers"]
    return sorted((w["name"] for w in info.values()), key=str)


def pin_kwargs(client: Client) -> dict:
    """submit() arguments that pin a task to each worker: its pin resource when it has one (survives
    restarts), else a hard name restriction."""
    out = {}
    for w in client.scheduler_info(n_workers=-1)["workers"].values():
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
        return names  # every worker has a CPU: nothing to ask them
    found = client.run(worker_problem, spec, memory)
    info = client.scheduler_info(n_workers=-1)["workers"]
    problems = sorted((str(info[a]["name"]), p) for a, p in found.items() if p and a in info)
    if problems:
        raise SupergenError("; ".join(f"worker {name} cannot run this render: {p}" for name, p in problems))
    return names


def _bytes_per_cell(channels: int, frames: int, cache_on: bool, sched_maps: int) -> int:
    per = channels * frames * 4 * (1 + sched_maps)  # latent (+ solver history) in float32
    if cache_on:
        per += 6 * channels * frames * 4 + 3 * 4 + 5 * 8
    return per


@dataclass
class _Submitted:
    """A refinement step in flight: what the driver knows of it before its metadata comes back."""

    step: int
    tiles: int
    computed: int
    moved: int
    metas: list  # futures of DenoiseMeta: the step's tiles, then its CFG branches run apart


class TileFailure(RuntimeError):
    """A tile task kept killing its workers (out of memory, a crashing driver): names tile, step, worker."""


def refine_on_cluster(client: Client, store, spec, **kwargs) -> RefineStats:
    """Run the refinement stage of `spec` (resolved) on the cluster behind `client`, from the store's start
    latent or its last checkpoint; writes checkpoints and final/latent into the store. A tile whose task
    kills its worker `distributed.scheduler.allowed-failures` + 1 times raises `TileFailure`; the store
    keeps its last checkpoint, so `supergen resume` continues from there."""
    from distributed.scheduler import KilledWorker

    try:
        return _refine(client, store, spec, **kwargs)
    except KilledWorker as e:
        key = str(e.task)
        step, tile = task_step_tile(key)
        last = getattr(e, "last_worker", None)
        worker = getattr(last, "name", None) or getattr(last, "address", None) or str(last)
        manifest = store.checkpoint_manifest()
        ck = "no checkpoint yet" if manifest is None else f"last checkpoint after step {manifest['step']}"
        raise TileFailure(f"task {key} (tile {tile}, refinement step {step}) killed worker {worker} repeatedly "
                          f"(out of memory?); {store.url} keeps its {ck}: `supergen resume` continues it") from None


def task_step_tile(key: str) -> tuple[int | None, int | None]:
    """(step, tile) from a tile task key such as 'denoise-s012-t03-<id>'."""
    m = re.match(r"^[a-z]+-s(\d+)-t(\d+)", key)
    return (int(m.group(1)), int(m.group(2))) if m else (None, None)


BALANCE = ("locality", "tiles", "branches")


def _refine(client: Client, store, spec, *, balance: str = "branches", render_id: str | None = None,
            on_step: Callable[[StepStats], None] | None = None, workers: list | None = None) -> RefineStats:
    rid = render_id or uuid.uuid4().hex[:8]
    info = model_info(spec.model)
    plan = RefinePlan.from_spec(spec, info.vae_spatial)
    canvas = tuple(plan.canvas)
    cfg = CacheConfig.from_spec(spec)
    cache_on = cfg.policy != "none"
    spec_d = spec.to_dict()
    names = check_workers(client, spec)
    workers = names if workers is None else [w for w in names if w in set(workers)]
    client.register_plugin(ModelHolder())
    if balance not in BALANCE:
        raise ValueError(f"balance must be one of {BALANCE}, got {balance!r}")
    stats = RefineStats([str(w) for w in workers], balance=balance)
    branches = 2 if spec.guidance > 1.0 else 1  # CFG model calls per tile-step (Conditioning.branches)
    report = CacheReport(cfg.policy, cfg.threshold, cfg.alpha)
    start_shape = store.group["start/latent"].shape
    check_distributable(spec, info)
    cell_bytes = _bytes_per_cell(start_shape[1], start_shape[2], cache_on, 0)
    pred_cell_bytes = start_shape[1] * start_shape[2] * 4  # one cell of a float32 prediction
    canvas_elems = start_shape[1] * start_shape[2] * canvas[0] * canvas[1]

    manifest = store.checkpoint_manifest()
    first, source = (0, "start") if manifest is None else (manifest["step"] + 1, "checkpoint")
    tiles_per_step: list[int] = []
    forwards = 0
    if manifest is not None:
        rec = manifest["record"]
        tiles_per_step, forwards = list(rec.get("tiles_per_step", [])), rec.get("refine_forwards", 0)
        report.restore(rec.get("cache", {}))

    held: list = []  # every future since the last checkpoint: the lineage Dask replays if a worker dies

    pins = pin_kwargs(client)

    def submit(fn, *args, key, worker, priority=0):
        stats.tasks += 1
        fut = client.submit(fn, *args, key=key, pure=False, priority=priority, **pins[worker])
        held.append(fut)
        return fut

    t_all = time.perf_counter()
    t_last = [t_all]  # when the driver last saw a step finish
    pending: list[_Submitted] = []  # steps submitted whose metadata the driver has not read yet

    def finish(sub: _Submitted, metas: list) -> None:
        """Account a step once its denoise metadata is in (the forwards, per-worker time, the callback)."""
        nonlocal forwards
        forwards += sum(mt.calls for mt in metas)
        busy: dict[str, float] = {str(w): 0.0 for w in workers}
        calls: dict[str, int] = {str(w): 0 for w in workers}
        for mt in metas:
            busy[mt.worker] = busy.get(mt.worker, 0.0) + mt.seconds
            calls[mt.worker] = calls.get(mt.worker, 0) + mt.calls
        longest = max(busy.values(), default=0.0)
        now = time.perf_counter()
        st = StepStats(sub.step, sub.tiles, sub.computed, sub.moved, 2 * (len(workers) - 1) * canvas_elems * 2, busy,
                       {w: round(longest - b, 4) for w, b in busy.items()}, now - t_last[0], calls)
        t_last[0] = now
        stats.steps.append(st)
        if on_step is not None:
            on_step(st)

    def read(futures: list, keep: int = 0) -> list:
        """Gather `futures` and, in the same round trip, the metadata of the pending steps but the newest
        `keep`, finishing those."""
        due = pending[:len(pending) - keep]
        if not due and not futures:
            return []
        del pending[:len(due)]
        got = client.gather(futures + [f for sub in due for f in sub.metas])
        out, rest = got[:len(futures)], got[len(futures):]
        for sub in due:
            finish(sub, rest[:len(sub.metas)])
            rest = rest[len(sub.metas):]
        return out

    prev = None  # (cores, workers, advance futures) of the previous step
    from_store = True  # the first step reads the start latent (or the checkpoint) from the store
    for i in range(first, plan.refine_steps):
        grid = plan.grid(i)
        n = len(grid)
        # 1. gather each window where most of its cells are (supergen.stepplan: the step's plan as values)
        gp = plan_gather(i, grid, None if prev is None else prev[:2], workers, cell_bytes, from_store)
        cs, g_workers = list(gp.cores), list(gp.workers)
        if from_store:
            src = source if prev is None else "checkpoint"
            sources = [[submit(T.start_pieces, store, src, win, key=f"read-s{i:03d}-t{m:02d}-{rid}",
                               worker=g_workers[m])] for m, win in enumerate(grid.windows)]
        else:
            p_workers, p_adv = prev[1], prev[2]
            sources = [[] for _ in range(n)]
            for pc in gp.pieces:
                sources[pc.window].append(submit(T.pick, p_adv[pc.core], pc.window, pc.crosses,
                                                 key=f"pieces-s{i - 1:03d}-t{pc.core:02d}-to{pc.window:02d}-{rid}",
                                                 worker=p_workers[pc.core]))
        G = [submit(T.gather_tile, rid, spec_d, i, m, win, cs[m], canvas, *sources[m],
                    key=f"gather-s{i:03d}-t{m:02d}-{rid}", worker=g_workers[m]) for m, win in enumerate(grid.windows)]

        # 2. cache decisions on the client, from small observations only (the one wait of a cached step)
        decisions = [None] * n
        if cache_on:
            obs = read([submit(T.observation, g, key=f"observe-s{i:03d}-t{m:02d}-{rid}", worker=g_workers[m])
                        for m, g in enumerate(G)])
            if cfg.policy == "uniform":
                d = decide(canvas_observation([s for _, s in obs]), i, plan.refine_steps, cfg)
                decisions = [d] * n
            else:
                decisions = [decide(o, i, plan.refine_steps, cfg) for o, _ in obs]
            report.begin(n)
            for m, (d, (o, _)) in enumerate(zip(decisions, obs)):
                report.record(m, d, o.threshold)
        computing = [d is None or d.compute for d in decisions]

        # 3. denoise: computing tiles rebalanced over workers when skips leave some idle, and the last
        # imbalance evened out in CFG branches (a split tile runs every branch as its own task, ahead of
        # whole tiles)
        cp = plan_compute(gp, grid, computing, workers, balance, cache_on, branches, cell_bytes, pred_cell_bytes)
        c_workers = list(cp.workers)
        moved = gp.moved_bytes + cp.moved_bytes
        stats.branches_moved += len(cp.branches)
        stats.strips_moved += len(cp.strips)
        B: dict[int, list] = {}  # split window -> its branch futures
        side = []  # (branch future, its worker)
        for m in cp.split:
            x_in = submit(T.window_input, G[m], key=f"input-s{i:03d}-t{m:02d}-{rid}", worker=g_workers[m],
                          priority=1)
            for b in range(branches):
                w = cp.branch_worker(m, b)
                fut = submit(T.branch_tile, rid, spec_d, plan, i, m, grid.windows[m], x_in, b,
                             key=f"branch-s{i:03d}-t{m:02d}-b{b}-{rid}", worker=w, priority=1)
                B.setdefault(m, []).append(fut)
                side.append((fut, w))
        D = [submit(T.denoise_tile, rid, spec_d, plan, i, m, G[m], decisions[m], *B.get(m, []),
                    key=f"denoise-s{i:03d}-t{m:02d}-{rid}", worker=c_workers[m]) for m in range(n)]
        metas = ([submit(T.denoise_meta, d, key=f"meta-s{i:03d}-t{m:02d}-{rid}", worker=c_workers[m])
                  for m, d in enumerate(D)]
                 + [submit(T.denoise_meta, bf, key=f"meta-{bf.key}", worker=w) for bf, w in side])
        taus = None  # region thresholds from this step's outputs, computed where they are, read by advance
        if cfg.policy == "region" and (i + 1) % cfg.update_every == 0:
            taus = submit(T.thresholds, cfg.threshold, cfg.alpha, *metas[:n], key=f"thresholds-s{i:03d}-{rid}",
                          worker=workers[0])

        # 4. advance every core where its window was denoised; checkpoint chunks written by their owners
        tiles_per_step.append(n)
        last = i == plan.refine_steps - 1
        due = spec.checkpoint_every and ((i + 1) % spec.checkpoint_every == 0 or last)
        slot = None
        if due:
            shape = tuple(start_shape[:-2]) + grid.tile
            arrays = {"latent": (shape, torch.float32)}
            if cache_on:
                arrays.update(_cache_arrays(shape, grid.tile))
            slot = store.begin_checkpoint(n, arrays)
        crossing = {(st.window, st.core) for st in cp.strips}
        A = []
        for k, core in enumerate(cs):
            deps = []  # overlapping windows' predictions: whole where local, else only their strips on core k
            for m in cp.overlaps[k]:
                if (m, k) not in crossing:
                    deps.append(D[m])
                else:
                    deps.append(submit(T.prediction_strips, D[m], m, core, canvas,
                                       key=f"strips-s{i:03d}-t{m:02d}-to{k:02d}-{rid}", worker=c_workers[m]))
            A.append(submit(T.advance_tile, rid, spec_d, plan, i, k, G[k], taus, slot, store, *deps,
                            key=f"advance-s{i:03d}-t{k:02d}-{rid}", worker=c_workers[k]))
        pending.append(_Submitted(i, n, sum(computing), moved, metas))
        if due:
            read([])  # this step's forwards go into the checkpoint record
            for a in A:  # wait without pulling tile data to the client; re-raise the first tile failure
                if a.exception() is not None:
                    a.result()
            store.commit_checkpoint(i, slot, grid.windows, cs, canvas, sorted(arrays),
                                    {"tiles_per_step": tiles_per_step, "refine_forwards": forwards,
                                     "cache": report.progress()})
        else:  # nothing waited on this step: it stays in flight while the driver reads the one before
            read([], keep=1)
        prev = (cs, c_workers, A)
        from_store = bool(due) and not last  # checkpoints cut lineage: the next step reads the store
        if from_store:
            held = []  # release it: a lost worker now costs at most the steps since this checkpoint
    read([])

    # 5. the refined canvas, assembled once on one worker and written to the store
    full = Window(0, 0, *canvas)
    p_cores, p_workers, p_adv = prev
    parts = [submit(T.pick, p_adv[k], 0, p_workers[k] != workers[0], key=f"pieces-final-t{k:02d}-{rid}",
                    worker=p_workers[k]) for k in range(len(p_cores)) if intersections(p_cores[k], full, canvas)]
    submit(T.write_final, store, canvas, *parts, key=f"write-final-{rid}", worker=workers[0]).result()
    stats.wall_s, stats.forwards = time.perf_counter() - t_all, forwards
    stats.cache = report.to_dict()
    stats.tiles_per_step = tiles_per_step
    return stats


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
