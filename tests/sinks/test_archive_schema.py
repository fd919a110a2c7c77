"""Versioned migrations: a new database gets every version, an older one is upgraded in place (its rows kept),
a newer one is refused with a clear error; the same on SQLite and on a real PostgreSQL server."""

from __future__ import annotations

import pytest

sa = pytest.importorskip("sqlalchemy", reason="the archive extra (sqlalchemy) is not installed")

from _postgres import postgres_server  # noqa: E402

from runtime.sinks.archive import schema  # noqa: E402
from runtime.sinks.archive.config import ArchiveConfig  # noqa: E402
from runtime.sinks.archive.schema import SchemaError, migrate  # noqa: E402
from runtime.sinks.archive.writer import ArchiveSink, make_engine  # noqa: E402


@pytest.fixture(scope="module")
def pg():
    with postgres_server() as srv:
        yield srv


def _fresh_pg_url(pg, name: str) -> str:
    eng = sa.create_engine(pg.url.replace("postgresql://", "postgresql+psycopg://"), isolation_level="AUTOCOMMIT")
    with eng.connect() as c:
        c.exec_driver_sql(f"DROP DATABASE IF EXISTS {name}")
        c.exec_driver_sql(f"CREATE DATABASE {name}")
    eng.dispose()
    return pg.url.rsplit("/", 1)[0] + "/" + name


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/a.db"
    return _fresh_pg_url(request.getfixturevalue("pg"), f"t_{abs(hash(request.node.name)) % 10**8}")


def _engine(url):
    return make_engine(ArchiveConfig(url=url))


def test_new_database_gets_every_version_and_matches_the_tables(url):
    eng = _engine(url)
    with eng.connect() as c:
        assert migrate(c) == (0, schema.VERSION)
        assert migrate(c) == (schema.VERSION, schema.VERSION)  # idempotent
        insp = sa.inspect(c)
        for table in (schema.results, schema.events, schema.schema_version):
            assert [col["name"] for col in insp.get_columns(table.name)] == [col.name for col in table.columns]
        idx = {i["name"] for i in insp.get_indexes("results")}
        assert {"ix_results_time", "ix_results_product_time", "ix_results_lot_time", "ix_results_part_id"} <= idx
        versions = [r.version for r in c.execute(sa.select(schema.schema_version))]
        assert versions == [v for v, _, _ in schema.MIGRATIONS]
    eng.dispose()


def test_older_database_is_upgraded_with_its_rows(url):
    eng = _engine(url)
    with eng.connect() as c:
        assert migrate(c, target=1) == (0, 1)
        with c.begin():
            c.exec_driver_sql(
                "INSERT INTO results (time, publish_time, camera, line, product, frame_id, verdict, score, locations, judge) "
                "VALUES (1.0, 1.1, 'cam0', 'line1', 'widget', 7, true, 0.9, 'top left', 'llm-first_token')"
            )
    eng.dispose()
    sink = ArchiveSink(ArchiveConfig(url=url, images="none"))
    sink.start()  # the daemon's start upgrades it
    sink.stop()
    eng = _engine(url)
    with eng.connect() as c:
        assert schema.current_version(c) == schema.VERSION
        row = c.execute(sa.select(schema.results)).one()
        assert (row.frame_id, row.verdict, row.lot, row.part_id) == (7, True, None, None)
    eng.dispose()


def test_newer_database_is_refused_with_a_clear_error(url):
    eng = _engine(url)
    with eng.connect() as c:
        migrate(c)
        with c.begin():
            c.execute(sa.insert(schema.schema_version).values(version=schema.VERSION + 5, applied_at=0.0, description="future"))
    eng.dispose()
    sink = ArchiveSink(ArchiveConfig(url=url))
    with pytest.raises(SchemaError, match=rf"version {schema.VERSION + 5}, newer than this agpt knows \({schema.VERSION}\)"):
        sink.start()


def test_foreign_tables_are_not_taken_over(tmp_path):
    eng = _engine(f"sqlite:///{tmp_path}/x.db")
    with eng.connect() as c:
        with c.begin():
            c.exec_driver_sql("CREATE TABLE results (x INTEGER)")
        with pytest.raises(SchemaError, match="not an agpt archive"):
            migrate(c)
    eng.dispose()


def test_bad_urls_are_refused_by_the_config():
    from pydantic import ValidationError

    for bad in ("mysql://x/y", "sqlite:///", "results.db"):
        with pytest.raises(ValidationError):
            ArchiveConfig(url=bad)
    assert ArchiveConfig(url="postgresql://u@h:5432/d").sqlalchemy_url == "postgresql+psycopg://u@h:5432/d"
