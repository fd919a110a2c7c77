"""Camera sources: anything with open(), read() -> (ok, frame_bgr, truth | None) and close().

OpenCV covers device indices, video files, RTSP URLs and GStreamer pipelines; FolderSource reads a folder
of images; runtime/line/synthetic.py provides labelled synthetic frames. A source may set `eof = True` when
a finite stream has ended (otherwise a failed read means the camera was lost and is reopened with backoff).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from runtime.errors import AgptError
from runtime.line.config import CameraConfig
from runtime.pipeline.preprocess import list_images


class Source(Protocol):
    def open(self) -> None: ...
    def read(self) -> tuple[bool, Any, Any]: ...
    def close(self) -> None: ...


# ---- sources -----------------------------------------------------------------------------------------


class OpenCVSource:
    """cv2.VideoCapture for device / file / rtsp / gstreamer."""

    def __init__(self, cfg: CameraConfig):
        self.cfg = cfg
        self.cap = None
        self.eof = False

    def open(self) -> None:
        import cv2

        src, kind = self.cfg.source, self.cfg.kind
        if kind == "device":
            s = str(src)
            cap = cv2.VideoCapture(int(s) if s.isdigit() else s)
        elif kind == "gstreamer":
            cap = cv2.VideoCapture(str(src), cv2.CAP_GSTREAMER)
        elif kind == "rtsp":
            ms = int(self.cfg.read_timeout_s * 1000)
            params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms]
            cap = cv2.VideoCapture(str(src), cv2.CAP_FFMPEG, params)
        else:  # file
            if not Path(str(src)).is_file():
                raise AgptError(f"{src}: no such video file")
            cap = cv2.VideoCapture(str(src))
        if not cap.isOpened():
            cap.release()
            hint = " (is OpenCV built with GStreamer?)" if kind == "gstreamer" else ""
            raise AgptError(f"cannot open {kind} camera {src!r}{hint}")
        self.cap = cap
        self.eof = False

    def read(self):
        ok, frame = self.cap.read()
        if not ok and self.cfg.kind == "file":
            if self.cfg.loop:
                import cv2

                self.cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
                ok, frame = self.cap.read()
            else:
                self.eof = True
        return ok, frame, None

    def close(self) -> None:
        if self.cap is not None:
            self.cap.release()
            self.cap = None


class FolderSource:
    """Images of a folder in sorted name order; `loop` starts again at the end. An unreadable file is a bad frame."""

    def __init__(self, folder: str | Path, loop: bool = False):
        self.folder = Path(folder)
        self.loop = loop
        self.files: list[Path] = []
        self.i = 0
        self.eof = False

    def open(self) -> None:
        if not self.folder.is_dir():
            raise AgptError(f"{self.folder}: no such image folder")
        self.files = list_images(self.folder, required=True)
        self.eof = False

    def read(self):
        from runtime.pipeline.preprocess import load_image

        if self.i >= len(self.files):
            if not self.loop:
                self.eof = True
                return False, None, None
            self.i = 0
        path = self.files[self.i]
        self.i += 1
        try:
            img = load_image(path)  # decoded as eval and the reference decode files
        except AgptError:
            img = None
        return True, img, None  # None image -> counted as a bad frame, the stream goes on

    def close(self) -> None:
        pass


def make_source(cfg: CameraConfig) -> Source:
    if cfg.kind == "folder":
        return FolderSource(str(cfg.source), cfg.loop)
    if cfg.kind == "synthetic":
        # runtime/line/synthetic.py (lite worker) provides the generator; imported only when asked for.
        from runtime.line import synthetic

        return synthetic.make_source(source=cfg.source, loop=cfg.loop, **cfg.options)
    return OpenCVSource(cfg)
