"""Answer text: llama.cpp's detokenizer plus our UTF-8 handling gives SentencePiece's text to the letter."""

import numpy as np
import sentencepiece as spm

from runtime.pipeline.bundle import load_bundle
from runtime.pipeline.llama import SP_REPLACE
from runtime.pipeline.llm import LlmSession


def test_invalid_utf8_is_replaced_per_byte():
    assert b"ab\xe2\x82c".decode("utf-8", SP_REPLACE) == "ab\ufffd\ufffdc"


def test_detokenize_equals_sentencepiece_on_random_ids(tiny_bundle, tiny_ckpt):
    sp = spm.SentencePieceProcessor(model_file=str(tiny_ckpt / "vicuna_ckpt" / "tokenizer.model"))
    m = load_bundle(tiny_bundle, verify=False).manifest
    with LlmSession(tiny_bundle / m.llm.file, m.llm.layout) as llm:
        rng = np.random.default_rng(0)
        normal = [i for i in range(sp.get_piece_size()) if not (sp.is_control(i) or sp.is_unknown(i))]
        for _ in range(200):  # byte-fallback pieces make invalid UTF-8 often
            ids = [int(i) for i in rng.choice(normal, size=int(rng.integers(1, 40)))]
            assert llm.detokenize(ids).strip() == sp.decode(ids).strip()
