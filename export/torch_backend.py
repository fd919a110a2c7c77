"""Torch backend: the GPU workstation path for hosts without TensorRT (optional; imported only when asked for).

A bundle's ONNX graphs do not run in torch, so this backend builds the vision modules from the ORIGINAL
checkpoints (export.vision_modules, the same strict loaders as the export) and runs them

  * fp16 on a CUDA device, attention through F.scaled_dot_product_attention (flash / memory-efficient
    kernels; the same arithmetic as ImageBind's nn.MultiheadAttention fast path), and each graph captured
    once per batch size in a CUDA graph (torch.cuda.CUDAGraph): one launch per frame instead of ~500;
  * fp32 eager on the CPU (no graphs): the configuration the tests compare with the ONNX graphs.

TorchVision has VisionEngines' numpy interface (has, encode, decoder_map, prompts), so
Inspector(bundle, vision=TorchVision.from_checkpoints(...)) runs the line's per-frame path on it, and a
tensor interface (encode_t, decoder_map_t, bank_map_t, prompts_t) that keeps everything on the device.

TorchPrefill is the LLM side of a `first_token` verdict: the merged Vicuna (+LoRA) as a transformers
LlamaForCausalLM (its weights, norms, MLPs and rotary tables), with a static-shape prefill written out
here: the constant prefix's keys and values are computed once, each frame runs only the rows after it
(E_img, '</Img> ', the 18 prompts, the question: ~75 positions for the real model) against them, and
only the ' Yes' / ' No' rows of the output head are evaluated. Static shapes make it CUDA-graph
capturable (one graph per (batch, question length)). It gives first_token / first_token_batch as
runtime.pipeline.llm.LlmSession does; `answer` stays with llama.cpp.

Nothing here imports torch at module level: the runtime (and its torch-free test) may import this file.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from runtime.errors import AgptError
from runtime.pipeline.prompt import PromptLayout, question_text

VISION_GRAPHS = ("encoder", "decoder", "prompt")


def _torch():
    try:
        import torch
    except ImportError:
        raise AgptError("the torch backend needs torch (pip install torch; a CUDA build for the GPU path)") from None
    return torch


def cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def _dtype(torch, name: str | Any):
    if not isinstance(name, str):
        return name
    try:
        return {
            "float16": torch.float16,
            "fp16": torch.float16,
            "bfloat16": torch.bfloat16,
            "bf16": torch.bfloat16,
            "float32": torch.float32,
            "fp32": torch.float32,
        }[name]
    except KeyError:
        raise AgptError(f"torch backend: unknown dtype {name!r} (float16, bfloat16, float32)") from None


def _sdpa_attention(attn) -> None:
    """Make an export.modeling.transformer.Attention use F.scaled_dot_product_attention (same math)."""
    torch = _torch()
    F = torch.nn.functional

    def forward(x, mask=None):
        B, L, D = x.shape
        hd = D // attn.heads
        q, k, v = F.linear(x, attn.in_proj_weight, attn.in_proj_bias).split(D, dim=-1)
        q, k, v = (t.reshape(B, L, attn.heads, hd).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=None if mask is None else mask.to(q.dtype))
        return attn.out_proj(y.transpose(1, 2).reshape(B, L, D))

    attn.forward = forward


class Graphed:
    """fn(*tensors) -> tensor | tuple | list of tensors, replayed from a CUDA graph per input shape.

    The first call with a shape warms fn up on a side stream and captures it; later calls copy the
    inputs into the captured buffers and replay. Outputs are cloned (the buffers belong to the graph).
    On the CPU, or with enabled=False, fn is called directly. A capture that fails falls back to eager
    for that shape and records why in `errors`.
    """

    def __init__(self, fn: Callable, enabled: bool = True, pool=None, warmup: int = 2):
        self.fn, self.enabled, self.pool, self.warmup = fn, enabled, pool, warmup
        self.graphs: dict[tuple, tuple] = {}
        self.failed: set[tuple] = set()
        self.errors: dict[str, str] = {}  # input shapes (as text) -> why the capture failed

    def __call__(self, *xs):
        torch = _torch()
        if not self.enabled or not xs[0].is_cuda:
            return self.fn(*xs)
        key = tuple((tuple(x.shape), x.dtype) for x in xs)
        if key in self.failed:
            return self.fn(*xs)
        g = self.graphs.get(key)
        if g is None:
            try:
                g = self.graphs[key] = self._capture(xs)
            except Exception as e:  # an op that cannot be captured: stay eager for this shape
                self.failed.add(key)
                self.errors[str([list(k[0]) for k in key])] = f"{type(e).__name__}: {str(e)[:200]}"
                torch.cuda.synchronize()
                return self.fn(*xs)
        graph, static_in, static_out = g
        for s, x in zip(static_in, xs):
            s.copy_(x, non_blocking=True)
        graph.replay()
        return _map_out(static_out, lambda t: t.clone())

    def _capture(self, xs):
        torch = _torch()
        static_in = [x.clone() for x in xs]
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(self.warmup):
                self.fn(*static_in)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            static_out = self.fn(*static_in)
        torch.cuda.synchronize()
        return graph, static_in, static_out


def _map_out(out, f):
    if isinstance(out, (tuple, list)):
        return type(out)(_map_out(o, f) for o in out)
    return f(out)


class TorchVision:
    """The vision side (encoder, decoder map, prompt learner + llama_proj) as torch modules."""

    def __init__(self, modules, device: str = "cuda", dtype: str = "float16", cuda_graphs: bool = True, sdpa: bool = True):
        torch = self.torch = _torch()
        if str(device).startswith("cuda") and not torch.cuda.is_available():
            raise AgptError("torch backend: CUDA is not available on this host (device='cpu' runs it in fp32)")
        self.device = torch.device(device)
        self.dtype = _dtype(torch, dtype)
        self.vision = modules.vision.to(self.device, self.dtype).eval()
        self.decoder = modules.decoder.to(self.device, self.dtype).eval()
        self.learner = modules.learner.to(self.device, self.dtype).eval()
        self.proj = modules.proj.to(self.device, self.dtype).eval()
        if sdpa:
            for block in self.vision.blocks:
                _sdpa_attention(block.attn)
        graphs = cuda_graphs and self.device.type == "cuda"
        # each graph keeps its own memory pool: no capture can hand another graph's buffers out
        self._encode = Graphed(self._encode_fn, graphs)
        self._decoder = Graphed(self._decoder_fn, graphs)
        self._prompts = Graphed(self._prompts_fn, graphs)
        self.tap_layers = list(self.vision.tap_layers)

    @classmethod
    def from_checkpoints(
        cls, ckpt_dir: str | Path | None = None, *, imagebind=None, pandagpt=None, anomalygpt=None, **kw
    ) -> TorchVision:
        """The GPU workstation path: needs torch and the original checkpoint files (not a bundle)."""
        from export.vision_modules import CheckpointPaths, load_vision_modules

        return cls(load_vision_modules(CheckpointPaths.resolve(ckpt_dir, imagebind, pandagpt, anomalygpt), text=False), **kw)

    @property
    def graph_errors(self) -> dict[str, dict]:
        return {
            n: g.errors for n, g in (("encoder", self._encode), ("decoder", self._decoder), ("prompt", self._prompts)) if g.errors
        }

    def has(self, name: str) -> bool:
        return name in VISION_GRAPHS

    # ---- graph bodies (static shapes, no host syncs: capturable) ----
    def _encode_fn(self, x):
        emb, taps = self.vision(x)
        return (emb, *taps)

    def _decoder_fn(self, tap0, tap1, tap2, tap3, text_feats):
        """export.modeling.decoder.decoder_map with the decoder's Linear layers in the module dtype and the
        normalisation, logits and softmax in fp32 (x100 logits in fp16 would lose the map's detail)."""
        from export.modeling.decoder import decoder_map

        projected = [fc(t).float() for fc, t in zip(self.decoder.fc, (tap0, tap1, tap2, tap3))]
        return decoder_map(projected, text_feats.float())[:, 0]

    def _prompts_fn(self, m, emb):
        return self.learner(m.to(self.dtype)[:, None] if m.ndim == 3 else m.to(self.dtype)), self.proj(emb.to(self.dtype))

    # ---- tensor interface (stays on the device) ----
    def encode_t(self, x) -> tuple[Any, list]:
        with self.torch.inference_mode():
            out = self._encode(x.to(self.device, self.dtype, non_blocking=True))
        return out[0], list(out[1:])

    def decoder_map_t(self, taps: list, text_feats) -> Any:
        if len(taps) != 4:
            raise AgptError(f"torch backend: the decoder takes 4 taps, got {len(taps)}")
        with self.torch.inference_mode():
            return self._decoder(*taps, text_feats.to(self.device, self.torch.float32))

    def bank_map_t(self, taps: list, bank: list) -> Any:
        """Few-shot map (B,224,224) from taps [(B,N,W)] and a normalised bank [(M,W)] (fp32 similarities)."""
        from export.modeling.fewshot import bank_map

        torch = self.torch
        with torch.inference_mode():
            query = [q.float() for q in taps]
            return bank_map(query, [b.to(self.device, torch.float32) for b in bank], normalised_bank=True)[:, 0]

    def prompts_t(self, m, emb) -> tuple[Any, Any]:
        with self.torch.inference_mode():
            return self._prompts(m.to(self.device, self.torch.float32), emb)

    # ---- VisionEngines' numpy interface ----
    def _np(self, t) -> np.ndarray:
        return t.float().cpu().numpy()

    def _t(self, a: np.ndarray):
        a = np.ascontiguousarray(a)
        if not a.flags.writeable:  # torch.from_numpy wants a writable array (packs are read-only)
            a = a.copy()
        return self.torch.from_numpy(a).to(self.device, non_blocking=True)

    def encode(self, x: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        emb, taps = self.encode_t(self._t(x))
        return self._np(emb), [self._np(t) for t in taps]

    def decoder_map(self, taps: list[np.ndarray], text_feats: np.ndarray) -> np.ndarray:
        return self._np(
            self.decoder_map_t([self._t(t).to(self.dtype) for t in taps], self._t(np.asarray(text_feats, np.float32)))
        )

    def prompts(self, m: np.ndarray, emb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        m = m[:, 0] if m.ndim == 4 else m
        P, E = self.prompts_t(self._t(np.asarray(m, np.float32)), self._t(np.asarray(emb, np.float32)))
        return self._np(P), self._np(E)


class TorchPrefill:
    """first_token on a transformers LlamaForCausalLM: cached prefix, static-shape prefill, optional CUDA graph."""

    def __init__(
        self,
        model,
        layout: PromptLayout,
        tokenize: Callable[[str], list[int]],
        device: str = "cuda",
        dtype: str = "float16",
        cuda_graphs: bool = True,
    ):
        torch = self.torch = _torch()
        if str(device).startswith("cuda") and not torch.cuda.is_available():
            raise AgptError("torch backend: CUDA is not available on this host (device='cpu' runs it in fp32)")
        self.device, self.dtype = torch.device(device), _dtype(torch, dtype)
        self.model = model.to(self.device, self.dtype).eval()
        self.layout, self.tokenize = layout, tokenize
        cfg = model.config
        self.n_heads = cfg.num_attention_heads
        self.n_kv = getattr(cfg, "num_key_value_heads", None) or self.n_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.n_heads
        self.n_embd = cfg.hidden_size
        inner = model.model
        if model.model.rotary_emb.inv_freq.device != self.device:  # a computed buffer: keep it with the model
            model.model.rotary_emb.to(self.device)
        self.embed = inner.embed_tokens
        # only the ' Yes' and ' No' rows of the output head are ever needed for a verdict
        self.head_yn = model.lm_head.weight[[layout.yes_token, layout.no_token]].detach().clone()
        with torch.inference_mode():
            ids = torch.tensor([layout.prefix_tokens], device=self.device)
            _, self.prefix_kv = self._forward(self.embed(ids), 0, None, want_kv=True)
            self._middle = self.embed(torch.tensor([layout.middle], device=self.device))[0]
        self.n_prefix = len(layout.prefix_tokens)
        self._questions: dict[str, Any] = {}
        graphs = cuda_graphs and self.device.type == "cuda"
        self._prefill = Graphed(self._prefill_fn, graphs)

    @classmethod
    def from_checkpoints(cls, ckpt_dir: str | Path | None = None, *, vicuna=None, pandagpt=None, **kw) -> TorchPrefill:
        """The merged Vicuna + PandaGPT LoRA (fp32 on the CPU while merging: ~27 GB of RAM for 7B)."""
        from export.checkpoints import PANDAGPT, VICUNA, load_pandagpt
        from export.llm_export import build_reference_llm, make_layout
        from export.vision_modules import checkpoint_path

        vicuna = checkpoint_path(vicuna, ckpt_dir, VICUNA, "vicuna")
        pandagpt = checkpoint_path(pandagpt, ckpt_dir, PANDAGPT, "pandagpt")
        model, sp = build_reference_llm(vicuna, load_pandagpt(pandagpt), merged=True)
        return cls(model, make_layout(sp), lambda text: list(sp.encode(text)), **kw)

    @property
    def graph_errors(self) -> dict:
        return self._prefill.errors

    # ---- the transformer, written out for static shapes ----
    def _forward(self, x, pos0: int, past: list | None, want_kv: bool = False):
        """x (B,T,D) input rows at positions pos0.., attending to `past` [(K,V) (1,kv,P,hd)] and causally to
        themselves. Returns (final-norm hidden state of the last row (B,D), new [(K,V)] when want_kv)."""
        torch, F = self.torch, self.torch.nn.functional
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

        B, T, _ = x.shape
        P = 0 if past is None else past[0][0].shape[2]
        pos = torch.arange(pos0, pos0 + T, device=x.device)[None]
        cos, sin = self.model.model.rotary_emb(x, pos)
        allowed = torch.ones(T, P + T, dtype=torch.bool, device=x.device)
        allowed[:, P:] = torch.tril(torch.ones(T, T, dtype=torch.bool, device=x.device))
        new_kv = []
        for i, layer in enumerate(self.model.model.layers):
            a = layer.self_attn
            h = layer.input_layernorm(x)
            q = a.q_proj(h).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
            k = a.k_proj(h).view(B, T, self.n_kv, self.head_dim).transpose(1, 2)
            v = a.v_proj(h).view(B, T, self.n_kv, self.head_dim).transpose(1, 2)
            q, k = apply_rotary_pos_emb(q, k, cos, sin)
            if want_kv:
                new_kv.append((k, v))
            if past is not None:
                k = torch.cat([past[i][0].expand(B, -1, -1, -1), k], dim=2)
                v = torch.cat([past[i][1].expand(B, -1, -1, -1), v], dim=2)
            if self.n_kv != self.n_heads:
                k = k.repeat_interleave(self.n_heads // self.n_kv, dim=1)
                v = v.repeat_interleave(self.n_heads // self.n_kv, dim=1)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
            x = x + a.o_proj(y.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim))
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        return self.model.model.norm(x[:, -1]), new_kv

    def _prefill_fn(self, rows):
        h, _ = self._forward(rows, self.n_prefix, self.prefix_kv)
        return h.float() @ self.head_yn.float().transpose(0, 1)  # (B,2): ' Yes', ' No' logits

    # ---- API ----
    def rows(self, img_embed, prompts, question: str):
        """(T,D) rows after the prefix for one frame: E_img, '</Img> ', P, question (+ assistant suffix)."""
        torch = self.torch
        text = question_text(question)
        q = self._questions.get(text)
        if q is None:
            with torch.inference_mode():
                q = self._questions[text] = self.embed(torch.tensor([self.tokenize(text)], device=self.device))[0]
        img = torch.as_tensor(img_embed).to(self.device, self.dtype).reshape(-1, self.n_embd)
        p = torch.as_tensor(prompts).to(self.device, self.dtype).reshape(-1, self.n_embd)
        return torch.cat([img, self._middle, p, q])

    def first_token_logits_t(self, rows):
        """(B,T,D) rows (same question length) -> (B,2) fp32 ' Yes' / ' No' logits, on the device."""
        with self.torch.inference_mode():
            return self._prefill(rows.to(self.dtype))

    def first_token_batch(self, frames: list[tuple]):
        """[(img_embed, prompts, question)] -> [FirstToken]; frames with the same question length share a batch."""
        from runtime.pipeline.llm import first_token_verdict

        torch = self.torch
        with torch.inference_mode():
            rows = [self.rows(*f) for f in frames]
        out: list = [None] * len(frames)
        groups: dict[int, list[int]] = {}
        for i, r in enumerate(rows):
            groups.setdefault(r.shape[0], []).append(i)
        for idx in groups.values():
            lg = self.first_token_logits_t(torch.stack([rows[i] for i in idx])).double().cpu().numpy()
            for i, (ly, ln) in zip(idx, lg):
                out[i] = first_token_verdict(ly, ln)
        return out

    def first_token(self, img_embed, prompts, question: str):
        return self.first_token_batch([(img_embed, prompts, question)])[0]

    def answer(self, *a, **k):
        raise AgptError(
            "the torch backend reads first-token verdicts only: use verdict mode first_token (answers run on llama.cpp)"
        )

    answer_batch = ask = answer
