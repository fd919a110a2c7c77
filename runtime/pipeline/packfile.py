"""The pack file: BUNDLE/products/<name>/pack.npz, no pickle (schema 2; schema 1 packs are read too, without
the parts marked 2):
  bank_0 .. bank_{K-1}  (M_k, W_k) float32   raw encoder taps of the k normal shots (absent: no shots)
  text_feats            (2, E) float32       [normal, abnormal] for the decoder map (absent in lite bundles)
  shot_0 .. shot_{k-1}  (bytes,) uint8       2: the shots' image files as given (PNG for frames from the line),
                                             so the pack can be rebuilt with one more shot (operator feedback)
  golden_0 ..           (bytes,) uint8       2: golden images, judged at start and after a changeover
  meta                  uint8                UTF-8 JSON {schema, name, description, encoder_sha256,
                                             shot_sha256s, n_shots, created, calibration{...},
                                             golden[{name, expected, sha256}] (2), operating_point{...} (2)}
Written to a temp file in the same folder, fsynced, renamed over the old pack, folder fsynced: a crash or
a full disk leaves either the old pack or the new one, never half of one. Reading checks the file itself
(members, dtypes, kept bytes against their hashes) and, given a PackSpec, the pack against the bundle
(runtime.pipeline.products.validate_pack); any failure is an AgptError naming the file.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from pathlib import Path

import numpy as np

from runtime.errors import AgptError
from runtime.pipeline.products import MAX_SHOT_BYTES, PACK_SCHEMA, GoldenImage, PackSpec, ProductPack, validate_pack

READ_SCHEMAS = (1, 2)  # schema 1: no kept shot images, no golden images, no operating point
PACK_FILE = "pack.npz"
_BANK_KEY = re.compile(r"^bank_(\d+)$")
_BYTES_KEY = re.compile(r"^(shot|golden)_(\d+)$")


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


def fsync_dir(path: Path) -> None:
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
    fsync_dir(path.parent)
    return path


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
