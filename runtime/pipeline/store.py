"""The products folder, BUNDLE/products/: packs on disk (runtime/pipeline/packfile.py), plus products defined
in bundle.json (text features only).

Saving over a pack first keeps the old file under <name>/history/ (rollback: ProductStore.rollback).
.active.json remembers each camera's last committed changeover, so a restart resumes with it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from runtime.errors import AgptError
from runtime.names import PRODUCT_RE
from runtime.pipeline.packfile import PACK_FILE, fsync_dir, read_pack, write_pack
from runtime.pipeline.products import PACK_SCHEMA, PackSpec, ProductPack, check_product_name, validate_pack

HISTORY_DIR = "history"
HISTORY_KEEP = 20  # previous versions kept per product (oldest removed first)
ACTIVE_FILE = ".active.json"  # a leading dot: no product name can collide with it
_PRODUCT = re.compile(PRODUCT_RE)


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
            fsync_dir(hist)
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
        fsync_dir(self.root)

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
