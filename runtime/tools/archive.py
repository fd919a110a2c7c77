"""`agpt archive query` and `agpt archive export`: the audit's two commands on the traceability archive.

agpt archive query --url sqlite:///archive/results.db --lot 4711 --json
agpt archive query --url postgresql://agpt@plant-db/agpt --since 7d --verdict anomalous --csv
agpt archive export --url sqlite:///archive/results.db --lot 4711 --out lot4711.zip
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from types import SimpleNamespace

# at the top: without the archive extra, `agpt` names the missing module and the extra that installs it
from runtime.sinks.archive import query as aq


def _filters(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", required=True, help="the archive: sqlite:///PATH or postgresql://USER@HOST:PORT/DB")
    p.add_argument(
        "--since", help="from this time on: ISO 8601 (local time unless a zone is given), unix seconds, or 24h / 7d ago"
    )
    p.add_argument("--until", help="before this time (same forms)")
    p.add_argument("--product", help="only this product")
    p.add_argument("--verdict", help="anomalous (reject), normal (good) or unknown")
    p.add_argument("--lot", help="only this lot (set_part's lot)")
    p.add_argument("--part", help="only this part id")
    p.add_argument("--camera", help="only this camera")
    p.add_argument("--limit", type=int, default=None, help="at most this many rows (oldest first)")


def _select(args):
    return aq.select(since=aq.parse_time(args.since), until=aq.parse_time(args.until), product=args.product,
                     verdict=aq.parse_verdict(args.verdict), lot=args.lot, camera=args.camera, part_id=args.part,
                     limit=args.limit)  # fmt: skip


def _query_arguments(p: argparse.ArgumentParser) -> None:
    _filters(p)
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--csv", action="store_true", help="CSV with a header line")
    fmt.add_argument("--json", action="store_true", help="a JSON list of rows")


def _query_run(args) -> int:
    q = _select(args)  # bad filters fail before the database is opened
    engine, conn, _ = aq.connect(args.url)
    try:
        rs = aq.rows(conn, q)
    finally:
        conn.close()
        engine.dispose()
    if args.json:
        sys.stdout.write(aq.to_json(rs) + "\n")
    elif args.csv:
        sys.stdout.write(aq.to_csv(rs))
    else:
        for r in rs:
            v = {True: "ANOMALOUS", False: "normal", None: "unknown"}[r["verdict"]]
            part = f" part {r['part_id']}" if r["part_id"] else ""
            lot = f" lot {r['lot']}" if r["lot"] else ""
            print(f"{aq.time_utc(r['time'])} {r['camera']} #{r['frame_id']} {r['product']} {v} score {r['score']:.3f}"
                  f"{part}{lot}{' ' + r['image_path'] if r['image_path'] else ''}")  # fmt: skip
        print(f"{len(rs)} rows", file=sys.stderr)
    return 0


def _export_arguments(p: argparse.ArgumentParser) -> None:
    _filters(p)
    p.add_argument("--out", required=True, type=Path, help="a new (or empty) folder, or a file ending in .zip")
    p.add_argument(
        "--images", type=Path, default=None,
        help="the archive's image folder (default: SQLite: 'images' beside the database; else the config's images_dir)",
    )  # fmt: skip


def _export_run(args) -> int:
    q = _select(args)
    engine, conn, cfg = aq.connect(args.url)
    try:
        rs = aq.rows(conn, q)
    finally:
        conn.close()
        engine.dispose()
    done = aq.export(rs, args.images or cfg.image_root, args.out)
    print(f"exported {done['rows']} rows and {done['files']} files to {done['out']}"
          + (f" ({done['missing_files']} files already deleted by retention or never written)" if done["missing_files"] else ""))  # fmt: skip
    return 0


query = SimpleNamespace(add_arguments=_query_arguments, run=_query_run)
export = SimpleNamespace(add_arguments=_export_arguments, run=_export_run)
