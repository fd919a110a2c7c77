import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from runtime.errors import AgptError
from runtime.pipeline.maps import bank_map, peak_location, upsample
from runtime.pipeline.preprocess import map_to_frame, mask_to_model, normalise, plan, preprocess


def test_upsample_is_torch_bilinear_align_corners():
    g = np.random.default_rng(0).normal(size=(2, 16, 16)).astype(np.float32)
    ref = F.interpolate(torch.from_numpy(g)[None], size=224, mode="bilinear", align_corners=True)[0].numpy()
    assert np.abs(upsample(g) - ref).max() < 1e-5
    g2 = np.random.default_rng(1).normal(size=(28, 28)).astype(np.float32)
    ref2 = F.interpolate(torch.from_numpy(g2)[None, None], size=224, mode="bilinear", align_corners=True)[0, 0].numpy()
    assert np.abs(upsample(g2) - ref2).max() < 1e-5


def test_bank_map_by_hand():
    rng = np.random.default_rng(0)
    q = [rng.normal(size=(256, 8)).astype(np.float32) for _ in range(2)]
    # the query itself in the bank: every patch finds itself, cos = 1, map = 0
    assert np.abs(bank_map(q, q, [(16, 16)] * 2)).max() < 1e-5
    # a bank orthogonal to every query patch: cos = 0, map = 1
    q1 = [np.eye(8, dtype=np.float32)[np.arange(256) % 4] for _ in range(2)]
    b1 = [np.eye(8, dtype=np.float32)[4:] for _ in range(2)]
    assert np.allclose(bank_map(q1, b1, [(16, 16)] * 2), 1.0, atol=1e-6)


def test_bank_map_equals_reference_order():
    """Reference: mean over layers at 16x16, then upsample; ours: upsample then mean. Same map."""
    rng = np.random.default_rng(1)
    q = [rng.normal(size=(256, 8)).astype(np.float32) for _ in range(4)]
    b = [rng.normal(size=(512, 8)).astype(np.float32) for _ in range(4)]
    sims = []
    for qi, bi in zip(q, b):
        cos = F.cosine_similarity(torch.from_numpy(qi)[:, None], torch.from_numpy(bi)[None], dim=2)
        sims.append(cos.max(dim=1).values)
    sim = torch.stack(sims).mean(0).reshape(1, 1, 16, 16)
    ref = 1 - F.interpolate(sim, size=224, mode="bilinear", align_corners=True)[0, 0].numpy()
    assert np.abs(bank_map(q, b, [(16, 16)] * 4) - ref).max() < 1e-5


def test_peak_location():
    m = np.zeros((224, 224), np.float32)
    m[200, 20] = 1
    assert peak_location(m) == "bottom left"


def test_plan_matches_torchvision_rules():
    t = plan(576, 768)  # cookie photos: short side 576 -> 224, long int(298.67) = 298, crop left round(37.0)
    assert (t.resized_h, t.resized_w, t.top, t.left) == (224, 298, 0, 37)
    t = plan(800, 600)
    assert (t.resized_h, t.resized_w, t.top, t.left) == (298, 224, 37, 0)


def test_preprocess_is_pil_bicubic_crop_and_clip_norm():
    rgb = np.random.default_rng(0).integers(0, 255, size=(300, 400, 3), dtype=np.uint8)
    x, t = preprocess(rgb[:, :, ::-1].copy())  # BGR in, as from a camera
    img = Image.fromarray(rgb).resize((t.resized_w, t.resized_h), Image.BICUBIC)
    crop = np.asarray(img)[t.top : t.top + 224, t.left : t.left + 224].astype(np.float32) / 255
    mean = np.array([0.48145466, 0.4578275, 0.40821073], np.float32)
    std = np.array([0.26862954, 0.26130258, 0.27577711], np.float32)
    assert x.shape == (3, 224, 224) and x.dtype == np.float32
    assert np.abs(x - ((crop - mean) / std).transpose(2, 0, 1)).max() < 1e-6


@pytest.mark.parametrize(
    "mean,std", [((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)), ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))]
)
def test_normalise_table_is_bit_exact(mean, std):
    """The lookup table must give the very bits of ToTensor + Normalize in float32, for either channel order."""
    img = np.random.default_rng(1).integers(0, 256, size=(224, 224, 3), dtype=np.uint8)
    img.reshape(-1)[:768] = np.repeat(np.arange(256, dtype=np.uint8), 3)  # every value in every channel
    for bgr in (False, True):
        rgb = img[:, :, ::-1] if bgr else img
        want = (
            (rgb.astype(np.float32) / np.float32(255) - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
        ).transpose(2, 0, 1)
        got = normalise(img, mean, std, bgr)
        assert got.dtype == np.float32 and got.flags.c_contiguous and np.array_equal(got, want)


def test_bad_frames_are_clear_errors():
    for bad in (np.zeros((0, 0, 3), np.uint8), np.zeros((10, 10, 5), np.uint8), np.zeros((10, 10, 3), np.float32)):
        with pytest.raises(AgptError):
            preprocess(bad)
    x, _ = preprocess(np.zeros((50, 60), np.uint8))  # gray is accepted as 3 equal channels
    assert x.shape == (3, 224, 224)


def test_mask_round_trip():
    t = plan(576, 768)
    mask = np.zeros((576, 768), np.uint8)
    mask[300:400, 300:400] = 255
    m224 = mask_to_model(mask, t)
    back = map_to_frame(m224.astype(np.float32), t) > 0.5
    assert abs(int(back.sum()) - int((mask > 0).sum())) / (mask > 0).sum() < 0.05
