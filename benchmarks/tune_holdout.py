"""Accuracy at the model's own decision vs after `agpt bank tune`, measured on images the tuning never saw.

    python benchmarks/tune_holdout.py --bundle models/lite [--data ../shared/datasets] [--category cookie]
                                      [--shots 1,4] [--draws 5] [--splits 4] [--max-miss-rate R]

For each shot count and draw: k normal shots are drawn from train/good (seeded) and a pack is built from
them (the lite bundle's own calibrated threshold is its default decision); every test image is judged once
with that pack. Then, `--splits` times, the test set is cut into two halves at random (stratified: good and
defective each halved); the operating point is picked on one half exactly as `agpt bank tune` does
(runtime.tools.tune.tune_pack -> runtime.pipeline.operating.pick_threshold) and both decisions are measured
on the other half; then the halves swap roles. The verdict at an operating point is value > threshold, so
applying it to the scores already judged is what the inspector does with the tuned pack; the first split
of every draw checks that by judging its measuring half again through Inspector.judge with the tuned pack.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from runtime.pipeline.engines.config import BackendConfig
from runtime.pipeline.inspector import Inspector
from runtime.pipeline.operating import pick_threshold
from runtime.pipeline.preprocess import load_image
from runtime.pipeline.products import build_pack
from runtime.tools.eval_data import category_root, list_samples, train_shots
from runtime.tools.tune import tune_pack


def halves(labels: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    a, b = [], []
    for cls in (False, True):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        a += idx[: len(idx) // 2].tolist()
        b += idx[len(idx) // 2 :].tolist()
    return np.array(sorted(a)), np.array(sorted(b))


def rates(pred: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    return float((pred == y).mean()), float((pred & ~y).sum() / max((~y).sum(), 1)), float((~pred & y).sum() / max(y.sum(), 1))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "datasets")
    ap.add_argument("--category", default="cookie")
    ap.add_argument("--shots", default="1,4")
    ap.add_argument("--draws", type=int, default=5)
    ap.add_argument("--splits", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-miss-rate", type=float, default=None)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    insp = Inspector.from_config(args.bundle, BackendConfig(intra_op_threads=args.threads))
    root = category_root(args.data, args.category)
    pool = train_shots(root)
    samples = list_samples(root)
    frames = [load_image(s.path) for s in samples]
    y = np.array([s.label for s in samples])
    print(f"{root}: {len(samples)} test images ({int((~y).sum())} good, {int(y.sum())} defective); bundle {args.bundle}; "
          f"{args.draws} draws x {args.splits} splits x 2 directions; max miss rate {args.max_miss_rate}")  # fmt: skip
    rows = []
    for k in [int(v) for v in args.shots.split(",")]:
        rng = np.random.default_rng(args.seed)
        own_acc, tuned_acc, own_fr, tuned_fr, own_miss, tuned_miss, checked = [], [], [], [], [], [], 0
        t0 = time.perf_counter()
        for _ in range(args.draws):
            shots = [pool[i] for i in sorted(rng.choice(len(pool), size=k, replace=False))]
            pack = build_pack(insp, args.category, "", shots)
            js = [insp.judge(f, pack) for f in frames]
            values = np.array([j.score if j.p_anomaly is None else j.p_anomaly for j in js])
            own = np.array([bool(j.verdict) for j in js])
            for s in range(args.splits):
                a, b = halves(y, rng)
                for tune_idx, meas_idx in ((a, b), (b, a)):
                    t = pick_threshold(values[tune_idx], y[tune_idx], args.max_miss_rate)["threshold"]
                    if s == 0 and tune_idx is a:  # the same threshold through bank tune and the inspector
                        tuned, _ = tune_pack(insp, pack, [frames[i] for i in tune_idx], y[tune_idx], args.max_miss_rate)
                        assert abs(tuned.operating_point["threshold"] - t) < 1e-12
                        again = [insp.judge(frames[i], tuned) for i in meas_idx]
                        assert [bool(j.verdict) for j in again] == (values[meas_idx] > t).tolist()
                        assert {j.judge for j in again} == {"operating-point"}
                        checked += len(meas_idx)
                    for store, pred in ((0, own[meas_idx]), (1, values[meas_idx] > t)):
                        acc, fr, miss = rates(pred, y[meas_idx])
                        (own_acc if store == 0 else tuned_acc).append(acc)
                        (own_fr if store == 0 else tuned_fr).append(fr)
                        (own_miss if store == 0 else tuned_miss).append(miss)
        rows.append((k, own_acc, tuned_acc, own_fr, tuned_fr, own_miss, tuned_miss, checked, time.perf_counter() - t0))

    def ms(v):
        return f"{np.mean(v):.3f} ± {np.std(v):.3f}"

    print("\n| shots | n | accuracy, default decision | accuracy, after bank tune | false rejects default / tuned | "
          "missed default / tuned |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for k, oa, ta, of, tf, om, tm, _, _ in rows:
        print(f"| {k} | {len(oa)} | {ms(oa)} | {ms(ta)} | {np.mean(of):.3f} / {np.mean(tf):.3f} | "
              f"{np.mean(om):.3f} / {np.mean(tm):.3f} |")  # fmt: skip
    for k, *_, checked, sec in rows:
        print(f"{k} shot(s): {checked} held-out frames judged again with the tuned pack through Inspector.judge: same "
              f"verdicts, judge operating-point ({sec:.0f} s)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
