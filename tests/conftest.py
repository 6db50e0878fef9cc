import os
import tempfile

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a hub
# Prefect: a throwaway home, no telemetry, quiet; set before anything imports prefect.
os.environ.update(PREFECT_HOME=tempfile.mkdtemp(prefix="prefect-test-home-"), DO_NOT_TRACK="1",
                  PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_LOGGING_LEVEL="WARNING",
                  PREFECT_UI_ENABLED="false")
os.environ.pop("PREFECT_API_URL", None)
os.environ["SUPERGEN_FORCE_CPU"] = "1"  # tests build CPU clusters even where GPUs exist


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """Factory: the folder of a saved tiny pipeline of `kind` (built and saved once per session)."""
    from supergen.backends import tiny

    root = tmp_path_factory.mktemp("tiny-models")
    made = {}

    def get(kind: str) -> str:
        if kind not in made:
            made[kind] = tiny.save(kind, str(root / kind))
        return made[kind]

    return get


@pytest.fixture(scope="session")
def image_path(tmp_path_factory):
    """A small structured RGB image (gradient with a disc) for image-to-video tests."""
    import numpy as np
    from PIL import Image

    y, x = np.mgrid[0:96, 0:96]
    img = np.stack([x * 2.5, y * 2.5, ((x - 48) ** 2 + (y - 48) ** 2 < 400) * 255], -1).astype("uint8")
    p = tmp_path_factory.mktemp("img") / "cond.png"
    Image.fromarray(img).save(p)
    return str(p)
