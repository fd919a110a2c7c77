"""The oracle end to end on tiny official-format checkpoints and a real cookie photo."""

import subprocess
import sys

import numpy as np
import pytest
import torch

from export.llm_export import reference_text as answer_text
from export.reference import Reference


@pytest.fixture(scope="module")
def ref(tiny_ckpt):
    return Reference(tiny_ckpt)


def test_reference_runs_on_a_cookie(ref, cookie):
    img = sorted((cookie / "test" / "cracked").glob("*.png"))[0]
    r = ref.run(img, product="cookie", description="This is a photo of a cookie for anomaly detection.", max_new_tokens=12)
    assert r.map.shape == (224, 224) and r.map.dtype == np.float32
    assert 0.0 < r.map.min() <= r.map.max() < 1.0  # decoder map: softmax probabilities
    assert 0.0 <= r.p_anomaly <= 1.0
    assert 1 <= len(r.tokens) <= 12 and isinstance(r.answer, str)


def test_shots_replace_the_decoder_map(ref, cookie):
    shot = sorted((cookie / "train" / "good").glob("*.png"))[0]
    r = ref.run(shot, shots=[shot], max_new_tokens=1)
    assert np.abs(r.map).max() < 1e-4  # the image against itself: every patch finds itself


def test_prompt_is_30_fixed_rows_then_the_question(ref):
    lay = ref.layout
    E = torch.zeros(1, 1, ref.model.config.hidden_size)
    P = torch.zeros(1, lay.n_prompt_rows, ref.model.config.hidden_size)
    text = "Is there any anomaly in the image?\n### Assistant:"
    emb = ref.inputs_embeds(E, P, text)
    n_q = len(ref.question_ids(text))
    assert emb.shape[1] == lay.n_fixed + n_q
    assert lay.n_fixed == 1 + len(lay.before) + 1 + len(lay.middle) + 18


def test_merged_lora_answers_like_unmerged(tiny_ckpt, cookie):
    img = sorted((cookie / "test" / "good").glob("*.png"))[0]
    a = Reference(tiny_ckpt, merged_lora=False).run(img, max_new_tokens=8)
    b = Reference(tiny_ckpt, merged_lora=True).run(img, max_new_tokens=8)
    assert a.tokens == b.tokens and abs(a.p_anomaly - b.p_anomaly) < 1e-5


def test_answer_text_drops_the_stop_pair(ref):
    sp, lay = ref.sp, ref.layout
    ids = sp.encode("No, there is no anomaly in the image.") + sp.encode("\n")[-1:] + [lay.stop_token]
    assert answer_text(sp, ids) == "No, there is no anomaly in the image."


def test_cli_reference(tiny_ckpt, cookie):
    img = sorted((cookie / "test" / "cracked").glob("*.png"))[0]
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "runtime.cli",
            "export",
            "reference",
            "--ckpt-dir",
            str(tiny_ckpt),
            "--image",
            str(img),
            "--product",
            "cookie",
            "--max-new-tokens",
            "4",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert "p_anomaly(first token)" in r.stdout and "map:" in r.stdout


def test_cli_user_errors_are_one_line(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "runtime.cli", "export", "reference", "--ckpt-dir", str(tmp_path), "--image", "x.png"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2
    assert r.stderr.startswith("agpt: error: ") and "imagebind_huge.pth: no such file" in r.stderr and "Traceback" not in r.stderr
