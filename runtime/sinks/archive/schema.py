"""The archive's tables (SQLAlchemy Core, one definition for SQLite and PostgreSQL) and their versioned migrations.

`schema_version` holds one row per migration applied. `migrate()` applies the missing ones in one transaction
each (DDL is transactional in both databases, so a failed upgrade leaves the previous version), and refuses a
database whose version is newer than this code knows: an older agpt must not write rows a newer schema would
misread. To change the schema: append a migration, never edit an applied one, and update the tables below to
the result (tests/sinks/test_archive_schema.py checks that a migrated database matches them).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import sqlalchemy as sa

from runtime.errors import AgptError


def _id() -> sa.Column:
    # BIGINT on PostgreSQL; SQLite's rowid alias must be spelled INTEGER to autoincrement
    return sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True)


def _result_columns(version: int) -> list[sa.Column]:
    """The results table's columns as of a schema version (fresh objects: a Column belongs to one Table)."""
    cols = [
        _id(),
        sa.Column("time", sa.Float, nullable=False),  # capture time, unix seconds (what --since/--until mean)
        sa.Column("publish_time", sa.Float, nullable=False),
        sa.Column("camera", sa.String(64), nullable=False),
        sa.Column("line", sa.String(128), nullable=False),
        sa.Column("station", sa.String(128)),
        sa.Column("product", sa.String(64), nullable=False),
        sa.Column("bank_id", sa.String(128)),
        sa.Column("frame_id", sa.BigInteger, nullable=False),
        sa.Column("verdict", sa.Boolean),  # NULL: the answer had neither Yes nor No
        sa.Column("p_anomaly", sa.Float),
        sa.Column("score", sa.Float, nullable=False),
        sa.Column("locations", sa.String(256), nullable=False),  # '|'-joined 3x3 cell names ('' = none)
        sa.Column("judge", sa.String(32), nullable=False),
        sa.Column("latency_ms", sa.Float),  # capture -> publish (the header's latency_ms.total)
        sa.Column("image_path", sa.String(512)),  # relative to the archive's image folder
        sa.Column("mask_path", sa.String(512)),
    ]
    if version >= 2:
        cols += [sa.Column("part_id", sa.String(128)), sa.Column("lot", sa.String(128))]
    return cols


def _event_columns() -> list[sa.Column]:
    return [
        _id(),
        sa.Column("time", sa.Float, nullable=False),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("camera", sa.String(64)),
        sa.Column("detail", sa.Text, nullable=False),  # the event's detail as JSON
    ]


metadata = sa.MetaData()
# The current shape (after every migration): what the writer inserts and the queries select.
results = sa.Table("results", metadata, *_result_columns(2))
events = sa.Table("events", metadata, *_event_columns())
schema_version = sa.Table(
    "schema_version",
    metadata,
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("applied_at", sa.Float, nullable=False),
    sa.Column("description", sa.String(200), nullable=False),
)


def _v1(conn: sa.Connection) -> None:
    """Results and events as first released (no part identity)."""
    m = sa.MetaData()
    sa.Table("results", m, *_result_columns(1))
    sa.Table("events", m, *_event_columns())
    m.create_all(conn)
    sa.Index("ix_results_time", m.tables["results"].c.time).create(conn)
    sa.Index("ix_results_product_time", m.tables["results"].c.product, m.tables["results"].c.time).create(conn)
    sa.Index("ix_events_time", m.tables["events"].c.time).create(conn)


def _v2(conn: sa.Connection) -> None:
    """Part identity from the line controller (set_part): rows are found by lot and part."""
    for col in ("part_id", "lot"):
        conn.execute(sa.text(f"ALTER TABLE results ADD COLUMN {col} VARCHAR(128)"))
    sa.Index("ix_results_lot_time", results.c.lot, results.c.time).create(conn)
    sa.Index("ix_results_part_id", results.c.part_id).create(conn)


MIGRATIONS: list[tuple[int, str, Callable[[sa.Connection], None]]] = [
    (1, "results and events", _v1),
    (2, "part_id and lot on results", _v2),
]
VERSION = MIGRATIONS[-1][0]


class SchemaError(AgptError):
    """The database's schema is one this code must not write to."""


def current_version(conn: sa.Connection) -> int:
    """0 for an empty database; raises SchemaError for tables without a schema_version (not ours)."""
    names = set(sa.inspect(conn).get_table_names())
    if "schema_version" not in names:
        if names & {"results", "events"}:
            raise SchemaError("the database has results/events tables but no schema_version: not an agpt archive")
        return 0
    v = conn.execute(sa.select(sa.func.max(schema_version.c.version))).scalar()
    return int(v or 0)


def migrate(conn: sa.Connection, target: int = VERSION, where: str = "archive") -> tuple[int, int]:
    """Bring the database to `target`: (version found, version now). Each migration commits on its own."""
    if conn.in_transaction():
        conn.commit()
    with conn.begin():
        found = current_version(conn)
    if found > VERSION:
        raise SchemaError(
            f"{where}: the database's schema is version {found}, newer than this agpt knows ({VERSION}): "
            "upgrade agpt, or point archive.url at another database"
        )
    for version, description, step in MIGRATIONS:
        if found < version <= target:
            with conn.begin():
                if version == 1:
                    schema_version.create(conn, checkfirst=True)
                step(conn)
                conn.execute(sa.insert(schema_version).values(version=version, applied_at=time.time(), description=description))
    with conn.begin():
        return found, current_version(conn)
