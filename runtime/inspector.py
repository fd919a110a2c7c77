"""One frame, one way: preprocess -> encoder -> map -> prompt learner -> LLM (or the calibrated judge).

The daemon, `agpt eval` and `agpt bench` all judge frames through this class, so what is measured is
what runs on the line. The map is the product's normal-shot bank map when it has shots (it replaces the
decoder map, as in the reference), else the decoder map with the product's text features.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .bank import PackSpec, ProductPack
from .bundle import Bundle, load_bundle
from .errors import AgptError
from .maps import bank_map, l2_rows, peak_location
from .preprocess import FrameTransform, preprocess
from .prompt import parse_answer, product_question
from .vision import VisionEngines

FALLBACK_PRODUCT = "object"  # the reference's text-feature name for a product it does not know


@dataclass
class Judgement:
    verdict: bool | None
    p_anomaly: float | None
    score: float  # map maximum: the image score the reference's AUROC uses
    answer: str | None
    locations: list[str]
    map: np.ndarray  # (224,224) float32
    judge: str  # llm-first_token | llm-answer | calibrated-score | none
    latency_ms: dict[str, float] = field(default_factory=dict)
    transform: FrameTransform | None = None
    llm_context: Any = None  # runtime.llm.FrameContext, kept by the daemon for follow-up questions


class Inspector:
    def __init__(self, bundle: Bundle, backend=None, verdict_mode: str = "first_token", llm_options: dict | None = None):
        if verdict_mode not in ("first_token", "answer"):
            raise AgptError(f"verdict mode {verdict_mode!r}: expected first_token or answer")
        m = bundle.manifest
        self.bundle, self.verdict_mode = bundle, verdict_mode
        self.preprocess = m.preprocess
        self.taps_spec = m.encoder.taps
        self.grids = [tuple(t.grid) for t in m.encoder.taps]
        self.encoder_sha256 = bundle.encoder_sha256
        self.pack_spec = PackSpec.from_bundle(bundle)
        self.manifest_products = m.products
        providers = getattr(backend, "providers", None)
        threads = getattr(backend, "intra_op_threads", None)
        self.vision = VisionEngines(bundle, providers=providers, threads=threads)
        self.llm = None
        if m.llm is not None and self.vision.has("prompt"):
            from .llm import LlmSession

            width = next(s.shape[-1] for s in m.components["prompt"].outputs if s.name == "prompts")
            opts = dict(n_threads=getattr(backend, "llm_threads", None), n_gpu_layers=getattr(backend, "llm_gpu_layers", None) or None)
            opts.update(llm_options or {})
            self.llm = LlmSession(bundle.path(m.llm), m.llm.layout, n_embd=int(width), **opts)
        self._bank_id: str | None = None
        self._bank_unit: list[np.ndarray] = []

    @classmethod
    def from_config(cls, bundle_path: str | Path, backend=None, verdict_mode: str = "first_token", **kw) -> Inspector:
        return cls(load_bundle(bundle_path), backend, verdict_mode, **kw)

    @property
    def judge_name(self) -> str:
        return f"llm-{self.verdict_mode}" if self.llm is not None else "calibrated-score"

    # ---- set-up work (products) -----------------------------------------------------------------
    def _input(self, frame: np.ndarray) -> tuple[np.ndarray, FrameTransform]:
        p = self.preprocess
        x, t = preprocess(frame, p.size, p.resize, p.mean, p.std)
        return x[None], t

    def taps(self, image_bgr: np.ndarray) -> list[np.ndarray]:
        """One image's raw taps [(N_k, W_k)]: what a normal-shot bank is made of."""
        _, taps = self.vision.encode(self._input(image_bgr)[0])
        return [t[0] for t in taps]

    def text_features(self, product: str) -> np.ndarray | None:
        """(2,E) text features of a product, from bundle.json (set up at export); None without a decoder."""
        if not self.vision.has("decoder"):
            return None
        products = self.manifest_products
        entry = products.get(product) or products.get(FALLBACK_PRODUCT)
        if entry is None:
            raise AgptError(f"{self.bundle.root}: no text features for {product!r} nor '{FALLBACK_PRODUCT}': re-export with --product")
        return np.asarray(entry.text_feats, np.float32)

    def calibrate(self, pack: ProductPack, images: list[np.ndarray]) -> dict:
        """A decision threshold from the normal shots alone (only used when the bundle has no LLM)."""
        if self.llm is not None:
            return {}
        from .calibrate import calibrate

        shot_taps = [self.taps(img) for img in images]
        return calibrate(shot_taps, self.grids)

    # ---- the per-frame path ---------------------------------------------------------------------
    def _unit_bank(self, pack: ProductPack) -> list[np.ndarray]:
        # Normalising the bank is per pack, not per frame: redo it only when the pack changes.
        if pack.bank_id != self._bank_id:
            self._bank_unit = [l2_rows(b) for b in pack.bank]
            self._bank_id = pack.bank_id
        return self._bank_unit

    def anomaly_map(self, taps: list[np.ndarray], pack: ProductPack) -> np.ndarray:
        """(B,224,224) for batch taps [(B,N_k,W_k)]."""
        if pack.bank:
            bank = self._unit_bank(pack)
            return np.stack([bank_map([t[b] for t in taps], bank, self.grids, normalised_bank=True) for b in range(taps[0].shape[0])])
        if pack.text_feats is None:
            raise AgptError(f"product {pack.name!r} has neither normal shots nor text features")
        return self.vision.decoder_map(taps, pack.text_feats)

    def judge(self, frame: np.ndarray, pack: ProductPack, question: str | None = None) -> Judgement:
        lat: dict[str, float] = {}
        t = time.perf_counter()

        def lap(name: str) -> None:
            nonlocal t
            now = time.perf_counter()
            lat[name] = (now - t) * 1e3
            t = now

        x, transform = self._input(frame)
        lap("preprocess")
        emb, taps = self.vision.encode(x)
        lap("encoder")
        amap = self.anomaly_map(taps, pack)
        lap("map")
        m = amap[0].astype(np.float32)
        score = float(m.max())
        if self.llm is None:
            return self._calibrated(m, score, pack, lat, transform)
        P, E = self.vision.prompts(amap, emb)
        lap("prompt")
        from .llm import FrameContext

        ctx = FrameContext(E[0], P[0])
        q = question or product_question(pack.description)
        if self.verdict_mode == "first_token":
            p = self.llm.first_token(E[0], P[0], q).p_anomaly
            lap("llm")
            verdict = p > 0.5  # the model's own decision: ' Yes' more likely than ' No'
            locations = [peak_location(m)] if verdict else []
            return Judgement(verdict, p, score, None, locations, m, "llm-first_token", lat, transform, ctx)
        ans = self.llm.answer(E[0], P[0], q)
        lap("llm")
        verdict, locations = parse_answer(ans.text)
        return Judgement(verdict, ans.p_anomaly, score, ans.text, locations, m, "llm-answer", lat, transform, ctx)

    def _calibrated(self, m, score, pack, lat, transform) -> Judgement:
        threshold = pack.calibration.get("threshold")
        if threshold is None:
            return Judgement(None, None, score, None, [], m, "none", lat, transform)
        verdict = score > float(threshold)
        return Judgement(verdict, None, score, None, [peak_location(m)] if verdict else [], m, "calibrated-score", lat, transform)

    def ask(self, ctx, question: str) -> str:
        """An operator's follow-up question about a judged frame (daemon FrameContext or Judgement)."""
        if self.llm is None:
            raise AgptError("this bundle has no LLM: it cannot answer questions")
        judgement = getattr(ctx, "judgement", ctx)
        llm_ctx = getattr(judgement, "llm_context", None)
        if llm_ctx is None:
            raise AgptError("that frame was not judged by the LLM")
        return self.llm.ask(llm_ctx, question).text
