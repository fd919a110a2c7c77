"""Strict key accounting: every missing, unexpected or mis-shaped key is an error naming the file."""

import pytest
import torch

from export.checkpoints import LORA_PREFIX, LORA_TARGETS, load_anomalygpt, load_imagebind, load_pandagpt
from export.tiny import anomalygpt_state, imagebind_state
from runtime.errors import AgptError


@pytest.fixture(scope="module")
def ib():
    return imagebind_state(torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def agpt():
    return anomalygpt_state(torch.Generator().manual_seed(0), llm_hidden=64)


def _pandagpt(layers=2, hidden=64, r=4, embed=32):
    s = {"llama_proj.weight": torch.zeros(hidden, embed), "llama_proj.bias": torch.zeros(hidden)}
    for i in range(layers):
        for t in LORA_TARGETS:
            s[f"{LORA_PREFIX}{i}.self_attn.{t}.lora_A.default.weight"] = torch.zeros(r, hidden)
            s[f"{LORA_PREFIX}{i}.self_attn.{t}.lora_B.default.weight"] = torch.zeros(hidden, r)
    return s


def _save(tmp_path, state, name="ck.pth"):
    p = tmp_path / name
    torch.save(state, p)
    return p


def test_good_files_load(tmp_path, ib, agpt):
    parts = load_imagebind(_save(tmp_path, ib))
    assert "modality_trunks.vision.blocks.7.mlp.fc2.bias" in parts.vision
    assert not any(k.startswith("modality_preprocessors.audio") for k in parts.vision | parts.text)
    d = load_anomalygpt(_save(tmp_path, agpt, "a.pt"))
    assert set(d.decoder) == {f"fc.{k}.{w}" for k in range(4) for w in ("weight", "bias")}
    p = load_pandagpt(_save(tmp_path, _pandagpt(), "p.pt"))
    assert p.rank == 4 and len(p.lora) == 2 and p.scale == 1.0


@pytest.mark.parametrize(
    "mutate, words",
    [
        (
            lambda s: s.pop("modality_trunks.vision.blocks.3.norm_2.bias"),
            "missing keys: modality_trunks.vision.blocks.3.norm_2.bias",
        ),
        (
            lambda s: s.__setitem__("modality_trunks.vision.blocks.0.attn.bias_k", torch.zeros(1)),
            "unexpected keys: modality_trunks.vision.blocks.0.attn.bias_k",
        ),
        (
            lambda s: s.__setitem__("modality_heads.vision.0.weight", torch.zeros(7)),
            "mis-shaped keys: modality_heads.vision.0.weight (7,)",
        ),
    ],
)
def test_imagebind_accounting(tmp_path, ib, mutate, words):
    s = dict(ib)
    mutate(s)
    path = _save(tmp_path, s)
    with pytest.raises(AgptError) as e:
        load_imagebind(path)
    assert str(path) in str(e.value) and words in str(e.value)


def test_delta_accounting(tmp_path, agpt):
    s = dict(agpt)
    s.pop("prompt_learner.base_prompts")
    s["image_decoder.fc.4.weight"] = torch.zeros(1)
    with pytest.raises(AgptError, match="missing keys: prompt_learner.base_prompts.*unexpected keys: image_decoder.fc.4.weight"):
        load_anomalygpt(_save(tmp_path, s, "a.pt"))
    p = _pandagpt()
    p.pop(f"{LORA_PREFIX}1.self_attn.v_proj.lora_B.default.weight")
    with pytest.raises(AgptError, match="missing keys: .*layers.1.self_attn.v_proj.lora_B"):
        load_pandagpt(_save(tmp_path, p, "p.pt"))


def test_swapped_files_are_named(tmp_path, ib, agpt):
    with pytest.raises(AgptError, match="not an ImageBind checkpoint.*missing key"):
        load_imagebind(_save(tmp_path, agpt, "imagebind_huge.pth"))
    with pytest.raises(AgptError, match="not a PandaGPT delta"):
        load_pandagpt(_save(tmp_path, agpt, "pytorch_model.pt"))


def test_truncated_foreign_and_absent_files(tmp_path, agpt):
    good = _save(tmp_path, agpt, "a.pt").read_bytes()
    trunc = tmp_path / "trunc.pt"
    trunc.write_bytes(good[: len(good) // 2])
    with pytest.raises(AgptError, match="trunc.pt: not a readable PyTorch checkpoint"):
        load_anomalygpt(trunc)
    text = tmp_path / "notes.pt"
    text.write_text("hello")
    with pytest.raises(AgptError, match="notes.pt: not a readable PyTorch checkpoint"):
        load_anomalygpt(text)
    with pytest.raises(AgptError, match="no such file"):
        load_anomalygpt(tmp_path / "absent.pt")


def test_no_arbitrary_unpickling(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    p = tmp_path / "evil.pt"
    torch.save({"x": Evil()}, p)
    with pytest.raises(AgptError, match="evil.pt: not a readable PyTorch checkpoint"):
        load_anomalygpt(p)
