"""Vicuna-7B v0 + PandaGPT LoRA -> one merged, quantised GGUF for llama.cpp (`agpt export llm`).

The merge is streamed one tensor at a time (the shards are memory-mapped), so a 7B export needs a few
hundred MB of RAM, not 27 GB. The GGUF is written by gguf_writer.py; llama.cpp quantises it.

Also here: the fp32 transformers reference of the same LLM (merged or with the LoRA applied on the
fly) and the reference greedy decoding rule, which the tests and the oracle compare llama.cpp against.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path

import torch

from export.checkpoints import LORA_TARGETS, PandaGptDelta, load_pandagpt
from export.vicuna import LoraLinear, check_delta, llama_expected, load_vicuna, merged_tensor
from runtime.errors import AgptError
from runtime.pipeline.bundle import LlmInfo, sha256_file
from runtime.pipeline.prompt import SEGMENT_BEFORE, SEGMENT_MIDDLE, PromptLayout

LAYOUT_PIECES = ("▁Yes", "▁No", "##")  # the verdict tokens and the reference's stop piece, looked up in the tokenizer

# llama.cpp file types (enum llama_ftype)
QUANTS = {"F32": 0, "F16": 1, "Q8_0": 7, "Q4_K_M": 15}
GGUF_NAME = "llm.gguf"


def quant_name(text: str) -> str:
    """The canonical spelling of a quantisation, any case ('f32', 'q4_k_m'): an argparse type too."""
    canon = {q.upper(): q for q in QUANTS}.get(str(text).strip().upper())
    if canon is None:
        raise AgptError(f"unknown quantisation {text!r}: choose one of {', '.join(QUANTS)} (any case)")
    return canon


def _quant_arg(text: str) -> str:
    try:
        return quant_name(text)
    except AgptError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def build_reference_llm(vicuna_dir: str | Path, delta: PandaGptDelta | None, merged: bool, max_vocab_pad: int = 1):
    """(LlamaForCausalLM in fp32, eval, eager attention; SentencePieceProcessor) for the oracle and tests.

    merged=False keeps W and applies the LoRA on the fly (what the reference runs); merged=True bakes it
    in (what the GGUF holds). The two agree to float rounding.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    src = load_vicuna(vicuna_dir, max_vocab_pad)
    if delta is not None:
        check_delta(src, delta, "PandaGPT delta")
    cfg = {k: v for k, v in src.config.items() if k not in ("architectures", "model_type", "torch_dtype", "transformers_version")}
    config = LlamaConfig(**cfg)
    config._attn_implementation = "eager"
    # Built on the meta device and filled by assignment: no random init, one copy of the weights in RAM
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    if not hasattr(model.model, "rotary_emb"):  # transformers < 4.45 keeps rotary buffers per layer
        model = LlamaForCausalLM(config)
    state = {k: (merged_tensor(src, delta if merged else None, k)) for k in llama_expected(src.shape)}
    model.load_state_dict(state, strict=True, assign=True)
    if model.model.rotary_emb.inv_freq.is_meta:  # a computed (non-persistent) buffer: compute it on the CPU
        model.model.rotary_emb = type(model.model.rotary_emb)(config=config)
    if delta is not None and not merged:
        for i, layer in enumerate(model.model.layers):
            for t in LORA_TARGETS:
                a, b = delta.lora[i][t]
                setattr(layer.self_attn, t, LoraLinear(getattr(layer.self_attn, t), a, b, delta.scale))
    model.float().eval()
    return model, src.sentencepiece()


# --------------------------------------------------------------------------------------------------
# Prompt layout and the reference decoding rule


def segment_ids(sp, text: str) -> list[int]:
    """One segment tokenized alone, no BOS/EOS: SentencePiece adds its dummy-prefix '▁' to each segment,
    exactly as the reference's llama_tokenizer(text, add_special_tokens=False) does."""
    return list(sp.encode(text))


def make_layout(sp) -> PromptLayout:
    """The fixed token ids of AnomalyGPT's conversation, from the LLM's own tokenizer.

    With the real LLaMA-1 tokenizer this gives before=[835, 12968, 29901, 529, 25518, 29958],
    middle=[1533, 25518, 29958, 29871], yes 3869, no 1939, stop ('##') 2277, bos 1, eos 2.
    """
    ids = {}
    for piece in LAYOUT_PIECES:
        i = sp.piece_to_id(piece)
        if i == sp.unk_id():
            raise AgptError(f"tokenizer has no piece {piece!r}: not a LLaMA/Vicuna SentencePiece model")
        ids[piece] = i
    if sp.bos_id() < 0 or sp.eos_id() < 0:
        raise AgptError("tokenizer has no BOS/EOS ids: not a LLaMA/Vicuna SentencePiece model")
    return PromptLayout(
        bos=[sp.bos_id()],
        before=segment_ids(sp, SEGMENT_BEFORE),
        middle=segment_ids(sp, SEGMENT_MIDDLE),
        yes_token=ids["▁Yes"],
        no_token=ids["▁No"],
        stop_token=ids["##"],
        eos_token=sp.eos_id(),
    )


def reference_inputs_embeds(model, layout: PromptLayout, img_embed, prompts, question_ids: list[int]) -> torch.Tensor:
    """(1, T, D): [bos][before][E_img][middle][P][question], as the reference concatenates them."""
    emb = model.get_input_embeddings()

    def tok(ids: list[int]) -> torch.Tensor:
        return emb(torch.tensor([ids], dtype=torch.long))

    img = torch.as_tensor(img_embed, dtype=torch.float32).reshape(1, -1, emb.embedding_dim)
    p = torch.as_tensor(prompts, dtype=torch.float32).reshape(1, -1, emb.embedding_dim)
    return torch.cat([tok(layout.bos + layout.before), img, tok(layout.middle), p, tok(question_ids)], dim=1)


@torch.no_grad()
def reference_generate(
    model, inputs_embeds: torch.Tensor, layout: PromptLayout, max_new_tokens: int | None = None
) -> tuple[list[int], torch.Tensor]:
    """transformers generate() from inputs_embeds with the reference's stop rule: stop once '##' (2277)
    or EOS is generated, else after max_new_tokens (512 in the reference).

    The reference samples with top_p 0.01 (greedy in effect); do_sample=False here. Returns every
    generated token, the stop token included (generate() from embeddings returns only new tokens), and
    the first step's raw logits (V,) fp32: the prefill a first-token verdict reads, not computed twice.
    """
    n = layout.max_new_tokens if max_new_tokens is None else max_new_tokens
    out = model.generate(
        inputs_embeds=inputs_embeds,
        attention_mask=torch.ones(inputs_embeds.shape[:2], dtype=torch.long),
        max_new_tokens=n,
        min_new_tokens=0,
        do_sample=False,
        num_beams=1,
        use_cache=True,
        eos_token_id=[layout.stop_token, layout.eos_token],
        pad_token_id=layout.eos_token,
        output_logits=True,
        return_dict_in_generate=True,
    )
    tokens = out.sequences[0].tolist()
    for i, t in enumerate(tokens):  # generate() pads nothing for one sequence; cut defensively at the stop
        if t in (layout.stop_token, layout.eos_token):
            tokens = tokens[: i + 1]
            break
    return tokens, out.logits[0][0].float()


def reference_greedy(model, inputs_embeds: torch.Tensor, layout: PromptLayout, max_new_tokens: int | None = None) -> list[int]:
    """The tokens of reference_generate()."""
    return reference_generate(model, inputs_embeds, layout, max_new_tokens)[0]


def reference_text(sp, tokens: list[int]) -> str:
    """The reference's llama_tokenizer.decode(outputs[0][:-2], skip_special_tokens=True): the last two
    generated tokens ('\\n' and '##' for a trained model) are always dropped. Ids beyond the
    SentencePiece model (the config-only pad) and control pieces are skipped as special."""
    keep = [t for t in tokens[:-2] if t < sp.get_piece_size() and not sp.is_control(t) and not sp.is_unknown(t)]
    return sp.decode(keep).strip()


# --------------------------------------------------------------------------------------------------
# Export


def quantize_gguf(src: Path, dst: Path, quant: str, n_threads: int | None = None) -> None:
    from runtime.pipeline.llama import last_log_line, llama_cpp_module

    llama_cpp = llama_cpp_module()  # its log goes to a buffer, not the console
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = QUANTS[quant]
    params.nthread = n_threads or os.cpu_count() or 1
    # Token embeddings stay Q8_0 (not Q4_K): the runtime looks question tokens up itself to decode a frame
    # as one batch (runtime/pipeline/gguf_tokens.py reads F32/F16/Q8_0), and Q8_0 is the more faithful table.
    # +65 MB on a 3.9 GB 7B Q4_K_M file.
    params.token_embedding_type = llama_cpp.GGML_TYPE_Q8_0
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), params)
    if rc != 0:
        raise AgptError(f"{dst}: llama.cpp could not quantize {src} to {quant} (code {rc}: {last_log_line()})")


def check_gguf_tokenizer(path: Path, sp, layout: PromptLayout) -> None:
    """llama.cpp tokenizes the questions at run time: it must give SentencePiece's ids for our segments."""
    from runtime.pipeline.llama import gguf_tokenize

    samples = [
        SEGMENT_BEFORE,
        SEGMENT_MIDDLE,
        "This is a photo of a bottle for anomaly detection. Is there any anomaly in the image?\n### Assistant:",
    ]
    for text in samples:
        ours, theirs = gguf_tokenize(path, text), segment_ids(sp, text)
        if ours != theirs:
            raise AgptError(f"{path}: llama.cpp tokenizes {text!r} as {ours}, SentencePiece as {theirs}")


def export_llm(
    vicuna_dir: str | Path,
    pandagpt_path: str | Path,
    out_dir: str | Path,
    quant: str = "Q4_K_M",
    progress: Callable[[str], None] = print,
    max_vocab_pad: int = 1,
) -> LlmInfo:
    """Merge, write, quantise: OUT/llm.gguf (+ OUT/llm.json, the LlmInfo for bundle.json). An OUT ending in
    .gguf is the file itself (its LlmInfo beside it, NAME.json)."""
    from export.gguf_writer import write_llama_gguf

    quant = quant_name(quant)
    src = load_vicuna(vicuna_dir, max_vocab_pad)
    delta = load_pandagpt(pandagpt_path)
    check_delta(src, delta, pandagpt_path)
    sp = src.sentencepiece()
    layout = make_layout(sp)
    out_dir, name = Path(out_dir), GGUF_NAME
    if out_dir.suffix.lower() == ".gguf":
        out_dir, name = out_dir.parent, out_dir.name
    out_dir.mkdir(parents=True, exist_ok=True)
    final, tmp = out_dir / name, out_dir / (name + ".tmp")
    direct = quant in ("F32", "F16")
    # Quantised files start from an F16 GGUF (the Vicuna weights are fp16 already; the merge is fp32)
    stage = tmp if direct else out_dir / "llm.f16.gguf.tmp"
    try:
        write_llama_gguf(src, delta, stage, "F32" if quant == "F32" else "F16", progress=progress)
        if not direct:
            progress(f"quantising to {quant} ...")
            quantize_gguf(stage, tmp, quant)
        check_gguf_tokenizer(tmp, sp, layout)
        os.replace(tmp, final)
    finally:
        for p in (tmp, out_dir / "llm.f16.gguf.tmp"):
            p.unlink(missing_ok=True)
    info = LlmInfo(
        file=name, sha256=sha256_file(final), quant=quant, n_embd=src.shape.hidden, n_vocab=src.shape.vocab, layout=layout
    )
    (out_dir / (Path(name).stem + ".json")).write_text(info.model_dump_json(indent=2) + "\n")
    progress(f"wrote {final} ({final.stat().st_size / 1e6:.1f} MB, {quant})")
    return info


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--vicuna", type=Path, required=True, help="Vicuna-7B v0 HF folder (vicuna_ckpt/)")
    p.add_argument("--pandagpt", type=Path, required=True, help="PandaGPT delta pytorch_model.pt (LoRA + llama_proj)")
    p.add_argument(
        "--out", type=Path, required=True, help="folder for llm.gguf and llm.json, or a NAME.gguf file (NAME.json beside it)"
    )
    p.add_argument(
        "--quant", type=_quant_arg, default="Q4_K_M", help=f"GGUF weight type, any case: {', '.join(QUANTS)} (default Q4_K_M)"
    )


def run(args: argparse.Namespace) -> int:
    info = export_llm(args.vicuna, args.pandagpt, args.out, args.quant)
    print(
        f"n_embd {info.n_embd}, n_vocab {info.n_vocab}, layout before={info.layout.before} middle={info.layout.middle} "
        f"yes={info.layout.yes_token} no={info.layout.no_token} stop={info.layout.stop_token}"
    )
    return 0
