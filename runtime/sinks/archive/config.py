"""`archive:` in the daemon's config. Imports nothing but pydantic, so the config loads without the archive extra
(a config that enables the archive without it is refused at start with one line naming the extra)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from runtime.strict import StrictModel


class RetentionConfig(StrictModel):
    max_age_days: float | None = Field(
        None, gt=0, description="rows (and their image files) older than this are deleted, oldest first (None: kept by age)"
    )
    min_free_percent: float | None = Field(
        None, gt=0, lt=100,
        description="while the images' (SQLite: and the database's) file system has less free space than this, the oldest "
        "rows and their files are deleted, in batches (None: no free-space rule)",
    )  # fmt: skip
    check_interval_s: float = Field(
        10.0, gt=0, description="seconds between two checks (on the writer thread, between rows: never on the line)"
    )
    batch: int = Field(500, ge=1, le=100_000, description="rows (with their files) deleted per step")


class ArchiveConfig(StrictModel):
    url: str = Field(
        "sqlite:///archive/results.db",
        description="sqlite:///PATH (relative to the config file's folder; WAL mode, one connection) or "
        "postgresql://USER:PASS@HOST:PORT/DB (psycopg 3); the same schema and code for both",
    )
    images: Literal["none", "rejects", "all"] = Field(
        "rejects", description="which frames keep their camera frame (JPEG) and mask (PNG) as files: rejects = verdict anomalous"
    )
    images_dir: Path | None = Field(
        None, description="folder of the image files (None: SQLite: 'images' beside the database; PostgreSQL: ./archive-images)"
    )
    jpeg_quality: int = Field(90, ge=1, le=100, description="camera frame JPEG quality (OpenCV's 1..100)")
    fsync: bool = Field(
        False, description="fsync every image file before its rename (survives a power cut; costs a disk flush per image)"
    )
    max_queue: int = Field(
        2000, ge=1, description="rows and events waiting for the writer; beyond this they are dropped (counted), never the line"
    )
    busy_timeout_ms: int = Field(
        1000, ge=0, le=60_000,
        description="SQLite: how long one write waits for a lock another process holds before its row is dropped "
        "(PostgreSQL: lock_timeout)",
    )  # fmt: skip
    reconnect_backoff_s: float = Field(0.5, gt=0, description="first wait before reconnecting a lost database")
    reconnect_backoff_max_s: float = Field(10.0, gt=0, description="the wait doubles after each failed reconnect, up to this")
    drop_event_interval_s: float = Field(
        5.0, gt=0, description="at most one `archive_drop` event per this many seconds (each carries the counts since the last)"
    )
    writer_nice: int = Field(
        10, ge=0, le=19,
        description="the writer thread's nice increment (Linux): it yields the CPU to the inspection loop on a busy host; 0: same priority",
    )  # fmt: skip
    retention: RetentionConfig = Field(default_factory=RetentionConfig, description="what is deleted, and when")

    @field_validator("url")
    @classmethod
    def _scheme(cls, v: str) -> str:
        if not v.startswith(("sqlite:///", "postgresql://", "postgresql+psycopg://", "postgres://")):
            raise ValueError("expected sqlite:///PATH or postgresql://USER@HOST:PORT/DB")
        if v.startswith("sqlite:///") and len(v) == len("sqlite:///"):
            raise ValueError("sqlite:/// needs a file path (an in-memory database would keep nothing)")
        return v

    @model_validator(mode="after")
    def _check(self):
        if self.reconnect_backoff_max_s < self.reconnect_backoff_s:
            raise ValueError("reconnect_backoff_max_s is smaller than reconnect_backoff_s")
        return self

    @property
    def is_sqlite(self) -> bool:
        return self.url.startswith("sqlite:")

    @property
    def sqlite_path(self) -> Path | None:
        return Path(self.url[len("sqlite:///") :]) if self.is_sqlite else None

    @property
    def sqlalchemy_url(self) -> str:
        """postgresql:// means psycopg 3 here (SQLAlchemy's default driver for that scheme is psycopg2)."""
        for plain in ("postgresql://", "postgres://"):
            if self.url.startswith(plain):
                return "postgresql+psycopg://" + self.url[len(plain) :]
        return self.url

    @property
    def image_root(self) -> Path:
        if self.images_dir is not None:
            return self.images_dir
        if self.is_sqlite:
            return self.sqlite_path.parent / "images"
        return Path("archive-images")

    def resolved(self, base: Path) -> ArchiveConfig:
        """Relative paths (the SQLite file, images_dir) made absolute against `base` (the config file's folder)."""
        upd: dict = {}
        p = self.sqlite_path
        if p is not None and not p.is_absolute():
            upd["url"] = "sqlite:///" + str((base / p).resolve())
        if self.images_dir is not None and not self.images_dir.is_absolute():
            upd["images_dir"] = (base / self.images_dir).resolve()
        return self.model_copy(update=upd) if upd else self
