"""A synthetic production line: an endless, seeded stream of labelled frames for demos, CI and live accuracy.

    line = SyntheticLine("../shared/datasets/cookie", seed=0, defect_rate=0.3)   # or None: procedural tiles
    line.open()
    ok, frame_bgr, truth = line.read()        # truth = {"label": bool, "mask": uint8 (H,W) 0/255, "kind": str|None}
    line.close()

Frames are made from a set of normal images (a folder, or an MVTec category folder whose train/good is
used; a generated texture set when no folder is given), each shown with a small pose and light jitter
(rotation, shift, gain, offset, sensor noise), as consecutive parts on a line look. At `defect_rate`, a
defect is injected the way AnomalyGPT simulates anomalies for training:

- cutpaste: a patch cut from ANOTHER normal image, resized and shifted, pasted with Poisson blending
  (cv2.seamlessClone, NORMAL_CLONE or MIXED_CLONE) under an irregular mask;
- scratch: a thin, slightly curved stroke, darker or lighter than the surface;
- spot: a soft-edged stain of one to three blobs.

The ground-truth mask is where the defect was put (label True iff the mask is non-empty). A pasted patch
that would not differ from what it covers is redrawn (a few tries, then a spot), so a True label is
always a visible change. Everything is drawn from one numpy Generator seeded at open(): the same seed
gives the same frames and masks. Per-frame work is bounded: images are scaled to at most `max_side`
pixels at open, and patches are at most a fifth of the short side.

The camera module builds it with make_source(source=..., loop=..., **options) (config camera.kind
'synthetic', options from camera.options). `normal_shots(n)` / `write_shots(folder, n)` give the
product's normal shots (the first `reserve` images are kept out of the stream for that purpose).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from runtime.errors import AgptError
from runtime.pipeline.preprocess import list_images, load_image

KINDS = ("cutpaste", "scratch", "spot")
PROCEDURAL = ("", "procedural", "textures", "none")
VISIBLE = 20.0  # mean |dB|+|dG|+|dR| under a pasted patch: about 7 grey levels a channel


# ---- normal images ---------------------------------------------------------------------------------


def _normal_folder(source: Path) -> Path:
    """A folder of images, or an MVTec category folder (its train/good)."""
    for cand in (source / "train" / "good", source):
        if list_images(cand):
            return cand
    raise AgptError(f"{source}: no images (a folder of normal images or an MVTec category folder)")


def _fit(img: np.ndarray, max_side: int) -> np.ndarray:
    h, w = img.shape[:2]
    s = max_side / max(h, w)
    return img if s >= 1 else cv2.resize(img, (max(8, round(w * s)), max(8, round(h * s))), interpolation=cv2.INTER_AREA)


def load_normals(folder: Path, max_side: int) -> tuple[list[np.ndarray], list[str]]:
    files = list_images(folder)
    images, names = [], []
    for p in files:
        images.append(_fit(load_image(p), max_side))
        names.append(p.name)
    return images, names


def procedural_textures(
    n: int,
    size: tuple[int, int],
    seed: int,
    pitch: float = 12.0,
    angle: float = 0.0,
    weave_amp: float = 0.10,
    fibre_amp: float = 0.25,
) -> list[np.ndarray]:
    """n instances of one woven-fabric product: the same weave and colour, different fibres and shading.

    Weave: two sinusoid families at a fixed pitch (with a small random phase and angle per instance);
    fibres: band-passed noise; shading: a very low-frequency field. BGR uint8.
    """
    h, w = size
    rng = np.random.default_rng(seed)
    base = np.array([150.0, 175.0, 195.0])  # BGR beige
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    out = []
    for _ in range(n):
        a = np.deg2rad(angle + rng.uniform(-2, 2))
        u, v = xx * np.cos(a) + yy * np.sin(a), -xx * np.sin(a) + yy * np.cos(a)
        weave = np.sin(2 * np.pi * u / pitch + rng.uniform(0, 2 * np.pi)) * np.sin(
            2 * np.pi * v / pitch + rng.uniform(0, 2 * np.pi)
        )
        fibre = cv2.GaussianBlur(rng.standard_normal((h, w)).astype(np.float32), (0, 0), 1.2)
        shade = cv2.GaussianBlur(rng.standard_normal((h, w)).astype(np.float32), (0, 0), max(h, w) / 6)
        shade /= max(float(np.abs(shade).max()), 1e-6)
        lum = 1.0 + weave_amp * weave + fibre_amp * fibre + 0.06 * shade
        img = base[None, None, :] * lum[:, :, None] + rng.normal(0, 2.0, (h, w, 3))
        out.append(np.clip(img, 0, 255).astype(np.uint8))
    return out


# ---- defects ---------------------------------------------------------------------------------------


def _irregular_mask(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """A filled random polygon around the centre of an (h,w) patch, 2 px clear of its border."""
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    k = int(rng.integers(6, 12))
    ang = np.sort(rng.uniform(0, 2 * np.pi, k))
    rad = rng.uniform(0.55, 1.0, k)
    pts = np.stack([cx + rad * (cx - 2) * np.cos(ang), cy + rad * (cy - 2) * np.sin(ang)], axis=1)
    m = np.zeros((h, w), np.uint8)
    cv2.fillPoly(m, [np.round(pts).astype(np.int32)], 255)
    return m


def cut_paste(
    img: np.ndarray, donor: np.ndarray, rng: np.random.Generator, tries: int = 4, scale: float = 1.0
) -> tuple[np.ndarray, np.ndarray] | None:
    """Poisson-blended patch from `donor` at a random place of `img`: the most visible of `tries` draws,
    or None when none changes the image visibly."""
    H, W = img.shape[:2]
    short = min(H, W)
    best, best_change = None, VISIBLE
    for _ in range(tries):
        ph = int(min(rng.uniform(0.10, 0.25) * scale, 0.4) * short)
        pw = int(np.clip(ph * rng.uniform(0.6, 1.7), 0.06 * short, 0.4 * short))
        ph, pw = max(ph, 12), max(pw, 12)
        # source patch: any place of the donor, resized to the patch size (scale change of up to +-30%)
        sh, sw = (
            int(np.clip(ph * rng.uniform(0.7, 1.3), 8, donor.shape[0] - 2)),
            int(np.clip(pw * rng.uniform(0.7, 1.3), 8, donor.shape[1] - 2)),
        )
        sy, sx = int(rng.integers(0, donor.shape[0] - sh)), int(rng.integers(0, donor.shape[1] - sw))
        patch = cv2.resize(donor[sy : sy + sh, sx : sx + sw], (pw, ph), interpolation=cv2.INTER_LINEAR)
        mask = _irregular_mask(ph, pw, rng)
        # where OpenCV puts it: the mask's bounding box is centred on `center`
        bx, by, bw, bh = cv2.boundingRect(mask)
        cx = int(rng.integers(bw // 2 + 2, W - (bw - bw // 2) - 2))
        cy = int(rng.integers(bh // 2 + 2, H - (bh - bh // 2) - 2))
        mode = cv2.NORMAL_CLONE if rng.random() < 0.7 else cv2.MIXED_CLONE
        out = cv2.seamlessClone(patch, img, mask.copy(), (cx, cy), mode)  # OpenCV may write into the mask
        gt = np.zeros((H, W), np.uint8)
        x0, y0 = cx - bw // 2, cy - bh // 2
        gt[y0 : y0 + bh, x0 : x0 + bw] = mask[by : by + bh, bx : bx + bw]
        change = np.abs(out.astype(np.int16) - img.astype(np.int16)).sum(axis=2)[gt > 0]
        # Poisson blending carries the donor's texture, not its colour: a patch of similar texture vanishes.
        # Score a draw by the mean |dB|+|dG|+|dR| under its mask; keep the most visible one above VISIBLE.
        c = float(np.mean(change)) if change.size else 0.0
        if c >= best_change:
            best, best_change = (out, gt), c
    return best


def scratch(img: np.ndarray, rng: np.random.Generator, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    H, W = img.shape[:2]
    short = min(H, W)
    n = int(rng.integers(8, 16))
    length = rng.uniform(0.15, 0.40) * short * scale
    step = length / n
    y, x = rng.uniform(0.15, 0.85) * H, rng.uniform(0.15, 0.85) * W
    a = rng.uniform(0, 2 * np.pi)
    pts = [(x, y)]
    for _ in range(n):
        a += rng.normal(0, 0.15)  # a gently curving stroke
        x, y = np.clip(x + step * np.cos(a), 2, W - 3), np.clip(y + step * np.sin(a), 2, H - 3)
        pts.append((x, y))
    thick = max(2, int(round(short / 110 * rng.uniform(1.0, 2.0) * scale)))  # 2-4 px once the frame is 224
    alpha = np.zeros((H, W), np.uint8)
    cv2.polylines(alpha, [np.round(np.array(pts)).astype(np.int32)], False, 255, thick, cv2.LINE_AA)
    return _paint(img, alpha, rng, dilate=1)


def spot(img: np.ndarray, rng: np.random.Generator, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    H, W = img.shape[:2]
    short = min(H, W)
    alpha = np.zeros((H, W), np.uint8)
    cy, cx = rng.uniform(0.15, 0.85) * H, rng.uniform(0.15, 0.85) * W
    for _ in range(int(rng.integers(1, 4))):
        r = rng.uniform(0.03, 0.08) * short * scale
        c = (int(cx + rng.normal(0, r)), int(cy + rng.normal(0, r)))
        axes = (max(2, int(r * rng.uniform(0.6, 1.4))), max(2, int(r * rng.uniform(0.6, 1.4))))
        cv2.ellipse(alpha, c, axes, float(rng.uniform(0, 180)), 0, 360, 255, -1, cv2.LINE_AA)
    alpha = cv2.GaussianBlur(alpha, (0, 0), max(1.0, short / 300))
    return _paint(img, alpha, rng, dilate=0)


def _paint(img: np.ndarray, alpha_u8: np.ndarray, rng: np.random.Generator, dilate: int) -> tuple[np.ndarray, np.ndarray]:
    """Blend a stain colour through `alpha`; the mask is alpha > 0.3 (dilated for thin strokes).

    The colour keeps the local hue and moves the brightness well away from it: mostly darker (burns,
    dirt, deep scratches), sometimes lighter (scuffs) on dark surfaces. A visible change by construction.
    """
    a = alpha_u8.astype(np.float32)[:, :, None] / 255.0
    region = alpha_u8 > 76
    local = img[region].mean(axis=0) if region.any() else img.reshape(-1, 3).mean(axis=0)
    lighter = local.mean() < 100 and rng.random() < 0.7 or rng.random() < 0.15
    if lighter:
        colour = local + (255.0 - local) * rng.uniform(0.45, 0.75)
    else:
        colour = local * rng.uniform(0.25, 0.55)
    colour = np.clip(colour * rng.uniform(0.95, 1.05, 3), 0, 255)
    out = np.clip(img.astype(np.float32) * (1 - a) + colour[None, None, :] * a, 0, 255).astype(np.uint8)
    gt = region.astype(np.uint8) * 255
    if dilate:
        gt = cv2.dilate(gt, np.ones((2 * dilate + 1, 2 * dilate + 1), np.uint8))
    return out, gt


# ---- the source ------------------------------------------------------------------------------------


class SyntheticLine:
    """open() / read() -> (ok, frame_bgr, truth) / close(); endless unless `frames` > 0."""

    def __init__(
        self,
        source: str | Path | None = None,
        loop: bool = True,
        seed: int = 0,
        defect_rate: float = 0.3,
        kinds: str = ",".join(KINDS),
        jitter: float = 1.0,
        max_side: int = 768,
        reserve: int = 0,
        frames: int = 0,
        n_textures: int = 12,
        texture_size: int = 320,
        scale: float = 1.0,
    ):
        self.source = None if source is None or str(source).strip().lower() in PROCEDURAL else Path(str(source))
        self.loop = loop  # the line is endless by nature; kept for the camera factory's signature
        self.seed = int(seed)
        if not 0.0 <= float(defect_rate) <= 1.0:
            raise AgptError(f"synthetic defect_rate {defect_rate}: between 0 and 1")
        self.defect_rate = float(defect_rate)
        self.kinds = tuple(k.strip() for k in str(kinds).split(",") if k.strip())
        bad = set(self.kinds) - set(KINDS)
        if not self.kinds or bad:
            raise AgptError(f"synthetic kinds {kinds!r}: a comma list of {', '.join(KINDS)}")
        self.jitter = float(jitter)
        self.scale = float(scale)  # defect size multiplier
        if not 0.25 <= self.scale <= 4.0:
            raise AgptError(f"synthetic scale {scale}: between 0.25 and 4")
        self.max_side = int(max_side)
        self.reserve = int(reserve)
        self.frames = int(frames)
        self.n_textures, self.texture_size = int(n_textures), int(texture_size)
        self.images: list[np.ndarray] = []
        self.names: list[str] = []
        self.donors: list[np.ndarray] = []  # cut-paste donors when they are not the normal images themselves
        self.rng = np.random.default_rng(self.seed)
        self.count = 0
        self.eof = False

    # -- set-up
    def _load(self) -> None:
        if self.images:
            return
        if self.source is None:
            self.images = procedural_textures(self.n_textures, (self.texture_size, self.texture_size), self.seed)
            self.names = [f"texture{i:03d}" for i in range(len(self.images))]
            # every tile shares one texture, so a patch of another tile vanishes under Poisson blending:
            # the donors are a foreign weave of the same generator (coarser, turned 45 degrees, high contrast)
            self.donors = procedural_textures(
                4, (self.texture_size, self.texture_size), self.seed + 1, pitch=9.0, angle=45.0, weave_amp=0.45, fibre_amp=0.1
            )
        else:
            if not self.source.exists():
                raise AgptError(f"{self.source}: no such folder for the synthetic line (or use 'procedural')")
            self.images, self.names = load_normals(_normal_folder(self.source), self.max_side)
        if len(self.images) - self.reserve < 1:
            raise AgptError(
                f"synthetic line: {len(self.images)} normal image(s), {self.reserve} reserved as shots: none left to stream"
            )

    def open(self) -> None:
        self._load()
        self.rng = np.random.default_rng(self.seed)
        self.count = 0
        self.eof = False

    def close(self) -> None:
        pass

    def normal_shots(self, n: int) -> list[np.ndarray]:
        """n defect-free frames of the first n normal images, as the line camera shows them (same pose and
        light jitter, its own seeded draws): the product's shots. reserve=n keeps those parts out of the stream."""
        self._load()
        if n < 1 or n > len(self.images):
            raise AgptError(f"synthetic line: {n} shots asked, {len(self.images)} normal images")
        stream_rng, self.rng = self.rng, np.random.default_rng(self.seed + 7919)
        try:
            return [self._jitter(img) for img in self.images[:n]]
        finally:
            self.rng = stream_rng

    def write_shots(self, folder: str | Path, n: int) -> list[Path]:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for i, img in enumerate(self.normal_shots(n)):
            p = folder / f"shot{i:03d}.png"
            if not cv2.imwrite(str(p), img):
                raise AgptError(f"{p}: could not write")
            paths.append(p)
        return paths

    # -- frames
    def _jitter(self, img: np.ndarray) -> np.ndarray:
        """Small pose and light change: rotation +-2 deg, shift +-2%, gain +-5%, offset +-6, sensor noise.

        The view zooms in just enough that no pixel comes from outside the image (a reflected or black
        border would itself look like an anomaly).
        """
        if self.jitter <= 0:
            return img.copy()
        r, j = self.rng, self.jitter
        h, w = img.shape[:2]
        angle = r.uniform(-2.0, 2.0) * j
        dx, dy = r.uniform(-0.02, 0.02) * w * j, r.uniform(-0.02, 0.02) * h * j
        a = np.deg2rad(abs(angle))
        zoom = np.cos(a) + np.sin(a) * max(h / w, w / h) + 2 * max(abs(dx) / w, abs(dy) / h) + 0.005
        m = cv2.getRotationMatrix2D((w / 2.0, h / 2.0), angle, zoom * (1.0 + r.uniform(0.0, 0.01) * j))
        m[0, 2] += dx
        m[1, 2] += dy
        out = cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101).astype(np.float32)
        out = (
            out * (1.0 + r.uniform(-0.05, 0.05) * j) + r.uniform(-6, 6) * j + r.standard_normal(out.shape, np.float32) * (1.5 * j)
        )
        return np.clip(out, 0, 255).astype(np.uint8)

    def read(self):
        if self.frames and self.count >= self.frames:
            self.eof = True
            return False, None, None
        r = self.rng
        pool = range(self.reserve, len(self.images))
        i = int(r.integers(pool.start, pool.stop))
        frame = self._jitter(self.images[i])
        label, kind, mask = False, None, np.zeros(frame.shape[:2], np.uint8)
        if r.random() < self.defect_rate:
            kind = self.kinds[int(r.integers(len(self.kinds)))]
            made = None
            if kind == "cutpaste":
                if self.donors:
                    donor = self.donors[int(r.integers(len(self.donors)))]
                else:
                    others = [k for k in pool if k != i] or [i]
                    donor = self.images[others[int(r.integers(len(others)))]]
                made = cut_paste(frame, donor, r, scale=self.scale)
                if made is None:
                    kind = "spot"  # nothing visible could be pasted here: a stain instead
            if made is None:
                made = scratch(frame, r, self.scale) if kind == "scratch" else spot(frame, r, self.scale)
            frame, mask = made
            label = bool(mask.any())
            if not label:
                kind = None
        self.count += 1
        return True, frame, {"label": label, "mask": mask, "kind": kind, "base": self.names[i], "index": self.count - 1}


def make_source(source=None, loop: bool = True, **options) -> SyntheticLine:
    """The camera module's factory: camera.source is a folder or 'procedural'; camera.options go to SyntheticLine."""
    try:
        return SyntheticLine(source, loop, **options)
    except TypeError as e:
        raise AgptError(f"synthetic camera options: {e}") from None
