"""A thin binding over llama.cpp's C API (llama-cpp-python's ctypes layer): load a GGUF, make a context,
decode rows of token ids or embedding rows at given positions and sequences, copy and drop sequence cells.

Nothing here knows AnomalyGPT's prompt: that is llm.py. llama.cpp's log goes to a ring buffer, so an error
can be reported as one line (`last_log_line`) instead of flooding the console.
"""

from __future__ import annotations

import codecs
import collections
import ctypes
import os
import sys
import threading
from pathlib import Path

import numpy as np

from runtime.errors import AgptError

# SentencePiece (the reference's decoder) turns every byte of an invalid UTF-8 sequence into its own U+FFFD;
# Python's "replace" gives one per maximal invalid run. Per byte, so answers match the reference to the letter.
SP_REPLACE = "agpt-sentencepiece-replace"
codecs.register_error(SP_REPLACE, lambda e: ("\ufffd" * (e.end - e.start), e.end))

_LOG: collections.deque[str] = collections.deque(maxlen=64)
_VERBOSE = False
_INIT_LOCK = threading.Lock()
_INITIALISED = False
_LOG_CALLBACK = None  # kept referenced: llama.cpp holds a raw pointer to it


def llama_cpp_module():
    """Import llama_cpp and route its log into a ring buffer (printed only when verbose)."""
    global _INITIALISED, _LOG_CALLBACK
    import llama_cpp

    with _INIT_LOCK:
        if not _INITIALISED:

            @llama_cpp.llama_log_callback
            def _log(level, text, user_data):
                msg = text.decode("utf-8", "replace") if text else ""
                _LOG.append(msg)
                if _VERBOSE:
                    sys.stderr.write(msg)

            _LOG_CALLBACK = _log
            llama_cpp.llama_log_set(_LOG_CALLBACK, ctypes.c_void_p(0))
            llama_cpp.llama_backend_init()
            _INITIALISED = True
    return llama_cpp


def last_log_line() -> str:
    """The last llama.cpp log line that looks like an error (for one-line error messages)."""
    lines = [m.strip() for m in _LOG if m.strip()]
    errs = [m for m in lines if "error" in m.lower() or "failed" in m.lower()]
    return (errs or lines or ["no message"])[-1][:300]


KV_TYPES = {"f16": "GGML_TYPE_F16", "q8_0": "GGML_TYPE_Q8_0", "f32": "GGML_TYPE_F32"}


def release_free_heap() -> None:
    """glibc malloc_trim(0): return the heap's free pages to the OS (model loading frees large read buffers
    that glibc otherwise keeps resident). A no-op where there is no glibc (musl, macOS)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _load_model(
    path: Path, vocab_only: bool = False, n_gpu_layers: int | None = None, repack: bool | None = None, mmap: bool | None = None
):
    """repack: llama.cpp's CPU weight repacking (use_extra_bufts; faster Q4_K prefill); mmap: map the file rather
    than read it (a mapped file read for repacking stays resident beside the repacked copy). None: llama.cpp's
    default (both on)."""
    ll = llama_cpp_module()
    if not path.is_file():
        raise AgptError(f"{path}: no such GGUF file (expected the LLM written by 'agpt export llm')")
    mp = ll.llama_model_default_params()
    mp.vocab_only = vocab_only
    if n_gpu_layers is not None:
        mp.n_gpu_layers = n_gpu_layers
    if repack is not None:
        mp.use_extra_bufts = bool(repack)
    if mmap is not None:
        mp.load_mode = ll.LLAMA_LOAD_MODE_MMAP if mmap else ll.LLAMA_LOAD_MODE_NONE
    _LOG.clear()
    model = ll.llama_model_load_from_file(str(path).encode(), mp)
    if not model:
        raise AgptError(f"{path}: llama.cpp cannot load this GGUF ({last_log_line()})")
    return model


def _tokenize(vocab, text: str) -> list[int]:
    """llama.cpp's own tokenizer, no BOS, special pieces not parsed (as SentencePiece on a segment)."""
    ll = llama_cpp_module()
    data = text.encode("utf-8")
    cap = len(data) + 8
    buf = (ll.llama_token * cap)()
    n = ll.llama_tokenize(vocab, data, len(data), buf, cap, False, False)
    if n < 0:  # cannot happen for SentencePiece (at most one token per byte + prefix), kept for safety
        cap = -n
        buf = (ll.llama_token * cap)()
        n = ll.llama_tokenize(vocab, data, len(data), buf, cap, False, False)
    return list(buf[:n])


def gguf_tokenize(path: str | Path, text: str) -> list[int]:
    """Token ids of `text` by the GGUF's tokenizer (vocabulary only is loaded). For export checks."""
    ll = llama_cpp_module()
    model = _load_model(Path(path), vocab_only=True)
    try:
        return _tokenize(ll.llama_model_get_vocab(model), text)
    finally:
        ll.llama_model_free(model)


class LlamaContext:
    """A loaded GGUF with one context: n_seq_max sequences of n_ctx positions each (unified KV cache when
    several, so a sequence copy shares cells instead of copying them), two reusable batches of n_batch rows
    (token ids, and embedding rows)."""

    def __init__(self, gguf_path: str | Path, n_ctx: int = 2048, n_threads: int | None = None, n_batch: int = 512,
                 kv_f32: bool = False, flash_attn: bool = False, n_gpu_layers: int | None = None,
                 n_seq_max: int = 1, verbose: bool = False, kv_type: str | None = None, repack: bool | None = None,
                 mmap: bool | None = None):  # fmt: skip
        global _VERBOSE
        _VERBOSE = verbose
        ll = self._ll = llama_cpp_module()
        self.path = Path(gguf_path)
        self._model = self._ctx = None
        self._batches: list = []
        if not 1 <= int(n_seq_max) <= 256:
            raise AgptError(f"n_seq_max {n_seq_max}: expected 1 to 256 sequences (one per camera)")
        kv = "f32" if kv_f32 else (kv_type or "f16")
        if kv not in KV_TYPES:
            raise AgptError(f"KV type {kv!r}: one of {', '.join(KV_TYPES)}")
        self._model = _load_model(self.path, n_gpu_layers=n_gpu_layers, repack=repack, mmap=mmap)
        self.n_embd = int(ll.llama_model_n_embd(self._model))
        self._vocab = ll.llama_model_get_vocab(self._model)
        self.n_vocab = int(ll.llama_vocab_n_tokens(self._vocab))
        self.n_seq_max = int(n_seq_max)
        cp = ll.llama_context_default_params()
        cp.n_ctx = n_ctx * self.n_seq_max
        cp.n_batch = cp.n_ubatch = n_batch
        cp.n_seq_max = self.n_seq_max
        # One buffer for all sequences: llama_memory_seq_cp then shares the prefix cells instead of copying
        # a whole per-sequence stream, and a batch of N frames needs no equal-length split.
        cp.kv_unified = self.n_seq_max > 1
        cp.n_threads = cp.n_threads_batch = n_threads or os.cpu_count() or 1
        cp.no_perf = True
        cp.flash_attn_type = ll.LLAMA_FLASH_ATTN_TYPE_ENABLED if flash_attn else ll.LLAMA_FLASH_ATTN_TYPE_DISABLED
        cp.type_k = cp.type_v = getattr(ll, KV_TYPES[kv])
        if kv == "q8_0" and not flash_attn:  # llama.cpp quantises the V cache only with flash attention
            cp.type_v = ll.GGML_TYPE_F16
        self._ctx = ll.llama_init_from_model(self._model, cp)
        if not self._ctx:
            self.close()
            raise AgptError(f"{self.path}: llama.cpp cannot create a context (n_ctx {n_ctx}): {last_log_line()}")
        self.n_ctx = int(ll.llama_n_ctx(self._ctx)) // self.n_seq_max  # positions one sequence may use
        self.n_batch = n_batch
        self._mem = ll.llama_get_memory(self._ctx)
        # Two reusable batches: token ids, and embedding rows (token left NULL). One sequence id per row;
        # _seq_ids mirrors what each batch's rows hold, so only changed ids are written (none for one camera).
        self._tok = ll.llama_batch_init(n_batch, 0, 1)
        self._emb = ll.llama_batch_init(n_batch, self.n_embd, 1)
        self._batches = [self._tok, self._emb]
        self._seq_ids = [np.zeros(n_batch, np.int32), np.zeros(n_batch, np.int32)]
        for b in self._batches:
            for i in range(n_batch):
                b.n_seq_id[i] = 1
                b.seq_id[i][0] = 0

    def close(self) -> None:
        ll = getattr(self, "_ll", None)
        if ll is None:
            return
        for b in self._batches:
            ll.llama_batch_free(b)
        self._batches = []
        if self._ctx:
            ll.llama_free(self._ctx)
            self._ctx = None
        if self._model:
            ll.llama_model_free(self._model)
            self._model = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    # ---- vocabulary -----------------------------------------------------------------------------------------

    def tokenize(self, text: str) -> list[int]:
        """llama.cpp's tokenizer on one segment (no BOS, special pieces not parsed)."""
        return _tokenize(self._vocab, text)

    def detokenize(self, tokens: list[int]) -> str:
        """Text of `tokens`, control tokens (BOS/EOS/pad) rendered as nothing, leading prefix space removed."""
        ll = self._ll
        if not tokens:
            return ""
        arr = (ll.llama_token * len(tokens))(*tokens)
        cap = 16 * len(tokens) + 16
        buf = ctypes.create_string_buffer(cap)
        n = ll.llama_detokenize(self._vocab, arr, len(tokens), buf, cap, True, False)
        if n < 0:
            cap = -n + 1
            buf = ctypes.create_string_buffer(cap)
            n = ll.llama_detokenize(self._vocab, arr, len(tokens), buf, cap, True, False)
        return buf.raw[:n].decode("utf-8", SP_REPLACE)

    # ---- decoding -------------------------------------------------------------------------------------------

    def decode_rows(self, data: np.ndarray, pos: np.ndarray, seq: np.ndarray, flags: np.ndarray) -> list[np.ndarray]:
        """One llama_decode per n_batch rows: token ids (1-D) or embedding rows (2-D), each row with its own
        position and sequence id; returns the logits of the flagged rows, in row order."""
        ll = self._ll
        n = data.shape[0]
        is_emb = data.ndim == 2
        k = 1 if is_emb else 0
        batch, mirror = self._batches[k], self._seq_ids[k]
        data = np.ascontiguousarray(data, dtype=np.float32 if is_emb else np.int32)
        pos = np.ascontiguousarray(pos, np.int32)
        flags = np.ascontiguousarray(flags, np.int8)
        out = []
        for s in range(0, n, self.n_batch):
            m = min(self.n_batch, n - s)
            chunk = data[s : s + m]  # kept referenced until the copy below is done
            if is_emb:
                ctypes.memmove(batch.embd, chunk.ctypes.data, chunk.nbytes)
            else:
                ctypes.memmove(batch.token, chunk.ctypes.data, chunk.nbytes)
            ctypes.memmove(batch.pos, pos[s : s + m].ctypes.data, 4 * m)
            ctypes.memmove(batch.logits, flags[s : s + m].ctypes.data, m)
            for i in np.flatnonzero(mirror[:m] != seq[s : s + m]):
                batch.seq_id[int(i)][0] = int(seq[s + i])
                mirror[i] = seq[s + i]
            batch.n_tokens = m
            rc = ll.llama_decode(self._ctx, batch)
            if rc != 0:
                raise AgptError(f"{self.path}: llama_decode failed (code {rc}): {last_log_line()}")
            for j in np.flatnonzero(flags[s : s + m]):
                ptr = ll.llama_get_logits_ith(self._ctx, int(j))
                out.append(np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)).copy())
        return out

    # ---- sequence cells --------------------------------------------------------------------------------------

    def seq_keep(self, seq: int, n: int) -> None:
        """Drop the cells of `seq` from position n on (what followed a kept prefix)."""
        self._ll.llama_memory_seq_rm(self._mem, seq, n, -1)

    def seq_copy_prefix(self, src: int, dst: int, n: int) -> None:
        """Make dst hold src's first n positions (shared cells in a unified cache) and nothing else."""
        self._ll.llama_memory_seq_rm(self._mem, dst, -1, -1)
        self._ll.llama_memory_seq_cp(self._mem, src, dst, 0, n)

    def clear(self) -> None:
        self._ll.llama_memory_clear(self._mem, True)
