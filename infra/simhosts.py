"""Simulated hosts on one Linux machine, for tests and benchmarks of what crosses a network.

Each host is a network namespace with one interface (`eth0`, an end of a veth pair) on a bridge that lives
in a namespace of its own: the hosts reach each other at their own addresses and nothing else (not the
machine's loopback, not the outside). Each host's processes run in private mount namespaces whose /tmp is
the host's own folder, so no host sees another's /tmp; the rest of the filesystem (the installed software)
is common, as on hosts built from one image. Needs root, iproute2 and util-linux (`ip`, `unshare`).

    with Hosts(["sched", "w1", "client"]) as hosts:
        hosts.popen("sched", ["python3", "-m", "distributed.cli.dask_scheduler", "--host", hosts.ip("sched")])
        hosts.cut("w1")                      # its link down: packets vanish, connections hang
        hosts.shape("w1", "10gbit")          # a rate-limited link, both directions, metered per peer
        hosts.sent("w1")                     # {host: bytes w1 sent it}

`python -m infra.simhosts s3 --host IP --port N` is the S3 endpoint such a test runs on a host of its own:
moto's server with authentication enforced, its bucket and credentials printed as one JSON line.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid


def available() -> str | None:
    """Why simulated hosts cannot be built here, or None."""
    if os.geteuid() != 0:
        return "simulated hosts need root (network and mount namespaces)"
    for tool in ("ip", "unshare", "tc"):
        if shutil.which(tool) is None:
            return f"simulated hosts need `{tool}`"
    probe = f"sgprobe{uuid.uuid4().hex[:6]}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"cannot create a network namespace: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def _ip(*args: str, ns: str | None = None) -> None:
    cmd = ["ip", *(["-n", ns] if ns else []), *args]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {done.stderr.strip()}")


class Hosts:
    """Named hosts on 10.<net>.0.0/24 (addresses in the order given, from .1). `stop` (or leaving the `with`)
    kills every process started on them and removes the namespaces and the hosts' /tmp folders."""

    def __init__(self, names: list[str], net: int | None = None, shared: tuple[str, ...] = ()):
        """`shared`: folders every host sees as they are even when they lie under /tmp (the installed
        software: a checkout and its virtual environment cloned into /tmp)."""
        self.tag = uuid.uuid4().hex[:5]
        under = sorted({os.path.realpath(p) for p in shared if os.path.realpath(p).startswith("/tmp/")
                        and os.path.isdir(p)})
        self.shared = [p for p in under if not any(p.startswith(q + "/") for q in under)]  # the outermost
        self.names = list(names)
        self.net = net if net is not None else 100 + os.getpid() % 100
        self.root = tempfile.mkdtemp(prefix=f"simhosts-{self.tag}-")
        self.procs: list[subprocess.Popen] = []
        self._made: list[str] = []

    # -- the network ------------------------------------------------------------------------------
    def ns(self, name: str) -> str:
        return f"sg{self.tag}-{name}"

    def ip(self, name: str) -> str:
        return f"10.{self.net}.0.{self.names.index(name) + 1}"

    def tmp(self, name: str) -> str:
        """The host's /tmp, as seen from outside the hosts."""
        return os.path.join(self.root, name)

    def start(self) -> "Hosts":
        bridge = f"sg{self.tag}-net"
        _ip("netns", "add", bridge)
        self._made.append(bridge)
        _ip("link", "add", "br0", "type", "bridge", ns=bridge)
        _ip("link", "set", "br0", "up", ns=bridge)
        for k, name in enumerate(self.names):
            ns, outer = self.ns(name), f"sg{self.tag}b{k}"
            _ip("netns", "add", ns)
            self._made.append(ns)
            _ip("link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", outer, "netns", bridge)
            _ip("link", "set", outer, "master", "br0", ns=bridge)
            _ip("link", "set", outer, "up", ns=bridge)
            _ip("addr", "add", f"{self.ip(name)}/24", "dev", "eth0", ns=ns)
            _ip("link", "set", "eth0", "up", ns=ns)
            _ip("link", "set", "lo", "up", ns=ns)
            os.makedirs(self.tmp(name), mode=0o1777, exist_ok=True)
        return self

    def cut(self, name: str) -> None:
        """Take the host's link down: what it sends and what is sent to it is lost, without a reset."""
        _ip("link", "set", "eth0", "down", ns=self.ns(name))

    def restore(self, name: str) -> None:
        _ip("link", "set", "eth0", "up", ns=self.ns(name))

    def shape(self, name: str, rate: str | None = None) -> None:
        """Limit the host's link to `rate` (tc's units: 10gbit, 1gbit) in both directions; `None`: no limit.
        Either way what the host sends is metered per destination host (`sent`): its egress is an htb tree
        with one class per other host under a parent at `rate`, the bridge's side a token bucket (tbf).
        (netem, for an added delay, is not in every kernel.)"""
        k, tc = self.names.index(name), ["ip", "netns", "exec", self.ns(name), "tc"]
        top = rate or "100gbit"
        subprocess.run(tc + ["qdisc", "del", "dev", "eth0", "root"], capture_output=True)  # htb takes no change
        _tc(tc + ["qdisc", "add", "dev", "eth0", "root", "handle", "1:", "htb", "default", "99"])
        _tc(tc + ["class", "replace", "dev", "eth0", "parent", "1:", "classid", "1:1", "htb", "rate", top,
                  "quantum", "60000"])
        for j, peer in enumerate(self.names):
            cls = "1:99" if peer == name else f"1:{10 + j}"  # the default class: what goes to no other host (ARP)
            _tc(tc + ["class", "replace", "dev", "eth0", "parent", "1:1", "classid", cls, "htb", "rate", top,
                      "quantum", "60000"])
            if peer != name:
                _tc(tc + ["filter", "replace", "dev", "eth0", "parent", "1:", "protocol", "ip", "prio", "1",
                          "handle", f"800::{10 + j}", "u32", "match", "ip", "dst", f"{self.ip(peer)}/32",
                          "flowid", cls])
        bridge = ["ip", "netns", "exec", f"sg{self.tag}-net", "tc", "qdisc"]
        if rate is None:
            subprocess.run(bridge + ["del", "dev", f"sg{self.tag}b{k}", "root"], capture_output=True)
        else:
            _tc(bridge + ["replace", "dev", f"sg{self.tag}b{k}", "root", "tbf", "rate", rate, "burst", "1mb",
                          "latency", "50ms"])

    def sent(self, name: str) -> dict[str, int]:
        """Bytes the host has sent to each other host since it was last shaped (`shape`, with or without a
        rate)."""
        out = subprocess.run(["ip", "netns", "exec", self.ns(name), "tc", "-s", "class", "show", "dev", "eth0"],
                             capture_output=True, text=True, check=True).stdout
        by_class = {m.group(1): int(m.group(2)) for m in re.finditer(r"class htb (1:\d+) .*?\n\s*Sent (\d+) bytes",
                                                                     out)}
        return {peer: by_class.get(f"1:{10 + j}", 0) for j, peer in enumerate(self.names) if peer != name}

    # -- processes --------------------------------------------------------------------------------
    def command(self, name: str, argv: list[str]) -> list[str]:
        """`argv` as run on host `name`: in its network namespace, with its own hostname (`name`) and a
        private mount namespace whose /tmp is the host's folder (with the `shared` folders in it)."""
        inside = [(p, '"$0/' + os.path.relpath(p, "/tmp") + '"') for p in self.shared]
        keep = "".join(f"mkdir -p {at} && mount --bind {p} {at} && " for p, at in inside)
        script = keep + 'mount --rbind "$0" /tmp && hostname "$1" && shift && exec "$@"'
        return ["ip", "netns", "exec", self.ns(name), "unshare", "--mount", "--uts", "--propagation", "private",
                "sh", "-c", script, self.tmp(name), name, *argv]

    def popen(self, name: str, argv: list[str], **kw) -> subprocess.Popen:
        """Start `argv` on host `name` in a process group of its own (`stop` ends the whole group)."""
        p = subprocess.Popen(self.command(name, argv), start_new_session=True, **kw)
        self.procs.append(p)
        return p

    def run(self, name: str, argv: list[str], timeout: float = 600, **kw) -> subprocess.CompletedProcess:
        return subprocess.run(self.command(name, argv), timeout=timeout, **kw)

    def python(self, name: str, **kw) -> "Interpreter":
        """A Python interpreter that stays running on host `name`, for many small requests (no start-up
        cost each): `.eval(code)` runs `code` there and returns its last expression's value."""
        return Interpreter(self.popen(name, [sys.executable, "-u", "-c", _INTERPRETER], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, text=True, **kw))

    @staticmethod
    def kill(p: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
        """Signal the process group `popen` gave `p`, and wait for its leader."""
        try:
            os.killpg(p.pid, sig)
        except ProcessLookupError:
            pass
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()

    def stop(self) -> None:
        for p in self.procs[::-1]:
            self.kill(p)
        self.procs = []
        for ns in self._made[::-1]:  # a namespace's veth ends go with it
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        self._made = []
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> "Hosts":
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()


_INTERPRETER = """
import ast, json, sys, traceback
scope, replies = {}, sys.stdout  # replies go to the real stdout, whatever a request redirects
for line in sys.stdin:
    try:
        tree = ast.parse(json.loads(line))
        last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
        exec(compile(tree, "<request>", "exec"), scope)
        value = eval(compile(ast.Expression(last.value), "<request>", "eval"), scope) if last else None
        out = {"value": value}
    except BaseException:
        out = {"error": traceback.format_exc()}
    print(json.dumps(out, default=repr), file=replies, flush=True)
"""


class Interpreter:
    """A persistent Python process on a simulated host (`Hosts.python`); its state lasts between calls."""

    def __init__(self, proc: subprocess.Popen):
        self.proc = proc

    def eval(self, code: str):
        """Run `code` there; the value of its last line when that is an expression (JSON-able, else its
        repr). An exception there is raised here as RuntimeError with the remote traceback."""
        self.proc.stdin.write(json.dumps(code) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the interpreter exited ({self.proc.poll()})")
        out = json.loads(line)
        if "error" in out:
            raise RuntimeError(out["error"])
        return out["value"]


def host_env(root: str, **extra) -> dict:
    """The environment of a process on a fresh host running the checkout at `root` with this Python: none
    of this machine's Prefect, Dask, AWS or supergen settings; one torch thread (hosts share the cores)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "DASK_", "AWS_", "SUPERGEN_"))}
    env.update(PYTHONPATH=root, PATH=f"{os.path.dirname(sys.executable)}:{env.get('PATH', '')}",
               DO_NOT_TRACK="1", OMP_NUM_THREADS="1", **extra)
    return env


def give_certs(hosts: Hosts, folder: str, roles: dict[str, str], into: str = "certs") -> None:
    """Each host named in `roles` gets, in its /tmp/`into`, `folder`'s ca.pem and its role's .pem and .key
    (infra/make_certs.sh's layout), and never the CA's key: that one mints members."""
    for host, role in roles.items():
        dest = os.path.join(hosts.tmp(host), into)
        os.makedirs(dest, exist_ok=True)
        for f in ("ca.pem", f"{role}.pem", f"{role}.key"):
            shutil.copy(os.path.join(folder, f), os.path.join(dest, f))


def _tc(cmd: list[str]) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[3:])}: {done.stderr.strip()}")


def wait_for_port(hosts: Hosts, name: str, ip: str, port: int, timeout: float = 120,
                  proc: subprocess.Popen | None = None) -> None:
    """Until a TCP connection from host `name` to ip:port succeeds (`proc`: fail early should it exit)."""
    deadline = time.monotonic() + timeout
    probe = ["python3", "-c", f"import socket; socket.create_connection(({ip!r}, {port}), timeout=1).close()"]
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the process serving {ip}:{port} exited with {proc.returncode}")
        if hosts.run(name, probe, capture_output=True).returncode == 0:
            return
        time.sleep(0.3)
    raise TimeoutError(f"nothing answered at {ip}:{port} from {name} within {timeout:.0f} s")


def _serve_s3(host: str, port: int) -> None:
    """moto's S3 server on host:port with authentication enforced from the first request after set-up: a
    user `renderer` allowed everything, a bucket `renders`; prints {"endpoint", "key", "secret"}."""
    import boto3
    from moto import settings
    from moto.core.authorization import ActionAuthenticatorMixin
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address=host, port=port, verbose=False)
    server.start()
    endpoint = f"http://{host}:{port}"
    boot = dict(endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="bootstrap",
                aws_secret_access_key="bootstrap")
    iam = boto3.client("iam", **boot)
    iam.create_user(UserName="renderer")
    iam.put_user_policy(UserName="renderer", PolicyName="all", PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
    key = iam.create_access_key(UserName="renderer")["AccessKey"]
    settings.INITIAL_NO_AUTH_ACTION_COUNT, ActionAuthenticatorMixin.request_count = 0, 0
    boto3.client("s3", **{**boot, "aws_access_key_id": key["AccessKeyId"],
                          "aws_secret_access_key": key["SecretAccessKey"]}).create_bucket(Bucket="renders")
    print(json.dumps({"endpoint": endpoint, "key": key["AccessKeyId"], "secret": key["SecretAccessKey"]}), flush=True)
    signal.sigwait({signal.SIGTERM, signal.SIGINT})
    server.stop()


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(prog="python -m infra.simhosts")
    sub = parser.add_subparsers(dest="what", required=True)
    s3 = sub.add_parser("s3", help="moto's S3 server with authentication enforced")
    s3.add_argument("--host", required=True)
    s3.add_argument("--port", type=int, default=5000)
    a = parser.parse_args()
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    _serve_s3(a.host, a.port)
