"""Read a finished render without supergen: zarr, dask.array and xarray on the render store's Zarr group.

    python docs/examples/read_render.py s3://renders/job-42 [ENDPOINT_URL]

Prints, as JSON, what each library read of the first second of the top-left 64 x 64 pixels of the video,
and checks that no supergen (or torch) module was imported to do it. Credentials come from the standard
chain (environment, config files), as for any s3fs user.
"""

import json
import sys

import dask.array as da
import numpy as np
import xarray as xr
import zarr

url = sys.argv[1]
opts = {"client_kwargs": {"endpoint_url": sys.argv[2]}} if len(sys.argv) > 2 else {}
group = f"{url}/data.zarr"  # the render's Zarr group; its files (video.mp4, render.json) sit beside it

root = zarr.open_group(group, mode="r", storage_options=opts)
fps = root.attrs["spec"]["fps"]  # the resolved request is in the root attributes
frames = root["video/frames"]  # (frame, y, x, rgb) uint8, chunked by one second of one tile region
second = frames[0:fps, 0:64, 0:64]  # reads the chunks that hold it, nothing else

lazy = da.from_zarr(group, component="video/frames", storage_options=opts)  # the same array, lazily
video = xr.open_zarr(group, group="video", storage_options=opts, consolidated=False)["frames"]  # named dims

out = {"shape": list(frames.shape), "chunks": list(frames.chunks), "fps": fps,
       "zarr": int(second.astype(np.int64).sum()),
       "dask": int(lazy[0:fps, 0:64, 0:64].astype(np.int64).sum().compute()),
       "xarray": int(video.isel(frame=slice(0, fps), y=slice(0, 64), x=slice(0, 64)).astype(np.int64).sum()),
       "dims": list(video.dims),
       "supergen_imported": any(m.split(".")[0] in ("supergen", "storage", "torch") for m in sys.modules)}
print(json.dumps(out))
