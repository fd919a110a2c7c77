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
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runtime.errors import AgptError
from runtime.names import PRODUCT_RE
from runtime.pipeline.preprocess import list_images

GOOD = "good"


# ---- metrics ---------------------------------------------------------------------------------------


def auroc(scores, labels) -> float:
    """Area under the ROC curve by ranks (Mann-Whitney U): tied scores share their average rank.

    Equals P(score of a random positive > score of a random negative) + 0.5 * P(tie). NaN when a class is absent.
    """
    s = np.asarray(scores, np.float64).ravel()
    y = np.asarray(labels, bool).ravel()
    if s.shape != y.shape:
        raise ValueError(f"auroc: {s.shape[0]} scores for {y.shape[0]} labels")
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    sorted_s = s[order]
    # groups of equal scores: 1-based average rank of each group, spread back to its members
    starts = np.flatnonzero(np.r_[True, sorted_s[1:] != sorted_s[:-1]])
    counts = np.diff(np.r_[starts, s.size])
    avg_rank = starts + (counts + 1) / 2.0
    ranks = np.empty(s.size, np.float64)
    ranks[order] = np.repeat(avg_rank, counts)
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


# ---- dataset ---------------------------------------------------------------------------------------


@dataclass
class Sample:
    path: Path
    defect: str  # 'good' or the defect folder name
    mask_path: Path | None

    @property
    def label(self) -> bool:
        return self.defect != GOOD


def category_root(data: Path, category: str | None) -> Path:
    data = Path(data)
    if category is None:
        if not data.is_dir():
            raise AgptError(f"{data}: no such folder")
        return data
    root = data / category
    if not root.is_dir():
        have = ", ".join(sorted(p.name for p in data.iterdir() if p.is_dir())) if data.is_dir() else "folder absent"
        raise AgptError(f"{root}: no such category folder (in {data}: {have})")
    return root


def train_shots(root: Path, shots_dir: Path | None = None) -> list[Path]:
    folder = Path(shots_dir) if shots_dir is not None else root / "train" / GOOD
    if shots_dir is None and not folder.is_dir():
        raise AgptError(f"{root}: no train/good folder of normal shots: give --shots-dir")
    shots = list_images(folder)
    if not shots:
        raise AgptError(f"{folder}: no normal shot images")
    return shots


def test_folder(root: Path) -> Path:
    """MVTec's DIR/test, or the plain layout's DIR itself (DIR/good + DIR/bad)."""
    if (root / "test").is_dir():
        return root / "test"
    if (root / GOOD).is_dir():
        return root
    raise AgptError(f"{root}: neither test/good + test/<defect> (MVTec) nor good/ + bad/ folders")


def list_samples(root: Path, max_images: int | None = None) -> list[Sample]:
    """The labelled images; a defect image's mask_path is None when ground_truth/<type>/<stem>_mask.png
    (MVTec) is absent: such a set is judged on image labels alone (pixel_note says so)."""
    test = test_folder(root)
    skip = {"train", "ground_truth"} if test == root else set()
    groups: dict[str, list[Sample]] = {}
    for d in sorted(p for p in test.iterdir() if p.is_dir() and p.name not in skip):
        items = []
        for img in list_images(d):
            mask = None
            if d.name != GOOD:
                mask = root / "ground_truth" / d.name / f"{img.stem}_mask.png"
                mask = mask if mask.is_file() else None
            items.append(Sample(img, d.name, mask))
        if items:
            groups[d.name] = items
    if GOOD not in groups or len(groups) < 2:
        raise AgptError(f"{test}: needs a good folder and at least one defect folder (found: {', '.join(groups) or 'none'})")
    samples = [s for g in groups.values() for s in g]
    if max_images is not None and max_images < len(samples):
        # round-robin over the folders, so a small subset still holds good and every defect type
        picked, queues = [], [list(g) for g in groups.values()]
        while len(picked) < max_images:
            for q in queues:
                if q and len(picked) < max_images:
                    picked.append(q.pop(0))
        samples = sorted(picked, key=lambda s: (s.defect, s.path.name))
    return samples


def pixel_note(root: Path, samples: list[Sample]) -> str | None:
    """None when every defect image has its mask; else why the pixel metrics are left out."""
    bad = [s for s in samples if s.label]
    missing = [s for s in bad if s.mask_path is None]
    if not missing:
        return None
    if len(missing) == len(bad):
        return "no ground-truth masks: pixel metrics left out (image labels only)"
    first = root / "ground_truth" / missing[0].defect / f"{missing[0].path.stem}_mask.png"
    return f"{len(missing)} of {len(bad)} ground-truth masks missing (first: {first}): pixel metrics left out"


def _credit(data: Path, category: str) -> str:
    """Source/licence lines of the category from the datasets README, when there is one (attribution on sheets)."""
    readme = Path(data) / "README.md"
    if not readme.is_file():
        return ""
    lines, inside, out = readme.read_text(errors="replace").splitlines(), False, []
    for line in lines:
        if line.startswith("#"):
            inside = line.lstrip("#").strip().lower() == category.lower()
            continue
        if inside and re.search(r"^\W*(source|licen[cs]e)\b", line, re.I):
            # first sentence only, without a dangling 'folder' that continues on the next line
            out.append(re.sub(r",\s*folder$", "", re.split(r"(?<=\))\.\s|\.\s", line.strip(" -"))[0]))
    return " | ".join(out)


# ---- evaluation ------------------------------------------------------------------------------------


def default_description(category: str) -> str:
    return f"This is a photo of a {category} for anomaly detection, which should be without any damage, flaw, defect, scratch, hole or broken part."


def resolve_description(description: str | None, category: str) -> tuple[str, str]:
    """(text, where it came from). 'auto': the paper's class description when there is one."""
    if description == "auto":
        from runtime.tools.descriptions import SOURCE, paper_description

        paper = paper_description(category)
        if paper is not None:
            return paper, f"paper ({SOURCE})"
        return default_description(category), "generic (no paper description for this class)"
    if description is None:
        return default_description(category), "generic"
    return description, "given"


def _summary(values: list[float]) -> dict:
    v = np.asarray([x for x in values if x is not None and x == x], np.float64)  # NaN: a class absent; None: no masks
    if v.size == 0:
        return {"mean": None, "std": None}
    return {"mean": float(v.mean()), "std": float(v.std())}


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
            sheet = _pick_sheet(samples, frames, transforms, maps_a, gts_a, scores_a, verdicts, judges, calib, sheet_frames)
            own = _own_decision_point(values, labels, verdicts)
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
        "image_auroc": _summary([r["image_auroc"] for r in per_draw]),
        "pixel_auroc": _summary([r["pixel_auroc"] for r in per_draw]),
        "accuracy": _summary([r["accuracy"] for r in per_draw]),
        "best_accuracy": _summary([r["best_accuracy"] for r in per_draw]),
        "pixel_metrics": no_pixels or "computed",
        "layout": "mvtec" if test_folder(root) != root else "plain",
        "description": description,
        "description_source": description_source,
        "per_type": {
            t: {
                m: _summary([r["per_type"][t][m] for r in per_draw])
                for m in ("image_auroc", "pixel_auroc", "accuracy")
                if m in per_draw[0]["per_type"][t]
            }
            | {"n": per_draw[0]["per_type"][t]["n"]}
            for t in [*types, GOOD]
        },
        "latency_ms": {k: float(np.mean([r["latency_ms"].get(k, np.nan) for r in per_draw])) for k in per_draw[0]["latency_ms"]},
        "seconds": round(time.perf_counter() - t_start, 2),
        "credit": _credit(Path(data), category),
        "draw_results": per_draw,
    }
    result["_sheet"] = sheet
    result["_roc"] = roc_panel
    return result


def _own_decision_point(values, labels, verdicts) -> list[float] | None:
    """(fpr, tpr) of the model's own verdicts, for the ROC panel (a frame without a verdict counts as 'good')."""
    y = np.asarray(labels, bool)
    pred = np.array([bool(v) for v in verdicts])
    if y.all() or not y.any():
        return None
    return [float((pred & ~y).sum() / (~y).sum()), float((pred & y).sum() / y.sum())]


# ---- reports ---------------------------------------------------------------------------------------


def _fmt(s: dict) -> str:
    return "n/a" if s.get("mean") is None else f"{s['mean']:.3f} ± {s['std']:.3f}"


def markdown(r: dict) -> str:
    head = (
        f"### {r['category']}: {r['shots']} shot(s), {r['draws']} draw(s), seed {r['seed']}\n\n"
        f"bundle `{r['bundle']}` ({r['bundle_kind']}), judge: {', '.join(r['judge'])}; "
        f"{r['n_test']} test images ({r['n_good']} good, {r['n_defect']} defective)\n\n"
    )
    lines = [
        "| subset | n | image AUROC | pixel AUROC | accuracy |",
        "|---|---|---|---|---|",
        f"| all | {r['n_test']} | {_fmt(r['image_auroc'])} | {_fmt(r['pixel_auroc'])} | {_fmt(r['accuracy'])} |",
    ]
    best = r.get("best_accuracy")
    for t, v in r["per_type"].items():
        lines.append(
            f"| {t} | {v['n']} | {_fmt(v.get('image_auroc', {}))} | {_fmt(v.get('pixel_auroc', {}))} | {_fmt(v['accuracy'])} |"
        )
    thr = [d["calibration"].get("threshold") for d in r["draw_results"]]
    tail = ""
    if any(isinstance(t, (int, float)) for t in thr):
        tail = (
            "\nthresholds per draw (from the shots alone): " + ", ".join("n/a" if t is None else f"{t:.4f}" for t in thr) + "\n"
        )
    if best:
        ops = [d["best_operating_point"] for d in r["draw_results"]]
        tail += (
            f"\naccuracy at the model's own decision {_fmt(r['accuracy'])}; at the best operating point "
            f"{_fmt(best)} ({ops[0]['rule']} > " + ", ".join(f"{o['threshold']:.4g}" for o in ops)
            + " per draw; chosen on these same images: an upper bound)\n"
        )  # fmt: skip
    if r.get("pixel_metrics") not in (None, "computed"):
        tail += f"\npixel metrics: {r['pixel_metrics']}\n"
    if r.get("description_source"):
        tail += f"\ndescription ({r['description_source']}): {r.get('description')}\n"
    lat = ", ".join(f"{k} {v:.1f}" for k, v in r["latency_ms"].items())
    credit = f"\nimages: {r['credit']}\n" if r.get("credit") else ""
    return head + "\n".join(lines) + "\n" + tail + f"\nmean latency per frame (ms): {lat}\n" + credit


def _pick_sheet(samples, frames, transforms, maps_, gts, scores, verdicts, judges, calib, n: int) -> list[dict]:
    """A few frames of the first draw: defective ones first (most of the interest), then good ones."""
    bad = [i for i, s in enumerate(samples) if s.label]
    good = [i for i, s in enumerate(samples) if not s.label]
    n_bad = min(len(bad), max(1, (2 * n) // 3))
    n_good = min(len(good), n - n_bad)
    pick = (
        [bad[int(k)] for k in np.linspace(0, len(bad) - 1, n_bad)] + [good[int(k)] for k in np.linspace(0, len(good) - 1, n_good)]
        if n
        else []
    )
    return [
        {
            "name": f"{samples[i].defect}/{samples[i].path.name}",
            "frame": frames[i],
            "transform": transforms[i],
            "map": maps_[i],
            "gt": gts[i],
            "score": float(scores[i]),
            "verdict": verdicts[i],
            "judge": judges[i],
            "label": samples[i].label,
            "threshold": calib.get("threshold"),
        }
        for i in dict.fromkeys(pick)
    ]


def roc_panel(roc: dict, width: int, height: int = 300) -> np.ndarray:
    """The ROC curve (false-reject rate vs defects caught) with the model's own decision and the best point."""
    import cv2

    img = np.full((height, width, 3), 255, np.uint8)
    side = height - 60
    x0, y0 = 50, 20  # top-left of the plot square

    def xy(fpr: float, tpr: float) -> tuple[int, int]:
        return int(x0 + fpr * side), int(y0 + (1.0 - tpr) * side)

    cv2.rectangle(img, (x0, y0), (x0 + side, y0 + side), (0, 0, 0), 1)
    cv2.line(img, xy(0, 0), xy(1, 1), (200, 200, 200), 1)
    pts = np.array([xy(f, t) for f, t, _ in roc["roc"]], np.int32)
    if len(pts) > 1:
        cv2.polylines(img, [pts], False, (200, 80, 0), 2, cv2.LINE_AA)
    font = cv2.FONT_HERSHEY_SIMPLEX
    cv2.putText(img, "false-reject rate (good judged defective)", (x0, y0 + side + 30), font, 0.42, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(img, "caught", (2, y0 + 12), font, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    best = roc["best"]
    bx = xy(best["false_reject_rate"], 1.0 - best["miss_rate"])
    cv2.circle(img, bx, 6, (0, 160, 0), 2)
    lines = [
        (f"ROC of {roc['rule']}, image AUROC {roc['auroc']:.3f} (first draw)", (0, 0, 0)),
        (f"o best operating point: {roc['rule']} > {best['threshold']:.4g}, accuracy {best['accuracy']:.3f}", (0, 160, 0)),
    ]
    if roc.get("own") is not None:
        cv2.drawMarker(img, xy(*roc["own"]), (0, 0, 200), cv2.MARKER_CROSS, 14, 2)
        lines.append(("x the model's own decision", (0, 0, 200)))
    for k, (s, c) in enumerate(lines):
        cv2.putText(img, s, (x0 + side + 20, y0 + 20 + 24 * k), font, 0.45, c, 1, cv2.LINE_AA)
    return img


def sheet_png(rows: list[dict], path: Path, credit: str = "", roc: dict | None = None) -> Path:
    """image | ground truth | map overlay | verdict, one row per frame, in the 224 model frame."""
    import cv2

    from runtime.pipeline.preprocess import crop_resize, three_channels

    size, pad = 224, 4
    panels = []
    all_max = max([r["map"].max() for r in rows] + [1e-6])
    for r in rows:
        img = crop_resize(three_channels(r["frame"]), r["transform"]).copy()  # BGR, as cv2 writes it
        gt = np.repeat((r["gt"].astype(np.uint8) * 255)[:, :, None], 3, axis=2)
        thr = r["threshold"]
        # colour scale: threshold at mid-scale when there is one, so red means 'beyond the threshold'
        top = 2.0 * thr if isinstance(thr, (int, float)) and thr > 0 else all_max
        heat = cv2.applyColorMap(np.clip(r["map"] / top * 255.0, 0, 255).astype(np.uint8), cv2.COLORMAP_JET)
        overlay = cv2.addWeighted(img, 0.5, heat, 0.5, 0)
        text = np.full((size, size, 3), 255, np.uint8)
        v = r["verdict"]
        verdict = "no verdict" if v is None else ("ANOMALY" if v else "normal")
        ok = v is not None and bool(v) == r["label"]
        colour = (0, 140, 0) if ok else (0, 0, 200)
        lines = [
            (r["name"][-26:], (0, 0, 0)),
            (f"truth: {'defect' if r['label'] else 'good'}", (0, 0, 0)),
            (f"verdict: {verdict}", colour),
            (f"score {r['score']:.4f}", (0, 0, 0)),
            (f"thr {thr:.4f}" if isinstance(thr, (int, float)) else "", (0, 0, 0)),
            (r["judge"], (90, 90, 90)),
        ]
        for k, (s, c) in enumerate(lines):
            cv2.putText(text, s, (6, 24 + 26 * k), cv2.FONT_HERSHEY_SIMPLEX, 0.5, c, 1, cv2.LINE_AA)
        row = [img, gt, overlay, text]
        panels.append(np.concatenate([np.pad(p, ((pad, pad), (pad, pad), (0, 0)), constant_values=255) for p in row], axis=1))
    sheet = np.concatenate(panels, axis=0) if panels else np.full((size, 4 * size, 3), 255, np.uint8)
    header = np.full((28, sheet.shape[1], 3), 255, np.uint8)
    for k, s in enumerate(("image", "ground truth", "map overlay", "verdict")):
        cv2.putText(header, s, (k * (size + 2 * pad) + 8, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (0, 0, 0), 1, cv2.LINE_AA)
    parts = [header, sheet]
    if roc is not None:
        parts.append(roc_panel(roc, sheet.shape[1]))
    if credit:
        foot = np.full((22, sheet.shape[1], 3), 255, np.uint8)
        cv2.putText(foot, credit[:130], (6, 15), cv2.FONT_HERSHEY_SIMPLEX, 0.38, (60, 60, 60), 1, cv2.LINE_AA)
        parts.append(foot)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), np.concatenate(parts, axis=0)):
        raise AgptError(f"{path}: could not write the PNG sheet")
    return path


def write_reports(result: dict, out: Path) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    public = {k: v for k, v in result.items() if not k.startswith("_")}
    paths = {"json": out / "eval.json", "md": out / "eval.md", "png": out / "eval.png"}
    paths["json"].write_text(json.dumps(public, indent=2, default=_json_default) + "\n")
    paths["md"].write_text(markdown(public))
    sheet_png(result.get("_sheet") or [], paths["png"], result.get("credit", ""), result.get("_roc"))
    return paths


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.bool_):
        return bool(o)
    raise TypeError(type(o).__name__)


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
    p.add_argument("--providers", default="CPUExecutionProvider", help="onnxruntime providers, comma separated")
    p.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads")
    p.add_argument("--out", type=Path, default=None, help="folder for eval.json, eval.md and eval.png (default: no files)")
    p.add_argument("--json", action="store_true", help="print the JSON result on stdout (progress goes to stderr)")


def run(args: argparse.Namespace) -> int:
    from runtime.pipeline.engines.config import BackendConfig

    if args.max_images is not None and args.max_images < 2:
        raise AgptError("--max-images must be at least 2 (a good and a defective image)")
    backend = BackendConfig(providers=[s.strip() for s in args.providers.split(",") if s.strip()], intra_op_threads=args.threads)
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
        print(json.dumps(public, indent=2, default=_json_default))
    else:
        print(markdown(public))
    return 0
