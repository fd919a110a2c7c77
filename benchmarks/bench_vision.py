"""Vision tower per-image time: eager PyTorch vs the exported ONNX graph on ONNX Runtime (this CPU).

    python benchmarks/bench_vision.py [--threads 2] [--runs 5] [--skip-real]

Two towers: the tiny test tower (width 64, depth 8) and the real ImageBind-Huge shape (width 1280,
depth 32, 16 heads, MLP 5120, embed 1024) with random weights built in memory; the real one is
exported with external data to a temporary folder. Same input, same thread count, median of --runs
timed runs after one warm-up. Also prints the parameter counts of the real-shape modules (meta device,
no memory).
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch

from export.modeling.decoder import Decoder
from export.modeling.imagebind_text import ImageBindText
from export.modeling.imagebind_vision import ImageBindVision
from export.modeling.prompt_learner import PromptLearner

REAL_VISION = dict(width=1280, depth=32, heads=16, mlp=5120, embed=1024)
REAL_TEXT = dict(vocab=49408, context=77, width=1024, depth=24, heads=16, mlp=4096, embed=1024)
REAL_PROMPT = dict(channels=[1, 4, 16, 64, 256, 1024, 4096], kernels=[3, 3, 3, 3, 3, 5], n_base=9)
TINY_VISION = dict(width=64, depth=8, heads=4, mlp=256, embed=32)


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def param_counts() -> None:
    with torch.device("meta"):
        v = ImageBindVision(**REAL_VISION)
        t = ImageBindText(**REAL_TEXT)
        pl = PromptLearner(**REAL_PROMPT)
        dec = Decoder([1280] * 4, 1024)
    head = n_params(v.head) + n_params(v.head_norm)
    print("parameter counts (real shapes):")
    print(
        f"  vision tower      {n_params(v) / 1e6:9.2f} M  (of which head LayerNorm+Linear {head / 1e6:.2f} M; stem as Conv2d "
        f"{v.stem.weight.numel() / 1e6:.2f} M, the checkpoint's Conv3d holds 2x)"
    )
    print(f"  vision, Conv3d    {(n_params(v) + v.stem.weight.numel()) / 1e6:9.2f} M  (as stored in imagebind_huge.pth)")
    print(f"  prompt learner    {n_params(pl) / 1e6:9.2f} M  (base prompts {pl.base_prompts.numel() / 1e6:.3f} M)")
    print(f"  decoder           {n_params(dec) / 1e6:9.4f} M  (4 x (1280*1024 + 1024) = {4 * (1280 * 1024 + 1024) / 1e6:.4f} M)")
    print(f"  text tower        {n_params(t) / 1e6:9.2f} M")


def random_tower(cfg: dict, seed: int = 0) -> ImageBindVision:
    torch.manual_seed(seed)
    m = ImageBindVision(**cfg)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if "norm" in name:
                p.fill_(1.0) if name.endswith("weight") else p.zero_()
            else:
                p.normal_(0.0, 0.02)
    return m.eval()


def median_ms(fn, runs: int) -> float:
    fn()  # warm-up (allocations, ORT arena, oneDNN primitives)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def bench(label: str, cfg: dict, threads: int, runs: int, batch: int) -> tuple[float, float, float]:
    import onnxruntime as ort

    from export.onnx_export import EXTERNAL_DATA_BYTES, export_encoder

    torch.set_num_threads(threads)
    model = random_tower(cfg)
    x = np.random.default_rng(0).standard_normal((batch, 3, 224, 224)).astype(np.float32)
    xt = torch.from_numpy(x)
    with torch.no_grad():
        eager = median_ms(lambda: model(xt), runs) / batch
        ref = model(xt)[0].numpy()
    with tempfile.TemporaryDirectory(prefix="bench_vision_") as tmp:
        t0 = time.perf_counter()
        g = export_encoder(model, Path(tmp) / "encoder.onnx", progress=lambda *_: None)
        export_s = time.perf_counter() - t0
        size = sum(p.stat().st_size for p in Path(tmp).iterdir())
        model = None  # free the eager weights before ONNX Runtime loads its copy
        gc.collect()
        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
        sess = ort.InferenceSession(str(g.path), so, providers=["CPUExecutionProvider"])
        onnx_ms = median_ms(lambda: sess.run(["emb"], {"image": x}), runs) / batch
        diff = float(np.abs(sess.run(["emb"], {"image": x})[0] - ref).max())
        sess = None
    ext = "external data" if size > EXTERNAL_DATA_BYTES else "inline"
    print(
        f"  {label:<22} batch {batch}: eager {eager:9.1f} ms/img | onnxruntime {onnx_ms:9.1f} ms/img | eager/ort {eager / onnx_ms:5.2f}x"
        f" | emb max abs diff {diff:.1e} | graph {size / 1e9:.2f} GB ({ext}), export {export_s:.0f} s"
    )
    return eager, onnx_ms, diff


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--skip-real", action="store_true")
    a = ap.parse_args()
    import onnxruntime as ort

    print(f"torch {torch.__version__}, onnxruntime {ort.__version__}, threads {a.threads}, median of {a.runs} runs")
    param_counts()
    print("per-image time, fp32, CPU:")
    bench("tiny (w64 d8)", TINY_VISION, a.threads, max(a.runs, 20), 1)
    bench("tiny (w64 d8)", TINY_VISION, a.threads, max(a.runs, 20), 8)
    if not a.skip_real:
        bench("ViT-H/14 (w1280 d32)", REAL_VISION, a.threads, a.runs, 1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
