"""The archived frame (JPEG) and mask (PNG) of a result, as files named by time, camera and frame id.

    <root>/2026/12/02/14/cam0/20261202T143005.123Z_cam0_000123.jpg   (and ..._mask.png)

One folder per hour and camera keeps folders small for a file browser and lets an auditor find a time by
hand; the name alone says when, which camera and which frame (frame ids restart with the daemon, the time
makes the name unique). Files are written atomically (a temporary name in the same folder, then rename):
a reader, the export or a crash never sees half an image under the final name.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from runtime.line.messages import ResultHeader


def relative_name(header: ResultHeader) -> str:
    """Path of the frame's files below the root, without the suffix ('.jpg' / '_mask.png' follow)."""
    t = header.capture_time
    ms = int(round((t - int(t)) * 1000)) % 1000
    g = time.gmtime(t)
    stamp = time.strftime("%Y%m%dT%H%M%S", g) + f".{ms:03d}Z"
    folder = time.strftime("%Y/%m/%d/%H", g)
    return f"{folder}/{header.camera}/{stamp}_{header.camera}_{header.frame_id:06d}"


def write_atomic(path: Path, data: bytes, fsync: bool = False) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise


def encode_jpeg(image_bgr: np.ndarray, quality: int) -> bytes:
    import cv2

    ok, buf = cv2.imencode(".jpg", image_bgr, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError(f"JPEG encoding failed for a frame of shape {image_bgr.shape}")
    return buf.tobytes()


class ImageWriter:
    """Which results keep files (`mode`), and writing them. Paths returned are relative to `root`."""

    def __init__(self, root: Path, mode: str = "rejects", jpeg_quality: int = 90, fsync: bool = False):
        self.root = Path(root)
        self.mode = mode
        self.jpeg_quality = jpeg_quality
        self.fsync = fsync
        self.bytes_written = 0  # retention checks the free space again after every 1% of the disk written

    def wanted(self, header: ResultHeader) -> bool:
        return self.mode == "all" or (self.mode == "rejects" and header.verdict is True)

    def write(self, header: ResultHeader, image_bgr: np.ndarray | None, mask_png: bytes) -> tuple[str | None, str | None]:
        """(image path, mask path), either None when there was nothing to write. Raises OSError (disk full ...);
        the caller then drops the row, and `remove` takes back what was written."""
        if not self.wanted(header) or (image_bgr is None and not mask_png):
            return None, None
        rel = relative_name(header)
        folder = (self.root / rel).parent
        folder.mkdir(parents=True, exist_ok=True)
        image_rel = mask_rel = None
        try:
            if image_bgr is not None:
                jpeg = encode_jpeg(image_bgr, self.jpeg_quality)
                write_atomic(self.root / f"{rel}.jpg", jpeg, self.fsync)
                image_rel = f"{rel}.jpg"
                self.bytes_written += len(jpeg)
            if mask_png:
                write_atomic(self.root / f"{rel}_mask.png", mask_png, self.fsync)
                mask_rel = f"{rel}_mask.png"
                self.bytes_written += len(mask_png)
        except BaseException:
            self.remove([image_rel])
            raise
        return image_rel, mask_rel

    def remove(self, rels: list[str | None]) -> int:
        """Delete files by relative path (missing ones are fine); empty hour/camera folders go too. Bytes freed."""
        freed = 0
        for rel in rels:
            if not rel:
                continue
            p = self.root / rel
            try:
                freed += p.stat().st_size
                p.unlink()
            except FileNotFoundError:
                continue
            self._prune(p.parent)
        return freed

    def _prune(self, folder: Path) -> None:
        root = self.root.resolve()
        folder = folder.resolve()
        while folder != root and root in folder.parents:
            try:
                folder.rmdir()  # only when empty
            except OSError:
                return
            folder = folder.parent
