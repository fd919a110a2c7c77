"""Product packs: a product's normal-shot bank, text features, description, golden images and operating
point, and how one is built from normal shots.

A pack is one file per product, BUNDLE/products/<name>/pack.npz: its format is runtime/pipeline/packfile.py,
the products folder (history, rollback, the active entry) runtime/pipeline/store.py.
operating_point (optional, set by `agpt bank tune`): {rule: p_anomaly | score, threshold, judge:
"operating-point", evidence{roc, data, chosen, ...}}: the verdict becomes value > threshold instead of the
model's own decision. It is part of the bank id (it changes judgements); a pack without one keeps its id.
validate_pack checks a pack against a bundle (encoder hash, tap count and widths, shapes, finite values);
any failure is an AgptError and the caller keeps the pack it had.

`agpt bank build` (runtime/tools/bank.py) builds one offline.
"""

from __future__ import annotations

import hashlib
import inspect
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from runtime.errors import AgptError
from runtime.names import PRODUCT_RE
from runtime.pipeline.preprocess import decode_image, read_image_bytes

PACK_SCHEMA = 2  # the schema packs are built and written with (packfile.READ_SCHEMAS: the ones read)
OP_JUDGE = "operating-point"
OP_RULES = ("p_anomaly", "score")
MAX_SHOT_BYTES = 64 << 20
_PRODUCT = re.compile(PRODUCT_RE)


def check_product_name(name: str) -> str:
    if not isinstance(name, str) or not _PRODUCT.match(name):
        raise AgptError(
            f"invalid product name {name!r}: letters, digits, '_', '.', '-', starting with a letter or digit, at most 64"
        )
    return name


def bank_content_id(
    bank: Sequence[np.ndarray], text_feats: np.ndarray | None, description: str, operating_point: dict | None = None
) -> str:
    """Short content hash of everything that changes a judgement: bank, text features, description, and the
    operating point's rule and threshold when there is one (a pack without one keeps its schema-1 id)."""
    h = hashlib.sha256()
    for i, a in enumerate(list(bank) + ([text_feats] if text_feats is not None else [])):
        a = np.ascontiguousarray(a, np.float32)
        h.update(f"{i}:{a.shape}:".encode())
        h.update(a.tobytes())
    h.update(description.encode())
    if operating_point:
        h.update(f"op:{operating_point.get('rule')}:{float(operating_point.get('threshold')):.9g}".encode())
    return h.hexdigest()[:12]


@dataclass(frozen=True)
class GoldenImage:
    """A known part judged at start and after every changeover: expected True = anomalous (a golden bad part)."""

    name: str
    expected: bool
    data: bytes  # the image file's bytes
    sha256: str = ""

    def __post_init__(self):
        if not self.sha256:
            object.__setattr__(self, "sha256", hashlib.sha256(self.data).hexdigest())

    @property
    def label(self) -> str:
        return "bad" if self.expected else "good"

    def image(self) -> np.ndarray:
        return decode_image(self.data, self.name)

    @classmethod
    def from_file(cls, path: str | Path, expected: bool) -> GoldenImage:
        data = read_image_bytes(path, MAX_SHOT_BYTES)
        decode_image(data, Path(path))  # refuse an unreadable golden image now, not on the line
        return cls(Path(path).name, bool(expected), data)


def check_operating_point(op: dict | None, where: str = "operating point") -> dict | None:
    if not op:
        return None
    if not isinstance(op, dict) or op.get("rule") not in OP_RULES:
        raise AgptError(f"{where}: rule {op.get('rule') if isinstance(op, dict) else op!r}, expected one of {OP_RULES}")
    t = op.get("threshold")
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not np.isfinite(t):
        raise AgptError(f"{where}: threshold {t!r} is not a finite number")
    return op


def encode_png(image: np.ndarray) -> bytes:
    """A BGR frame as PNG bytes (lossless: the kept shot is the frame that was judged)."""
    import cv2

    ok, buf = cv2.imencode(".png", np.ascontiguousarray(image))
    if not ok:
        raise AgptError("could not encode the image as PNG")
    return buf.tobytes()


@dataclass
class ProductPack:
    name: str
    description: str
    bank: list[np.ndarray]  # per tap (M_k, W_k) float32; [] when the product has no normal shots
    text_feats: np.ndarray | None  # (2, E) or None
    meta: dict[str, Any] = field(default_factory=dict)
    bank_id: str = ""
    shots: list[bytes] = field(default_factory=list)  # the shots' image files ([] for schema-1 packs)
    golden: list[GoldenImage] = field(default_factory=list)

    def __post_init__(self):
        self.bank = [np.ascontiguousarray(b, np.float32) for b in self.bank]
        if self.text_feats is not None:
            self.text_feats = np.ascontiguousarray(self.text_feats, np.float32)
        for a in self.bank + ([self.text_feats] if self.text_feats is not None else []):
            a.flags.writeable = False  # one pack is shared by the loop and readers: nobody may edit it
        self.meta["golden"] = [{"name": g.name, "expected": g.label, "sha256": g.sha256} for g in self.golden]
        if not self.bank_id:
            self.bank_id = bank_content_id(self.bank, self.text_feats, self.description, self.operating_point)

    @property
    def operating_point(self) -> dict | None:
        """{rule, threshold, judge, evidence} set by `agpt bank tune`, or None (the model's own decision)."""
        op = self.meta.get("operating_point")
        return dict(op) if op else None

    @property
    def n_shots(self) -> int:
        return int(self.meta.get("n_shots", 0))

    @property
    def calibration(self) -> dict:
        return dict(self.meta.get("calibration") or {})

    def shot_images(self) -> list[np.ndarray]:
        """The kept shots decoded (BGR); AgptError for a pack that kept none (schema 1)."""
        if not self.shots and self.n_shots:
            raise AgptError(
                f"product {self.name!r}: the pack keeps no shot images (built before schema 2): rebuild it once with 'agpt bank build'"
            )
        return [decode_image(b, f"{self.name} shot {i}") for i, b in enumerate(self.shots)]

    def with_operating_point(self, op: dict | None) -> ProductPack:
        """The same pack with another operating point (None: back to the model's own decision); new bank id."""
        meta = dict(self.meta)
        meta.pop("operating_point", None)
        if op:
            meta["operating_point"] = dict(check_operating_point(op), judge=OP_JUDGE)
        return ProductPack(self.name, self.description, self.bank, self.text_feats, meta, "", list(self.shots), list(self.golden))


@dataclass(frozen=True)
class PackSpec:
    """What a pack must match to be used with a bundle."""

    encoder_sha256: str
    tap_widths: tuple[int, ...]
    text_dim: int | None = None  # width E of text_feats; None: not checked
    needs_bank: bool = False  # no decoder in the bundle (lite): only a normal-shot bank can make a map

    @classmethod
    def from_bundle(cls, bundle) -> PackSpec:
        m = bundle.manifest
        text_dim = None
        if "decoder" in m.components:
            spec = next((t for t in m.components["decoder"].inputs if t.name == "text_feats"), None)
            text_dim = spec.shape[-1] if spec is not None and isinstance(spec.shape[-1], int) else m.encoder.embed_dim
        return cls(bundle.encoder_sha256, tuple(t.width for t in m.encoder.taps), text_dim, "decoder" not in m.components)


def validate_pack(pack: ProductPack, spec: PackSpec, where: str) -> ProductPack:
    enc = pack.meta.get("encoder_sha256")
    if enc != spec.encoder_sha256:
        raise AgptError(
            f"{where}: built with another encoder (sha256 {str(enc)[:12]}..., this bundle's is {spec.encoder_sha256[:12]}...): rebuild it with 'agpt bank build'"
        )
    if pack.bank and len(pack.bank) != len(spec.tap_widths):
        raise AgptError(f"{where}: {len(pack.bank)} bank layers, the bundle's encoder has {len(spec.tap_widths)} taps")
    for k, (b, w) in enumerate(zip(pack.bank, spec.tap_widths)):
        if b.ndim != 2 or b.shape[0] == 0 or b.shape[1] != w:
            raise AgptError(f"{where}: bank_{k} has shape {b.shape}, expected (M, {w}) with M > 0")
        if not np.isfinite(b).all():
            raise AgptError(f"{where}: bank_{k} holds NaN or infinite values")
    if pack.text_feats is not None:
        t = pack.text_feats
        if t.ndim != 2 or t.shape[0] != 2 or (spec.text_dim is not None and t.shape[1] != spec.text_dim):
            raise AgptError(f"{where}: text_feats has shape {t.shape}, expected (2, {spec.text_dim or 'E'})")
        if not np.isfinite(t).all():
            raise AgptError(f"{where}: text_feats holds NaN or infinite values")
    if not pack.bank and (pack.text_feats is None or spec.needs_bank):
        need = "normal shots (this bundle has no decoder)" if spec.needs_bank else "normal shots or text features"
        raise AgptError(f"{where}: product has no {need}")
    check_operating_point(pack.operating_point, f"{where}: operating_point")
    return pack


def read_image(path: str | Path, max_bytes: int = MAX_SHOT_BYTES) -> tuple[np.ndarray, str]:
    """A shot image as BGR uint8 and the sha256 of its file, or AgptError naming it."""
    data = read_image_bytes(path, max_bytes)
    return decode_image(data, Path(path)), hashlib.sha256(data).hexdigest()


def build_pack(
    inspector_or_taps: Any,
    name: str,
    description: str,
    shots: Sequence[np.ndarray | str | Path],
    *,
    encoder_sha256: str | None = None,
    text_features: Callable[[str], np.ndarray | None] | None = None,
    calibrate: Callable[[ProductPack, list[np.ndarray]], dict] | None = None,
    shot_sha256s: Sequence[str] | None = None,
    shot_bytes: Sequence[bytes] | None = None,
    golden: Sequence[GoldenImage] = (),
    operating_point: dict | None = None,
) -> ProductPack:
    """A pack from normal shots (BGR arrays or image paths).

    `inspector_or_taps` is an Inspector (taps, text_features, encoder_sha256, and an optional calibrate hook)
    or a bare callable image_bgr -> list of (N_k, W_k) taps (then pass encoder_sha256). `calibrate(pack,
    shot_images) -> dict` is stored in meta["calibration"] (e.g. a score threshold from the shots).
    The shots' image files are kept in the pack: paths as read; arrays as `shot_bytes` when given (the files
    they were decoded from, with shot_sha256s their hashes), else PNG-encoded (then hashed as PNG).
    """
    check_product_name(name)
    taps_fn = getattr(inspector_or_taps, "taps", inspector_or_taps)
    if not callable(taps_fn):
        raise TypeError("build_pack needs an Inspector or a taps callable")
    if encoder_sha256 is None:
        encoder_sha256 = getattr(inspector_or_taps, "encoder_sha256", None)
        if encoder_sha256 is None:
            raise TypeError("build_pack: pass encoder_sha256 with a bare taps callable")
    own_text = text_features is None
    if own_text:
        text_features = getattr(inspector_or_taps, "text_features", None)
    if calibrate is None:
        calibrate = getattr(inspector_or_taps, "calibrate", None)

    if shot_bytes is not None and len(shot_bytes) != len(shots):
        raise AgptError(f"build_pack: {len(shot_bytes)} shot files for {len(shots)} shots")
    images, files, hashes = [], [], list(shot_sha256s or [])
    for i, s in enumerate(shots):
        if isinstance(s, np.ndarray):
            images.append(s)
            files.append(bytes(shot_bytes[i]) if shot_bytes is not None else encode_png(s))
            if shot_sha256s is None:
                hashes.append(
                    hashlib.sha256(files[-1] if shot_bytes is not None else np.ascontiguousarray(s).tobytes()).hexdigest()
                )
        else:
            data = read_image_bytes(s, MAX_SHOT_BYTES)
            images.append(decode_image(data, Path(s)))
            files.append(data)
            if shot_sha256s is None:
                hashes.append(hashlib.sha256(data).hexdigest())

    per_layer: list[list[np.ndarray]] = []
    for i, img in enumerate(images):
        taps = [np.asarray(t, np.float32) for t in taps_fn(img)]
        if i == 0:
            per_layer = [[] for _ in taps]
        if len(taps) != len(per_layer):
            raise AgptError(f"shot {i}: the encoder gave {len(taps)} taps, the first shot {len(per_layer)}")
        for k, t in enumerate(taps):
            per_layer[k].append(t.reshape(-1, t.shape[-1]))
    bank = [np.concatenate(layer, axis=0) for layer in per_layer]
    if text_features is None:
        tf = None
    elif own_text and images and "compute" in inspect.signature(text_features).parameters:
        # normal shots: the bank map replaces the decoder map, so no text encoder is opened for this product
        tf = text_features(name, compute=False)
    else:
        tf = text_features(name)
    meta = {
        "schema": PACK_SCHEMA,
        "name": name,
        "description": description,
        "encoder_sha256": encoder_sha256,
        "shot_sha256s": hashes,  # of the files read (or the arrays given): where the shots came from
        "kept_shot_sha256s": [hashlib.sha256(b).hexdigest() for b in files],  # of the shot_i bytes kept in the pack
        "n_shots": len(images),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "calibration": {},
    }
    if operating_point:
        meta["operating_point"] = dict(check_operating_point(operating_point), judge=OP_JUDGE)
    pack = ProductPack(name, description, bank, None if tf is None else np.asarray(tf, np.float32), meta, "", files, list(golden))
    if calibrate is not None and images:
        pack.meta["calibration"] = dict(calibrate(pack, images) or {})
    return pack


def rebuild_with_shots(
    inspector: Any,
    pack: ProductPack,
    extra: Sequence[np.ndarray],
    extra_files: Sequence[bytes],
    decoded: Sequence[np.ndarray] | None = None,
) -> ProductPack:
    """The pack built again from its kept shots plus `extra` (frames an operator marked as normal): same name,
    description, golden images and operating point; a new bank, calibration and bank id. `decoded`: the kept
    shots already decoded (pack.shot_images(), e.g. off the inspection loop)."""
    old = list(decoded) if decoded is not None else pack.shot_images()
    return build_pack(
        inspector,
        pack.name,
        pack.description,
        [*old, *extra],
        shot_bytes=[*pack.shots, *extra_files],
        golden=pack.golden,
        operating_point=pack.operating_point,
    )
