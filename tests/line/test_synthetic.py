"""The synthetic line: seeded, labelled frames with AnomalyGPT-style injected defects."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from runtime.errors import AgptError
from runtime.line.synthetic import KINDS, VISIBLE, SyntheticLine, cut_paste, make_source, procedural_textures


def _frames(line: SyntheticLine, n: int):
    line.open()
    out = [line.read() for _ in range(n)]
    line.close()
    return out


def _small(**kw) -> SyntheticLine:
    return SyntheticLine(None, n_textures=4, texture_size=128, **kw)


def test_truth_is_consistent_with_the_frame():
    for ok, frame, truth in _frames(_small(seed=1, defect_rate=0.5), 24):
        assert ok and frame.dtype == np.uint8 and frame.ndim == 3 and frame.shape[2] == 3
        mask = truth["mask"]
        assert mask.dtype == np.uint8 and mask.shape == frame.shape[:2]
        assert set(np.unique(mask)) <= {0, 255}
        assert truth["label"] == bool(mask.any())
        assert (truth["kind"] in KINDS) == truth["label"]


def test_defect_rate_extremes_and_kinds():
    assert not any(t["label"] for _, _, t in _frames(_small(seed=2, defect_rate=0.0), 10))
    truths = [t for _, _, t in _frames(_small(seed=2, defect_rate=1.0, kinds="scratch,spot"), 16)]
    assert all(t["label"] for t in truths) and {t["kind"] for t in truths} <= {"scratch", "spot"}


def test_same_seed_same_stream_other_seed_other_stream():
    a, b = _frames(_small(seed=5, defect_rate=0.5), 8), _frames(_small(seed=5, defect_rate=0.5), 8)
    for (_, fa, ta), (_, fb, tb) in zip(a, b):
        assert np.array_equal(fa, fb) and np.array_equal(ta["mask"], tb["mask"]) and ta["kind"] == tb["kind"]
    c = _frames(_small(seed=6, defect_rate=0.5), 8)
    assert not all(np.array_equal(fa, fc) for (_, fa, _), (_, fc, _) in zip(a, c))
    # re-opening restarts the stream
    line = _small(seed=5, defect_rate=0.5)
    line.open()
    first = line.read()[1]
    line.open()
    assert np.array_equal(first, line.read()[1])


def test_normal_shots_are_clean_and_do_not_disturb_the_stream():
    line = _small(seed=3, defect_rate=0.5)
    line.open()
    shots = line.normal_shots(2)
    assert len(shots) == 2 and all(s.shape == (128, 128, 3) for s in shots)
    after = [line.read()[1] for _ in range(3)]
    plain = _frames(_small(seed=3, defect_rate=0.5), 3)
    assert all(np.array_equal(x, y) for x, (_, y, _) in zip(after, plain))
    with pytest.raises(AgptError):
        line.normal_shots(99)


def test_reserved_shots_stay_out_of_the_stream():
    line = _small(seed=0, defect_rate=0.0, reserve=3)
    bases = {t["base"] for _, _, t in _frames(line, 20)}
    assert bases == {"texture003"}


def test_cut_paste_changes_only_the_masked_patch_area():
    rng = np.random.default_rng(0)
    img, donor = (
        procedural_textures(1, (160, 160), 0)[0],
        procedural_textures(1, (160, 160), 9, pitch=6.0, angle=45.0, weave_amp=0.45)[0],
    )
    made = cut_paste(img, donor, rng)
    assert made is not None
    out, gt = made
    change = np.abs(out.astype(int) - img.astype(int)).sum(axis=2)
    assert change[gt > 0].mean() >= VISIBLE
    # Poisson blending touches the patch's bounding box at most, never the rest of the frame
    x, y, w, h = cv2.boundingRect(gt)
    outside = np.ones_like(gt, bool)
    outside[max(0, y - 2) : y + h + 2, max(0, x - 2) : x + w + 2] = False
    assert change[outside].max() == 0


def test_folder_source_and_mvtec_layout(tmp_path):
    good = tmp_path / "cat" / "train" / "good"
    good.mkdir(parents=True)
    for i, img in enumerate(procedural_textures(3, (96, 120), 4)):
        cv2.imwrite(str(good / f"{i:03d}.png"), img)
    for src in (tmp_path / "cat", good):
        line = SyntheticLine(src, seed=0, defect_rate=1.0)
        frames = _frames(line, 3)
        assert all(f.shape == (96, 120, 3) and t["label"] for _, f, t in frames)
    with pytest.raises(AgptError):
        SyntheticLine(tmp_path / "nothing").open()
    (tmp_path / "empty").mkdir()
    with pytest.raises(AgptError):
        SyntheticLine(tmp_path / "empty").open()


def test_bounded_stream_and_camera_factory():
    from runtime.line.config import CameraConfig
    from runtime.line.sources import make_source as camera_source

    cfg = CameraConfig(
        kind="synthetic", source="procedural", options={"seed": 1, "frames": 2, "n_textures": 3, "texture_size": 96}
    )
    src = camera_source(cfg)
    src.open()
    assert src.read()[0] and src.read()[0]
    ok, frame, truth = src.read()
    assert not ok and frame is None and src.eof


def test_bad_options_are_user_errors():
    with pytest.raises(AgptError):
        make_source("procedural", defect_rate=1.5)
    with pytest.raises(AgptError):
        make_source("procedural", kinds="scratch,dent")
    with pytest.raises(AgptError):
        make_source("procedural", colour="red")
    with pytest.raises(AgptError):
        SyntheticLine(None, n_textures=2, reserve=2).open()


def test_write_shots(tmp_path):
    paths = _small(seed=0).write_shots(tmp_path / "shots", 2)
    assert [p.name for p in paths] == ["shot000.png", "shot001.png"]
    assert cv2.imread(str(paths[0])).shape == (128, 128, 3)
