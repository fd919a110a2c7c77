"""agpt eval: rank AUROC, the shots-only calibration, and a small run on real cookie images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from runtime.pipeline.calibrate import (
    AUG_MARGIN,
    LOO_MARGIN,
    augmented_views,
    calibrate,
    calibrate_images,
    distinct_shots,
    loo_scores,
)
from runtime.pipeline.maps import bank_map
from runtime.tools.eval_data import list_samples, pixel_note
from runtime.tools.eval_metrics import auroc
from runtime.tools.eval_report import markdown

REPO = Path(__file__).resolve().parents[2]
DATA = REPO.parent / "shared" / "datasets"
GRIDS = [(4, 4), (2, 2)]


# ---- AUROC -----------------------------------------------------------------------------------------


def _pairwise(s, y):
    s, y = np.asarray(s, float), np.asarray(y, bool)
    pos, neg = s[y], s[~y]
    return float(((pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])).mean())


def test_auroc_hand_checked():
    assert auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == 0.75  # the textbook example
    assert auroc([1, 2, 3, 4], [0, 0, 1, 1]) == 1.0
    assert auroc([4, 3, 2, 1], [0, 0, 1, 1]) == 0.0
    assert auroc([1, 1, 1, 1], [0, 1, 0, 1]) == 0.5  # all tied
    assert auroc([0.2, 0.5, 0.5, 0.9], [0, 0, 1, 1]) == 0.875  # one tie across classes counts half
    assert np.isnan(auroc([1, 2], [1, 1]))
    with pytest.raises(ValueError):
        auroc([1, 2, 3], [0, 1])


def test_auroc_equals_pair_counting_with_ties():
    rng = np.random.default_rng(0)
    for _ in range(20):
        s = rng.integers(0, 6, 40)  # many ties
        y = rng.random(40) < 0.4
        if 0 < y.sum() < 40:
            assert auroc(s, y) == pytest.approx(_pairwise(s, y), abs=1e-12)
    m = rng.random((3, 8, 8))
    g = rng.random((3, 8, 8)) < 0.2
    assert auroc(m, g) == pytest.approx(_pairwise(m.ravel(), g.ravel()))


# ---- calibration -----------------------------------------------------------------------------------


def _taps(seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    base = np.random.default_rng(100).standard_normal  # a shared 'product' direction plus per-shot variation
    return [(base((h * w, 8)) + 0.6 * rng.standard_normal((h * w, 8))).astype(np.float32) for h, w in GRIDS]


def _score(q, shots):
    bank = [np.concatenate([s[k] for s in shots]) for k in range(len(GRIDS))]
    return float(bank_map(q, bank, GRIDS).max())


def test_loo_threshold_is_margin_times_median_and_depends_only_on_the_shots():
    shots = [_taps(i) for i in range(5)]
    c = calibrate(shots, GRIDS)
    want = [_score(shots[i], [s for j, s in enumerate(shots) if j != i]) for i in range(5)]
    assert c["method"] == "loo-median" and c["judge"] == "calibrated-score"
    assert c["loo_scores"] == pytest.approx(want, abs=1e-6) and loo_scores(shots, GRIDS) == pytest.approx(want, abs=1e-6)
    assert c["threshold"] == pytest.approx(LOO_MARGIN * np.median(want))
    # the same shots in another order: the same threshold; nothing else enters the rule
    assert calibrate(shots[::-1], GRIDS)["threshold"] == pytest.approx(c["threshold"])
    assert calibrate(shots, GRIDS) == c


def test_near_duplicate_shots_count_once():
    shots = [_taps(i) for i in range(4)]
    dup = [t + 1e-3 for t in shots[1]]
    assert distinct_shots(shots, GRIDS) == [0, 1, 2, 3]
    assert distinct_shots([*shots, dup], GRIDS) == [0, 1, 2, 3]
    assert calibrate([*shots, dup], GRIDS)["threshold"] == pytest.approx(calibrate(shots, GRIDS)["threshold"])


def test_one_shot_uses_augmented_views():
    img = (np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)

    def taps_fn(image):  # a stand-in encoder: mean colours of 4x4 and 2x2 cells
        f = image.astype(np.float32) / 255
        return [f.reshape(h, 64 // h, w, 64 // w, 3).mean(axis=(1, 3)).reshape(h * w, 3) + 0.1 for h, w in GRIDS]

    assert calibrate([taps_fn(img)], GRIDS)["threshold"] is None  # one shot, no views: no threshold
    c = calibrate_images([img], taps_fn, GRIDS)
    assert c["method"] == "augmented-median" and len(c["aug_scores"]) == 8
    assert c["threshold"] == pytest.approx(AUG_MARGIN * np.median(c["aug_scores"]))
    assert calibrate_images([img], taps_fn, GRIDS) == c  # fixed seed: reproducible
    views = augmented_views(img)
    assert all(v.shape == img.shape and v.dtype == np.uint8 for v in views) and not np.array_equal(views[0], img)
    assert calibrate([], GRIDS) == {}


# ---- dataset and a small real run ------------------------------------------------------------------


def _fake_category(root: Path, with_mask: bool = True) -> Path:
    import cv2

    for d in ("train/good", "test/good", "test/crack", "ground_truth/crack"):
        (root / "cat" / d).mkdir(parents=True, exist_ok=True)
    img = np.full((16, 16, 3), 128, np.uint8)
    for i in range(3):
        for d in ("train/good", "test/good", "test/crack"):
            cv2.imwrite(str(root / "cat" / d / f"{i:03d}.png"), img)
        if with_mask:
            cv2.imwrite(str(root / "cat" / "ground_truth" / "crack" / f"{i:03d}_mask.png"), img[:, :, 0])
    return root / "cat"


def test_sample_subset_keeps_every_type(tmp_path):
    cat = _fake_category(tmp_path)
    s = list_samples(cat, max_images=2)
    assert sorted(x.defect for x in s) == ["crack", "good"]
    assert len(list_samples(cat)) == 6
    cat2 = _fake_category(tmp_path / "b", with_mask=False)  # image labels only: accepted, pixel metrics left out
    s2 = list_samples(cat2)
    assert len(s2) == 6 and all(x.mask_path is None for x in s2)
    assert "pixel metrics left out" in pixel_note(cat2, s2) and pixel_note(cat, list_samples(cat)) is None


@pytest.fixture(scope="module")
def cookie_eval(tmp_path_factory, lite_bundle):
    if not (DATA / "cookie").is_dir():
        pytest.skip(f"dataset folder {DATA / 'cookie'} is absent (it sits beside the repo as ../shared/datasets)")
    pytest.importorskip("torch")
    from runtime.cli import main

    out = tmp_path_factory.mktemp("eval")
    bundle = lite_bundle
    return bundle, out, main


def test_small_cookie_eval_runs_and_writes_reports(cookie_eval, capsys):
    bundle, out, main = cookie_eval
    rc = main(
        [
            "eval",
            "--bundle",
            str(bundle),
            "--data",
            str(DATA),
            "--category",
            "cookie",
            "--shots",
            "4",
            "--draws",
            "2",
            "--max-images",
            "6",
            "--threads",
            "2",
            "--json",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    r = json.loads(capsys.readouterr().out)
    assert r["n_test"] == 6 and r["n_good"] == 3 and r["judge"] == ["calibrated-score"]
    # every per-draw figure follows from that draw's own per-frame rows, and the summary from the draws
    for d in r["draw_results"]:
        fr = d["frames"]
        truth = [f["defect"] != "good" for f in fr]
        assert d["image_auroc"] == pytest.approx(_pairwise(np.array([f["score"] for f in fr]), np.array(truth)))
        assert all(f["verdict"] == (f["score"] > d["calibration"]["threshold"]) for f in fr)
        assert d["accuracy"] == pytest.approx(np.mean([f["verdict"] == t for f, t in zip(fr, truth)]))
    for key in ("image_auroc", "pixel_auroc", "accuracy"):
        per_draw = [d[key] for d in r["draw_results"]]
        assert r[key]["mean"] == pytest.approx(np.mean(per_draw)) and r[key]["std"] == pytest.approx(np.std(per_draw))
    # measured (lite bundle, 4 shots, 2 draws, these 6 frames): image AUROC 1.0 in both draws, pixel AUROC
    # 0.967 +- 0.005, accuracy 0.833 (one good frame over the threshold)
    assert r["image_auroc"]["mean"] == 1.0 and r["pixel_auroc"]["mean"] == pytest.approx(0.967, abs=0.01)
    assert r["accuracy"]["mean"] == pytest.approx(5 / 6)
    assert set(r["per_type"]) == {"cracked", "good"}
    assert len(r["draw_results"]) == 2 and all(len(d["shots"]) == 4 for d in r["draw_results"])
    assert all(isinstance(d["calibration"]["threshold"], float) for d in r["draw_results"])
    assert (out / "eval.json").is_file() and (out / "eval.md").read_text().startswith("### cookie")
    import cv2

    sheet = cv2.imread(str(out / "eval.png"))
    assert sheet is not None and sheet.shape[1] == 4 * 232
    assert "| all | 6 |" in markdown(r)


def test_thresholds_come_from_the_shots_not_the_test_set(cookie_eval):
    from runtime.line.config import BackendConfig
    from runtime.pipeline.inspector import Inspector
    from runtime.tools.evaluate import evaluate

    bundle, _, _ = cookie_eval
    insp = Inspector.from_config(bundle, BackendConfig(intra_op_threads=2))
    quiet = lambda *_: None
    a = evaluate(bundle, DATA, "cookie", shots=3, draws=1, seed=4, max_images=2, inspector=insp, progress=quiet)
    b = evaluate(bundle, DATA, "cookie", shots=3, draws=1, seed=4, max_images=4, inspector=insp, progress=quiet)
    ta, tb = a["draw_results"][0], b["draw_results"][0]
    assert ta["shots"] == tb["shots"] and ta["calibration"]["threshold"] == tb["calibration"]["threshold"]


def test_inspector_calibrates_a_single_shot(cookie_eval):
    from runtime.line.config import BackendConfig
    from runtime.pipeline.inspector import Inspector
    from runtime.pipeline.products import build_pack

    bundle, _, _ = cookie_eval
    insp = Inspector.from_config(bundle, BackendConfig(intra_op_threads=2))
    pack = build_pack(insp, "cookie", "", [DATA / "cookie" / "train" / "good" / "005.png"])
    assert pack.calibration["method"] == "augmented-median" and isinstance(pack.calibration["threshold"], float)
