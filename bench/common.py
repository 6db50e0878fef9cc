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
    """JSON, indented, with each innermost list on one line (a timeline's [start, stop, key] rows)."""
    import re

    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    text = re.sub(r"\[([^\[\]{}]*)\]", lambda m: "[" + re.sub(r"\n\s*", " ", m.group(1)).strip() + "]",
                  json.dumps(result, indent=1))  # JSON strings hold no raw newline: only layout is joined
    with open(path, "w") as f:
        f.write(text + "\n")


CPU_TASKS = ("files_stage",)  # encoding on the CPU, outside the worker's slot: not accelerator time


def busy_fractions(stream: list, info: dict, t0: float, t1: float, skip: tuple = CPU_TASKS) -> dict:
    """Per worker name: the time within [t0, t1] during which at least one of its tasks computed (a Dask
    task stream's records, `info` the scheduler's workers), over t1 - t0. Tasks whose key starts with one
    of `skip` are left out: by default the CPU-only files stage, which runs beside a GPU worker's task."""
    spans: dict = {}
    for t in stream:
        if str(t["key"]).startswith(skip):
            continue
        name = str(info.get(t["worker"], {}).get("name", t["worker"]))
        for ss in t.get("startstops", ()):
            if ss["action"] == "compute" and min(ss["stop"], t1) > max(ss["start"], t0):
                spans.setdefault(name, []).append((max(ss["start"], t0), min(ss["stop"], t1)))
    return {w: round(_covered(v) / max(t1 - t0, 1e-9), 3) for w, v in sorted(spans.items())}


def _covered(spans: list) -> float:
    """Seconds covered by the union of (start, stop) spans."""
    total, end = 0.0, float("-inf")
    for a, b in sorted(spans):
        if b > end:
            total += b - max(a, end)
            end = b
    return total


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
