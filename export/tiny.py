"""`agpt export make-tiny [--shape tiny|small|real] OUT`: random checkpoints in the official formats, key names
and layout.

The loaders, exporters and runtime cannot tell these from the real downloads except by size, which is
the point: every test runs the real code paths. Seeded, so the same OUT is written every time.

  tiny   the test fixtures (seconds, ~30 MB)
  small  every width and depth scaled down but the LLM vocabulary real (32001) and the LoRA rank real (32):
         a mid-size pipeline for benchmarks on a shared machine (~1 minute, ~1 GB)
  real   the released shapes: ImageBind-Huge (.pth, vision 1280 x 32 blocks, text 1024 x 24), Vicuna-7B v0
         (HF folder, sharded .bin, fp16, vocab 32001), PandaGPT delta (r=32 LoRA), AnomalyGPT delta;
         writes ~19 GB and needs ~16 GB of RAM (minutes). For benchmarks/bench_real_shapes.py
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from export.checkpoints import ANOMALYGPT, IMAGEBIND, PANDAGPT, PROMPT_CONVS, VICUNA

VISION = dict(width=64, depth=8, mlp=256, patch=14, grid=16, embed=32)
TEXT = dict(width=32, depth=2, mlp=128, vocab=49408, context=77, embed=32)
PROMPT_CHANNELS = (1, 4, 8, 16, 32, 64)  # the real model: 1, 4, 16, 64, 256, 1024
N_BASE_PROMPTS = 9

# name -> vision tower, text tower, prompt-learner channels, LLM dims (None: the tiny LLM), LLM vocab (None: the
# tiny tokenizer's 600 + 1), LoRA rank, LLM weight dtype, most bytes per Vicuna shard (None: one pytorch_model.bin)
SHAPES = {
    "tiny": dict(vision=VISION, text=TEXT, prompt=PROMPT_CHANNELS, llm=None, vocab=None, rank=4, dtype="float32", shard=None),
    "small": dict(
        vision=dict(width=256, depth=8, mlp=1024, patch=14, grid=16, embed=256),
        text=dict(width=256, depth=4, mlp=1024, vocab=49408, context=77, embed=256),
        prompt=(1, 4, 16, 64, 128, 256),
        llm=dict(hidden_size=1024, num_hidden_layers=8, num_attention_heads=16, intermediate_size=2816),
        vocab=32001, rank=32, dtype="float16", shard=200 << 20,
    ),
    "real": dict(
        vision=dict(width=1280, depth=32, mlp=5120, patch=14, grid=16, embed=1024),
        text=dict(width=1024, depth=24, mlp=4096, vocab=49408, context=77, embed=1024),
        prompt=(1, 4, 16, 64, 256, 1024),
        llm=dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, intermediate_size=11008),
        vocab=32001, rank=32, dtype="float16", shard=2 << 30,
    ),
}  # fmt: skip


def _ln(g: torch.Generator, d: int, prefix: str) -> dict[str, torch.Tensor]:
    return {prefix + "weight": 1.0 + 0.1 * torch.randn(d, generator=g), prefix + "bias": 0.02 * torch.randn(d, generator=g)}


def _rand(g: torch.Generator, *shape: int, std: float = 0.02) -> torch.Tensor:
    return std * torch.randn(*shape, generator=g)


def _blocks(g: torch.Generator, prefix: str, depth: int, d: int, mlp: int) -> dict[str, torch.Tensor]:
    s: dict[str, torch.Tensor] = {}
    for i in range(depth):
        b = f"{prefix}{i}."
        s |= {
            b + "attn.in_proj_weight": _rand(g, 3 * d, d, std=d**-0.5),
            b + "attn.in_proj_bias": _rand(g, 3 * d),
            b + "attn.out_proj.weight": _rand(g, d, d, std=d**-0.5),
            b + "attn.out_proj.bias": _rand(g, d),
            **_ln(g, d, b + "norm_1."),
            **_ln(g, d, b + "norm_2."),
            b + "mlp.fc1.weight": _rand(g, mlp, d, std=d**-0.5),
            b + "mlp.fc1.bias": _rand(g, mlp),
            b + "mlp.fc2.weight": _rand(g, d, mlp, std=mlp**-0.5),
            b + "mlp.fc2.bias": _rand(g, d),
        }
    return s


def imagebind_state(g: torch.Generator, v: dict = VISION, t: dict = TEXT) -> dict[str, torch.Tensor]:
    d, n_pos = v["width"], v["grid"] ** 2 + 1
    s = {
        "modality_preprocessors.vision.rgbt_stem.proj.1.weight": _rand(g, d, 3, 2, v["patch"], v["patch"], std=0.05),
        "modality_preprocessors.vision.cls_token": _rand(g, 1, 1, d, std=0.5),
        "modality_preprocessors.vision.pos_embedding_helper.pos_embed": _rand(g, 1, n_pos, d, std=0.5),
        **_ln(g, d, "modality_trunks.vision.pre_transformer_layer.0."),
        **_blocks(g, "modality_trunks.vision.blocks.", v["depth"], d, v["mlp"]),
        **_ln(g, d, "modality_heads.vision.0."),
        "modality_heads.vision.2.weight": _rand(g, v["embed"], d, std=d**-0.5),
    }
    dt = t["width"]
    s |= {
        "modality_preprocessors.text.token_embedding.weight": _rand(g, t["vocab"], dt, std=0.5),
        "modality_preprocessors.text.pos_embed": _rand(g, 1, t["context"], dt, std=0.1),
        "modality_preprocessors.text.mask": torch.full((t["context"], t["context"]), float("-inf")).triu_(1),
        **_blocks(g, "modality_trunks.text.blocks.", t["depth"], dt, t["mlp"]),
        **_ln(g, dt, "modality_heads.text.proj.0."),
        "modality_heads.text.proj.1.weight": _rand(g, t["embed"], dt, std=dt**-0.5),
        "modality_postprocessors.text.1.log_logit_scale": torch.tensor(2.6592),
    }
    # imagebind_huge.pth carries all six modalities; a few audio keys make sure loaders ignore the others.
    s |= {"modality_preprocessors.audio.cls_token": _rand(g, 1, 1, 16), "modality_heads.audio.0.weight": torch.ones(16)}
    return s


def anomalygpt_state(
    g: torch.Generator, llm_hidden: int, v: dict = VISION, t: dict = TEXT, prompt: tuple = PROMPT_CHANNELS
) -> dict[str, torch.Tensor]:
    s: dict[str, torch.Tensor] = {}
    for k in range(4):
        s[f"image_decoder.fc.{k}.weight"] = _rand(g, t["embed"], v["width"], std=v["width"] ** -0.5)
        s[f"image_decoder.fc.{k}.bias"] = _rand(g, t["embed"])
    chans = (*prompt, llm_hidden)
    for j, i in enumerate(PROMPT_CONVS):
        c_in, c_out = chans[j], chans[j + 1]
        k = 5 if i == PROMPT_CONVS[-1] else 3
        s[f"prompt_learner.meta_net.{i}.weight"] = _rand(g, c_out, c_in, k, k, std=(2.0 / (c_in * k * k)) ** 0.5)
        s[f"prompt_learner.meta_net.{i}.bias"] = _rand(g, c_out)
    s["prompt_learner.base_prompts"] = torch.randn(N_BASE_PROMPTS, llm_hidden, generator=g)
    return s


def make_tiny(out: str | Path, seed: int = 0, progress=print, shape: str = "tiny") -> Path:
    from export.tiny_llm import write_tiny_pandagpt, write_tiny_vicuna

    if shape not in SHAPES:
        raise ValueError(f"shape {shape!r}: one of {', '.join(SHAPES)}")
    sh = SHAPES[shape]
    out = Path(out)
    g = torch.Generator().manual_seed(seed)
    (out / IMAGEBIND).parent.mkdir(parents=True, exist_ok=True)
    state = imagebind_state(g, sh["vision"], sh["text"])
    torch.save(state, out / IMAGEBIND)
    del state  # the real tower is 4 GB in fp32: one state in memory at a time
    progress(f"wrote {out / IMAGEBIND}")
    llm_cfg = write_tiny_vicuna(
        out / VICUNA, seed=seed, vocab_size=sh["vocab"], dtype=sh["dtype"], shard_bytes=sh["shard"], **(sh["llm"] or {})
    )
    progress(f"wrote {out / VICUNA}/")
    hidden, layers = llm_cfg["hidden_size"], llm_cfg["num_hidden_layers"]
    (out / PANDAGPT).parent.mkdir(parents=True, exist_ok=True)
    write_tiny_pandagpt(
        out / PANDAGPT, llm_hidden=hidden, llm_layers=layers, embed_dim=sh["vision"]["embed"], seed=seed, rank=sh["rank"]
    )
    progress(f"wrote {out / PANDAGPT}")
    (out / ANOMALYGPT).parent.mkdir(parents=True, exist_ok=True)
    torch.save(anomalygpt_state(g, hidden, sh["vision"], sh["text"], sh["prompt"]), out / ANOMALYGPT)
    progress(f"wrote {out / ANOMALYGPT}")
    return out


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("out", type=Path, help="folder to write imagebind_ckpt/, vicuna_ckpt/, pandagpt_ckpt/, anomalygpt_ckpt/ into")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--shape",
        choices=list(SHAPES),
        default="tiny",
        help="tiny: the test fixtures (~30 MB); small: scaled-down towers, real vocab and LoRA rank (~1 GB); "
        "real: ImageBind-Huge + Vicuna-7B v0 shapes, writes ~19 GB, needs ~16 GB RAM, takes minutes",
    )


def run(args: argparse.Namespace) -> int:
    make_tiny(args.out, seed=args.seed, shape=args.shape)
    return 0
