"""Several cameras in one batch: judge_batch / first_token_batch / answer_batch give what one-by-one gives."""

import numpy as np
import pytest
from _frames import QUESTIONS, _images
from conftest import COOKIE_DESCRIPTION

from runtime.errors import AgptError
from runtime.pipeline.inspector import Inspector, Prepared
from runtime.pipeline.llm import LlmSession
from runtime.pipeline.products import ProductPack, build_pack


@pytest.fixture(scope="module")
def insp(tiny_bundle):
    return Inspector.from_config(tiny_bundle, None, "first_token", llm_options=dict(kv_f32=True, n_threads=1), max_batch=4)


@pytest.fixture(scope="module")
def packs(insp):
    """Four products: decoder map (two text features, two descriptions) and two normal-shot banks."""
    sha = {"encoder_sha256": insp.encoder_sha256}
    return [
        ProductPack("cookie", COOKIE_DESCRIPTION, [], insp.text_features("cookie"), sha),
        build_pack(insp, "cookie", COOKIE_DESCRIPTION, _images(1, 2)),
        ProductPack("object", "", [], insp.text_features("object"), sha),
        build_pack(insp, "bottle", "This is a photo of a bottle.", _images(2, 1)),
    ]


def _same(a, b, p_tol=1e-4):
    assert np.abs(a.map - b.map).max() <= 1e-5
    assert abs(a.p_anomaly - b.p_anomaly) <= p_tol
    assert (a.verdict, a.locations, a.judge, a.answer) == (b.verdict, b.locations, b.judge, b.answer)
    assert a.transform == b.transform


@pytest.mark.parametrize("n", [1, 2, 4])
def test_batch_equals_one_by_one(insp, packs, n):
    frames = _images(10 + n, n)
    ps = [packs[i % len(packs)] for i in range(n)]
    ones = [insp.judge(f, p) for f, p in zip(frames, ps)]
    batch = insp.judge_batch(frames, ps)
    assert [j.batch for j in batch] == [n] * n
    for a, b in zip(batch, ones):
        _same(a, b)
        assert set(a.latency_ms) >= {"preprocess", "encoder", "map", "prompt", "llm"}


def test_batch_with_questions_prepared_frames_and_one_pack(insp, packs):
    frames = _images(20, 3)
    ones = [insp.judge(f, packs[1], q) for f, q in zip(frames, QUESTIONS)]
    prepared = [insp.prepare(f) for f in frames]
    assert isinstance(prepared[0], Prepared) and prepared[0].x.shape == (3, 224, 224)
    for a, b in zip(insp.judge_batch(prepared, packs[1], QUESTIONS[:3]), ones):
        _same(a, b)


def test_more_frames_than_sequences_are_decoded_in_groups(insp, packs):
    frames = _images(30, 6)
    ps = [packs[i % 4] for i in range(6)]
    for a, b in zip(insp.judge_batch(frames, ps), [insp.judge(f, p) for f, p in zip(frames, ps)]):
        _same(a, b)


def test_answer_mode_batch(tiny_bundle, packs):
    insp = Inspector.from_config(
        tiny_bundle, None, "answer", llm_options=dict(kv_f32=True, n_threads=1), max_new_tokens=6, max_batch=2
    )
    frames = _images(40, 2)
    ones = [insp.judge(f, p) for f, p in zip(frames, packs[:2])]
    batch = insp.judge_batch(frames, packs[:2])
    for a, b in zip(batch, ones):
        _same(a, b)
        assert a.llm_context is not None
    assert {"llm_prefill", "llm_decode"} <= set(batch[0].latency_ms)


def test_batch_errors(insp, packs):
    frames = _images(50, 2)
    with pytest.raises(AgptError, match="frame 1 of the batch"):
        insp.judge_batch([frames[0], np.zeros((4, 4, 7), np.uint8)], packs[:2])
    with pytest.raises(AgptError, match="2 frames, 1 packs"):
        insp.judge_batch(frames, [packs[0]])
    assert insp.judge_batch([], []) == []


@pytest.fixture(scope="module")
def sessions(tiny_bundle):
    from runtime.pipeline.bundle import load_bundle

    b = load_bundle(tiny_bundle)
    path, lay = b.path(b.manifest.llm), b.manifest.llm.layout
    made = {}

    def get(n_seq_max: int, single_batch: bool = True) -> LlmSession:
        key = (n_seq_max, single_batch)
        if key not in made:
            made[key] = LlmSession(path, lay, n_ctx=512, n_threads=1, kv_f32=True, n_seq_max=n_seq_max, single_batch=single_batch)
        return made[key]

    yield get
    for s in made.values():
        s.close()


def _llm_frames(n: int, d: int = 64) -> list[tuple]:
    rng = np.random.default_rng(n)
    return [
        (rng.standard_normal((1, d)).astype(np.float32), rng.standard_normal((18, d)).astype(np.float32), QUESTIONS[i % 5])
        for i in range(n)
    ]


@pytest.mark.parametrize("single_batch", [True, False])
def test_llm_batch_equals_sequential(sessions, single_batch):
    one, many = sessions(1, single_batch), sessions(3, single_batch)
    assert many.single_batch == single_batch and many.n_seq_max == 3 and many.n_ctx == 512
    frames = _llm_frames(5)  # 5 frames on 3 sequences: a group of 3, then 2
    ref = [one.first_token(*f) for f in frames]
    got = many.first_token_batch(frames)
    assert max(abs(a.p_anomaly - b.p_anomaly) for a, b in zip(got, ref)) <= 1e-4
    assert max(abs(a.logit_yes - b.logit_yes) for a, b in zip(got, ref)) <= 1e-3
    # the single-frame path of a multi-sequence session is unchanged, before and after batches
    assert abs(many.first_token(*frames[4]).p_anomaly - ref[4].p_anomaly) <= 1e-4
    answers = many.answer_batch(frames[:3], max_new_tokens=5)
    assert [a.tokens for a in answers] == [one.answer(*f, max_new_tokens=5).tokens for f in frames[:3]]
    assert all(a.prefill_ms > 0 for a in answers)


def test_llm_batch_limits(sessions):
    many = sessions(3)
    with pytest.raises(AgptError, match="4 frames in one batch"):
        many._prefill_many([(e, p, q) for e, p, q in _llm_frames(4)], "last")
    with pytest.raises(AgptError, match="n_seq_max 0"):
        LlmSession(many.path, many.layout, n_seq_max=0)
    assert many.first_token_batch([]) == [] and many.answer_batch([]) == []
