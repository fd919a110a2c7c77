"""The operator's page: a Starlette app that serves the static page, pushes the line over a WebSocket and
turns the page's buttons into control requests.

  GET  /                      the page (runtime/tools/view/static/: plain HTML/JS/CSS, nothing from the internet)
  GET  /api/state             status, each camera's last result, the rejects (no images)
  GET  /api/products          the daemon's list_products
  GET  /api/frames/{camera}.jpg   the camera's last preview;  GET /api/rejects/{id}.jpg, /api/rejects/{id}/mask.png
  WS   /ws                    a snapshot, then every result / frame / reject / status / event (state.py)
  POST /api/swap {product, camera?}   /api/pause   /api/resume   /api/ask {question, camera?, frame_id?}
  POST /api/products          multipart: name, description, activate, camera, files (shots saved into `uploads`)
  POST /api/feedback {frame_id, camera?, kind: false_reject|missed_defect, operator, add_to_bank?, note?}
  POST /api/rollback {product, operator?}     (the daemon's `feedback` / `rollback`, docs/quality-loop.md)

Reading is open; every POST needs the token (header `Authorization: Bearer TOKEN` or `X-Agpt-Token`): 401
without it or with a wrong one, 403 when the view has no token configured (read-only).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import re
import secrets
import time
from pathlib import Path

import zmq
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.websockets import WebSocket, WebSocketDisconnect

from runtime.line.control import request as control_request
from runtime.names import CAMERA_RE, PRODUCT_RE
from runtime.tools.view.link import Client, DaemonLink
from runtime.tools.view.settings import ViewSettings
from runtime.tools.view.state import ViewState

STATIC = Path(__file__).resolve().parent / "static"
MAX_SHOT_BYTES = 32 << 20
MAX_SHOTS = 64
IMAGE_MAGIC = {b"\x89PNG\r\n\x1a\n": ".png", b"\xff\xd8\xff": ".jpg", b"BM": ".bmp"}


class ApiError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def _image_ext(data: bytes) -> str:
    for magic, ext in IMAGE_MAGIC.items():
        if data.startswith(magic):
            return ext
    raise ApiError(400, "a shot is not a PNG, JPEG or BMP image")


def create_app(settings: ViewSettings) -> Starlette:
    state = ViewState(settings.rejects)
    zctx = zmq.Context()  # for the control requests (one short-lived DEALER per request, on the thread pool)
    holder: dict[str, DaemonLink] = {}

    def link() -> DaemonLink:
        return holder["link"]

    # ---- helpers ----

    def check_token(req: Request) -> None:
        if not settings.token:
            raise ApiError(403, "the view is read-only: no token configured (view.token in the config, or --token)")
        got = req.headers.get("x-agpt-token") or ""
        auth = req.headers.get("authorization") or ""
        if auth.lower().startswith("bearer "):
            got = got or auth[7:].strip()
        if not got or not hmac.compare_digest(got.encode(), settings.token.encode()):
            raise ApiError(401, "control actions need the token")

    async def ctl(payload: dict, slow: bool = False) -> dict:
        if settings.control is None:
            raise ApiError(503, "no control endpoint given: the view is read-only")
        timeout = settings.slow_timeout_s if slow else settings.control_timeout_s
        try:
            reply = await run_in_threadpool(control_request, settings.control, payload, timeout, settings.curve, zctx)
        except TimeoutError as e:
            raise ApiError(504, str(e)) from None
        if not reply.get("ok"):
            raise ApiError(409, reply.get("error") or "the daemon refused")
        return reply.get("data") or {}

    async def body(req: Request) -> dict:
        try:
            d = await req.json()
        except Exception:
            raise ApiError(400, "expected a JSON object") from None
        if not isinstance(d, dict):
            raise ApiError(400, "expected a JSON object")
        return d

    def camera_arg(v) -> str | None:
        if v in (None, "", "all"):
            return None
        if not isinstance(v, str) or not re.match(CAMERA_RE, v):
            raise ApiError(400, "camera: not a camera name")
        return v

    def endpoint(fn, control: bool = False):
        async def wrapped(req: Request) -> Response:
            try:
                if control:
                    check_token(req)
                out = await fn(req)
                return out if isinstance(out, Response) else JSONResponse({"ok": True, "data": out})
            except ApiError as e:
                return JSONResponse({"ok": False, "error": str(e)}, status_code=e.status)

        return wrapped

    # ---- reading ----

    async def index(req: Request) -> Response:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})

    async def api_state(req: Request):
        snap = state.snapshot(images=False)
        snap["view"] = {
            "control": settings.control is not None,
            "token_required": True,
            "read_only": not settings.token or settings.control is None,
            "uploads": settings.uploads is not None,
            "prefix": settings.prefix,
            "malformed": link().malformed,
            "clients": len(link().clients),
            "dropped": sum(c.dropped for c in link().clients),
        }
        return snap

    async def api_products(req: Request):
        return await ctl({"cmd": "list_products"})

    async def frame_jpg(req: Request):
        cam = state.cameras.get(req.path_params["camera"])
        if cam is None or cam.last_jpeg is None:
            raise ApiError(404, "no preview of that camera yet")
        return Response(cam.last_jpeg, media_type="image/jpeg", headers={"Cache-Control": "no-store"})

    def _reject(req: Request):
        r = state.reject(int(req.path_params["rid"]))
        if r is None:
            raise ApiError(404, "no such reject (only the last ones are kept)")
        return r

    async def reject_jpg(req: Request):
        r = _reject(req)
        if r.jpeg is None:
            raise ApiError(404, "no picture of that reject (its preview was not sent)")
        return Response(r.jpeg, media_type="image/jpeg")

    async def reject_mask(req: Request):
        r = _reject(req)
        if r.mask is None:
            raise ApiError(404, "that result had no map")
        return Response(r.mask, media_type="image/png")

    # ---- control ----

    async def api_swap(req: Request):
        d = await body(req)
        product = d.get("product")
        if not isinstance(product, str) or not re.match(PRODUCT_RE, product):
            raise ApiError(400, "product: not a product name")
        payload = {"cmd": "swap_bank", "product": product}
        cam = camera_arg(d.get("camera"))
        if cam:
            payload["camera"] = cam
        return await ctl(payload, slow=True)

    async def api_pause(req: Request):
        return await ctl({"cmd": "pause"})

    async def api_resume(req: Request):
        return await ctl({"cmd": "resume"})

    async def api_ask(req: Request):
        d = await body(req)
        q = d.get("question")
        if not isinstance(q, str) or not q.strip():
            raise ApiError(400, "question: empty")
        payload = {"cmd": "ask", "question": q.strip()[:2000]}
        cam = camera_arg(d.get("camera"))
        if cam:
            payload["camera"] = cam
        fid = d.get("frame_id")
        if fid is not None:
            if not isinstance(fid, int) or isinstance(fid, bool) or fid < 1:
                raise ApiError(400, "frame_id: a positive integer")
            payload["frame_id"] = fid
        return await ctl(payload, slow=True)

    def operator_arg(v, required: bool) -> str | None:
        if v is None or (isinstance(v, str) and not v.strip()):
            if required:
                raise ApiError(400, "operator: your name (it is logged with the mark)")
            return None
        if not isinstance(v, str) or len(v.strip()) > 64:
            raise ApiError(400, "operator: 1-64 characters")
        return v.strip()

    async def api_feedback(req: Request):
        d = await body(req)
        fid = d.get("frame_id")
        if not isinstance(fid, int) or isinstance(fid, bool) or fid < 1:
            raise ApiError(400, "frame_id: a positive integer")
        kind = d.get("kind")
        if kind not in ("false_reject", "missed_defect"):
            raise ApiError(400, "kind: false_reject or missed_defect")
        add = d.get("add_to_bank", False)
        if not isinstance(add, bool):
            raise ApiError(400, "add_to_bank: true or false")
        payload = {"cmd": "feedback", "frame_id": fid, "kind": kind, "operator": operator_arg(d.get("operator"), True),
                   "add_to_bank": add}  # fmt: skip
        cam = camera_arg(d.get("camera"))
        if cam:
            payload["camera"] = cam
        note = d.get("note")
        if isinstance(note, str) and note.strip():
            payload["note"] = note.strip()[:500]
        return await ctl(payload, slow=True)  # add_to_bank rebuilds the pack and swaps it in

    async def api_rollback(req: Request):
        d = await body(req)
        product = d.get("product")
        if not isinstance(product, str) or not re.match(PRODUCT_RE, product):
            raise ApiError(400, "product: not a product name")
        payload = {"cmd": "rollback", "product": product}
        op = operator_arg(d.get("operator"), False)
        if op:
            payload["operator"] = op
        return await ctl(payload, slow=True)

    async def api_add_product(req: Request):
        if settings.uploads is None:
            raise ApiError(503, "uploads are off: configure view.uploads (inside the daemon's shots_root) or --uploads")
        async with req.form(max_files=MAX_SHOTS, max_fields=16, max_part_size=MAX_SHOT_BYTES) as form:
            name = str(form.get("name") or "")
            if not re.match(PRODUCT_RE, name):
                raise ApiError(400, "name: not a product name ([A-Za-z0-9][A-Za-z0-9_.-]{0,63})")
            description = str(form.get("description") or "")[:1000]
            activate = str(form.get("activate") or "").lower() in ("1", "true", "on", "yes")
            replace = str(form.get("replace") or "").lower() in ("1", "true", "on", "yes")
            cam = camera_arg(form.get("camera"))
            files = [f for f in form.getlist("files") if hasattr(f, "read")]
            if not files:
                raise ApiError(400, "files: no shot images")
            datas = []
            for f in files:
                data = await f.read(MAX_SHOT_BYTES + 1)
                if len(data) > MAX_SHOT_BYTES:
                    raise ApiError(413, f"a shot is larger than {MAX_SHOT_BYTES >> 20} MiB")
                datas.append((data, _image_ext(data)))
        # our own names only (never the browser's file names): uploads/<product>-<time>-<random>/shot_NN.ext
        folder = Path(settings.uploads) / f"{name}-{time.strftime('%Y%m%dT%H%M%S')}-{secrets.token_hex(3)}"
        folder.mkdir(parents=True, exist_ok=False)
        paths = []
        for i, (data, ext) in enumerate(datas):
            p = folder / f"shot_{i:02d}{ext}"
            p.write_bytes(data)
            paths.append(str(p.resolve()))
        payload = {"cmd": "add_product", "name": name, "description": description, "shots": paths,
                   "activate": activate, "replace": replace}  # fmt: skip
        if cam:
            payload["camera"] = cam
        data = await ctl(payload, slow=True)
        data["saved_in"] = str(folder)
        return data

    # ---- push ----

    async def ws(websocket: WebSocket) -> None:
        await websocket.accept()
        client = Client()
        link().add(client)
        try:
            await websocket.send_json({"t": "hello", "snapshot": state.snapshot(images=True), "prefix": settings.prefix,
                                       "read_only": not settings.token or settings.control is None,
                                       "uploads": settings.uploads is not None, "rejects": settings.rejects})  # fmt: skip

            async def drain_incoming():  # the page sends nothing we need; this notices a closed tab
                while True:
                    await websocket.receive_text()

            reader = asyncio.ensure_future(drain_incoming())
            try:
                while not reader.done():
                    text = await client.queue.get()
                    await websocket.send_text(text)
            finally:
                reader.cancel()
        except (WebSocketDisconnect, RuntimeError):
            pass
        finally:
            link().remove(client)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        holder["link"] = DaemonLink(settings.publish, settings.prefix, state,
                                    curve=settings.curve if settings.curve_results else None)  # fmt: skip
        holder["link"].start()
        if settings.archive is not None:  # the strip full at once; the live rejects then push these out
            from runtime.tools.view.history import archived_rejects, bundle_resize

            def load():
                return archived_rejects(settings.archive, settings.prefix, settings.rejects, settings.preview_max_side,
                                        bundle_resize(settings.bundle))  # fmt: skip

            for h, jpeg, mask in await run_in_threadpool(load):
                state.add_archived(h, jpeg, mask)
        try:
            yield
        finally:
            await holder["link"].stop()
            zctx.term()

    async def favicon(req: Request) -> Response:
        return Response(status_code=204)

    routes = [
        Route("/", endpoint(index)),
        Route("/favicon.ico", favicon),
        Route("/api/state", endpoint(api_state)),
        Route("/api/products", endpoint(api_products)),
        Route("/api/frames/{camera}.jpg", endpoint(frame_jpg)),
        Route("/api/rejects/{rid:int}.jpg", endpoint(reject_jpg)),
        Route("/api/rejects/{rid:int}/mask.png", endpoint(reject_mask)),
        Route("/api/swap", endpoint(api_swap, control=True), methods=["POST"]),
        Route("/api/pause", endpoint(api_pause, control=True), methods=["POST"]),
        Route("/api/resume", endpoint(api_resume, control=True), methods=["POST"]),
        Route("/api/ask", endpoint(api_ask, control=True), methods=["POST"]),
        Route("/api/products", endpoint(api_add_product, control=True), methods=["POST"]),
        Route("/api/feedback", endpoint(api_feedback, control=True), methods=["POST"]),
        Route("/api/rollback", endpoint(api_rollback, control=True), methods=["POST"]),
        WebSocketRoute("/ws", ws),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.view = state
    app.state.settings = settings
    app.state.holder = holder
    return app
