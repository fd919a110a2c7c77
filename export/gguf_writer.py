"""The project's own LLaMA GGUF writer, on top of the `gguf` package (which ships no HF converter).

Streaming: every tensor's name, shape and type is declared first (the header and tensor table come
before the data), then the tensors are produced one at a time -- read from the memory-mapped shard,
LoRA merged, permuted, cast -- written and freed. Peak RAM is one tensor (the 32001x4096 embedding).

Two details decide whether llama.cpp computes the same function as transformers:
- q_proj/k_proj rows are permuted (see `permute_qk`): HF LLaMA rotates half-split pairs (i, i+d/2),
  llama.cpp's LLaMA rope rotates adjacent pairs (2i, 2i+1). Without it position 0 still matches (no
  rotation there) and every later position is wrong.
- The vocabulary is SentencePiece's pieces, scores and types, in id order, padded to config.json's
  vocab with control pieces, and tokenizer.ggml.add_space_prefix=true (LLaMA's dummy prefix).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import gguf
import numpy as np
import torch

from export.checkpoints import PandaGptDelta
from export.vicuna import VicunaSource, merged_tensor

GGUF_FILE_TYPE = {"F32": gguf.LlamaFileType.ALL_F32, "F16": gguf.LlamaFileType.MOSTLY_F16}


def permute_qk(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """HF q/k rows (head, half, pair-index) -> llama.cpp's (head, pair-index, half) interleaving."""
    out, inp = w.shape
    return w.reshape(n_head, 2, out // n_head // 2, inp).swapaxes(1, 2).reshape(out, inp)


def vocab_entries(src: VicunaSource) -> tuple[list[bytes], list[float], list[int]]:
    """(pieces, scores, token types) in id order, padded to the config's vocab size."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    proto = pb.ModelProto()
    proto.ParseFromString(src.tokenizer.read_bytes())
    tokens = [p.piece.encode("utf-8") for p in proto.pieces]
    scores = [float(p.score) for p in proto.pieces]
    # SentencePiece's piece types are numbered as GGUF's token types: 1 normal, 2 unknown, 3 control,
    # 4 user-defined, 5 unused, 6 byte
    types = [int(p.type) for p in proto.pieces]
    for i in range(src.shape.vocab - len(tokens)):
        # Vicuna v0's config-only pad. Control: llama.cpp never matches it in text (a user-defined piece
        # would be matched even with parse_special off) and never prints it.
        tokens.append(b"<pad>" if i == 0 else f"<pad{i}>".encode())
        scores.append(-1000.0)
        types.append(int(gguf.TokenType.CONTROL))
    return tokens, scores, types


def tensor_plan(src: VicunaSource) -> list[tuple[str, str]]:
    """(GGUF name, HF name) in write order: embeddings, then layer by layer (the shards' order), head."""
    plan = [("token_embd.weight", "model.embed_tokens.weight")]
    for i in range(src.shape.layers):
        p, b = f"model.layers.{i}.", f"blk.{i}."
        plan += [
            (b + "attn_norm.weight", p + "input_layernorm.weight"),
            (b + "attn_q.weight", p + "self_attn.q_proj.weight"),
            (b + "attn_k.weight", p + "self_attn.k_proj.weight"),
            (b + "attn_v.weight", p + "self_attn.v_proj.weight"),
            (b + "attn_output.weight", p + "self_attn.o_proj.weight"),
            (b + "ffn_norm.weight", p + "post_attention_layernorm.weight"),
            (b + "ffn_gate.weight", p + "mlp.gate_proj.weight"),
            (b + "ffn_up.weight", p + "mlp.up_proj.weight"),
            (b + "ffn_down.weight", p + "mlp.down_proj.weight"),
        ]
    plan += [("output_norm.weight", "model.norm.weight"), ("output.weight", "lm_head.weight")]
    return plan


def gguf_tensors(
    src: VicunaSource, delta: PandaGptDelta | None, dtype: str, permute: bool = True
) -> Iterator[tuple[str, np.ndarray]]:
    """The GGUF tensors one by one, merged and laid out for llama.cpp."""
    s = src.shape
    for gname, hname in tensor_plan(src):
        w = merged_tensor(src, delta, hname)
        if permute and gname.endswith("attn_q.weight"):
            w = permute_qk(w, s.heads)
        elif permute and gname.endswith("attn_k.weight"):
            w = permute_qk(w, s.kv_heads)
        yield gname, np.ascontiguousarray(w.numpy().astype(_np_dtype(dtype, w.ndim), copy=False))
        del w


def _np_dtype(dtype: str, ndim: int) -> np.dtype:
    """Norms stay F32 (llama.cpp's converter does the same); matrices take the file's type."""
    return np.dtype(np.float16 if (dtype == "F16" and ndim == 2) else np.float32)


def write_llama_gguf(
    src: VicunaSource,
    delta: PandaGptDelta | None,
    path: Path,
    dtype: str = "F16",
    progress: Callable[[str], None] = print,
    permute: bool = True,
    name: str = "AnomalyGPT Vicuna-7B v0 + PandaGPT LoRA (merged)",
) -> Path:
    """Write a llama.cpp LLaMA GGUF of `src` with `delta` merged. dtype 'F32' or 'F16'.

    `permute=False` exists only for the test showing the permutation matters.
    """
    s = src.shape
    path = Path(path)
    w = gguf.GGUFWriter(path, "llama")
    w.add_name(name)
    w.add_context_length(s.context)
    w.add_embedding_length(s.hidden)
    w.add_block_count(s.layers)
    w.add_feed_forward_length(s.inter)
    w.add_rope_dimension_count(s.head_dim)
    w.add_head_count(s.heads)
    w.add_head_count_kv(s.kv_heads)
    w.add_layer_norm_rms_eps(s.eps)
    w.add_rope_freq_base(s.rope_theta)
    w.add_vocab_size(s.vocab)
    w.add_file_type(GGUF_FILE_TYPE[dtype])

    tokens, scores, types = vocab_entries(src)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(int(src.config.get("bos_token_id", 1)))
    w.add_eos_token_id(int(src.config.get("eos_token_id", 2)))
    w.add_unk_token_id(0)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    w.add_add_space_prefix(True)

    from export.vicuna import llama_expected

    expected = llama_expected(src.shape)
    for gname, hname in tensor_plan(src):
        shape = expected[hname]
        dt = _np_dtype(dtype, len(shape))
        w.add_tensor_info(gname, shape, dt, int(np.prod(shape)) * dt.itemsize)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    layer = -1
    for gname, arr in gguf_tensors(src, delta, dtype, permute):
        if gname.startswith("blk.") and int(gname.split(".")[1]) != layer:
            layer = int(gname.split(".")[1])
            progress(f"  layer {layer + 1}/{s.layers}")
        w.write_tensor_data(arr)  # must follow the declared order, which gguf_tensors does
        del arr
    w.close()
    return path
