"""Reading the archive back: rows by time, product, verdict, lot (and camera, part), as dicts, CSV or JSON,
and the audit export (CSV plus the selection's image files, into a folder or a zip).

Every filter is a column of an index (time; product, time; lot, time; part_id), so a query on 100,000 rows
reads only the rows it returns (benchmarks/bench_archive.py times them).
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import re
import time
import zipfile
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from runtime.errors import AgptError
from runtime.sinks.archive.config import ArchiveConfig
from runtime.sinks.archive.schema import migrate, results
from runtime.sinks.archive.writer import make_engine

COLUMNS = [c.name for c in results.columns]
CSV_COLUMNS = ["time_utc", *COLUMNS]
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
VERDICTS = {"anomalous": True, "reject": True, "true": True, "yes": True, "normal": False, "good": False,
            "false": False, "no": False, "unknown": None, "none": None}  # fmt: skip


def parse_time(text: str | None, now: float | None = None) -> float | None:
    """Unix seconds from: unix seconds ('1764684000'), ISO 8601 ('2026-12-02', '2026-12-02T14:30',
    '2026-12-02T14:30:00+01:00'; without a zone: this machine's local time, as an operator reads the clock),
    or an age before now ('30m', '24h', '7d')."""
    if text is None:
        return None
    s = text.strip()
    m = _DURATION.match(s.lower())
    if m:
        return (time.time() if now is None else now) - float(m.group(1)) * _UNITS[m.group(2)]
    try:
        return float(s)
    except ValueError:
        pass
    try:
        t = dt.datetime.fromisoformat(s.replace("Z", "+00:00"))
    except ValueError:
        raise AgptError(f"{text!r}: expected ISO 8601 (2026-12-02T14:30), unix seconds or an age (30m, 24h, 7d)") from None
    return t.timestamp()  # naive: local time


def parse_verdict(text: str | None) -> tuple[bool, bool | None]:
    """(filter?, value): 'anomalous'/'reject', 'normal'/'good', 'unknown' (no Yes/No in the answer)."""
    if text is None:
        return False, None
    key = text.strip().lower()
    if key not in VERDICTS:
        raise AgptError(f"verdict {text!r}: expected anomalous, normal or unknown")
    return True, VERDICTS[key]


def connect(url: str) -> tuple[sa.Engine, sa.Connection, ArchiveConfig]:
    try:
        cfg = ArchiveConfig(url=url)
    except Exception as e:
        raise AgptError(f"--url {url}: {str(e).splitlines()[-1]}") from None
    p = cfg.sqlite_path
    if p is not None and not p.is_file():
        raise AgptError(f"{p}: no such archive database")
    engine = make_engine(cfg)
    try:
        conn = engine.connect()
        migrate(conn, where=url)  # additive upgrades of an older archive; a newer one is refused
    except sa.exc.DBAPIError as e:
        engine.dispose()
        raise AgptError(f"cannot open {url}: {str(getattr(e, 'orig', e)).strip().splitlines()[0]}") from None
    return engine, conn, cfg


def select(since: float | None = None, until: float | None = None, product: str | None = None,
           verdict: tuple[bool, bool | None] = (False, None), lot: str | None = None, camera: str | None = None,
           part_id: str | None = None, limit: int | None = None) -> sa.Select:  # fmt: skip
    q = sa.select(results)
    if since is not None:
        q = q.where(results.c.time >= since)
    if until is not None:
        q = q.where(results.c.time < until)
    if product is not None:
        q = q.where(results.c.product == product)
    if verdict[0]:
        q = q.where(results.c.verdict.is_(None) if verdict[1] is None else results.c.verdict == verdict[1])
    if lot is not None:
        q = q.where(results.c.lot == lot)
    if camera is not None:
        q = q.where(results.c.camera == camera)
    if part_id is not None:
        q = q.where(results.c.part_id == part_id)
    q = q.order_by(results.c.time, results.c.id)
    return q.limit(limit) if limit is not None else q


def rows(conn: sa.Connection, q: sa.Select) -> list[dict[str, Any]]:
    out = []
    for r in conn.execute(q).mappings():
        d = dict(r)
        d["verdict"] = None if d["verdict"] is None else bool(d["verdict"])
        d["locations"] = [x for x in (d["locations"] or "").split("|") if x]
        out.append(d)
    return out


def time_utc(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def to_json(rs: list[dict]) -> str:
    return json.dumps([{"time_utc": time_utc(r["time"]), **r} for r in rs], indent=1)


def to_csv(rs: list[dict], path_column=None) -> str:
    """One line per row; locations '|'-joined; verdict true/false/empty. path_column(row, name) can rewrite paths."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(CSV_COLUMNS)
    for r in rs:
        vals = [time_utc(r["time"])]
        for c in COLUMNS:
            v = r[c]
            if c == "locations":
                v = "|".join(v)
            elif c == "verdict":
                v = "" if v is None else ("true" if v else "false")
            elif c in ("image_path", "mask_path") and path_column is not None:
                v = path_column(r, c)
            vals.append("" if v is None else v)
        w.writerow(vals)
    return buf.getvalue()


def export(rs: list[dict], image_root: Path, out: Path) -> dict:
    """rows.csv plus the rows' files (images/<the archive's relative paths>) into a folder, or a zip if `out`
    ends in .zip. A file retention already deleted (or never written) is left empty in the CSV and counted."""
    out = Path(out)
    image_root = Path(image_root)
    missing = copied = 0
    as_zip = out.suffix.lower() == ".zip"
    if not as_zip:
        out.mkdir(parents=True, exist_ok=True)
        if any(out.iterdir()):
            raise AgptError(f"{out}: the export folder is not empty")
    elif out.exists():
        raise AgptError(f"{out} exists")
    files: list[tuple[Path, str]] = []

    def path_column(r: dict, c: str) -> str:
        nonlocal missing
        rel = r[c]
        if not rel:
            return ""
        src = image_root / rel
        if not src.is_file():
            missing += 1
            return ""
        files.append((src, f"images/{rel}"))
        return f"images/{rel}"

    text = to_csv(rs, path_column)
    if as_zip:
        tmp = out.with_name(f".{out.name}.tmp")
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as z:  # JPEG and PNG are compressed already
            z.writestr("rows.csv", text)
            for src, arc in files:
                z.write(src, arc)
                copied += 1
        tmp.replace(out)
    else:
        import shutil

        (out / "rows.csv").write_text(text)
        for src, arc in files:
            dst = out / arc
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
            copied += 1
    return {"rows": len(rs), "files": copied, "missing_files": missing, "out": str(out)}
