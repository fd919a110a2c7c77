"""`agpt export make-tiny OUT`: tiny random checkpoints in the official formats, key names and layout.

The loaders, exporters and runtime cannot tell these from the real downloads except by size, which is
the point: every test runs the real code paths. Seeded, so the same OUT is written every time.
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


def imagebind_state(g: torch.Generator) -> dict[str, torch.Tensor]:
    v, t = VISION, TEXT
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


def anomalygpt_state(g: torch.Generator, llm_hidden: int) -> dict[str, torch.Tensor]:
    v = VISION
    s: dict[str, torch.Tensor] = {}
    for k in range(4):
        s[f"image_decoder.fc.{k}.weight"] = _rand(g, TEXT["embed"], v["width"], std=v["width"] ** -0.5)
        s[f"image_decoder.fc.{k}.bias"] = _rand(g, TEXT["embed"])
    chans = (*PROMPT_CHANNELS, llm_hidden)
    for j, i in enumerate(PROMPT_CONVS):
        c_in, c_out = chans[j], chans[j + 1]
        k = 5 if i == PROMPT_CONVS[-1] else 3
        s[f"prompt_learner.meta_net.{i}.weight"] = _rand(g, c_out, c_in, k, k, std=(2.0 / (c_in * k * k)) ** 0.5)
        s[f"prompt_learner.meta_net.{i}.bias"] = _rand(g, c_out)
    s["prompt_learner.base_prompts"] = torch.randn(N_BASE_PROMPTS, llm_hidden, generator=g)
    return s


def make_tiny(out: str | Path, seed: int = 0, progress=print) -> Path:
    from export.tiny_llm import write_tiny_pandagpt, write_tiny_vicuna

    out = Path(out)
    g = torch.Generator().manual_seed(seed)
    (out / IMAGEBIND).parent.mkdir(parents=True, exist_ok=True)
    torch.save(imagebind_state(g), out / IMAGEBIND)
    progress(f"wrote {out / IMAGEBIND}")
    llm_cfg = write_tiny_vicuna(out / VICUNA, seed=seed)
    progress(f"wrote {out / VICUNA}/")
    hidden, layers = llm_cfg["hidden_size"], llm_cfg["num_hidden_layers"]
    (out / PANDAGPT).parent.mkdir(parents=True, exist_ok=True)
    write_tiny_pandagpt(out / PANDAGPT, llm_hidden=hidden, llm_layers=layers, embed_dim=VISION["embed"], seed=seed)
    progress(f"wrote {out / PANDAGPT}")
    (out / ANOMALYGPT).parent.mkdir(parents=True, exist_ok=True)
    torch.save(anomalygpt_state(g, hidden), out / ANOMALYGPT)
    progress(f"wrote {out / ANOMALYGPT}")
    return out


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("out", type=Path, help="folder to write imagebind_ckpt/, vicuna_ckpt/, pandagpt_ckpt/, anomalygpt_ckpt/ into")
    p.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    make_tiny(args.out, seed=args.seed)
    return 0
