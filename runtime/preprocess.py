"""The reference image transform (reference doc, section 1) and its inverse for masks.

Test path of the released code: PIL RGB -> Resize(shorter side 224, BICUBIC) -> CenterCrop(224) -> [0,1]
-> CLIP normalisation. PIL's bicubic is antialiased when shrinking, which cv2.INTER_CUBIC is not, so the
resize is done with Pillow: maps and verdicts then match the reference on the same photo.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from .bundle import CLIP_MEAN, CLIP_STD
from .errors import AgptError


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


def as_rgb(frame: np.ndarray, bgr: bool = True) -> np.ndarray:
    """A 3-channel uint8 RGB image from what a camera gives (BGR, gray, BGRA), or AgptError."""
    if not isinstance(frame, np.ndarray) or frame.size == 0:
        raise AgptError("empty or non-array frame")
    if frame.dtype != np.uint8:
        raise AgptError(f"frame dtype {frame.dtype}, expected uint8")
    if frame.ndim == 2:
        frame = np.repeat(frame[:, :, None], 3, axis=2)
    elif frame.ndim == 3 and frame.shape[2] == 1:
        frame = np.repeat(frame, 3, axis=2)
    elif frame.ndim == 3 and frame.shape[2] == 4:
        frame = frame[:, :, :3]
    elif not (frame.ndim == 3 and frame.shape[2] == 3):
        raise AgptError(f"frame shape {frame.shape}: expected HxW, HxWx1, HxWx3 or HxWx4")
    return np.ascontiguousarray(frame[:, :, ::-1] if bgr else frame)


def crop_resize(rgb: np.ndarray, t: FrameTransform) -> np.ndarray:
    """uint8 (224,224,3): the reference's bicubic resize and center crop."""
    img = Image.fromarray(rgb)
    if (t.resized_w, t.resized_h) != img.size:
        img = img.resize((t.resized_w, t.resized_h), Image.BICUBIC)
    return np.asarray(img)[t.top : t.top + t.size, t.left : t.left + t.size]


def normalise(rgb224: np.ndarray, mean=CLIP_MEAN, std=CLIP_STD) -> np.ndarray:
    """(3,224,224) float32 from uint8 HWC, as ToTensor + Normalize."""
    x = rgb224.astype(np.float32) / np.float32(255.0)
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def preprocess(
    frame: np.ndarray, size: int = 224, mode: str = "shorter_side_crop", mean=CLIP_MEAN, std=CLIP_STD, bgr: bool = True
) -> tuple[np.ndarray, FrameTransform]:
    """Camera frame (BGR by default) -> model input (3,size,size) float32 and the transform that undoes it."""
    rgb = as_rgb(frame, bgr=bgr)
    t = plan(rgb.shape[0], rgb.shape[1], size, mode)
    return normalise(crop_resize(rgb, t), mean, std), t


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


def load_image(path) -> np.ndarray:
    """An image file as a BGR uint8 array (what cameras give), or AgptError naming the file."""
    from pathlib import Path

    p = Path(path)
    try:
        with Image.open(p) as img:
            rgb = np.asarray(img.convert("RGB"))
    except FileNotFoundError:
        raise AgptError(f"{p}: no such image file") from None
    except (OSError, ValueError) as e:
        raise AgptError(f"{p}: not a readable image ({e})") from None
    return np.ascontiguousarray(rgb[:, :, ::-1])
