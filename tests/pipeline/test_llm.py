"""LLM wing: tiny Vicuna + LoRA -> GGUF -> llama.cpp, compared with the fp32 transformers reference."""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import COOKIE_DESCRIPTION

from export.checkpoints import PANDAGPT, VICUNA, load_pandagpt
from export.llm_export import (
    add_arguments,
    build_reference_llm,
    export_llm,
    load_vicuna,
    make_layout,
    reference_greedy,
    reference_inputs_embeds,
    reference_text,
    run,
    segment_ids,
)
from export.tiny_llm import corpus, train_tokenizer, write_tiny_pandagpt, write_tiny_vicuna
from runtime.errors import AgptError
from runtime.pipeline.llama import gguf_tokenize
from runtime.pipeline.llm import FrameContext, LlmSession
from runtime.pipeline.prompt import SEGMENT_BEFORE, SEGMENT_MIDDLE, product_question, question_text

QUESTION = product_question(
    "This is a photo of a cookie for anomaly detection, which should be round, without any crack or hole."
)


@pytest.fixture(scope="module")
def parts(request, tmp_path_factory) -> tuple[Path, Path]:
    """(vicuna dir, pandagpt file): the lead's make-tiny output when the session fixture exists, else ours."""
    try:
        root = request.getfixturevalue("tiny_ckpt")
    except pytest.FixtureLookupError:
        root = tmp_path_factory.mktemp("llm_ckpt")
        cfg = write_tiny_vicuna(root / VICUNA)
        write_tiny_pandagpt(root / PANDAGPT, cfg["hidden_size"], cfg["num_hidden_layers"], embed_dim=32)
    return root / VICUNA, root / PANDAGPT


@pytest.fixture(scope="module")
def delta(parts):
    return load_pandagpt(parts[1])


@pytest.fixture(scope="module")
def ref(parts, delta):
    model, sp = build_reference_llm(parts[0], delta, merged=True)
    return model, sp, make_layout(sp)


@pytest.fixture(scope="module")
def f32(request, parts, tmp_path_factory):
    """(LlmInfo, F32 GGUF): the session's tiny bundle already holds this export of the same checkpoints."""
    try:
        from runtime.pipeline.bundle import load_bundle

        b = load_bundle(request.getfixturevalue("tiny_bundle"))
        return b.manifest.llm, b.path(b.manifest.llm)
    except pytest.FixtureLookupError:
        out = tmp_path_factory.mktemp("gguf_f32")
        return export_llm(parts[0], parts[1], out, "F32", progress=lambda s: None), out / "llm.gguf"


@pytest.fixture(scope="module")
def q4(parts, tmp_path_factory) -> Path:
    """The default export's quantisation, Q4_K_M, written once for this module."""
    out = tmp_path_factory.mktemp("gguf_q4")
    export_llm(parts[0], parts[1], out, "Q4_K_M", progress=lambda s: None)
    return out / "llm.gguf"


@pytest.fixture(scope="module")
def session(f32):
    info, path = f32
    with LlmSession(path, info.layout, n_ctx=512, n_threads=2, kv_f32=True, n_embd=info.n_embd) as s:
        yield s


def _frame(seed: int, d: int = 64):
    rng = np.random.default_rng(seed)
    # E_img and P rows of a scale comparable to the token embeddings' RMS-normalised inputs
    return rng.standard_normal((1, d)).astype(np.float32), rng.standard_normal((18, d)).astype(np.float32)


@torch.no_grad()
def _ref_logits(model, layout, img, p, text, sp) -> np.ndarray:
    e = reference_inputs_embeds(model, layout, img, p, segment_ids(sp, text))
    return model(inputs_embeds=e).logits[0].numpy()


# ------------------------------------------------------------------ tokenizer and layout


def test_tiny_tokenizer_is_llama_like_and_deterministic(parts):
    import sentencepiece as spm

    model = train_tokenizer()
    assert model == train_tokenizer() == (parts[0] / "tokenizer.model").read_bytes()
    sp = spm.SentencePieceProcessor(model_proto=model)
    assert (sp.unk_id(), sp.bos_id(), sp.eos_id(), sp.get_piece_size()) == (0, 1, 2, 600)
    # '\n' is not a piece: byte fallback, then '##' '#', the shape the reference's stop rule relies on
    pieces = [sp.id_to_piece(i) for i in sp.encode("image.\n###")]
    assert pieces[-3:] == ["<0x0A>", "##", "#"]
    assert [sp.id_to_piece(i).lstrip("▁") for i in sp.encode("2024")][-4:] == ["2", "0", "2", "4"]  # split_digits
    cfg = json.loads((parts[0] / "config.json").read_text())
    assert cfg["vocab_size"] == 601 and len(corpus()) > 100


def test_layout_from_tokenizer(ref):
    _, sp, lay = ref
    assert lay.bos == [1] and lay.eos_token == 2
    assert lay.before == sp.encode(SEGMENT_BEFORE) and sp.id_to_piece(lay.before[0]).startswith("▁")
    assert lay.middle == sp.encode(SEGMENT_MIDDLE) and sp.id_to_piece(lay.middle[-1]) == "▁"  # the trailing space
    assert [sp.id_to_piece(t) for t in (lay.yes_token, lay.no_token, lay.stop_token)] == ["▁Yes", "▁No", "##"]
    assert lay.n_fixed == 1 + len(lay.before) + 1 + len(lay.middle) + 18


def test_llama_cpp_tokenizer_equals_sentencepiece(ref, session, f32):
    _, sp, _ = ref
    texts = [
        SEGMENT_BEFORE,
        SEGMENT_MIDDLE,
        question_text(QUESTION),
        question_text("Where is it?", [(QUESTION, "Yes, there is an anomaly in the image, at the top left of the image.")]),
        "  two leading spaces, digits 2024 and 0.5, tabs\tand naïve café ✓ \n\n",
        "<s> </s> <unk> <pad> are plain text here",
    ]
    for t in texts:
        assert session.tokenize(t) == segment_ids(sp, t), t
    assert gguf_tokenize(f32[1], SEGMENT_BEFORE) == segment_ids(sp, SEGMENT_BEFORE)


# ------------------------------------------------------------------ loaders and merge


def test_load_vicuna_strict(parts, tmp_path):
    src = load_vicuna(parts[0])
    assert (src.shape.vocab, src.n_pieces, src.shape.hidden, src.shape.layers) == (601, 600, 64, 2)
    bad = tmp_path / "v"
    bad.mkdir()
    for f in parts[0].iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    cfg = json.loads((bad / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps(cfg | {"vocab_size": 32001}))
    with pytest.raises(AgptError, match=r"config\.json.*vocab_size 32001"):
        load_vicuna(bad)
    (bad / "config.json").write_text(json.dumps(cfg))
    state = torch.load(bad / "pytorch_model.bin", weights_only=True)
    del state["model.layers.1.mlp.up_proj.weight"]
    torch.save(state, bad / "pytorch_model.bin")
    with pytest.raises(AgptError, match="missing keys: model.layers.1.mlp.up_proj.weight"):
        load_vicuna(bad)
    (bad / "tokenizer.model").unlink()
    with pytest.raises(AgptError, match="tokenizer.model"):
        load_vicuna(bad)


@pytest.mark.parametrize("fmt", ["bin", "safetensors"])
def test_load_vicuna_sharded(parts, tmp_path, fmt):
    from safetensors.torch import save_file

    state = torch.load(parts[0] / "pytorch_model.bin", weights_only=True)
    for f in ("config.json", "tokenizer.model"):
        (tmp_path / f).write_bytes((parts[0] / f).read_bytes())
    names = sorted(state)
    shards = [names[: len(names) // 2], names[len(names) // 2 :]]
    weight_map = {}
    for i, ks in enumerate(shards):
        fname = f"pytorch_model-0000{i + 1}-of-00002.bin" if fmt == "bin" else f"model-0000{i + 1}-of-00002.safetensors"
        part = {k: state[k].half() for k in ks}  # the real shards are fp16
        if fmt == "bin":
            torch.save(part, tmp_path / fname)
        else:
            save_file(part, tmp_path / fname)
        weight_map |= {k: fname for k in ks}
    index = "pytorch_model.bin.index.json" if fmt == "bin" else "model.safetensors.index.json"
    (tmp_path / index).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    src = load_vicuna(tmp_path)
    k = "model.layers.1.self_attn.k_proj.weight"
    assert src.tensor(k).dtype == torch.float32 and torch.equal(src.tensor(k), state[k].half().float())


def test_lora_merge_exact(parts, delta, ref):
    merged, sp, lay = ref
    unmerged, _ = build_reference_llm(parts[0], delta, merged=False)
    plain, _ = build_reference_llm(parts[0], None, merged=True)
    img, p = _frame(1)
    text = question_text(QUESTION)
    a, b, c = (_ref_logits(m, lay, img, p, text, sp) for m in (merged, unmerged, plain))
    assert np.abs(a - b).max() <= 1e-5
    assert np.abs(a - c).max() > 1e-2  # the delta is not a no-op, so the check above means something


# ------------------------------------------------------------------ llama.cpp parity


def test_gguf_f32_matches_transformers_at_every_position(ref, session):
    model, sp, lay = ref
    img, p = _frame(2)
    want = _ref_logits(model, lay, img, p, question_text(QUESTION), sp)
    got = session.logits_all(img, p, QUESTION)
    assert got.shape == want.shape and want.shape[0] == lay.n_fixed + len(segment_ids(sp, question_text(QUESTION)))
    assert np.abs(got - want).max(axis=1).max() <= 1e-4


def test_writer_without_permutation_fails_after_position_0(parts, delta, ref, tmp_path):
    from export.gguf_writer import write_llama_gguf

    model, sp, lay = ref
    path = write_llama_gguf(load_vicuna(parts[0]), delta, tmp_path / "noperm.gguf", "F32", progress=lambda s: None, permute=False)
    img, p = _frame(3)
    want = _ref_logits(model, lay, img, p, question_text(QUESTION), sp)
    with LlmSession(path, lay, n_ctx=256, n_threads=2, kv_f32=True) as s:
        err = np.abs(s.logits_all(img, p, QUESTION) - want).max(axis=1)
    assert err[0] <= 1e-4  # no rotation at position 0
    assert err[1:].max() > 1e-2


def test_first_token_is_softmax_of_yes_no(ref, session):
    model, sp, lay = ref
    img, p = _frame(4)
    ft = session.first_token(img, p, QUESTION)
    last = session.logits_all(img, p, QUESTION)[-1]
    ly, ln = last[lay.yes_token], last[lay.no_token]
    assert 0.0 <= ft.p_anomaly <= 1.0
    assert ft.p_anomaly == pytest.approx(float(np.exp(ly) / (np.exp(ly) + np.exp(ln))), abs=1e-6)
    want = _ref_logits(model, lay, img, p, question_text(QUESTION), sp)[-1]
    assert ft.logit_yes == pytest.approx(float(want[lay.yes_token]), abs=1e-4)
    # the cached prefix is reused across frames: a second frame, then the first again, gives the same
    session.first_token(*_frame(5), QUESTION)
    assert session.first_token(img, p, QUESTION).p_anomaly == pytest.approx(ft.p_anomaly, abs=1e-6)


def test_answer_equals_reference_greedy(ref, session):
    model, sp, lay = ref
    img, p = _frame(6)
    e = reference_inputs_embeds(model, lay, img, p, segment_ids(sp, question_text(QUESTION)))
    want = reference_greedy(model, e, lay, 24)
    got = session.answer(img, p, QUESTION, max_new_tokens=24)
    # the reason follows from the reference's tokens alone: its last token, or the 24-token limit
    reason = {lay.stop_token: "stop", lay.eos_token: "eos"}.get(want[-1], "length")
    assert got.tokens == want and got.stopped == reason and (reason != "length" or len(want) == 24)
    assert got.text == reference_text(sp, want)


def test_answer_stop_rule(ref, f32):
    """Random weights rarely say '##': make the 5th greedy token the stop (then EOS) id in both worlds."""
    model, sp, lay = ref
    img, p = _frame(7)
    e = reference_inputs_embeds(model, lay, img, p, segment_ids(sp, question_text(QUESTION)))
    free = reference_greedy(model, e, lay, 12)
    k = next(i for i in range(4, 12) if free[i] not in free[:i])  # first occurrence, so the stop is there
    for field, reason in (("stop_token", "stop"), ("eos_token", "eos")):
        lay2 = lay.model_copy(update={field: free[k]})
        want = reference_greedy(model, e, lay2, 24)
        assert want == free[: k + 1]
        with LlmSession(f32[1], lay2, n_ctx=256, n_threads=2, kv_f32=True) as s:
            got = s.answer(img, p, QUESTION, max_new_tokens=24)
        assert got.tokens == want and got.stopped == reason
        assert got.text == reference_text(sp, want)  # the reference drops the last two tokens


def test_multi_turn_ask(ref, session):
    model, sp, lay = ref
    img, p = _frame(8)
    frame = FrameContext(img, p)
    a1 = session.ask(frame, QUESTION, max_new_tokens=6)
    a2 = session.ask(frame, "Where is the anomaly?", max_new_tokens=6)
    assert frame.history == [(QUESTION, a1.text), ("Where is the anomaly?", a2.text)]
    text = question_text("Where is the anomaly?", [(QUESTION, a1.text)])
    assert text == f"{QUESTION}\n### Assistant: {a1.text}\n### Human: Where is the anomaly?\n### Assistant:"
    e = reference_inputs_embeds(model, lay, img, p, segment_ids(sp, text))
    assert a2.tokens == reference_greedy(model, e, lay, 6)


# ------------------------------------------------------------------ errors, quantisation, CLI


def test_session_errors(f32, tmp_path):
    info, path = f32
    with pytest.raises(AgptError, match="no such GGUF"):
        LlmSession(tmp_path / "absent.gguf", info.layout)
    with pytest.raises(AgptError, match="64 wide.*4096-wide"):
        LlmSession(path, info.layout, n_embd=4096)
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"GGUF" + b"\0" * 64)
    with pytest.raises(AgptError, match="cannot load"):
        LlmSession(junk, info.layout)


def test_q8_0_export_via_cli_loads_and_agrees(parts, f32, tmp_path):
    p = argparse.ArgumentParser()
    add_arguments(p)
    out = tmp_path / "q8"
    assert run(p.parse_args(["--vicuna", str(parts[0]), "--pandagpt", str(parts[1]), "--out", str(out), "--quant", "Q8_0"])) == 0
    info = json.loads((out / "llm.json").read_text())
    gguf = out / "llm.gguf"
    assert info["quant"] == "Q8_0" and info["sha256"] == hashlib.sha256(gguf.read_bytes()).hexdigest()
    assert gguf.stat().st_size < f32[1].stat().st_size / 2 and not list(out.glob("*.tmp"))
    img, p_rows = _frame(9)
    with (
        LlmSession(gguf, f32[0].layout, n_ctx=256, n_threads=2) as s,
        LlmSession(f32[1], f32[0].layout, n_ctx=256, n_threads=2, kv_f32=True) as r,
    ):
        diff = np.abs(s.logits_all(img, p_rows, QUESTION) - r.logits_all(img, p_rows, QUESTION)).max()
    print(f"Q8_0 + F16 KV vs F32: max abs logit diff {diff:.3g}")
    # measured: 0.17 on this frame at every position (0.19 over ten cookie frames' inputs)
    assert diff <= 0.25


def test_export_refuses_mismatched_delta(parts, tmp_path):
    bad = tmp_path / "p.pt"
    write_tiny_pandagpt(bad, llm_hidden=64, llm_layers=3, embed_dim=32)
    with pytest.raises(AgptError, match="LoRA for 3 layers"):
        export_llm(parts[0], bad, tmp_path / "out", "F16", progress=lambda s: None)
    with pytest.raises(AgptError, match="unknown quantisation"):
        export_llm(parts[0], parts[1], tmp_path / "out", "Q3_X")


# ------------------------------------------------------------------ one-batch frames


def test_token_table_is_llama_cpps_embedding(ref, f32):
    from runtime.pipeline.gguf_tokens import GGML_F32, read_token_embeddings

    model, _, lay = ref
    table = read_token_embeddings(f32[1])
    assert table is not None and table.ggml_type == GGML_F32 and (table.n_embd, table.n_vocab) == (64, 601)
    ids = lay.before + lay.middle + [lay.yes_token, 600]
    assert np.array_equal(table.rows(ids), model.get_input_embeddings().weight[ids].detach().numpy())
    assert read_token_embeddings(Path(__file__)) is None  # not a GGUF: the session falls back, no error


@pytest.mark.parametrize("quant", ["F32", "Q4_K_M"])
def test_one_batch_frame_equals_four_decodes(f32, q4, quant):
    from runtime.pipeline.gguf_tokens import GGML_Q8_0, read_token_embeddings

    if quant == "F32":
        path, kv32 = f32[1], True
    else:
        path, kv32 = q4, False
        assert read_token_embeddings(path).ggml_type == GGML_Q8_0  # kept Q8_0 by the export for this lookup
    img, p = _frame(10)
    lay = f32[0].layout
    with (
        LlmSession(path, lay, n_ctx=256, n_threads=2, kv_f32=kv32) as one,
        LlmSession(path, lay, n_ctx=256, n_threads=2, kv_f32=kv32, single_batch=False) as four,
    ):
        assert one.single_batch and not four.single_batch
        a, b = one.logits_all(img, p, QUESTION), four.logits_all(img, p, QUESTION)
        assert np.abs(a - b).max() <= 1e-5  # quantised weights: exactly 0 (ggml quantises activations per row)
        assert one.answer(img, p, QUESTION, max_new_tokens=8).tokens == four.answer(img, p, QUESTION, max_new_tokens=8).tokens


# ------------------------------------------------------------------ batches, context limits, GQA


def test_n_batch_smaller_than_the_prompt_gives_the_same_logits(f32, session):
    """A frame longer than n_batch is decoded in several llama_decode calls (_decode_rows' chunks): same
    logits at every position, same answer."""
    info, path = f32
    img, p = _frame(11)
    want = session.logits_all(img, p, QUESTION)
    want_answer = session.answer(img, p, QUESTION, max_new_tokens=8).tokens
    with LlmSession(path, info.layout, n_ctx=512, n_threads=2, n_batch=7, kv_f32=True, n_embd=info.n_embd) as s:
        assert s.n_batch == 7 and want.shape[0] - s.n_prefix > 3 * s.n_batch  # at least four chunks per frame
        got = s.logits_all(img, p, QUESTION)
        assert s.answer(img, p, QUESTION, max_new_tokens=8).tokens == want_answer
    print(f"n_batch 7 vs 512: max abs logit diff {np.abs(got - want).max():.3g}")
    # measured: 0 (F32 weights and KV; only the number of llama_decode calls differs)
    assert got.shape == want.shape and np.abs(got - want).max() <= 1e-5


def _padded_question(sp, lay, positions: int) -> str:
    """QUESTION lengthened with filler words until the whole prompt takes exactly `positions` positions."""
    for tail in ("", "!", "!?", " 7", " 7!"):  # fine-tuning: the filler word may take more than one token
        for k in range(0, 400):
            q = QUESTION + " ok" * k + tail
            n = lay.n_fixed + len(segment_ids(sp, question_text(q)))
            if n == positions:
                return q
            if n > positions:
                break
    raise AssertionError(f"no filler length gives a {positions}-position prompt")


def test_context_overflow_is_an_error_and_generation_stops_at_n_ctx(ref, f32):
    """Several cameras run n_ctx 1024 with a 512-token answer limit, and ask() histories grow: a prompt past
    n_ctx is a clear error that leaves the session usable, and an answer is cut at the last position."""
    model, sp, lay = ref
    info, path = f32
    img, p = _frame(12)
    with LlmSession(path, info.layout, n_ctx=256, n_threads=2, kv_f32=True, n_embd=info.n_embd) as s:
        n_ctx = s.n_ctx
        before = s.first_token(img, p, QUESTION).p_anomaly
        # generation: the prompt leaves 3 free positions, so 3 decoded tokens + the prefill's = 4 tokens
        q = _padded_question(sp, lay, n_ctx - 3)
        got = s.answer(img, p, q, max_new_tokens=100)
        e = reference_inputs_embeds(model, lay, img, p, segment_ids(sp, question_text(q)))
        want = reference_greedy(model, e, lay, 4)
        assert got.tokens == want and (got.stopped == "length" or want[-1] in (lay.stop_token, lay.eos_token))
        # overflow: one position too many is refused before anything is decoded
        with pytest.raises(AgptError, match=f"prompt of {n_ctx + 1} positions exceeds the LLM context of {n_ctx}"):
            s.first_token(img, p, _padded_question(sp, lay, n_ctx + 1))
        assert s.first_token(img, p, QUESTION).p_anomaly == pytest.approx(before, abs=1e-6)  # cache intact
        # a conversation grows until it does not fit: the failed turn is not added to the history
        frame = FrameContext(img, p)
        with pytest.raises(AgptError, match="exceeds the LLM context"):
            for _ in range(100):
                s.ask(frame, "Describe the image in detail, part by part, and where each defect is.", max_new_tokens=24)
        turns = len(frame.history)
        assert turns >= 1 and lay.n_fixed + len(segment_ids(sp, question_text("x", frame.history))) <= n_ctx + 30
        assert s.first_token(img, p, QUESTION).p_anomaly == pytest.approx(before, abs=1e-6)


@pytest.fixture(scope="module")
def gqa(tmp_path_factory):
    """A tiny LLaMA whose 4 query heads share 2 k/v heads (GQA), exported F32 without a LoRA."""
    from export.gguf_writer import write_llama_gguf

    root = tmp_path_factory.mktemp("gqa")
    cfg = write_tiny_vicuna(root / "vicuna", seed=3, kv_heads=2)
    assert (cfg["num_attention_heads"], cfg["num_key_value_heads"]) == (4, 2)
    model, sp = build_reference_llm(root / "vicuna", None, merged=True)
    assert model.model.layers[0].self_attn.k_proj.weight.shape == (32, 64)  # 2 heads x 16
    src = load_vicuna(root / "vicuna")
    paths = {
        perm: write_llama_gguf(src, None, root / f"gqa_{perm}.gguf", "F32", progress=lambda s: None, permute=perm)
        for perm in (True, False)
    }
    return model, sp, make_layout(sp), paths


def test_gqa_gguf_matches_transformers_at_every_position(gqa):
    """k_proj rows are permuted per k/v head (permute_qk with kv_heads): a writer that used the query head
    count for k would still produce a loadable file, and only these logits would show it."""
    model, sp, lay, paths = gqa
    img, p = _frame(13)
    want = _ref_logits(model, lay, img, p, question_text(QUESTION), sp)
    with LlmSession(paths[True], lay, n_ctx=256, n_threads=2, kv_f32=True) as s:
        got = s.logits_all(img, p, QUESTION)
    assert got.shape == want.shape
    print(f"GQA F32 GGUF vs transformers: max abs logit diff {np.abs(got - want).max():.3g}")
    assert np.abs(got - want).max(axis=1).max() <= 1e-4  # measured 6.7e-6, as the kv_heads == heads model (4e-6)
    with LlmSession(paths[False], lay, n_ctx=256, n_threads=2, kv_f32=True) as s:
        err = np.abs(s.logits_all(img, p, QUESTION) - want).max(axis=1)
    assert err[0] <= 1e-4 and err[1:].max() > 1e-2  # the permutation is what makes positions > 0 agree


# ------------------------------------------------------------------ accuracy of what a line device runs


@pytest.fixture(scope="module")
def cookie_rows(tiny_bundle, cookie):
    """The LLM inputs (img_embed, prompts) of every cookie test frame, from the tiny F32 bundle's vision side."""
    import cv2

    from runtime.pipeline.bundle import load_bundle
    from runtime.pipeline.inspector import Inspector
    from runtime.pipeline.products import ProductPack

    insp = Inspector(load_bundle(tiny_bundle), llm_options=dict(kv_f32=True, n_threads=2))
    pack = ProductPack("cookie", COOKIE_DESCRIPTION, [], insp.text_features("cookie"), {"encoder_sha256": insp.encoder_sha256})
    rows = []
    for f in sorted((cookie / "test").rglob("*.png")):
        j = insp.judge(cv2.imread(str(f)), pack)
        rows.append((j.llm_context.img_embed, j.llm_context.prompts))
    insp.llm.close()
    return rows


def _p_all(path, layout, rows, **kw) -> np.ndarray:
    with LlmSession(path, layout, n_ctx=512, n_threads=2, **kw) as s:
        return np.array([s.first_token(e, p, product_question(COOKIE_DESCRIPTION)).p_anomaly for e, p in rows])


@pytest.mark.slow  # ~50 s: the 46 frames through the vision side, then three LLMs
def test_f16_kv_and_q4_k_m_first_token_verdicts_on_the_cookie_frames(f32, q4, cookie_rows):
    """What the line runs (F16 KV cache, the default; the Q4_K_M export) against F32 weights and F32 KV."""
    info, path = f32
    ref = _p_all(path, info.layout, cookie_rows, kv_f32=True)
    f16 = _p_all(path, info.layout, cookie_rows)
    q = _p_all(q4, info.layout, cookie_rows)
    agree_f16, agree_q4 = int(((f16 > 0.5) == (ref > 0.5)).sum()), int(((q > 0.5) == (ref > 0.5)).sum())
    print(
        f"{len(ref)} cookie frames: F16 KV P max diff {np.abs(f16 - ref).max():.3g}, verdicts {agree_f16}/{len(ref)}; "
        f"Q4_K_M P max diff {np.abs(q - ref).max():.3g}, verdicts {agree_q4}/{len(ref)}; F32 P in [{ref.min():.3f}, {ref.max():.3f}]"
    )
    assert len(ref) == 46
    # measured here (tiny random-weight model, 46 cookie test frames): F16 KV vs F32 KV P(anomaly) max diff
    # 2.9e-4, verdicts 46/46
    assert np.abs(f16 - ref).max() <= 1e-3 and agree_f16 == len(ref)
    # measured: Q4_K_M P(anomaly) max diff 0.088 (Q4_K_M reads every frame 0.06-0.09 lower; logits differ by
    # up to 0.79), verdicts 46/46. The tiny model's F32 P(anomaly) lies in 0.41-0.49 on these frames, so the
    # agreement has a margin of 0.01-0.09 only: with a question that puts three frames at 0.500-0.504, Q4_K_M
    # flips those three (43/46). Frames farther from 0.5 than the P tolerance must agree whatever the question.
    assert np.abs(q - ref).max() <= 0.12 and agree_q4 == len(ref)
    far = np.abs(ref - 0.5) > 0.12
    assert ((q > 0.5) == (ref > 0.5))[far].all()
