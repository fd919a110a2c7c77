"""Retention: the oldest rows and their image files go first, by age and by free disk, in bounded steps.

Runs on the archive's writer thread between two rows (ArchiveSink calls `step` from idle() and after
rows once a check is due), so it never touches the line and never races the writer for the one connection.
Files are deleted before their rows: a crash in between leaves rows pointing at missing files (the export
says so), never files that no row names and nothing would ever delete.

The free-space rule deletes until the file systems of the images (and of a SQLite database) have
`min_free_percent` free again: whatever filled the disk, the archive gives way first so the service keeps
running. A SQLite database is created with auto_vacuum=INCREMENTAL so the pages of deleted rows are given
back to the file system too (`PRAGMA incremental_vacuum` after each step), not only reused.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import sqlalchemy as sa

from runtime.sinks.archive.config import RetentionConfig
from runtime.sinks.archive.images import ImageWriter
from runtime.sinks.archive.schema import events, results

log = logging.getLogger("agpt.sinks.archive")


def free_percent(paths: list[Path], disk_usage: Callable = shutil.disk_usage) -> float | None:
    """Lowest free share (percent) over the file systems holding these paths (their nearest existing parent)."""
    out = None
    for p in paths:
        p = Path(p)
        while not p.exists() and p != p.parent:
            p = p.parent
        try:
            u = disk_usage(p)
        except OSError:
            continue
        pct = 100.0 * u.free / u.total if u.total else 100.0
        out = pct if out is None else min(out, pct)
    return out


def _total_bytes(paths: list[Path], disk_usage: Callable) -> int:
    sizes = []
    for p in paths:
        p = Path(p)
        while not p.exists() and p != p.parent:
            p = p.parent
        try:
            sizes.append(disk_usage(p).total)
        except OSError:
            continue
    return min(sizes) if sizes else 1 << 30


class Retention:
    def __init__(self, cfg: RetentionConfig, images: ImageWriter, db_path: Path | None = None,
                 clock: Callable[[], float] = time.time, disk_usage: Callable = shutil.disk_usage):  # fmt: skip
        self.cfg = cfg
        self.images = images
        self.db_path = db_path
        self.clock = clock
        self.disk_usage = disk_usage
        self._next = 0.0
        self._behind = False  # the last step was cut short by `batch`: the next one runs at once
        self._warned_empty = False
        self._written_at_check = 0  # images.bytes_written at the last free-space check
        self._check_bytes: int | None = None  # 1% of the disk: a check every check_interval_s alone lets a fast writer
        # fill the headroom in between (50 MB/s of images vs 10% of a small disk), so writing that much checks too
        self.rows_deleted = 0
        self.events_deleted = 0
        self.bytes_freed = 0

    @property
    def enabled(self) -> bool:
        return self.cfg.max_age_days is not None or self.cfg.min_free_percent is not None

    def due(self) -> bool:
        if not self.enabled:
            return False
        if self._behind or time.monotonic() >= self._next:
            return True
        return self._check_bytes is not None and self.images.bytes_written - self._written_at_check >= self._check_bytes

    def paths(self) -> list[Path]:
        return [self.images.root] + ([self.db_path.parent] if self.db_path is not None else [])

    def step(self, conn: sa.Connection) -> dict:
        """One bounded step: at most `batch` rows by age, then at most `batch` by free space. What it deleted."""
        self._next = time.monotonic() + self.cfg.check_interval_s
        self._behind = False
        done = {"rows": 0, "events": 0, "bytes": 0}
        if self.cfg.max_age_days is not None:
            cutoff = self.clock() - self.cfg.max_age_days * 86400.0
            n, b = self._delete_oldest(conn, results.c.time < cutoff)
            with conn.begin():
                e = conn.execute(sa.delete(events).where(events.c.time < cutoff)).rowcount or 0
            done["rows"] += n
            done["bytes"] += b
            done["events"] += e
            self._behind |= n >= self.cfg.batch
        if self.cfg.min_free_percent is not None:
            self._written_at_check = self.images.bytes_written
            if self._check_bytes is None:
                self._check_bytes = max(1 << 16, int(_total_bytes(self.paths(), self.disk_usage) * 0.01))
            free = free_percent(self.paths(), self.disk_usage)
            if free is not None and free < self.cfg.min_free_percent:
                n, b = self._delete_oldest(conn, None)
                if n:
                    self._warned_empty = False
                    with conn.begin():
                        oldest = conn.execute(sa.select(sa.func.min(results.c.time))).scalar()
                        q = sa.delete(events)
                        if oldest is not None:  # events older than every remaining row go with them
                            q = q.where(events.c.time < oldest)
                        e = conn.execute(q).rowcount or 0
                    done["events"] += e
                    self._vacuum(conn)
                    self._behind = True  # check again right away: still below the target?
                elif not self._warned_empty:
                    self._warned_empty = True
                    log.warning("archive: %.1f%% free, below min_free_percent %.1f%%, and no archived rows are left to delete",
                                free, self.cfg.min_free_percent)  # fmt: skip
                done["rows"] += n
                done["bytes"] += b
        self.rows_deleted += done["rows"]
        self.events_deleted += done["events"]
        self.bytes_freed += done["bytes"]
        if done["rows"] or done["events"]:
            log.info("archive retention: %d rows, %d events, %.1f MB of files deleted", done["rows"], done["events"],
                     done["bytes"] / 1e6)  # fmt: skip
        return done

    def _delete_oldest(self, conn: sa.Connection, where) -> tuple[int, int]:
        q = sa.select(results.c.id, results.c.image_path, results.c.mask_path).order_by(results.c.time, results.c.id)
        if where is not None:
            q = q.where(where)
        with conn.begin():  # ended before the files go: a long read keeps SQLite's WAL from checkpointing
            rows = conn.execute(q.limit(self.cfg.batch)).all()
        if not rows:
            return 0, 0
        freed = self.images.remove([p for r in rows for p in (r.image_path, r.mask_path)])
        with conn.begin():
            conn.execute(sa.delete(results).where(results.c.id.in_([r.id for r in rows])))
        return len(rows), freed

    def _vacuum(self, conn: sa.Connection) -> None:
        if conn.dialect.name != "sqlite":
            return
        try:
            with conn.begin():
                conn.exec_driver_sql("PRAGMA incremental_vacuum")
            # the deletes went through the WAL, which keeps its size (up to ~4 MB before an automatic
            # checkpoint): on a nearly full disk that is space too; TRUNCATE gives it back
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)").all()
            conn.commit()
        except sa.exc.DBAPIError as e:  # best effort: the pages are reused by the next rows anyway
            log.debug("incremental_vacuum: %s", e)
