"""The runtime's per-frame path (ONNX graphs + numpy maps + llama.cpp) against the PyTorch oracle."""

import numpy as np
import pytest
from conftest import COOKIE_DESCRIPTION

from export.reference import Reference
from runtime.errors import AgptError
from runtime.pipeline.inspector import Inspector
from runtime.pipeline.preprocess import load_image
from runtime.pipeline.products import ProductPack, build_pack

N_TOKENS = 16  # random weights never say '##': cap both sides at the length of a real answer


@pytest.fixture(scope="module")
def ref(tiny_ckpt):
    return Reference(tiny_ckpt)


@pytest.fixture(scope="module")
def insp(tiny_bundle):
    return Inspector.from_config(tiny_bundle, None, "answer", llm_options=dict(kv_f32=True), max_new_tokens=N_TOKENS)


@pytest.fixture(scope="module")
def frames(cookie):
    return sorted((cookie / "test" / "good").glob("*.png"))[:2] + sorted((cookie / "test" / "cracked").glob("*.png"))[:2]


def _text_pack(insp):
    return ProductPack("cookie", COOKIE_DESCRIPTION, [], insp.text_features("cookie"), {"encoder_sha256": insp.encoder_sha256})


@pytest.mark.slow
def test_decoder_path_matches_the_oracle(ref, insp, frames):
    pack = _text_pack(insp)
    for f in frames:
        r = ref.run(f, product="cookie", description=COOKIE_DESCRIPTION, max_new_tokens=N_TOKENS)
        j = insp.judge(load_image(f), pack)
        assert np.abs(j.map - r.map).max() <= 1e-4
        assert abs(j.p_anomaly - r.p_anomaly) <= 1e-4
        assert j.llm_context is not None and j.judge == "llm-answer"
        assert j.answer == r.answer  # same greedy tokens, same text


@pytest.mark.slow
def test_bank_path_matches_the_oracle(ref, insp, frames, cookie):
    shots = sorted((cookie / "train" / "good").glob("*.png"))[:2]
    pack = build_pack(insp, "cookie", COOKIE_DESCRIPTION, shots)
    assert pack.bank and pack.text_feats is not None
    for f in frames[1:3]:
        r = ref.run(f, product="cookie", description=COOKIE_DESCRIPTION, shots=shots, max_new_tokens=N_TOKENS)
        j = insp.judge(load_image(f), pack)
        assert np.abs(j.map - r.map).max() <= 1e-4
        assert j.answer == r.answer


def test_first_token_mode_and_follow_up(tiny_bundle, frames, ref):
    import torch

    from export.llm_export import reference_greedy, reference_text
    from runtime.pipeline.prompt import question_text

    fast = Inspector.from_config(tiny_bundle, None, "first_token", llm_options=dict(kv_f32=True), max_new_tokens=4)
    j = fast.judge(load_image(frames[0]), _text_pack(fast))
    assert j.judge == "llm-first_token" and j.answer is None and 0 <= j.p_anomaly <= 1
    assert j.verdict == (j.p_anomaly > 0.5) and (len(j.locations) == 1) == j.verdict
    assert set(j.latency_ms) >= {"preprocess", "encoder", "map", "prompt", "llm"}
    # two follow-ups on the frame: each the oracle's greedy answer to the reference's multi-turn prompt
    q1, q2 = "Where is the crack?", "Is it large?"
    a1, a2 = fast.ask(j, q1), fast.ask(j, q2)
    assert j.llm_context.history == [(q1, a1), (q2, a2)]
    e, p = (torch.from_numpy(np.asarray(x, np.float32)) for x in (j.llm_context.img_embed, j.llm_context.prompts))
    for q, history, got in ((q1, [], a1), (q2, [(q1, a1)], a2)):
        with torch.no_grad():
            want = reference_greedy(ref.model, ref.inputs_embeds(e, p, question_text(q, history)), ref.layout, 4)
        assert got == reference_text(ref.sp, want), (q, got)
    lite = Inspector.from_config(tiny_bundle, None, "first_token", llm_options=dict(kv_f32=True))
    lite.llm = None  # what a bundle without an LLM has
    with pytest.raises(AgptError, match="no LLM"):
        lite.ask(j, q1)


def test_bad_frames_are_refused(insp):
    with pytest.raises(AgptError):
        insp.judge(np.zeros((10, 10, 7), np.uint8), _text_pack(insp))


@pytest.mark.slow
def test_verify_compares_first_token_verdicts(tiny_bundle, tiny_ckpt, frames):
    from export.verify import verify_verdicts
    from export.vision_modules import CheckpointPaths

    r = verify_verdicts(tiny_bundle, CheckpointPaths.resolve(tiny_ckpt), frames[:2], [], "cookie")
    assert r["frames"] == 2 and r["verdicts_agree"] == 2 and r["locations_agree"] == 2 and r["max_p_diff"] < 1e-3
