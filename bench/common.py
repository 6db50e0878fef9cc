"""Shared by the benchmarks: the environment record every result carries, and writing results."""

from __future__ import annotations

import datetime
import json
import os
import platform

import torch

import supergen


def environment(command: str) -> dict:
    out = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "device": f"cpu: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                  f"{torch.get_num_threads()} torch threads",
        "versions": supergen.versions(),
    }
    if torch.cuda.is_available():
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        out["device"] = f"{len(names)}x {names[0]}, {os.cpu_count()} CPU cores"
        out["versions"]["cuda"] = torch.version.cuda
        try:
            import subprocess

            out["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                           capture_output=True, text=True, timeout=20).stdout.split()[0]
        except Exception:
            out["driver"] = None
    return out


def write_result(path: str, result: dict) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        json.dump(result, f, indent=1)


def busy_fractions(stream: list, info: dict, t0: float, t1: float) -> dict:
    """Per worker name: the seconds its tasks computed within [t0, t1] (a Dask task stream's records,
    `info` the scheduler's workers), over t1 - t0."""
    busy: dict = {}
    for t in stream:
        name = str(info.get(t["worker"], {}).get("name", t["worker"]))
        for ss in t.get("startstops", ()):
            if ss["action"] == "compute":
                busy[name] = busy.get(name, 0.0) + max(0.0, min(ss["stop"], t1) - max(ss["start"], t0))
    return {w: round(b / max(t1 - t0, 1e-9), 3) for w, b in sorted(busy.items())}


def timeline(stream: list, info: dict, t0: float) -> dict:
    """Per worker name: [start, stop, key] of every computed task, seconds from the stage's start (where a
    stage's idle time sits, for the next profile)."""
    out: dict = {}
    for t in stream:
        name = str(info.get(t["worker"], {}).get("name", t["worker"]))
        for ss in t.get("startstops", ()):
            if ss["action"] == "compute":
                out.setdefault(name, []).append([round(ss["start"] - t0, 3), round(ss["stop"] - t0, 3), str(t["key"])])
    return {w: sorted(v) for w, v in sorted(out.items())}
