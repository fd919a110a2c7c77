"""The OPC UA server a PLC talks to, with a real asyncua client on loopback: variables read while the daemon
judges (fake inspector), ResultCounter once per result, SwapProduct between two frames, methods refused to
anonymous and wrong-password clients, wrong argument types and vanishing clients answered with Bad status
codes while the daemon keeps judging; triggered inspection (one result per Trigger, its part id; an error
result on timeout or a lost camera); the security rules of the config, and an encrypted channel where a
trusted client certificate may call and another may only read."""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _daemon_fakes import CountingSource, FakeInspector, collect, connected, ctl, daemon_config, make_bundle, running

from runtime.errors import AgptError
from runtime.line.config import CameraConfig, parse_config
from runtime.sinks.opcua.config import OpcuaConfig
from runtime.sinks.opcua.users import hash_password, load_users, set_user, verify_password

asyncua = pytest.importorskip("asyncua", reason="the opcua extra (asyncua) is not installed")
from asyncua import Client, ua  # noqa: E402

NS = "urn:anomalygpt-edge:test"
USER, PASSWORD = "plc1", "s3cret-Pa55"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def bundle(tmp_path) -> Path:
    return make_bundle(tmp_path / "bundle")


@pytest.fixture
def users(tmp_path) -> Path:
    p = tmp_path / "opcua-users.txt"
    set_user(p, USER, PASSWORD, iterations=1000)  # the default 600k iterations cost ~0.5 s per login on this host
    return p


def opcua_cfg(users: Path | None = None, **kw) -> OpcuaConfig:
    return OpcuaConfig(endpoint=f"opc.tcp://127.0.0.1:{free_port()}", namespace=NS, users_file=users, state_interval_s=0.1, **kw)


def until(pred, timeout: float = 10.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


async def auntil(pred, timeout: float = 10.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        v = await pred()
        if v:
            return v
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


class Plc:
    """A PLC-style client: reads a camera's variables by node id, calls its methods."""

    def __init__(self, url: str, user: str | None = None, password: str | None = None, camera: str = "cam0"):
        self.client = Client(url, timeout=10)
        if user is not None:
            self.client.set_user(user)
            self.client.set_password(password)
        self.camera = camera

    async def __aenter__(self):
        await self.client.connect()
        self.idx = await self.client.get_namespace_index(NS)
        return self

    async def __aexit__(self, *exc):
        await self.client.disconnect()

    def node(self, name: str):
        return self.client.get_node(ua.NodeId(name, self.idx))

    async def read(self, var: str, camera: str | None = None):
        return await self.node(f"{camera or self.camera}.{var}").read_value()

    async def call(self, method: str, *args, obj: str | None = None):
        obj = obj or self.camera
        return await self.node(obj).call_method(ua.NodeId(f"{obj}.{method}", self.idx), *args)


# ---- config and users (no server) ---------------------------------------------------------------------------


def test_users_file_hashes_and_refuses_malformed_lines(tmp_path, users):
    got = load_users(users)
    assert list(got) == [USER] and PASSWORD not in users.read_text()
    assert verify_password(PASSWORD, got[USER]) and not verify_password("wrong", got[USER])
    assert (users.stat().st_mode & 0o777) == 0o600
    assert verify_password("x", hash_password("x", iterations=10)) and not verify_password("x", "md5$1$a$b")
    bad = tmp_path / "bad.txt"
    bad.write_text("# comment\nplc2:plaintext\n")
    with pytest.raises(AgptError, match=r"bad.txt:2: expected name:pbkdf2_sha256"):
        load_users(bad)


def test_non_loopback_endpoint_without_security_refuses_to_start(bundle, tmp_path):
    raw = {"bundle": str(bundle), "product": "widget", "camera": {"kind": "synthetic", "source": "test"}}
    with pytest.raises(AgptError, match=r"opcua.endpoint: opc.tcp://0.0.0.0:4840 is reachable from other machines"):
        parse_config({**raw, "opcua": {"endpoint": "opc.tcp://0.0.0.0:4840"}})
    with pytest.raises(AgptError, match="needs `certificate` and `private_key`"):
        parse_config({**raw, "opcua": {"security_policies": ["Basic256Sha256_SignAndEncrypt"]}})
    with pytest.raises(AgptError, match="trigger 'opcua' needs the `opcua` section"):
        parse_config({**raw, "camera": {"kind": "synthetic", "source": "test", "trigger": "opcua"}})
    secure = {"endpoint": "opc.tcp://0.0.0.0:4840", "security_policies": ["Basic256Sha256_SignAndEncrypt"],
              "certificate": "c.der", "private_key": "k.pem", "users_file": "u.txt", "allow_anonymous_read": False}  # fmt: skip
    assert parse_config({**raw, "opcua": secure}).opcua.port == 4840
    assert parse_config({**raw, "opcua": {}}).opcua.endpoint == "opc.tcp://127.0.0.1:4840"
    with pytest.raises(AgptError, match="opcua.endpoint"):
        parse_config({**raw, "opcua": {"endpoint": "tcp://127.0.0.1:4840"}})


def test_missing_extra_is_one_clear_line(bundle, monkeypatch):
    monkeypatch.setitem(sys.modules, "asyncua", None)  # import asyncua -> ImportError, as without the extra
    monkeypatch.delitem(sys.modules, "runtime.sinks.opcua.server", raising=False)
    from runtime.line.daemon import Daemon

    d = Daemon(daemon_config(bundle, opcua=opcua_cfg()), inspector=FakeInspector(), source=CountingSource(n=1))
    with pytest.raises(AgptError, match=r"^opcua: .*asyncua.* \(pip install 'anomalygpt-edge\[opcua\]'\)$"):
        d.start()


# ---- a running daemon ---------------------------------------------------------------------------------------------


def test_variables_follow_the_results_and_the_counter_moves_once_per_result(bundle):
    """An anonymous client reads while frames are judged; at the end the counter equals the results published."""
    src = CountingSource(n=40, period=0.01)
    cfg = daemon_config(bundle, opcua=opcua_cfg())
    with running(cfg, source=src) as d:

        async def client():
            async with Plc(cfg.opcua.endpoint) as plc:
                seen = []
                while d.judged < 40 or (await plc.read("Result.ResultCounter")) < 40:
                    n, fid = await plc.read("Result.ResultCounter"), await plc.read("Result.FrameId")
                    seen.append((n, fid))
                    await asyncio.sleep(0.005)
                    assert len(seen) < 20000
                final = {v: await plc.read(f"Result.{v}") for v in ("ResultCounter", "FrameId", "ProductId", "BankId",
                         "Verdict", "ResultState", "PAnomaly", "Score", "Location", "ResultValid", "Error", "CreationTime")}  # fmt: skip
                state = {v: await plc.read(f"State.{v}") for v in ("FramesJudged", "CameraState", "Product")}
                return seen, final, state

        seen, final, state = asyncio.run(client())
        assert d.judged == 40 and d.publisher.last_seq("result") == 40
    counters = [n for n, _ in seen]
    assert counters == sorted(counters) and len(set(counters)) > 5  # read while judging: the counter kept moving
    assert all(fid >= n for n, fid in seen if n)  # every frame judged (when_full wait): counter n is frame n or later
    assert final["ResultCounter"] == 40 and final["FrameId"] == 40
    assert final["ProductId"] == "widget" and final["BankId"] == d.pack.bank_id and final["ResultValid"] and not final["Error"]
    # frame 40 of CountingSource: value 60 -> score 60/255 < 0.5: good
    assert final["Verdict"] is False and final["ResultState"] == 1 and final["Location"] == ""
    assert final["PAnomaly"] == pytest.approx(60 / 255, abs=1e-6) and final["Score"] == 1.0
    assert final["CreationTime"].year >= 2024
    assert state["FramesJudged"] >= 1 and state["Product"] == "widget"


def test_swap_product_lands_between_two_frames_and_pause_resume(bundle, users):
    from runtime.tools.subscribe import ResultSubscriber

    gate = threading.Event()
    cfg = daemon_config(bundle, opcua=opcua_cfg(users))
    with running(cfg, source=CountingSource(period=0.005, gate=gate)) as d:
        with ResultSubscriber(d.publish_endpoint, ["line1.station3."]) as sub:
            connected(sub)
            gate.set()

            async def client():
                async with Plc(cfg.opcua.endpoint, USER, PASSWORD) as plc:
                    await auntil(lambda: plc.read("Result.ResultCounter"), what="a first result")
                    bank = await plc.call("SwapProduct", "gadget")
                    await auntil(lambda: _eq(plc.read("Result.ProductId"), "gadget"), what="ProductId gadget")
                    await plc.call("Pause", obj="Station")
                    paused = await auntil(lambda: plc.node("Station.Paused").read_value(), what="Station.Paused")
                    state = await auntil(lambda: _eq(plc.read("State.State"), "paused"), what="State paused")
                    await plc.call("Resume", obj="Station")
                    return bank, paused, state

            bank, paused, state = asyncio.run(client())
            until(lambda: not d.paused.is_set() and d.judged > 0, what="resumed")
            assert bank == d.pack.bank_id and paused and state
            bag = collect(sub, lambda b: any(m.header.product == "gadget" for m in b["results"]))
    products = [m.header.product for m in bag["results"]]
    first = products.index("gadget")
    assert set(products[:first]) == {"widget"} and set(products[first:]) == {"gadget"}  # one boundary, no mixing
    assert [e.kind for e in bag["events"] if e.kind in ("changeover", "paused")] == ["changeover"]


async def _eq(coro, want):
    return (await coro) == want


async def _true(v):
    return v


def test_unauthorised_clients_cannot_call_methods(bundle, users):
    cfg = daemon_config(bundle, opcua=opcua_cfg(users))
    with running(cfg, source=CountingSource(period=0.01)) as d:

        async def client():
            async with Plc(cfg.opcua.endpoint) as anon:  # anonymous: reads work, calls are refused
                assert await anon.read("State.TriggerMode") == "none"
                with pytest.raises(ua.uaerrors.BadUserAccessDenied):
                    await anon.call("Pause", obj="Station")
                with pytest.raises(ua.uaerrors.BadUserAccessDenied):
                    await anon.call("SwapProduct", "gadget")
            with pytest.raises(ua.uaerrors.BadUserAccessDenied):  # a wrong password gets no session at all
                async with Plc(cfg.opcua.endpoint, USER, "guess"):
                    pass

        asyncio.run(client())
        assert not d.paused.is_set() and d.pack.name == "widget"
        n = d.judged
        until(lambda: d.judged > n, what="judging goes on")


def test_feedback_rebuilds_the_bank_and_rollback_restores_it_for_authorised_users_only(bundle, users):
    """<cam>.Feedback marks a rejected frame (here: added to the normal shots, the new bank id comes back and runs);
    Station.Rollback puts the old pack back; anonymous clients may call neither."""
    cfg = daemon_config(bundle, opcua=opcua_cfg(users), keep_rejects=1024)  # frame 3 (a reject) stays kept
    with running(cfg, source=CountingSource(period=0.01)) as d:
        old = d.pack.bank_id
        feedback = d.store.pack_path("widget").parent / "feedback.jsonl"
        i64 = ua.Variant(3, ua.VariantType.Int64)

        async def client():
            async with Plc(cfg.opcua.endpoint) as anon:
                with pytest.raises(ua.uaerrors.BadUserAccessDenied):
                    await anon.call("Feedback", i64, "false_reject", True, "mallory")
                with pytest.raises(ua.uaerrors.BadUserAccessDenied):
                    await anon.call("Rollback", "widget", obj="Station")
            assert d.pack.bank_id == old and not feedback.exists()
            async with Plc(cfg.opcua.endpoint, USER, PASSWORD) as plc:
                await auntil(lambda: _gt(plc.read("Result.FrameId"), 3), what="frame 3 judged")
                with pytest.raises(ua.uaerrors.BadInvalidArgument):  # not a kind the daemon knows
                    await plc.call("Feedback", i64, "looks_fine", False, "alice")
                new = await plc.call("Feedback", i64, "false_reject", True, "alice")
                assert new != old and d.pack.bank_id == new
                await auntil(lambda: _eq(plc.read("Result.BankId"), new), what="results judged with the new bank")
                back = await plc.call("Rollback", "widget", obj="Station")
                error = await plc.node("Station.LastMethodError").read_value()
                return new, back, error

        new, back, error = asyncio.run(client())
        assert back == old and d.pack.bank_id == old and "feedback" in error  # only the bad kind was refused
    marks = [json.loads(line) for line in feedback.read_text().splitlines()]
    assert [m["kind"] for m in marks] == ["false_reject", "rollback"]
    assert (marks[0]["operator"], marks[0]["frame_id"], marks[0]["camera"]) == ("alice", 3, "cam0")
    assert marks[0]["new_bank_id"] == new and marks[0]["previous_bank_id"] == old and marks[1]["bank_id"] == old


async def _gt(coro, n):
    return (await coro) > n


def test_read_only_without_users_and_no_anonymous(bundle):
    cfg = daemon_config(bundle, opcua=opcua_cfg(None, allow_anonymous_read=False))
    with running(cfg, source=CountingSource(n=3)):

        async def client():
            with pytest.raises(ua.UaError):
                async with Plc(cfg.opcua.endpoint):
                    pass

        asyncio.run(client())


def test_wrong_types_and_vanishing_clients_get_bad_status_and_the_daemon_keeps_judging(bundle, users):
    cfg = daemon_config(bundle, opcua=opcua_cfg(users))
    with running(cfg, source=CountingSource(period=0.005)) as d:

        async def client():
            async with Plc(cfg.opcua.endpoint, USER, PASSWORD) as plc:
                bad = {}
                for label, args in {
                    "int": (ua.Variant(5, ua.VariantType.Int32),),
                    "array": (ua.Variant(["a", "b"], ua.VariantType.String),),
                    "none": (),
                    "two": ("gadget", "extra"),
                    "bad_name": ("../etc",),
                    "unknown": ("nope",),
                }.items():
                    with pytest.raises(ua.UaStatusCodeError) as e:
                        await plc.call("SwapProduct", *args)
                    bad[label] = e.value.code
                with pytest.raises(ua.UaStatusCodeError) as e:
                    await plc.call("Trigger", "P1")  # a free-running camera
                bad["free_running"] = e.value.code
                with pytest.raises(ua.UaStatusCodeError) as e:
                    await plc.call("SetPart", "P1")
                bad["set_part_one_arg"] = e.value.code
                last = await plc.node("Station.LastMethodError").read_value()
                return bad, last

        bad, last = asyncio.run(client())
        S = ua.StatusCodes
        assert bad == {"int": S.BadTypeMismatch, "array": S.BadTypeMismatch, "none": S.BadArgumentsMissing,
                       "two": S.BadTooManyArguments, "bad_name": S.BadInvalidArgument, "unknown": S.BadInvalidState,
                       "free_running": S.BadInvalidState, "set_part_one_arg": S.BadArgumentsMissing}  # fmt: skip
        assert last.startswith("set_part: expected 2 arguments")

        async def subscribed() -> Client:
            c = Client(cfg.opcua.endpoint, timeout=5)
            await c.connect()
            idx = await c.get_namespace_index(NS)
            sub = await c.create_subscription(10, None)
            await sub.subscribe_data_change(c.get_node(ua.NodeId("cam0.Result.ResultCounter", idx)))
            return c

        async def misbehaving():
            for _ in range(3):  # subscribed, then the socket goes away without closing the session (a PLC losing power)
                c = await subscribed()
                c.uaclient.protocol.transport.abort()
            stalled = await subscribed()  # subscribed, then it stops reading its socket
            stalled.uaclient.protocol.transport.pause_reading()
            n = d.judged
            await auntil(lambda: _true(d.judged > n + 20), what="judging goes on past stalled and vanished clients")
            async with Plc(cfg.opcua.endpoint, USER, PASSWORD) as plc:  # a client reconnecting meanwhile is served
                bank = await plc.call("SwapProduct", "gadget")
            stalled.uaclient.protocol.transport.abort()
            return bank

        bank = asyncio.run(misbehaving())
        assert bank == until(lambda: d.pack.name == "gadget" and d.pack.bank_id)
        assert d.errors == 0 and d.sinks.stats()["opcua"].connected is True


# ---- triggered inspection -------------------------------------------------------------------------------------------


def test_every_trigger_gives_exactly_one_result_with_its_part_id(bundle, users):
    from runtime.tools.subscribe import ResultSubscriber

    cam = CameraConfig(kind="synthetic", source="test", trigger="opcua", fps_limit=200)
    cfg = daemon_config(bundle, camera=cam, opcua=opcua_cfg(users), sndhwm=1000)
    with running(cfg, source=CountingSource(period=0.002)) as d:
        with ResultSubscriber(d.publish_endpoint, ["line1.station3."]) as sub:
            connected(sub)
            until(lambda: d.triggers.untriggered["cam0"] > 5, what="untriggered frames")
            assert d.judged == 0  # nothing judged without a trigger
            parts = [f"P-{i:03d}" for i in range(12)]

            async def client():
                async with Plc(cfg.opcua.endpoint, USER, PASSWORD) as plc:
                    for i, p in enumerate(parts, 1):
                        await plc.call("Trigger", p)
                        await auntil(lambda i=i: _eq(plc.read("Result.ResultCounter"), i), what=f"result {i}")
                        assert await plc.read("Result.PartId") == p and await plc.read("Result.ResultValid")
                    # two triggers at once: two frames, in order
                    await plc.call("Trigger", "A")
                    await plc.call("Trigger", "B")
                    await auntil(lambda: _eq(plc.read("Result.ResultCounter"), len(parts) + 2), what="A and B")
                    return await plc.read("State.Drops.Untriggered")

            untriggered = asyncio.run(client())
            bag = collect(sub, lambda b: len(b["results"]) >= len(parts) + 2)
            ctl(d, {"cmd": "trigger", "part_id": "C"})  # the control channel's trigger serves the same camera
            bag2 = collect(sub, lambda b: b["results"])
        assert untriggered > 0
    got = [m.header.part_id for m in bag["results"]] + [m.header.part_id for m in bag2["results"]]
    assert got == parts + ["A", "B", "C"] and d.judged == len(got)
    ids = [m.header.frame_id for m in bag["results"]]
    assert ids == sorted(set(ids))
    assert all(m.header.drops.untriggered > 0 for m in bag["results"][1:])


def test_a_trigger_not_served_in_time_gives_an_error_result(bundle, users):
    from runtime.tools.subscribe import ResultSubscriber

    gate = threading.Event()  # the camera delivers nothing: no frame can serve the trigger
    cam = CameraConfig(kind="synthetic", source="test", trigger="opcua", trigger_timeout_s=0.3)
    cfg = daemon_config(bundle, camera=cam, opcua=opcua_cfg(users))
    with running(cfg, source=CountingSource(gate=gate)) as d:
        with ResultSubscriber(d.publish_endpoint, ["line1.station3."]) as sub:
            connected(sub)

            async def client():
                async with Plc(cfg.opcua.endpoint, USER, PASSWORD) as plc:
                    await plc.call("Trigger", "LATE-1")
                    await auntil(lambda: _eq(plc.read("Result.ResultCounter"), 1), what="the error result")
                    return {
                        v: await plc.read(f"Result.{v}") for v in ("PartId", "Error", "ErrorText", "ResultValid", "ResultState")
                    }

            r = asyncio.run(client())
            bag = collect(sub, lambda b: any(e.kind == "trigger_failed" for e in b["events"]))
            assert ctl(d, {"cmd": "trigger", "part_id": "LATE-2"})["ok"]
            bag2 = collect(sub, lambda b: any(e.kind == "trigger_failed" for e in b["events"]))
        assert d.judged == 0
    assert r == {"PartId": "LATE-1", "Error": True, "ErrorText": "trigger timeout: no frame judged for this part",
                 "ResultValid": False, "ResultState": -1}  # fmt: skip
    ev = [e for e in bag["events"] + bag2["events"] if e.kind == "trigger_failed"]
    assert [(e.detail["part_id"], e.detail["reason"]) for e in ev] == [("LATE-1", "timeout"), ("LATE-2", "timeout")]


def test_set_part_stamps_the_next_results_and_a_free_running_camera_refuses_triggers(bundle):
    from runtime.tools.subscribe import ResultSubscriber

    with running(daemon_config(bundle), source=CountingSource(period=0.005)) as d:
        with ResultSubscriber(d.publish_endpoint, ["line1.station3."]) as sub:
            connected(sub)
            r = ctl(d, {"cmd": "set_part", "part_id": "SN-42", "lot": "LOT-7"})
            assert r["ok"] and r["data"]["cameras"] == ["cam0"]
            bag = collect(sub, lambda b: any(m.header.part_id == "SN-42" for m in b["results"]))
            assert not ctl(d, {"cmd": "set_part", "part_id": "bad\nid"})["ok"]
            assert "free running" in ctl(d, {"cmd": "trigger", "part_id": "X", "camera": "cam0"})["error"]
    h = next(m.header for m in bag["results"] if m.header.part_id == "SN-42")
    assert h.lot == "LOT-7"


def test_a_trigger_on_a_lost_camera_fails_at_once_with_its_part_id(bundle):
    from _daemon_fakes import FlakySource

    from runtime.tools.subscribe import ResultSubscriber

    src = FlakySource()
    cam = CameraConfig(kind="synthetic", source="test", trigger="control", trigger_timeout_s=30, reopen_backoff_s=0.05)
    with running(daemon_config(bundle, camera=cam), source=src) as d:
        with ResultSubscriber(d.publish_endpoint, ["line1.station3."]) as sub:
            connected(sub)
            src.down.set()
            until(lambda: d.camera.state == "lost", what="camera lost")
            r = ctl(d, {"cmd": "trigger", "part_id": "P-lost"})
            assert r["ok"] and r["data"]["camera"] == "cam0"
            bag = collect(sub, lambda b: any(e.kind == "trigger_failed" for e in b["events"]), timeout=5)  # not 30 s
            src.down.clear()
            until(lambda: d.camera.state == "open", what="camera back")
            assert ctl(d, {"cmd": "trigger", "part_id": "P-back"})["ok"]
            bag2 = collect(sub, lambda b: b["results"])
    ev = next(e for e in bag["events"] if e.kind == "trigger_failed")
    assert (ev.detail["part_id"], ev.detail["reason"], ev.detail["camera"]) == ("P-lost", "camera_lost", "cam0")
    assert [m.header.part_id for m in bag2["results"]] == ["P-back"]


def _make_cert(folder: Path, name: str, uri: str, server: bool) -> tuple[Path, Path]:
    """A self-signed application certificate (DER) and its key (PEM), as OPC 10000-6 wants them."""
    from asyncua.crypto.cert_gen import dump_private_key_as_pem, generate_private_key, generate_self_signed_app_certificate
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding
    from cryptography.x509.oid import ExtendedKeyUsageOID

    key = generate_private_key()
    use = [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
    alt = [x509.UniformResourceIdentifier(uri), x509.DNSName("localhost"), x509.DNSName(socket.gethostname())]
    cert = generate_self_signed_app_certificate(key, name, {}, alt, use)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.der").write_bytes(cert.public_bytes(Encoding.DER))
    (folder / f"{name}.pem").write_bytes(dump_private_key_as_pem(key))
    return folder / f"{name}.der", folder / f"{name}.pem"


@pytest.mark.slow
def test_encrypted_channel_trusted_client_certificate_may_call_others_only_read(bundle, tmp_path):
    from asyncua.crypto.security_policies import SecurityPolicyBasic256Sha256

    server_cert, server_key = _make_cert(tmp_path / "server", "station", NS, server=True)
    trusted_cert, trusted_key = _make_cert(tmp_path / "trusted", "plc", "urn:test:plc", server=False)
    other_cert, other_key = _make_cert(tmp_path / "other", "laptop", "urn:test:laptop", server=False)
    (tmp_path / "clients").mkdir()
    (tmp_path / "clients" / "plc.der").write_bytes(trusted_cert.read_bytes())
    opc = opcua_cfg(None, security_policies=["Basic256Sha256_SignAndEncrypt"], certificate=server_cert,
                    private_key=server_key, trusted_clients=tmp_path / "clients")  # fmt: skip
    cfg = daemon_config(bundle, opcua=opc)
    with running(cfg, source=CountingSource(period=0.01)) as d:

        async def connect(cert, key) -> Client:
            c = Client(opc.endpoint, timeout=10)
            c.application_uri = "urn:test:plc" if cert == trusted_cert else "urn:test:laptop"
            await c.set_security(SecurityPolicyBasic256Sha256, str(cert), str(key), mode=ua.MessageSecurityMode.SignAndEncrypt)
            await c.connect()
            return c

        async def client():
            c = await connect(trusted_cert, trusted_key)
            idx = await c.get_namespace_index(NS)
            station = c.get_node(ua.NodeId("Station", idx))
            await station.call_method(ua.NodeId("Station.Pause", idx))
            o = await connect(other_cert, other_key)
            counter = await o.get_node(ua.NodeId("cam0.Result.ResultCounter", idx)).read_value()
            with pytest.raises(ua.uaerrors.BadUserAccessDenied):
                await o.get_node(ua.NodeId("Station", idx)).call_method(ua.NodeId("Station.Resume", idx))
            await o.disconnect()
            await c.disconnect()
            return counter

        assert asyncio.run(client()) >= 0
        assert d.paused.is_set()  # the trusted client paused; the other one could not resume

    async def plain():  # no None endpoint: a client without security gets no session
        c = Client(opc.endpoint, timeout=5)
        with pytest.raises(ua.UaError) as e:
            await c.connect()
        return e.value

    with running(cfg, source=CountingSource(n=1)):
        err = asyncio.run(plain())
    assert "SecurityPolicy#None" in str(err)  # the server offers no unsecured endpoint at all


def test_several_cameras_each_have_their_objects_one_triggered_one_free_running(bundle, users):
    from _daemon_fakes import multi_config

    cfg = multi_config(bundle, [{"name": "top", "fps_limit": 100}, {"name": "side", "trigger": "opcua", "fps_limit": 100}],
                       opcua=opcua_cfg(users))  # fmt: skip
    with running(cfg, sources={"top": CountingSource(period=0.005), "side": CountingSource(period=0.005)}) as d:

        async def client():
            async with Plc(cfg.opcua.endpoint, USER, PASSWORD, camera="side") as side:
                await auntil(lambda: side.read("Result.ResultCounter", "top"), what="top's results")
                assert await side.read("Result.ResultCounter") == 0 and await side.read("State.TriggerMode") == "opcua"
                await side.call("Trigger", "S-1")
                await auntil(lambda: _eq(side.read("Result.ResultCounter"), 1), what="side's one result")
                await side.call("SwapProduct", "gadget")  # only this camera changes over
                await auntil(lambda: _eq(side.read("State.Product"), "gadget"), what="side's product")
                with pytest.raises(ua.UaStatusCodeError) as e:
                    await side.call("Trigger", "T-1", obj="top")
                return await side.read("Result.PartId"), await side.read("State.Product", "top"), e.value.code

        part, top_product, code = asyncio.run(client())
        assert part == "S-1" and top_product == "widget" and code == ua.StatusCodes.BadInvalidState
        assert d.lane("side").judged == 1 and d.lane("top").judged > 1 and d.lane("side").pack.name == "gadget"
