"""The asyncua server: its own asyncio loop on its own thread, so nothing the PLC does reaches the inspection loop.

Address space (namespace `OpcuaConfig.namespace`, string node ids; docs/plc.md has the table):
  Station                 Paused, Fps, FramesJudged, Errors, LastMethodError; methods Pause(), Resume(),
                          Rollback(product) -> BankId
  <camera>                methods SwapProduct(name) -> BankId, SetPart(part_id, lot), Trigger(part_id),
                          Feedback(frame_id, kind, add_to_bank, operator) -> BankId
  <camera>.Result.*       the latest result (FrameId, PartId, Verdict, PAnomaly, ... ResultCounter, ResultValid, Error)
  <camera>.State.*        State / StateCode, Fps, FramesJudged, Drops.*, Product, BankId, PendingTriggers ...
Writes come from the sink's worker thread (run_coroutine_threadsafe, waited on there, never on the daemon's
loop). Methods run on this server's loop; the daemon's handler (and the Future a slow command returns) is
waited on in an executor thread, so a changeover never blocks reads and subscriptions of other clients.
Who may call: PermissionRules below (anonymous: browse/read/subscribe; a user or trusted certificate: call).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import json
import logging
import math
import threading
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from asyncua import Server, ua
from asyncua.crypto.permission_rules import USER_TYPES, PermissionRuleset, User, UserRole
from asyncua.server.user_managers import UserManager

from runtime.errors import AgptError
from runtime.line.messages import Drops, Reply, RequestError, ResultHeader, parse_request
from runtime.sinks.opcua.config import OpcuaConfig
from runtime.sinks.opcua.users import load_users, verify_password

log = logging.getLogger("agpt.opcua")
VT = ua.VariantType
EPOCH = datetime.fromtimestamp(0, timezone.utc)

# (name, variant type, initial value): the latest result of a camera, shaped after OPC 40100's ResultType where it
# has a field for it (PartId, ProductId, ResultState, CreationTime); the PLC handshake variables last
RESULT_VARS = [
    ("FrameId", VT.Int64, 0), ("PartId", VT.String, ""), ("Lot", VT.String, ""), ("Verdict", VT.Boolean, False),
    ("ResultState", VT.Int32, 0), ("PAnomaly", VT.Double, math.nan), ("Score", VT.Double, 0.0), ("Location", VT.String, ""),
    ("ProductId", VT.String, ""), ("BankId", VT.String, ""), ("CreationTime", VT.DateTime, EPOCH),
    ("CaptureTime", VT.DateTime, EPOCH), ("LatencyMs", VT.Double, 0.0), ("ResultValid", VT.Boolean, False),
    ("Error", VT.Boolean, False), ("ErrorText", VT.String, ""), ("ResultCounter", VT.UInt32, 0),
]  # fmt: skip
STATE_VARS = [
    ("State", VT.String, "starting"), ("StateCode", VT.Int32, 0), ("CameraState", VT.String, "opening"),
    ("Fps", VT.Double, 0.0), ("FramesJudged", VT.Int64, 0), ("Product", VT.String, ""), ("BankId", VT.String, ""),
    ("TriggerMode", VT.String, "none"), ("PendingTriggers", VT.Int32, 0), ("DropsTotal", VT.Int64, 0),
]  # fmt: skip
DROP_VARS = [("".join(w.title() for w in f.split("_")), f) for f in Drops.model_fields]  # camera_bad -> CameraBad
STATION_VARS = [
    ("Paused", VT.Boolean, False), ("Fps", VT.Double, 0.0), ("FramesJudged", VT.Int64, 0), ("Errors", VT.Int64, 0),
    ("LastMethodError", VT.String, ""),
]  # fmt: skip
# ResultState values (40100 leaves them to the vision system): ours
RESULT_STATE = {"good": 1, "anomalous": 2, "undecided": 3, "error": -1}
STATE_CODE = {"starting": 0, "running": 1, "paused": 2, "camera_lost": 3, "error": 4, "stopped": 5}

_CALL = ua.NodeId(ua.ObjectIds.CallRequest_Encoding_DefaultBinary)
_WRITE = ua.NodeId(ua.ObjectIds.WriteRequest_Encoding_DefaultBinary)


class PermissionRules(PermissionRuleset):
    """Anonymous sessions read, browse and subscribe; Call (and Write) need an authenticated user."""

    def __init__(self):
        everything = {ua.NodeId(i) for i in USER_TYPES}
        self._allowed = {UserRole.Admin: everything, UserRole.User: everything, UserRole.Anonymous: everything - {_CALL, _WRITE}}

    def check_validity(self, user, action_type_id, body):
        return action_type_id in self._allowed.get(getattr(user, "role", UserRole.Anonymous), set())


class StationUsers(UserManager):
    """users_file passwords (PBKDF2) and trusted client certificates -> User; anonymous -> read-only, or refused."""

    def __init__(self, users: dict[str, str], trusted: set[bytes], allow_anonymous: bool):
        self.users, self.trusted, self.allow_anonymous = users, trusted, allow_anonymous

    def get_user(self, iserver, username=None, password=None, certificate=None):
        if username is not None:
            encoded = self.users.get(username)
            if encoded is not None and verify_password(password or "", encoded):
                return User(role=UserRole.User, name=username)
            log.warning("OPC UA login refused for user %r", username)
            return None  # the session is refused: BadUserAccessDenied
        if certificate is not None and bytes(certificate) in self.trusted:
            return User(role=UserRole.User, name="cert:" + hashlib.sha256(bytes(certificate)).hexdigest()[:16])
        return User(role=UserRole.Anonymous) if self.allow_anonymous else None


def _load_trusted(folder: Path | None) -> set[bytes]:
    if folder is None:
        return set()
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    out = set()
    for p in sorted(Path(folder).glob("*")):
        if p.suffix.lower() not in (".der", ".pem", ".crt", ".cer"):
            continue
        data = p.read_bytes()
        try:
            cert = x509.load_pem_x509_certificate(data) if b"-----BEGIN" in data else x509.load_der_x509_certificate(data)
        except ValueError as e:
            raise AgptError(f"{p}: not a certificate: {e}") from None
        out.add(cert.public_bytes(Encoding.DER))
    return out


def _arg(name: str, vt: ua.VariantType, desc: str) -> ua.Argument:
    a = ua.Argument()
    a.Name, a.DataType, a.ValueRank, a.Description = name, ua.NodeId(vt.value), -1, ua.LocalizedText(desc)
    return a


def _dt(t: float | None) -> datetime:
    return EPOCH if t is None else datetime.fromtimestamp(t, timezone.utc)


class MethodFailed(Exception):
    def __init__(self, code: int, text: str):
        super().__init__(text)
        self.code = code


class OpcuaServer:
    """handle: the daemon's control handler (Request -> Reply | Future[Reply]); cameras: (name, trigger mode)."""

    def __init__(self, cfg: OpcuaConfig, cameras: list[tuple[str, str]], handle: Callable[[Any], Any]):
        self.cfg, self.cameras, self.handle = cfg, list(cameras), handle
        self.multi = len(self.cameras) > 1
        self.idx = 2
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._start_error: BaseException | None = None
        self._stop_evt: asyncio.Event | None = None
        self._server: Server | None = None
        self._counters = {name: 0 for name, _ in self.cameras}
        self._last: dict[str, Any] = {}  # node name -> the value last written (touched on the server's loop only)
        self._calls = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="opcua-call")
        self.running = False

    # ---- lifecycle -----------------------------------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> None:
        users = load_users(self.cfg.users_file) if self.cfg.users_file is not None else {}
        trusted = _load_trusted(self.cfg.trusted_clients)
        self._user_manager = StationUsers(users, trusted, self.cfg.allow_anonymous_read)
        if not users and not trusted:
            log.warning("opcua: no users_file or trusted_clients: every method call is refused (read-only server)")
        self._thread = threading.Thread(target=self._run, name="opcua", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise AgptError(f"opcua: the server on {self.cfg.endpoint} did not start within {timeout:.0f} s")
        if self._start_error is not None:
            self._thread.join(5)
            raise AgptError(f"opcua: cannot serve {self.cfg.endpoint}: {self._start_error}")

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve())
        except Exception as e:  # pragma: no cover - _serve reports its own failures
            log.exception("opcua server loop ended: %s", e)
        finally:
            self.running = False
            loop.close()

    async def _serve(self) -> None:
        self._stop_evt = asyncio.Event()
        try:
            await self._setup()
            await self._server.start()
        except BaseException as e:
            self._start_error = e
            self._ready.set()
            return
        self.running = True
        self._ready.set()
        try:
            await self._stop_evt.wait()
        finally:
            self.running = False
            await self._server.stop()
            # sessions' watchdogs and subscription loops of clients that never closed: end them, not the loop's GC
            rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in rest:
                t.cancel()
            await asyncio.gather(*rest, return_exceptions=True)

    def stop(self, timeout: float = 5.0) -> None:
        if self._loop is not None and self._stop_evt is not None and self._thread is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop_evt.set)
            self._thread.join(timeout)
        self._calls.shutdown(wait=False, cancel_futures=True)

    # ---- address space ----------------------------------------------------------------------------------------

    async def _setup(self) -> None:
        cfg = self.cfg
        s = Server(user_manager=self._user_manager)
        await s.init()
        s.set_endpoint(cfg.endpoint)
        s.set_server_name(cfg.server_name)
        await s.set_application_uri(cfg.namespace)
        if cfg.certificate is not None:
            await s.load_certificate(str(cfg.certificate))
            await s.load_private_key(str(cfg.private_key))
        policies = [getattr(ua.SecurityPolicyType, "NoSecurity" if p == "None" else p) for p in cfg.security_policies]
        s.set_security_policy(policies, permission_ruleset=PermissionRules())
        tokens = [ua.AnonymousIdentityToken] if cfg.allow_anonymous_read else []
        if cfg.users_file is not None:
            tokens.append(ua.UserNameIdentityToken)
        if cfg.trusted_clients is not None:
            tokens += [ua.X509IdentityToken] + ([] if cfg.allow_anonymous_read else [ua.AnonymousIdentityToken])
        s.set_identity_tokens(tokens)
        self.idx = idx = await s.register_namespace(cfg.namespace)
        objects = s.nodes.objects
        station = await objects.add_object(self.node("Station"), ua.QualifiedName("Station", idx))
        for name, vt, v in STATION_VARS:
            await station.add_variable(self.node(f"Station.{name}"), ua.QualifiedName(name, idx), ua.Variant(v, vt))
        await station.add_method(self.node("Station.Pause"), ua.QualifiedName("Pause", idx), self._m_pause, [], [])
        await station.add_method(self.node("Station.Resume"), ua.QualifiedName("Resume", idx), self._m_resume, [], [])
        await station.add_method(
            self.node("Station.Rollback"), ua.QualifiedName("Rollback", idx), self._m_rollback,
            [_arg("Product", VT.String, "the product whose previous pack is put back")],
            [_arg("BankId", VT.String, "the bank id now in use (the restored pack's)")],
        )  # fmt: skip
        for cam, trigger in self.cameras:
            obj = await objects.add_object(self.node(cam), ua.QualifiedName(cam, idx))
            for group, specs in (("Result", RESULT_VARS), ("State", STATE_VARS)):
                g = await obj.add_object(self.node(f"{cam}.{group}"), ua.QualifiedName(group, idx))
                for name, vt, v in specs:
                    v = trigger if name == "TriggerMode" else v
                    await g.add_variable(self.node(f"{cam}.{group}.{name}"), ua.QualifiedName(name, idx), ua.Variant(v, vt))
            drops = await obj.add_object(self.node(f"{cam}.State.Drops"), ua.QualifiedName("Drops", idx))
            for name, _ in DROP_VARS:
                await drops.add_variable(
                    self.node(f"{cam}.State.Drops.{name}"), ua.QualifiedName(name, idx), ua.Variant(0, VT.Int64)
                )
            await obj.add_method(
                self.node(f"{cam}.SwapProduct"), ua.QualifiedName("SwapProduct", idx), self._camera_method(cam, self._m_swap),
                [_arg("Product", VT.String, "product name (a pack in the bundle)")], [_arg("BankId", VT.String, "the new pack's id")],
            )  # fmt: skip
            await obj.add_method(
                self.node(f"{cam}.SetPart"), ua.QualifiedName("SetPart", idx), self._camera_method(cam, self._m_set_part),
                [_arg("PartId", VT.String, "part id ('' clears it)"), _arg("Lot", VT.String, "lot ('' for none)")], [],
            )  # fmt: skip
            await obj.add_method(
                self.node(f"{cam}.Trigger"), ua.QualifiedName("Trigger", idx), self._camera_method(cam, self._m_trigger),
                [_arg("PartId", VT.String, "the part in front of the camera now")], [],
            )  # fmt: skip
            await obj.add_method(
                self.node(f"{cam}.Feedback"), ua.QualifiedName("Feedback", idx), self._camera_method(cam, self._m_feedback),
                [_arg("FrameId", VT.Int64, "the marked frame (Result.FrameId of a recent reject)"),
                 _arg("Kind", VT.String, "false_reject or missed_defect"),
                 _arg("AddToBank", VT.Boolean, "false_reject: add the frame to the product's normal shots"),
                 _arg("Operator", VT.String, "who marks it (logged)")],
                [_arg("BankId", VT.String, "the rebuilt pack's id (AddToBank), else the bank the frame was judged with")],
            )  # fmt: skip
        self._server = s

    def node(self, name: str) -> ua.NodeId:
        return ua.NodeId(name, self.idx)

    # ---- writes (from the sink's thread) -------------------------------------------------------------------------

    def _run_coro(self, coro, timeout: float = 5.0) -> Any:
        if self._loop is None or not self.running:
            coro.close()
            raise RuntimeError("opcua server not running")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    async def _write(self, values: list[tuple[str, Any, ua.VariantType]]) -> None:
        """On this loop only. A value equal to the one the variable holds is not written again (product, bank,
        flags, most state variables): half the writes of a result, and no notification a client did not need."""
        now = datetime.now(timezone.utc)  # one timestamp for the whole result: it was written at once
        last = self._last
        for name, v, vt in values:
            if name in last and last[name] == v:
                continue
            last[name] = v
            dv = ua.DataValue(ua.Variant(v, vt), SourceTimestamp=now, ServerTimestamp=now)
            await self._server.write_attribute_value(self.node(name), dv)

    def write_result(self, h: ResultHeader) -> int:
        """The result's variables, then ResultValid, then the counter (a PLC that waits on the counter reads a whole result)."""
        cam = h.camera
        verdict = "undecided" if h.verdict is None else ("anomalous" if h.verdict else "good")
        self._counters[cam] = n = (self._counters[cam] + 1) % (1 << 32)
        r = f"{cam}.Result."
        values = [
            (r + "FrameId", h.frame_id, VT.Int64), (r + "PartId", h.part_id or "", VT.String), (r + "Lot", h.lot or "", VT.String),
            (r + "Verdict", bool(h.verdict), VT.Boolean), (r + "ResultState", RESULT_STATE[verdict], VT.Int32),
            (r + "PAnomaly", math.nan if h.p_anomaly is None else h.p_anomaly, VT.Double), (r + "Score", h.score, VT.Double),
            (r + "Location", ",".join(h.locations), VT.String), (r + "ProductId", h.product, VT.String),
            (r + "BankId", h.bank_id or "", VT.String), (r + "CreationTime", _dt(h.publish_time), VT.DateTime),
            (r + "CaptureTime", _dt(h.capture_time), VT.DateTime), (r + "LatencyMs", float(h.latency_ms.get("total", 0.0)), VT.Double),
            (r + "Error", False, VT.Boolean), (r + "ErrorText", "", VT.String), (r + "ResultValid", True, VT.Boolean),
            (r + "ResultCounter", n, VT.UInt32),
        ]  # fmt: skip
        self._run_coro(self._write(values))
        return n

    def write_error(self, cam: str, part_id: str | None, text: str, frame_id: int | None = None) -> int:
        """An error result: the part's trigger failed, or its frame failed to judge. The counter still moves once."""
        self._counters[cam] = n = (self._counters[cam] + 1) % (1 << 32)
        r = f"{cam}.Result."
        values = [(r + "PartId", part_id or "", VT.String), (r + "ResultState", RESULT_STATE["error"], VT.Int32),
                  (r + "Verdict", False, VT.Boolean), (r + "ResultValid", False, VT.Boolean), (r + "Error", True, VT.Boolean),
                  (r + "ErrorText", text[:500], VT.String), (r + "CreationTime", datetime.now(timezone.utc), VT.DateTime)]  # fmt: skip
        if frame_id is not None:
            values.append((r + "FrameId", frame_id, VT.Int64))
        values.append((r + "ResultCounter", n, VT.UInt32))
        self._run_coro(self._write(values))
        return n

    def write_status(self, st: Any, pending: dict[str, int], errors: dict[str, bool]) -> None:
        """Station and per-camera state from a runtime.line.messages.Status."""
        values = [("Station.Paused", st.paused, VT.Boolean), ("Station.Fps", float(st.fps), VT.Double),
                  ("Station.FramesJudged", st.frames_judged, VT.Int64), ("Station.Errors", st.errors, VT.Int64)]  # fmt: skip
        for c in st.cameras:
            if c.name not in self._counters:
                continue
            if c.camera_state == "lost":
                state = "camera_lost"
            elif errors.get(c.name):
                state = "error"
            elif st.paused:
                state = "paused"
            elif c.camera_state in ("ended", "stopped"):
                state = "stopped"
            else:
                state = "running"
            p = f"{c.name}.State."
            d = c.drops.model_dump()
            values += [(p + "State", state, VT.String), (p + "StateCode", STATE_CODE[state], VT.Int32),
                       (p + "CameraState", c.camera_state, VT.String), (p + "Fps", float(c.fps), VT.Double),
                       (p + "FramesJudged", c.frames_judged, VT.Int64), (p + "Product", c.product or "", VT.String),
                       (p + "BankId", c.bank_id or "", VT.String), (p + "PendingTriggers", pending.get(c.name, 0), VT.Int32),
                       (p + "DropsTotal", sum(d.values()), VT.Int64)]  # fmt: skip
            values += [(p + "Drops." + name, d.get(field, 0), VT.Int64) for name, field in DROP_VARS]
        self._run_coro(self._write(values))

    # ---- methods (on this server's loop) -------------------------------------------------------------------------

    def _camera_method(self, cam: str, fn):
        async def method(parent, *args):
            return await fn(cam, *args)

        return method

    async def _m_pause(self, parent, *args):
        return await self._call({"cmd": "pause"}, args, [])

    async def _m_resume(self, parent, *args):
        return await self._call({"cmd": "resume"}, args, [])

    async def _m_swap(self, cam: str, *args):
        out = await self._call(
            {"cmd": "swap_bank", "camera": cam}, args, [("product", VT.String)], data_out=("bank_id", VT.String)
        )
        return out

    async def _m_set_part(self, cam: str, *args):
        async def fix(req):  # '' clears the part / lot (a PLC string cannot be null)
            req["part_id"] = req["part_id"] or None
            req["lot"] = req["lot"] or None

        return await self._call({"cmd": "set_part", "camera": cam}, args, [("part_id", VT.String), ("lot", VT.String)], fix=fix)

    async def _m_trigger(self, cam: str, *args):
        # the handshake's "busy" goes out before the trigger is armed: this loop also writes the results, in
        # order, so the part's result (ResultValid true) always comes after it, never before
        valid = self.node(f"{cam}.Result.ResultValid")
        before, n = self._server.read_attribute_value(valid).Value.Value, self._counters[cam]
        await self._write([(f"{cam}.Result.ResultValid", False, VT.Boolean)])
        out = await self._call({"cmd": "trigger", "camera": cam}, args, [("part_id", VT.String)])
        if not isinstance(out, list) and self._counters[cam] == n:  # refused, and no result came meanwhile: as it was
            await self._write([(f"{cam}.Result.ResultValid", bool(before), VT.Boolean)])
        return out

    async def _m_feedback(self, cam: str, *args):
        spec = [("frame_id", VT.Int64), ("kind", VT.String), ("add_to_bank", VT.Boolean), ("operator", VT.String)]
        return await self._call({"cmd": "feedback", "camera": cam}, args, spec, data_out=(("new_bank_id", "bank_id"), VT.String))

    async def _m_rollback(self, parent, *args):
        return await self._call({"cmd": "rollback"}, args, [("product", VT.String)], data_out=("bank_id", VT.String))

    async def _call(self, base: dict, args: tuple, spec: list[tuple[str, ua.VariantType]], data_out=None, fix=None):
        """Arguments checked against spec (count and type), then the same request the control channel parses,
        then daemon.handle off this loop. Every failure is a Bad status (and Station.LastMethodError), never a raise."""
        try:
            if len(args) < len(spec):
                raise MethodFailed(ua.StatusCodes.BadArgumentsMissing, f"expected {len(spec)} arguments, got {len(args)}")
            if len(args) > len(spec):
                raise MethodFailed(ua.StatusCodes.BadTooManyArguments, f"expected {len(spec)} arguments, got {len(args)}")
            req = dict(base)
            for (key, vt), v in zip(spec, args):
                if not isinstance(v, ua.Variant) or v.VariantType != vt or v.is_array:
                    got = getattr(getattr(v, "VariantType", None), "name", type(v).__name__)
                    raise MethodFailed(ua.StatusCodes.BadTypeMismatch, f"{key}: expected {vt.name}, got {got}")
                req[key] = v.Value
            if fix is not None:
                await fix(req)
            try:
                parsed = parse_request(json.dumps(req).encode())
            except RequestError as e:
                raise MethodFailed(ua.StatusCodes.BadInvalidArgument, str(e)) from None
            loop = asyncio.get_running_loop()
            reply = await loop.run_in_executor(self._calls, self._handle_blocking, parsed)
            if not reply.ok:
                code = ua.StatusCodes.BadShutdown if "stopping" in (reply.error or "") else ua.StatusCodes.BadInvalidState
                raise MethodFailed(code, reply.error or "refused")
        except MethodFailed as e:
            await self._method_error(f"{base['cmd']}: {e}")
            return ua.StatusCode(e.code)
        except Exception as e:  # the server must answer every call, whatever the daemon did
            log.exception("opcua method %s failed", base["cmd"])
            await self._method_error(f"{base['cmd']}: {type(e).__name__}: {e}")
            return ua.StatusCode(ua.StatusCodes.BadInternalError)
        if data_out is None:
            return []
        keys, vt = data_out  # one key, or alternatives: the first the reply has
        data = reply.data or {}
        value = next((data[k] for k in ((keys,) if isinstance(keys, str) else keys) if data.get(k)), "")
        return [ua.Variant(str(value), vt)]

    def _handle_blocking(self, req) -> Reply:
        r = self.handle(req)
        if isinstance(r, concurrent.futures.Future):
            try:
                r = r.result(self.cfg.method_timeout_s)
            except concurrent.futures.TimeoutError:
                raise MethodFailed(ua.StatusCodes.BadTimeout, f"no reply within {self.cfg.method_timeout_s} s") from None
            except AgptError as e:
                return Reply(ok=False, error=str(e))
        return r

    async def _method_error(self, text: str) -> None:
        log.warning("opcua method refused: %s", text)
        try:
            await self._write([("Station.LastMethodError", text[:500], VT.String)])
        except Exception:  # pragma: no cover - the status code still goes back
            pass
