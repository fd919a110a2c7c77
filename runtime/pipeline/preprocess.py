"""The reference image transform (reference doc, section 1) and its inverse for masks.

Test path of the released code: PIL RGB -> Resize(shorter side 224, BICUBIC) -> CenterCrop(224) -> [0,1]
-> CLIP normalisation. PIL's bicubic is antialiased when shrinking, which cv2.INTER_CUBIC is not, so the
resize is done with Pillow: maps and verdicts then match the reference on the same photo.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from runtime.errors import AgptError
from runtime.pipeline.bundle import CLIP_MEAN, CLIP_STD


@dataclass(frozen=True)
class FrameTransform:
    """Where the 224x224 model frame sits in the camera frame: resize to (resized_h, resized_w), then crop."""

    height: int
    width: int
    resized_h: int
    resized_w: int
    top: int
    left: int
    size: int = 224

    def as_dict(self) -> dict:
        return self.__dict__.copy()


def plan(height: int, width: int, size: int = 224, mode: str = "shorter_side_crop") -> FrameTransform:
    if mode == "squash":
        return FrameTransform(height, width, size, size, 0, 0, size)
    if mode != "shorter_side_crop":
        raise AgptError(f"unknown resize mode {mode!r} (shorter_side_crop | squash)")
    # torchvision Resize(int): the long side is truncated, not rounded; CenterCrop rounds half to even.
    if height <= width:
        rh, rw = size, int(size * width / height)
    else:
        rh, rw = int(size * height / width), size
    return FrameTransform(height, width, rh, rw, int(round((rh - size) / 2.0)), int(round((rw - size) / 2.0)), size)


def three_channels(frame: np.ndarray) -> np.ndarray:
    """A 3-channel uint8 image, channel order kept, from what a camera gives (gray, 3 or 4 channels), or AgptError."""
    if not isinstance(frame, np.ndarray) or frame.size == 0:
        raise AgptError("empty or non-array frame")
    if frame.dtype != np.uint8:
        raise AgptError(f"frame dtype {frame.dtype}, expected uint8")
    if frame.ndim == 2:
        frame = frame[:, :, None]
    if frame.ndim != 3 or frame.shape[2] not in (1, 3, 4):
        raise AgptError(f"frame shape {frame.shape}: expected HxW, HxWx1, HxWx3 or HxWx4")
    if frame.shape[2] == 1:
        return np.repeat(frame, 3, axis=2)
    return np.ascontiguousarray(frame[:, :, :3])


def crop_resize(img: np.ndarray, t: FrameTransform) -> np.ndarray:
    """uint8 (224,224,3): the reference's bicubic resize and center crop (per channel: order does not matter)."""
    img = np.ascontiguousarray(img)
    pil = Image.frombuffer("RGB", (img.shape[1], img.shape[0]), img, "raw", "RGB", 0, 1)  # no copy of the frame
    if (t.resized_w, t.resized_h) != pil.size:
        pil = pil.resize((t.resized_w, t.resized_h), Image.BICUBIC)
    return np.asarray(pil)[t.top : t.top + t.size, t.left : t.left + t.size]


@lru_cache(maxsize=8)
def _normalise_table(mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """(3,256) float32: ToTensor + Normalize of every uint8 value, computed with the same float32 operations
    as the per-pixel form, so a lookup gives the same bits ten times faster than the arithmetic."""
    v = np.arange(256, dtype=np.uint8).astype(np.float32) / np.float32(255.0)
    return np.stack([(v - np.float32(m)) / np.float32(s) for m, s in zip(mean, std)]).astype(np.float32)


def normalise(rgb224: np.ndarray, mean=CLIP_MEAN, std=CLIP_STD, bgr: bool = False) -> np.ndarray:
    """(3,224,224) float32 from uint8 HWC (RGB, or BGR when bgr), as ToTensor + Normalize."""
    table = _normalise_table(tuple(float(m) for m in mean), tuple(float(s) for s in std))
    out = np.empty((3, *rgb224.shape[:2]), np.float32)
    for c in range(3):
        np.take(table[c], rgb224[:, :, 2 - c if bgr else c], out=out[c], mode="clip")  # uint8 indices: clip never bites
    return out


def preprocess(
    frame: np.ndarray, size: int = 224, mode: str = "shorter_side_crop", mean=CLIP_MEAN, std=CLIP_STD, bgr: bool = True
) -> tuple[np.ndarray, FrameTransform]:
    """Camera frame (BGR by default) -> model input (3,size,size) float32 and the transform that undoes it."""
    img = three_channels(frame)
    t = plan(img.shape[0], img.shape[1], size, mode)
    return normalise(crop_resize(img, t), mean, std, bgr), t


def mask_to_model(mask: np.ndarray, t: FrameTransform) -> np.ndarray:
    """A camera-frame mask (H,W) -> the model frame (224,224) bool, nearest neighbour (ground truth for eval)."""
    img = Image.fromarray((mask > 0).astype(np.uint8) * 255)
    img = img.resize((t.resized_w, t.resized_h), Image.NEAREST)
    return np.asarray(img)[t.top : t.top + t.size, t.left : t.left + t.size] > 127


def map_to_frame(m: np.ndarray, t: FrameTransform) -> np.ndarray:
    """A model-frame map (224,224) float -> camera frame (H,W) float32; the cropped-away margins get 0."""
    import cv2

    canvas = np.zeros((t.resized_h, t.resized_w), np.float32)
    canvas[t.top : t.top + t.size, t.left : t.left + t.size] = m
    return cv2.resize(canvas, (t.width, t.height), interpolation=cv2.INTER_LINEAR)


IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")  # what folder sources and eval read


def list_images(folder: str | Path, recursive: bool = False, required: bool = False) -> list[Path]:
    """The image files of a folder (of its whole tree when recursive), sorted; [] when it is not a folder,
    unless required: then a folder without images is an AgptError naming it."""
    folder = Path(folder)
    if not folder.is_dir():
        files = []
    else:
        files = sorted(p for p in (folder.rglob("*") if recursive else folder.iterdir()) if p.suffix.lower() in IMAGE_EXTS)
    if required and not files:
        raise AgptError(f"{folder}: no images ({', '.join(IMAGE_EXTS)})")
    return files


def decode_image(data: bytes, name: object = "image") -> np.ndarray:
    """Encoded image bytes -> BGR uint8, decoded as the reference does (PIL, .convert('RGB')), or AgptError.

    Every image file the project reads (shots, folder cameras, eval, the oracle) goes through here, so a JPEG
    shot and the same JPEG as a test frame are the same pixels on every path."""
    import io

    try:
        with Image.open(io.BytesIO(data)) as img:
            rgb = np.asarray(img.convert("RGB"))
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise AgptError(f"{name}: not a readable image ({e})") from None
    return np.ascontiguousarray(rgb[:, :, ::-1])


def read_image_bytes(path: str | Path, max_bytes: int | None = None) -> bytes:
    """An image file's bytes, or AgptError naming it (missing, not a regular file, unreadable, larger than
    max_bytes). Only regular files: a request naming /dev/zero must not read forever."""
    p = Path(path)
    try:
        if not p.is_file():
            raise AgptError(f"{p}: no such image file")
        if max_bytes is not None and p.stat().st_size > max_bytes:
            raise AgptError(f"{p}: larger than {max_bytes >> 20} MiB")
        return p.read_bytes()
    except OSError as e:
        raise AgptError(f"{p}: cannot read ({e.strerror or e})") from None


def load_image(path) -> np.ndarray:
    """An image file as a BGR uint8 array (what cameras give), or AgptError naming the file."""
    return decode_image(read_image_bytes(path), path)
