"""Camera-like frames and questions shared by the batch, bench and torch-backend tests."""

import numpy as np
from conftest import COOKIE_DESCRIPTION

QUESTIONS = [
    "Is there any anomaly in the image?",
    "This is a photo of a bottle for anomaly detection, which should be round. Is there any anomaly in the image?",
    "Anything?",
    COOKIE_DESCRIPTION + " Is there any anomaly in the image?",
    "Is there a crack?",
]


def _images(seed: int, n: int, shape=(240, 320)) -> list[np.ndarray]:
    """Camera-like BGR frames: smooth gradients plus noise, a different one per seed."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    out = []
    for _ in range(n):
        base = (np.sin(xx / rng.uniform(5, 40)) + np.cos(yy / rng.uniform(5, 40))) * 60 + 128
        img = base[..., None] + rng.normal(0, 20, (*shape, 3))
        out.append(np.clip(img, 0, 255).astype(np.uint8))
    return out
