"""Edges of the line that no other test reaches: the publisher's own queue overflowing (counted, and seen by
subscribers as a seq gap), and `ask` when there is nothing to ask about or nothing to answer with."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from _daemon_fakes import (
    TOPICS,
    CountingSource,
    FakeInspector,
    collect,
    connected,
    ctl,
    daemon_config,
    final_seen,
    make_bundle,
    running,
)

from runtime.line.daemon import Daemon
from runtime.tools.subscribe import ResultSubscriber


@pytest.fixture
def bundle(tmp_path) -> Path:
    return make_bundle(tmp_path / "bundle")


def test_publisher_queue_overflow_counts_drops_publish_with_a_seq_gap(bundle):
    """The socket thread is held inside a send (a stalled ZeroMQ I/O, say): the loop keeps judging, the
    bounded queue fills and every message that does not fit is counted in drops.publish, never waited for;
    the subscriber sees exactly those as seq gaps."""
    d = Daemon(daemon_config(bundle, sndhwm=10000), inspector=FakeInspector(), source=CountingSource(period=0.001))
    d.start()
    try:
        with ResultSubscriber(d.publish_endpoint, TOPICS, rcvhwm=100000) as sub:
            connected(sub)
            first = collect(sub, lambda b: len(b["results"]) >= 3)
            release, held = threading.Event(), threading.Event()
            send = d.publisher._send

            def stalled(*item):
                held.set()
                release.wait(30)
                send(*item)

            d.publisher._send = stalled
            assert held.wait(10)
            judged, deadline = d.judged, time.monotonic() + 20
            while d.publisher.drops < 50:  # the loop goes on judging while nothing leaves
                assert time.monotonic() < deadline, f"only {d.publisher.drops} drops"
                time.sleep(0.01)
            assert d.judged > judged + 50
            d.publisher._send = send
            release.set()
            later = collect(sub, lambda b: len(b["results"]) >= 20)
            stopper = threading.Thread(target=d.shutdown)
            stopper.start()
            end = collect(sub, final_seen)
            stopper.join()
    finally:
        d.shutdown()
    final = next(s for s in end["statuses"] if s.final)
    ids = [m.header.seq for b in (first, later, end) for m in b["results"]]
    assert ids == sorted(ids) and ids[-1] - ids[0] + 1 > len(ids)  # results were lost: a gap in seq
    assert final.drops.publish >= 50
    # every message our queue refused shows up as a seq gap on its topic, and nothing else was lost
    assert sum(sub.lost.values()) == final.drops.publish, (sub.lost, final.drops.publish)
    assert sub.lost.get("line1.station3.result", 0) >= 1
    after = [m.header for m in later["results"] + end["results"]]
    assert after[-1].drops.publish >= 50  # each result header carries the count too


def test_ask_before_any_frame_and_without_an_llm(bundle):
    gate = threading.Event()  # the camera delivers nothing until the gate opens
    with running(daemon_config(bundle), FakeInspector(), CountingSource(gate=gate)) as d:
        r = ctl(d, {"cmd": "ask", "question": "anything wrong?", "id": 1})
        assert r["id"] == 1 and not r["ok"] and r["error"] == "no frame judged yet", r
        r = ctl(d, {"cmd": "ask", "question": "q", "camera": d.lanes[0].name})
        assert not r["ok"] and r["error"] == f"no frame judged yet on camera {d.lanes[0].name!r}"

    class NoLlm(FakeInspector):
        ask = None  # a lite bundle's inspector: maps and calibrated scores, no language model

    gate.clear()
    with running(daemon_config(bundle), NoLlm(), CountingSource(period=0.002)) as d:
        deadline = time.monotonic() + 10
        while d.judged < 2:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        r = ctl(d, {"cmd": "ask", "question": "where?"})
        assert not r["ok"] and "cannot answer questions (no LLM)" in r["error"], r
        assert ctl(d, {"cmd": "status"})["data"]["errors"] == 0  # a refused question is not a line error
