"""CLIP's byte-level BPE in pure Python (context 77), from the merges the export wrote into the bundle.

The export-side tokenizer (instant-clip-tokenizer) is an x86_64-only wheel, so on an aarch64 device a
product named there (`add_product`, `agpt bank build`) could not get text features. The bundle carries
the 48,894 merges CLIP uses (`clip_bpe.txt.gz`, bundle.json `tokenizer`), and this module rebuilds the
vocabulary from them exactly as OpenAI's simple_tokenizer does:

    256 byte symbols, the same 256 with '</w>', one symbol per merge in rank order, <|startoftext|>, <|endoftext|>

Text is cleaned as the export side does (whitespace runs collapsed, stripped, lower-cased). ftfy and
HTML unescaping, which the original also runs, change nothing in plain ASCII product names. The split
pattern is the original's with Python's `re` classes standing in for \\p{L} / \\p{N} ([^\\W\\d_] and \\d):
identical for letters, digits and punctuation; it may differ only for rare Unicode marks and non-decimal
numerals. tests/test_clip_bpe.py checks it against the export-side tokenizer on the prompt ensemble.
"""

from __future__ import annotations

import gzip
import re
from functools import lru_cache
from pathlib import Path

import numpy as np

from runtime.errors import AgptError

CONTEXT = 77
N_MERGES = 49152 - 256 - 2  # CLIP's vocabulary is 49408: 512 byte symbols, 48894 merges, SOT, EOT
SOT_TEXT, EOT_TEXT = "<|startoftext|>", "<|endoftext|>"
_SPLIT = re.compile(r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[^\W\d_]+|\d|(?:[^\s\w]|_)+", re.IGNORECASE)


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable character table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def read_merges(path: str | Path) -> list[tuple[str, str]]:
    """Merges from a CLIP BPE file (gzip or plain; '#version' header line optional), the first N_MERGES."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        text = (gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw).decode("utf-8")
    except (OSError, EOFError, UnicodeDecodeError, gzip.BadGzipFile) as e:
        raise AgptError(f"{path}: unreadable CLIP BPE merges: {e}") from None
    lines = text.rstrip("\n").split("\n")
    if lines and lines[0].startswith("#version"):
        lines = lines[1:]
    merges = []
    for i, line in enumerate(lines[:N_MERGES]):
        parts = line.split(" ")
        if len(parts) != 2 or not all(parts):
            raise AgptError(f"{path}: line {i + 2} is not a merge ('a b'): {line[:40]!r}")
        merges.append((parts[0], parts[1]))
    if len(merges) != N_MERGES:
        raise AgptError(f"{path}: {len(merges)} merges, CLIP uses {N_MERGES}")
    return merges


class ClipBpe:
    """tokenize(texts) -> (N, 77) int64, the ids the CLIP text tower was trained on."""

    def __init__(self, merges: list[tuple[str, str]]):
        b2u = bytes_to_unicode()
        vocab = list(b2u.values())
        vocab += [v + "</w>" for v in vocab]
        vocab += ["".join(m) for m in merges]
        vocab += [SOT_TEXT, EOT_TEXT]
        self.encoder = {v: i for i, v in enumerate(vocab)}
        if len(self.encoder) != len(vocab):
            raise AgptError("CLIP BPE merges give duplicate symbols: not CLIP's merges file")
        self.ranks = {m: i for i, m in enumerate(merges)}
        self.byte_encoder = b2u
        self.sot, self.eot = self.encoder[SOT_TEXT], self.encoder[EOT_TEXT]
        self._cache = {SOT_TEXT: SOT_TEXT, EOT_TEXT: EOT_TEXT}

    @classmethod
    def from_file(cls, path: str | Path) -> ClipBpe:
        return cls(read_merges(path))

    def _bpe(self, token: str) -> str:
        cached = self._cache.get(token)
        if cached is not None:
            return cached
        word = [*token[:-1], token[-1] + "</w>"]
        while len(word) > 1:
            pairs = {(word[i], word[i + 1]) for i in range(len(word) - 1)}
            best = min(pairs, key=lambda p: self.ranks.get(p, 1 << 30))
            if best not in self.ranks:
                break
            a, b = best
            out, i = [], 0
            while i < len(word):
                if i < len(word) - 1 and word[i] == a and word[i + 1] == b:
                    out.append(a + b)
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            word = out
        result = " ".join(word)
        if len(self._cache) < 10_000:
            self._cache[token] = result
        return result

    def encode(self, text: str) -> list[int]:
        """Token ids of one text, without SOT/EOT."""
        text = re.sub(r"\s+", " ", text).strip().lower()
        ids = []
        for piece in _SPLIT.findall(text):
            piece = "".join(self.byte_encoder[b] for b in piece.encode("utf-8"))
            ids += [self.encoder[t] for t in self._bpe(piece).split(" ")]
        return ids

    def tokenize(self, texts: list[str] | str, context: int = CONTEXT) -> np.ndarray:
        """(N, context) int64: [SOT] tokens [EOT] then zeros; too-long texts are cut, keeping SOT and EOT."""
        if isinstance(texts, str):
            texts = [texts]
        out = np.zeros((len(texts), context), np.int64)
        for i, t in enumerate(texts):
            ids = [self.sot, *self.encode(t)][: context - 1] + [self.eot]
            out[i, : len(ids)] = ids
        return out


@lru_cache(maxsize=4)
def load(path: str) -> ClipBpe:
    """One tokenizer per merges file (building it takes ~0.1 s)."""
    return ClipBpe.from_file(path)
