"""Tiny Vicuna v0 and PandaGPT delta in the official formats (HF folder, peft LoRA keys), random weights.

The tokenizer is a real SentencePiece BPE model trained here, offline and deterministically, with the
LLaMA-1 trainer settings that change token ids (byte fallback, dummy prefix, kept whitespace, split
digits, unk/bos/eos = 0/1/2), on the strings AnomalyGPT actually feeds its LLM. So the export, the GGUF
vocabulary and llama.cpp's tokenizer are exercised exactly as with the real 32000-piece model.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import torch

from export.checkpoints import LORA_PREFIX, LORA_TARGETS
from export.llm_export import LAYOUT_PIECES

VOCAB_PIECES = 600  # SentencePiece size; config.json says one more (the Vicuna v0 added pad)
LLM = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=172)
LORA_RANK = 4

_PRODUCTS = {
    "bottle": "round, without any damage, flaw, defect, scratch, hole or broken part",
    "cable": "three cables with green, blue and grey insulation, without any damage or defect",
    "capsule": "a black and orange capsule with the print 500, without any flaw or defect",
    "carpet": "a uniform woven texture, without any cut, hole, stain or color defect",
    "grid": "a regular metal grid, without any bent, broken or glued part",
    "hazelnut": "a whole hazelnut, without any crack, cut, hole or print",
    "leather": "a smooth leather surface, without any cut, fold, glue or poke",
    "metal_nut": "a metal nut, without any bend, color defect, flip or scratch",
    "pill": "a white pill with red spots, without any crack, contamination or scratch",
    "screw": "a screw with a sharp thread, without any damaged tip or thread",
    "tile": "a gray tile, without any crack, glue, oil or rough area",
    "toothbrush": "a toothbrush with straight bristles, without any defect",
    "transistor": "a transistor with three straight leads, without any bent or cut lead",
    "wood": "a wooden surface, without any hole, liquid, scratch or color defect",
    "zipper": "a zipper with regular teeth, without any broken teeth or fabric defect",
    "cookie": "a round golden cookie with chocolate chips, without any crack, hole, burn or missing part",
    "candle": "four white candles, without any wax melt, damage or foreign particle",
    "pcb": "a green printed circuit board, without any bent, burnt, missing or scratched part",
    "macaroni": "four macaroni pieces, without any crack, hole or color spot",
}
_POSITIONS = ("top left", "top", "top right", "left", "center", "right", "bottom left", "bottom", "bottom right")
_QUESTIONS = (
    "Is there any anomaly in the image?",
    "Where is the anomaly?",
    "What is the defect, and where is it?",
    "Describe the image in detail.",
    "How many anomalies are there? Answer with a number from 0 to 9.",
)
_FILLER = (
    "The quick brown fox jumps over the lazy dog while 12 workers check 345 parts per hour.",
    "Quality control on the factory line inspects every product with a camera and a language model.",
    "Please answer briefly: yes or no, then the position of the defect in the picture.",
    "Numbers 0 1 2 3 4 5 6 7 8 9 10 100 2024; symbols # ## ### : ; , . ? ! ( ) [ ] < > / - _ ' \" @ % & * + =.",
    "Über naïve café: a few accented letters keep byte fallback honest.",
)


def corpus() -> list[str]:
    """Deterministic training text: AnomalyGPT prompts, every trained answer form, multi-turn chats."""
    lines: list[str] = []
    no = "No, there is no anomaly in the image."
    for name, desc in _PRODUCTS.items():
        q = f"This is a photo of a {name.replace('_', ' ')} for anomaly detection, which should be {desc}. {_QUESTIONS[0]}"
        lines.append(f"### Human: <Img></Img> {q}\n### Assistant: {no}\n###")
        for i, pos in enumerate(_POSITIONS):
            yes = f"Yes, there is an anomaly in the image, at the {pos} of the image."
            other = _POSITIONS[(i + 4) % 9]
            two = f"Yes, there are 2 anomalies in the image, they are at the {pos} and {other} of the image."
            lines.append(f"### Human: <Img></Img> {q}\n### Assistant: {yes}\n###")
            lines.append(
                f"### Human: <Img></Img> {q}\n### Assistant: {two}\n### Human: {_QUESTIONS[i % 5]}\n### Assistant: {yes}\n###"
            )
            lines.append(
                f"### Human: <Img></Img> {q}\n### Assistant: {no}\n### Human: {_QUESTIONS[(i + 1) % 5]}\n### Assistant: {no}\n###"
            )
    return lines + list(_FILLER)


def train_tokenizer(vocab_size: int = VOCAB_PIECES) -> bytes:
    """SentencePiece BPE model bytes, LLaMA-1 trainer settings; identical bytes on every run (1 thread)."""
    import sentencepiece as spm

    out = io.BytesIO()
    spm.SentencePieceTrainer.train(
        # one sentence per line, as SentencePiece reads its files: '\n' never becomes a piece and falls back
        # to the byte <0x0A>, so '\n###' tokenizes to <0x0A> '##' '#' as in LLaMA (the '##' stop token)
        sentence_iterator=iter([line for text in corpus() for line in text.split("\n") if line]),
        model_writer=out,
        model_type="bpe",
        vocab_size=vocab_size,
        byte_fallback=True,
        add_dummy_prefix=True,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        split_digits=True,
        allow_whitespace_only_pieces=True,
        character_coverage=1.0,
        max_sentencepiece_length=16,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        num_threads=1,
        shuffle_input_sentence=False,
        minloglevel=2,
    )
    model = out.getvalue()
    sp = spm.SentencePieceProcessor(model_proto=model)
    missing = [p for p in LAYOUT_PIECES if sp.piece_to_id(p) == sp.unk_id()]
    if missing:  # the layout needs them; a corpus change that loses one must fail here, not in a test far away
        raise RuntimeError(f"tiny tokenizer lacks pieces {missing}")
    return model


def _llama_state(
    g: torch.Generator, vocab: int, hidden: int, layers: int, inter: int, kv: int | None = None
) -> dict[str, torch.Tensor]:
    return dict(_llama_tensors(g, vocab, hidden, layers, inter, kv))


def _llama_tensors(g: torch.Generator, vocab: int, hidden: int, layers: int, inter: int, kv: int | None = None):
    """(name, tensor) in HF order, made one at a time (the same draws, in the same order, as always).
    kv: the k/v projections' width (kv_heads * head_dim); the hidden size without GQA."""
    kv = kv or hidden

    def rand(*shape: int, std: float = 0.02) -> torch.Tensor:
        return std * torch.randn(*shape, generator=g)

    def norm() -> torch.Tensor:  # not all ones, so a swapped or dropped norm shows in the logits
        return 1.0 + 0.1 * torch.randn(hidden, generator=g)

    yield "model.embed_tokens.weight", rand(vocab, hidden)
    for i in range(layers):
        p = f"model.layers.{i}."
        yield p + "self_attn.q_proj.weight", rand(hidden, hidden, std=hidden**-0.5)
        yield p + "self_attn.k_proj.weight", rand(kv, hidden, std=hidden**-0.5)
        yield p + "self_attn.v_proj.weight", rand(kv, hidden, std=hidden**-0.5)
        yield p + "self_attn.o_proj.weight", rand(hidden, hidden, std=hidden**-0.5)
        yield p + "mlp.gate_proj.weight", rand(inter, hidden, std=hidden**-0.5)
        yield p + "mlp.up_proj.weight", rand(inter, hidden, std=hidden**-0.5)
        yield p + "mlp.down_proj.weight", rand(hidden, inter, std=inter**-0.5)
        yield p + "input_layernorm.weight", norm()
        yield p + "post_attention_layernorm.weight", norm()
    yield "model.norm.weight", norm()
    yield "lm_head.weight", rand(vocab, hidden, std=hidden**-0.5)


def llama_config(
    vocab_size: int,
    hidden_size: int,
    num_hidden_layers: int,
    num_attention_heads: int,
    intermediate_size: int,
    num_key_value_heads: int | None = None,
) -> dict:
    """config.json as the Vicuna v0 folders have it (LLaMA-1: no GQA, rope base 10000, eps 1e-6).
    num_key_value_heads < num_attention_heads makes a GQA model (LLaMA-2-70B style), for the writer's tests."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_act": "silu",
        "hidden_size": hidden_size,
        "intermediate_size": intermediate_size,
        "num_attention_heads": num_attention_heads,
        "num_hidden_layers": num_hidden_layers,
        "num_key_value_heads": num_key_value_heads or num_attention_heads,
        "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "initializer_range": 0.02,
        "tie_word_embeddings": False,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 0,
        "torch_dtype": "float32",
        "use_cache": True,
        "vocab_size": vocab_size,
    }


def pad_tokenizer(model: bytes, n_pieces: int) -> bytes:
    """The tokenizer grown to n_pieces with UNUSED pieces, one private-use character each: no text ever
    contains them, so every id and every tokenization of the trained pieces stays as it was."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    proto = pb.ModelProto()
    proto.ParseFromString(model)
    for i in range(n_pieces - len(proto.pieces)):
        p = proto.pieces.add()
        p.piece, p.score, p.type = chr(0xF0000 + i), -1e4, pb.ModelProto.SentencePiece.UNUSED
    return proto.SerializeToString()


def write_tiny_vicuna(
    dir: Path,
    seed: int = 0,
    *,
    vocab_size: int | None = None,
    dtype: str = "float32",
    shard_bytes: int | None = None,
    kv_heads: int | None = None,
    **shape: int,
) -> dict:
    """A Vicuna-v0-style HF folder; returns its config. `vocab_size`/`shape` override sizes (benchmarks): a
    vocab_size past the tiny tokenizer's pieces grows the tokenizer to vocab_size - 1 pieces (+1 config-only
    pad, as Vicuna v0). dtype: the weights' type (the released folder is float16); shard_bytes: split into
    pytorch_model-0000i-of-0000n.bin + pytorch_model.bin.index.json as the released folder is. kv_heads below
    the head count gives k/v projections shared by groups of query heads (GQA)."""
    dir = Path(dir)
    dir.mkdir(parents=True, exist_ok=True)
    model = train_tokenizer()
    if vocab_size is not None and vocab_size - 1 > _n_pieces(model):
        model = pad_tokenizer(model, vocab_size - 1)
    (dir / "tokenizer.model").write_bytes(model)
    n_pieces = _n_pieces(model)
    dims = {**LLM, **shape}
    heads = dims["num_attention_heads"]
    if kv_heads is not None and (kv_heads < 1 or heads % kv_heads):
        raise ValueError(f"kv_heads {kv_heads} must divide the {heads} attention heads")
    # +1: the pad Vicuna v0 added to the config only
    cfg = llama_config(vocab_size or n_pieces + 1, **dims, num_key_value_heads=kv_heads)
    cfg["torch_dtype"] = dtype
    (dir / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    (dir / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "LlamaTokenizer",
                "add_bos_token": True,
                "add_eos_token": False,
                "model_max_length": 2048,
                "bos_token": "<s>",
                "eos_token": "</s>",
                "unk_token": "<unk>",
                "legacy": True,
            },
            indent=2,
        )
        + "\n"
    )
    (dir / "special_tokens_map.json").write_text(
        json.dumps({"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}, indent=2) + "\n"
    )
    g = torch.Generator().manual_seed(seed + 1000)
    kv = cfg["num_key_value_heads"] * (dims["hidden_size"] // heads)
    tensors = _llama_tensors(g, cfg["vocab_size"], dims["hidden_size"], dims["num_hidden_layers"], dims["intermediate_size"], kv)
    cast = getattr(torch, dtype)
    if shard_bytes is None:
        torch.save({k: t.to(cast) for k, t in tensors}, dir / "pytorch_model.bin")
        return cfg
    # shard by shard: only one shard's tensors in memory (the 7B weights are 13.5 GB in fp16)
    shard: dict[str, torch.Tensor] = {}
    files: list[dict[str, torch.Tensor]] = []  # key lists per shard, for the index
    size = total = 0

    def flush() -> None:
        torch.save(shard, dir / f"shard-{len(files) + 1:05d}.tmp")
        files.append(dict.fromkeys(shard))
        shard.clear()

    for k, t in tensors:
        t = t.to(cast)
        nbytes = t.numel() * t.element_size()
        if shard and size + nbytes > shard_bytes:
            flush()
            size = 0
        shard[k] = t
        size, total = size + nbytes, total + nbytes
    flush()
    n, weight_map = len(files), {}
    for i, keys in enumerate(files, start=1):
        name = f"pytorch_model-{i:05d}-of-{n:05d}.bin"
        (dir / f"shard-{i:05d}.tmp").rename(dir / name)
        weight_map |= dict.fromkeys(keys, name)
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (dir / "pytorch_model.bin.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return cfg


def _n_pieces(model: bytes) -> int:
    import sentencepiece as spm

    return spm.SentencePieceProcessor(model_proto=model).get_piece_size()


def pandagpt_state(
    llm_hidden: int, llm_layers: int, embed_dim: int, seed: int = 0, rank: int = LORA_RANK
) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed + 2000)
    s: dict[str, torch.Tensor] = {}
    for i in range(llm_layers):
        for t in LORA_TARGETS:
            p = f"{LORA_PREFIX}{i}.self_attn.{t}."
            s[p + "lora_A.default.weight"] = 0.1 * torch.randn(rank, llm_hidden, generator=g)
            # peft initialises B to zero; a trained delta is not, and a zero B would hide a broken merge
            s[p + "lora_B.default.weight"] = 0.1 * torch.randn(llm_hidden, rank, generator=g)
    s["llama_proj.weight"] = embed_dim**-0.5 * torch.randn(llm_hidden, embed_dim, generator=g)
    s["llama_proj.bias"] = 0.02 * torch.randn(llm_hidden, generator=g)
    return s


def write_tiny_pandagpt(
    path: Path, llm_hidden: int, llm_layers: int, embed_dim: int, seed: int = 0, rank: int = LORA_RANK
) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(pandagpt_state(llm_hidden, llm_layers, embed_dim, seed, rank), path)
