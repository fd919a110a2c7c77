"""AnomalyGPT's LLM session: the cached prompt prefix, first-token verdicts, answers and follow-up questions.

llama.cpp itself (model, context, batches, sequence cells) is behind the thin binding in llama.py.

One frame is the sequence (reference doc, section 8)

    [BOS][before tokens] [E_img row] [middle tokens] [18 prompt rows] [question tokens]

BOS + before never change: they are decoded once and kept in the KV cache; every frame removes what
follows them and decodes the rest, positions continuing. A llama.cpp batch is all token ids or all
embedding rows, so the session looks the token rows up itself (gguf_tokens.py, bit-identical to
llama.cpp's lookup) and decodes the frame as ONE embedding batch; a GGUF whose token table it cannot
read falls back to four decodes (E_img, middle tokens, prompt rows, question tokens), same result.
A verdict needs only that prefill (`first_token`: the logits of ' Yes' and ' No'); the full answer
(`answer`) continues greedily with the reference's stop rule.

Several cameras: a context with n_seq_max > 1 decodes the frames of N cameras as N parallel sequences of
ONE llama.cpp batch (`first_token_batch`, `answer_batch`). The prefix lives in sequence 0; sequence s
gets it by llama_memory_seq_cp (a unified KV cache: the cells are shared, nothing is recomputed), and
each sequence's rows continue from the prefix's positions. Sequences never see each other's cells (the
attention mask is per sequence), so a batched frame gives the logits it gives alone.
"""

from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from runtime.errors import AgptError
from runtime.pipeline.gguf_tokens import read_token_embeddings
from runtime.pipeline.llama import LlamaContext, release_free_heap
from runtime.pipeline.prompt import PromptLayout, question_text


@dataclass
class FirstToken:
    """The verdict from one prefill: P(anomaly) = softmax over the ' Yes' and ' No' logits, entry 0."""

    p_anomaly: float
    logit_yes: float
    logit_no: float


@dataclass
class Answer:
    text: str
    tokens: list[int]  # every generated token, the stop token included
    stopped: str  # 'stop' ('##'), 'eos', or 'length'
    p_anomaly: float  # from the first step's logits, free with every answer
    prefill_ms: float = 0.0  # wall time of the prefill (the rest of the call is token-by-token decoding)


@dataclass
class FrameContext:
    """One inspected frame for a conversation: its LLM inputs and the turns so far."""

    img_embed: np.ndarray  # (1, D)
    prompts: np.ndarray  # (18, D)
    history: list[tuple[str, str]] = field(default_factory=list)


def first_token_verdict(ly: float, ln: float) -> FirstToken:
    """P(anomaly) = softmax([' Yes', ' No'] logits)[0], written so that it cannot overflow."""
    ly, ln = float(ly), float(ln)
    return FirstToken(float(1.0 / (1.0 + np.exp(min(ln - ly, 80.0)))), ly, ln)


def _p_yes(logits: np.ndarray, layout: PromptLayout) -> FirstToken:
    return first_token_verdict(logits[layout.yes_token], logits[layout.no_token])


class LlmSession:
    """A loaded GGUF with its context and the constant prefix already in the KV cache.

    kv_f32 and flash_attn=False give transformers parity to ~1e-5 (tests); the defaults (F16 KV) are
    what a line device runs. `n_embd`, when given, is the width the bundle's prompt learner produces.
    n_seq_max > 1 (one sequence per camera) sizes the context for that many frames at once: n_ctx is
    then per sequence, and the unified KV cache holds n_ctx * n_seq_max cells.
    """

    def __init__(
        self,
        gguf_path: str | Path,
        layout: PromptLayout,
        n_ctx: int = 2048,
        n_threads: int | None = None,
        n_batch: int = 512,
        kv_f32: bool = False,
        flash_attn: bool = False,
        n_embd: int | None = None,
        n_gpu_layers: int | None = None,
        verbose: bool = False,
        single_batch: bool = True,
        n_seq_max: int = 1,
        kv_type: str | None = None,
        repack: bool | None = None,
        mmap: bool | None = None,
    ):
        """kv_type: f16 | q8_0 | f32 (kv_f32 wins); repack / mmap: llama.cpp's weight repacking and file mapping
        (None: its defaults). backend.llm_kv_type / llm_repack / llm_mmap set them on the line."""
        self.layout = layout
        self._lock = threading.Lock()
        self.llama = LlamaContext(gguf_path, n_ctx=n_ctx, n_threads=n_threads, n_batch=n_batch, kv_f32=kv_f32,
                                  flash_attn=flash_attn, n_gpu_layers=n_gpu_layers, n_seq_max=n_seq_max, verbose=verbose,
                                  kv_type=kv_type, repack=repack, mmap=mmap)  # fmt: skip
        self.path, self.n_embd, self.n_vocab = self.llama.path, self.llama.n_embd, self.llama.n_vocab
        self.n_ctx, self.n_batch, self.n_seq_max = self.llama.n_ctx, self.llama.n_batch, self.llama.n_seq_max
        if n_embd is not None and n_embd != self.n_embd:
            self.close()
            raise AgptError(
                f"{self.path}: the LLM is {self.n_embd} wide but the bundle's prompt learner gives {n_embd}-wide rows: "
                "the GGUF and the vision components come from different exports"
            )
        ids = layout.prefix_tokens + layout.middle + [layout.yes_token, layout.no_token, layout.stop_token, layout.eos_token]
        if max(ids) >= self.n_vocab or min(ids) < 0:
            self.close()
            raise AgptError(f"{self.path}: the prompt layout names token ids outside this GGUF's {self.n_vocab}-token vocabulary")
        self._prefixed = {0}  # sequences whose cache holds the prefix
        self._questions: collections.OrderedDict[str, tuple[np.ndarray, np.ndarray | None]] = collections.OrderedDict()
        table = read_token_embeddings(self.path) if single_batch else None
        if table is not None and (table.n_embd, table.n_vocab) != (self.n_embd, self.n_vocab):
            table = None
        self._table = table
        self._middle = self._segment(layout.middle)
        self.n_prefix = len(layout.prefix_tokens)
        self._decode(np.asarray(layout.prefix_tokens, np.int32), 0, want="none")
        release_free_heap()  # loading leaves freed read buffers in malloc's arenas: give them back to the OS

    # ---------------------------------------------------------------- plumbing

    def close(self) -> None:
        llama = getattr(self, "llama", None)
        if llama is not None:
            llama.close()

    def __enter__(self) -> LlmSession:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def tokenize(self, text: str) -> list[int]:
        return self.llama.tokenize(text)

    def detokenize(self, tokens: list[int]) -> str:
        return self.llama.detokenize(tokens)

    @property
    def single_batch(self) -> bool:
        """True when a frame is decoded as one embedding batch (the token table was readable)."""
        return self._table is not None

    def _segment(self, ids: list[int]) -> tuple[np.ndarray, np.ndarray | None]:
        """(token ids, their embedding rows when the table is available)."""
        a = np.asarray(ids, np.int32)
        return a, (self._table.rows(a) if self._table is not None else None)

    def _question(self, text: str) -> tuple[np.ndarray, np.ndarray | None]:
        seg = self._questions.get(text)
        if seg is None:
            seg = self._questions[text] = self._segment(self.tokenize(text))
            if len(self._questions) > 64:  # a product has one question; keep a few products' worth
                self._questions.popitem(last=False)
        return seg

    def _decode(self, data: np.ndarray, pos0: int, want: str) -> np.ndarray | None:
        """Decode token ids (1-D int32) or embedding rows (2-D float32) of sequence 0 at positions pos0..

        want: 'none', 'last' (logits of the final row, (n_vocab,)) or 'all' ((n, n_vocab)).
        """
        n = data.shape[0]
        if pos0 + n > self.n_ctx:
            raise AgptError(f"prompt of {pos0 + n} positions exceeds the LLM context of {self.n_ctx}")
        flags = np.zeros(n, np.int8)
        if want == "all":
            flags[:] = 1
        elif want == "last":
            flags[-1] = 1
        out = self._decode_rows(data, np.arange(pos0, pos0 + n, dtype=np.int32), np.zeros(n, np.int32), flags)
        if want == "none":
            return None
        return out[-1] if want == "last" else np.stack(out)

    def _decode_rows(self, data: np.ndarray, pos: np.ndarray, seq: np.ndarray, flags: np.ndarray) -> list[np.ndarray]:
        return self.llama.decode_rows(data, pos, seq, flags)

    def _rows(self, x, n_rows: int, what: str) -> np.ndarray:
        a = np.asarray(x, dtype=np.float32).reshape(-1, self.n_embd) if np.size(x) % self.n_embd == 0 else None
        if a is None or a.shape[0] != n_rows:
            raise ValueError(f"{what}: expected {n_rows} rows of width {self.n_embd}, got shape {np.shape(x)}")
        return a

    def _start_sequence(self, seq: int) -> None:
        """Drop what follows the prefix in `seq` (the previous frame); give the prefix to a new sequence."""
        self.llama.seq_keep(seq, self.n_prefix)
        if seq not in self._prefixed:
            self.llama.seq_copy_prefix(0, seq, self.n_prefix)
            self._prefixed.add(seq)

    def _segments(self, img_embed, prompts, text: str) -> list[np.ndarray]:
        """One frame's rows after the prefix: a single embedding block when the token table is known, else
        the four segments (E_img rows, middle ids, prompt rows, question ids)."""
        lay = self.layout
        img = self._rows(img_embed, lay.n_img_rows, "img_embed")
        p = self._rows(prompts, lay.n_prompt_rows, "prompts")
        q = self._question(text)
        if self._table is not None:
            return [np.concatenate([img, self._middle[1], p, q[1]])]
        return [img, self._middle[0], p, q[0]]

    def _prefill_many(self, frames: list[tuple], want: str) -> tuple[list[np.ndarray], list[int]]:
        """Frames [(img_embed, prompts, text)] as sequences 0..N-1 of one batch (one per segment kind when
        the token table is unknown). Returns per frame: logits ('last': (n_vocab,), 'all': (n, n_vocab))
        and its next position."""
        if len(frames) > self.n_seq_max:
            raise AgptError(f"{len(frames)} frames in one batch, the LLM context holds {self.n_seq_max} sequences")
        segs = [self._segments(*f) for f in frames]
        for seg in segs:
            total = self.n_prefix + sum(d.shape[0] for d in seg)
            if total > self.n_ctx:
                raise AgptError(f"prompt of {total} positions exceeds the LLM context of {self.n_ctx}")
        for s in range(len(frames)):
            self._start_sequence(s)
        # the last row of each frame's last non-empty segment carries its first-token logits
        last_k = [max(k for k, d in enumerate(seg) if d.shape[0]) for seg in segs]
        next_pos = [self.n_prefix] * len(frames)
        logits: list[list[np.ndarray]] = [[] for _ in frames]
        for k in range(len(segs[0])):
            parts, pos, seq, flags = [], [], [], []
            for s, seg in enumerate(segs):
                d = seg[k]
                n = d.shape[0]
                if not n:
                    continue
                f = np.zeros(n, np.int8)
                if want == "all":
                    f[:] = 1
                elif want == "last" and k == last_k[s]:
                    f[-1] = 1  # logits only where asked: the output head is a large matmul (32001 x 4096 for 7B)
                parts.append(d)
                pos.append(np.arange(next_pos[s], next_pos[s] + n, dtype=np.int32))
                seq.append(np.full(n, s, np.int32))
                flags.append(f)
                next_pos[s] += n
            if not parts:
                continue
            flags_all = np.concatenate(flags)
            seq_all = np.concatenate(seq)
            out = self._decode_rows(np.concatenate(parts), np.concatenate(pos), seq_all, flags_all)
            for s, row in zip(seq_all[flags_all.astype(bool)], out):
                logits[int(s)].append(row)
        result = [(ls[-1] if want == "last" else np.stack(ls)) if want != "none" else None for ls in logits]
        return result, next_pos

    def _prefill(self, img_embed, prompts, text: str, want: str) -> tuple[np.ndarray, int]:
        """Everything after the cached prefix, as sequence 0; returns (logits, next position)."""
        logits, pos = self._prefill_many([(img_embed, prompts, text)], want)
        return logits[0], pos[0]

    # ---------------------------------------------------------------- API

    def first_token(self, img_embed, prompts, question: str) -> FirstToken:
        """P(anomaly) from the first answer token's ' Yes'/' No' logits: one prefill, no generation."""
        return self.first_token_batch([(img_embed, prompts, question)])[0]

    def first_token_batch(self, frames: list[tuple]) -> list[FirstToken]:
        """first_token for several frames [(img_embed, prompts, question)], decoded as parallel sequences of
        one llama.cpp batch (groups of n_seq_max frames when there are more). Same values as one by one."""
        out: list[FirstToken] = []
        with self._lock:
            for g in range(0, len(frames), self.n_seq_max):
                group = [(e, p, question_text(q)) for e, p, q in frames[g : g + self.n_seq_max]]
                logits, _ = self._prefill_many(group, "last")
                out += [_p_yes(lg, self.layout) for lg in logits]
        return out

    def answer_batch(self, frames: list[tuple], max_new_tokens: int | None = None) -> list[Answer]:
        """answer for several frames [(img_embed, prompts, question)]: one batched prefill, then one decode
        per step holding the next token of every sequence still generating."""
        out: list[Answer] = []
        for g in range(0, len(frames), self.n_seq_max):
            group = [(e, p, question_text(q)) for e, p, q in frames[g : g + self.n_seq_max]]
            out += self._generate_many(group, max_new_tokens)
        return out

    def logits_all(self, img_embed, prompts, question: str) -> np.ndarray:
        """(T, n_vocab) logits at every position of the prompt, BOS included (parity tests)."""
        with self._lock:
            self.llama.clear()
            self._prefixed = {0}
            head = self._decode(np.asarray(self.layout.prefix_tokens, np.int32), 0, "all")
            rest, _ = self._prefill(img_embed, prompts, question_text(question), "all")
        return np.concatenate([head, rest])

    def answer(self, img_embed, prompts, question: str, max_new_tokens: int | None = None) -> Answer:
        """The reference's answer: greedy, stop after '##' or EOS, text = tokens[:-2] decoded."""
        return self._generate(img_embed, prompts, question_text(question), max_new_tokens)

    def ask(self, frame: FrameContext, question: str, max_new_tokens: int | None = None) -> Answer:
        """A follow-up question on the same frame, in the reference's multi-turn format (re-prefilled)."""
        ans = self._generate(frame.img_embed, frame.prompts, question_text(question, frame.history), max_new_tokens)
        frame.history.append((question, ans.text))
        return ans

    def _generate(self, img_embed, prompts, text: str, max_new_tokens: int | None) -> Answer:
        return self._generate_many([(img_embed, prompts, text)], max_new_tokens)[0]

    def _generate_many(self, frames: list[tuple], max_new_tokens: int | None) -> list[Answer]:
        lay = self.layout
        limit = lay.max_new_tokens if max_new_tokens is None else max_new_tokens
        n = len(frames)
        with self._lock:
            t0 = time.perf_counter()
            logits, pos = self._prefill_many(frames, "last")
            prefill_ms = (time.perf_counter() - t0) * 1e3
            first = [_p_yes(lg, lay) for lg in logits]
            tokens: list[list[int]] = [[] for _ in range(n)]
            stopped = ["length"] * n
            active = list(range(n)) if limit > 0 else []
            while active:
                feed = []
                for s in active:
                    t = int(np.argmax(logits[s]))  # first maximum, as torch.argmax
                    tokens[s].append(t)
                    if t == lay.stop_token or t == lay.eos_token:
                        stopped[s] = "stop" if t == lay.stop_token else "eos"
                    elif len(tokens[s]) < limit and pos[s] < self.n_ctx:
                        feed.append(s)
                active = feed
                if not active:
                    break
                ids = np.asarray([tokens[s][-1] for s in active], np.int32)
                rows = self._decode_rows(
                    ids,
                    np.asarray([pos[s] for s in active], np.int32),
                    np.asarray(active, np.int32),
                    np.ones(len(active), np.int8),
                )
                for s, lg in zip(active, rows):
                    logits[s] = lg
                    pos[s] += 1
        # The reference decodes outputs[0][:-2]: for a trained model that drops the '\n' '##' ending; it
        # drops two tokens whatever the stop reason, and so does this.
        return [
            Answer(self.detokenize(tokens[s][:-2]).strip(), tokens[s], stopped[s], first[s].p_anomaly, prefill_ms)
            for s in range(n)
        ]
