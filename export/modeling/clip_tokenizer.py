"""CLIP BPE tokenizer (context 77) through the instant-clip-tokenizer wheel (reference doc, section 3).

The wheel reproduces the official CLIP token ids (vocabulary built in, numpy only). The official
tokenizer also fixes text with ftfy and unescapes HTML; neither changes the plain ASCII prompts used
here, and its whitespace clean-up (collapse runs, strip) is done below. Lower-casing is the wheel's.
"""

from __future__ import annotations

import re
from functools import lru_cache

import numpy as np

from runtime.errors import AgptError

SOT, EOT = 49406, 49407
CONTEXT = 77


@lru_cache(maxsize=1)
def _tokenizer():
    try:
        from instant_clip_tokenizer import Tokenizer
    except ImportError:
        raise AgptError(
            "the CLIP tokenizer needs the package instant-clip-tokenizer (pip install instant-clip-tokenizer; "
            "x86_64 wheels only): text features are computed at export time on the workstation"
        ) from None
    return Tokenizer()  # building it reads the vocabulary: do it once


def tokenize(texts: list[str] | str, context: int = CONTEXT) -> np.ndarray:
    """(N, context) int64: [SOT] tokens [EOT] then zeros; too-long texts are cut, keeping SOT and EOT."""
    if isinstance(texts, str):
        texts = [texts]
    texts = [re.sub(r"\s+", " ", t).strip() for t in texts]
    ids = _tokenizer().tokenize_batch(texts, context_length=context)
    return np.asarray(ids, dtype=np.int64)
