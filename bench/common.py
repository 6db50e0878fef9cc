"""Shared by the benchmarks: the environment record every result carries, and writing results."""

from __future__ import annotations

import datetime
import json
import os
import platform

import torch

import supergen


def environment(command: str) -> dict:
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "device": f"cpu: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                  f"{torch.get_num_threads()} torch threads",
        "versions": supergen.versions(),
    }


def write_result(path: str, result: dict) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
