"""The reports of `agpt eval`: eval.json, eval.md (a markdown table) and eval.png (image | ground truth | map
overlay | verdict for a few frames of the first draw, and the first draw's ROC curve with the model's own
decision and the best operating point marked)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from runtime.errors import AgptError


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


def pick_sheet(samples, frames, transforms, maps_, gts, scores, verdicts, judges, calib, n: int) -> list[dict]:
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
    paths["json"].write_text(json.dumps(public, indent=2, default=json_default) + "\n")
    paths["md"].write_text(markdown(public))
    sheet_png(result.get("_sheet") or [], paths["png"], result.get("credit", ""), result.get("_roc"))
    return paths


def json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.bool_):
        return bool(o)
    raise TypeError(type(o).__name__)
