"""The plain torch modules against hand-checkable cases and against ImageBind's own layout.

The vision tower is compared with an independent forward written the way the reference code runs it:
2-frame repeat + F.conv3d stem, nn.MultiheadAttention sequence-first (L,B,D).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from export.checkpoints import load_anomalygpt, load_imagebind
from export.modeling.decoder import Decoder, decoder_map
from export.modeling.fewshot import bank_from_shots, bank_map
from export.modeling.imagebind_text import ImageBindText, causal_mask
from export.modeling.imagebind_vision import ImageBindVision, default_tap_layers, stem_weight_2d
from export.modeling.prompt_learner import LlamaProj, PromptLearner
from export.modeling.text_prompts import ABNORMAL_STATES, NORMAL_STATES, TEMPLATES, class_means, class_sentences
from export.modeling.transformer import Attention, heads_for_width
from export.tiny import anomalygpt_state, imagebind_state

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny_parts(tmp_path_factory):
    """Tiny ImageBind + AnomalyGPT states written to disk and read back through the strict loaders."""
    d = tmp_path_factory.mktemp("tinyckpt")
    g = torch.Generator().manual_seed(1)
    torch.save(imagebind_state(g), d / "ib.pth")
    torch.save(anomalygpt_state(g, 64), d / "agpt.pt")
    return load_imagebind(d / "ib.pth"), load_anomalygpt(d / "agpt.pt")


# ---------------------------------------------------------------- vision tower


def test_conv2d_stem_equals_conv3d_on_repeated_frames():
    g = torch.Generator().manual_seed(0)
    w3d = torch.randn(8, 3, 2, 14, 14, generator=g)
    x = torch.randn(2, 3, 224, 224, generator=g)
    video = x[:, :, None].repeat(1, 1, 2, 1, 1)  # (B,3,2,H,W): ImageBind's PadIm2Video(repeat, 2)
    ref = F.conv3d(video, w3d, stride=(2, 14, 14))[:, :, 0]  # (B,D,16,16)
    ours = F.conv2d(x, stem_weight_2d(w3d), stride=14)
    assert torch.allclose(ours, ref, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("masked", [False, True])
def test_attention_equals_sequence_first_multihead_attention(masked):
    g = torch.Generator().manual_seed(0)
    D, H, L, B = 64, 4, 10, 3
    mha = torch.nn.MultiheadAttention(D, H, bias=True)
    for p in mha.parameters():
        p.data = torch.randn(p.shape, generator=g) * 0.2
    ours = Attention(D, H)
    ours.load_state_dict({k: v for k, v in mha.state_dict().items()}, strict=True)
    x = torch.randn(B, L, D, generator=g)
    mask = causal_mask(L) if masked else None
    with torch.no_grad():
        ref = mha(*(x.transpose(0, 1),) * 3, need_weights=False, attn_mask=mask)[0].transpose(0, 1)
        got = ours(x, mask)
    assert torch.allclose(got, ref, atol=1e-5)


def _reference_vision(v: dict[str, torch.Tensor], x: torch.Tensor, heads: int, taps_at: list[int]):
    """ImageBind's own layout: repeat to 2 frames, conv3d, sequence-first MultiheadAttention, CLS kept in taps."""
    P, T = "modality_preprocessors.vision.", "modality_trunks.vision.blocks."
    w3d = v[P + "rgbt_stem.proj.1.weight"]
    D = w3d.shape[0]
    t = F.conv3d(x[:, :, None].repeat(1, 1, 2, 1, 1), w3d, stride=(2, 14, 14)).flatten(2).transpose(1, 2)
    t = torch.cat([v[P + "cls_token"].expand(x.shape[0], -1, -1), t], 1) + v[P + "pos_embedding_helper.pos_embed"]
    t = F.layer_norm(
        t,
        (D,),
        v["modality_trunks.vision.pre_transformer_layer.0.weight"],
        v["modality_trunks.vision.pre_transformer_layer.0.bias"],
        1e-6,
    )
    t = t.transpose(0, 1)  # (L,B,D)
    taps = []
    depth = len({k.split(".")[3] for k in v if k.startswith(T)})
    for i in range(depth):
        b = lambda n, i=i: v[f"{T}{i}.{n}"]
        mha = torch.nn.MultiheadAttention(D, heads)
        mha.load_state_dict(
            {
                "in_proj_weight": b("attn.in_proj_weight"),
                "in_proj_bias": b("attn.in_proj_bias"),
                "out_proj.weight": b("attn.out_proj.weight"),
                "out_proj.bias": b("attn.out_proj.bias"),
            }
        )
        h = F.layer_norm(t, (D,), b("norm_1.weight"), b("norm_1.bias"), 1e-6)
        t = t + mha(h, h, h, need_weights=False)[0]
        h = F.layer_norm(t, (D,), b("norm_2.weight"), b("norm_2.bias"), 1e-6)
        t = t + F.linear(F.gelu(F.linear(h, b("mlp.fc1.weight"), b("mlp.fc1.bias"))), b("mlp.fc2.weight"), b("mlp.fc2.bias"))
        if i in taps_at:
            taps.append(t.transpose(0, 1))
    t = t.transpose(0, 1)
    h = F.layer_norm(t, (D,), v["modality_heads.vision.0.weight"], v["modality_heads.vision.0.bias"], 1e-6)[:, 0]
    emb = F.linear(h, v["modality_heads.vision.2.weight"])
    return F.normalize(emb, dim=-1), taps


def test_vision_tower_matches_imagebind_layout(tiny_parts):
    ib, _ = tiny_parts
    model = ImageBindVision.from_state(ib.vision)
    assert (model.width, model.depth, model.heads, model.embed, model.grid) == (64, 8, 4, 32, 16)
    assert model.tap_layers == [1, 3, 5, 7]
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        emb, taps = model(x)
        ref_emb, ref_taps = _reference_vision(ib.vision, x, heads=4, taps_at=model.tap_layers)
    assert emb.shape == (2, 32) and len(taps) == 4
    assert torch.allclose(emb, ref_emb, atol=1e-5)
    for t, r in zip(taps, ref_taps):
        assert t.shape == (2, 256, 64)
        assert torch.allclose(t, r[:, 1:], atol=1e-4)  # CLS (index 0) dropped


def test_sizes_and_heads_rule():
    assert default_tap_layers(32) == [7, 15, 23, 31] and default_tap_layers(8) == [1, 3, 5, 7]
    assert heads_for_width(1280) == 16 and 1280 // 16 == 80  # real vision: 16 heads of 80
    assert heads_for_width(1024) == 16 and 1024 // 16 == 64  # real text: 16 heads of 64
    assert heads_for_width(64) == 4 and heads_for_width(32) == 4  # tiny


# ---------------------------------------------------------------- text tower and prompts


def test_text_tower_takes_eot_row_and_is_causal(tiny_parts):
    ib, _ = tiny_parts
    model = ImageBindText.from_state(ib.text)
    tok = torch.zeros(2, 77, dtype=torch.int64)
    tok[0, :5] = torch.tensor([49406, 320, 1125, 539, 49407])
    tok[1, :5] = torch.tensor([49406, 320, 1125, 539, 49407])
    tok[1, 7] = 555  # after EOT: the causal mask must hide it from the EOT row
    with torch.no_grad():
        out = model(tok)
    assert out.shape == (2, 32)
    assert torch.allclose(out.norm(dim=-1), torch.ones(2), atol=1e-6)
    assert torch.allclose(out[0], out[1], atol=1e-6)
    tok[1, 2] = 2000  # before EOT: changes the embedding
    with torch.no_grad():
        assert not torch.allclose(model(tok)[1], out[1], atol=1e-4)


def test_prompt_ensemble():
    normal, abnormal = class_sentences("cookie")
    assert len(NORMAL_STATES) == 7 and len(ABNORMAL_STATES) == 5 and len(TEMPLATES) == 2
    assert len(normal) == 14 and len(abnormal) == 10
    assert normal[:2] == ["a photo of a cookie.", "a photo of the cookie."]
    assert "a photo of a cookie without damage." in normal and "a photo of the damaged cookie." in abnormal
    assert class_sentences(None)[0][0] == "a photo of a object." == class_sentences("  ")[0][0]
    e = np.zeros((4, 3))
    e[:2, 0], e[2:, 1] = 2.0, 5.0
    assert np.allclose(class_means(e, 2), [[1, 0, 0], [0, 1, 0]])


def test_clip_tokenizer_ids():
    pytest.importorskip("instant_clip_tokenizer", reason="instant-clip-tokenizer is not installed")
    from export.modeling.clip_tokenizer import tokenize

    ids = tokenize(["a photo of a damaged cookie.", "A  photo\tof a damaged   COOKIE. "])
    assert ids.dtype == np.int64 and ids.shape == (2, 77)
    want = [49406, 320, 1125, 539, 320, 13568, 9367, 269, 49407]
    assert ids[0, :9].tolist() == want and not ids[0, 9:].any()
    assert (ids[1] == ids[0]).all()  # lower-casing and whitespace clean-up as the official tokenizer


# ---------------------------------------------------------------- maps


def _identity_decoder(e: int) -> Decoder:
    d = Decoder([e] * 4, e)
    for fc in d.fc:
        fc.weight.data = torch.eye(e)
        fc.bias.data.zero_()
    return d


def test_decoder_map_hand_checked():
    e = 8
    normal, abnormal = torch.eye(e)[0], torch.eye(e)[1]
    text = torch.stack([normal, abnormal])
    dec = _identity_decoder(e)
    taps = [normal.expand(1, 256, e) * 3.0] * 4  # every patch points at 'normal' (scale is normalised away)
    with torch.no_grad():
        m = decoder_map(dec(taps), text)
    assert m.shape == (1, 1, 224, 224) and float(m.max()) < 1e-6  # softmax(100*[1,0])[1] = 1/(1+e^100)
    half = (normal + abnormal).expand(1, 256, e)
    with torch.no_grad():
        assert torch.allclose(decoder_map(dec([half] * 4), text), torch.full((1, 1, 224, 224), 0.5))
    # one abnormal patch at grid (row 2, col 13): its upsampled peak sits at pixel (2, 13) * 223/15
    t = normal.repeat(1, 256, 1).clone()
    t[0, 2 * 16 + 13] = abnormal
    with torch.no_grad():
        m = decoder_map(dec([t] * 4), text)[0, 0]
    r, c = divmod(int(m.argmax()), 224)
    assert (round(r * 15 / 223), round(c * 15 / 223)) == (2, 13) and float(m.max()) > 0.99


def test_decoder_upsamples_logits_not_probabilities():
    e = 2
    dec = _identity_decoder(e)
    text = torch.eye(2)
    t = torch.zeros(1, 256, 2)
    t[..., 0] = 1.0
    t[0, 0] = torch.tensor([0.0, 1.0])  # the corner patch abnormal
    with torch.no_grad():
        m = decoder_map(dec([t] * 4), text)[0, 0]
    # Along the top row between patch 0 and patch 1 the LOGITS are interpolated linearly, then softmaxed:
    # a quarter of the way gives softmax([25, 75])[1] ~ 1, where upsampling probabilities would give 0.75.
    lo, hi = torch.tensor([0.0, 100.0]), torch.tensor([100.0, 0.0])  # logits at patch 0 and patch 1
    f = torch.arange(15) * 15 / 223  # fractional grid column of pixels 0..14
    want = torch.softmax((1 - f)[:, None] * lo + f[:, None] * hi, dim=-1)[:, 1]
    assert torch.allclose(m[0, :15], want, atol=1e-5)


def test_fewshot_map_hand_checked():
    g = torch.Generator().manual_seed(0)
    shots = [torch.randn(2, 256, 16, generator=g) for _ in range(4)]
    bank = bank_from_shots(shots)
    assert bank[0].shape == (512, 16)
    same = [s[1:2] * 2.5 for s in shots]  # identical to shot 1 up to scale
    m = bank_map(same, bank)
    assert m.shape == (1, 1, 224, 224) and float(m.abs().max()) < 1e-5
    ortho_bank = [torch.eye(16)[:8].repeat(64, 1)] * 4  # bank spans dims 0..7
    q = torch.zeros(1, 256, 16)
    q[..., 12] = 1.0  # orthogonal to every bank row
    assert torch.allclose(bank_map([q] * 4, ortho_bank), torch.ones(1, 1, 224, 224), atol=1e-6)


def test_fewshot_torch_matches_runtime_numpy():
    from runtime.pipeline.maps import bank_map as np_bank_map

    g = torch.Generator().manual_seed(0)
    q = [torch.randn(1, 256, 16, generator=g) for _ in range(4)]
    shots = [torch.randn(3, 256, 16, generator=g) for _ in range(4)]
    ours = bank_map(q, bank_from_shots(shots))[0, 0].numpy()
    theirs = np_bank_map([t[0].numpy() for t in q], [b.numpy() for b in bank_from_shots(shots)], [(16, 16)] * 4)
    assert np.abs(ours - theirs).max() < 1e-5


# ---------------------------------------------------------------- prompt learner, llama_proj


def test_prompt_learner_shapes_and_order(tiny_parts):
    _, agpt = tiny_parts
    pl = PromptLearner.from_state(agpt.prompt_learner)
    convs = [m for m in pl.meta_net if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [4, 8, 16, 32, 64, 64]
    assert [c.kernel_size[0] for c in convs] == [3, 3, 3, 3, 3, 5] and convs[-1].padding == (0, 0)
    m = torch.rand(3, 1, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        p = pl(m)
        cells = pl.meta_net(m)
    assert p.shape == (3, 18, 64) and cells.shape == (3, 64, 3, 3)
    assert torch.equal(p[:, :9], agpt.prompt_learner["base_prompts"].expand(3, -1, -1))  # base first
    assert torch.equal(p[:, 9 + 1 * 3 + 2], cells[:, :, 1, 2])  # map prompts row-major: cell (1,2) is 9+5
    proj = LlamaProj.from_weights(torch.randn(64, 32), torch.randn(64))
    assert proj(torch.randn(3, 32)).shape == (3, 1, 64)


def test_fast_decoder_graph_is_the_reference_math():
    from export.modeling.decoder import decoder_map_fast

    g = torch.Generator().manual_seed(3)
    projected = [torch.randn(2, 256, 16, generator=g) for _ in range(4)]
    text = torch.nn.functional.normalize(torch.randn(2, 16, generator=g), dim=-1)
    assert (decoder_map_fast(projected, text) - decoder_map(projected, text)).abs().max() < 1e-5
