"""The control commands: what each request does to the station, with the replies the control channel sends.

`handle` runs on the control thread. Fast requests (status, list, pause, resume) are answered there; the
slow ones return a Future: pack loads and shot decoding run on the loader thread, and whatever must touch
the inspector or the packs (a changeover, a bank build's encoder calls, `ask`) is queued onto the loop, so
it lands between two frames. Other front ends (the OPC UA methods, the operator's page) send the same
requests through `handle`, so they get the same validation and replies.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from runtime.errors import AgptError
from runtime.line import changeover, trigger
from runtime.line.feedback import FeedbackHandlers
from runtime.line.lanes import Lane
from runtime.line.messages import (
    AddProductRequest,
    AskRequest,
    FeedbackRequest,
    ListProductsRequest,
    PauseRequest,
    Reply,
    Request,
    ResumeRequest,
    RollbackRequest,
    SetPartRequest,
    StatusRequest,
    SwapBankRequest,
    TriggerRequest,
)
from runtime.pipeline.products import build_pack, read_image

log = logging.getLogger("agpt.daemon")

# answered on the control thread itself: they only read state or flip a flag
FAST_COMMANDS = (StatusRequest, ListProductsRequest, PauseRequest, ResumeRequest, SetPartRequest)


class Commands:
    def __init__(self, station: Any):
        """station: the Daemon (lanes, store, loop, inspector, events)."""
        self.s = station
        self.loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="loader")
        self._stopping = False
        self.feedback = FeedbackHandlers(station, self)  # feedback and rollback (feedback.py)

    def stop(self) -> None:
        self._stopping = True
        self.loader.shutdown(wait=True, cancel_futures=True)

    def _targets(self, camera: str | None) -> list[Lane]:
        return list(self.s.lanes) if camera is None else [self.s.lane(camera)]

    def _frame_ids(self) -> dict:
        s = self.s
        return {"after_frame_id": s.lanes[0].last_frame_id, "cameras": {l.name: l.last_frame_id for l in s.lanes}}

    def _submit(self, fn: Callable[..., Reply], *args) -> Future:
        if self._stopping:  # a request that raced the shutdown: an answer, not a hang
            fut: Future = Future()
            fut.set_result(Reply(ok=False, error="daemon stopping"))
            return fut
        try:
            return self.loader.submit(self._guard, fn, *args)
        except RuntimeError:  # the loader shut down between the check and the submit
            fut = Future()
            fut.set_result(Reply(ok=False, error="daemon stopping"))
            return fut

    def handle(self, req: Request) -> Reply | Future:
        s = self.s
        if isinstance(req, StatusRequest):
            return Reply(ok=True, data=s.status().model_dump())
        if isinstance(req, ListProductsRequest):
            first = s.lanes[0].pack
            data = {"products": s.store.names(), "active": first.name, "bank_id": first.bank_id,
                    "cameras": {l.name: {"product": l.pack.name, "bank_id": l.pack.bank_id} for l in s.lanes}}  # fmt: skip
            return Reply(ok=True, data=data)
        if isinstance(req, PauseRequest):
            if not s.paused.is_set():
                s.paused.set()
                s.event("paused", self._frame_ids())
            return Reply(ok=True, data={"paused": True})
        if isinstance(req, ResumeRequest):
            if s.paused.is_set():
                s.paused.clear()
                s.event("resumed", self._frame_ids())
            return Reply(ok=True, data={"paused": False})
        camera = getattr(req, "camera", None)
        if camera is not None:
            try:
                s.lane(camera)
            except AgptError as e:
                return Reply(ok=False, error=str(e))
        if isinstance(req, SwapBankRequest):
            return self._submit(self.swap, req.product, req.camera)
        if isinstance(req, AddProductRequest):
            return self._submit(self.add_product, req)
        if isinstance(req, AskRequest):
            return s.loop.call(lambda: self._guard(self.ask, req))
        if isinstance(req, (FeedbackRequest, RollbackRequest)):
            return self.feedback.handle(req)
        if isinstance(req, SetPartRequest):
            return self.set_part(req)
        if isinstance(req, TriggerRequest):  # answered at once: it only arms the camera (runtime/line/trigger.py)
            return trigger.handle(s, req)
        return Reply(ok=False, error=f"unsupported command {req.cmd}")  # pragma: no cover

    @staticmethod
    def _guard(fn: Callable[..., Reply], *args) -> Reply:
        try:
            return fn(*args)
        except AgptError as e:
            return Reply(ok=False, error=str(e))
        except Exception as e:
            log.exception("control job failed")
            return Reply(ok=False, error=f"{type(e).__name__}: {str(e)[:300]}")

    def set_part(self, req: SetPartRequest) -> Reply:
        """On the control thread: frames captured from now on carry this part (and lot) in their results."""
        since = time.time()
        for lane in self._targets(req.camera):
            lane.parts.set(req.part_id, req.lot, since)
        return Reply(ok=True, data={"part_id": req.part_id, "lot": req.lot, "since": since,
                                    "cameras": [l.name for l in self._targets(req.camera)]})  # fmt: skip

    # ---- the slow ones -------------------------------------------------------------------------------------

    def swap(self, product: str, camera: str | None = None) -> Reply:
        """On the loader: load and validate the pack, then commit it between two frames. A pack that does not
        load is refused with the reason and a swap_failed event; the old pack keeps running."""
        s = self.s
        lanes = self._targets(camera)
        t0 = time.perf_counter()
        try:
            pack = s.store.load(product)
        except AgptError as e:
            old = lanes[0].pack
            s.event("swap_failed", {"product": product, "error": str(e), "kept": old.name, "kept_bank_id": old.bank_id,
                                    "camera": camera})  # fmt: skip
            raise
        return changeover.commit(s, pack, (time.perf_counter() - t0) * 1e3, lanes)

    def shot_path(self, p: str) -> Path:
        path = Path(p).expanduser()
        root = self.s.cfg.shots_root
        if root is not None:
            path = (root / path) if not path.is_absolute() else path
            rp, rr = path.resolve(), Path(root).resolve()
            if rp != rr and rr not in rp.parents:
                raise AgptError(f"{p}: outside shots_root {root}")
            return rp
        return path

    def add_product(self, req: AddProductRequest) -> Reply:
        s = self.s
        t0 = time.perf_counter()
        if s.store.pack_path(req.name).exists() and not req.replace:
            raise AgptError(f"product {req.name!r} exists (send replace: true to overwrite it)")
        images, hashes = [], []
        for p in req.shots:  # read and decode off the loop; only the encoder runs between frames
            img, digest = read_image(self.shot_path(p))
            images.append(img)
            hashes.append(digest)
        insp = s.inspector
        pack = s.loop.call(lambda: build_pack(insp, req.name, req.description, images, shot_sha256s=hashes)).result()
        path = s.store.save(pack, replace=req.replace)
        build_ms = (time.perf_counter() - t0) * 1e3
        data = {
            "product": pack.name,
            "bank_id": pack.bank_id,
            "n_shots": len(images),
            "path": str(path),
            "build_ms": round(build_ms, 3),
        }
        s.event("product_added", dict(data))
        if req.activate:
            data["changeover"] = changeover.commit(s, pack, 0.0, self._targets(req.camera)).data
        return Reply(ok=True, data=data)

    def ask(self, req: AskRequest) -> Reply:
        """On the loop thread (the LLM is the loop's): a follow-up question about a kept frame."""
        kept = [c for c in self.s.kept if req.camera is None or c.camera == req.camera]
        if not kept:
            raise AgptError("no frame judged yet" + (f" on camera {req.camera!r}" if req.camera else ""))
        if req.frame_id is None:
            ctx = kept[-1]
        else:
            ctx = next((c for c in reversed(kept) if c.frame_id == req.frame_id), None)
            if ctx is None:
                ids = [c.frame_id for c in kept]
                raise AgptError(f"frame {req.frame_id} is not kept (kept: {ids[0]}..{ids[-1]})")
        ask = getattr(self.s.inspector, "ask", None)
        if ask is None:
            raise AgptError("this bundle cannot answer questions (no LLM)")
        t0 = time.perf_counter()
        answer = ask(ctx, req.question)
        return Reply(
            ok=True,
            data={"frame_id": ctx.frame_id, "camera": ctx.camera, "product": ctx.pack.name, "question": req.question,
                  "answer": str(answer), "ms": round((time.perf_counter() - t0) * 1e3, 3)},
        )  # fmt: skip
