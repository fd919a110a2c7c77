"""CLIP BPE tokenizer (context 77) through the instant-clip-tokenizer wheel (reference doc, section 3).

The wheel reproduces the official CLIP token ids (vocabulary built in, numpy only). The official
tokenizer also fixes text with ftfy and unescapes HTML; neither changes the plain ASCII prompts used
here, and its whitespace clean-up (collapse runs, strip) is done below. Lower-casing is the wheel's.
"""

from __future__ import annotations

import gzip
import re
from functools import lru_cache
from pathlib import Path

import numpy as np

from runtime.errors import AgptError

SOT, EOT = 49406, 49407
CONTEXT = 77
N_MERGES = 49152 - 256 - 2


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


BPE_FILE = "clip_bpe.txt.gz"  # in the bundle: what runtime.pipeline.clip_bpe tokenizes with on any platform
_VERSION_LINE = b"#version: 0.2\n"


def bpe_merges_bytes(path: str | Path | None = None) -> bytes:
    """CLIP's BPE merges file (OpenAI's bpe_simple_vocab_16e6.txt, plain text): from `path` (plain or gzip),
    else from the instant-clip-tokenizer wheel, which embeds that file verbatim (its vocabulary)."""
    if path is not None:
        raw = Path(path).read_bytes()
        return gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
    _tokenizer()  # the clear error when the wheel is missing
    import instant_clip_tokenizer

    folder = Path(instant_clip_tokenizer.__file__).parent
    for lib in sorted(folder.glob("instant_clip_tokenizer*")):
        data = lib.read_bytes()
        start = data.find(_VERSION_LINE)
        if start < 0:
            continue
        lines, end = 0, start
        while lines <= N_MERGES:  # the header and the merges CLIP uses; the rest of the file is never read
            end = data.index(b"\n", end) + 1
            lines += 1
        return data[start:end]
    raise AgptError(f"{folder}: no CLIP BPE merges found in the instant-clip-tokenizer wheel; pass the merges file")


def write_bpe(out_dir: Path, sentences: list[str], path: str | Path | None = None) -> Path:
    """Write the merges CLIP uses into the bundle (gzip, reproducible bytes) and check that the runtime's
    pure-Python BPE gives the export tokenizer's ids on `sentences` (the prompt ensemble)."""
    from runtime.pipeline.clip_bpe import ClipBpe, read_merges

    raw = bpe_merges_bytes(path)
    lines = raw.split(b"\n")
    body = b"\n".join(lines[: 1 + N_MERGES] if lines[0].startswith(b"#version") else [_VERSION_LINE.strip(), *lines[:N_MERGES]])
    target = Path(out_dir) / BPE_FILE
    with open(target, "wb") as f, gzip.GzipFile(fileobj=f, mode="wb", mtime=0, filename="") as gz:
        gz.write(body + b"\n")
    ours = ClipBpe(read_merges(target)).tokenize(sentences)
    theirs = tokenize(sentences)
    bad = [s for s, a, b in zip(sentences, ours, theirs) if not np.array_equal(a, b)]
    if bad:
        target.unlink()
        raise AgptError(f"the runtime CLIP BPE differs from instant-clip-tokenizer on {len(bad)} sentences, e.g. {bad[0]!r}")
    return target
