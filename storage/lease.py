"""Store ownership: one live render per store, by a lease the owner keeps alive.

A lease is a numbered file, `lease/<n>.json`, created exclusively (`O_EXCL` locally, `If-None-Match: *`
on S3), so of two renders racing for generation n + 1 exactly one wins; the loser sees the winner and is
refused, naming it. The owner rewrites its own file with a heartbeat; the highest generation is the
current lease. A lease is free when released, and dead when its heartbeat is older than `ttl` or, on the
same host, its process is gone: a dead lease is taken over by creating the next generation, so a crashed
render is resumed without anyone deleting anything. The owner checks before each heartbeat that no later
generation exists, and stops writing once one does (it was presumed dead and replaced).

Whose render is it is a property of the process: the owner id is host:pid:random, and a process that
acquires a store it already owns just takes another reference.
"""

from __future__ import annotations

import atexit
import json
import os
import socket
import threading
import time
import uuid

from .location import StoreBusy, StoreError

TTL_S = 60.0
BEAT_S = 10.0
_HOST = socket.gethostname()
_ids: dict[int, str] = {}
_held: dict[str, Lease] = {}  # store key -> the lease this process holds
_lock = threading.Lock()


def owner_id() -> str:
    """This process's owner id (a forked child gets its own)."""
    pid = os.getpid()
    if pid not in _ids:
        _ids[pid] = f"{_HOST}:{pid}:{uuid.uuid4().hex[:8]}"
    return _ids[pid]


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def judge(lease: dict | None, now: float, me: str, ttl: float = TTL_S, host: str = _HOST,
          alive=pid_alive) -> str:
    """'free' (none, or released), 'mine', 'live' (another owner, heartbeating) or 'dead'."""
    if lease is None or lease.get("released"):
        return "free"
    if lease.get("owner") == me:
        return "mine"
    if lease.get("host") == host and not alive(int(lease.get("pid", -1))):
        return "dead"
    return "dead" if now - float(lease.get("heartbeat", 0)) > ttl else "live"


def describe(lease: dict, now: float) -> str:
    return (f"render {lease.get('owner')} (pid {lease.get('pid')} on {lease.get('host')}, "
            f"last heartbeat {now - float(lease.get('heartbeat', 0)):.0f} s ago)")


def busy(url: str, lease: dict) -> StoreBusy:
    return StoreBusy(f"{url} is being written by {describe(lease, time.time())}; wait for it to finish or stop "
                     "it (a dead owner's store is taken over by render or resume)")


class Lease:
    """This process's hold on one store (`fs`, `root`: the store's filesystem and path)."""

    def __init__(self, fs, root: str, ttl: float = TTL_S, beat: float = BEAT_S):
        self.fs, self.root, self.ttl, self.beat = fs, root.rstrip("/"), ttl, beat
        self.n: int | None = None
        self.refs = 0
        self.lost = False
        self.took_over: dict | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the lease files ----------------------------------------------------------------------------
    def _path(self, n: int) -> str:
        return f"{self.root}/lease/{n:06d}.json"

    def current(self) -> tuple[int, dict | None]:
        """(generation, record) of the highest lease file; (0, None) when there is none."""
        try:
            names = [p.rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(f"{self.root}/lease", detail=False)]
        except FileNotFoundError:
            return 0, None
        gens = sorted(int(n[:-5]) for n in names if n.endswith(".json") and n[:-5].isdigit())
        if not gens:
            return 0, None
        try:
            return gens[-1], json.loads(self.fs.cat_file(self._path(gens[-1])))
        except (FileNotFoundError, ValueError):  # being written this instant: treat as live, retry later
            return gens[-1], {"owner": "?", "heartbeat": time.time(), "pid": -1, "host": "?"}

    def _create(self, n: int, record: dict) -> bool:
        """Exclusive create of generation n; False if it already exists."""
        data = json.dumps(record).encode()
        path = self._path(n)
        if type(self.fs).__name__ == "LocalFileSystem":
            os.makedirs(os.path.dirname(path), exist_ok=True)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            return True
        try:
            self.fs.pipe_file(path, data, mode="create")
        except FileExistsError:
            return False
        return True

    def _record(self, **extra) -> dict:
        now = time.time()
        return {"owner": owner_id(), "host": _HOST, "pid": os.getpid(), "acquired": now, "heartbeat": now,
                **extra}

    def refuse_if_live(self, url: str) -> None:
        """Raise StoreBusy naming another live owner, without taking the lease."""
        _, cur = self.current()
        if judge(cur, time.time(), owner_id(), self.ttl) == "live":
            raise busy(url, cur)

    # -- acquire / heartbeat / release --------------------------------------------------------------
    def acquire(self, url: str) -> None:
        """Own the store, or raise StoreBusy naming the live owner."""
        if self.refs:
            self.refs += 1
            return
        for _ in range(5):
            n, cur = self.current()
            state = judge(cur, time.time(), owner_id(), self.ttl)
            if state == "live":
                raise busy(url, cur)
            if state == "mine":
                self.n = n
                break
            extra = {"took_over": cur.get("owner")} if state == "dead" else {}
            if self._create(n + 1, self._record(**extra)):
                self.n, self.took_over = n + 1, (cur if state == "dead" else None)
                break
        else:
            raise StoreBusy(f"{url}: could not take the store's lease (other renders keep racing for it)")
        self.refs, self.lost = 1, False
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name="supergen-lease", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.beat):
            try:
                self.heartbeat()
            except Exception:  # a missed beat is retried; only a later generation ends the lease
                pass

    def heartbeat(self) -> None:
        n, cur = self.current()
        if n != self.n or (cur or {}).get("owner") != owner_id():
            self.lost = True
            self._stop.set()
            return
        self.fs.pipe_file(self._path(self.n), json.dumps({**cur, "heartbeat": time.time()}).encode())

    def check(self, url: str) -> None:
        """Raise unless this process still owns the store (before any write only the owner may make)."""
        if not self.refs:
            raise StoreError(f"{url}: this process does not own the store (no lease)")
        if self.lost:
            raise StoreBusy(f"{url}: the lease was taken over by another render (this one was presumed dead)")

    def release(self, force: bool = False) -> None:
        if not self.refs:
            return
        self.refs = 0 if force else self.refs - 1
        if self.refs:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if not self.lost:
            try:
                n, cur = self.current()
                if n == self.n and cur and cur.get("owner") == owner_id():
                    self.fs.pipe_file(self._path(n), json.dumps({**cur, "released": time.time()}).encode())
            except Exception:  # an unreleased lease just ages into a dead one
                pass


def hold(fs, root: str, key: str, url: str) -> Lease:
    """This process's lease on the store at `key`, acquired (one per store per process, counted)."""
    with _lock:
        lease = _held.get(key)
        if lease is None or not lease.refs:
            lease = _held[key] = Lease(fs, root)
        lease.acquire(url)
        return lease


def held(key: str) -> Lease | None:
    lease = _held.get(key)
    return lease if lease is not None and lease.refs else None


@atexit.register
def _release_all() -> None:
    for lease in list(_held.values()):
        lease.release(force=True)
