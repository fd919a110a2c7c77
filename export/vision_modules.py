"""The vision-side torch modules of AnomalyGPT, built from the checkpoint files through the strict loaders.

One place that knows which file feeds which module, shared by the ONNX export, the bundle writer and
`agpt export verify`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from export import checkpoints as ck
from runtime.errors import AgptError


def checkpoint_path(given, ckpt_dir, rel: Path, what: str, required: bool = True) -> Path | None:
    """An explicit path, else ckpt_dir/rel; without either, AgptError when required, else None."""
    if given:
        return Path(given)
    if ckpt_dir:
        return Path(ckpt_dir) / rel
    if required:
        raise AgptError(f"no {what} given: pass --ckpt-dir DIR or --{what} PATH")
    return None


@dataclass
class CheckpointPaths:
    imagebind: Path
    pandagpt: Path
    anomalygpt: Path
    vicuna: Path | None = None

    @classmethod
    def resolve(
        cls, ckpt_dir: str | Path | None = None, imagebind=None, pandagpt=None, anomalygpt=None, vicuna=None
    ) -> CheckpointPaths:
        """Explicit paths win; the rest come from the --ckpt-dir convention (export/checkpoints.py)."""
        return cls(
            checkpoint_path(imagebind, ckpt_dir, ck.IMAGEBIND, "imagebind"),
            checkpoint_path(pandagpt, ckpt_dir, ck.PANDAGPT, "pandagpt"),
            checkpoint_path(anomalygpt, ckpt_dir, ck.ANOMALYGPT, "anomalygpt"),
            checkpoint_path(vicuna, ckpt_dir, ck.VICUNA, "vicuna", required=False),
        )


@dataclass
class VisionModules:
    vision: object  # ImageBindVision
    text: object | None  # ImageBindText
    decoder: object  # Decoder
    learner: object  # PromptLearner
    proj: object  # LlamaProj


def load_vision_modules(paths: CheckpointPaths, text: bool = True) -> VisionModules:
    """All vision-side modules in fp32 eval mode; every checkpoint accounted strictly (missing/unexpected keys refuse)."""
    from export.modeling.decoder import Decoder
    from export.modeling.imagebind_text import ImageBindText
    from export.modeling.imagebind_vision import ImageBindVision
    from export.modeling.prompt_learner import LlamaProj, PromptLearner

    ib = ck.load_imagebind(paths.imagebind, text=text)
    panda = ck.load_pandagpt(paths.pandagpt)
    agpt = ck.load_anomalygpt(paths.anomalygpt)
    vision = ImageBindVision.from_state(ib.vision)
    decoder = Decoder.from_state(agpt.decoder)
    if any(fc.in_features != vision.width for fc in decoder.fc):
        raise AgptError(
            f"{paths.anomalygpt}: image_decoder takes width {decoder.fc[0].in_features}, the vision tower gives {vision.width}"
        )
    proj = LlamaProj.from_weights(panda.llama_proj_weight, panda.llama_proj_bias)
    if proj.in_features != vision.embed:
        raise AgptError(f"{paths.pandagpt}: llama_proj takes {proj.in_features}, the vision embedding is {vision.embed}")
    learner = PromptLearner.from_state(agpt.prompt_learner)
    if learner.base_prompts.shape[1] != proj.out_features:
        raise AgptError(
            f"{paths.anomalygpt}: prompt learner width {learner.base_prompts.shape[1]} != llama_proj width {proj.out_features}"
        )
    text_model = ImageBindText.from_state(ib.text) if text else None
    if text_model is not None and text_model.embed != decoder.fc[0].out_features:
        raise AgptError(
            f"{paths.imagebind}: text embedding {text_model.embed} != image_decoder width {decoder.fc[0].out_features}"
        )
    return VisionModules(vision, text_model, decoder, learner, proj)
