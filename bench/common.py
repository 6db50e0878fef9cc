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
