"""Retention: by age (oldest rows, their files and old events go), and by free disk on a small real file system
(the sink keeps writing images while the oldest give way, and the configured free share comes back)."""

from __future__ import annotations

import shutil
import time

import pytest

sa = pytest.importorskip("sqlalchemy", reason="the archive extra (sqlalchemy) is not installed")

from _archive_helpers import make_result, noise, small_disk, wait_until  # noqa: E402

from runtime.sinks.archive import schema  # noqa: E402
from runtime.sinks.archive.config import ArchiveConfig, RetentionConfig  # noqa: E402
from runtime.sinks.archive.writer import ArchiveSink, make_engine  # noqa: E402
from runtime.sinks.base import SinkEvent  # noqa: E402


def _frames(url):
    eng = make_engine(ArchiveConfig(url=url))
    with eng.connect() as c:
        ids = [r.frame_id for r in c.execute(sa.select(schema.results.c.frame_id).order_by(schema.results.c.frame_id))]
        kinds = [r.kind for r in c.execute(sa.select(schema.events.c.kind))]
    eng.dispose()
    return ids, kinds


def test_by_age_oldest_rows_files_and_events_go(tmp_path):
    url = f"sqlite:///{tmp_path}/r.db"
    ret = RetentionConfig(max_age_days=7, check_interval_s=3600, batch=3)  # batch 3: several steps in a row
    s = ArchiveSink(ArchiveConfig(url=url, images="all", retention=ret))
    now = time.time()
    s.retention._next = time.monotonic() + 3600  # the first check after the rows are in (below)
    s.start()
    for i in range(1, 11):  # frames 1-6 are 10 days old, 7-10 from now
        s.submit_result(make_result(i, t=now - 10 * 86400 if i <= 6 else now))
    s.submit_event(SinkEvent("started", {}, now - 9 * 86400))
    s.submit_event(SinkEvent("changeover", {}, now))
    wait_until(lambda: s.rows_written == 10 and s.events_written == 2)
    s.retention._next = 0.0  # due now: the writer's next idle() runs it
    wait_until(lambda: s.retention.rows_deleted == 6, what="the old rows deleted")
    s.stop()
    ids, kinds = _frames(url)
    assert ids == [7, 8, 9, 10]
    assert kinds == ["changeover"]
    files = sorted(p.name for p in (tmp_path / "images").rglob("*") if p.is_file())
    assert len(files) == 8 and all(f.split("_")[2][:6] in {f"{i:06d}" for i in ids} for f in files)
    assert s.retention.bytes_freed > 0


def test_by_free_disk_holds_the_share_while_writing(tmp_path):
    with small_disk(4) as disk:
        url = f"sqlite:///{disk}/r.db"
        ret = RetentionConfig(min_free_percent=40, check_interval_s=0.01, batch=5)
        s = ArchiveSink(ArchiveConfig(url=url, images="all", jpeg_quality=95, retention=ret))
        s.start()
        img = noise()
        lows = []
        n = 150  # ~15 MB of JPEG through a 4 MB disk
        for i in range(1, n + 1):
            s.submit_result(make_result(i, image=img))
            wait_until(lambda: s.stats().queued == 0)
            u = shutil.disk_usage(disk)
            lows.append(100 * u.free / u.total)
        wait_until(lambda: s.rows_written + s.rows_dropped == n)
        s.stop()
        ids, _ = _frames(url)
        assert s.retention.rows_deleted > 0
        assert ids[-1] == n and ids == sorted(ids)  # the newest rows are there, the oldest went
        assert s.rows_dropped <= n // 20  # the disk never stayed full: almost every row was written
        u = shutil.disk_usage(disk)
        assert 100 * u.free / u.total >= 40 - 100 * 120e3 / u.total  # within about one image of the target
        assert min(lows) > 5  # never filled up
