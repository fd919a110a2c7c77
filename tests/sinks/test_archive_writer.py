"""ArchiveSink against real databases: rows and files, readers while it writes, a locked database, a removed
database folder, a full disk, and a PostgreSQL server that locks, restarts and comes back."""

from __future__ import annotations

import shutil
import sqlite3
import threading
import time

import pytest

sa = pytest.importorskip("sqlalchemy", reason="the archive extra (sqlalchemy) is not installed")

from _archive_helpers import make_result, noise, small_disk, wait_until  # noqa: E402
from _postgres import postgres_server  # noqa: E402

from runtime.sinks.archive import schema  # noqa: E402
from runtime.sinks.archive.config import ArchiveConfig  # noqa: E402
from runtime.sinks.archive.writer import ArchiveSink, make_engine  # noqa: E402
from runtime.sinks.base import SinkEvent  # noqa: E402


def _sink(url, **kw):
    events = []
    kw.setdefault("reconnect_backoff_s", 0.05)
    kw.setdefault("reconnect_backoff_max_s", 0.2)
    kw.setdefault("drop_event_interval_s", 0.05)
    s = ArchiveSink(ArchiveConfig(url=url, **kw), on_event=lambda k, d: events.append((k, d)))
    s.start()
    return s, events


def _count(url, where=None) -> int:
    eng = make_engine(ArchiveConfig(url=url))
    with eng.connect() as c:
        q = sa.select(sa.func.count()).select_from(schema.results)
        n = c.execute(q if where is None else q.where(where)).scalar()
    eng.dispose()
    return n


def _settled(s: ArchiveSink, n: int):
    return lambda: s.rows_written + s.rows_dropped >= n and s.stats().queued == 0


def test_rows_events_and_reject_images(tmp_path):
    url = f"sqlite:///{tmp_path}/db/results.db"
    s, _ = _sink(url, images="rejects", jpeg_quality=80)
    for i in range(1, 31):
        s.submit_result(make_result(i, verdict=(i % 3 == 0), lot="4711", part_id=f"P{i}"))
    s.submit_event(SinkEvent("changeover", {"camera": "cam0", "product": "gadget"}, time.time()))
    s.stop()
    st = s.stats()
    assert (s.rows_written, s.rows_dropped, s.events_written, st.dropped) == (30, 0, 1, 0)
    assert st.delivered == 31
    eng = make_engine(ArchiveConfig(url=url))
    with eng.connect() as c:
        rows = c.execute(sa.select(schema.results).order_by(schema.results.c.frame_id)).all()
        ev = c.execute(sa.select(schema.events)).one()
    eng.dispose()
    assert [r.frame_id for r in rows] == list(range(1, 31))
    r3 = rows[2]
    assert (r3.verdict, r3.lot, r3.part_id, r3.locations, r3.latency_ms, r3.line, r3.station) == (
        True, "4711", "P3", "top left", 12.5, "line1", "station3")  # fmt: skip
    assert r3.image_path.endswith("_cam0_000003.jpg") and r3.mask_path.endswith("_cam0_000003_mask.png")
    root = tmp_path / "db" / "images"
    assert (root / r3.image_path).read_bytes()[:2] == b"\xff\xd8"  # a JPEG
    assert (root / r3.mask_path).read_bytes().startswith(b"\x89PNG")
    assert all(r.image_path is None for r in rows if not r.verdict)
    files = sorted(p.name for p in root.rglob("*") if p.is_file())
    assert len(files) == 20 and not [f for f in files if f.startswith(".")]  # no temporary left behind
    assert (ev.kind, ev.camera) == ("changeover", "cam0")
    with sqlite3.connect(tmp_path / "db" / "results.db") as c:
        assert c.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


@pytest.mark.parametrize("mode,expected", [("none", 0), ("all", 10)])
def test_image_modes(tmp_path, mode, expected):
    s, _ = _sink(f"sqlite:///{tmp_path}/r.db", images=mode)
    for i in range(1, 11):
        s.submit_result(make_result(i, verdict=i % 2 == 0))
    s.stop()
    assert s.rows_written == 10
    assert len(list((tmp_path / "images").rglob("*.jpg"))) == expected


def test_readers_while_writing(tmp_path):
    """WAL: other processes' readers never block the writer nor fail; every row lands."""
    url = f"sqlite:///{tmp_path}/r.db"
    s, _ = _sink(url, images="none", busy_timeout_ms=2000)
    stop = threading.Event()
    seen: list[list[int]] = [[], [], []]
    errors = []

    def reader(k: int):
        c = sqlite3.connect(tmp_path / "r.db", timeout=5)
        try:
            while not stop.is_set():
                n = c.execute("SELECT count(*), max(frame_id) FROM results").fetchone()
                seen[k].append(n[0])
        except Exception as e:  # pragma: no cover - the assertion below says what went wrong
            errors.append(e)
        finally:
            c.close()

    threads = [threading.Thread(target=reader, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    n = 1000
    for i in range(1, n + 1):
        s.submit_result(make_result(i))
        if i % 100 == 0:
            wait_until(lambda: s.stats().queued == 0, what="the writer to catch up")
    wait_until(_settled(s, n), what="every row")
    stop.set()
    for t in threads:
        t.join()
    s.stop()
    assert not errors, errors
    assert (s.rows_written, s.rows_dropped) == (n, 0)
    assert _count(url) == n
    for counts in seen:  # each reader saw the count grow, never go back
        assert counts == sorted(counts) and len(counts) > 3


def test_locked_database_drops_rows_counted_then_resumes(tmp_path):
    url = f"sqlite:///{tmp_path}/r.db"
    s, events = _sink(url, images="all", busy_timeout_ms=50)
    s.submit_result(make_result(1))
    wait_until(_settled(s, 1))
    other = sqlite3.connect(tmp_path / "r.db", isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")  # another process holding the write lock (a backup, a sloppy script)
    for i in range(2, 7):
        s.submit_result(make_result(i, verdict=True))
    wait_until(_settled(s, 6), what="the locked rows to be dropped")
    assert (s.rows_written, s.rows_dropped) == (1, 5)
    assert "database is locked" in s.stats().last_error
    assert s.connected()  # a lock is not a lost connection
    other.execute("COMMIT")
    other.close()
    for i in range(7, 12):
        s.submit_result(make_result(i))
    wait_until(_settled(s, 11))
    wait_until(lambda: events, what="an archive_drop event")
    s.stop()
    assert (s.rows_written, s.rows_dropped, s.stats().dropped) == (6, 5, 5)
    assert _count(url) == 6
    assert events[0][0] == "archive_drop" and sum(d["rows"] for _, d in events) == 5
    # the dropped rows' files were taken back: no file without its row
    assert len(list((tmp_path / "images").rglob("*.jpg"))) == 6


def test_removed_database_folder(tmp_path):
    folder = tmp_path / "archive"
    url = f"sqlite:///{folder}/r.db"
    s, events = _sink(url, images="none")
    s.submit_result(make_result(1))
    wait_until(_settled(s, 1))
    shutil.rmtree(folder)  # an operator "cleaning up", or the disk it lived on unmounted
    for i in range(2, 6):
        s.submit_result(make_result(i))
    wait_until(_settled(s, 5), what="rows to a gone folder dropped")
    assert (s.rows_written, s.rows_dropped) == (1, 4)
    assert not folder.exists()  # not recreated behind the operator's back
    assert "gone" in s.stats().last_error or "removed" in s.stats().last_error
    folder.mkdir()
    wait_until(lambda: s.connected(), what="the reconnect once the folder is back")
    for i in range(6, 9):
        s.submit_result(make_result(i))
    wait_until(_settled(s, 8))
    s.stop()
    assert (s.rows_written, s.rows_dropped) == (4, 4)
    assert _count(url) == 3  # a new database, migrated, with the rows since
    assert any(k == "archive_drop" for k, _ in events)


def test_full_disk_drops_rows_and_keeps_running(tmp_path):
    with small_disk(2) as disk:
        url = f"sqlite:///{disk}/r.db"
        s, _ = _sink(url, images="all", jpeg_quality=95)
        img = noise()
        n = 80  # ~80 x 100 kB of JPEG into 2 MB
        for i in range(1, n + 1):
            s.submit_result(make_result(i, image=img))
            wait_until(lambda: s.stats().queued == 0)
        wait_until(_settled(s, n))
        assert s.rows_dropped > 0 and s.rows_written > 0
        assert s.rows_written + s.rows_dropped == n
        written_before = s.rows_written
        # space comes back (files removed by hand): rows are written again
        shutil.rmtree(disk / "images")
        for i in range(n + 1, n + 6):
            s.submit_result(make_result(i, image=img))
        wait_until(_settled(s, n + 5))
        s.stop()
        assert s.rows_written == written_before + 5
        assert not [p for p in disk.rglob(".*.tmp")]  # failed writes left no temporary files


# ---- PostgreSQL -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pg():
    with postgres_server() as srv:
        yield srv


def test_postgres_rows_lock_and_restart(pg, tmp_path):
    url = pg.url
    s, events = _sink(url, images="rejects", images_dir=tmp_path / "img", busy_timeout_ms=100)
    assert s.connected()
    for i in range(1, 11):
        s.submit_result(make_result(i, verdict=i % 5 == 0, lot="L1"))
    s.submit_event(SinkEvent("started", {"camera": "cam0"}, time.time()))
    wait_until(_settled(s, 10))
    assert (s.rows_written, s.rows_dropped) == (10, 0)
    assert _count(url, schema.results.c.lot == "L1") == 10
    assert len(list((tmp_path / "img").rglob("*.jpg"))) == 2

    # a lock held by another client longer than lock_timeout: rows dropped, the connection kept
    eng = make_engine(ArchiveConfig(url=url))
    other = eng.connect()
    other.begin()
    other.exec_driver_sql("LOCK TABLE results IN ACCESS EXCLUSIVE MODE")
    for i in range(11, 14):
        s.submit_result(make_result(i))
    wait_until(_settled(s, 13), what="rows dropped behind the lock")
    assert s.rows_dropped == 3 and s.connected()
    other.rollback()
    other.close()
    eng.dispose()

    # the server restarts: rows meanwhile are dropped (counted), then the writer reconnects by itself
    pg.stop("fast")
    for i in range(14, 18):
        s.submit_result(make_result(i))
    wait_until(_settled(s, 17), what="rows dropped while the server is down")
    assert s.rows_dropped == 7 and not s.connected()
    pg.start()
    pg.wait_ready()
    wait_until(lambda: s.connected(), timeout=20, what="the reconnect")
    for i in range(18, 21):
        s.submit_result(make_result(i))
    wait_until(_settled(s, 20))
    s.stop()
    assert (s.rows_written, s.rows_dropped) == (13, 7)
    assert _count(url) == 13
    assert sum(d["rows"] for k, d in events if k == "archive_drop") == 7
