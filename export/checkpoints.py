"""Strict loading of the official checkpoint files.

The reference code loads its deltas with strict=False and silently ignores mismatches (the cause of many
"garbage answer" reports). Here every missing, unexpected or mis-shaped key is an error naming the file.
Only plain tensors are unpickled (torch.load(weights_only=True)).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch

from runtime.errors import AgptError

# Where each real download lives under one --ckpt-dir (make-tiny writes the same layout).
IMAGEBIND = Path("imagebind_ckpt/imagebind_huge.pth")
VICUNA = Path("vicuna_ckpt")
PANDAGPT = Path("pandagpt_ckpt/pytorch_model.pt")
ANOMALYGPT = Path("anomalygpt_ckpt/pytorch_model.pt")

LORA_PREFIX = "llama_model.base_model.model.model.layers."
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
LORA_SCALE = 1.0  # PandaGPT: r=32, alpha=32; the scale is not stored in the file


def load_state(path: str | Path, what: str) -> dict[str, torch.Tensor]:
    """A flat {name: tensor} dict from a .pth/.pt file, or a one-line AgptError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise AgptError(f"{path}: no such file (expected {what})")
    try:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:  # files in torch's legacy (pre-zip) format cannot be memory-mapped
            if "mmap" not in str(e):
                raise
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, foreign pickle, not a torch file at all
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else e.__class__.__name__
        raise AgptError(f"{path}: not a readable PyTorch checkpoint ({first}); expected {what}") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise AgptError(f"{path}: expected a flat dict of tensors ({what}), found {type(state).__name__}")
    return state


def _listing(keys, limit: int = 8) -> str:
    keys = sorted(keys)
    more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def check_keys(
    state: dict[str, torch.Tensor], expected: dict[str, tuple[int, ...]], path: Path, what: str, prefixes: tuple[str, ...] = ()
) -> None:
    """Exact key accounting. With `prefixes`, only keys under them are checked (the rest of a multi-part file is ignored)."""
    present = {k for k in state if not prefixes or k.startswith(prefixes)}
    missing = expected.keys() - present
    unexpected = present - expected.keys()
    misshaped = [
        f"{k} {tuple(state[k].shape)} != {expected[k]}" for k in expected.keys() & present if tuple(state[k].shape) != expected[k]
    ]
    problems = []
    if missing:
        problems.append(f"missing keys: {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_listing(unexpected)}")
    if misshaped:
        problems.append(f"mis-shaped keys: {_listing(misshaped, 4)}")
    if problems:
        raise AgptError(f"{path}: not {what}: " + "; ".join(problems))


def _shape(state, key, path, what) -> tuple[int, ...]:
    if key not in state:
        raise AgptError(f"{path}: not {what}: missing key {key}")
    return tuple(state[key].shape)


def _count_blocks(state, prefix: str) -> int:
    pat = re.compile(re.escape(prefix) + r"(\d+)\.")
    ids = {int(m.group(1)) for k in state if (m := pat.match(k))}
    return max(ids) + 1 if ids else 0


def _block_keys(prefix: str, depth: int, d: int, mlp: int) -> dict[str, tuple[int, ...]]:
    keys: dict[str, tuple[int, ...]] = {}
    for i in range(depth):
        b = f"{prefix}{i}."
        keys |= {
            b + "attn.in_proj_weight": (3 * d, d),
            b + "attn.in_proj_bias": (3 * d,),
            b + "attn.out_proj.weight": (d, d),
            b + "attn.out_proj.bias": (d,),
            b + "norm_1.weight": (d,),
            b + "norm_1.bias": (d,),
            b + "norm_2.weight": (d,),
            b + "norm_2.bias": (d,),
            b + "mlp.fc1.weight": (mlp, d),
            b + "mlp.fc1.bias": (mlp,),
            b + "mlp.fc2.weight": (d, mlp),
            b + "mlp.fc2.bias": (d,),
        }
    return keys


@dataclass
class ImageBindParts:
    vision: dict[str, torch.Tensor]  # keys without the 'modality_*.vision.' prefixes are kept as in the file
    text: dict[str, torch.Tensor]


VISION_PREFIXES = (
    "modality_preprocessors.vision.",
    "modality_trunks.vision.",
    "modality_heads.vision.",
    "modality_postprocessors.vision.",
)
TEXT_PREFIXES = ("modality_preprocessors.text.", "modality_trunks.text.", "modality_heads.text.", "modality_postprocessors.text.")


def vision_expected(state, path, what="an ImageBind checkpoint") -> dict[str, tuple[int, ...]]:
    stem = _shape(state, "modality_preprocessors.vision.rgbt_stem.proj.1.weight", path, what)
    d, _, frames, ph, pw = stem
    n_pos = _shape(state, "modality_preprocessors.vision.pos_embedding_helper.pos_embed", path, what)[1]
    mlp = _shape(state, "modality_trunks.vision.blocks.0.mlp.fc1.weight", path, what)[0]
    out = _shape(state, "modality_heads.vision.2.weight", path, what)[0]
    depth = _count_blocks(state, "modality_trunks.vision.blocks.")
    return {
        "modality_preprocessors.vision.rgbt_stem.proj.1.weight": stem,
        "modality_preprocessors.vision.cls_token": (1, 1, d),
        "modality_preprocessors.vision.pos_embedding_helper.pos_embed": (1, n_pos, d),
        "modality_trunks.vision.pre_transformer_layer.0.weight": (d,),
        "modality_trunks.vision.pre_transformer_layer.0.bias": (d,),
        **_block_keys("modality_trunks.vision.blocks.", depth, d, mlp),
        "modality_heads.vision.0.weight": (d,),
        "modality_heads.vision.0.bias": (d,),
        "modality_heads.vision.2.weight": (out, d),
    }


def text_expected(state, path, what="an ImageBind checkpoint") -> dict[str, tuple[int, ...]]:
    vocab, d = _shape(state, "modality_preprocessors.text.token_embedding.weight", path, what)
    ctx = _shape(state, "modality_preprocessors.text.pos_embed", path, what)[1]
    mlp = _shape(state, "modality_trunks.text.blocks.0.mlp.fc1.weight", path, what)[0]
    out = _shape(state, "modality_heads.text.proj.1.weight", path, what)[0]
    depth = _count_blocks(state, "modality_trunks.text.blocks.")
    return {
        "modality_preprocessors.text.token_embedding.weight": (vocab, d),
        "modality_preprocessors.text.pos_embed": (1, ctx, d),
        "modality_preprocessors.text.mask": (ctx, ctx),
        **_block_keys("modality_trunks.text.blocks.", depth, d, mlp),
        "modality_heads.text.proj.0.weight": (d,),
        "modality_heads.text.proj.0.bias": (d,),
        "modality_heads.text.proj.1.weight": (out, d),
        "modality_postprocessors.text.1.log_logit_scale": (),
    }


def load_imagebind(path: str | Path, text: bool = True) -> ImageBindParts:
    """Vision (and text) parts of imagebind_huge.pth, accounted strictly; other modalities are ignored."""
    path = Path(path)
    what = "an ImageBind checkpoint (imagebind_huge.pth)"
    state = load_state(path, what)
    check_keys(state, vision_expected(state, path, what), path, what, VISION_PREFIXES)
    vision = {k: v for k, v in state.items() if k.startswith(VISION_PREFIXES)}
    text_part: dict[str, torch.Tensor] = {}
    if text:
        check_keys(state, text_expected(state, path, what), path, what, TEXT_PREFIXES)
        text_part = {k: v for k, v in state.items() if k.startswith(TEXT_PREFIXES)}
    return ImageBindParts(vision, text_part)


@dataclass
class PandaGptDelta:
    lora: dict[int, dict[str, tuple[torch.Tensor, torch.Tensor]]]  # layer -> target -> (A (r,in), B (out,r))
    llama_proj_weight: torch.Tensor  # (D, E)
    llama_proj_bias: torch.Tensor  # (D,)
    rank: int
    scale: float = LORA_SCALE


def load_pandagpt(path: str | Path) -> PandaGptDelta:
    path = Path(path)
    what = "a PandaGPT delta (LoRA + llama_proj, pytorch_model.pt)"
    state = load_state(path, what)
    w = _shape(state, "llama_proj.weight", path, what)
    a0 = _shape(state, LORA_PREFIX + "0.self_attn.q_proj.lora_A.default.weight", path, what)
    rank, hidden = a0
    if w[0] != hidden:
        raise AgptError(f"{path}: not {what}: llama_proj.weight {w} does not match LoRA width {hidden}")
    n_layers = _count_blocks(state, LORA_PREFIX)
    expected = {"llama_proj.weight": w, "llama_proj.bias": (w[0],)}
    for i in range(n_layers):
        for t in LORA_TARGETS:
            p = f"{LORA_PREFIX}{i}.self_attn.{t}."
            expected[p + "lora_A.default.weight"] = (rank, hidden)
            expected[p + "lora_B.default.weight"] = (hidden, rank)
    check_keys(state, expected, path, what)
    lora = {
        i: {
            t: (
                state[f"{LORA_PREFIX}{i}.self_attn.{t}.lora_A.default.weight"],
                state[f"{LORA_PREFIX}{i}.self_attn.{t}.lora_B.default.weight"],
            )
            for t in LORA_TARGETS
        }
        for i in range(n_layers)
    }
    return PandaGptDelta(lora, state["llama_proj.weight"], state["llama_proj.bias"], rank)


@dataclass
class AnomalyGptDelta:
    decoder: dict[str, torch.Tensor]  # fc.{k}.weight/bias
    prompt_learner: dict[str, torch.Tensor]  # base_prompts, meta_net.{i}.weight/bias


PROMPT_CONVS = (0, 3, 6, 9, 12, 15)


def load_anomalygpt(path: str | Path) -> AnomalyGptDelta:
    path = Path(path)
    what = "an AnomalyGPT delta (image_decoder + prompt_learner, pytorch_model.pt)"
    state = load_state(path, what)
    expected: dict[str, tuple[int, ...]] = {}
    for k in range(4):
        w = _shape(state, f"image_decoder.fc.{k}.weight", path, what)
        expected |= {f"image_decoder.fc.{k}.weight": w, f"image_decoder.fc.{k}.bias": (w[0],)}
    c_in = 1
    for i in PROMPT_CONVS:
        w = _shape(state, f"prompt_learner.meta_net.{i}.weight", path, what)
        if w[1] != c_in:
            raise AgptError(
                f"{path}: not {what}: prompt_learner.meta_net.{i}.weight {w} takes {w[1]} channels, previous layer gives {c_in}"
            )
        expected |= {f"prompt_learner.meta_net.{i}.weight": w, f"prompt_learner.meta_net.{i}.bias": (w[0],)}
        c_in = w[0]
    base = state.get("prompt_learner.base_prompts")
    n_base = base.shape[0] if base is not None and base.ndim == 2 else 9  # 9 in the released model
    expected["prompt_learner.base_prompts"] = (n_base, c_in)
    check_keys(state, expected, path, what)
    dec = {k.removeprefix("image_decoder."): v for k, v in state.items() if k.startswith("image_decoder.")}
    pl = {k.removeprefix("prompt_learner."): v for k, v in state.items() if k.startswith("prompt_learner.")}
    return AnomalyGptDelta(dec, pl)
