"""The `supergen` command: render, resume, inspect, compare and judge renders in render stores.

Prefect and Dask (the `cluster` extra) are imported only where a command runs the flow (`--cluster`,
`serve`), so the in-process commands work with the base install."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import threading

from supergen.errors import SupergenError
from supergen.options import add_render_options, spec_from_args


def _add_storage_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("storage (passed to fsspec; credentials come from the usual environment/config chain)")
    g.add_argument("--endpoint-url", help="S3-compatible endpoint, e.g. http://127.0.0.1:9000")
    g.add_argument("--anon", action="store_true", help="anonymous access")
    g.add_argument("--profile", help="credentials profile name")
    g.add_argument("--storage-option", action="append", default=[], metavar="KEY=VALUE",
                   help="any other fsspec storage option (repeatable)")


def _add_cluster_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workers", type=int, help="CPU workers of --cluster local [default: 2; with GPUs one per GPU]")
    p.add_argument("--balance", choices=["locality", "tiles", "branches"], default="branches",
                   help="tile placement on --cluster: locality only, + moving computing tiles to idle workers, "
                        "+ splitting CFG branches over workers [default: branches]")
    p.add_argument("--credentials-block", metavar="NAME",
                   help="with --cluster: a Prefect Secret block holding storage credentials as JSON "
                        '({"key": ..., "secret": ...}); the flow reads it, its parameters never hold secrets')
    _add_tls_option(p)
    _add_preview_option(p)


def _add_tls_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tls-dir", metavar="DIR",
                   help="with a tls:// --cluster: this client's certificates, DIR/ca.pem, client.pem and client.key "
                        "(infra/make_certs.sh); or set Dask's DASK_DISTRIBUTED__COMM__TLS__* variables")


def _add_preview_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preview-url", metavar="URL",
                   help="with --cluster: an http(s) URL under which the store's files are served (a gateway or CDN "
                        "in front of the bucket); the Prefect preview artifact links the videos there")


def storage_options(args) -> dict:
    opts: dict = {}
    for item in args.storage_option:
        if "=" not in item:
            raise SupergenError(f"--storage-option takes KEY=VALUE, got {item.split('=')[0]!r}")
        k, v = item.split("=", 1)
        opts[k] = {"true": True, "false": False}.get(v.lower(), v)
    if args.endpoint_url:
        opts.setdefault("client_kwargs", {})["endpoint_url"] = args.endpoint_url
    if args.anon:
        opts["anon"] = True
    if args.profile:
        opts["profile"] = args.profile
    return opts


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="supergen", description="2K/4K video from standard-resolution "
                                     "video diffusion models (SuperGen), training-free.")
    sub = parser.add_subparsers(dest="command", required=True)

    r = sub.add_parser("render", help="render a video in this process into a render store")
    add_render_options(r)
    r.add_argument("--store", help="render store URL: a folder, file://, memory:// or s3://bucket/prefix "
                                   "[default: ./supergen-out]")
    r.add_argument("--out", help="a local folder for the render store (the same as --store DIR)")
    r.add_argument("--overwrite", action="store_true", help="replace a store that holds a different render")
    r.add_argument("--bucket-root", action="store_true",
                   help="allow a store at the root of a bucket (s3://bucket); refused otherwise")
    r.add_argument("--quiet", action="store_true", help="no progress bars")
    r.add_argument("--cluster", help="run as the Prefect flow on a Dask cluster: a scheduler address "
                                     "(tcp://host:8786, tls://host:8786 with --tls-dir), or 'local' to start one "
                                     "here (one worker per GPU, else --workers CPU workers); default: in this process")
    _add_cluster_options(r)
    _add_storage_options(r)

    d = sub.add_parser("serve", help="publish the render flow as a Prefect deployment and run its runs")
    _add_deployment_options(d)
    _add_tls_option(d)

    p = sub.add_parser("deploy", help="publish the render flow to a Prefect work pool, whose workers "
                                      "(`prefect worker start --pool POOL`) run its runs")
    _add_deployment_options(p)
    p.add_argument("--pool", required=True, help="the work pool (process type; created if missing)")
    p.add_argument("--concurrency", type=int, metavar="N",
                   help="at most N renders of this pool at once (a Prefect global concurrency limit, "
                        "supergen-renders-POOL, that every run holds a slot of)")
    p.add_argument("--stage-retries", action="append", default=[], metavar="STAGE=N",
                   help="retries of a stage (sketch, upscale, refine, export); repeatable")
    p.add_argument("--stage-timeout", action="append", default=[], metavar="STAGE=SECONDS",
                   help="a stage's timeout: past it the render fails (and `resume` continues it); repeatable")

    s = sub.add_parser("resume", help="continue an interrupted render from its last checkpoint (taking over "
                                      "a store whose render died)")
    s.add_argument("store")
    s.add_argument("--quiet", action="store_true")
    s.add_argument("--cluster", help="continue as the Prefect flow on a Dask cluster (as render --cluster)")
    _add_cluster_options(s)
    _add_storage_options(s)

    i = sub.add_parser("inspect", help="status, stage, last checkpoint, skip stats and outputs of a store")
    i.add_argument("store")
    _add_storage_options(i)

    c = sub.add_parser("compare", help="PSNR/SSIM and final-latent difference between two finished renders")
    c.add_argument("a", help="reference render store")
    c.add_argument("b", help="render store")
    c.add_argument("--frames", action="store_true", help="also print per-frame values")
    _add_storage_options(c)

    q = sub.add_parser("quality", help="offline quality checks of a finished render: tile seams, grid periodicity, "
                                       "flicker, sketch fidelity, detail gain, world-caption adherence")
    q.add_argument("store", help="render store")
    q.add_argument("--reference", help="render store of a reference render of the same size, for PSNR/SSIM")
    q.add_argument("--out", help="local folder for quality.json and quality.png [default: into the store]")
    _add_storage_options(q)
    return parser


def _progress(quiet: bool):
    from supergen.progress import NullProgress, TqdmProgress

    return NullProgress() if quiet else TqdmProgress(file=sys.stderr)


def _finish(store, result, quiet: bool) -> None:
    from supergen.outputs import write_outputs

    write_outputs(store, result)
    store.finish()
    if not quiet:
        t = result.timings
        print(f"{result.spec.width}x{result.spec.height}x{result.spec.frames} from a {result.spec.sketch_width}x"
              f"{result.spec.sketch_height} sketch; " + ", ".join(f"{k} {v:.2f}s" for k, v in t.items()),
              file=sys.stderr)
    print(f"{store.url}/video.mp4")


def cmd_render(args) -> int:
    from storage import RenderStore
    from supergen.executor import prepare, render
    from supergen.inputs import read_image

    if args.store is not None and args.out is not None:
        raise SupergenError("give --store or --out, not both")
    _check_cluster_options(args)
    # field and model checks (configs only, no weights); device and memory where the render runs
    spec = prepare(spec_from_args(args), here=not args.cluster)
    if args.cluster and spec.image is not None:  # read where the render is submitted (the store keeps a copy):
        read_image(spec.image)  # refused before any cluster starts (in process, RenderStore.create reads it)
    if not args.quiet:
        from supergen.backends import expert_plan
        from supergen.spec import size_warnings

        expert = expert_plan(spec.model, spec.steps, spec.steps - spec.refine_steps)[1]
        notes = size_warnings(spec) + ([expert] if expert else [])
        if spec.render_model is not None:
            from supergen.pair import SwitchRule

            notes.append(f"SRDiffusion: the render model takes over at a switch {SwitchRule.from_spec(spec).describe()} "
                         "(render.json and `supergen inspect` say where it fell, and why)")
        for note in notes:
            print(f"supergen render: note: {note}", file=sys.stderr)
    url = args.store if args.store is not None else (args.out if args.out is not None else "supergen-out")
    if args.cluster:
        return _on_cluster(args, spec, url, overwrite=args.overwrite, bucket_root=args.bucket_root)
    store = RenderStore.create(url, spec, storage_options(args), overwrite=args.overwrite,
                               bucket_root=args.bucket_root)
    try:
        if store.complete:
            print(f"{store.url} already holds this render, complete", file=sys.stderr)
            print(f"{store.url}/video.mp4")
            return 0
        result = render(spec, progress=_progress(args.quiet), sink=store)
        _finish(store, result, args.quiet)
        return 0
    finally:
        store.release()


def _check_cluster_options(args) -> None:
    """Cluster options are checked, never silently replaced, before anything starts."""
    if args.workers is not None:
        if args.cluster != "local":
            raise SupergenError("--workers sizes the cluster `--cluster local` starts; an existing scheduler "
                                "has the workers it has")
        if args.workers < 1:
            raise SupergenError(f"--workers must be >= 1, got {args.workers}")
    if args.cluster and args.cluster != "local" and not args.cluster.startswith(("tcp://", "tls://", "inproc://")):
        raise SupergenError(f"--cluster takes a scheduler address (tcp://host:8786) or 'local', got {args.cluster!r}")
    if getattr(args, "credentials_block", None) and not args.cluster:
        raise SupergenError("--credentials-block is for --cluster renders (in process, the credential chain "
                            "of this machine is used)")
    if args.cluster:
        _require_cluster_extra("--cluster")
    _check_tls(args)


def _check_tls(args) -> None:
    """A tls:// scheduler needs this client's certificates, checked (readable, a certificate and its key)
    before anything starts; --tls-dir supplies them."""
    cluster, folder = getattr(args, "cluster", None) or "", getattr(args, "tls_dir", None)
    if folder is not None and not cluster.startswith("tls://"):
        raise SupergenError(f"--tls-dir is for a tls:// scheduler address, and --cluster is {cluster or 'not given'}")
    if not cluster.startswith("tls://"):
        return
    from .cluster import tls_problem, use_tls_dir

    if folder is not None:
        use_tls_dir(folder)
    problem = tls_problem(cluster)
    if problem:
        raise SupergenError(problem)


def _require_cluster_extra(what: str) -> None:
    """The cluster path (the Prefect flow on Dask) is the `cluster` extra; everything else never imports
    it. Without it, say what to install before anything starts, not with an ImportError halfway through."""
    import importlib

    for name in ("prefect", "distributed"):
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise SupergenError(f"{what} runs the Prefect flow on Dask, which is not installed ({e.name or name} "
                                "is missing): pip install 'supergen[cluster]'") from e


def _on_cluster(args, spec, url: str, overwrite: bool = False, bucket_root: bool = False) -> int:
    """The Prefect flow `supergen-render` on an existing scheduler or a local cluster. Every refusal comes
    before any stage runs and before the store is touched: the store's location and access, a model whose
    step cannot be split over workers, an unreachable scheduler. Secret storage options never become flow
    parameters: they travel as a Prefect Secret block that lives only for this render."""
    from storage import RenderStore
    from storage.location import split_secrets

    from . import credentials
    from .cluster import announce, connect, make_cluster
    from .refine import check_distributable
    from .render import render as render_flow

    if url.strip().startswith("memory://"):
        raise SupergenError("a memory:// store lives in one process; cluster workers need a store they can "
                            "reach (a shared folder or s3://...)")
    check_distributable(spec)
    opts = storage_options(args)
    probe = RenderStore(url, opts, bucket_root=bucket_root)
    probe.check_writable()
    problem = probe.problem_with(spec)
    if problem is not None and not overwrite:
        raise SupergenError(f"{probe.url} {problem}; pass --overwrite to replace it")
    public, secret = split_secrets(opts)
    with contextlib.ExitStack() as stack:
        api = _flow_services(stack, args.quiet)  # first in, last out: it outlives the cluster and the block
        if args.cluster == "local":
            cluster = stack.enter_context(make_cluster(args.workers, quiet=args.quiet))
            address = cluster.scheduler_address
            if not args.quiet:
                announce(cluster)
        else:
            address = args.cluster
            connect(address).close()  # unreachable: a clear error now, before the store exists
        api.wait_ready()  # a temporary Prefect server started above, while the cluster started
        block = getattr(args, "credentials_block", None)
        if secret:
            block = credentials.stash(secret)
            stack.callback(credentials.drop, block)
        out = render_flow(spec=spec.to_dict(), store_url=url, cluster=address, storage_options=public or None,
                          overwrite=overwrite, balance=args.balance, credentials=block, bucket_root=bucket_root,
                          preview_url=args.preview_url)
    print(f"{out}/video.mp4")
    return 0


def cmd_resume(args) -> int:
    from storage import RenderStore
    from supergen.executor import render

    _check_cluster_options(args)
    store = RenderStore.open(args.store, storage_options(args))
    if store.complete:
        print(f"{store.url} is already complete", file=sys.stderr)
        print(f"{store.url}/video.mp4")
        return 0
    if args.cluster:  # the flow takes the store over (its lease) and continues from what it holds
        return _on_cluster(args, store.spec(), store.url, bucket_root=True)
    store = RenderStore.open(args.store, storage_options(args), read_only=False)
    try:
        result = render(store.spec(), progress=_progress(args.quiet), sink=store)
        _finish(store, result, args.quiet)
        return 0
    finally:
        store.release()


def cmd_inspect(args) -> int:
    from storage import RenderStore

    print(json.dumps(RenderStore.open(args.store, storage_options(args)).inspect(), indent=1))
    return 0


def cmd_compare(args) -> int:
    from storage import RenderStore, StoreError
    from supergen.metrics import compare_videos
    from supergen.outputs import read_mp4_bytes

    stores = [RenderStore.open(u, storage_options(args)) for u in (args.a, args.b)]
    for st in stores:
        if not st.complete:
            raise StoreError(f"{st.url} is not a complete render")
    a, b = (read_mp4_bytes(st.read_file("video.mp4")) for st in stores)
    result = compare_videos(a, b)
    la, lb = (st.load_stage("final") for st in stores)
    result["latent_max_abs_diff"] = float((la - lb).abs().max()) if la.shape == lb.shape else None
    if not args.frames:
        for k in ("psnr_db", "ssim"):
            result[k] = {"mean": result[k]["mean"]}
    print(json.dumps(result, indent=1))
    return 0


def _complete_store(url: str, opts: dict):
    from storage import RenderStore, StoreError

    store = RenderStore.open(url, opts)
    if not store.complete:
        raise StoreError(f"{store.url} is not a complete render")
    return store


def _sketch_frames(store):
    """The sketch, lossless from `sketch/frames`; stores written before that array fall back to the
    lossy sketch.mp4 (its codec error then counts against sketch fidelity)."""
    from supergen.outputs import read_mp4_bytes

    frames = store.sketch_frames()
    if frames is not None:
        return frames, "sketch/frames"
    return read_mp4_bytes(store.read_file("sketch.mp4")), "sketch.mp4 (lossy)"


def _save_quality(args, store, report: str, png: bytes) -> None:
    """quality.json and quality.png into --out, else into the store; a store that refuses writes (read-only
    bucket, permissions) is reported, not fatal: the report is on stdout already."""
    from storage import StoreError

    files = {"quality.json": report.encode(), "quality.png": png}
    if args.out:
        try:
            os.makedirs(args.out, exist_ok=True)
            for name, data in files.items():
                with open(os.path.join(args.out, name), "wb") as f:
                    f.write(data)
        except OSError as e:
            raise SupergenError(f"cannot write to --out {args.out}: {e}") from None
        return
    try:
        for name, data in files.items():
            store.write_file(name, data)
    except StoreError as e:
        print(f"supergen quality: could not save quality.json/quality.png into the store ({e}); "
              "pass --out DIR to keep them", file=sys.stderr)


def cmd_quality(args) -> int:
    from supergen import quality
    from supergen.outputs import png_bytes

    opts = storage_options(args)
    store = _complete_store(args.store, opts)
    spec = json.loads(store.read_file("render.json"))["spec"]
    video = store.video_frames()
    sketch, source = _sketch_frames(store)
    reference = _complete_store(args.reference, opts).video_frames() if args.reference else None
    final = store.group["final/latent"] if store.has_array("final/latent") else None
    canvas_w = spec.get("canvas_width") or spec["width"]
    vae = canvas_w // final.shape[-1] if final is not None else 8  # pixels per latent cell
    report = {"store": store.url, "sketch_source": source,
              **quality.assess(video, sketch, spec, reference=reference, vae_spatial=vae)}
    text = json.dumps(report, indent=1)
    print(text)
    _save_quality(args, store, text, png_bytes(quality.panel(video, sketch, spec, vae_spatial=vae)))
    return 0


def _add_deployment_options(d) -> None:
    add_render_options(d)
    d.add_argument("--name", default="default", help="deployment name [default: default]")
    d.add_argument("--store", required=True, help="store URL of each run; may contain {flow_run_id}")
    d.add_argument("--cluster", required=True, help="Dask scheduler address the runs use (tcp:// or tls://; "
                                                    "a tls:// one reads the run host's Dask TLS config)")
    d.add_argument("--credentials-block", metavar="NAME",
                   help="a Prefect Secret block with storage credentials as JSON, read by each run")
    g = d.add_mutually_exclusive_group()
    g.add_argument("--cron", help="cron schedule, e.g. '0 3 * * *'")
    g.add_argument("--interval", type=float, help="schedule every N seconds")
    _add_storage_options(d)
    _add_preview_option(d)


def _deployment_parameters(args) -> tuple[dict, dict | None]:
    """The spec (field checks now; model checks when each run starts) and the storage options a deployment
    may store: secret ones are refused (deployment parameters are stored in plain text)."""
    from storage.location import split_secrets

    spec = spec_from_args(args)
    public, secret = split_secrets(storage_options(args))
    if secret:
        raise SupergenError(f"storage option(s) {sorted(secret)} would be stored in the deployment's parameters: "
                            "keep credentials in a Prefect Secret block (--credentials-block NAME) or in the "
                            "workers' environment or profile")
    return spec.to_dict(), public or None


def _stage_options(args) -> dict | None:
    out: dict = {}
    for flag, key, kind in (("stage_retries", "retries", int), ("stage_timeout", "timeout_s", float)):
        for entry in getattr(args, flag):
            stage, _, value = entry.partition("=")
            try:
                out.setdefault(stage, {})[key] = kind(value)
            except ValueError:  # no '=', or not a number
                raise SupergenError(f"--{flag.replace('_', '-')} takes STAGE=NUMBER, got {entry!r}") from None
    return out or None


def cmd_deploy(args) -> int:
    _require_cluster_extra("supergen deploy")
    from prefect.settings import PREFECT_API_URL

    from .deploy import deploy_to_pool

    if not PREFECT_API_URL.value():
        raise SupergenError("supergen deploy publishes to a Prefect server, and none is configured: set "
                            "PREFECT_API_URL (a throwaway server would vanish with the command)")

    spec, public = _deployment_parameters(args)
    with contextlib.ExitStack() as stack:
        _flow_services(stack, quiet=False).wait_ready()
        dep = deploy_to_pool(args.name, args.pool, spec, args.store, args.cluster, concurrency=args.concurrency,
                             stage_options=_stage_options(args), cron=args.cron, interval=args.interval,
                             storage_options=public, credentials=args.credentials_block, preview_url=args.preview_url)
    print(f"deployment supergen-render/{args.name} ({dep}) on work pool {args.pool}: start its workers with "
          f"`prefect worker start --pool {args.pool}`")
    return 0


def cmd_serve(args) -> int:
    _require_cluster_extra("supergen serve")
    from .deploy import serve

    _check_tls(args)  # the runs are this command's threads: its certificates are theirs
    spec, public = _deployment_parameters(args)
    with contextlib.ExitStack() as stack:  # with no configured API, a server bound to this command
        _flow_services(stack, quiet=False).wait_ready()
        serve(args.name, spec=spec, store_url=args.store, cluster=args.cluster, cron=args.cron,
              interval=args.interval, storage_options=public, credentials=args.credentials_block,
              preview_url=args.preview_url)
    return 0


COMMANDS = {"serve": cmd_serve, "deploy": cmd_deploy, "render": cmd_render, "resume": cmd_resume, "inspect": cmd_inspect,
            "compare": cmd_compare, "quality": cmd_quality}


def _interrupt(signum, frame):
    from . import interrupt

    interrupt.request()  # asked for again between steps, should a library swallow the exception below
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from . import interrupt

    interrupt.clear()  # a command called in process again (tests, notebooks) starts without an old Ctrl-C
    if threading.current_thread() is threading.main_thread() and \
            signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        # Python's own handler, but not *the* default one: an asyncio runner (Prefect drives its API calls
        # through one) takes SIGINT over only from `default_int_handler` and turns it into a cancellation,
        # which a call that retries can swallow: a full-suite CI run saw a render finish through its Ctrl-C
        signal.signal(signal.SIGINT, _interrupt)
    try:
        with interrupt.finalizers_quiet():
            return COMMANDS[args.command](args)
    except KeyboardInterrupt:  # Ctrl-C: what the command started has been stopped on the way out
        print(f"supergen {args.command}: interrupted", file=sys.stderr)
        return 130
    except (SupergenError, ValueError, ConnectionError) as e:
        from storage.location import redact

        opts = storage_options(args) if hasattr(args, "storage_option") else None
        print(f"supergen {args.command}: error: {redact(str(e), opts)}", file=sys.stderr)
        return 2


def _flow_services(stack: contextlib.ExitStack, quiet: bool):
    """Enter, on `stack`, what a command running a Prefect flow needs around it: with `quiet`, a console
    that shows only warnings and errors (flows/quiet.py); the Prefect API the flow reports to, the
    configured one or else a temporary server of this command, bound to its lifetime (flows/services.py).
    Returns the API: call `.wait_ready()` before the flow runs."""
    import logging

    from .quiet import quiet_console
    from .services import prefect_api

    logging.getLogger("asyncio").addFilter(_not_interrupted_gathers)
    if quiet:
        stack.enter_context(quiet_console())
    api = stack.enter_context(prefect_api())
    if api.server is not None and not quiet:
        print(f"Prefect API: {api.url} (a temporary server of this command)", file=sys.stderr)
    return api


def _not_interrupted_gathers(record) -> bool:
    """Drop asyncio's "Task exception was never retrieved" for distributed's `AllExit`: a Ctrl-C during
    `Client.gather` leaves the gather's internal wait tasks unretrieved (distributed's, not a failure)."""
    exc = record.exc_info[1] if record.exc_info else None
    return not (type(exc).__name__ == "AllExit" or "AllExit" in record.getMessage())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
