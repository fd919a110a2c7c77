"""Whole-pipeline fidelity on every test frame of a dataset category: runtime vs the PyTorch oracle.

    python benchmarks/check_parity.py [--data ../shared/datasets] [--category cookie] [--new-tokens 512] [--json]

On tiny official-format checkpoints (made here, seeded) exported as two bundles (F32 and Q8_0 GGUF):
- F32 bundle, `answer` mode vs the reference's greedy answer: identical text on every frame? max map and
  P(anomaly) differences;
- Q8_0 bundle, `first_token` verdict vs the F32 one (and the reference's first-token P > 0.5): agreement;
- first_token verdict vs the parsed `answer` verdict: agreement where the answer parses (random weights
  seldom answer in the trained grammar; with the real weights `agpt eval` reports the same).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from export.bundle_writer import export_bundle
from export.reference import Reference
from export.tiny import make_tiny
from runtime.pipeline.inspector import Inspector
from runtime.pipeline.preprocess import load_image
from runtime.pipeline.products import build_pack

DESCRIPTION = "This is a photo of a cookie for anomaly detection, which should be round, without any crack or damage."


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "datasets")
    ap.add_argument("--category", default="cookie")
    ap.add_argument("--new-tokens", type=int, default=512, help="answer length cap, both sides (512: the reference's own)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    frames = sorted((args.data / args.category / "test").glob("*/*.png"))
    if not frames:
        print(f"no test frames under {args.data / args.category}", file=sys.stderr)
        return 2
    quiet = lambda *_: None
    with tempfile.TemporaryDirectory() as tmp:
        ck = make_tiny(Path(tmp) / "ckpt", progress=quiet)
        b32 = export_bundle(ck, Path(tmp) / "f32", products={args.category: DESCRIPTION}, quant="F32", progress=quiet)
        b8 = export_bundle(ck, Path(tmp) / "q8", products={args.category: DESCRIPTION}, quant="Q8_0", progress=quiet)
        ref = Reference(ck)
        ans32 = Inspector.from_config(b32, None, "answer", llm_options=dict(kv_f32=True), max_new_tokens=args.new_tokens)
        fast32 = Inspector.from_config(b32, None, "first_token", llm_options=dict(kv_f32=True))
        fast8 = Inspector.from_config(b8, None, "first_token")
        packs = {id(i): build_pack(i, args.category, DESCRIPTION, []) for i in (ans32, fast32, fast8)}
        rows = []
        t0 = time.time()
        for f in frames:
            img = load_image(f)
            r = ref.run(f, product=args.category, description=DESCRIPTION, max_new_tokens=args.new_tokens)
            a = ans32.judge(img, packs[id(ans32)])
            v32 = fast32.judge(img, packs[id(fast32)])
            v8 = fast8.judge(img, packs[id(fast8)])
            rows.append(
                dict(
                    frame=f"{f.parent.name}/{f.name}",
                    same_answer=a.answer == r.answer,
                    map_diff=float(np.abs(a.map - r.map).max()),
                    p_diff=float(abs(a.p_anomaly - r.p_anomaly)),
                    ref_first=r.p_anomaly > 0.5,
                    f32_first=bool(v32.verdict),
                    q8_first=bool(v8.verdict),
                    answer_verdict=a.verdict,
                )
            )
        n = len(rows)
        parsed = [r for r in rows if r["answer_verdict"] is not None]
        summary = dict(
            frames=n,
            seconds=round(time.time() - t0, 1),
            new_tokens=args.new_tokens,
            answer_identical=sum(r["same_answer"] for r in rows),
            max_map_diff=max(r["map_diff"] for r in rows),
            max_p_diff=max(r["p_diff"] for r in rows),
            first_token_f32_vs_reference=sum(r["f32_first"] == r["ref_first"] for r in rows),
            first_token_q8_vs_f32=sum(r["q8_first"] == r["f32_first"] for r in rows),
            answers_parsed=len(parsed),
            first_token_vs_answer_on_parsed=sum(r["answer_verdict"] == r["f32_first"] for r in parsed),
        )
    if args.json:
        print(json.dumps(dict(summary=summary, frames=rows), indent=1))
    else:
        print(f"{n} frames of {args.category}, answers capped at {args.new_tokens} tokens, {summary['seconds']} s")
        print(f"  F32 runtime answer == reference answer        {summary['answer_identical']}/{n}")
        print(f"  max |map - reference map|                     {summary['max_map_diff']:.2e}")
        print(f"  max |P(anomaly) - reference|                  {summary['max_p_diff']:.2e}")
        print(f"  first-token verdict F32 == reference          {summary['first_token_f32_vs_reference']}/{n}")
        print(
            f"  first-token verdict Q8_0 == F32               {summary['first_token_q8_vs_f32']}/{n} "
            f"({100 * summary['first_token_q8_vs_f32'] / n:.1f}%)"
        )
        print(
            f"  answers in the trained grammar                {len(parsed)}/{n}; first_token agrees on "
            f"{summary['first_token_vs_answer_on_parsed']}/{len(parsed)}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
