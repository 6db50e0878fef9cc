"""Services a command starts for itself, bound to its lifetime.

A flow needs a Prefect API. When none is configured (no PREFECT_API_URL in the environment or the active
profile), Prefect's "ephemeral mode" starts `uvicorn prefect.server.api.server:create_app` as a plain
subprocess and stops it from an atexit hook: a client killed by a signal never runs that hook, so the
server outlives it, forever, and every such server shares ~/.prefect/prefect.db (with its telemetry
service writing to it, see below). `prefect_api()` replaces that with a server of this command:

* the same app and service set as Prefect's ephemeral server (PREFECT__SERVER_EPHEMERAL), in a child
  process bound to this one: on Linux the child asks the kernel for SIGHUP when its parent dies
  (prctl PR_SET_PDEATHSIG), on every platform a watchdog thread in the child also polls its parent pid;
  either way it removes its home and exits at once, so the server ends with the command even on SIGKILL.
  The graceful paths (normal end, errors, Ctrl-C) drain the client and stop it from a `finally`;
* its own throwaway PREFECT_HOME (database and all), removed when it stops, by whichever side is left;
  the database starts as a copy of a migrated template cached per Prefect version (prepare_database);
* server telemetry off (PREFECT_SERVER_ANALYTICS_ENABLED=false, DO_NOT_TRACK=1). The telemetry
  heartbeat was the "database is locked" traceback: it reads the configuration table and then writes it
  in one DEFERRED sqlite transaction; another writer committing in between turns the upgrade to a write
  lock into SQLITE_BUSY at once (WAL snapshot conflict: busy_timeout does not apply). Offline, it then
  also logged "Failed to send telemetry" as an ERROR;
* its own session (process group), so a terminal's Ctrl-C reaches the command, which reports the
  interrupted flow run to the server before stopping it, instead of the server dying first;
* a listening socket bound here and inherited by the child: the URL is known at once (no port race),
  and the server starts while the command starts its cluster.

The Dask side: a local cluster's worker processes already exit when their nanny (in this process) goes
away, also on SIGKILL (distributed's parent-alive pipe); flows/worker_process.py covers Ctrl-C and
their exit.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

APP = "prefect.server.api.server:create_app"
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
# Settings that would point our server at someone else's database or configuration.
FOREIGN = ("PREFECT_API_", "PREFECT_SERVER_DATABASE_", "PREFECT_PROFILE",
           "PREFECT_HOME")


def configured_api_url() -> str | None:
    """The Prefect API URL from the environment or the active profile, if any."""
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value() or None


def server_environment(home: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(FOREIGN)}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # where `flows` lives
    env.update(
        PREFECT_HOME=home,
        PREFECT_PROFILES_PATH=os.path.join(home, "profiles.toml"),  # absent: defaults, not the user's profile
        PREFECT_SERVER_DATABASE_CONNECTION_URL="sqlite+aiosqlite:///" + os.path.join(home, "prefect.db"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        DO_NOT_TRACK="1",
        PREFECT_UI_ENABLED="false",
        # what Prefect's own ephemeral server sets: only the services a local flow run needs, no UI
        PREFECT__SERVER_EPHEMERAL="1",
        PREFECT__SERVER_FINAL="1",
        # the child prepares the database before the app starts (prepare_database)
        PREFECT_SERVER_DATABASE_MIGRATE_ON_START="false",
        PREFECT_SERVER_REGISTER_BLOCKS_ON_START="false",
        PYTHONPATH=os.pathsep.join([root, *filter(None, [os.environ.get("PYTHONPATH")])]),
    )
    return env


class PrefectServer:
    """A temporary Prefect server in a child process bound to this one (see the module docstring).

    `start()` returns at once; `wait_ready()` blocks until the API answers. Start it from the thread
    that lives as long as the server should (the main thread): PR_SET_PDEATHSIG fires when the thread
    that forked the child ends."""

    def __init__(self, startup_timeout: float = 120.0):
        self.startup_timeout = startup_timeout
        self.home: str | None = None
        self.process: subprocess.Popen | None = None
        self.port: int | None = None
        self._ready = False

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def start(self) -> PrefectServer:
        self.home = tempfile.mkdtemp(prefix="supergen-prefect-")
        cmd = [sys.executable, "-m", "flows.services", "prefect-server", "--parent", str(os.getpid()),
               "--home", self.home]
        sock = None
        try:
            if os.name == "posix":
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sock.bind(("127.0.0.1", 0))
                sock.listen(128)
                self.port = sock.getsockname()[1]
                cmd += ["--fd", str(sock.fileno())]
                extra = dict(pass_fds=(sock.fileno(),), start_new_session=True)
            else:  # no inheritable listening socket: a free port, taken again by the child
                with socket.socket() as probe:
                    probe.bind(("127.0.0.1", 0))
                    self.port = probe.getsockname()[1]
                cmd += ["--port", str(self.port)]
                extra = dict(creationflags=getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0))
            # the server's own output goes to our stderr (fd 2): our stdout carries only the command's result
            self.process = subprocess.Popen(cmd, env=server_environment(self.home), stdin=subprocess.DEVNULL,
                                            stdout=2, **extra)
        except BaseException:
            self._remove_home()
            raise
        finally:
            if sock is not None:
                sock.close()  # the child holds its own copy
        return self

    def wait_ready(self) -> None:
        """Block until the API answers /health; a clear error if the server exits or never answers."""
        if self._ready:
            return
        deadline = time.monotonic() + self.startup_timeout
        direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never via a proxy
        while True:
            if self.process.poll() is not None:
                raise ConnectionError(f"the temporary Prefect server exited with code {self.process.returncode} "
                                      "before it answered (its output is above)")
            try:
                with direct.open(self.api_url + "/health", timeout=2) as r:
                    if r.status == 200:
                        self._ready = True
                        return
            except (OSError, urllib.error.URLError):
                pass
            if time.monotonic() > deadline:
                raise ConnectionError(f"the temporary Prefect server at {self.api_url} did not answer within "
                                      f"{self.startup_timeout:.0f} s")
            time.sleep(0.1)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server and remove its home. One that never answered is killed: it holds nothing yet,
        and Prefect's shutdown of services whose start is still pending fails ("AssertionError: Reactive
        triggers not started", "Application shutdown failed"), e.g. on a Ctrl-C during start-up."""
        p, self.process = self.process, None
        if p is not None and p.poll() is None:
            p.terminate() if self._ready else p.kill()
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self._remove_home()

    def _remove_home(self) -> None:
        if self.home is not None:
            remove_home(self.home)
            self.home = None

    def __enter__(self) -> PrefectServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class PrefectAPI:
    """What `prefect_api()` yields: the URL flows report to, and a wait for a server of our own."""

    def __init__(self, url: str | None, server: PrefectServer | None = None):
        self.url, self.server = url, server

    def wait_ready(self) -> None:
        if self.server is not None:
            self.server.wait_ready()


def drain_prefect_clients(timeout: float = 10.0) -> None:
    """Send what the Prefect client still queues in the background (flow-run logs, events) while its
    server is up: a server stopped first makes them fail at interpreter exit."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for service in (APILogWorker, EventsWorker):
        service.drain_all(timeout=timeout, at_exit=False)


@contextlib.contextmanager
def prefect_api():
    """The Prefect API of this command: the configured one, else a temporary server of its own (started
    here, set as PREFECT_API_URL inside the block, drained and stopped on the way out, however the block
    ends; its process also ends if this one is killed). Call `.wait_ready()` before the first flow runs:
    starting the server first and waiting later overlaps its start-up with other work. A profile that
    forbids temporary servers (PREFECT_SERVER_ALLOW_EPHEMERAL_MODE=false) gets none: Prefect's own error."""
    from prefect.settings import PREFECT_API_URL, PREFECT_UI_URL, get_current_settings, temporary_settings

    url = configured_api_url()
    if url or not get_current_settings().server.ephemeral.enabled:
        yield PrefectAPI(url)
        return

    # no UI URL: the server serves no UI (as Prefect's ephemeral one), so no "View at <dead link>"
    with PrefectServer() as server, temporary_settings(updates={PREFECT_API_URL: server.api_url,
                                                                PREFECT_UI_URL: ""}):
        try:
            yield PrefectAPI(server.api_url, server)
        finally:
            if server._ready:
                drain_prefect_clients()


# ---- the child side -------------------------------------------------------------------------------------

def bind_to_parent(parent: int, on_orphaned) -> None:
    """Call `on_orphaned()`, which must end this process, when `parent` dies: on Linux the kernel sends
    SIGHUP then (PR_SET_PDEATHSIG, asked for here, in the child: no preexec_fn, which is unsafe in a
    threaded parent such as one running a Dask cluster); on every platform a watchdog thread also polls
    the parent pid. Nobody is left to serve, so there is no graceful shutdown to wait for."""
    if hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, lambda signum, frame: on_orphaned())
        if sys.platform.startswith("linux"):
            import ctypes

            try:
                ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGHUP, 0, 0, 0)
            except (OSError, AttributeError):
                pass  # the watchdog below still applies
    if os.getppid() != parent:  # the parent died before the request above took effect
        on_orphaned()

    def watch():
        while os.getppid() == parent:
            time.sleep(0.5)
        on_orphaned()

    threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()


def template_path() -> str:
    """The cached database template: one per Prefect version and set of installed Prefect collections
    (whose block types registration adds)."""
    import hashlib
    from importlib.metadata import entry_points

    import prefect

    collections = sorted(f"{ep.name}={ep.dist.version if ep.dist else ''}"
                         for ep in entry_points(group="prefect.collections"))
    key = hashlib.sha256("\n".join([prefect.__version__, *collections]).encode()).hexdigest()[:12]
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "supergen", f"prefect-{prefect.__version__}-{key}.db")


def prepare_database(home: str) -> None:
    """A fresh database in `home`, migrated and with Prefect's block types registered (what the server
    does on every start): a copy of the cached template of this Prefect version when there is one
    (preparing an empty sqlite database takes seconds, copying it milliseconds), else prepared here and
    saved as the template (written aside and renamed: concurrent commands never see a partial one).
    Without a writable cache each start prepares its own."""
    import sqlite3

    db, template = os.path.join(home, "prefect.db"), template_path()
    if os.path.isfile(template):
        shutil.copyfile(template, db)
        return
    import asyncio

    async def prepare():
        import prefect.plugins
        from prefect.server.database import provide_database_interface
        from prefect.server.models.block_registration import run_block_auto_registration

        db = provide_database_interface()
        await db.create_db()
        prefect.plugins.load_prefect_collections()
        async with await db.session() as session:
            await run_block_auto_registration(session=session)

    asyncio.run(prepare())
    part = f"{template}.{os.getpid()}.part"
    try:
        os.makedirs(os.path.dirname(template), exist_ok=True)
        with contextlib.closing(sqlite3.connect(db)) as src, contextlib.closing(sqlite3.connect(part)) as dst:
            src.backup(dst)
        os.replace(part, template)
    except (OSError, sqlite3.Error):
        with contextlib.suppress(OSError):
            os.remove(part)


def serve_prefect(argv: list[str]) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m flows.services prefect-server")
    ap.add_argument("--parent", type=int, required=True)
    ap.add_argument("--home", required=True)
    ap.add_argument("--fd", type=int)
    ap.add_argument("--port", type=int)
    a = ap.parse_args(argv)

    def stop(signum, frame):
        raise SystemExit(0)

    def orphaned():
        remove_home(a.home)
        os._exit(0)

    # The parent stops us with SIGTERM: uvicorn handles it while it serves and re-raises it after its
    # graceful shutdown; this handler turns that into a normal exit, so the home is removed below.
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    bind_to_parent(a.parent, orphaned)
    try:
        prepare_database(a.home)
        import uvicorn

        config = uvicorn.Config(APP, factory=True, host="127.0.0.1", port=a.port or 0, log_level="error",
                                lifespan="on")
        server = uvicorn.Server(config)
        if a.fd is not None:
            server.run(sockets=[socket.socket(fileno=a.fd)])  # family and type from the inherited socket
        else:
            server.run()
        return 0
    finally:
        remove_home(a.home)


def remove_home(home: str, tries: int = 40) -> None:
    """Remove the server's throwaway home, again while its other threads still write into it (a database
    journal, a log): one pass of rmtree can meet a file created behind it and leave the folder."""
    import time

    for _ in range(tries):
        shutil.rmtree(home, ignore_errors=True)
        if not os.path.exists(home):
            return
        time.sleep(0.05)


def _main() -> None:
    if sys.argv[1:2] != ["prefect-server"]:
        sys.exit("usage: python -m flows.services prefect-server --parent PID --home DIR (--fd N | --port N)")
    try:
        code = serve_prefect(sys.argv[2:])
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 0
    # Stopped, home removed: skip the interpreter's teardown, seconds of garbage-collecting the server's
    # modules that a command waiting for its server to stop would otherwise wait for.
    import logging

    logging.shutdown()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    _main()
