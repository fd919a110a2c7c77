"""One GPU call: per-frame latency at the real shapes, the reference vs ours, same inputs, JSON on stdout.

    python benchmarks/gpu_bench.py                 # the lent H100/H200: real shapes, random weights (< 6 min)
    python benchmarks/gpu_bench.py --tiny          # tiny shapes (any device; CPU: fp32, no CUDA graphs)
    python benchmarks/gpu_bench.py --dry-run       # = --tiny --device cpu --frames 2: checks the script runs
    (onnxruntime CUDA / TensorRT EP and TensorRT engines at real shapes, through `agpt run` itself:
     benchmarks/bench_real_shapes.py --shape real --engine tensorrt | --providers auto)

Weights are random, built in memory on the device (no downloads): ImageBind-Huge vision tower (1280 wide,
32 blocks, taps 7/15/23/31), the 4 decoder Linears, the prompt learner (1->...->4096), llama_proj, and a
LLaMA-7B-shaped LlamaForCausalLM (4096 x 32 layers, 32 heads, FFN 11008, vocab 32001); about 15 GB fp16.

reference  eager fp16: vision tower -> decoder map -> prompt learner -> transformers generate() of the
           answer from inputs_embeds, greedy, exactly --new-tokens tokens (24: a real answer's length;
           random weights never say '##', so the stop tokens are held back until then). Its first-token
           verdict is read from generate()'s first-step scores.
ours       backend.engine torch, opened through the daemon's engine selection (runtime.pipeline.engines.select;
           the factory gives it the in-memory modules): export.torch_backend, the same modules in fp16, each
           vision graph replayed from a CUDA graph, then TorchPrefill: the prefix's keys/values cached once, a static-shape prefill of the
           ~75 positions after it (CUDA graph), only the ' Yes'/' No' head rows. Verdict = P(Yes) > 0.5.
Both start from the same preprocessed (3,224,224) frames already on the host; the CPU preprocessing (the
runtime's PIL transform of a 640x480 frame, the same for both) is timed separately and added to the
end-to-end figures. Medians and p99 over --frames frames after warm-up; ours also at batch 4 (cameras).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np
import torch

from runtime.pipeline.llm import first_token_verdict
from runtime.tools.bench_common import summary

REAL = dict(
    vision=dict(width=1280, depth=32, heads=16, mlp=5120, embed=1024),
    prompt=dict(channels=[1, 4, 16, 64, 256, 1024, 4096], kernels=[3, 3, 3, 3, 3, 5], n_base=9),
    llm=dict(vocab_size=32001, hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, intermediate_size=11008),
    layout=dict(
        bos=[1],
        before=[835, 12968, 29901, 529, 25518, 29958],
        middle=[1533, 25518, 29958, 29871],
        yes_token=3869,
        no_token=1939,
        stop_token=2277,
        eos_token=2,
    ),
    question_tokens=52,  # 1 + 4 + 18 + 52 = 75 positions after the prefix, a product question's length
    min_free_gb=24.0,
)
TINY = dict(
    vision=dict(width=64, depth=8, heads=4, mlp=256, embed=32),
    prompt=dict(channels=[1, 4, 8, 16, 32, 64, 64], kernels=[3, 3, 3, 3, 3, 5], n_base=9),
    llm=dict(vocab_size=601, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=172),
    layout=dict(
        bos=[1],
        before=[269, 305, 547, 326, 289, 553],
        middle=[326, 557, 289, 553, 526],
        yes_token=346,
        no_token=353,
        stop_token=263,
        eos_token=2,
    ),
    question_tokens=40,
    min_free_gb=0.0,
)


def log(msg: str) -> None:
    print(f"[gpu_bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def init_(module: torch.nn.Module, std: float = 0.02) -> None:
    """Random weights as a fresh model would have them: norms 1/0, biases 0, the rest N(0, std)."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if "norm" in name:
                p.fill_(1.0) if leaf == "weight" else p.zero_()
            elif leaf == "bias":
                p.zero_()
            else:
                p.normal_(0.0, std)


def build(shapes: dict, device: torch.device, dtype: torch.dtype, seed: int = 0):
    """(VisionModules, LlamaForCausalLM, PromptLayout, question ids, text_feats) with random weights, on `device`."""
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    from export.modeling.decoder import Decoder
    from export.modeling.imagebind_vision import ImageBindVision
    from export.modeling.prompt_learner import LlamaProj, PromptLearner
    from export.vision_modules import VisionModules
    from runtime.pipeline.prompt import PromptLayout

    torch.manual_seed(seed)
    v, pr, lm = shapes["vision"], shapes["prompt"], shapes["llm"]
    config = LlamaConfig(
        **lm,
        max_position_embeddings=2048,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=None,
    )
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # parameters are made in the target dtype: no fp32 copy of 7B on the device
    try:
        with torch.device("meta"):
            vision = ImageBindVision(**v)
            decoder = Decoder([v["width"]] * 4, v["embed"])
            learner = PromptLearner(**pr)
            proj = LlamaProj(v["embed"], lm["hidden_size"])
            llm = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(default)
    mods = []
    for m in (vision, decoder, learner, proj, llm):
        m.to_empty(device=device)
        init_(m)
        mods.append(m.eval())
    llm.model.rotary_emb = LlamaRotaryEmbedding(config=config).to(device)  # a computed buffer: to_empty left it garbage
    gen = torch.Generator().manual_seed(seed)
    q_ids = torch.randint(3, lm["vocab_size"] - 1, (shapes["question_tokens"],), generator=gen).tolist()
    tf = torch.randn(2, v["embed"], generator=gen)
    tf = tf / tf.norm(dim=-1, keepdim=True)
    return VisionModules(vision, None, decoder, learner, proj), llm, PromptLayout(**shapes["layout"]), q_ids, tf.to(device)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def preprocess_ms(n: int = 20) -> float:
    from runtime.pipeline.preprocess import preprocess

    frame = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    preprocess(frame)
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        preprocess(frame)
        ts.append((time.perf_counter() - t) * 1e3)
    return statistics.median(ts)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="tiny shapes (a smoke test)")
    ap.add_argument("--dry-run", action="store_true", help="--tiny on the CPU with 2 frames")
    ap.add_argument("--device", default=None, help="cuda (default when available) or cpu")
    ap.add_argument("--frames", type=int, default=None, help="timed frames per side (default: 10 reference, 30 ours)")
    ap.add_argument("--new-tokens", type=int, default=24)
    ap.add_argument("--batch", type=int, default=4, help="ours also with this many frames per call (cameras); 1 to skip")
    ap.add_argument("--no-graphs", action="store_true", help="ours without CUDA graphs (eager fp16)")
    ap.add_argument("--budget-s", type=float, default=300.0, help="stop timing new frames after this many seconds")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (the dry run uses 1: a busy host)")
    ap.add_argument(
        "--dtype", default=None, choices=["float16", "bfloat16", "float32"], help="default: float16 on CUDA, float32 on the CPU"
    )
    a = ap.parse_args()
    if a.dry_run:
        a.tiny, a.device, a.frames = True, "cpu", a.frames or 2
        a.threads = a.threads or 1
    if a.threads:
        torch.set_num_threads(a.threads)
    t_start = time.time()
    device = torch.device(a.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    shapes = TINY if a.tiny else REAL
    dtype = getattr(torch, a.dtype) if a.dtype else (torch.float16 if device.type == "cuda" else torch.float32)
    graphs = device.type == "cuda" and not a.no_graphs
    n_ref = a.frames or 10
    n_ours = a.frames or 30
    report: dict = {
        "shapes": "tiny" if a.tiny else "real (ViT-H/14 vision, LLaMA-7B)",
        "device": str(device),
        "dtype": str(dtype).replace("torch.", ""),
        "torch": torch.__version__,
        "cuda_graphs": graphs,
        "new_tokens": a.new_tokens,
        "python": platform.python_version(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        free, total = torch.cuda.mem_get_info(device)
        report.update(
            gpu=props.name, gpu_memory_gb=round(total / 2**30, 1), gpu_free_gb=round(free / 2**30, 1), cuda=torch.version.cuda
        )
        if free / 2**30 < shapes["min_free_gb"]:
            report["error"] = f"only {free / 2**30:.1f} GB free on {props.name}; the real shapes need {shapes['min_free_gb']} GB"
            print(json.dumps(report, indent=2))
            return 1
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    elif not a.tiny:
        log("warning: real shapes on the CPU need ~30 GB of RAM and take many minutes; use --tiny")
    from export.modeling.decoder import decoder_map
    from export.torch_backend import TorchPrefill, TorchVision

    log(f"building random weights ({report['shapes']}) on {device} ...")
    t = time.time()
    mods, llm, layout, q_ids, text_feats = build(shapes, device, dtype)
    sync(device)
    report["build_s"] = round(time.time() - t, 1)
    n_params = {
        k: sum(p.numel() for p in m.parameters())
        for k, m in (("vision", mods.vision), ("prompt_learner", mods.learner), ("decoder", mods.decoder), ("llm", llm))
    }
    report["params_m"] = {k: round(v / 1e6, 1) for k, v in n_params.items()}
    # ours opens its vision engines the way the daemon does (runtime.pipeline.engines.select, backend.engine: torch);
    # the factory hands over the in-memory modules, the same objects the reference runs, instead of checkpoint files
    from runtime.pipeline.engines.config import BackendConfig
    from runtime.pipeline.engines.select import open_vision

    cfg = BackendConfig(engine="torch", torch_device=str(device), torch_ckpt_dir="(in memory)")
    tv = open_vision(
        None, cfg, factory=lambda bundle, c: TorchVision(mods, device=c.torch_device, dtype=dtype, cuda_graphs=graphs)
    )
    report["engine"] = f"{cfg.engine} ({type(tv).__name__}, {cfg.torch_device})"
    tp = TorchPrefill(llm, layout, lambda text: q_ids, device=str(device), dtype=dtype, cuda_graphs=graphs)
    embed = llm.get_input_embeddings()
    gen = torch.Generator().manual_seed(1)
    frames = [torch.randn(1, 3, 224, 224, generator=gen) for _ in range(max(n_ref, n_ours) + 3)]
    if device.type == "cuda":
        frames = [f.pin_memory() for f in frames]

    # ---------------- reference: eager fp16 + generate ----------------
    @torch.inference_mode()
    def reference(x, stages: dict | None = None):
        marks = [time.perf_counter()]

        def mark():
            if stages is not None:
                sync(device)
                marks.append(time.perf_counter())

        x = x.to(device, dtype)
        emb, taps = mods.vision(x)
        mark()
        m = decoder_map(mods.decoder(taps), text_feats.to(dtype))
        mark()
        P, E = mods.learner(m), mods.proj(emb)
        mark()
        ids = lambda t: embed(torch.tensor([t], device=device))
        embeds = torch.cat([ids(layout.prefix_tokens), E, ids(layout.middle), P, ids(q_ids)], dim=1)
        out = llm.generate(
            inputs_embeds=embeds,
            attention_mask=torch.ones(embeds.shape[:2], dtype=torch.long, device=device),
            max_new_tokens=a.new_tokens,
            min_new_tokens=a.new_tokens,
            do_sample=False,
            num_beams=1,
            eos_token_id=[layout.stop_token, layout.eos_token],
            pad_token_id=layout.eos_token,
            output_scores=True,
            return_dict_in_generate=True,
        )
        first = out.scores[0][0].float()
        ly, ln = float(first[layout.yes_token]), float(first[layout.no_token])
        sync(device)
        marks.append(time.perf_counter())
        if stages is not None:
            for k, name in enumerate(("encoder", "map", "prompt", "llm_generate")):
                stages.setdefault(name, []).append((marks[k + 1] - marks[k]) * 1e3)
        return ly, ln, out.sequences.shape[-1]

    @torch.inference_mode()
    def reference_prefill(x):
        x = x.to(device, dtype)
        emb, taps = mods.vision(x)
        m = decoder_map(mods.decoder(taps), text_feats.to(dtype))
        P, E = mods.learner(m), mods.proj(emb)
        ids = lambda t: embed(torch.tensor([t], device=device))
        embeds = torch.cat([ids(layout.prefix_tokens), E, ids(layout.middle), P, ids(q_ids)], dim=1)
        return llm(inputs_embeds=embeds).logits[0, -1]

    # ---------------- ours: torch backend, CUDA graphs ----------------
    question = "product question"  # q_ids stand for its tokens

    def ours(xs: list, stages: dict | None = None):
        marks = [time.perf_counter()]

        def mark():
            if stages is not None:
                sync(device)
                marks.append(time.perf_counter())

        x = torch.cat(xs).to(device, non_blocking=True)
        emb, taps = tv.encode_t(x)
        mark()
        m = tv.decoder_map_t(taps, text_feats)
        mark()
        P, E = tv.prompts_t(m, emb)
        mark()
        with torch.inference_mode():
            rows = torch.stack([tp.rows(E[i], P[i], question) for i in range(len(xs))])
        lg = tp.first_token_logits_t(rows).cpu()  # the one host sync: the verdict
        marks.append(time.perf_counter())
        if stages is not None:
            for k, name in enumerate(("encoder", "map", "prompt", "llm_prefill")):
                stages.setdefault(name, []).append((marks[k + 1] - marks[k]) * 1e3)
        return lg

    deadline = t_start + a.budget_s
    try:
        log("warm-up and CUDA graph capture ...")
        t = time.time()
        for k in range(2):
            ours([frames[k]])
            if a.batch > 1:
                ours(frames[: a.batch])
        sync(device)
        report["capture_s"] = round(time.time() - t, 1)
        report["graph_errors"] = {**tv.graph_errors, **({"prefill": tp.graph_errors} if tp.graph_errors else {})}
        reference(frames[0])
        reference_prefill(frames[0])
        sync(device)

        log(f"ours: {n_ours} frames ...")
        ours_ms, ours_p = [], []
        for k in range(n_ours):
            if time.time() > deadline:
                break
            t = time.perf_counter()
            lg = ours([frames[k]])
            ours_ms.append((time.perf_counter() - t) * 1e3)
            ours_p.append((float(lg[0, 0]), float(lg[0, 1])))
        ours_stages: dict = {}
        for k in range(min(10, n_ours)):
            ours([frames[k]], ours_stages)
        batch = {}
        if a.batch > 1:
            ts = []
            for k in range(max(3, n_ours // a.batch)):
                if time.time() > deadline:
                    break
                t = time.perf_counter()
                ours(frames[k : k + a.batch] if k + a.batch <= len(frames) else frames[: a.batch])
                ts.append((time.perf_counter() - t) * 1e3)
            batch = {"batch": a.batch, "per_call": summary(ts), "per_frame_ms": float(np.median(ts)) / a.batch}

        log(f"reference: {n_ref} frames of {a.new_tokens} tokens ...")
        ref_ms, ref_p, ref_stages, n_tokens = [], [], {}, 0
        for k in range(n_ref):
            if time.time() > deadline:
                break
            t = time.perf_counter()
            ly, ln, n_tokens = reference(frames[k])
            ref_ms.append((time.perf_counter() - t) * 1e3)
            ref_p.append((ly, ln))
        for k in range(min(3, len(ref_ms))):
            reference(frames[k], ref_stages)
        pre_ts = []
        for k in range(min(10, n_ref)):
            t = time.perf_counter()
            reference_prefill(frames[k])
            sync(device)
            pre_ts.append((time.perf_counter() - t) * 1e3)
    except torch.cuda.OutOfMemoryError as e:
        report["error"] = f"out of GPU memory: {str(e)[:300]}"
        print(json.dumps(report, indent=2))
        return 1

    pre = preprocess_ms()
    p = lambda ly, ln: first_token_verdict(ly, ln).p_anomaly
    n = min(len(ref_p), len(ours_p))
    pr, po = [p(*ref_p[k]) for k in range(n)], [p(*ours_p[k]) for k in range(n)]
    same = [(a_ > 0.5) == (b_ > 0.5) for a_, b_ in zip(pr, po)]
    report["reference"] = {
        "per_frame": summary(ref_ms),
        "stages": {k: summary(v) for k, v in ref_stages.items()},
        "prefill_only_eager": summary(pre_ts),
        "generated_tokens": int(n_tokens),
    }
    report["ours"] = {
        "per_frame": summary(ours_ms),
        "stages": {k: summary(v) for k, v in ours_stages.items()},
        **({"batched": batch} if batch else {}),
    }
    report["preprocess_cpu_ms"] = pre
    ref_med, ours_med = report["reference"]["per_frame"]["median_ms"], report["ours"]["per_frame"]["median_ms"]
    report["ratio_model"] = ref_med / ours_med
    report["ratio_with_preprocess"] = (ref_med + pre) / (ours_med + pre)
    report["ratio_vs_470ms_anchor"] = 470.0 / (ours_med + pre)
    if batch:
        report["ratio_batched_per_frame"] = ref_med / batch["per_frame_ms"]
    report["verdicts"] = {
        "frames": n,
        "identical": int(sum(same)),
        "max_abs_p_diff": float(max((abs(x - y) for x, y in zip(pr, po)), default=0.0)),
        "reference_p": [round(x, 4) for x in pr],
        "ours_p": [round(x, 4) for x in po],
    }
    if device.type == "cuda":
        report["peak_gpu_memory_gb"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    report["wall_s"] = round(time.time() - t_start, 1)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
