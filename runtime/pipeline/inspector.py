"""One frame, one way: preprocess -> encoder -> map -> prompt learner -> LLM (or the calibrated judge).

The daemon, `agpt eval` and `agpt bench` all judge frames through this class, so what is measured is
what runs on the line. The map is the product's normal-shot bank map when it has shots (it replaces the
decoder map, as in the reference), else the decoder map with the product's text features.

Several cameras: `judge_batch(frames, packs)` runs the same path on N frames at once: the encoder and the
prompt learner see one (N,...) batch each, the maps are made per frame with each camera's own pack, and
the LLM decodes the N prompts as parallel sequences of one llama.cpp batch. `judge` is a batch of one.
Frames may be preprocessed ahead of the batch (`prepare`, e.g. on the camera's thread).

Which rule decides the verdict (Judgement.judge): by default the model's own decision (first-token
P(Yes) > 0.5, or the parsed answer; the calibrated score threshold for bundles without an LLM). A pack with
an operating point (`agpt bank tune`) decides instead by P(anomaly) > t (LLM bundles) or score > t (lite),
and the judgement says "operating-point".
"""

from __future__ import annotations

import collections
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from runtime.errors import AgptError
from runtime.pipeline.bundle import Bundle, load_bundle
from runtime.pipeline.engines.select import as_config, open_vision
from runtime.pipeline.maps import bank_map, l2_rows, peak_location
from runtime.pipeline.preprocess import FrameTransform, preprocess
from runtime.pipeline.products import PackSpec, ProductPack
from runtime.pipeline.prompt import FALLBACK_PRODUCT, parse_answer, product_question


@dataclass
class Judgement:
    verdict: bool | None
    p_anomaly: float | None
    score: float  # map maximum: the image score the reference's AUROC uses
    answer: str | None
    locations: list[str]
    map: np.ndarray  # (224,224) float32
    judge: str  # llm-first_token | llm-answer | calibrated-score | operating-point | none
    latency_ms: dict[str, float] = field(default_factory=dict)
    transform: FrameTransform | None = None
    llm_context: Any = None  # runtime.pipeline.llm.FrameContext, kept by the daemon for follow-up questions
    batch: int = 1  # frames judged together (cameras); latency_ms past preprocess is the whole batch's


@dataclass(frozen=True)
class Prepared:
    """A frame already preprocessed (Inspector.prepare): the model input and how to undo it."""

    x: np.ndarray  # (3,224,224) float32
    transform: FrameTransform
    ms: float  # preprocessing time


BANK_CACHE = 8  # normalised banks kept (one per camera's product is enough)


class Inspector:
    def __init__(
        self,
        bundle: Bundle,
        backend=None,
        verdict_mode: str = "first_token",
        llm_options: dict | None = None,
        max_new_tokens: int | None = None,
        max_batch: int = 1,
        vision=None,
        llm=None,
        vision_factory=None,
    ):
        """backend: a BackendConfig (or an object with some of its fields); the engine is chosen from it in
        runtime.pipeline.engines.select. max_batch: most frames judge_batch decodes at once (cameras); sizes
        the LLM context (n_seq_max). vision / llm: engines built elsewhere, used instead of the bundle's;
        vision_factory: how engine 'torch' is opened (default: the registered plugin)."""
        if verdict_mode not in ("first_token", "answer"):
            raise AgptError(f"verdict mode {verdict_mode!r}: expected first_token or answer")
        m = bundle.manifest
        self.bundle, self.verdict_mode, self.max_new_tokens = bundle, verdict_mode, max_new_tokens
        self.preprocess = m.preprocess
        self.grids = [tuple(t.grid) for t in m.encoder.taps]
        self.encoder_sha256 = bundle.encoder_sha256
        self.pack_spec = PackSpec.from_bundle(bundle)
        self.manifest_products = m.products
        if max_batch < 1:
            raise AgptError(f"max_batch {max_batch}: expected at least 1")
        self.max_batch = int(max_batch)
        cfg = self.backend = as_config(backend)
        self.vision = vision if vision is not None else open_vision(bundle, cfg, factory=vision_factory)
        self.llm = llm
        self._text_cache: dict[str, np.ndarray] = {}
        if llm is None and m.llm is not None and self.vision.has("prompt"):
            from runtime.pipeline.llm import LlmSession

            width = next(s.shape[-1] for s in m.components["prompt"].outputs if s.name == "prompts")
            opts = cfg.llm_options(verdict_mode)
            if self.max_batch > 1:
                opts["n_seq_max"] = self.max_batch
            opts.update(llm_options or {})
            self.llm = LlmSession(bundle.path(m.llm), m.llm.layout, n_embd=int(width), **opts)
        self._banks: collections.OrderedDict[str, list[np.ndarray]] = collections.OrderedDict()
        from runtime.pipeline.llama import release_free_heap

        release_free_heap()  # the graphs' and the GGUF's load buffers, freed, go back to the OS (glibc keeps them)

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

    def prepare(self, frame: np.ndarray) -> Prepared:
        """The preprocessing of one frame, alone: thread-safe, so a camera's thread can do it ahead."""
        t = time.perf_counter()
        x, transform = self._input(frame)
        return Prepared(x[0], transform, (time.perf_counter() - t) * 1e3)

    def taps(self, image_bgr: np.ndarray) -> list[np.ndarray]:
        """One image's raw taps [(N_k, W_k)]: what a normal-shot bank is made of."""
        _, taps = self.vision.encode(self._input(image_bgr)[0])
        return [t[0] for t in taps]

    def text_features(self, product: str, compute: bool = True) -> np.ndarray | None:
        """(2,E) text features of a product; None without a decoder. From bundle.json when the export set the
        product up; else computed here (the bundle's CLIP BPE merges and text-encoder graph, opened on this
        first use) unless `compute` is False (a product with normal shots: its map is the bank map); else the
        reference's fallback name 'object'."""
        if not self.vision.has("decoder"):
            return None
        products = self.manifest_products
        entry = products.get(product)
        if entry is not None:
            return np.asarray(entry.text_feats, np.float32)
        if product in self._text_cache:
            return self._text_cache[product]
        tok = self.bundle.manifest.tokenizer
        if compute and tok is not None and self.vision.has("text_encoder"):
            from runtime.pipeline import clip_bpe
            from runtime.pipeline.text_ensemble import class_means, class_sentences

            normal, abnormal = class_sentences(product)
            tokens = clip_bpe.load(str(self.bundle.path(tok))).tokenize(normal + abnormal, self.bundle.manifest.text_context)
            feats = self._text_cache[product] = class_means(self.vision.text_features(tokens), len(normal))
            return feats
        entry = products.get(FALLBACK_PRODUCT)
        if entry is None:
            raise AgptError(
                f"{self.bundle.root}: no text features for {product!r} nor '{FALLBACK_PRODUCT}': re-export with --product"
            )
        return np.asarray(entry.text_feats, np.float32)

    def calibrate(self, pack: ProductPack, images: list[np.ndarray]) -> dict:
        """A decision threshold from the normal shots alone (only used when the bundle has no LLM)."""
        if self.llm is not None or not pack.bank:
            return {}
        from runtime.pipeline.calibrate import calibrate_images

        n = len(images)  # the bank is the shots' taps stacked in order: split it back rather than re-encode
        shot_taps = [[b.reshape(n, -1, b.shape[-1])[i] for b in pack.bank] for i in range(n)]
        return calibrate_images(images, self.taps, self.grids, taps_per_shot=shot_taps)

    # ---- the per-frame path ---------------------------------------------------------------------
    def _unit_bank(self, pack: ProductPack) -> list[np.ndarray]:
        # Normalising the bank is per pack, not per frame: done once per pack (a few cameras' packs kept).
        bank = self._banks.get(pack.bank_id)
        if bank is None:
            bank = self._banks[pack.bank_id] = [l2_rows(b) for b in pack.bank]
            while len(self._banks) > BANK_CACHE:
                self._banks.popitem(last=False)
        else:
            self._banks.move_to_end(pack.bank_id)
        return bank

    def anomaly_map(self, taps: list[np.ndarray], pack: ProductPack) -> np.ndarray:
        """(B,224,224) for batch taps [(B,N_k,W_k)] of frames judged as `pack`."""
        if pack.bank:
            bank = self._unit_bank(pack)
            return np.stack(
                [bank_map([t[b] for t in taps], bank, self.grids, normalised_bank=True) for b in range(taps[0].shape[0])]
            )
        if pack.text_feats is None:
            raise AgptError(f"product {pack.name!r} has neither normal shots nor text features")
        return self.vision.decoder_map(taps, pack.text_feats)

    def judge(self, frame: np.ndarray | Prepared, pack: ProductPack, question: str | None = None) -> Judgement:
        return self._judge([frame], [pack], [question])[0]

    def judge_batch(
        self,
        frames: Sequence[np.ndarray | Prepared],
        packs: Sequence[ProductPack] | ProductPack,
        questions: Sequence[str | None] | None = None,
    ) -> list[Judgement]:
        """Frames of several cameras at once, each with its own pack (and question): one encoder call, one
        prompt-learner call, one LLM batch. Same judgements as judge() one by one (tests/pipeline/test_batch.py).
        A frame that cannot be preprocessed fails the call (AgptError naming its index)."""
        frames = list(frames)
        packs = [packs] * len(frames) if isinstance(packs, ProductPack) else list(packs)
        questions = [None] * len(frames) if questions is None else list(questions)
        if not (len(frames) == len(packs) == len(questions)):
            raise AgptError(f"judge_batch: {len(frames)} frames, {len(packs)} packs, {len(questions)} questions")
        if not frames:
            return []
        return self._judge(frames, packs, questions)

    def _prepared(self, frames: list) -> list[Prepared]:
        out = []
        for i, f in enumerate(frames):
            if isinstance(f, Prepared):
                out.append(f)
                continue
            try:
                out.append(self.prepare(f))
            except AgptError as e:
                raise AgptError(f"frame {i} of the batch: {e}" if len(frames) > 1 else str(e)) from None
        return out

    def _judge(self, frames: list, packs: list[ProductPack], questions: list[str | None]) -> list[Judgement]:
        return [_operating_point(j, pk) for j, pk in zip(self._judge_model(frames, packs, questions), packs)]

    def _judge_model(self, frames: list, packs: list[ProductPack], questions: list[str | None]) -> list[Judgement]:
        n = len(frames)
        lat: dict[str, float] = {}
        prep = self._prepared(frames)
        t = time.perf_counter()

        def lap(name: str) -> None:
            nonlocal t
            now = time.perf_counter()
            lat[name] = (now - t) * 1e3
            t = now

        x = np.stack([p.x for p in prep]) if n > 1 else prep[0].x[None]
        emb, taps = self.vision.encode(x)
        lap("encoder")
        amap = self._maps(taps, packs)
        lap("map")
        maps = [amap[i].astype(np.float32) for i in range(n)]
        scores = [float(m.max()) for m in maps]

        def timings(i: int) -> dict[str, float]:
            return {"preprocess": prep[i].ms, **lat}

        if self.llm is None:
            return [self._calibrated(maps[i], scores[i], packs[i], timings(i), prep[i].transform, n) for i in range(n)]
        P, E = self.vision.prompts(amap, emb)
        lap("prompt")
        from runtime.pipeline.llm import FrameContext

        qs = [q or product_question(pk.description) for q, pk in zip(questions, packs)]
        ctxs = [FrameContext(E[i], P[i]) for i in range(n)]
        if self.verdict_mode == "first_token":
            firsts = self.llm.first_token_batch([(E[i], P[i], qs[i]) for i in range(n)])
            lap("llm")
            out = []
            for i, ft in enumerate(firsts):
                p = ft.p_anomaly
                verdict = p > 0.5  # the model's own decision: ' Yes' more likely than ' No'
                locations = [peak_location(maps[i])] if verdict else []
                out.append(
                    Judgement(
                        verdict,
                        p,
                        scores[i],
                        None,
                        locations,
                        maps[i],
                        "llm-first_token",
                        timings(i),
                        prep[i].transform,
                        ctxs[i],
                        n,
                    )
                )
            return out
        answers = self.llm.answer_batch([(E[i], P[i], qs[i]) for i in range(n)], self.max_new_tokens)
        lap("llm")
        prefill = getattr(answers[0], "prefill_ms", 0.0)
        if prefill:
            lat["llm_prefill"], lat["llm_decode"] = prefill, max(lat["llm"] - prefill, 0.0)
        out = []
        for i, ans in enumerate(answers):
            verdict, locations = parse_answer(ans.text)
            out.append(
                Judgement(
                    verdict,
                    ans.p_anomaly,
                    scores[i],
                    ans.text,
                    locations,
                    maps[i],
                    "llm-answer",
                    timings(i),
                    prep[i].transform,
                    ctxs[i],
                    n,
                )
            )
        return out

    def _maps(self, taps: list[np.ndarray], packs: list[ProductPack]) -> np.ndarray:
        """(B,224,224): frames sharing a pack are mapped together (one decoder call per product)."""
        if len(packs) == 1:
            return self.anomaly_map(taps, packs[0])
        groups: dict[str, list[int]] = {}
        for i, pk in enumerate(packs):
            groups.setdefault(pk.bank_id, []).append(i)
        out = None
        for idx in groups.values():
            sel = np.asarray(idx)
            m = self.anomaly_map([t[sel] for t in taps], packs[idx[0]])
            if out is None:
                out = np.empty((len(packs), *m.shape[1:]), m.dtype)
            out[sel] = m
        return out

    def _calibrated(self, m, score, pack, lat, transform, batch: int = 1) -> Judgement:
        threshold = pack.calibration.get("threshold")
        if threshold is None:
            return Judgement(None, None, score, None, [], m, "none", lat, transform, batch=batch)
        verdict = score > float(threshold)
        return Judgement(
            verdict, None, score, None, [peak_location(m)] if verdict else [], m, "calibrated-score", lat, transform, batch=batch
        )

    def decision_value(self) -> str:
        """What an operating point of this bundle thresholds: p_anomaly (LLM) or score (no LLM)."""
        return "p_anomaly" if self.llm is not None else "score"

    def ask(self, ctx, question: str) -> str:
        """An operator's follow-up question about a judged frame (the line's KeptFrame or Judgement)."""
        if self.llm is None:
            raise AgptError("this bundle has no LLM: it cannot answer questions")
        judgement = getattr(ctx, "judgement", ctx)
        llm_ctx = getattr(judgement, "llm_context", None)
        if llm_ctx is None:
            raise AgptError("that frame was not judged by the LLM")
        return self.llm.ask(llm_ctx, question, self.max_new_tokens).text


def _operating_point(j: Judgement, pack: ProductPack) -> Judgement:
    """The pack's operating point, when it has one, decides instead of the model's own rule."""
    op = pack.operating_point
    if not op:
        return j
    value = j.p_anomaly if op["rule"] == "p_anomaly" else j.score
    if value is None:
        raise AgptError(
            f"product {pack.name!r}: its operating point thresholds {op['rule']}, which this bundle does not give "
            "(tune it again with this bundle)"
        )
    j.verdict = bool(float(value) > float(op["threshold"]))
    j.judge = "operating-point"
    if j.verdict and not j.locations:
        j.locations = [peak_location(j.map)]
    elif not j.verdict and j.answer is None:
        j.locations = []
    return j
