"""Camera sources and the capture thread: vanishing cameras, bad frames, the newest-frame queue."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the shared fakes

from _daemon_fakes import CountingSource, FlakySource, ScriptedSource

from runtime.line.camera import Camera, Frame, FrameQueue, normalize_frame
from runtime.line.config import CameraConfig
from runtime.line.sources import FolderSource


def _cfg(**kw) -> CameraConfig:
    base = dict(kind="synthetic", source="test", reopen_backoff_s=0.01, reopen_backoff_max_s=0.05, when_full="wait")
    base.update(kw)
    return CameraConfig(**base)


def _drain(cam: Camera, n: int, timeout: float = 10.0) -> list[Frame]:
    out, deadline = [], time.monotonic() + timeout
    while len(out) < n:
        assert time.monotonic() < deadline, f"only {len(out)} of {n} frames"
        f = cam.queue.get(0.1)
        if f is not None:
            out.append(f)
        elif cam.queue.closed and len(cam.queue) == 0:
            break
    return out


def test_normalize_frame_cases():
    bgr = np.zeros((20, 30, 3), np.uint8)
    assert normalize_frame(bgr)[0] is not None
    gray = normalize_frame(np.full((20, 30), 7, np.uint8))[0]
    assert gray.shape == (20, 30, 3) and (gray == 7).all()
    assert normalize_frame(np.zeros((20, 30, 1), np.uint8))[0].shape == (20, 30, 3)
    bgra = np.zeros((20, 30, 4), np.uint8)
    bgra[..., 3] = 255
    bgra[..., 0] = 9
    out = normalize_frame(bgra)[0]
    assert out.shape == (20, 30, 3) and (out[..., 0] == 9).all() and out.flags.c_contiguous
    assert normalize_frame(np.full((20, 30, 3), 65535, np.uint16))[0].max() == 255
    for bad, why in [(None, "empty"), (np.zeros((0, 3, 3), np.uint8), "empty"), (np.zeros((20, 30, 2), np.uint8), "shape"),
                     (np.zeros((20, 30, 3), np.float32), "dtype"), (np.zeros((4, 4, 3), np.uint8), "small"),
                     (np.zeros((2, 20, 30, 3), np.uint8), "shape"), ("not an image", "empty")]:  # fmt: skip
        img, reason = normalize_frame(bad)
        assert img is None and why in reason


def test_frame_queue_keeps_newest_and_counts_drops():
    q = FrameQueue(2, "drop_oldest")
    for i in range(1, 6):
        q.put(Frame(i, np.zeros((8, 8, 3), np.uint8), "c", 0, 0))
    assert q.dropped == 3 and [q.get(0).frame_id, q.get(0).frame_id] == [4, 5]
    assert q.get(0.01) is None
    woke = []
    t = threading.Thread(target=lambda: woke.append(q.get(60.0)))
    t.start()
    # a wake() before get() starts waiting is not one for it: wake until the waiting get() returns (was: a
    # 50 ms sleep, then one wake that a slow thread start could miss, waiting the whole timeout)
    deadline = time.monotonic() + 10
    while t.is_alive():
        assert time.monotonic() < deadline, "wake() never ended the waiting get()"
        q.wake()
        t.join(0.01)
    assert woke == [None]


def test_frame_queue_wait_mode_blocks_producer_without_drops():
    q = FrameQueue(1, "wait")
    q.put(Frame(1, np.zeros((8, 8, 3), np.uint8), "c", 0, 0))
    done = threading.Event()
    t = threading.Thread(target=lambda: (q.put(Frame(2, np.zeros((8, 8, 3), np.uint8), "c", 0, 0)), done.set()))
    t.start()
    assert not done.wait(0.1)  # full: the producer waits
    assert q.get(0).frame_id == 1
    assert done.wait(2) and q.get(0).frame_id == 2 and q.dropped == 0
    t.join()


def test_camera_that_vanishes_and_comes_back():
    events: list[tuple[str, dict]] = []
    src = FlakySource()
    cam = Camera(_cfg(), src, on_event=lambda k, d: events.append((k, d)))
    cam.start()
    try:
        first = _drain(cam, 10)
        src.down.set()  # unplugged: reads raise / fail, reopen fails
        deadline = time.monotonic() + 5
        while not (src.failed_opens >= 2 and cam.state == "lost"):
            assert time.monotonic() < deadline
            cam.queue.get(0.02)
        src.down.clear()
        deadline = time.monotonic() + 5
        while cam.state != "open" or not any(k == "camera_back" for k, _ in events):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        after = _drain(cam, 10)
    finally:
        cam.stop()
    kinds = [k for k, _ in events]
    assert kinds.count("camera_lost") == 1 and kinds.count("camera_back") == 1, kinds
    assert kinds.index("camera_lost") < kinds.index("camera_back")
    assert all(d["camera"] == "cam0" for _, d in events)
    assert cam.reopens == 1 and src.opened >= 2
    ids = [f.frame_id for f in first + after]
    assert ids == sorted(set(ids)) and ids[0] == 1  # monotonic, no duplicates, across the outage
    assert first[0].truth.label is False and first[2].truth.label is True


def test_bad_frames_are_counted_converted_and_reported():
    good = np.full((20, 30, 3), 5, np.uint8)
    script = [good, None, np.zeros((0, 0, 3), np.uint8), np.zeros((20, 30, 2), np.uint8), np.full((20, 30), 6, np.uint8),
              np.zeros((20, 30, 4), np.uint8), np.zeros((20, 30, 3), np.float64), good, "garbage"]  # fmt: skip
    events = []
    cam = Camera(_cfg(), ScriptedSource(script), on_event=lambda k, d: events.append((k, d)))
    cam.start()
    frames = _drain(cam, 100)
    cam.stop()
    assert [f.frame_id for f in frames] == [1, 2, 3, 4]  # good, gray->BGR, BGRA->BGR, good
    assert all(f.image.shape == (20, 30, 3) for f in frames)
    assert cam.bad_frames == 5 and cam.state == "ended"
    kinds = [k for k, _ in events]
    assert "camera_bad_frame" in kinds and kinds[-1] == "camera_end"
    assert events[kinds.index("camera_bad_frame")][1]["count"] >= 1


def test_source_that_raises_in_open_forever_never_crashes():
    opens = threading.Semaphore(0)

    class Broken:
        def open(self):
            opens.release()
            raise RuntimeError("driver exploded")

        def read(self):  # pragma: no cover
            raise AssertionError

        def close(self):
            raise RuntimeError("close exploded too")

    events = []
    cam = Camera(_cfg(), Broken(), on_event=lambda k, d: events.append(k))
    cam.start()
    for _ in range(3):  # three failed opens, with backoff between them (was: a 0.2 s sleep)
        assert opens.acquire(timeout=10)
    cam.stop()
    assert cam.state == "stopped" and events == ["camera_lost"] and cam.frame_id == 0  # lost once, not per retry


def test_drop_oldest_counts_every_lost_frame():
    cam = Camera(_cfg(when_full="drop_oldest"), CountingSource(n=200), queue=FrameQueue(1, "drop_oldest"))
    cam.start()
    got = []
    while True:
        f = cam.queue.get(0.5)
        if f is None:
            if cam.queue.closed:
                break
            continue
        got.append(f.frame_id)
        time.sleep(0.002)  # a slow consumer
    cam.stop()
    assert got == sorted(got) and got[-1] == 200
    assert len(got) + cam.dropped == 200  # never silent


def test_folder_source_sorted_loop_and_unreadable_files(tmp_path):
    import cv2

    for name, value in [("b.png", 2), ("a.png", 1), ("c.bmp", 3)]:
        cv2.imwrite(str(tmp_path / name), np.full((16, 16, 3), value * 40, np.uint8))
    (tmp_path / "d.png").write_bytes(b"corrupt")
    (tmp_path / "notes.txt").write_text("ignored")
    cam = Camera(_cfg(kind="folder", source=str(tmp_path)))
    cam.start()
    frames = _drain(cam, 100)
    cam.stop()
    assert [int(f.image[0, 0, 0]) // 40 for f in frames] == [1, 2, 3] and cam.bad_frames == 1
    src = FolderSource(tmp_path, loop=True)
    src.open()
    reads = [src.read()[0] for _ in range(9)]
    assert all(reads) and not src.eof
    (tmp_path / "empty").mkdir()
    with pytest.raises(Exception, match="no images"):
        FolderSource(tmp_path / "empty").open()
    with pytest.raises(Exception, match="no such image folder"):
        FolderSource(tmp_path / "absent").open()


def test_video_file_source(tmp_path):
    import cv2

    path = tmp_path / "clip.avi"
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (32, 24))
    if not w.isOpened():
        pytest.skip("OpenCV here cannot write MJPG video")
    for i in range(5):
        w.write(np.full((24, 32, 3), i * 40, np.uint8))
    w.release()
    cam = Camera(_cfg(kind="file", source=str(path)))
    cam.start()
    frames = _drain(cam, 100)
    cam.stop()
    assert len(frames) == 5 and frames[0].image.shape == (24, 32, 3) and cam.state == "ended"
    looped = Camera(_cfg(kind="file", source=str(path), loop=True))
    looped.start()
    assert len(_drain(looped, 12)) == 12
    looped.stop()


class FakeClock:
    """time for the fps_limit pacing: advances only when a frame is read or the camera waits."""

    def __init__(self):
        self.now = 0.0
        self.waits: list[float] = []

    def __call__(self) -> float:
        return self.now

    def wait(self, dt: float) -> bool:
        self.waits.append(dt)
        self.now += dt
        return False


class _Recorder:
    """A camera queue that keeps every frame it is given."""

    def __init__(self):
        self.frames: list[Frame] = []
        self.closed = threading.Event()

    def put(self, frame, stop=None) -> bool:
        self.frames.append(frame)
        return True

    def close(self) -> None:
        self.closed.set()


class _TimedSource(CountingSource):
    """A camera delivering a frame every `period` seconds of the fake clock."""

    def __init__(self, clock: FakeClock, period: float, n: int):
        super().__init__(n=n)
        self.clock, self.step = clock, period

    def read(self):
        ok, img, truth = super().read()
        if ok:
            self.clock.now += self.step
        return ok, img, truth


@pytest.mark.parametrize("kind", ["device", "synthetic"])
def test_fps_limit_paces_frames_on_a_fake_clock(kind):
    """fps_limit 16 on a 64 frames/s camera (binary fractions: exact on the fake clock). A live camera keeps
    reading and passes every fourth frame; a finite source (never dropping frames) waits instead."""
    clock, q = FakeClock(), _Recorder()
    when_full = "drop_oldest" if kind == "device" else "wait"
    cfg = _cfg(kind=kind, source="0" if kind == "device" else "test", fps_limit=16, when_full=when_full)
    period = 1 / 64 if kind == "device" else 0.0
    cam = Camera(cfg, _TimedSource(clock, period, 640), queue=q, clock=clock, wait=clock.wait)
    cam.start()
    assert q.closed.wait(10)  # the source's end
    cam.stop()
    times = [f.capture_mono for f in q.frames]
    gaps = np.diff(times)
    if kind == "device":  # 10 s of frames at 64/s: 160 passed at 16/s (the first at once), none waited for
        assert clock.waits == [] and len(q.frames) in (160, 161), len(q.frames)
        assert (gaps[1:] >= 1 / 16).all() and clock.now == 10.0
    else:  # every frame kept, each one 1/16 s after the previous
        assert len(q.frames) == 640 and (gaps == 1 / 16).all() and sum(clock.waits) == pytest.approx(639 / 16)
    assert [f.frame_id for f in q.frames] == list(range(1, len(q.frames) + 1))
