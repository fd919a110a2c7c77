"""`agpt bank tune --bundle B --product P --data DIR [--max-miss-rate R]`: a product's operating point.

The model's own decision stays the default (first-token P(Yes) > 0.5, or the lite bundle's calibrated score
threshold). Where it sits wrong for a product, an engineer judges labelled images of that product (DIR:
good/ + bad/, or MVTec's test/good + test/<defect>; no masks needed) with the product's pack and stores an
explicit threshold on P(anomaly) (LLM bundles) or the image score (lite) in the pack, with the evidence:
the ROC points, the AUROC, the accuracy at the model's own decision and at the new point, and the sha256
of every image used. The new pack has a new bank id (the old one is kept in history/ for rollback), and
results judged with it say judge "operating-point".

Choosing (runtime.pipeline.operating.pick_threshold): the highest accuracy on DIR; with --max-miss-rate R,
the fewest false rejects among thresholds that miss at most a fraction R of DIR's defective parts.
Tune on images that are not the ones you then measure on (benchmarks/tune_holdout.py shows why and how).
"""

from __future__ import annotations

import argparse
import hashlib
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from runtime.errors import AgptError
from runtime.pipeline.operating import pick_threshold, rates, roc_points
from runtime.pipeline.products import ProductPack

MAX_LISTED_FILES = 2000  # file hashes listed in the evidence (the combined hash covers every file)


def data_evidence(root: Path, samples: Sequence) -> dict:
    """What was tuned on: counts, each file's sha256 and one hash over all of them."""
    files = []
    for s in samples:
        files.append(
            [
                str(Path(s.path).relative_to(root)),
                "bad" if s.label else "good",
                hashlib.sha256(Path(s.path).read_bytes()).hexdigest(),
            ]
        )
    files.sort()
    combined = hashlib.sha256("\n".join(f"{a} {b} {c}" for a, b, c in files).encode()).hexdigest()
    return {
        "root": str(root),
        "n_good": sum(1 for f in files if f[1] == "good"),
        "n_bad": sum(1 for f in files if f[1] == "bad"),
        "sha256": combined,
        "files": files[:MAX_LISTED_FILES],
    }


def tune_pack(
    inspector,
    pack: ProductPack,
    frames: Sequence[np.ndarray],
    labels: Sequence[bool],
    max_miss_rate: float | None = None,
    data: dict | None = None,
) -> tuple[ProductPack, dict]:
    """Judge the labelled frames with the pack (without any operating point it had) and return the pack with
    the chosen operating point, and the evidence stored in it."""
    base = pack.with_operating_point(None)
    rule = (
        inspector.decision_value()
        if hasattr(inspector, "decision_value")
        else ("p_anomaly" if getattr(inspector, "llm", None) else "score")
    )
    values, own = [], []
    for f in frames:
        j = inspector.judge(f, base)
        v = j.p_anomaly if rule == "p_anomaly" else j.score
        if v is None:
            raise AgptError(f"the bundle gave no {rule} for a frame: cannot tune on it")
        values.append(float(v))
        own.append(j.verdict)
    y = np.asarray(labels, bool)
    if y.all() or not y.any():
        raise AgptError(f"tuning needs good and defective images (got {int((~y).sum())} good, {int(y.sum())} defective)")
    chosen = pick_threshold(values, y, max_miss_rate)
    own_pred = np.array([bool(v) for v in own])
    from runtime.tools.eval_metrics import auroc

    evidence = {
        "tool": "agpt bank tune",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "tuned_on_bank_id": base.bank_id,
        "encoder_sha256": base.meta.get("encoder_sha256"),
        "max_miss_rate": max_miss_rate,
        "auroc": auroc(values, y),
        "roc": roc_points(values, y),
        "chosen": chosen,
        "model_decision": {
            "judge": sorted({getattr(inspector, "judge_name", "model")}),
            "accuracy": float((own_pred == y).mean()),
            "false_reject_rate": float((own_pred & ~y).sum() / (~y).sum()),
            "miss_rate": float((~own_pred & y).sum() / y.sum()),
            "no_verdict": int(sum(v is None for v in own)),
        },
        "data": data or {"n_good": int((~y).sum()), "n_bad": int(y.sum())},
    }
    op = {"rule": rule, "threshold": chosen["threshold"], "evidence": evidence}
    return base.with_operating_point(op), evidence


def accuracy_at(values: Sequence[float], labels: Sequence[bool], threshold: float) -> float:
    return float(rates(values, labels, np.array([threshold]))["accuracy"][0])


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bundle", required=True, type=Path, help="bundle folder")
    p.add_argument("--product", required=True, help="product whose pack gets the operating point")
    p.add_argument("--data", required=True, type=Path, help="labelled images: DIR/good + DIR/bad, or MVTec's DIR/test/...")
    p.add_argument("--category", default=None, help="a category folder under --data (MVTec layout)")
    p.add_argument("--max-miss-rate", type=float, default=None, help="at most this fraction of defective parts passed")
    p.add_argument("--clear", action="store_true", help="remove the operating point (back to the model's own decision)")
    p.add_argument("--dry-run", action="store_true", help="print what would be stored, change nothing")
    p.add_argument("--providers", default="CPUExecutionProvider", help="onnxruntime providers, comma separated")
    p.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads")


def run(args: argparse.Namespace) -> int:
    from runtime.pipeline.bundle import load_bundle
    from runtime.pipeline.engines.config import BackendConfig
    from runtime.pipeline.inspector import Inspector
    from runtime.pipeline.preprocess import load_image
    from runtime.pipeline.products import PackSpec
    from runtime.pipeline.store import ProductStore
    from runtime.tools.eval_data import category_root, list_samples

    if args.max_miss_rate is not None and not 0.0 <= args.max_miss_rate < 1.0:
        raise AgptError("--max-miss-rate must be in [0, 1)")
    bundle = load_bundle(args.bundle, verify=False)
    store = ProductStore(bundle.products_dir, PackSpec.from_bundle(bundle))
    if not store.pack_path(args.product).is_file():
        raise AgptError(f"{store.pack_path(args.product)}: no pack for {args.product!r} (build it first: agpt bank build)")
    pack = store.load(args.product)
    if args.clear:
        new = pack.with_operating_point(None)
        if not args.dry_run:
            store.save(new, replace=True)
        print(f"{args.product}: operating point removed, bank {pack.bank_id} -> {new.bank_id}")
        return 0
    root = category_root(args.data, args.category)
    samples = list_samples(root)
    backend = BackendConfig(providers=[s.strip() for s in args.providers.split(",") if s.strip()], intra_op_threads=args.threads)
    insp = Inspector(bundle, backend, "first_token")
    print(f"judging {len(samples)} labelled images of {root} as {args.product} ...", flush=True)
    frames = [load_image(s.path) for s in samples]
    new, ev = tune_pack(insp, pack, frames, [s.label for s in samples], args.max_miss_rate, data_evidence(root, samples))
    c, m = ev["chosen"], ev["model_decision"]
    print(
        f"model's own decision: accuracy {m['accuracy']:.3f}, false rejects {m['false_reject_rate']:.3f}, "
        f"missed {m['miss_rate']:.3f}\n"
        f"operating point {new.operating_point['rule']} > {c['threshold']:.6g} ({c['chosen_by']}): accuracy "
        f"{c['accuracy']:.3f}, false rejects {c['false_reject_rate']:.3f}, missed {c['miss_rate']:.3f}; AUROC {ev['auroc']:.3f} "
        f"on {ev['data']['n_good']} good + {ev['data']['n_bad']} defective images (the same ones: measure elsewhere)"
    )
    if args.dry_run:
        print("dry run: nothing stored")
        return 0
    path = store.save(new, replace=True)
    print(f"wrote {path}: bank {pack.bank_id} -> {new.bank_id} (previous version kept in {store.history_dir(args.product)})")
    return 0
