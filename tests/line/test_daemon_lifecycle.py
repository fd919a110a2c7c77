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

from _daemon_fakes import TOPICS, CountingSource, FakeInspector, collect, connected, daemon_config, make_bundle, run_to_end

from runtime.line.daemon import Daemon
from runtime.tools.subscribe import ResultSubscriber


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


def _drain(sock: socket.socket) -> list[bytes]:
    """Every datagram already in the socket's buffer (none is waited for)."""
    sock.setblocking(False)
    got = []
    try:
        while True:
            got.append(sock.recv(4096))
    except BlockingIOError:
        return got
    finally:
        sock.setblocking(True)


def _until(sock: socket.socket, want: bytes, n: int = 1, timeout: float = 10.0) -> list[bytes]:
    """Datagrams until `want` was seen n times (a liveness deadline, not a rate)."""
    got, deadline = [], time.monotonic() + timeout
    while got.count(want) < n:
        left = deadline - time.monotonic()
        assert left > 0, f"{want!r} seen {got.count(want)} of {n} times: {got[-5:]}"
        sock.settimeout(min(left, 0.5))
        try:
            got.append(sock.recv(4096))
        except TimeoutError:
            pass
    return got


def test_watchdog_is_fed_while_frames_flow_and_starved_while_the_loop_is_stuck(bundle, notify_socket):
    """systemd's side, with a real NOTIFY_SOCKET datagram socket: READY once started, WATCHDOG while frames
    flow, none while a frame is stuck (the heartbeat thread still runs: the statuses prove it), STOPPING."""
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
        flowing = _until(notify_socket, b"WATCHDOG=1", 5)
        assert flowing[0] == b"READY=1" and flowing.count(b"READY=1") == 1
        with ResultSubscriber(d.publish_endpoint, TOPICS) as sub:
            connected(sub)
            stuck.set()
            assert entered.wait(5)
            # a heartbeat sends its WATCHDOG datagram before it publishes its status: two statuses after the
            # frame got stuck, every beat that could still see progress has been and gone
            collect(sub, lambda b: len(b["statuses"]) >= 2)
            _drain(notify_socket)
            beats = collect(sub, lambda b: len(b["statuses"]) >= 5)  # five heartbeats while stuck (was: a 1 s window)
            assert all(not st.final for st in beats["statuses"])
            assert b"WATCHDOG=1" not in _drain(notify_socket)  # none of them fed the watchdog
            stuck.clear()
            _until(notify_socket, b"WATCHDOG=1")  # progress again: fed again
    finally:
        stuck.clear()
        d.shutdown()
    assert b"STOPPING=1" in _drain(notify_socket)  # sent by shutdown() itself, before it returned
