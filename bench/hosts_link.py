"""The strips scheme across a network: bytes per refinement step between hosts, against an all-gather,
and the refine step time on a rate-limited link, on CPU at the embedded model's default scale.

Five simulated hosts (infra/simhosts.py): a TLS scheduler, two worker hosts (one worker each), a client
that drives the render and an S3 endpoint holding the store. Each configuration renders the same spec
into its own store; the refine stage's bytes are read from every host's interface counters around it
(what each worker host sent each other host, metered by tc per destination: TLS and TCP/IP included) and compared with the driver's own accounting
(`bytes_moved`) and with the all-gather the official scheme would move (`allgather_bytes`). Links:
unshaped (a veth: memory speed), then 10 and 1 Gbit/s (tc tbf, both directions of each worker's link).
netem is not in this kernel, so no delay is added: the per-step count of the driver's waits says what a
0.5 ms link would add (each is a round trip or two).

    sudo .venv/bin/python bench/hosts_link.py --out bench/results/hosts_link_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import environment, write_result  # noqa: E402

from infra.simhosts import Hosts, available, give_certs, host_env, wait_for_port  # noqa: E402

HOSTS = ["sched", "w1", "w2", "client", "s3"]

_DRIVER = """
import time, torch
from distributed import Client
from flows.cluster import connect, use_tls_dir
from flows.render import PLAIN_STAGES, run_stages
from flows.refine import worker_names
from storage import RenderStore
from supergen import RenderSpec
from supergen.executor import prepare
use_tls_dir('/tmp/certs')
client = connect(ADDRESS)
while len(worker_names(client)) < 2:
    time.sleep(0.2)
OPTS = {'client_kwargs': {'endpoint_url': ENDPOINT}}
"""


def _env(**extra) -> dict:
    return host_env(ROOT, **extra)


def sent(hosts: Hosts) -> dict:
    """Bytes each worker host has sent to each other host so far (metered by `Hosts.shape`)."""
    return {w: hosts.sent(w) for w in ("w1", "w2")}


def delta(a: dict, b: dict) -> dict:
    return {w: {peer: b[w][peer] - a[w][peer] for peer in a[w]} for w in a}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="bench/results/hosts_link_cpu.json")
    ap.add_argument("--links", default="none,10gbit,1gbit", help="comma-separated tc rates; 'none' = unshaped")
    ap.add_argument("--width", type=int, default=None, help="[default: the embedded model's default canvas]")
    ap.add_argument("--height", type=int, default=None)
    args = ap.parse_args()
    why = available()
    if why:
        sys.exit(f"hosts_link: {why}")
    result = environment(" ".join(["python3"] + sys.argv))
    certs = tempfile.mkdtemp(prefix="hosts-link-certs-")
    subprocess.run(["bash", "infra/make_certs.sh", certs], cwd=ROOT, check=True, capture_output=True)
    with Hosts(HOSTS, shared=(ROOT, sys.prefix)) as hosts:
        give_certs(hosts, certs, {"sched": "scheduler", "w1": "worker", "w2": "worker", "client": "client"})
        address = f"tls://{hosts.ip('sched')}:8786"
        quiet = dict(cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        s3 = hosts.popen("s3", [sys.executable, "-m", "infra.simhosts", "s3", "--host", hosts.ip("s3")], cwd=ROOT,
                         env=_env(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        cred = json.loads(s3.stdout.readline())
        aws = {"AWS_ACCESS_KEY_ID": cred["key"], "AWS_SECRET_ACCESS_KEY": cred["secret"],
               "AWS_DEFAULT_REGION": "us-east-1"}
        hosts.popen("sched", ["bash", "infra/start_scheduler.sh", "--host", hosts.ip("sched"), "--tls", "/tmp/certs"],
                    env=_env(), **quiet)
        for w in ("w1", "w2"):
            hosts.popen(w, ["bash", "infra/start_workers.sh", address, "--name", "cpu", "--tls", "/tmp/certs"],
                        env=_env(**aws), **quiet)
        wait_for_port(hosts, "client", hosts.ip("sched"), 8786)
        py = hosts.python("client", cwd=ROOT, env=_env(**aws))
        py.eval(f"ADDRESS, ENDPOINT = {address!r}, {cred['endpoint']!r}\n" + _DRIVER)
        size = {k: v for k, v in (("width", args.width), ("height", args.height)) if v}
        py.eval(f"spec = prepare(RenderSpec(prompt='a red striped circle moving left on a blue background', **{size!r}))")
        result["spec"] = py.eval("spec.to_dict()")
        result["runs"] = {}
        for link in args.links.split(","):
            for w in ("w1", "w2"):  # metered per destination, and rate-limited unless "none"
                hosts.shape(w, None if link == "none" else link)
            py.eval(f"store = RenderStore.create('s3://renders/{link}', spec, OPTS)\n"
                    "PLAIN_STAGES.sketch(client, store, 'b', worker_names(client))\n"
                    "PLAIN_STAGES.upscale(client, store, worker_names(client))\n"
                    "store.advance('refining')")
            before, t0 = sent(hosts), time.perf_counter()
            refined = py.eval("r = PLAIN_STAGES.refine(client, store, 'branches', None, worker_names(client))\n"
                              "{k: v for k, v in r.items() if k != 'cache'}")
            wall, moved = time.perf_counter() - t0, delta(before, sent(hosts))
            py.eval("store.release()")
            steps = refined["per_step"]
            run = {
                "link": link, "refine_s": round(wall, 3), "steps": len(steps),
                "step_wall_s": [round(s["wall_s"], 4) for s in steps],
                "step_wall_s_median": round(sorted(s["wall_s"] for s in steps)[len(steps) // 2], 4),
                "bytes_moved_accounted": refined["bytes_moved"], "allgather_bytes": refined["allgather_bytes"],
                "bytes_moved_vs_allgather": refined["bytes_moved_vs_allgather"],
                "wire_bytes_sent": moved,  # per worker host, per destination host (TLS and TCP/IP included)
                "wire_worker_to_worker_bytes": moved["w1"]["w2"] + moved["w2"]["w1"],
                "wire_workers_to_store_bytes": moved["w1"]["s3"] + moved["w2"]["s3"],
                "wire_workers_to_scheduler_bytes": moved["w1"]["sched"] + moved["w2"]["sched"],
                "wire_workers_to_client_bytes": moved["w1"]["client"] + moved["w2"]["client"],
                "tiles_per_step": refined["tiles_per_step"][:3],
            }
            n = max(run["steps"], 1)
            run["per_step"] = {"worker_to_worker_bytes": run["wire_worker_to_worker_bytes"] // n,
                               "allgather_bytes": run["allgather_bytes"] // n,
                               "accounted_bytes": run["bytes_moved_accounted"] // n}
            result["runs"][link] = run
            print(link, {k: v for k, v in run.items() if k not in ("step_wall_s", "wire_bytes_sent")}, flush=True)
        py.eval("client.close()")
    write_result(args.out, result)


if __name__ == "__main__":
    main()
