"""The archive in the daemon, end to end with the fake inspector: every judged frame has its row
(rows == frames_judged - archive row drops, and no drops on a healthy disk); a locked database or a full disk
drops rows (counted, raised as archive_drop events) and never frames."""

from __future__ import annotations

import sqlite3
import sys
import threading

import numpy as np
import pytest

sa = pytest.importorskip("sqlalchemy", reason="the archive extra (sqlalchemy) is not installed")

from _archive_helpers import small_disk, wait_until  # noqa: E402
from _daemon_fakes import (  # noqa: E402
    TOPICS,
    CountingSource,
    FakeInspector,
    collect,
    connected,
    ctl,
    daemon_config,
    final_seen,
    make_bundle,
    multi_config,
    run_to_end,
)

from runtime.errors import AgptError  # noqa: E402
from runtime.line.config import load_config  # noqa: E402
from runtime.line.daemon import Daemon  # noqa: E402
from runtime.sinks.archive import schema  # noqa: E402
from runtime.sinks.archive.config import ArchiveConfig  # noqa: E402
from runtime.sinks.archive.writer import make_engine  # noqa: E402
from runtime.tools.subscribe import ResultSubscriber  # noqa: E402


@pytest.fixture()
def bundle(tmp_path):
    return make_bundle(tmp_path / "bundle")


def _rows(url, *cols):
    eng = make_engine(ArchiveConfig(url=url))
    with eng.connect() as c:
        rows = c.execute(sa.select(*(schema.results.c[n] for n in cols)).order_by(schema.results.c.id)).all()
        kinds = [r.kind for r in c.execute(sa.select(schema.events.c.kind).order_by(schema.events.c.id))]
    eng.dispose()
    return rows, kinds


def _archive(d: Daemon):
    return next(s for s in d.sinks.sinks if s.name == "archive")


def test_every_judged_frame_has_its_row(bundle, tmp_path):
    url = f"sqlite:///{tmp_path}/archive/results.db"
    cfg = daemon_config(bundle, archive=ArchiveConfig(url=url, images="rejects"))
    d, bag = run_to_end(cfg, FakeInspector(), source=CountingSource(n=60))
    sink = _archive(d)
    rows, kinds = _rows(url, "frame_id", "verdict", "product", "bank_id", "image_path", "line", "station")
    assert d.judged == 60 and len(bag["results"]) == 60
    assert (len(rows), sink.rows_dropped) == (d.judged, 0)
    assert [r.frame_id for r in rows] == list(range(1, 61))
    by_id = {m.header.frame_id: m.header for m in bag["results"]}
    for r in rows:
        h = by_id[r.frame_id]
        assert (r.verdict, r.product, r.bank_id, r.line, r.station) == (h.verdict, h.product, h.bank_id, h.line, h.station)
        assert (r.image_path is not None) == bool(h.verdict)
    assert kinds[0] == "started" and kinds[-1] == "stopping"
    final = next(s for s in bag["statuses"] if s.final)
    assert final.sinks["archive"].dropped == 0 and final.sinks["archive"].connected


def test_locked_database_drops_rows_never_frames(bundle, tmp_path):
    db = tmp_path / "results.db"
    url = f"sqlite:///{db}"
    cfg = daemon_config(bundle, archive=ArchiveConfig(url=url, busy_timeout_ms=20, drop_event_interval_s=0.05))
    eng = make_engine(ArchiveConfig(url=url))  # the database exists before the lock is taken
    with eng.connect() as c:
        schema.migrate(c)
    eng.dispose()
    other = sqlite3.connect(db, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")  # another process holds the write lock
    gate = threading.Event()
    d = Daemon(cfg, inspector=FakeInspector(), source=CountingSource(n=200, gate=gate, period=0.002))
    d.start()
    sink = _archive(d)
    with ResultSubscriber(d.publish_endpoint, TOPICS) as sub:
        try:
            connected(sub)
            gate.set()
            wait_until(lambda: sink.rows_dropped >= 5, what="rows dropped behind the lock")
            other.execute("COMMIT")  # the lock goes away: writing resumes
            other.close()
            assert d.wait(30)
        finally:
            d.shutdown()
        bag = collect(sub, final_seen)
    rows, _ = _rows(url, "frame_id")
    assert d.judged == 200 and len(bag["results"]) == 200  # every frame judged and published
    assert sink.rows_dropped >= 5
    assert len(rows) == d.judged - sink.rows_dropped
    assert rows[-1].frame_id == 200  # writing resumed once the lock was gone
    drops = [e for e in bag["events"] if e.kind == "archive_drop"]
    assert drops and sum(e.detail["rows"] for e in drops) <= sink.rows_dropped
    assert any("locked" in e.detail["error"] for e in drops)
    final = next(s for s in bag["statuses"] if s.final)
    assert final.sinks["archive"].dropped >= sink.rows_dropped


class NoiseSource(CountingSource):
    """CountingSource's frames with noise below the first row (the fake's pixel [0,0] stays): ~0.5 MB JPEGs."""

    def read(self):
        ok, img, truth = super().read()
        if ok:
            img = np.random.default_rng(self.i).integers(0, 255, (480, 640, 3), dtype=np.uint8)
        return ok, img, truth


class HoldSource(CountingSource):
    """Holds before frame hold_at + 1 until `release` is set: frames up to hold_at are captured before it."""

    def __init__(self, hold_at: int, **kw):
        super().__init__(**kw)
        self.hold_at, self.release = hold_at, threading.Event()

    def read(self):
        if self.i == self.hold_at:
            assert self.release.wait(30)
        return super().read()


def test_full_disk_the_daemon_keeps_running(bundle):
    with small_disk(2) as disk:
        url = f"sqlite:///{disk}/results.db"
        big = daemon_config(bundle, archive=ArchiveConfig(url=url, images="all", jpeg_quality=100))
        d, bag = run_to_end(big, FakeInspector(), source=NoiseSource(n=150))
        sink = _archive(d)
        assert d.judged == 150 and len(bag["results"]) == 150
        assert d.stop_reason == "camera_end" and d.exit_code == 0
        assert sink.rows_written + sink.rows_dropped == 150
        assert sink.rows_dropped > 0  # the disk filled up: rows dropped and counted, frames not


def test_config_file_paths_and_missing_extra(bundle, tmp_path, monkeypatch):
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "line.yaml").write_text(
        f"bundle: {bundle}\nproduct: widget\ncamera: {{kind: synthetic, source: test}}\n"
        "archive:\n  url: sqlite:///archive/results.db\n  images: all\n  retention: {max_age_days: 30, min_free_percent: 10}\n"
    )
    cfg = load_config(conf / "line.yaml")
    assert cfg.archive.sqlite_path == conf / "archive" / "results.db"
    assert cfg.archive.image_root == conf / "archive" / "images"
    with pytest.raises(AgptError, match="archive.retention.min_free_percent"):
        (conf / "bad.yaml").write_text((conf / "line.yaml").read_text().replace("min_free_percent: 10", "min_free_percent: 120"))
        load_config(conf / "bad.yaml")
    # without the archive extra: one line at start, naming it
    monkeypatch.setitem(sys.modules, "sqlalchemy", None)
    monkeypatch.delitem(sys.modules, "runtime.sinks.archive.writer", raising=False)
    d = Daemon(daemon_config(bundle, archive=ArchiveConfig(url=f"sqlite:///{tmp_path}/x.db")), inspector=FakeInspector())
    with pytest.raises(AgptError, match=r"archive: .*pip install 'anomalygpt-edge\[archive\]'"):
        d.start()


def test_set_part_stamps_results_and_rows_by_capture_time(bundle, tmp_path):
    url = f"sqlite:///{tmp_path}/results.db"
    cfg = multi_config(bundle, [{"name": "cam0"}, {"name": "cam1"}], archive=ArchiveConfig(url=url, images="none"))
    gate = threading.Event()
    cam1 = HoldSource(10, n=80, gate=gate)  # its first 10 frames, then it waits for the second set_part
    srcs = {"cam0": CountingSource(n=80, gate=gate, period=0.002), "cam1": cam1}
    d = Daemon(cfg, inspector=FakeInspector(), sources=srcs)
    d.start()
    with ResultSubscriber(d.publish_endpoint, TOPICS) as sub:
        try:
            connected(sub)
            r = ctl(d, {"cmd": "set_part", "part_id": "P-1", "lot": "4711"})  # every camera
            assert r["ok"] and r["data"]["cameras"] == ["cam0", "cam1"]
            assert ctl(d, {"cmd": "set_part", "part_id": "X", "camera": "nope"})["ok"] is False
            bad = ctl(d, {"cmd": "set_part", "part_id": "", "lot": "4711"})
            assert not bad["ok"] and "part_id" in bad["error"]
            gate.set()
            bag = collect(sub, lambda b: len([m for m in b["results"] if m.header.camera == "cam1"]) >= 10)
            assert ctl(d, {"cmd": "set_part", "part_id": "P-2", "lot": "4712", "camera": "cam1"})["ok"]
            cam1.release.set()  # cam1 frames 11.. are captured after the second set_part
            assert d.wait(30)
        finally:
            d.shutdown()
        rest = collect(sub, final_seen)
    results = bag["results"] + rest["results"]
    assert d.judged == 160 and len(results) == 160
    rows, _ = _rows(url, "camera", "frame_id", "part_id", "lot")
    assert len(rows) == d.judged
    header = {(m.header.camera, m.header.frame_id): (m.header.part_id, m.header.lot) for m in results}
    for r in rows:  # the archive keeps what the header said
        assert header[(r.camera, r.frame_id)] == (r.part_id, r.lot)
    cam0 = [r.lot for r in rows if r.camera == "cam0"]
    cam1 = [r.lot for r in sorted((r for r in rows if r.camera == "cam1"), key=lambda r: r.frame_id)]
    assert set(cam0) == {"4711"}  # the second set_part was for cam1 only
    assert cam1 == ["4711"] * 10 + ["4712"] * 70  # by capture time: the frames captured before it keep the old lot


def test_part_tracker_goes_by_capture_time():
    from runtime.line.parts import PartTracker

    t = PartTracker(keep=3)
    assert t.at(5.0) == (None, None)
    t.set("A", "L1", since=10.0)
    t.set("B", None, since=20.0)
    assert (t.at(9.9), t.at(10.0), t.at(19.0), t.at(25.0)) == ((None, None), ("A", "L1"), ("A", "L1"), ("B", None))
    assert t.current == ("B", None)


READER = r"""
import sqlite3, sys
c = sqlite3.connect(sys.argv[1], timeout=5)
n = errors = last = 0
went_back = 0
sys.stdout.write("ready\n"); sys.stdout.flush()
while True:
    try:
        k = c.execute("SELECT count(*) FROM results WHERE lot = '4711'").fetchone()[0]
        went_back += k < last
        last = k
        n += 1
    except Exception as e:
        errors += 1
        sys.stderr.write(f"{e}\n")
    if sys.stdin.readable() and n % 50 == 0:
        import select
        if select.select([sys.stdin], [], [], 0)[0] and not sys.stdin.read(1):
            break
last = c.execute("SELECT count(*) FROM results WHERE lot = '4711'").fetchone()[0]  # after the daemon stopped
print(n, errors, went_back, last)
"""


def test_readers_in_other_processes_while_the_daemon_writes(bundle, tmp_path):
    """WAL: two reader processes query all along; neither they nor the daemon's writer see a lock error."""
    import subprocess

    db = tmp_path / "results.db"
    cfg = daemon_config(bundle, archive=ArchiveConfig(url=f"sqlite:///{db}", images="none"))
    eng = make_engine(cfg.archive)  # the database exists before the readers open it
    with eng.connect() as c:
        schema.migrate(c)
    eng.dispose()
    readers = [subprocess.Popen([sys.executable, "-c", READER, str(db)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for _ in range(2)]  # fmt: skip
    try:
        for r in readers:
            assert r.stdout.readline().strip() == "ready"
        gate = threading.Event()
        d = Daemon(cfg, inspector=FakeInspector(), source=CountingSource(n=300, gate=gate))
        d.start()
        try:
            ctl(d, {"cmd": "set_part", "part_id": "P", "lot": "4711"})
            gate.set()
            assert d.wait(60)
        finally:
            d.shutdown()
    finally:
        outs = []
        for r in readers:
            out, err = r.communicate(input="", timeout=30)
            outs.append((out.split(), err))
    sink = _archive(d)
    assert d.judged == 300 and (sink.rows_written, sink.rows_dropped) == (300, 0)
    for (n, errors, went_back, last), err in outs:
        assert (int(errors), int(went_back)) == (0, 0), err
        assert int(n) > 10 and int(last) == 300  # each reader ran all along and saw the last row
