"""The conditioning image as a render input: read once from its path where the render is submitted, then
carried as bytes (the render store keeps a copy), so no worker and no resume needs the original path.
The spec holds only the path's value; whether the file opens is checked here, before any model loads."""

from __future__ import annotations

import io
import os

from .errors import SpecError


def read_image(path: str) -> bytes:
    """The image file's bytes, refused early with the cause named when it is missing or not an image."""
    if not os.path.isfile(path):
        raise SpecError("image", f"no such file: {path!r}")
    with open(path, "rb") as f:
        data = f.read()
    decode_image(data, path)
    return data


def decode_image(data: bytes, name: str = "the stored image"):
    """PIL RGB image of an image file's bytes."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.convert("RGB")
    except Exception as e:  # PIL raises many types for bad files
        raise SpecError("image", f"{name!r} is not a readable image ({e})") from e
