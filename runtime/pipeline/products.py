"""Product packs: a product's normal-shot bank, text features and description, one file per product.

BUNDLE/products/<name>/pack.npz, no pickle (schema 2; schema 1 packs are read too, without the parts marked 2):
  bank_0 .. bank_{K-1}  (M_k, W_k) float32   raw encoder taps of the k normal shots (absent: no shots)
  text_feats            (2, E) float32       [normal, abnormal] for the decoder map (absent in lite bundles)
  shot_0 .. shot_{k-1}  (bytes,) uint8       2: the shots' image files as given (PNG for frames from the line),
                                             so the pack can be rebuilt with one more shot (operator feedback)
  golden_0 ..           (bytes,) uint8       2: golden images, judged at start and after a changeover
  meta                  uint8                UTF-8 JSON {schema, name, description, encoder_sha256,
                                             shot_sha256s, n_shots, created, calibration{...},
                                             golden[{name, expected, sha256}] (2), operating_point{...} (2)}
operating_point (optional, set by `agpt bank tune`): {rule: p_anomaly | score, threshold, judge:
"operating-point", evidence{roc, data, chosen, ...}}: the verdict becomes value > threshold instead of the
model's own decision. It is part of the bank id (it changes judgements); a pack without one keeps its id.
Saving over a pack first keeps the old file under <name>/history/ (rollback: ProductStore.rollback).
Written to a temp file in the same folder, fsynced, renamed over the old pack, folder fsynced: a crash or
a full disk leaves either the old pack or the new one, never half of one. Loading validates everything
(encoder hash, tap count and widths, shapes, finite values); any failure is an AgptError and the caller
keeps the pack it had.

`agpt bank build` (runtime/tools/bank.py) builds one offline.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from runtime.errors import AgptError
from runtime.names import PRODUCT_RE
from runtime.pipeline.preprocess import decode_image, read_image_bytes

PACK_SCHEMA = 2
READ_SCHEMAS = (1, 2)  # schema 1: no kept shot images, no golden images, no operating point
PACK_FILE = "pack.npz"
HISTORY_DIR = "history"
HISTORY_KEEP = 20  # previous versions kept per product (oldest removed first)
OP_JUDGE = "operating-point"
OP_RULES = ("p_anomaly", "score")
ACTIVE_FILE = ".active.json"  # a leading dot: no product name can collide with it
MAX_SHOT_BYTES = 64 << 20
_PRODUCT = re.compile(PRODUCT_RE)
_BANK_KEY = re.compile(r"^bank_(\d+)$")
_BYTES_KEY = re.compile(r"^(shot|golden)_(\d+)$")


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


# ---- file format ------------------------------------------------------------------------------------


def _pack_arrays(pack: ProductPack) -> dict[str, np.ndarray]:
    arrays = {f"bank_{k}": b for k, b in enumerate(pack.bank)}
    if pack.text_feats is not None:
        arrays["text_feats"] = pack.text_feats
    for i, b in enumerate(pack.shots):
        arrays[f"shot_{i}"] = np.frombuffer(b, np.uint8)
    for i, g in enumerate(pack.golden):
        arrays[f"golden_{i}"] = np.frombuffer(g.data, np.uint8)
    meta = dict(pack.meta, schema=PACK_SCHEMA, name=pack.name, description=pack.description)
    arrays["meta"] = np.frombuffer(json.dumps(meta, sort_keys=True).encode(), np.uint8)
    return arrays


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return  # not supported here (e.g. Windows); the rename is still atomic
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_pack(pack: ProductPack, path: Path) -> Path:
    """Atomic write: temp file in the same folder, fsync, rename over `path`, fsync the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=PACK_FILE + ".tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **_pack_arrays(pack))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, OSError):
            raise AgptError(f"{path}: could not write the pack ({e.strerror or e}); the previous pack is unchanged") from None
        raise
    _fsync_dir(path.parent)
    return path


def _unlink_version(path: Path) -> None:
    for p in (path, path.with_name(path.name + ".tmp")):
        try:
            p.unlink()
        except OSError:
            pass
    try:
        path.parent.rmdir()  # only when empty: a first version that failed leaves no history folder behind
    except OSError:
        pass


def read_pack(path: Path, spec: PackSpec | None = None, name: str | None = None) -> ProductPack:
    """Load and validate; AgptError (naming the file) on any problem."""
    where = str(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}  # each member read in full here, so its CRC is checked
    except FileNotFoundError:
        raise AgptError(f"{where}: no such pack") from None
    except Exception as e:  # truncated zip, bad CRC, object arrays, not a zip at all ...
        raise AgptError(f"{where}: unreadable pack ({type(e).__name__}: {str(e)[:120]})") from None
    meta_raw = arrays.pop("meta", None)
    if meta_raw is None or meta_raw.dtype != np.uint8 or meta_raw.ndim != 1:
        raise AgptError(f"{where}: no meta record")
    try:
        meta = json.loads(meta_raw.tobytes().decode())
        assert isinstance(meta, dict)
    except Exception:
        raise AgptError(f"{where}: meta record is not a JSON object") from None
    schema = meta.get("schema")
    if schema not in READ_SCHEMAS:
        raise AgptError(f"{where}: pack schema {schema!r}, this runtime reads {', '.join(map(str, READ_SCHEMAS))}")
    if name is not None and meta.get("name") != name:
        raise AgptError(f"{where}: pack names product {meta.get('name')!r}, expected {name!r}")
    ks = sorted(int(m.group(1)) for k in arrays if (m := _BANK_KEY.match(k)))
    if ks != list(range(len(ks))):
        raise AgptError(f"{where}: bank layers {ks} are not 0..K-1")
    blobs: dict[str, dict[int, bytes]] = {"shot": {}, "golden": {}}
    for k in list(arrays):
        m = _BYTES_KEY.match(k)
        if m is None or schema < 2:
            continue
        a = arrays.pop(k)
        if a.dtype != np.uint8 or a.ndim != 1 or a.size > MAX_SHOT_BYTES:
            raise AgptError(f"{where}: {k} is not an image file's bytes (uint8, one dimension, at most {MAX_SHOT_BYTES})")
        blobs[m.group(1)][int(m.group(2))] = a.tobytes()
    unknown = set(arrays) - {f"bank_{k}" for k in ks} - {"text_feats"}
    if unknown:
        raise AgptError(f"{where}: unexpected arrays {sorted(unknown)}")
    for k, a in arrays.items():
        if a.dtype != np.float32:
            raise AgptError(f"{where}: {k} has dtype {a.dtype}, expected float32")
    shots = [blobs["shot"][i] for i in sorted(blobs["shot"])]
    if sorted(blobs["shot"]) != list(range(len(shots))):
        raise AgptError(f"{where}: shot images {sorted(blobs['shot'])} are not 0..k-1")
    if shots and [hashlib.sha256(b).hexdigest() for b in shots] != list(meta.get("kept_shot_sha256s") or []):
        raise AgptError(f"{where}: the kept shot images do not match kept_shot_sha256s")
    golden_meta = (meta.get("golden") or []) if schema >= 2 else []
    if not isinstance(golden_meta, list) or sorted(blobs["golden"]) != list(range(len(golden_meta))):
        raise AgptError(f"{where}: golden images {sorted(blobs['golden'])} do not match the {len(golden_meta)} in meta")
    golden = []
    for i, g in enumerate(golden_meta):
        data = blobs["golden"][i]
        if not isinstance(g, dict) or g.get("expected") not in ("good", "bad"):
            raise AgptError(f"{where}: golden {i}: expected 'good' or 'bad'")
        gi = GoldenImage(str(g.get("name") or f"golden_{i}"), g["expected"] == "bad", data)
        if g.get("sha256") and g["sha256"] != gi.sha256:
            raise AgptError(f"{where}: golden {i} ({gi.name}) does not match its sha256")
        golden.append(gi)
    pack = ProductPack(
        name=str(meta.get("name")),
        description=str(meta.get("description", "")),
        bank=[arrays[f"bank_{k}"] for k in ks],
        text_feats=arrays.get("text_feats"),
        meta=meta,
        shots=shots,
        golden=golden,
    )
    return validate_pack(pack, spec, where) if spec is not None else pack


# ---- building ---------------------------------------------------------------------------------------


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
    if text_features is None:
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
    tf = text_features(name) if text_features is not None else None
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


# ---- the products folder ----------------------------------------------------------------------------


class ProductStore:
    """BUNDLE/products/: packs on disk, plus products defined in bundle.json (text features only)."""

    def __init__(self, root: Path, spec: PackSpec, manifest_products: dict | None = None):
        self.root = Path(root)
        self.spec = spec
        self.manifest_products = dict(manifest_products or {})

    def pack_path(self, name: str) -> Path:
        return self.root / check_product_name(name) / PACK_FILE

    def names(self) -> list[str]:
        on_disk = []
        if self.root.is_dir():
            on_disk = [p.parent.name for p in self.root.glob(f"*/{PACK_FILE}") if _PRODUCT.match(p.parent.name)]
        return sorted(set(on_disk) | set(self.manifest_products))

    def exists(self, name: str) -> bool:
        return self.pack_path(name).is_file() or name in self.manifest_products

    def load(self, name: str) -> ProductPack:
        path = self.pack_path(name)
        if path.is_file():
            return read_pack(path, self.spec, name)
        if name in self.manifest_products:
            p = self.manifest_products[name]
            desc = getattr(p, "description", None) if not isinstance(p, dict) else p.get("description", "")
            feats = getattr(p, "text_feats", None) if not isinstance(p, dict) else p.get("text_feats")
            meta = {
                "schema": PACK_SCHEMA,
                "name": name,
                "encoder_sha256": self.spec.encoder_sha256,
                "source": "bundle.json",
                "n_shots": 0,
            }
            pack = ProductPack(name, desc or "", [], np.asarray(feats, np.float32) if feats is not None else None, meta)
            return validate_pack(pack, self.spec, f"bundle.json products.{name}")
        known = ", ".join(self.names()) or "none"
        raise AgptError(f"no product {name!r} (packs in {self.root}: {known})")

    def save(self, pack: ProductPack, replace: bool = False) -> Path:
        """Write the pack; a pack it replaces is kept first under <name>/history/ (for rollback)."""
        validate_pack(pack, self.spec, f"product {pack.name!r}")
        path = self.pack_path(pack.name)
        if path.exists() and not replace:
            raise AgptError(f"{path}: product {pack.name!r} exists (replace it explicitly)")
        kept = self._keep_version(path) if path.exists() else None
        try:
            return write_pack(pack, path)
        except BaseException:
            if kept is not None:  # the old pack is still the current one: no history entry for it
                _unlink_version(kept)
            raise

    def history_dir(self, name: str) -> Path:
        return self.pack_path(name).parent / HISTORY_DIR

    def history(self, name: str) -> list[Path]:
        """Previous versions of a product's pack, oldest first (file names: <unix ns>-<bank id>.npz)."""
        d = self.history_dir(name)
        return sorted(d.glob("*.npz")) if d.is_dir() else []

    def _keep_version(self, path: Path) -> Path:
        """The current pack file into history/: a hard link (the rename that follows replaces only the name)."""
        try:
            old_id = read_pack(path).bank_id
        except AgptError:
            old_id = "unreadable"
        hist = path.parent / HISTORY_DIR
        hist.mkdir(exist_ok=True)
        dest = hist / f"{time.time_ns()}-{old_id}.npz"
        try:
            try:
                os.link(path, dest)
            except OSError:  # no hard links on this file system: copy, then rename into place
                tmp = hist / (dest.name + ".tmp")
                shutil.copy2(path, tmp)
                os.replace(tmp, dest)
            _fsync_dir(hist)
        except OSError as e:
            _unlink_version(dest)
            raise AgptError(f"{dest}: could not keep the previous version ({e.strerror or e}); the pack is unchanged") from None
        for extra in self.history(path.parent.name)[:-HISTORY_KEEP]:
            try:
                extra.unlink()
            except OSError:
                pass
        return dest

    def rollback(self, name: str) -> tuple[ProductPack, ProductPack]:
        """Back to the newest previous version with another bank id: (restored, replaced). The replaced pack
        goes into history too, so a rollback can itself be rolled back."""
        current = self.load(name)
        for old_path in reversed(self.history(name)):
            try:
                old = read_pack(old_path, self.spec, name)
            except AgptError:
                continue
            if old.bank_id == current.bank_id:
                continue
            self.save(old, replace=True)
            old_path.unlink(missing_ok=True)  # it is the current pack again
            return old, current
        raise AgptError(f"product {name!r}: no previous version to roll back to (in {self.history_dir(name)})")

    def set_active(self, name: str, bank_id: str, cameras: dict[str, str]) -> None:
        """Remember the committed product of the cameras that changed over, so a restart (even after SIGKILL)
        resumes with it. `cameras` maps each of them to its config product at the time (its base): a restart
        resumes only while the config still names that product, so editing the config wins over an old
        changeover. One format for every line, {"cameras": {name: {product, bank_id, base, time}}}; the other
        cameras' entries are kept as they were.
        """
        now = time.time()
        old = self._read_active() or {}
        per = old.get("cameras") if isinstance(old.get("cameras"), dict) else {}
        per.update({cam: {"product": name, "bank_id": bank_id, "base": b, "time": now} for cam, b in cameras.items()})
        entry = {"cameras": per}
        self.root.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=ACTIVE_FILE + ".tmp-", dir=self.root)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(entry, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.root / ACTIVE_FILE)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        _fsync_dir(self.root)

    def _read_active(self) -> dict | None:
        try:
            entry = json.loads((self.root / ACTIVE_FILE).read_text())
        except Exception:
            return None
        return entry if isinstance(entry, dict) else None

    def active_entry(self, camera: str) -> dict | None:
        """{product, bank_id, base, time} of that camera's last committed changeover, or None. Reads the file
        one-camera daemons wrote before (the entry at the top level, no "cameras"): it stands for any camera,
        and the base check in the caller decides whether it applies."""
        entry = self._read_active()
        if isinstance(entry, dict) and isinstance(entry.get("cameras"), dict):
            entry = entry["cameras"].get(camera)
        if not isinstance(entry, dict) or not isinstance(entry.get("product"), str) or not _PRODUCT.match(entry["product"]):
            return None
        return entry


# ---- agpt bank build ----------------------------------------------------------------------------------
