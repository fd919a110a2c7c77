"""The rejects from before the view started, read from the daemon's traceability archive when it keeps one.

The page shows the last rejects; a view started (or restarted) during a shift would show none until the
next reject. When the daemon's config has `archive:` (runtime/sinks/archive) with reject images, the view
reads the station's last N rejected rows and their files once at start, so the strip is full at once; the
live rejects then push them out. Without an archive, without the `archive` extra (SQLAlchemy) or when the
database cannot be read, the view starts with an empty strip and says why in its log: never a failure.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from runtime.line.messages import FrameTransformInfo
from runtime.line.preview import encode_preview
from runtime.sinks.archive.config import ArchiveConfig

log = logging.getLogger("agpt.view")


def _transform(h: int, w: int, resize: str | None) -> dict | None:
    """Where the 224x224 map sits in an archived frame (the archive keeps the frame and the map, not this)."""
    if resize is None:
        return None
    from runtime.pipeline.preprocess import plan

    t = plan(h, w, 224, resize)
    d = t if isinstance(t, dict) else (t.as_dict() if hasattr(t, "as_dict") else vars(t))
    try:
        return FrameTransformInfo.model_validate(d).model_dump()
    except Exception:
        return None


def bundle_resize(bundle: Path | None) -> str | None:
    """The bundle's preprocessing (shorter_side_crop | squash), for the archived masks' geometry."""
    if bundle is None:
        return None
    try:
        from runtime.pipeline.bundle import load_bundle

        return load_bundle(bundle, verify=False).manifest.preprocess.resize
    except Exception as e:
        log.info("archived rejects: bundle %s not read (%s); their maps cover the whole frame", bundle, e)
        return None


def archived_rejects(archive: ArchiveConfig, prefix: str, n: int, max_side: int = 640, resize: str | None = None) -> list:
    """[(header dict, jpeg | None, mask png | None)], oldest first: the station's last n rejects in the archive."""
    try:
        import cv2
        import sqlalchemy as sa

        from runtime.sinks.archive.query import connect
        from runtime.sinks.archive.schema import results
    except ModuleNotFoundError as e:
        log.warning("archived rejects not shown: the archive extra is missing (%s)", e.name)
        return []
    line, _, station = prefix.partition(".")
    try:
        engine, conn, _ = connect(archive.url)
    except Exception as e:
        log.warning("archived rejects not shown: %s", e)
        return []
    try:
        q = sa.select(results).where(results.c.verdict.is_(True), results.c.line == line)
        q = q.where(results.c.station == station) if station else q.where(results.c.station.is_(None))
        rs = [dict(r) for r in conn.execute(q.order_by(results.c.time.desc(), results.c.id.desc()).limit(n)).mappings()]
    except Exception as e:
        log.warning("archived rejects not shown: %s", e)
        return []
    finally:
        conn.close()
        engine.dispose()
    root = archive.image_root
    out = []
    for r in reversed(rs):
        jpeg = mask = None
        ft = None
        try:
            if r.get("image_path"):
                img = cv2.imdecode(np.fromfile(str(root / r["image_path"]), np.uint8), cv2.IMREAD_COLOR)
                if img is not None:
                    ft = _transform(img.shape[0], img.shape[1], resize)
                    jpeg = encode_preview(img, max_side, 80)[0]
            if r.get("mask_path"):
                mask = (root / r["mask_path"]).read_bytes()
        except OSError as e:  # retention may have removed the files since the row was read
            log.info("archived reject %s: %s", r.get("id"), e)
        header = {
            "frame_id": int(r["frame_id"]),
            "camera": r["camera"],
            "product": r["product"],
            "bank_id": r["bank_id"],
            "capture_time": r["time"],
            "publish_time": r["publish_time"],
            "verdict": True,
            "p_anomaly": r["p_anomaly"],
            "score": r["score"],
            "judge": r["judge"],
            "answer": None,
            "locations": [x for x in (r["locations"] or "").split("|") if x],
            "mask": {"width": 224, "height": 224, "encoding": "png", "frame_transform": ft} if mask else None,
            "archived": True,  # the page labels it: from before this view started
            "part_id": r.get("part_id"),
            "lot": r.get("lot"),
        }
        out.append((header, jpeg, mask))
    return out
