"""Per-frame LLM time, side by side: the reference answer vs llama.cpp answer vs llama.cpp first token.

    python benchmarks/bench_llm.py [--frames 5] [--new-tokens 24] [--quant Q8_0] [--threads N] [--skip-mid]

reference     transformers LlamaForCausalLM, fp32, CPU, LoRA unmerged (as the reference runs it), greedy
              generate() of the full answer from inputs_embeds
llama answer  LlmSession.answer: the same prompt and greedy rule on the merged, quantised GGUF
llama first   LlmSession.first_token: one prefill, P(anomaly) from the ' Yes'/' No' logits

Shapes: the tiny test LLM (64 wide, 2 layers, 601 vocab) and a mid LLaMA (1024 wide, 8 layers, 16
heads, 2816 FFN, 32000 vocab; ~170 M parameters), random weights. Random weights rarely emit the stop
token, so both sides generate exactly N new tokens (default 24, the length of a real answer such as
'Yes, there is an anomaly in the image, at the top left of the image.' plus '\\n##'): the stop and EOS
ids are set to the last (never-trained pad) id for the run, and the counts are printed.
Medians over --frames frames after one warm-up frame. CPU threads: --threads (default: all cores).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch

from export.checkpoints import load_pandagpt
from export.llm_export import build_reference_llm, export_llm, reference_greedy, reference_inputs_embeds, segment_ids
from export.tiny_llm import write_tiny_pandagpt, write_tiny_vicuna
from runtime.pipeline.llm import LlmSession
from runtime.pipeline.prompt import product_question, question_text

QUESTION = product_question(
    "This is a photo of a cookie for anomaly detection, which should be round, without any crack, hole, burn or missing part."
)
MID = dict(hidden_size=1024, num_hidden_layers=8, num_attention_heads=16, intermediate_size=2816)


def _median_ms(fn, frames: list) -> tuple[float, object]:
    fn(*frames[0])  # warm-up
    times, out = [], None
    for f in frames[1:]:
        t = time.perf_counter()
        out = fn(*f)
        times.append(1e3 * (time.perf_counter() - t))
    return statistics.median(times), out


def bench(name: str, root: Path, shape: dict, vocab: int | None, quant: str, n_frames: int, n_new: int, threads: int) -> None:
    vdir, ppath = root / "vicuna", root / "pandagpt.pt"
    cfg = write_tiny_vicuna(vdir, vocab_size=vocab, **shape)
    write_tiny_pandagpt(ppath, cfg["hidden_size"], cfg["num_hidden_layers"], embed_dim=32)
    pad = cfg["vocab_size"] - 600
    t = time.perf_counter()
    info = export_llm(vdir, ppath, root / "out", quant, progress=lambda s: None, max_vocab_pad=pad)
    t_export = time.perf_counter() - t
    model, sp = build_reference_llm(vdir, load_pandagpt(ppath), merged=False, max_vocab_pad=pad)
    never = cfg["vocab_size"] - 1
    layout = info.layout.model_copy(update={"stop_token": never, "eos_token": never})
    d = cfg["hidden_size"]
    rng = np.random.default_rng(0)
    frames = [
        (rng.standard_normal((1, d)).astype(np.float32), rng.standard_normal((18, d)).astype(np.float32))
        for _ in range(n_frames + 1)
    ]
    q_ids = segment_ids(sp, question_text(QUESTION))

    @torch.no_grad()
    def reference(img, p):
        return reference_greedy(model, reference_inputs_embeds(model, layout, img, p, q_ids), layout, n_new)

    ref_ms, ref_tokens = _median_ms(reference, frames)
    model = None  # free the reference before llama.cpp loads (a del would leave the closure above unbound)
    with LlmSession(root / "out" / "llm.gguf", layout, n_ctx=512, n_threads=threads, n_embd=d) as s:
        ans_ms, ans = _median_ms(lambda img, p: s.answer(img, p, QUESTION, max_new_tokens=n_new), frames)
        ft_ms, _ = _median_ms(lambda img, p: s.first_token(img, p, QUESTION), frames)
    size = (root / "out" / "llm.gguf").stat().st_size / 1e6
    print(
        f"\n{name}: {d} wide, {cfg['num_hidden_layers']} layers, vocab {cfg['vocab_size']}; prompt {layout.n_fixed + len(q_ids)} positions; "
        f"GGUF {quant} {size:.1f} MB (export {t_export:.1f} s); {threads} threads"
    )
    print(f"  reference answer (transformers fp32, {len(ref_tokens)} tokens)  {ref_ms:9.1f} ms/frame   1.0x")
    print(f"  llama.cpp answer ({len(ans.tokens)} tokens)                   {ans_ms:9.1f} ms/frame  {ref_ms / ans_ms:5.1f}x")
    print(f"  llama.cpp first_token (verdict)               {ft_ms:9.1f} ms/frame  {ref_ms / ft_ms:5.1f}x")
    agree = next((i for i, (a, b) in enumerate(zip(ans.tokens, ref_tokens)) if a != b), min(len(ans.tokens), len(ref_tokens)))
    print(
        f"  last frame: the first {agree} of {len(ref_tokens)} greedy tokens agree with the reference "
        f"(random weights give near-tied logits; {quant} rounding flips some; the F32 GGUF matches exactly, see tests)"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=5)
    ap.add_argument("--new-tokens", type=int, default=24)
    ap.add_argument("--quant", default="Q8_0", choices=["F32", "F16", "Q8_0", "Q4_K_M"])
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--skip-mid", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    print(f"torch {torch.__version__}, CPU, {a.threads} threads; medians over {a.frames} frames, {a.new_tokens} new tokens")
    with tempfile.TemporaryDirectory() as tmp:
        bench("tiny", Path(tmp) / "tiny", {}, None, a.quant, a.frames, a.new_tokens, a.threads)
        if not a.skip_mid:
            bench("mid", Path(tmp) / "mid", MID, 32000, a.quant, a.frames, a.new_tokens, a.threads)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
