"""The torch backend (GPU workstation path) on the CPU, fp32, no CUDA graphs: same numbers as the bundle."""

import numpy as np
import pytest
import torch
from _frames import QUESTIONS, _images
from conftest import COOKIE_DESCRIPTION

from export.torch_backend import Graphed, TorchPrefill, TorchVision, cuda_available
from runtime.pipeline.bundle import load_bundle
from runtime.pipeline.inspector import Inspector
from runtime.pipeline.llm import LlmSession
from runtime.pipeline.products import ProductPack, build_pack
from runtime.pipeline.vision import VisionEngines


@pytest.fixture(scope="module")
def tv(tiny_ckpt):
    return TorchVision.from_checkpoints(tiny_ckpt, device="cpu", dtype="float32", cuda_graphs=False)


@pytest.fixture(scope="module")
def tp(tiny_ckpt):
    return TorchPrefill.from_checkpoints(tiny_ckpt, device="cpu", dtype="float32", cuda_graphs=False)


@pytest.fixture(scope="module")
def onnx(tiny_bundle):
    return VisionEngines(load_bundle(tiny_bundle), threads=1)


def test_vision_equals_the_onnx_graphs(tv, onnx):
    x = np.random.default_rng(0).standard_normal((2, 3, 224, 224)).astype(np.float32)
    emb, taps = tv.encode(x)
    emb_o, taps_o = onnx.encode(x)
    assert np.abs(emb - emb_o).max() <= 1e-4
    assert all(np.abs(a - b).max() <= 1e-3 for a, b in zip(taps, taps_o))  # residual stream, magnitude ~10
    tf = load_bundle(onnx.bundle.root).manifest.products["cookie"].text_feats
    m, m_o = tv.decoder_map(taps_o, tf), onnx.decoder_map(taps_o, tf)
    assert m.shape == m_o.shape == (2, 224, 224) and np.abs(m - m_o).max() <= 1e-5
    (P, E), (P_o, E_o) = tv.prompts(m_o, emb_o), onnx.prompts(m_o, emb_o)
    assert np.abs(P - P_o).max() <= 1e-4 and np.abs(E - E_o).max() <= 1e-5
    assert tv.has("encoder") and not tv.has("text_encoder") and tv.graph_errors == {}


def test_bank_map_equals_numpy(tv, onnx):
    from runtime.pipeline.maps import bank_map, l2_rows

    rng = np.random.default_rng(1)
    q = [rng.standard_normal((2, 256, 64)).astype(np.float32) for _ in range(4)]
    bank = [l2_rows(rng.standard_normal((300, 64)).astype(np.float32)) for _ in range(4)]
    got = tv.bank_map_t([torch.from_numpy(t) for t in q], [torch.from_numpy(b) for b in bank]).numpy()
    want = np.stack([bank_map([t[i] for t in q], bank, [(16, 16)] * 4, normalised_bank=True) for i in range(2)])
    assert np.abs(got - want).max() <= 1e-5


def test_prefill_equals_llama_cpp_and_transformers(tp, tiny_bundle):
    from export.llm_export import reference_inputs_embeds
    from runtime.pipeline.prompt import question_text

    b = load_bundle(tiny_bundle)
    assert tp.layout == b.manifest.llm.layout
    rng = np.random.default_rng(2)
    frames = [
        (rng.standard_normal((1, 64)).astype(np.float32), rng.standard_normal((18, 64)).astype(np.float32), QUESTIONS[i])
        for i in range(4)
    ]
    with LlmSession(b.path(b.manifest.llm), b.manifest.llm.layout, n_ctx=512, n_threads=1, kv_f32=True) as s:
        want = [s.first_token(*f) for f in frames]
    got = tp.first_token_batch(frames)  # two question lengths: grouped
    for g, w in zip(got, want):
        assert abs(g.p_anomaly - w.p_anomaly) <= 1e-4 and abs(g.logit_yes - w.logit_yes) <= 1e-3
    with torch.no_grad():
        e, p, q = frames[1]
        full = tp.model(inputs_embeds=reference_inputs_embeds(tp.model, tp.layout, e, p, tp.tokenize(question_text(q)))).logits[
            0, -1
        ]
    assert abs(float(full[tp.layout.yes_token]) - got[1].logit_yes) <= 1e-4
    assert abs(float(full[tp.layout.no_token]) - got[1].logit_no) <= 1e-4


def test_inspector_on_the_torch_backend(tv, tp, tiny_bundle):
    ours = Inspector.from_config(tiny_bundle, None, "first_token", llm_options=dict(kv_f32=True, n_threads=1))
    on_torch = Inspector.from_config(tiny_bundle, None, "first_token", vision=tv, llm=tp, max_batch=3)
    packs = [
        ProductPack("cookie", COOKIE_DESCRIPTION, [], ours.text_features("cookie"), {"encoder_sha256": ours.encoder_sha256}),
        build_pack(ours, "cookie", COOKIE_DESCRIPTION, _images(3, 1)),
    ]
    frames = _images(4, 3)
    ps = [packs[0], packs[1], packs[0]]
    for a, b in zip(on_torch.judge_batch(frames, ps), [ours.judge(f, p) for f, p in zip(frames, ps)]):
        assert np.abs(a.map - b.map).max() <= 1e-4
        assert abs(a.p_anomaly - b.p_anomaly) <= 1e-4 and a.verdict == b.verdict


def test_graphed_is_eager_without_cuda():
    g = Graphed(lambda a, b: (a + b, a * b), enabled=True)
    s, p = g(torch.ones(2), torch.full((2,), 3.0))
    assert s.tolist() == [4.0, 4.0] and p.tolist() == [3.0, 3.0] and not g.graphs
    assert isinstance(cuda_available(), bool)
