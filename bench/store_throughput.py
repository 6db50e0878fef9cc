"""Render-store throughput: a 4K latent canvas (16 x 21 x 270 x 480) and its per-tile checkpoint, written
and read through the real store code to a local folder and to a moto S3 server on loopback.

    .venv/bin/python bench/store_throughput.py --out bench/results/store_throughput.json
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import environment, write_result  # noqa: E402
from storage import RenderStore  # noqa: E402
from supergen import RenderSpec  # noqa: E402
from supergen.sink import Checkpoint  # noqa: E402
from supergen.tiling import cores, make_grid  # noqa: E402

CANVAS = (1, 16, 21, 270, 480)  # 4K CogVideoX/Wan latent, 81 frames -> 21 latent frames
TILE = (90, 160)


def latent(dtype, smooth: bool) -> np.ndarray:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(CANVAS, generator=g)
    if smooth:  # late-step latents are smooth: blocky field + 5% noise
        x = torch.nn.functional.interpolate(x[0, :, :, ::30, ::30], size=CANVAS[-2:], mode="nearest")[None]
        x = x + 0.05 * torch.randn(CANVAS, generator=g)
    return x.numpy().astype(dtype)


def codecs():
    from zarr.codecs import BloscCodec, ZstdCodec

    return {"none": None, "zstd1": [ZstdCodec(level=1)],
            "blosc-lz4-bitshuffle": [BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle")]}


def array_rw(store: RenderStore, data: np.ndarray, chunks, compressors) -> dict:
    t0 = time.perf_counter()
    store._write_array("bench/a", data, chunks, ["b", "c", "f", "y", "x"], compressors=compressors)
    w = time.perf_counter() - t0
    t0 = time.perf_counter()
    back = store.group["bench/a"][...]
    r = time.perf_counter() - t0
    assert np.array_equal(back, data)
    store.fs.invalidate_cache()
    stored = sum(store.fs.du(store._key("bench/a"), total=False).values())
    mib = data.nbytes / 2**20
    return {"mib": round(mib, 1), "write_mib_s": round(mib / w, 1), "read_mib_s": round(mib / r, 1),
            "ratio": round(data.nbytes / max(1, stored), 3)}


def checkpoint_rw(store: RenderStore, with_cache: bool) -> dict:
    x = torch.from_numpy(latent(np.float32, False))
    grid = make_grid(CANVAS[-2:], TILE, "wrap", (5, 10))
    maps = {}
    if with_cache:
        from supergen.cache.state import SCALARS, TENSORS

        maps = {k: x.clone() for k in TENSORS}
        maps.update({k: torch.zeros(CANVAS[-2:], dtype=torch.float64) for k in SCALARS})
    ck = Checkpoint(9, grid.windows, cores(grid), x, {}, maps, {"tiles_per_step": [9] * 10})
    t0 = time.perf_counter()
    store.save_checkpoint(ck)
    w = time.perf_counter() - t0
    t0 = time.perf_counter()
    back = store.load_checkpoint()
    r = time.perf_counter() - t0
    assert torch.equal(back.latent, x)
    mib = (x.numel() * 4 * (1 + (6 if with_cache else 0)) + (8 * CANVAS[-2] * CANVAS[-1] * 8 if with_cache else 0)) / 2**20
    return {"cache_maps": with_cache, "mib": round(mib, 1), "write_s": round(w, 2), "read_s": round(r, 2),
            "write_mib_s": round(mib / w, 1), "read_mib_s": round(mib / r, 1)}


def moto():
    from moto.server import ThreadedMotoServer

    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1",
                      AWS_EC2_METADATA_DISABLED="true")
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    import boto3

    boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}").create_bucket(Bucket="bench")
    return server, f"http://127.0.0.1:{port}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="bench/results/store_throughput.json")
    args = ap.parse_args()
    import logging

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    spec = RenderSpec(prompt="bench", width=3840, height=2160, tile=TILE)
    server, endpoint = moto()
    tmp = tempfile.mkdtemp(prefix="store-bench-")
    stores = {"local": (os.path.join(tmp, "s"), None),
              "s3-moto": ("s3://bench/s", {"client_kwargs": {"endpoint_url": endpoint}})}
    rows = []
    for where, (url, opts) in stores.items():
        store = RenderStore.create(url, spec, opts, overwrite=True)
        for dtype in (np.float16, np.float32):
            for smooth in (False, True):
                data = latent(dtype, smooth)
                for chunking, chunks in (("tile", (1, 16, 21) + TILE), ("frame-plane", (1, 16, 1, 270, 480))):
                    for name, comp in codecs().items():
                        if where == "s3-moto" and (chunking != "tile" or smooth):
                            continue  # keep the slow endpoint to the decisive cases
                        row = {"store": where, "dtype": np.dtype(dtype).name, "data": "smooth" if smooth else "noise",
                               "chunking": chunking, "codec": name, **array_rw(store, data, chunks, comp)}
                        rows.append(row)
                        print(row, flush=True)
    ckpt = []
    for where, (url, opts) in stores.items():
        store = RenderStore.create(url, spec, opts, overwrite=True)
        for with_cache in (False, True):
            row = {"store": where, **checkpoint_rw(store, with_cache)}
            ckpt.append(row)
            print(row, flush=True)
    server.stop()
    result = environment(" ".join(["python"] + sys.argv))
    result.update(canvas=list(CANVAS), tile=list(TILE), arrays=rows, checkpoints=ckpt,
                  note="moto runs in the benchmark process on the same 2 cores: a functional endpoint, "
                       "not a measure of real object storage")
    write_result(args.out, result)


if __name__ == "__main__":
    main()
