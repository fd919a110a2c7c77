"""The reference side of `agpt bench`: the released model's per-image work, in a child process (torch stays out
of the bench's own process), on the same weights and frames."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from runtime.tools.bench_common import peak_rss_mb, summary

# the --ckpt-dir convention (export/checkpoints.py), repeated here so this process never imports torch
CKPT_FILES = {
    "imagebind": "imagebind_ckpt/imagebind_huge.pth",
    "pandagpt": "pandagpt_ckpt/pytorch_model.pt",
    "anomalygpt": "anomalygpt_ckpt/pytorch_model.pt",
}


def reference_worker(
    ckpt_dir: str,
    frames: list[np.ndarray],
    product: str,
    description: str,
    shots: list[str],
    new_tokens: int,
    threads: int | None,
    warmup: list[np.ndarray],
) -> dict:
    """The reference's per-image work as the released generate() does it (reference doc, section 3 and the
    released extract_multimodal_feature): besides the query's own encoding, every call runs the text tower
    over the prompt ensemble, and with normal shots it also computes the decoder map it then discards,
    encodes the query a second time and reads and encodes every shot. That repeated work is timed apart
    ("per_call") so the report can give the reference's cost both as released and with it cached."""
    import torch

    from export.llm_export import reference_greedy, reference_text
    from export.modeling.decoder import decoder_map
    from export.modeling.fewshot import bank_from_shots, bank_map
    from export.modeling.text_prompts import text_features
    from export.reference import Reference, p_yes
    from runtime.pipeline.prompt import product_question, question_text

    if threads:
        torch.set_num_threads(threads)
    ref = Reference(ckpt_dir)
    text = question_text(product_question(description))
    names = ("preprocess", "encoder", "per_call", "map", "prompt", "llm", "llm_prefill", "total", "total_cached")
    samples: dict[str, list[float]] = {s: [] for s in names}
    results = []

    @torch.no_grad()
    def one(frame, record: bool):
        lat = {}
        t = t0 = time.perf_counter()

        def lap(name):
            nonlocal t
            now = time.perf_counter()
            lat[name] = (now - t) * 1e3
            t = now

        x = torch.from_numpy(Reference._load(frame))[None]
        lap("preprocess")
        emb, taps = ref.encode(x)
        lap("encoder")
        feats = torch.from_numpy(text_features(ref.text, product))
        if shots:
            decoder_map(ref.decoder(taps), feats)  # computed, then replaced by the bank map
            ref.encode(torch.from_numpy(Reference._load(frame))[None])  # encode_image_for_one_shot(query)
            _, shot_taps = ref.encode(torch.from_numpy(np.stack([Reference._load(s) for s in shots])))
            bank = bank_from_shots(shot_taps)
        lap("per_call")
        m = bank_map(taps, bank) if shots else decoder_map(ref.decoder(taps), feats)
        lap("map")
        P, E = ref.prompts(m, emb)
        lap("prompt")
        embeds = ref.inputs_embeds(E, P, text)
        tokens = reference_greedy(ref.model, embeds, ref.layout, new_tokens)
        lap("llm")
        total = (time.perf_counter() - t0) * 1e3
        t = time.perf_counter()
        first = ref.model(inputs_embeds=embeds).logits[0, -1].float()  # the one prefill (not part of the answer path)
        lap("llm_prefill")
        if record:
            for k, v in lat.items():
                samples[k].append(v)
            samples["total"].append(total)
            samples["total_cached"].append(total - lat["per_call"])
            results.append({"p_anomaly": p_yes(first, ref.layout), "tokens": tokens, "answer": reference_text(ref.sp, tokens)})

    for f in warmup:
        one(f, False)
    t_all = time.perf_counter()
    for f in frames:
        one(f, True)
    wall = time.perf_counter() - t_all - sum(samples["llm_prefill"]) / 1e3
    return {
        "stages": {k: summary(v) for k, v in samples.items() if v},
        "fps": len(frames) / wall,
        "peak_rss_mb": peak_rss_mb(),
        "results": results,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }


def run_reference(args, frames, warmup, pack, shots: list[Path]) -> dict:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    print(f"reference: {args.reference} (PyTorch eager fp32 + transformers generate, child process) ...", file=sys.stderr)
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as ex:
        fut = ex.submit(
            reference_worker,
            str(args.reference),
            frames,
            pack.name,
            pack.description,
            [str(s) for s in shots],
            args.new_tokens,
            args.threads,
            warmup,
        )
        return fut.result()


def check_sources(bundle, ckpt_dir: Path) -> list[str]:
    """Warnings when the checkpoints differ from those the bundle was exported from (bundle.json sources)."""
    from runtime.pipeline.bundle import sha256_file

    warn = []
    for name, rel in CKPT_FILES.items():
        src = (bundle.manifest.sources or {}).get(name)
        path = ckpt_dir / rel
        if src is None or not path.is_file() or path.stat().st_size > (2 << 30):
            continue
        if sha256_file(path) != getattr(src, "sha256", None):
            warn.append(
                f"{path} is not the file the bundle was exported from (sha256 differs): the comparison is not on the same weights"
            )
    return warn
