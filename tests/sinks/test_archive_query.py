"""`agpt archive query` / `agpt archive export` through the CLI, on SQLite and on a real PostgreSQL server."""

from __future__ import annotations

import csv
import io
import json
import time
import zipfile

import pytest

sa = pytest.importorskip("sqlalchemy", reason="the archive extra (sqlalchemy) is not installed")

from _archive_helpers import make_result  # noqa: E402
from _postgres import postgres_server  # noqa: E402

from runtime.cli import main  # noqa: E402
from runtime.errors import AgptError  # noqa: E402
from runtime.sinks.archive import query as aq  # noqa: E402
from runtime.sinks.archive.config import ArchiveConfig  # noqa: E402
from runtime.sinks.archive.writer import ArchiveSink  # noqa: E402

T0 = 1_790_000_000.0  # 2026-09-21T...Z


def _fill(url, images_dir=None):
    """24 rows: 2 products, lots A (frames 1-12) and B, every 4th a reject, one per minute from T0."""
    kw = {"images_dir": images_dir} if images_dir is not None else {}
    s = ArchiveSink(ArchiveConfig(url=url, images="rejects", **kw))
    s.start()
    for i in range(1, 25):
        s.submit_result(make_result(i, verdict=(i % 4 == 0) if i != 5 else None, t=T0 + 60 * i,
                                    product="widget" if i % 2 else "gadget", lot="A" if i <= 12 else "B",
                                    part_id=f"P{i:03d}"))  # fmt: skip
    s.stop()
    assert s.rows_written == 24


def _json(capsys, *argv) -> list[dict]:
    assert main(["archive", "query", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.fixture(scope="module")
def pg():
    with postgres_server() as srv:
        yield srv


@pytest.fixture(params=["sqlite", "postgresql"])
def filled(request, tmp_path):
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/r.db"
        _fill(url)
        return url, tmp_path / "images"
    pg = request.getfixturevalue("pg")
    eng = sa.create_engine(pg.url.replace("postgresql://", "postgresql+psycopg://"), isolation_level="AUTOCOMMIT")
    with eng.connect() as c:
        c.exec_driver_sql("DROP DATABASE IF EXISTS q")
        c.exec_driver_sql("CREATE DATABASE q")
    eng.dispose()
    url = pg.url.rsplit("/", 1)[0] + "/q"
    _fill(url, tmp_path / "img")
    return url, tmp_path / "img"


def test_query_filters(filled, capsys):
    url, _ = filled
    lot_a = _json(capsys, "--url", url, "--lot", "A")
    assert [r["frame_id"] for r in lot_a] == list(range(1, 13))
    assert lot_a[3]["verdict"] is True and lot_a[3]["locations"] == ["top left"] and lot_a[3]["part_id"] == "P004"
    assert lot_a[0]["time_utc"].endswith("Z")
    rejects_b = _json(capsys, "--url", url, "--lot", "B", "--verdict", "anomalous")
    assert [r["frame_id"] for r in rejects_b] == [16, 20, 24]
    assert [r["frame_id"] for r in _json(capsys, "--url", url, "--verdict", "unknown")] == [5]
    widgets = _json(capsys, "--url", url, "--product", "widget", "--since", str(T0 + 60 * 10), "--until", str(T0 + 60 * 15))
    assert [r["frame_id"] for r in widgets] == [11, 13]
    assert [r["frame_id"] for r in _json(capsys, "--url", url, "--part", "P007")] == [7]
    assert len(_json(capsys, "--url", url, "--limit", "5")) == 5


def test_query_csv_and_text(filled, capsys):
    url, _ = filled
    assert main(["archive", "query", "--url", url, "--lot", "B", "--csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(rows) == 12 and rows[3]["frame_id"] == "16" and rows[3]["verdict"] == "true" and rows[0]["verdict"] == "false"
    assert rows[3]["image_path"].endswith("_cam0_000016.jpg")
    assert main(["archive", "query", "--url", url, "--lot", "A", "--verdict", "reject"]) == 0
    out = capsys.readouterr()
    assert out.out.count("ANOMALOUS") == 3 and "3 rows" in out.err


def test_export_folder_and_zip(filled, tmp_path, capsys):
    url, images = filled
    out = tmp_path / "audit"
    assert main(["archive", "export", "--url", url, "--lot", "A", "--out", str(out), "--images", str(images)]) == 0
    assert "exported 12 rows and 6 files" in capsys.readouterr().out
    rows = list(csv.DictReader((out / "rows.csv").open()))
    rejects = [r for r in rows if r["verdict"] == "true"]
    assert len(rejects) == 3
    for r in rejects:
        assert (out / r["image_path"]).read_bytes()[:2] == b"\xff\xd8"
        assert (out / r["mask_path"]).read_bytes().startswith(b"\x89PNG")
    # a file retention deleted meanwhile: the export says so and leaves the cell empty
    (images / rejects[0]["image_path"].removeprefix("images/")).unlink()
    z = tmp_path / "lotA.zip"
    assert main(["archive", "export", "--url", url, "--lot", "A", "--out", str(z), "--images", str(images)]) == 0
    assert "1 files already deleted" in capsys.readouterr().out
    with zipfile.ZipFile(z) as f:
        names = f.namelist()
        zrows = list(csv.DictReader(io.StringIO(f.read("rows.csv").decode())))
    assert len([n for n in names if n.startswith("images/")]) == 5
    assert sum(1 for r in zrows if r["verdict"] == "true" and not r["image_path"]) == 1
    # a non-empty folder is refused, not mixed
    assert main(["archive", "export", "--url", url, "--out", str(out), "--images", str(images)]) == 2


def test_bad_input_is_one_line(tmp_path, capsys):
    assert main(["archive", "query", "--url", f"sqlite:///{tmp_path}/none.db"]) == 2
    assert "no such archive database" in capsys.readouterr().err
    assert main(["archive", "query", "--url", f"sqlite:///{tmp_path}/none.db", "--since", "yesterday"]) == 2
    assert "expected ISO 8601" in capsys.readouterr().err
    assert main(["archive", "query", "--url", "mysql://x/y"]) == 2
    with pytest.raises(AgptError, match="anomalous, normal or unknown"):
        aq.parse_verdict("maybe")


def test_parse_time_forms():
    now = 1_000_000.0
    assert aq.parse_time("24h", now) == now - 86400
    assert aq.parse_time("30m", now) == now - 1800
    assert aq.parse_time("1790000000") == 1790000000.0
    assert aq.parse_time("2026-12-02T10:00:00Z") == aq.parse_time("2026-12-02T11:00:00+01:00")
    assert abs(aq.parse_time("2026-12-02") - time.mktime((2026, 12, 2, 0, 0, 0, 0, 0, -1))) < 1e-6  # local time


def test_without_the_extra_the_cli_names_it(monkeypatch, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "sqlalchemy", None)
    for mod in [m for m in sys.modules if m.startswith(("runtime.sinks.archive", "runtime.tools.archive"))]:
        monkeypatch.delitem(sys.modules, mod)
    assert main(["archive", "query", "--url", "sqlite:///x.db"]) == 2
    assert "install the archive extra: pip install 'anomalygpt-edge[archive]'" in capsys.readouterr().err
