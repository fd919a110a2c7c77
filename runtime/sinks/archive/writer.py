"""ArchiveSink: every result as a row (and its files), every event as a row, on one writer thread.

The line hands results over through QueuedSink's bounded queue and never waits. The writer holds one
connection (SQLite: WAL, synchronous=NORMAL, busy_timeout; PostgreSQL: lock_timeout) and writes one row per
transaction, so a failure costs that row only. What cannot be written is dropped and counted: a full queue,
a lock held longer than busy_timeout_ms, a full disk, a database that is gone. A lost database is reconnected
with a doubling backoff; rows that arrive meanwhile are dropped (counted), never queued without bound.
Every drop shows in SinkStats (status.sinks.archive) and, at most every drop_event_interval_s, as an
`archive_drop` event raised through the daemon (publisher and the other sinks) and in the log.

A SQLite file that is removed while open keeps accepting writes into the deleted inode (Linux), which would
lose every later row silently: the writer checks the file's identity before each row and reconnects when it
changed. A missing folder is not created again at runtime (it may be an unmounted disk): rows are dropped
until it is back, then a new database is started there.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from runtime.errors import AgptError
from runtime.sinks.archive.config import ArchiveConfig
from runtime.sinks.base import QueuedSink, SinkEvent, SinkResult

try:
    import sqlalchemy as sa
except ModuleNotFoundError as e:  # the one line a config that enables the archive without its extra gets
    raise AgptError("archive: needs the archive extra: pip install 'anomalygpt-edge[archive]'") from e

from runtime.sinks.archive.images import ImageWriter
from runtime.sinks.archive.retention import Retention
from runtime.sinks.archive.schema import SchemaError, events, migrate, results

log = logging.getLogger("agpt.sinks.archive")

# errors that concern one write, not the connection: the row is dropped, the connection kept
TRANSIENT_SQLSTATES = {"55P03", "53100", "40P01", "40001", "57014"}  # lock timeout, disk full, deadlock, serialization, cancel
TRANSIENT_TEXT = ("database is locked", "database table is locked", "database or disk is full", "disk i/o error")


# built once: a statement with .values() per row costs 0.24 ms of compiling, a reused one 0.06 ms
_INSERT_RESULT = sa.insert(results)
_INSERT_EVENT = sa.insert(events)


class ArchiveDown(Exception):
    """The database is not connected (waiting for the next reconnect)."""


def make_engine(cfg: ArchiveConfig) -> sa.Engine:
    """A NullPool engine (the writer keeps its own one connection; close() really closes it)."""
    if cfg.is_sqlite:
        # check_same_thread: start() connects on the daemon's thread, then only the writer thread uses it
        engine = sa.create_engine(cfg.sqlalchemy_url, poolclass=sa.pool.NullPool,
                                  connect_args={"check_same_thread": False, "timeout": cfg.busy_timeout_ms / 1000})  # fmt: skip

        @sa.event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _record):
            c = dbapi_conn.cursor()
            # each asked only when it changes something: setting them on an existing database takes a lock, and
            # a connection must open while another process holds one (its writes are then dropped, not its start)
            if c.execute("PRAGMA page_count").fetchone()[0] == 0:
                c.execute("PRAGMA auto_vacuum=INCREMENTAL")  # only possible before the first table
            if c.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                c.execute("PRAGMA journal_mode=WAL")  # readers never block the writer, nor it them
            # WAL + NORMAL: a commit is not an fsync; a power cut loses the last rows, never the file
            c.execute("PRAGMA synchronous=NORMAL")
            c.execute(f"PRAGMA busy_timeout={int(cfg.busy_timeout_ms)}")
            c.execute("PRAGMA journal_size_limit=4194304")  # a checkpointed WAL shrinks back to 4 MB at most
            c.close()

        return engine
    try:
        import psycopg  # noqa: F401
    except ModuleNotFoundError:
        raise AgptError("archive: postgresql:// needs psycopg 3: pip install 'anomalygpt-edge[archive]'") from None
    return sa.create_engine(
        cfg.sqlalchemy_url, poolclass=sa.pool.NullPool,
        connect_args={"connect_timeout": 5, "options": f"-c lock_timeout={int(cfg.busy_timeout_ms)}",
                      "application_name": "agpt-archive"},
    )  # fmt: skip


def result_row(r: SinkResult, image_path: str | None = None, mask_path: str | None = None) -> dict[str, Any]:
    h = r.header
    return dict(
        time=h.capture_time, publish_time=h.publish_time, camera=h.camera, line=h.line, station=h.station,
        product=h.product, bank_id=h.bank_id, frame_id=h.frame_id, verdict=h.verdict, p_anomaly=h.p_anomaly,
        score=h.score, locations="|".join(h.locations), judge=h.judge, latency_ms=h.latency_ms.get("total"),
        image_path=image_path, mask_path=mask_path,
        part_id=h.part_id, lot=h.lot,
    )  # fmt: skip


def is_transient(e: BaseException) -> bool:
    orig = getattr(e, "orig", e)
    if getattr(orig, "sqlstate", None) in TRANSIENT_SQLSTATES:
        return True
    text = str(orig).lower()
    return isinstance(e, OSError) or any(t in text for t in TRANSIENT_TEXT)


class ArchiveSink(QueuedSink):
    name = "archive"

    def __init__(self, cfg: ArchiveConfig, on_event: Callable[[str, dict], Any] | None = None):
        super().__init__(cfg.max_queue, thread_name="sink-archive")
        self.cfg = cfg
        self.on_event = on_event  # the daemon's event publisher (archive_drop); None: log only
        self.images = ImageWriter(cfg.image_root, cfg.images, cfg.jpeg_quality, cfg.fsync)
        self.retention = Retention(cfg.retention, self.images, cfg.sqlite_path)
        self._engine: sa.Engine | None = None
        self._conn: sa.Connection | None = None
        self._file_id: tuple[int, int] | None = None  # SQLite: (st_dev, st_ino) of the file we have open
        self._next_connect = 0.0
        self._backoff = cfg.reconnect_backoff_s
        self._down_reason = "not connected yet"
        self._counts_lock = threading.Lock()
        self.rows_written = 0
        self.rows_dropped = 0
        self.events_written = 0
        self.events_dropped = 0
        self._reported = (0, 0)  # (rows_dropped, events_dropped) at the last archive_drop event
        self._drop_error = ""  # why the last row or event was dropped
        self._last_report = 0.0
        self.drop_reports = 0

    # ---- start / stop --------------------------------------------------------------------------------

    def start(self) -> None:
        """Refuses a bad URL, a missing driver and a newer schema with one clear line; a database that is only
        unreachable (a plant server restarting) lets the daemon start and is reconnected in the background."""
        try:
            self._engine = make_engine(self.cfg)
        except (sa.exc.ArgumentError, sa.exc.NoSuchModuleError) as e:
            raise AgptError(f"archive.url: {e}") from None
        p = self.cfg.sqlite_path
        if p is not None:
            p.parent.mkdir(parents=True, exist_ok=True)  # at start the configured folder is made; later it is waited for
        try:
            self._connect()
        except SchemaError:
            raise
        except Exception as e:
            self._connect_failed(e)
            log.warning("archive: %s; starting without it, reconnecting in the background", self._down_reason)
        super().start()

    def close(self) -> None:
        self._disconnect(None)
        if self._engine is not None:
            self._engine.dispose()

    def connected(self) -> bool | None:
        return self._conn is not None

    def _run(self) -> None:
        # The writer yields the CPU to the inspection loop: on a small host both compete for the same cores, and
        # the line comes first (a writer that falls behind fills its queue and drops rows, counted).
        if self.cfg.writer_nice:
            try:
                os.setpriority(
                    os.PRIO_PROCESS, threading.get_native_id(), os.getpriority(os.PRIO_PROCESS, 0) + self.cfg.writer_nice
                )
            except (OSError, AttributeError) as e:
                log.debug("archive: writer priority not lowered: %s", e)
        super()._run()

    # ---- the connection -------------------------------------------------------------------------------

    def _connect(self) -> None:
        p = self.cfg.sqlite_path
        if p is not None and not p.parent.is_dir():
            raise ArchiveDown(f"archive folder {p.parent} is gone")
        conn = self._engine.connect()
        try:
            found, now = migrate(conn, where=f"archive ({self._where()})")
            if found != now:
                log.info("archive: schema upgraded from version %d to %d", found, now)
            self._file_id = self._stat_id()
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        self._backoff = self.cfg.reconnect_backoff_s

    def _where(self) -> str:
        p = self.cfg.sqlite_path
        return str(p) if p is not None else sa.make_url(self.cfg.sqlalchemy_url).render_as_string(hide_password=True)

    def _stat_id(self) -> tuple[int, int] | None:
        p = self.cfg.sqlite_path
        if p is None:
            return None
        st = os.stat(p)
        return st.st_dev, st.st_ino

    def _connect_failed(self, e: BaseException) -> None:
        self._down_reason = e.args[0] if isinstance(e, ArchiveDown) else f"cannot open {self._where()}: {_one_line(e)}"
        self._next_connect = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, self.cfg.reconnect_backoff_max_s)

    def _disconnect(self, reason: str | None) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:
                pass
            self._conn = None
            if reason:
                self._down_reason = reason
                self._next_connect = time.monotonic()  # the first reconnect at once, then backing off
                log.warning("archive: %s; reconnecting", reason)

    def _ensure(self) -> sa.Connection:
        if self._conn is not None and self._file_id is not None:
            try:
                same = self._stat_id() == self._file_id
            except OSError:
                same = False
            if not same:
                self._disconnect(f"the database file {self.cfg.sqlite_path} was removed or replaced")
        if self._conn is not None:
            return self._conn
        if time.monotonic() < self._next_connect:
            raise ArchiveDown(self._down_reason)
        try:
            self._connect()
        except Exception as e:
            self._connect_failed(e)
            raise ArchiveDown(self._down_reason) from None
        log.info("archive: connected to %s", self._where())
        return self._conn

    def _failed(self, e: BaseException) -> None:
        """After a failed write: keep the connection for a lock or a full disk, reconnect for anything else."""
        if isinstance(e, sa.exc.SQLAlchemyError) and not is_transient(e):
            self._disconnect(f"write failed: {_one_line(e)}")

    # ---- rows ----------------------------------------------------------------------------------------

    def _put(self, item: tuple[str, Any]) -> None:
        # as QueuedSink._put, counting rows and events apart (rows = frames_judged - rows_dropped)
        if self._stopping.is_set():
            self._count_drop(item)
            return
        try:
            self._q.put_nowait(item)
        except Exception:  # queue.Full
            self._count_drop(item)

    def _count_drop(self, item: tuple[str, Any], error: str | None = None) -> None:
        kind, obj = item
        with self._counts_lock:
            if kind == "result":
                self.rows_dropped += 1
            elif not _own_report(obj):
                self.events_dropped += 1
            self._drop_error = error or "the archive's queue is full (the database is slower than the line)"
        self.count_dropped(1, error)

    def handle_result(self, result: SinkResult) -> None:
        image_rel = mask_rel = None
        try:
            conn = self._ensure()
            image_rel, mask_rel = self.images.write(result.header, result.image, result.mask_png)
            with conn.begin():
                conn.execute(_INSERT_RESULT, result_row(result, image_rel, mask_rel))
        except Exception as e:
            self.images.remove([image_rel, mask_rel])  # no file without its row
            with self._counts_lock:
                self.rows_dropped += 1  # QueuedSink counts it in SinkStats.dropped when this re-raises
                self._drop_error = _one_line(e)
            self._failed(e)
            raise
        finally:
            self._housekeep()
        self.rows_written += 1

    def handle_event(self, event: SinkEvent) -> None:
        try:
            conn = self._ensure()
            detail = event.detail or {}
            cam = detail.get("camera")
            with conn.begin():
                conn.execute(_INSERT_EVENT, dict(
                    time=event.time, kind=event.kind, camera=cam if isinstance(cam, str) else None,
                    detail=json.dumps(detail, default=str, sort_keys=True),
                ))  # fmt: skip
        except Exception as e:
            with self._counts_lock:
                self.events_dropped += 0 if _own_report(event) else 1
                self._drop_error = _one_line(e)
            self._failed(e)
            raise
        finally:
            self._housekeep()
        self.events_written += 1
        self.count_delivered()

    # ---- between rows: reconnect, retention, drop reports ------------------------------------------------

    def idle(self) -> None:
        if self._conn is None and time.monotonic() >= self._next_connect:
            try:
                self._ensure()
            except ArchiveDown:
                pass
        self._housekeep()

    def _housekeep(self) -> None:
        if self._conn is not None and self.retention.due():
            try:
                self.retention.step(self._conn)
            except Exception as e:
                self._failed(e)
                self._note_error(e)
        self._report_drops()

    def _report_drops(self, force: bool = False, raise_event: bool = True) -> None:
        with self._counts_lock:
            now = (self.rows_dropped, self.events_dropped)
            error = self._drop_error
        if now == self._reported or (not force and time.monotonic() - self._last_report < self.cfg.drop_event_interval_s):
            return
        detail = {
            "rows": now[0] - self._reported[0], "events": now[1] - self._reported[1],
            "rows_total": now[0], "events_total": now[1], "rows_written": self.rows_written,
            "error": error,
        }  # fmt: skip
        self._reported = now
        self._last_report = time.monotonic()
        self.drop_reports += 1
        log.warning("archive: %d rows and %d events dropped (%d / %d in all): %s", detail["rows"], detail["events"],
                    now[0], now[1], detail["error"])  # fmt: skip
        if self.on_event is not None and raise_event:
            try:
                self.on_event("archive_drop", detail)
            except Exception:
                log.exception("archive: raising archive_drop failed")

    def stop(self, timeout: float = 5.0) -> None:
        super().stop(timeout)
        self._report_drops(force=True, raise_event=False)  # the last drops reach the log (the publisher is gone by now)


def _own_report(event: Any) -> bool:
    """An archive_drop event the archive could not write itself: counted in SinkStats.dropped, but reporting it
    again would raise an event per dropped event, for as long as the database is down."""
    return getattr(event, "kind", None) == "archive_drop"


def _one_line(e: BaseException) -> str:
    orig = getattr(e, "orig", None) or e
    return f"{type(orig).__name__}: {str(orig).strip().splitlines()[0][:240] if str(orig).strip() else ''}"
