import os

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture(scope="session")
def astronaut() -> np.ndarray:
    from skimage import data

    return data.astronaut()


# The astronaut's face, measured once by hand on the 512x512 photo (x1, y1, x2, y2).
ASTRONAUT_FACE = (175, 50, 275, 180)


@pytest.fixture(scope="session")
def anonymizer():
    from anon_core.config import AnonConfig
    from anon_core.pipeline import Anonymizer

    return Anonymizer(AnonConfig(policy="faces"))
