"""The Vicuna HF folder read strictly, and the PandaGPT LoRA merged into it one tensor at a time.

Shared by the GGUF writer (which streams merged tensors) and the transformers reference (llm_export.py).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from export.checkpoints import LORA_TARGETS, PandaGptDelta, _listing
from runtime.errors import AgptError

IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)  # buffers old transformers versions saved into Vicuna v0 shards

# --------------------------------------------------------------------------------------------------
# Vicuna HF folder, strictly


@dataclass
class LlamaShape:
    vocab: int
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    inter: int
    eps: float
    rope_theta: float
    context: int

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


def llama_expected(s: LlamaShape) -> dict[str, tuple[int, ...]]:
    """Every key of a LlamaForCausalLM state dict with its shape."""
    kv = s.kv_heads * s.head_dim
    keys: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (s.vocab, s.hidden)}
    for i in range(s.layers):
        p = f"model.layers.{i}."
        keys |= {
            p + "self_attn.q_proj.weight": (s.hidden, s.hidden),
            p + "self_attn.k_proj.weight": (kv, s.hidden),
            p + "self_attn.v_proj.weight": (kv, s.hidden),
            p + "self_attn.o_proj.weight": (s.hidden, s.hidden),
            p + "mlp.gate_proj.weight": (s.inter, s.hidden),
            p + "mlp.up_proj.weight": (s.inter, s.hidden),
            p + "mlp.down_proj.weight": (s.hidden, s.inter),
            p + "input_layernorm.weight": (s.hidden,),
            p + "post_attention_layernorm.weight": (s.hidden,),
        }
    keys["model.norm.weight"] = (s.hidden,)
    keys["lm_head.weight"] = (s.vocab, s.hidden)
    return keys


class VicunaSource:
    """A checked Vicuna folder: config, tokenizer path, and lazy fp32 access to each tensor by name."""

    def __init__(
        self,
        dir: Path,
        config: dict,
        shape: LlamaShape,
        tokenizer: Path,
        n_pieces: int,
        getters: dict[str, Callable[[], torch.Tensor]],
    ):
        self.dir, self.config, self.shape, self.tokenizer, self.n_pieces = dir, config, shape, tokenizer, n_pieces
        self._get = getters

    def tensor(self, name: str) -> torch.Tensor:
        """One tensor as a fresh fp32 copy (the shard itself stays memory-mapped)."""
        return self._get[name]().to(torch.float32, copy=True)

    def sentencepiece(self):
        import sentencepiece as spm

        return spm.SentencePieceProcessor(model_file=str(self.tokenizer))


def _weight_files(dir: Path) -> list[Path]:
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        ip = dir / index
        if ip.is_file():
            try:
                files = sorted(set(json.loads(ip.read_text())["weight_map"].values()))
            except (OSError, ValueError, KeyError, AttributeError) as e:
                raise AgptError(f"{ip}: unreadable shard index ({e})") from None
            missing = [f for f in files if not (dir / f).is_file()]
            if missing:
                raise AgptError(f"{ip}: names shards that are not in the folder: {', '.join(missing)}")
            return [dir / f for f in files]
    for pattern in ("model.safetensors", "model-*.safetensors", "pytorch_model.bin", "pytorch_model-*.bin"):
        found = sorted(dir.glob(pattern))
        if found:
            return found
    raise AgptError(f"{dir}: no weights (expected pytorch_model*.bin or *.safetensors, with an index json when sharded)")


def _open_shard(path: Path) -> dict[str, tuple[tuple[int, ...], Callable[[], torch.Tensor]]]:
    """name -> (shape, loader) without reading the tensor data."""
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            f = safe_open(str(path), framework="pt")
            return {k: (tuple(f.get_slice(k).get_shape()), (lambda k=k: f.get_tensor(k))) for k in f.keys()}
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):
                raise
            # pre-1.6 (non-zip) pickles cannot be mapped: this shard is read into RAM, once
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        first = (str(e).strip().splitlines() or [e.__class__.__name__])[0][:200]
        raise AgptError(f"{path}: not a readable weight shard ({first})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise AgptError(f"{path}: expected a flat dict of tensors, found {type(state).__name__}")
    return {k: (tuple(v.shape), (lambda v=v: v)) for k, v in state.items()}


def _shape_from_config(config: dict, path: Path) -> LlamaShape:
    try:
        heads = int(config["num_attention_heads"])
        return LlamaShape(
            vocab=int(config["vocab_size"]),
            hidden=int(config["hidden_size"]),
            layers=int(config["num_hidden_layers"]),
            heads=heads,
            kv_heads=int(config.get("num_key_value_heads") or heads),
            inter=int(config["intermediate_size"]),
            eps=float(config.get("rms_norm_eps", 1e-6)),
            rope_theta=float(config.get("rope_theta", 10000.0)),
            context=int(config.get("max_position_embeddings", 2048)),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise AgptError(f"{path}: not a LLaMA config ({e.__class__.__name__}: {e})") from None


def load_vicuna(dir: str | Path, max_vocab_pad: int = 1) -> VicunaSource:
    """Check a Vicuna HF folder completely, reading no tensor data.

    config.json's vocab may exceed tokenizer.model's by up to `max_vocab_pad` rows (Vicuna v0: 32001 vs
    32000, a pad added to the embedding only). Every LlamaForCausalLM key must be present exactly once
    across the shards, with its shape; nothing unexpected (old rotary buffers excepted).
    """
    dir = Path(dir)
    if not dir.is_dir():
        raise AgptError(f"{dir}: no such folder (expected the Vicuna-7B v0 HF folder, vicuna_ckpt/)")
    cpath, tpath = dir / "config.json", dir / "tokenizer.model"
    if not cpath.is_file():
        raise AgptError(f"{cpath}: missing (expected a LlamaForCausalLM HF folder)")
    try:
        config = json.loads(cpath.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise AgptError(f"{cpath}: unreadable ({e})") from None
    if not isinstance(config, dict) or (
        config.get("model_type") != "llama" and "LlamaForCausalLM" not in (config.get("architectures") or [])
    ):
        raise AgptError(
            f"{cpath}: not a LLaMA model config (model_type {config.get('model_type') if isinstance(config, dict) else None!r})"
        )
    shape = _shape_from_config(config, cpath)
    if shape.hidden % shape.heads or shape.heads % shape.kv_heads:
        raise AgptError(f"{cpath}: hidden_size {shape.hidden} / heads {shape.heads} / kv heads {shape.kv_heads} do not divide")
    if not tpath.is_file():
        raise AgptError(f"{tpath}: missing (the SentencePiece model of the LLM)")
    import sentencepiece as spm

    try:
        n_pieces = spm.SentencePieceProcessor(model_file=str(tpath)).get_piece_size()
    except Exception as e:
        raise AgptError(f"{tpath}: not a SentencePiece model ({str(e)[:200]})") from None
    if not n_pieces <= shape.vocab <= n_pieces + max_vocab_pad:
        raise AgptError(
            f"{cpath}: vocab_size {shape.vocab} does not fit tokenizer.model's {n_pieces} pieces "
            f"(expected {n_pieces} or {n_pieces + 1}): config and tokenizer come from different models"
        )
    shapes: dict[str, tuple[int, ...]] = {}
    getters: dict[str, Callable[[], torch.Tensor]] = {}
    for f in _weight_files(dir):
        for k, (shp, get) in _open_shard(f).items():
            if k.endswith(IGNORED_SUFFIXES):
                continue
            if k in shapes:
                raise AgptError(f"{f}: key {k} appears in more than one shard")
            shapes[k], getters[k] = shp, get
    expected = llama_expected(shape)
    missing, unexpected = expected.keys() - shapes.keys(), shapes.keys() - expected.keys()
    bad = [f"{k} {shapes[k]} != {expected[k]}" for k in expected.keys() & shapes.keys() if shapes[k] != expected[k]]
    problems = [
        f"{what}: {_listing(ks, n)}"
        for what, ks, n in (("missing keys", missing, 8), ("unexpected keys", unexpected, 8), ("mis-shaped keys", bad, 4))
        if ks
    ]
    if problems:
        raise AgptError(f"{dir}: not the LlamaForCausalLM that config.json describes: " + "; ".join(problems))
    return VicunaSource(dir, config, shape, tpath, n_pieces, getters)


def check_delta(src: VicunaSource, delta: PandaGptDelta, where: Path | str) -> None:
    """The LoRA must cover exactly this LLM's layers and width."""
    s = src.shape
    if len(delta.lora) != s.layers:
        raise AgptError(f"{where}: LoRA for {len(delta.lora)} layers, the LLM in {src.dir} has {s.layers}")
    a, _ = delta.lora[0]["q_proj"]
    if a.shape[1] != s.hidden or delta.llama_proj_weight.shape[0] != s.hidden:
        raise AgptError(f"{where}: LoRA/llama_proj width {a.shape[1]}, the LLM in {src.dir} is {s.hidden} wide")
    if s.kv_heads != s.heads:  # LLaMA-1/Vicuna v0 has none; the LoRA B of k/v would be narrower
        kv = s.kv_heads * s.head_dim
        for t in ("k_proj", "v_proj"):
            if delta.lora[0][t][1].shape[0] != kv:
                raise AgptError(f"{where}: LoRA {t} B rows {delta.lora[0][t][1].shape[0]} != {kv}")


# --------------------------------------------------------------------------------------------------
# LoRA


def merge_lora(w: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scale: float) -> torch.Tensor:
    """W' = W + scale * B @ A, in fp32 (peft's merge; PandaGPT's scale alpha/r = 1)."""
    return w.float() + scale * (b.float() @ a.float())


class LoraLinear(torch.nn.Module):
    """peft's unmerged forward at inference: W x + scale * B (A x) (dropout is off in eval)."""

    def __init__(self, base: torch.nn.Linear, a: torch.Tensor, b: torch.Tensor, scale: float):
        super().__init__()
        self.base = base
        self.lora_a = torch.nn.Parameter(a.float().clone(), requires_grad=False)
        self.lora_b = torch.nn.Parameter(b.float().clone(), requires_grad=False)
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.scale * ((x @ self.lora_a.T) @ self.lora_b.T)


def merged_tensor(src: VicunaSource, delta: PandaGptDelta | None, name: str) -> torch.Tensor:
    """A state-dict tensor in fp32, with the LoRA merged in for the attention projections."""
    w = src.tensor(name)
    if delta is not None and ".self_attn." in name:
        layer = int(name.split(".")[2])
        target = name.split(".")[4]
        if target in LORA_TARGETS:
            a, b = delta.lora[layer][target]
            w = merge_lora(w, a, b, delta.scale)
    return w
