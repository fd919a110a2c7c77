"""bundle.json: everything the line device needs to know about an exported model, validated on load.

A bundle is a folder: bundle.json plus the component files it names, each with its sha256. The runtime
branches on what a bundle contains (decoder? prompt learner? LLM?), never on its name.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, ValidationError

from runtime.errors import AgptError
from runtime.pipeline.prompt import PromptLayout

SCHEMA_VERSION = 1
MANIFEST = "bundle.json"

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class TensorSpec(BaseModel):
    name: str
    shape: list[int | str] = Field(description="ints, or a symbolic name ('batch') for dynamic axes")
    dtype: str = "float32"


class FileRef(BaseModel):
    file: str = Field(description="path relative to the bundle folder")
    sha256: str


class Component(FileRef):
    """One graph (ONNX, or a TensorRT engine built from it)."""

    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    precision: Literal["fp32", "fp16"] = "fp32"
    external_data: list[FileRef] = Field(default_factory=list, description="ONNX external weight files")
    engines: dict[str, FileRef] = Field(default_factory=dict, description="TensorRT engines by device tag")


class Preprocess(BaseModel):
    size: int = 224
    resize: Literal["shorter_side_crop", "squash"] = Field(
        "shorter_side_crop", description="reference test path: bicubic (antialiased) shorter side, center crop"
    )
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD


class Tap(BaseModel):
    name: str = Field(description="encoder output name, e.g. 'tap0'")
    layer: int | str = Field(description="block index (ImageBind) or block name (lite)")
    grid: tuple[int, int] = Field(description="patch grid (rows, cols) of this tap")
    width: int


class EncoderInfo(BaseModel):
    family: Literal["imagebind", "efficientnet-lite0"]
    embed_dim: int | None = Field(None, description="width of emb; None when the encoder has no embedding head")
    taps: list[Tap]


class ProductText(BaseModel):
    description: str = ""
    text_feats: list[list[float]] = Field(description="(2, E): [normal, abnormal], L2-normalised")


class LlmInfo(FileRef):
    quant: str = Field(description="F32, F16, Q8_0, Q4_K_M ...")
    n_embd: int
    n_vocab: int
    layout: PromptLayout


class BundleManifest(BaseModel):
    schema_version: int = SCHEMA_VERSION
    name: str
    kind: Literal["anomalygpt", "lite"]
    created: str
    tool_versions: dict[str, str] = Field(default_factory=dict)
    sources: dict[str, FileRef] = Field(default_factory=dict, description="checkpoints the bundle came from")
    preprocess: Preprocess = Preprocess()
    encoder: EncoderInfo
    components: dict[str, Component] = Field(description="encoder, decoder, prompt, text_encoder when present")
    llm: LlmInfo | None = None
    products: dict[str, ProductText] = Field(default_factory=dict, description="text features set up at export")
    text_context: int = 77
    tokenizer: FileRef | None = Field(
        None, description="CLIP BPE merges (gzip) for text features of products named on the device (runtime.pipeline.clip_bpe)"
    )


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


class Bundle:
    """A validated bundle folder. `verify=True` hashes every file (seconds for GB files; done once at start)."""

    def __init__(self, root: Path, manifest: BundleManifest):
        self.root = root
        self.manifest = manifest

    def path(self, ref: FileRef | str) -> Path:
        return self.root / (ref if isinstance(ref, str) else ref.file)

    def has(self, component: str) -> bool:
        return component in self.manifest.components

    @property
    def encoder_sha256(self) -> str:
        return self.manifest.components["encoder"].sha256

    @property
    def products_dir(self) -> Path:
        return self.root / "products"


def _refs(m: BundleManifest) -> list[FileRef]:
    refs: list[FileRef] = []
    for c in m.components.values():
        refs += [c, *c.external_data]
    if m.llm is not None:
        refs.append(m.llm)
    if m.tokenizer is not None:
        refs.append(m.tokenizer)
    return refs


def load_bundle(root: str | Path, verify: bool = True) -> Bundle:
    root = Path(root)
    mpath = root / MANIFEST
    if not mpath.is_file():
        raise AgptError(f"{mpath}: no bundle manifest (expected a folder written by 'agpt export bundle' or 'agpt export lite')")
    try:
        raw = json.loads(mpath.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise AgptError(f"{mpath}: unreadable bundle manifest: {e}") from None
    if isinstance(raw, dict) and raw.get("schema_version") != SCHEMA_VERSION:
        raise AgptError(
            f"{mpath}: bundle schema version {raw.get('schema_version')!r}, this runtime reads {SCHEMA_VERSION}: re-export it"
        )
    try:
        manifest = BundleManifest.model_validate(raw)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise AgptError(f"{mpath}: invalid bundle manifest at '{where}': {first['msg']}") from None
    if "encoder" not in manifest.components:
        raise AgptError(f"{mpath}: bundle has no encoder component")
    for ref in _refs(manifest):
        p = root / ref.file
        if not p.is_file():
            raise AgptError(f"{p}: missing bundle file named in {MANIFEST}")
        if verify and sha256_file(p) != ref.sha256:
            raise AgptError(f"{p}: sha256 differs from {MANIFEST}: the file was altered or belongs to another bundle")
    return Bundle(root, manifest)
