"""Session fixtures: tiny official-format checkpoints (made once per run) and the shared dataset."""

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the shared fakes and frames (_daemon_fakes, _frames), from every subfolder
DATASETS = REPO.parent / "shared" / "datasets"


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory) -> Path:
    from export.tiny import make_tiny

    return make_tiny(tmp_path_factory.mktemp("tiny_ckpt"), seed=0, progress=lambda *_: None)


@pytest.fixture(scope="session")
def cookie() -> Path:
    root = DATASETS / "cookie"
    if not root.is_dir():
        pytest.skip(f"dataset folder {root} is absent (it sits beside the repo as ../shared/datasets)")
    return root


@pytest.fixture(scope="session")
def tiny_bundle(tiny_ckpt, tmp_path_factory) -> Path:
    """The tiny checkpoints exported as a full AnomalyGPT bundle (F32 GGUF, for exact parity)."""
    from export.bundle_writer import export_bundle

    out = tmp_path_factory.mktemp("bundles") / "tiny"
    return export_bundle(tiny_ckpt, out, products={"cookie": COOKIE_DESCRIPTION}, quant="F32", progress=lambda *_: None)


@pytest.fixture(scope="session")
def lite_bundle(tmp_path_factory) -> Path:
    """The EfficientNet-Lite0 bundle behind the demo, exported once per run."""
    import torch

    from export.lite import export_lite

    torch.set_num_threads(2)
    return export_lite(tmp_path_factory.mktemp("lite") / "lite", progress=lambda *_: None)


COOKIE_DESCRIPTION = "This is a photo of a cookie for anomaly detection, which should be round, without any crack or damage."
