"""The quality tools: operating points (pick, ROC), `agpt bank tune` / `rollback` / `build --golden`, packs of
schema 1 still read, and `agpt eval` on sets without masks and on plain good/ + bad/ folders."""

from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pytest
from _daemon_fakes import ENCODER_SHA, N_TAPS, TAP_W, TEXT_DIM, FakeInspector

from runtime.errors import AgptError
from runtime.pipeline import packfile
from runtime.pipeline import store as product_store
from runtime.pipeline.operating import pick_threshold, roc_points
from runtime.pipeline.packfile import read_pack
from runtime.pipeline.products import PackSpec, build_pack
from runtime.pipeline.store import ProductStore

SPEC = PackSpec(ENCODER_SHA, (TAP_W,) * N_TAPS, TEXT_DIM)


def _shots(n=3, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 255, (40, 50, 3), dtype=np.uint8) for _ in range(n)]


# ---- operating points ----------------------------------------------------------------------------------


def test_pick_threshold_by_accuracy_and_by_miss_rate():
    values = [0.1, 0.2, 0.3, 0.35, 0.6, 0.7, 0.8]
    labels = [False, False, False, True, False, True, True]
    best = pick_threshold(values, labels)
    assert best["accuracy"] == pytest.approx(6 / 7) and best["chosen_by"] == "highest accuracy"
    assert 0.3 < best["threshold"] < 0.35 or 0.6 < best["threshold"] < 0.7
    strict = pick_threshold(values, labels, max_miss_rate=0.0)  # catch every defect, fewest false rejects
    assert strict["miss_rate"] == 0.0 and 0.3 < strict["threshold"] < 0.35 and strict["false_reject_rate"] == pytest.approx(0.25)
    roc = roc_points(values, labels)
    assert roc[0][:2] == [0.0, 0.0] and roc[-1][:2] == [1.0, 1.0]
    assert all(a[0] <= b[0] and a[1] <= b[1] for a, b in zip(roc, roc[1:]))
    with pytest.raises(ValueError):
        pick_threshold([0.1, 0.2], [False, False])


def test_operating_point_changes_the_bank_id_and_the_verdict_rule():
    pack = build_pack(FakeInspector(), "widget", "w", _shots())
    tuned = pack.with_operating_point({"rule": "score", "threshold": 0.25, "evidence": {"roc": []}})
    assert tuned.bank_id != pack.bank_id and tuned.with_operating_point(None).bank_id == pack.bank_id
    assert tuned.operating_point["judge"] == "operating-point"
    with pytest.raises(AgptError, match="rule"):
        pack.with_operating_point({"rule": "magic", "threshold": 1.0})
    with pytest.raises(AgptError, match="finite"):
        pack.with_operating_point({"rule": "score", "threshold": float("nan")})

    from runtime.pipeline.inspector import Judgement, _operating_point

    m = np.zeros((224, 224), np.float32)
    m[200, 10] = 0.3
    j = _operating_point(Judgement(False, 0.1, 0.3, None, [], m, "calibrated-score"), tuned)
    assert j.verdict is True and j.judge == "operating-point" and j.locations == ["bottom left"]
    j = _operating_point(Judgement(True, 0.9, 0.2, None, ["top left"], m, "calibrated-score"), tuned)
    assert j.verdict is False and j.locations == []
    p_rule = pack.with_operating_point({"rule": "p_anomaly", "threshold": 0.2})
    assert _operating_point(Judgement(False, 0.3, 0.0, None, [], m, "llm-first_token"), p_rule).verdict is True
    with pytest.raises(AgptError, match="p_anomaly"):
        _operating_point(Judgement(None, None, 0.3, None, [], m, "none"), p_rule)
    default = _operating_point(Judgement(False, 0.9, 0.9, None, [], m, "llm-first_token"), pack)
    assert default.verdict is False and default.judge == "llm-first_token"  # no operating point: the model decides


# ---- packs: schema 1, kept shots, history ------------------------------------------------------------------


def test_schema_1_packs_are_still_read(tmp_path):
    new = build_pack(FakeInspector(), "widget", "w", _shots())
    arrays = {k: v for k, v in packfile._pack_arrays(new).items() if not k.startswith(("shot_", "golden_"))}
    meta = json.loads(arrays["meta"].tobytes())
    for k in ("golden", "kept_shot_sha256s"):
        meta.pop(k)
    meta["schema"] = 1
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    path = tmp_path / "products" / "widget" / "pack.npz"
    path.parent.mkdir(parents=True)
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    old = read_pack(path, SPEC, "widget")
    assert old.bank_id == new.bank_id and old.shots == [] and old.golden == [] and old.operating_point is None
    with pytest.raises(AgptError, match="keeps no shot images"):
        old.shot_images()
    assert len(new.shots) == 3 and [s.shape for s in new.shot_images()] == [(40, 50, 3)] * 3  # PNG: lossless
    assert all(np.array_equal(a, b) for a, b in zip(new.shot_images(), _shots()))


def test_corrupt_kept_shots_are_refused(tmp_path):
    pack = build_pack(FakeInspector(), "widget", "w", _shots())
    arrays = packfile._pack_arrays(pack)
    arrays["shot_1"] = arrays["shot_0"]
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    path = tmp_path / "pack.npz"
    path.write_bytes(buf.getvalue())
    with pytest.raises(AgptError, match="kept shot images do not match"):
        read_pack(path)


def test_history_and_rollback(tmp_path):
    store = ProductStore(tmp_path / "products", SPEC)
    v1 = build_pack(FakeInspector(), "widget", "w", _shots())
    v2 = build_pack(FakeInspector(), "widget", "w", _shots(seed=1))
    store.save(v1)
    with pytest.raises(AgptError, match="no previous version"):
        store.rollback("widget")
    store.save(v2, replace=True)
    assert [p.stem.split("-")[1] for p in store.history("widget")] == [v1.bank_id]
    restored, replaced = store.rollback("widget")
    assert (restored.bank_id, replaced.bank_id) == (v1.bank_id, v2.bank_id) and store.load("widget").bank_id == v1.bank_id
    restored, _ = store.rollback("widget")  # a rollback can be undone
    assert restored.bank_id == v2.bank_id and store.names() == ["widget"]
    for i in range(product_store.HISTORY_KEEP + 3):
        store.save(build_pack(FakeInspector(), "widget", "w", _shots(seed=10 + i)), replace=True)
    assert len(store.history("widget")) == product_store.HISTORY_KEEP


def test_paper_descriptions_and_official_shots():
    from runtime.tools.descriptions import official_mvtec_shots, paper_description
    from runtime.tools.eval_data import resolve_description

    text, source = resolve_description("auto", "bottle")
    assert (
        text.startswith("This is a photo of a bottle for anomaly detection, which should be round,") and "test_mvtec.py" in source
    )
    assert "chewinggom" in paper_description("chewinggum")  # letter for letter, the released typo included
    assert resolve_description("auto", "cookie")[1].startswith("generic")
    assert official_mvtec_shots(2) == ["012.png", "013.png"]


# ---- with the lite bundle and the cookie set ---------------------------------------------------------------


@pytest.fixture(scope="module")
def lite_inspector(lite_bundle):
    from runtime.pipeline.engines.config import BackendConfig
    from runtime.pipeline.inspector import Inspector

    return Inspector.from_config(lite_bundle, BackendConfig(intra_op_threads=2))


@pytest.mark.slow
def test_eval_without_ground_truth_and_plain_folders_match_the_full_set(tmp_path, cookie, lite_inspector, lite_bundle):
    from runtime.tools.eval_report import sheet_png, write_reports
    from runtime.tools.evaluate import evaluate

    no_gt = tmp_path / "no_gt" / "cookie"
    for part in ("train", "test"):
        shutil.copytree(cookie / part, no_gt / part)
    plain = tmp_path / "plain"
    shutil.copytree(cookie / "test" / "good", plain / "good")
    shutil.copytree(cookie / "test" / "cracked", plain / "bad")
    quiet = lambda *_: None
    kw = dict(shots=1, draws=1, seed=3, inspector=lite_inspector, progress=quiet)
    full = evaluate(lite_bundle, cookie.parent, "cookie", **kw)
    bare = evaluate(lite_bundle, no_gt.parent, "cookie", **kw)
    flat = evaluate(lite_bundle, plain, None, shots_dir=cookie / "train" / "good", **kw)
    assert full["pixel_metrics"] == "computed" and isinstance(full["pixel_auroc"]["mean"], float)
    assert bare["pixel_auroc"]["mean"] is None and "left out" in bare["pixel_metrics"]
    for r in (bare, flat):
        assert r["image_auroc"] == full["image_auroc"] and r["accuracy"] == full["accuracy"]
        assert r["best_accuracy"] == full["best_accuracy"] and r["n_test"] == full["n_test"] == 46
    assert flat["layout"] == "plain" and set(flat["per_type"]) == {"bad", "good"}
    assert full["best_accuracy"]["mean"] >= full["accuracy"]["mean"]
    paths = write_reports(bare, tmp_path / "out")
    import cv2

    sheet = cv2.imread(str(paths["png"]))
    assert sheet is not None and sheet.shape[0] > 6 * 232 + 300  # frames + the ROC panel
    assert "best operating point" in paths["md"].read_text() and "pixel metrics left out" in paths["md"].read_text()
    assert sheet_png([], tmp_path / "empty.png").is_file()


@pytest.mark.slow
def test_bank_cli_golden_tune_and_rollback(tmp_path, cookie, lite_bundle, capsys):
    from runtime.cli import main

    bundle = tmp_path / "lite"
    shutil.copytree(lite_bundle, bundle, ignore=shutil.ignore_patterns("products"))
    golden = tmp_path / "golden"
    (golden / "good").mkdir(parents=True)
    (golden / "bad").mkdir()
    shutil.copy(cookie / "test" / "good" / "010.png", golden / "good")
    shutil.copy(cookie / "test" / "cracked" / "020.png", golden / "bad")
    data = tmp_path / "labelled"
    (data / "good").mkdir(parents=True)
    (data / "bad").mkdir()
    for i in range(4):
        shutil.copy(cookie / "test" / "good" / f"{i:03d}.png", data / "good")
        shutil.copy(cookie / "test" / "cracked" / f"{i:03d}.png", data / "bad")
    shots = [str(cookie / "train" / "good" / f"{i:03d}.png") for i in range(3)]
    assert main(["bank", "build", "--bundle", str(bundle), "--product", "cookie", *shots, "--golden", str(golden)]) == 0
    store_path = bundle / "products" / "cookie" / "pack.npz"
    built = read_pack(store_path)
    assert [g.label for g in built.golden] == ["good", "bad"] and len(built.shots) == 3
    assert (
        main(["bank", "tune", "--bundle", str(bundle), "--product", "cookie", "--data", str(data), "--max-miss-rate", "0"]) == 0
    )
    tuned = read_pack(store_path)
    op = tuned.operating_point
    assert op["rule"] == "score" and op["judge"] == "operating-point" and tuned.bank_id != built.bank_id
    ev = op["evidence"]
    assert ev["chosen"]["miss_rate"] == 0.0 and ev["data"]["n_good"] == ev["data"]["n_bad"] == 4
    assert len(ev["data"]["files"]) == 8 and all(len(f[2]) == 64 for f in ev["data"]["files"]) and ev["roc"]
    assert ev["tuned_on_bank_id"] == built.bank_id and tuned.golden == built.golden and tuned.shots == built.shots
    out = capsys.readouterr().out
    assert "model's own decision: accuracy" in out and "operating point score >" in out
    assert main(["bank", "rollback", "--bundle", str(bundle), "--product", "cookie"]) == 0
    assert read_pack(store_path).bank_id == built.bank_id
