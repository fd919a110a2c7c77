"""Operator feedback on the line: the `feedback` and `rollback` control commands.

feedback {frame_id, camera, kind: false_reject | missed_defect, operator, add_to_bank, note}
  Every mark is logged (frame id, camera, product, the bank id the frame was judged with, verdict, p/score,
  who, when) as one JSON line in BUNDLE/products/<product>/feedback.jsonl (appended, fsynced) and sent as a
  `feedback` event, which every sink gets (the archive, where one is configured, stores it).
  add_to_bank (false rejects only): the product's pack is rebuilt from its kept shot images plus that frame
  (as PNG, lossless) -- decoding and the atomic write off the loop, only the encoder between two frames --
  saved with a new bank id (the old pack kept under history/), and swapped in between two frames on every
  camera judging that product, through the daemon's changeover (golden check included). The frame that was
  rejected is then judged normal: it is now one of the normal shots.
rollback {product}
  The product's previous pack back (ProductStore.rollback) and swapped in where the product runs; logged too.

Frames: the daemon keeps the last keep_frames frames per camera for `ask`; rejected frames (the ones an
operator marks as false rejects) are also kept here, the last keep_rejects per camera, so a mark made a few
seconds later still finds its frame on a fast line.

The station surface this module uses: cfg.keep_rejects, store, lanes (name, pack), inspector, kept
(KeptFrame), loop.call(fn), event(kind, detail); the loader of commands.py; changeover.commit.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from runtime.errors import AgptError
from runtime.line import changeover
from runtime.line.golden import GoldenRefused
from runtime.line.lanes import KeptFrame
from runtime.line.messages import FeedbackRequest, Reply, RollbackRequest
from runtime.pipeline.products import encode_png, rebuild_with_shots

log = logging.getLogger("agpt.feedback")

FEEDBACK_FILE = "feedback.jsonl"


class FeedbackLog:
    """feedback.jsonl beside each product's pack: one JSON object per line, appended and fsynced."""

    def __init__(self, store):
        self.store = store
        self._lock = threading.Lock()

    def path(self, product: str) -> Path:
        return self.store.pack_path(product).parent / FEEDBACK_FILE

    def append(self, record: dict) -> Path:
        path = self.path(record["product"])
        line = json.dumps(record, sort_keys=True, default=str) + "\n"
        with self._lock:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "a", encoding="utf-8") as f:
                f.write(line)
                f.flush()
                os.fsync(f.fileno())
        return path

    def read(self, product: str) -> list[dict]:
        path = self.path(product)
        if not path.is_file():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class FeedbackHandlers:
    def __init__(self, station: Any, commands: Any):
        """station: the Daemon; commands: its Commands (the loader that runs the slow jobs)."""
        self.s = station
        self.commands = commands
        self._rejects: dict[str, collections.deque[KeptFrame]] = {}
        self._log: FeedbackLog | None = None
        self._rebuild_lock = threading.Lock()  # one rebuild at a time (two marks must not both start from one pack)

    @property
    def keep_rejects(self) -> int:
        return int(getattr(self.s.cfg, "keep_rejects", 0))

    @property
    def log(self) -> FeedbackLog:
        if self._log is None:
            self._log = FeedbackLog(self.s.store)
        return self._log

    # ---- on the loop: after every published result -------------------------------------------------

    def keep(self, kept: KeptFrame) -> None:
        """Keep rejected frames (verdict anomalous) for a later false-reject mark. Loop thread only."""
        if self.keep_rejects <= 0 or not getattr(kept.judgement, "verdict", None):
            return
        q = self._rejects.get(kept.camera)
        if q is None:
            q = self._rejects[kept.camera] = collections.deque(maxlen=self.keep_rejects)
        q.append(kept)

    def _find(self, camera: str | None, frame_id: int) -> KeptFrame:
        """The kept frame (loop thread: the deques are only touched there)."""
        hits = {}
        for c in [*(x for q in self._rejects.values() for x in q), *self.s.kept]:
            if c.frame_id == frame_id and (camera is None or c.camera == camera):
                hits[c.camera] = c
        if not hits:
            where = f" of camera {camera!r}" if camera else ""
            raise AgptError(f"frame {frame_id}{where} is not kept (the last rejects and the last frames are; mark sooner)")
        if len(hits) > 1:
            raise AgptError(f"frame {frame_id} is kept for cameras {', '.join(sorted(hits))}: name the camera")
        return next(iter(hits.values()))

    # ---- control ------------------------------------------------------------------------------------

    def handle(self, req: FeedbackRequest | RollbackRequest) -> Reply | Future:
        """From Commands.handle (the camera, when named, is already checked)."""
        if isinstance(req, FeedbackRequest):
            if req.add_to_bank and req.kind != "false_reject":
                return Reply(ok=False, error="add_to_bank: only a false reject (a good part) can join the normal shots")
            return self.commands._submit(self._feedback_job, req)
        if isinstance(req, RollbackRequest):
            return self.commands._submit(self._rollback_job, req)
        return Reply(ok=False, error=f"unsupported command {req.cmd}")  # pragma: no cover

    def _lanes_of(self, product: str) -> list:
        return [lane for lane in self.s.lanes if lane.pack is not None and lane.pack.name == product]

    def _feedback_job(self, req: FeedbackRequest) -> Reply:
        kept = self.s.loop.call(lambda: self._find(req.camera, req.frame_id)).result()
        j, pack = kept.judgement, kept.pack
        p = getattr(j, "p_anomaly", None)
        record = {
            "time": time.time(),
            "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "kind": req.kind,
            "operator": req.operator,
            "note": req.note,
            "frame_id": kept.frame_id,
            "camera": kept.camera,
            "capture_time": kept.capture_time,
            "product": pack.name,
            "bank_id": pack.bank_id,
            "verdict": None if j.verdict is None else bool(j.verdict),
            "p_anomaly": None if p is None else float(p),
            "score": float(getattr(j, "score", 0.0)),
            "judge": str(getattr(j, "judge", "")),
            "add_to_bank": bool(req.add_to_bank),
        }
        if req.add_to_bank:
            try:
                record.update(self._add_to_bank(kept))
            except AgptError as e:
                record["rebuild_error"] = str(e)
                self._record(record)
                raise
        path = self._record(record)
        return Reply(ok=True, data={**record, "logged": str(path)})

    def _add_to_bank(self, kept: KeptFrame) -> dict:
        store, name = self.s.store, kept.pack.name
        t0 = time.perf_counter()
        with self._rebuild_lock:
            if not store.pack_path(name).is_file():
                raise AgptError(f"product {name!r} has no pack file (bundle.json products have no normal shots to add to)")
            base = store.load(name)  # the newest pack of the product: marks made one after another accumulate
            if not base.bank:
                raise AgptError(f"product {name!r} has no normal shots to add to")
            shots = base.shot_images()  # decoded off the loop
            png = encode_png(kept.image)
            insp = self.s.inspector

            def build():  # only the encoder (and a lite bundle's calibration) on the loop, between two frames
                return rebuild_with_shots(insp, base, [kept.image], [png], decoded=shots)

            new = self.s.loop.call(build).result()
            store.save(new, replace=True)  # atomic; the old pack is kept under history/
            build_ms = (time.perf_counter() - t0) * 1e3
            info = {"previous_bank_id": base.bank_id, "new_bank_id": new.bank_id, "n_shots": new.n_shots,
                    "build_ms": round(build_ms, 3)}  # fmt: skip
            self.s.event("bank_rebuilt", {"product": name, "frame_id": kept.frame_id, "camera": kept.camera, **info})
            lanes = self._lanes_of(name)
            if lanes:
                try:
                    info["changeover"] = changeover.commit(self.s, new, build_ms, lanes).data
                except GoldenRefused:
                    store.rollback(name)  # the line keeps the old pack: so does the disk
                    raise
            return info

    def _rollback_job(self, req: RollbackRequest) -> Reply:
        store = self.s.store
        with self._rebuild_lock:
            restored, replaced = store.rollback(req.product)
            data = {"product": req.product, "bank_id": restored.bank_id, "previous_bank_id": replaced.bank_id}
            lanes = self._lanes_of(req.product)
            if lanes:
                try:
                    data["changeover"] = changeover.commit(self.s, restored, 0.0, lanes).data
                except GoldenRefused:
                    store.rollback(req.product)  # undo: the running pack stays the one on disk
                    raise
        record = {"time": time.time(), "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "kind": "rollback",
                  "operator": req.operator, **data}  # fmt: skip
        record.pop("changeover", None)
        self.s.event("rollback", dict(record))
        path = self.log.append(record)
        return Reply(ok=True, data={**data, "logged": str(path)})

    def _record(self, record: dict) -> Path:
        path = self.log.append(record)
        self.s.event("feedback", dict(record))
        log.info("feedback %s on %s frame %d (%s, bank %s) by %s%s", record["kind"], record["camera"], record["frame_id"],
                 record["product"], record["bank_id"], record["operator"],
                 f": bank rebuilt as {record['new_bank_id']}" if record.get("new_bank_id") else "")  # fmt: skip
        return path
