"""`agpt eval`: image AUROC, pixel AUROC and verdict accuracy of a bundle on a folder of labelled images.

    agpt eval --bundle models/lite --data ../shared/datasets --category cookie --shots 4 --draws 5
    agpt eval --bundle models/lite --data plant/images --shots-dir plant/normal        (good/ + bad/ folders)

Layouts (DIR = --data/--category, or --data itself):
- MVTec: DIR/train/good (shots), DIR/test/good, DIR/test/<defect>, and optionally DIR/ground_truth/<defect>/
  <stem>_mask.png. Without masks (most plants' folders) the image metrics are reported and the pixel metrics
  are left out with a note;
- plain: DIR/good and DIR/bad (or any other folder names for defect types); the normal shots come from
  DIR/train/good or --shots-dir.

Every frame goes through runtime.pipeline.inspector.Inspector.judge and every product through runtime.pipeline.products.build_pack,
the code the daemon runs, so the figures are the line's. For each draw, k shots are drawn at random from
<category>/train/good (seeded), a pack is built from them (its calibration, for bundles without an LLM,
comes from those shots alone) and every test image is judged:

- image AUROC: score = map maximum (the reference's), over test/good vs all defect folders;
- pixel AUROC: the 224x224 maps vs the ground-truth masks carried into the same 224 frame by the
  bundle's own transform (runtime.pipeline.preprocess.mask_to_model), over all test images;
- accuracy: the verdict (LLM answer / first token, or the calibrated judge) vs the label; a frame
  without a verdict counts as wrong; which judge decided is reported.
Per defect type: the same, each defect folder against test/good. Mean and std over the draws.
- best operating point: the threshold on P(anomaly) (LLM bundles) or the score (lite) with the highest
  accuracy on these same images (runtime.pipeline.operating.pick_threshold): where the model's own decision
  could sit. Chosen on the test images themselves, so it is an upper bound; `agpt bank tune` picks one
  from other labelled images and stores it in the pack.
--description auto: the paper's class description (runtime/tools/descriptions.py, from the released
test_mvtec.py / test_visa.py); --official-shots: test_mvtec.py's shots (train/good/012.png ... for round 3).

Outputs: JSON (stdout with --json; always eval.json under --out), eval.md (a markdown table) and
eval.png (image | ground truth | map overlay | verdict for a few frames of the first draw, and the first
draw's ROC curve with the model's own decision and the best operating point marked) under --out.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import numpy as np

from runtime.errors import AgptError
from runtime.names import PRODUCT_RE
from runtime.tools.engine_args import add_engine_arguments, backend_from_args
from runtime.tools.eval_data import (
    GOOD,
    Sample,
    category_root,
    dataset_credit,
    list_samples,
    pixel_note,
    resolve_description,
    test_folder,
    train_shots,
)
from runtime.tools.eval_metrics import auroc, own_decision_point, summary
from runtime.tools.eval_report import json_default, markdown, pick_sheet, write_reports


def evaluate(
    bundle: str | Path,
    data: str | Path,
    category: str | None,
    shots: int = 1,
    draws: int = 5,
    seed: int = 0,
    max_images: int | None = None,
    verdict_mode: str = "first_token",
    description: str | None = None,
    backend=None,
    inspector=None,
    sheet_frames: int = 6,
    progress=print,
    shots_dir: str | Path | None = None,
    official_shots: bool = False,
) -> dict:
    """Run the evaluation; returns the result dict (JSON-able) and keeps the first draw's frames for the sheet."""
    from runtime.pipeline.operating import pick_threshold, roc_points
    from runtime.pipeline.preprocess import load_image, mask_to_model
    from runtime.pipeline.products import build_pack

    root = category_root(Path(data), category)
    category = category or root.name
    pool = train_shots(root, None if shots_dir is None else Path(shots_dir))
    if shots < 1 or shots > len(pool):
        raise AgptError(f"--shots {shots}: between 1 and the {len(pool)} images of {pool[0].parent}")
    if draws < 1:
        raise AgptError("--draws must be at least 1")
    fixed = None
    if official_shots:
        from runtime.tools.descriptions import official_mvtec_shots

        names = official_mvtec_shots(shots)
        by_name = {p.name: i for i, p in enumerate(pool)}
        absent = [n for n in names if n not in by_name]
        if absent:
            raise AgptError(f"--official-shots: {', '.join(absent)} not in {pool[0].parent}")
        fixed, draws = sorted(by_name[n] for n in names), 1
    samples = list_samples(root, max_images)
    no_pixels = pixel_note(root, samples)
    if no_pixels is not None:
        progress(no_pixels)
        samples = [Sample(smp.path, smp.defect, None) for smp in samples]
    if inspector is None:
        from runtime.pipeline.engines.config import BackendConfig
        from runtime.pipeline.inspector import Inspector

        inspector = Inspector.from_config(bundle, backend or BackendConfig(), verdict_mode)
    product = category if re.match(PRODUCT_RE, category) else "product"
    description, description_source = resolve_description(description, category)

    # the test frames and masks are read once; every draw judges the same frames
    frames = [load_image(s.path) for s in samples]
    masks = [None if s.mask_path is None else np.asarray(load_image(s.mask_path)[:, :, 0]) for s in samples]
    labels = np.array([s.label for s in samples])
    types = sorted({s.defect for s in samples} - {GOOD})

    rng = np.random.default_rng(seed)
    per_draw, sheet, roc_panel = [], None, None
    t_start = time.perf_counter()
    for d in range(draws):
        picked = fixed if fixed is not None else sorted(rng.choice(len(pool), size=shots, replace=False).tolist())
        shot_paths = [pool[i] for i in picked]
        pack = build_pack(inspector, product, description, shot_paths)
        calib = pack.calibration
        scores, verdicts, judges, maps_, gts, transforms, lat = [], [], [], [], [], [], {}
        frames_out = []
        for s, frame, mask in zip(samples, frames, masks):
            j = inspector.judge(frame, pack)
            scores.append(j.score)
            verdicts.append(j.verdict)
            judges.append(j.judge)
            maps_.append(j.map.astype(np.float32))
            transforms.append(j.transform)
            if mask is None:
                gts.append(np.zeros(j.map.shape, bool))
            else:
                gts.append(mask_to_model(mask, j.transform))
            for k, v in j.latency_ms.items():
                lat.setdefault(k, []).append(v)
            frames_out.append(
                {
                    "file": str(s.path.relative_to(root)),
                    "defect": s.defect,
                    "score": round(float(j.score), 6),
                    "verdict": j.verdict,
                    "p_anomaly": j.p_anomaly,
                    "answer": j.answer,
                    "locations": j.locations,
                }
            )
        scores_a = np.asarray(scores)
        maps_a, gts_a = np.stack(maps_), np.stack(gts)
        correct = np.array([v is not None and bool(v) == bool(y) for v, y in zip(verdicts, labels)])
        ps = [f["p_anomaly"] for f in frames_out]
        rule = "p_anomaly" if all(p is not None for p in ps) else "score"
        values = np.asarray(ps if rule == "p_anomaly" else scores, np.float64)
        best = pick_threshold(values, labels)
        roc = roc_points(values, labels)
        row = {
            "shots": [str(p.relative_to(root)) if p.is_relative_to(root) else str(p) for p in shot_paths],
            "calibration": {k: v for k, v in calib.items() if k in ("threshold", "method", "margin", "judge")},
            "judge": sorted(set(judges)),
            "image_auroc": auroc(scores_a, labels),
            "pixel_auroc": auroc(maps_a, gts_a) if no_pixels is None else None,
            "accuracy": float(correct.mean()),
            "best_operating_point": {"rule": rule, **best},
            "best_accuracy": best["accuracy"],
            "roc": roc,
            "no_verdict": int(sum(v is None for v in verdicts)),
            "per_type": {},
            "latency_ms": {k: float(np.mean(v)) for k, v in lat.items()},
            "frames": frames_out,
        }
        good = labels == False  # noqa: E712
        for t in types:
            is_t = np.array([s.defect == t for s in samples])
            sel = good | is_t
            row["per_type"][t] = {
                "n": int(is_t.sum()),
                "image_auroc": auroc(scores_a[sel], labels[sel]),
                "pixel_auroc": auroc(maps_a[sel], gts_a[sel]) if no_pixels is None else None,
                "accuracy": float(correct[is_t].mean()),
            }
        row["per_type"][GOOD] = {"n": int(good.sum()), "accuracy": float(correct[good].mean())}
        per_draw.append(row)
        thr = calib.get("threshold")
        progress(
            f"draw {d + 1}/{draws}: image AUROC {row['image_auroc']:.3f}  pixel AUROC "
            + ("n/a" if row["pixel_auroc"] is None else f"{row['pixel_auroc']:.3f}")
            + f"  "
            f"accuracy {row['accuracy']:.3f} (best operating point {best['accuracy']:.3f} at {rule} > "
            f"{best['threshold']:.4g})  judge {','.join(row['judge'])}"
            + (f"  threshold {thr:.4f}" if isinstance(thr, (int, float)) else "")
        )
        if d == 0:
            sheet = pick_sheet(samples, frames, transforms, maps_a, gts_a, scores_a, verdicts, judges, calib, sheet_frames)
            own = own_decision_point(values, labels, verdicts)
            roc_panel = {"roc": roc, "best": best, "own": own, "rule": rule, "auroc": row["image_auroc"]}

    result = {
        "bundle": str(bundle),
        "bundle_kind": inspector.bundle.manifest.kind if hasattr(inspector, "bundle") else None,
        "data": str(Path(data)),
        "category": category,
        "shots": shots,
        "draws": draws,
        "seed": seed,
        "n_test": len(samples),
        "n_good": int((~labels).sum()),
        "n_defect": int(labels.sum()),
        "judge": sorted({j for r in per_draw for j in r["judge"]}),
        "verdict_mode": verdict_mode,
        "image_auroc": summary([r["image_auroc"] for r in per_draw]),
        "pixel_auroc": summary([r["pixel_auroc"] for r in per_draw]),
        "accuracy": summary([r["accuracy"] for r in per_draw]),
        "best_accuracy": summary([r["best_accuracy"] for r in per_draw]),
        "pixel_metrics": no_pixels or "computed",
        "layout": "mvtec" if test_folder(root) != root else "plain",
        "description": description,
        "description_source": description_source,
        "per_type": {
            t: {
                m: summary([r["per_type"][t][m] for r in per_draw])
                for m in ("image_auroc", "pixel_auroc", "accuracy")
                if m in per_draw[0]["per_type"][t]
            }
            | {"n": per_draw[0]["per_type"][t]["n"]}
            for t in [*types, GOOD]
        },
        "latency_ms": {k: float(np.mean([r["latency_ms"].get(k, np.nan) for r in per_draw])) for k in per_draw[0]["latency_ms"]},
        "seconds": round(time.perf_counter() - t_start, 2),
        "credit": dataset_credit(Path(data), category),
        "draw_results": per_draw,
    }
    result["_sheet"] = sheet
    result["_roc"] = roc_panel
    return result


# ---- CLI -------------------------------------------------------------------------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bundle", required=True, type=Path, help="bundle folder (lite or AnomalyGPT)")
    p.add_argument("--data", required=True, type=Path, help="folder holding MVTec-layout categories, or one set's folder")
    p.add_argument("--category", default=None, help="category folder under --data, e.g. cookie (default: --data is the set)")
    p.add_argument("--shots", type=int, default=1, help="normal shots per draw, from <category>/train/good (default 1)")
    p.add_argument("--shots-dir", type=Path, default=None, help="folder of normal shot images (instead of train/good)")
    p.add_argument(
        "--official-shots", action="store_true", help="the shots of the released test_mvtec.py (train/good/012.png ...; one draw)"
    )
    p.add_argument("--draws", type=int, default=5, help="random draws of the shots (default 5)")
    p.add_argument("--seed", type=int, default=0, help="seed of the shot draws (default 0)")
    p.add_argument("--max-images", type=int, default=None, help="judge at most this many test images (all types kept)")
    p.add_argument(
        "--verdict",
        choices=("first_token", "answer"),
        default="first_token",
        help="LLM bundles: verdict from the first token's P(Yes) or from the full answer (the reference's)",
    )
    p.add_argument(
        "--description",
        default=None,
        help="product description put before the question (LLM bundles); 'auto': the paper's MVTec-AD / VisA class description",
    )
    p.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads")
    add_engine_arguments(p)
    p.add_argument("--out", type=Path, default=None, help="folder for eval.json, eval.md and eval.png (default: no files)")
    p.add_argument("--json", action="store_true", help="print the JSON result on stdout (progress goes to stderr)")


def run(args: argparse.Namespace) -> int:
    if args.max_images is not None and args.max_images < 2:
        raise AgptError("--max-images must be at least 2 (a good and a defective image)")
    backend = backend_from_args(args, intra_op_threads=args.threads)
    say = (lambda *a: print(*a, file=sys.stderr, flush=True)) if args.json else (lambda *a: print(*a, flush=True))
    r = evaluate(
        args.bundle,
        args.data,
        args.category,
        args.shots,
        args.draws,
        args.seed,
        args.max_images,
        args.verdict,
        args.description,
        backend,
        progress=say,
        shots_dir=args.shots_dir,
        official_shots=args.official_shots,
    )
    if args.out is not None:
        paths = write_reports(r, args.out)
        say("wrote " + ", ".join(str(p) for p in paths.values()))
    public = {k: v for k, v in r.items() if not k.startswith("_")}
    if args.json:
        print(json.dumps(public, indent=2, default=json_default))
    else:
        print(markdown(public))
    return 0
