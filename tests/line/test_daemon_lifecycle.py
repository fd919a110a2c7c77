"""A station never dies quietly: the exit code tells systemd/Docker whether to restart, one bad result fails
one frame (not the line), and the systemd watchdog stops being fed while the loop is stuck."""

from __future__ import annotations

import os
import shutil
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the shared fakes

from _daemon_fakes import CountingSource, FakeInspector, daemon_config, make_bundle, run_to_end

from runtime.line.daemon import Daemon


@pytest.fixture
def bundle(tmp_path) -> Path:
    return make_bundle(tmp_path / "bundle")


@pytest.fixture
def notify_socket(monkeypatch):
    """systemd's notification socket, stood in for (short path: AF_UNIX paths are limited to ~107 bytes)."""
    d = tempfile.mkdtemp(prefix="agpt-")
    path = os.path.join(d, "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    yield sock
    sock.close()
    shutil.rmtree(d, ignore_errors=True)


def _run_in_thread(d: Daemon) -> tuple[threading.Thread, dict]:
    out: dict = {}
    t = threading.Thread(target=lambda: out.setdefault("rc", d.run()), daemon=True)
    t.start()
    return t, out


def test_a_crashed_loop_exits_non_zero(bundle):
    """stop_reason loop_error must not look like a clean stop: Restart=on-failure only acts on a failure."""
    d = Daemon(daemon_config(bundle), inspector=FakeInspector(), source=CountingSource(period=0.002))

    def boom(ready):
        raise RuntimeError("a bug outside the per-frame try")

    d.loop.inspect_batch = boom
    t, out = _run_in_thread(d)
    t.join(20)
    assert not t.is_alive()
    assert d.stop_reason == "loop_error"
    assert out["rc"] != 0


@pytest.mark.parametrize("reason", ["frames", "camera_end"])
def test_a_finished_run_exits_zero(bundle, reason):
    kw = {"frames": 5} if reason == "frames" else {}
    d = Daemon(daemon_config(bundle, **kw), inspector=FakeInspector(), source=CountingSource(n=None if kw else 4))
    t, out = _run_in_thread(d)
    t.join(20)
    assert d.stop_reason == reason and out["rc"] == 0


def test_a_result_the_header_refuses_fails_that_frame_only(bundle):
    class BadResult(FakeInspector):
        def _judgement(self, frame_bgr, pack):
            j = super()._judgement(frame_bgr, pack)
            if int(frame_bgr[0, 0, 0]) == 25:  # frame 5 of CountingSource
                j.locations = [object()]  # the ResultHeader model refuses this
            return j

    d, bag = run_to_end(daemon_config(bundle, sndhwm=1000), BadResult(), 20, source=CountingSource(n=12))
    assert d.stop_reason == "camera_end"
    ids = [m.header.frame_id for m in bag["results"]]
    assert ids == [i for i in range(1, 13) if i != 5]
    err = [e for e in bag["events"] if e.kind == "judge_error"]
    assert len(err) == 1 and err[0].detail["frame_id"] == 5 and err[0].detail["stage"] == "result"
    final = next(s for s in bag["statuses"] if s.final)
    assert final.drops.failed == 1 and final.errors == 1 and final.frames_judged == 11


def _datagrams(sock: socket.socket, seconds: float) -> list[bytes]:
    sock.settimeout(0.05)
    got, end = [], time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            got.append(sock.recv(4096))
        except TimeoutError:
            pass
    return got


def test_watchdog_is_fed_while_frames_flow_and_starved_while_the_loop_is_stuck(bundle, notify_socket):
    stuck, entered = threading.Event(), threading.Event()

    class Sticky(FakeInspector):
        def judge(self, frame_bgr, pack):
            if stuck.is_set():
                entered.set()
                while stuck.is_set():  # a frame that never ends (a hung driver call)
                    time.sleep(0.01)
            return super().judge(frame_bgr, pack)

    d = Daemon(daemon_config(bundle, heartbeat_s=0.1), inspector=Sticky(), source=CountingSource(period=0.005))
    d.start()
    try:
        flowing = _datagrams(notify_socket, 1.0)
        assert flowing[0] == b"READY=1"
        assert flowing.count(b"WATCHDOG=1") >= 5  # 10 beats a second, each after loop progress
        stuck.set()
        assert entered.wait(5)
        _datagrams(notify_socket, 0.3)  # a beat already due when the frame got stuck
        starved = _datagrams(notify_socket, 1.0)
        assert b"WATCHDOG=1" not in starved  # 10 heartbeats passed, none fed the watchdog
        stuck.clear()
        assert b"WATCHDOG=1" in _datagrams(notify_socket, 1.0)
    finally:
        stuck.clear()
        d.shutdown()
    assert b"STOPPING=1" in _datagrams(notify_socket, 0.3)
