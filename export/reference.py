"""The oracle: AnomalyGPT inference in plain PyTorch, exactly as the released code computes it.

image -> preprocess -> ImageBind vision -> (decoder map with the product's text features | normal-shot
bank map) -> prompt learner + llama_proj -> [BOS][before][E_img][middle][P][question] -> Vicuna (+LoRA)
-> greedy answer with the reference's stop rule. fp32 on the CPU: every exported engine is compared
with this, so it favours being obviously right over being fast.
"""

from __future__ import annotations

import argparse
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from export import checkpoints as ck
from export.llm_export import build_reference_llm, make_layout, reference_generate, reference_inputs_embeds, reference_text
from export.modeling.decoder import decoder_map
from export.modeling.fewshot import bank_from_shots, bank_map
from export.modeling.text_prompts import text_features
from export.vision_modules import CheckpointPaths, load_vision_modules
from runtime.errors import AgptError
from runtime.pipeline.maps import peak_location
from runtime.pipeline.preprocess import load_image, preprocess
from runtime.pipeline.prompt import PromptLayout, parse_answer, product_question, question_text


@dataclass
class ReferenceResult:
    answer: str | None
    verdict: bool | None  # parsed from the answer, as the reference's evaluation does
    locations: list[str]
    map: np.ndarray  # (224,224) float32
    p_anomaly: float | None  # softmax over the first token's ' Yes' / ' No' logits
    tokens: list[int] = field(default_factory=list)
    peak_location: str = ""


def p_yes(first_logits: torch.Tensor, layout: PromptLayout) -> float:
    two = torch.stack([first_logits[layout.yes_token], first_logits[layout.no_token]]).double()
    return float(torch.softmax(two, dim=0)[0])


class Reference:
    """Loads the four checkpoints strictly and runs the whole model. `llm=False` stops at the prompt embeddings."""

    def __init__(
        self,
        ckpt_dir: str | Path | None = None,
        *,
        imagebind=None,
        pandagpt=None,
        anomalygpt=None,
        vicuna=None,
        llm: bool = True,
        merged_lora: bool = False,
        modules=None,
    ):
        """modules: the vision side already loaded from these checkpoints (load_vision_modules(text=True))."""
        self.paths = CheckpointPaths.resolve(ckpt_dir, imagebind, pandagpt, anomalygpt, vicuna)
        mods = modules if modules is not None else load_vision_modules(self.paths, text=True)
        self.vision, self.text, self.decoder = mods.vision, mods.text, mods.decoder
        self.prompt_learner, self.llama_proj = mods.learner, mods.proj
        self._text_cache: dict[str, torch.Tensor] = {}
        self._last_bank: tuple[str, list[torch.Tensor]] | None = None
        self.model = self.sp = self.layout = None
        if llm:
            if self.paths.vicuna is None:
                raise AgptError("no Vicuna folder given: pass --ckpt-dir DIR or --vicuna DIR")
            delta = ck.load_pandagpt(self.paths.pandagpt)
            self.model, self.sp = build_reference_llm(self.paths.vicuna, delta, merged=merged_lora)
            self.layout = make_layout(self.sp)

    # --- vision side -------------------------------------------------------------------------
    def text_feats(self, product: str | None) -> torch.Tensor:
        key = product or ""
        if key not in self._text_cache:
            self._text_cache[key] = torch.from_numpy(text_features(self.text, product))
        return self._text_cache[key]

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        return self.vision(x)

    def _bank(self, shots: torch.Tensor) -> list[torch.Tensor]:
        """The shots' bank, encoded once for a run of frames judged against the same shots (same values)."""
        key = hashlib.sha256(shots.numpy().tobytes()).hexdigest()
        if self._last_bank is None or self._last_bank[0] != key:
            _, shot_taps = self.encode(shots)
            self._last_bank = (key, bank_from_shots(shot_taps))
        return self._last_bank[1]

    @torch.no_grad()
    def anomaly_map(self, x: torch.Tensor, product: str | None = None, shots: torch.Tensor | None = None):
        """(emb, taps, map (B,1,224,224)): the bank map when shots are given (it replaces the decoder map)."""
        emb, taps = self.encode(x)
        if shots is not None and len(shots):
            return emb, taps, bank_map(taps, self._bank(shots))
        return emb, taps, decoder_map(self.decoder(taps), self.text_feats(product))

    @torch.no_grad()
    def prompts(self, m: torch.Tensor, emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.prompt_learner(m), self.llama_proj(emb)

    # --- language side -----------------------------------------------------------------------
    @torch.no_grad()
    def inputs_embeds(self, img_embed: torch.Tensor, prompts: torch.Tensor, text: str) -> torch.Tensor:
        """(1,L,D): [BOS][before][E_img][middle][P][text], each text segment tokenized alone."""
        return reference_inputs_embeds(self.model, self.layout, img_embed, prompts, self.question_ids(text))

    def question_ids(self, text: str) -> list[int]:
        return self.sp.encode(text)

    @torch.no_grad()
    def run(
        self,
        image,
        product: str | None = None,
        description: str | None = None,
        shots=(),
        question: str | None = None,
        history: list[tuple[str, str]] | None = None,
        max_new_tokens: int | None = None,
    ) -> ReferenceResult:
        """One frame, end to end. image/shots: paths or BGR uint8 arrays."""
        x = torch.from_numpy(self._load(image))[None]
        s = torch.from_numpy(np.stack([self._load(i) for i in shots])) if len(shots) else None
        emb, _, m = self.anomaly_map(x, product, s)
        amap = m[0, 0].numpy().astype(np.float32)
        result = ReferenceResult(None, None, [], amap, None, peak_location=peak_location(amap))
        if self.model is None:
            return result
        P, E = self.prompts(m, emb)
        text = question_text(question or product_question(description), history)
        embeds = self.inputs_embeds(E, P, text)
        result.tokens, first = reference_generate(self.model, embeds, self.layout, max_new_tokens)
        result.p_anomaly = p_yes(first, self.layout)
        result.answer = reference_text(self.sp, result.tokens)
        result.verdict, result.locations = parse_answer(result.answer)
        return result

    @staticmethod
    def _load(image) -> np.ndarray:
        frame = load_image(image) if isinstance(image, (str, Path)) else image
        return preprocess(frame)[0]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--ckpt-dir", type=Path, required=True, help="folder with imagebind_ckpt/, vicuna_ckpt/, pandagpt_ckpt/, anomalygpt_ckpt/"
    )
    p.add_argument("--image", type=Path, required=True)
    p.add_argument("--shots", type=Path, nargs="*", default=[], help="normal shots (1-4): the bank map replaces the decoder map")
    p.add_argument("--product", default=None, help="product name for the text features ('object' when absent)")
    p.add_argument("--description", default=None, help="product description that starts the question")
    p.add_argument("--max-new-tokens", type=int, default=None, help="cap on generated tokens (reference: 512)")


def run(args: argparse.Namespace) -> int:
    ref = Reference(args.ckpt_dir)
    r = ref.run(args.image, args.product, args.description, args.shots, max_new_tokens=args.max_new_tokens)
    m = r.map
    print(f"answer:    {r.answer!r}")
    print(
        f"verdict:   {'anomaly' if r.verdict else 'normal' if r.verdict is False else 'unparsed'}   p_anomaly(first token): {r.p_anomaly:.4f}"
    )
    print(f"locations: {r.locations or '-'}   map peak cell: {r.peak_location}")
    print(f"map:       224x224 min {m.min():.4f} mean {m.mean():.4f} max {m.max():.4f}")
    return 0
