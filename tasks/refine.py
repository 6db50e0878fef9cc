"""Per-tile refinement tasks run on cluster workers. Each takes ids, geometry and its inputs (pieces or the
store), calls one `supergen.tilestep` function and returns a small result; no algorithm lives here.

Tile data stays on the worker's device between tasks; the tasks whose output leaves the worker (strips for
another worker's core, pieces for another worker's window, CFG branch inputs and outputs) hand over host
copies, so any transport carries them and the receiver moves them to its own device."""

from __future__ import annotations

import time
from dataclasses import dataclass

from supergen.cache.policy import region_thresholds, welford_std
from supergen.refine import RefinePlan
from supergen.tiling import Window, local
from supergen.tilestep import (Denoised, Gathered, Piece, advance, assemble, branch, cut, denoise, gather,
                               prediction_pieces, to_host)

from .model import holder


class TileTaskError(RuntimeError):
    """A tile task failed; names the render, step, tile and worker (picklable, for the driver's report)."""

    def __init__(self, message: str, render: str = "", step: int = -1, tile: int = -1, worker: str = ""):
        self.render, self.step, self.tile, self.worker = render, step, tile, worker
        super().__init__(message)

    def __reduce__(self):
        return (type(self), (str(self), self.render, self.step, self.tile, self.worker))


def _worker_name() -> str:
    try:
        from distributed import get_worker

        return str(get_worker().name)
    except ValueError:
        return "local"


def _guard(fn, render: str, step: int, tile: int, what: str):
    try:
        return fn()
    except TileTaskError:
        raise
    except Exception as e:  # OOM, device errors, bad data: say where it happened
        worker = _worker_name()
        raise TileTaskError(f"{what} of tile {tile} at refinement step {step} failed on worker {worker} "
                            f"(render {render}): {type(e).__name__}: {e}", render, step, tile, worker) from e


def start_pieces(store, source: str, win: Window) -> list[Piece]:
    """Step-0 (or resume) inputs of one window, read from the store: only the chunks it overlaps."""
    return store.checkpoint_pieces(win) if source == "checkpoint" else store.stage_pieces("start", win)


def gather_tile(render: str, spec, store, i: int, m: int, win: Window, core: Window, canvas, fresh: bool,
                *piece_lists) -> Gathered:
    pieces = [p for lst in piece_lists for p in lst]

    def run():
        device = holder().backend(spec, store).device
        return gather(win, core, pieces, canvas, spec.cache != "none", spec.cache_threshold, device, fresh)

    return _guard(run, render, i, m, "gathering")


@dataclass
class DenoiseMeta:
    seconds: float
    computed: bool
    welford: tuple[float, float]
    worker: str
    calls: int


@dataclass
class Branch:
    """One CFG branch of a window's prediction, computed away from the window's worker."""

    branch: int
    prediction: object  # torch.Tensor, window-local, float32, on the host
    seconds: float
    worker: str
    calls: int
    computed: bool = True
    welford: tuple[float, float] = (0.0, 0.0)


def _timed(render, spec, store, fn):
    """Run fn(backend, conditioning) with the worker's resident model: (result, seconds, worker, calls)."""
    h = holder()
    be = h.backend(spec, store)
    cond = h.conditioning(render, spec, store, switch_required=True)
    t0, calls0 = time.perf_counter(), be.forwards
    out = fn(be, cond)
    if str(be.device).startswith("cuda"):  # kernels run asynchronously: time the work, not its launch
        import torch

        torch.cuda.synchronize(be.device)
    return out, time.perf_counter() - t0, _worker_name(), be.forwards - calls0


def window_input(g: Gathered):
    """The window's latent alone, on the host (what a branch computed elsewhere needs; the cache state
    stays)."""
    return g.maps["latent"].cpu()


def branch_tile(render: str, spec, store, plan: RefinePlan, i: int, m: int, win: Window, x, b: int) -> Branch:
    def run():
        pred, sec, worker, calls = _timed(render, spec, store, lambda be, cond: branch(be, cond, plan, i, win, x, b))
        return Branch(b, pred.cpu(), sec, worker, calls)

    return _guard(run, render, i, m, f"CFG branch {b}")


def denoise_tile(render: str, spec, store, plan: RefinePlan, i: int, m: int, g: Gathered, decision,
                 *branches: Branch) -> Denoised:
    def run():
        given = {br.branch: br.prediction for br in branches}
        d, sec, worker, calls = _timed(
            render, spec, store, lambda be, cond: denoise(be, cond, plan, i, g, decision, tuple(plan.canvas), given))
        d.seconds, d.worker, d.calls = sec, worker, calls
        return d

    return _guard(run, render, i, m, "denoising")


def denoise_meta(d: Denoised | Branch) -> DenoiseMeta:
    return DenoiseMeta(d.seconds, d.computed, d.welford, d.worker, d.calls)


def observation(g: Gathered):
    return g.observation, g.sums


@dataclass
class Strips:
    """The parts of window `window`'s prediction that one core needs (cut where the window was denoised)."""

    window: int
    pieces: list[Piece]


def prediction_strips(d: Denoised, m: int, core: Window, canvas) -> Strips:
    """Runs on the worker that denoised window m: only the strips of its prediction on `core` travel."""
    return Strips(m, to_host(prediction_pieces(d.prediction, d.window, core, canvas)))


def thresholds(threshold: float, alpha: float, *metas: DenoiseMeta) -> list[float]:
    """Every tile's region-cache threshold from the step's outputs (runs on a worker, so the driver never
    waits for it)."""
    return region_thresholds([welford_std(*mt.welford) for mt in metas], threshold, alpha)


def advance_tile(render: str, spec, plan: RefinePlan, i: int, k: int, g: Gathered, taus, ckpt, store,
                 *inputs: Denoised | Strips) -> dict[int, list[Piece]]:
    """Merge + scheduler step on core k, optional checkpoint chunk, then the pieces for step i + 1. `inputs`
    are the overlapping windows' predictions: whole when denoised on this worker, else their strips; `taus`
    the new thresholds of every tile, when they change this step."""

    def run():
        be = holder().backend(spec, store)
        grid, canvas = plan.grid(i), tuple(plan.canvas)
        core = g.core
        ys, xs = local(core, g.window, canvas)
        x_core = g.maps["latent"][..., ys, xs]
        sched = {n: v[..., ys, xs] for n, v in g.maps.items() if n.startswith("scheduler/")}
        own = next(d for d in inputs if isinstance(d, Denoised) and d.window == g.window)
        preds = [(d.window, d.pieces) if isinstance(d, Strips) else
                 (grid.windows.index(d.window), prediction_pieces(d.prediction, d.window, core, canvas))
                 for d in inputs]
        maps = advance(be, plan, i, grid, k, x_core, sched, own.cache_core, preds, spec.seed,
                       None if taus is None else taus[k])
        if ckpt is not None:
            store.write_checkpoint_tile(ckpt, k, g.window, core, maps, canvas)
        nxt = plan.grid(i + 1).windows if i + 1 < plan.refine_steps else [Window(0, 0, *canvas)]
        return cut(core, maps, nxt, canvas)

    return _guard(run, render, i, k, "stepping")


def pick(pieces: dict[int, list[Piece]], m: int, leaves: bool = False) -> list[Piece]:
    """The pieces one next-step window needs: runs where the owner's output lives, so only they move
    (as host copies when they leave the worker)."""
    out = pieces.get(m, [])
    return to_host(out) if leaves else out


def write_final(store, render: str, canvas, *piece_lists) -> None:
    """Assemble the refined canvas on the host from the last step's pieces, as the loop returns it
    (`Backend.finish`: TI2V-5B's image frame), and write final/latent."""
    latents = [Piece(p.rect, {"latent": p.maps["latent"]}) for lst in piece_lists for p in lst]
    x = assemble(Window(0, 0, *canvas), latents, canvas, "cpu")["latent"]
    spec = store.spec()
    if spec.image is not None:
        image = holder().conditioning(render, spec, store).image_latent
        x = holder().backend(spec, store).finish(x, None if image is None else image.cpu())
    store.save_stage("final", x)
