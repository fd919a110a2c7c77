"""The token embedding table of a GGUF, read with numpy (memory-mapped; no llama.cpp, no gguf package).

Why: llama.cpp takes a batch of token ids OR of embedding rows, never both. AnomalyGPT's frame mixes
them (E_img, '</Img> ', 18 prompt rows, the question), which costs four decodes, and every decode of a
few rows streams all the weights once: on a bandwidth-bound edge GPU that is most of the verdict's
time. With the token rows looked up here, the whole frame is ONE embedding batch. The lookup is the
same arithmetic as ggml's get_rows (F32 copy, F16 widening, Q8_0 d * q in float32), so the result is
identical, not merely close; other types return None and the session falls back to four decodes.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

GGUF_MAGIC = b"GGUF"
# GGUF metadata value types -> struct format (8 string, 9 array handled apart)
_SCALAR = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
GGML_F32, GGML_F16, GGML_Q8_0 = 0, 1, 8
Q8_0_BLOCK = 32  # values per block; stored as f16 scale + 32 int8


class _Reader:
    def __init__(self, f):
        self.f = f

    def unpack(self, fmt: str):
        size = struct.calcsize("<" + fmt)
        data = self.f.read(size)
        if len(data) != size:
            raise ValueError("truncated GGUF header")
        return struct.unpack("<" + fmt, data)

    def string(self) -> bytes:
        (n,) = self.unpack("Q")
        return self.f.read(n)

    def skip_value(self, vtype: int):
        """Read a metadata value, returning it when scalar or string (arrays are skipped)."""
        if vtype in _SCALAR:
            return self.unpack(_SCALAR[vtype])[0]
        if vtype == 8:
            return self.string()
        if vtype == 9:
            etype, n = self.unpack("IQ")
            if etype in _SCALAR:
                self.f.seek(n * struct.calcsize("<" + _SCALAR[etype]), 1)
            else:
                for _ in range(n):
                    self.skip_value(etype)
            return None
        raise ValueError(f"unknown GGUF value type {vtype}")


class TokenEmbeddings:
    """Rows of token_embd.weight as float32, from a memory map of the GGUF file."""

    def __init__(self, data: np.ndarray, ggml_type: int, n_embd: int, n_vocab: int):
        self._data, self.ggml_type, self.n_embd, self.n_vocab = data, ggml_type, n_embd, n_vocab

    def rows(self, ids) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= self.n_vocab):
            raise ValueError(f"token id outside the {self.n_vocab}-token vocabulary")
        raw = self._data[ids]
        if self.ggml_type == GGML_F32:
            return np.ascontiguousarray(raw.view(np.float32))
        if self.ggml_type == GGML_F16:
            return raw.view(np.float16).astype(np.float32)
        blocks = raw.reshape(len(ids), -1, 2 + Q8_0_BLOCK)  # Q8_0: per block f16 d, then 32 int8 q
        d = blocks[:, :, :2].copy().view(np.float16).astype(np.float32)
        q = blocks[:, :, 2:].view(np.int8).astype(np.float32)
        return (q * d).reshape(len(ids), self.n_embd)


def read_token_embeddings(path: str | Path, name: str = "token_embd.weight") -> TokenEmbeddings | None:
    """The table when it is F32, F16 or Q8_0; None for other types or a file this reader does not know."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            r = _Reader(f)
            if f.read(4) != GGUF_MAGIC:
                return None
            version, n_tensors, n_kv = r.unpack("IQQ")
            if version < 2:
                return None
            alignment = 32
            for _ in range(n_kv):
                key = r.string()
                (vtype,) = r.unpack("I")
                value = r.skip_value(vtype)
                if key == b"general.alignment":
                    alignment = int(value)
            found = None
            for _ in range(n_tensors):
                tname = r.string()
                (n_dims,) = r.unpack("I")
                dims = r.unpack("Q" * n_dims)
                ttype, offset = r.unpack("IQ")
                if tname == name.encode():
                    found = (dims, ttype, offset)
            data_start = -(-f.tell() // alignment) * alignment
    except (OSError, ValueError, struct.error):
        return None
    if found is None or len(found[0]) != 2 or found[1] not in (GGML_F32, GGML_F16, GGML_Q8_0):
        return None
    (n_embd, n_vocab), ttype, offset = found
    if ttype == GGML_Q8_0 and n_embd % Q8_0_BLOCK:
        return None
    row_bytes = {GGML_F32: 4 * n_embd, GGML_F16: 2 * n_embd, GGML_Q8_0: n_embd // Q8_0_BLOCK * (2 + Q8_0_BLOCK)}[ttype]
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=data_start + offset, shape=(n_vocab, row_bytes))
    return TokenEmbeddings(data, ttype, n_embd, n_vocab)
