"""`agpt view`'s app against a real daemon (fake inspector, real ZeroMQ sockets): the HTTP API, the token,
uploads for add_product, the WebSocket push, and previews made only while a browser is connected."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip("starlette")
pytest.importorskip("httpx")

from _daemon_fakes import CountingSource, FakeInspector, daemon_config, make_bundle, running
from _view_helpers import poll
from starlette.testclient import TestClient

from runtime.errors import AgptError
from runtime.tools.view.app import STATIC, create_app
from runtime.tools.view.settings import ViewSettings, settings_from

TOKEN = "t0ken-for-tests"
PREFIX = "line1.station3"  # daemon_config's


@pytest.fixture
def line(tmp_path):
    """A running daemon on an endless counting camera, with shots_root, and the view's settings for it."""
    bundle = make_bundle(tmp_path / "bundle")
    shots = tmp_path / "shots"
    shots.mkdir()
    cfg = daemon_config(bundle, shots_root=shots, preview_fps=20)
    with running(cfg, FakeInspector(), source=CountingSource(period=0.005, shape=(120, 160))) as d:
        s = ViewSettings(publish=d.publish_endpoint, control=d.control_endpoint, prefix=PREFIX, token=TOKEN, uploads=shots / "up")
        yield d, s


def _png(value: int) -> bytes:
    rng = np.random.default_rng(value)
    ok, buf = cv2.imencode(".png", rng.integers(value, value + 60, (32, 32, 3), dtype=np.uint8))
    return buf.tobytes()


def _auth(token=TOKEN) -> dict:
    return {"Authorization": f"Bearer {token}"}


def test_page_and_assets_are_served_and_nothing_comes_from_the_internet(line):
    d, s = line
    with TestClient(create_app(s)) as c:
        page = c.get("/")
        assert page.status_code == 200 and "/static/app.js" in page.text and "/static/style.css" in page.text
        for name in ("app.js", "style.css"):
            assert c.get(f"/static/{name}").status_code == 200
    for f in STATIC.iterdir():  # every asset is ours: no CDN, no font service, no analytics
        assert not re.search(r"(src|href)=[\"']?(https?:)?//", f.read_text()), f
        assert "https://" not in f.read_text() and "http://" not in f.read_text(), f


def test_reading_needs_no_token(line):
    d, s = line
    with TestClient(create_app(s)) as c:
        prods = c.get("/api/products").json()
        assert prods["ok"] and prods["data"]["products"] == ["gadget", "widget"] and prods["data"]["active"] == "widget"
        st = poll(lambda: (j := c.get("/api/state").json()["data"])["status"] and j["cameras"] and j, 10)
        assert st["status"]["product"] == "widget" and "cam0" in st["cameras"]
        assert st["view"]["read_only"] is False and st["view"]["uploads"] is True
        assert c.get("/api/rejects/999999.jpg").status_code == 404


def test_control_is_refused_without_the_token(line):
    d, s = line
    with TestClient(create_app(s)) as c:
        for path, body in (("/api/swap", {"product": "gadget"}), ("/api/pause", {}), ("/api/ask", {"question": "why?"})):
            r = c.post(path, json=body)
            assert r.status_code == 401 and r.json() == {"ok": False, "error": "control actions need the token"}
            assert c.post(path, json=body, headers=_auth("wrong-token")).status_code == 401
            assert c.post(path, json=body, headers={"X-Agpt-Token": "wrong-token"}).status_code == 401
        r = c.post("/api/products", data={"name": "x1"}, files=[("files", ("a.png", _png(10), "image/png"))])
        assert r.status_code == 401
        assert not d.paused.is_set() and d.pack.name == "widget" and "x1" not in d.store.names()
    open_view = s.model_copy(update={"token": None})  # no token configured: the view is read-only
    with TestClient(create_app(open_view)) as c:
        r = c.post("/api/pause", headers=_auth())
        assert r.status_code == 403 and "read-only" in r.json()["error"]
        assert c.get("/api/products").status_code == 200
    assert not d.paused.is_set()


def test_control_with_the_token_swaps_pauses_and_asks(line):
    d, s = line
    with TestClient(create_app(s)) as c:
        r = c.post("/api/swap", json={"product": "gadget"}, headers=_auth())
        assert r.status_code == 200 and r.json()["data"]["product"] == "gadget", r.text
        assert d.pack.name == "gadget"
        r = c.post("/api/swap", json={"product": "nope"}, headers=_auth())
        assert r.status_code == 409 and "nope" in r.json()["error"]
        assert c.post("/api/swap", json={"product": "../etc"}, headers=_auth()).status_code == 400
        assert c.post("/api/pause", headers={"X-Agpt-Token": TOKEN}).json()["data"] == {"paused": True}
        assert d.paused.is_set()
        assert c.post("/api/resume", headers=_auth()).json()["data"] == {"paused": False}
        assert not d.paused.is_set()
        r = c.post("/api/ask", json={"question": "where is it?", "camera": "cam0"}, headers=_auth())
        assert r.status_code == 200 and r.json()["data"]["answer"].endswith("where is it?"), r.text
        assert c.post("/api/ask", json={"question": " "}, headers=_auth()).status_code == 400


def test_feedback_and_rollback_are_refused_without_the_token(line):
    d, s = line
    bank = d.pack.bank_id
    with TestClient(create_app(s)) as c:
        fb = {"frame_id": 3, "kind": "false_reject", "operator": "alice", "add_to_bank": True}
        for path, body in (("/api/feedback", fb), ("/api/rollback", {"product": "widget"})):
            r = c.post(path, json=body)
            assert r.status_code == 401 and r.json() == {"ok": False, "error": "control actions need the token"}
            assert c.post(path, json=body, headers=_auth("wrong-token")).status_code == 401
    with TestClient(create_app(s.model_copy(update={"token": None}))) as c:
        assert c.post("/api/feedback", json=fb, headers=_auth()).status_code == 403
        assert c.post("/api/rollback", json={"product": "widget"}, headers=_auth()).status_code == 403
    assert d.pack.bank_id == bank
    assert not (d.store.pack_path("widget").parent / "feedback.jsonl").exists()  # nothing was logged


def test_a_false_reject_joins_the_bank_and_rollback_brings_the_old_bank_back(line):
    """The reject window's buttons: a reject the view shows, marked by an operator, reaches the daemon's feedback
    (the pack rebuilt with that frame, a new bank id in the reply and on the line); rollback undoes it."""
    d, s = line
    old_bank = d.pack.bank_id
    with TestClient(create_app(s)) as c:
        poll(lambda: c.get("/api/state").json()["data"]["rejects"], 10)
        # paused, the daemon judges (and keeps) nothing more: the reject shown stays among its kept frames
        assert c.post("/api/pause", headers=_auth()).status_code == 200
        reject = c.get("/api/state").json()["data"]["rejects"][-1]
        assert reject["h"]["verdict"] is True and reject["h"]["bank_id"] == old_bank
        bad = {"frame_id": reject["frame_id"], "camera": reject["camera"], "kind": "false_reject"}
        assert c.post("/api/feedback", json=bad, headers=_auth()).status_code == 400  # no operator
        assert c.post("/api/feedback", json={**bad, "operator": "a", "kind": "x"}, headers=_auth()).status_code == 400
        assert c.post("/api/feedback", json={**bad, "operator": "a", "frame_id": 0}, headers=_auth()).status_code == 400
        r = c.post("/api/feedback", json={**bad, "operator": "alice", "add_to_bank": True}, headers=_auth())
        assert r.status_code == 200, r.text
        data = r.json()["data"]
        assert data["kind"] == "false_reject" and data["operator"] == "alice" and data["frame_id"] == reject["frame_id"]
        assert data["previous_bank_id"] == old_bank and data["new_bank_id"] != old_bank and data["n_shots"] == 3
        assert d.pack.bank_id == data["new_bank_id"]  # swapped in on the line
        r = c.post("/api/feedback", json={**bad, "kind": "missed_defect", "operator": "bob"}, headers=_auth())
        assert r.status_code == 200 and r.json()["data"]["kind"] == "missed_defect", r.text
        r = c.post("/api/feedback", json={**bad, "operator": "bob", "frame_id": 10**9}, headers=_auth())
        assert r.status_code == 409 and "not kept" in r.json()["error"]
        assert c.post("/api/rollback", json={"product": "../x"}, headers=_auth()).status_code == 400
        r = c.post("/api/rollback", json={"product": "widget", "operator": "alice"}, headers=_auth())
        assert r.status_code == 200, r.text
        back = r.json()["data"]
        assert back["bank_id"] == old_bank and back["previous_bank_id"] == data["new_bank_id"]
        assert d.pack.bank_id == old_bank
    logged = (d.store.pack_path("widget").parent / "feedback.jsonl").read_text().splitlines()
    assert [json.loads(x)["kind"] for x in logged] == ["false_reject", "missed_defect", "rollback"]


def test_add_product_from_uploaded_shots(line):
    d, s = line
    with TestClient(create_app(s)) as c:
        files = [("files", (f"../../evil{i}.png", _png(40 + i), "image/png")) for i in range(3)]
        r = c.post("/api/products", data={"name": "sprocket", "description": "a sprocket", "activate": "true"},
                   files=files, headers=_auth())  # fmt: skip
        assert r.status_code == 200, r.text
        data = r.json()["data"]
        assert data["product"] == "sprocket" and data["n_shots"] == 3 and data["changeover"]["product"] == "sprocket"
        saved = sorted(Path(data["saved_in"]).iterdir())
        assert [p.name for p in saved] == ["shot_00.png", "shot_01.png", "shot_02.png"]  # our names, not the browser's
        assert Path(data["saved_in"]).parent == s.uploads and "sprocket" in d.store.names() and d.pack.name == "sprocket"
        bad = c.post("/api/products", data={"name": "junk"}, files=[("files", ("a.png", b"not an image", "image/png"))],
                     headers=_auth())  # fmt: skip
        assert bad.status_code == 400 and "PNG" in bad.json()["error"]
        assert c.post("/api/products", data={"name": ".hidden"}, files=files[:1], headers=_auth()).status_code == 400
        assert c.post("/api/products", data={"name": "empty"}, headers=_auth()).status_code == 400
        again = c.post("/api/products", data={"name": "sprocket"}, files=files[:1], headers=_auth())
        assert again.status_code == 409 and "exists" in again.json()["error"]
    no_uploads = s.model_copy(update={"uploads": None})
    with TestClient(create_app(no_uploads)) as c:
        r = c.post("/api/products", data={"name": "x2"}, files=files[:1], headers=_auth())
        assert r.status_code == 503


def test_websocket_pushes_results_frames_and_rejects_and_previews_follow_the_browsers(line):
    d, s = line
    with TestClient(create_app(s)) as c:
        assert not d.preview.active  # the view runs, but nobody looks: the daemon makes no previews
        with c.websocket_connect("/ws") as ws:
            hello = ws.receive_json()
            assert hello["t"] == "hello" and hello["prefix"] == PREFIX and hello["read_only"] is False
            got: dict[str, list] = {"result": [], "frame": [], "reject": []}
            results_by_id = {}
            while len(got["result"]) < 20 or not got["frame"] or not got["reject"]:
                m = ws.receive_json()
                if m["t"] in got:
                    got[m["t"]].append(m)
                if m["t"] == "result":
                    results_by_id[m["h"]["frame_id"]] = m["h"]
            assert d.preview.active
            f = got["frame"][0]
            assert f["camera"] == "cam0" and f["p"]["frame_width"] == 160 and f["p"]["frame_height"] == 120
            jpeg = base64.b64decode(f["jpeg"])
            img = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
            assert img.shape == (120, 160, 3)
            assert f["h"]["frame_id"] == f["frame_id"] == f["p"]["frame_id"]  # the overlay is this frame's own map
            mask = cv2.imdecode(np.frombuffer(base64.b64decode(f["mask"]), np.uint8), cv2.IMREAD_GRAYSCALE)
            assert mask.shape == (224, 224) and mask[0, 0] == 255  # the fake map's hot corner
            r = got["reject"][0]["r"]
            assert r["h"]["verdict"] is True and r["mask"]
            assert c.get(f"/api/rejects/{r['id']}/mask.png").status_code == 200
            assert c.get("/api/frames/cam0.jpg").content[:3] == b"\xff\xd8\xff"
        assert poll(lambda: not d.preview.active, 10), "previews still made after the last browser left"
    st = d.status()
    assert st.drops.publish == 0
    pv = st.sinks["preview"]  # the preview's counters travel in the status like a sink's
    assert pv.connected is None and pv.delivered >= len(got["frame"]) and pv.dropped == d.preview.stats()["dropped"]


def test_settings_from_a_config_file_and_from_endpoints(tmp_path):
    (tmp_path / "shots").mkdir()
    (tmp_path / "token.txt").write_text("from-a-file-123\n")
    cfg = tmp_path / "line.yaml"
    cfg.write_text(
        "bundle: b\nproduct: p\ncamera: {kind: folder, source: f}\npublish: tcp://*:6000\ncontrol: tcp://127.0.0.1:6001\n"
        "topic_prefix: l2.s9\nshots_root: shots\nview: {listen: '127.0.0.1:9001', token_file: token.txt, rejects: 5}\n"
        "archive: {url: 'sqlite:///arch/results.db'}\n"
    )
    s = settings_from(str(cfg))
    assert (s.publish, s.control, s.prefix) == ("tcp://127.0.0.1:6000", "tcp://127.0.0.1:6001", "l2.s9")
    assert s.host_port == ("127.0.0.1", 9001) and s.loopback and s.token == "from-a-file-123" and s.rejects == 5
    assert s.uploads == (tmp_path / "shots" / "view-uploads").resolve()
    assert s.archive.url == f"sqlite:///{(tmp_path / 'arch' / 'results.db').resolve()}" and s.bundle == (tmp_path / "b").resolve()
    assert settings_from(str(cfg), listen="0.0.0.0:80", token="cli-token-1").loopback is False
    assert settings_from(str(cfg), token="cli-token-1").token == "cli-token-1"
    with pytest.raises(AgptError, match="outside shots_root"):
        settings_from(str(cfg), uploads=tmp_path / "elsewhere")
    e = settings_from("tcp://10.0.0.5:5555,tcp://10.0.0.5:5556", prefix="a.b")
    assert (e.publish, e.control, e.prefix, e.token, e.uploads) == (
        "tcp://10.0.0.5:5555",
        "tcp://10.0.0.5:5556",
        "a.b",
        None,
        None,
    )
    assert settings_from("tcp://10.0.0.5:5555").control is None
    with pytest.raises(AgptError):
        settings_from("tcp://a:1,tcp://b:2,tcp://c:3")


def test_agpt_view_is_a_command():
    import subprocess
    import sys

    from runtime.cli import COMMANDS

    assert COMMANDS[("view",)][0] == "runtime.tools.view"
    out = subprocess.run([sys.executable, "-m", "runtime.cli", "view", "--help"], capture_output=True, text=True, timeout=60,
                         cwd=Path(__file__).resolve().parents[2])  # fmt: skip
    assert out.returncode == 0 and "--daemon" in out.stdout and "--token" in out.stdout


def test_a_slow_browser_loses_its_oldest_messages_not_the_reader():
    import asyncio

    from runtime.tools.view.link import Client

    async def go():
        c = Client(size=4)
        for i in range(10):
            c.put(str(i))
        return [c.queue.get_nowait() for _ in range(4)], c.dropped

    assert asyncio.run(go()) == (["6", "7", "8", "9"], 6)


def test_state_matches_previews_with_their_results():
    from runtime.line.messages import PreviewHeader, ResultHeader
    from runtime.tools.view.state import ViewState

    st = ViewState(rejects=2)
    for fid in range(1, 6):
        h = ResultHeader(frame_id=fid, camera="c", line="l", prefix="l", product="p", bank_id="b", capture_time=0.0,
                         publish_time=0.0, verdict=fid % 2 == 1, score=0.9, judge="calibrated-score")  # fmt: skip
        st.on_result(h, b"png%d" % fid)
    assert [r.frame_id for r in st.rejects] == [3, 5]  # the last two kept
    p = PreviewHeader(frame_id=5, camera="c", capture_time=0.0, publish_time=0.0, width=4, height=3, frame_width=8,
                      frame_height=6, reject=True)  # fmt: skip
    out = st.on_preview(p, b"\xff\xd8\xffjpeg")
    assert out[0]["h"]["frame_id"] == 5 and base64.b64decode(out[0]["mask"]) == b"png5"
    assert out[1]["t"] == "reject" and st.rejects[-1].jpeg == b"\xff\xd8\xffjpeg"
    assert st.on_preview(p.model_copy(update={"frame_id": 99}), b"j")[0]["mask"] is None and st.unmatched_previews == 1


def test_agpt_view_serves_the_page_for_a_running_daemon(line):
    """The command itself (uvicorn in its own process), as an operator starts it."""
    import json
    import socket
    import subprocess
    import sys
    import urllib.request

    d, s = line
    with socket.socket() as so:
        so.bind(("127.0.0.1", 0))
        port = so.getsockname()[1]
    cmd = [sys.executable, "-m", "runtime.cli", "view", "--daemon", f"{d.publish_endpoint},{d.control_endpoint}",
           "--prefix", PREFIX, "--listen", f"127.0.0.1:{port}"]  # fmt: skip
    proc = subprocess.Popen(
        cmd, cwd=Path(__file__).resolve().parents[2], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )

    def state():
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/state", timeout=1) as r:
                j = json.loads(r.read())
                return j["data"] if j["data"]["status"] else None
        except OSError:
            return None

    try:
        got = poll(state, 30)
        assert got and got["status"]["product"] == "widget" and got["view"]["read_only"] is True
        req = urllib.request.Request(f"http://127.0.0.1:{port}/api/pause", method="POST", data=b"{}")
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, timeout=5)
        assert e.value.code == 403 and not d.paused.is_set()
    finally:
        proc.terminate()
        out = proc.communicate(timeout=15)[0]
    assert f"http://127.0.0.1:{port}/" in out and "read-only" in out


def test_a_view_with_curve_keys_reads_and_controls_a_curve_daemon(tmp_path):
    """A daemon that authenticates its clients (its control reachable from other machines): the view with an
    authorised key gets the results and the control channel; without keys it is refused at start."""
    import zmq.auth

    keys, clients = tmp_path / "keys", tmp_path / "clients"
    keys.mkdir()
    clients.mkdir()
    server_pub, server_sec = zmq.auth.create_certificates(keys, "server")
    client_pub, client_sec = zmq.auth.create_certificates(keys, "view")
    Path(client_pub).rename(clients / "view.key")
    bundle = make_bundle(tmp_path / "bundle")
    curve = {"server_secret_key": server_sec, "authorized_clients": clients}
    cfg = daemon_config(bundle, control="tcp://0.0.0.0:*", curve=curve)
    with running(cfg, FakeInspector(), source=CountingSource(period=0.005)) as d:
        port = d.control_endpoint.rsplit(":", 1)[1]
        s = settings_from(f"{d.publish_endpoint},tcp://127.0.0.1:{port}", prefix=PREFIX, token=TOKEN,
                          server_key=Path(server_pub), client_key=Path(client_sec))  # fmt: skip
        with TestClient(create_app(s)) as c:
            assert c.get("/api/products").json()["data"]["active"] == "widget"
            with c.websocket_connect("/ws") as ws:
                ws.receive_json()
                assert poll(lambda: ws.receive_json()["t"] == "result", 10)
            assert c.post("/api/pause", headers=_auth()).json()["data"] == {"paused": True}
        assert d.paused.is_set()
    with pytest.raises(AgptError, match="both"):
        settings_from("tcp://127.0.0.1:1", server_key=Path(server_pub))


def test_a_view_started_late_shows_the_rejects_the_archive_kept(tmp_path):
    """With the daemon's archive (SQLite, reject images), a view that starts after the rejects has them at once."""
    pytest.importorskip("sqlalchemy")
    from runtime.sinks.archive.config import ArchiveConfig

    bundle = make_bundle(tmp_path / "bundle")
    archive = ArchiveConfig(url=f"sqlite:///{tmp_path}/archive.db", images="rejects")
    cfg = daemon_config(bundle, archive=archive, frames=30)
    with running(cfg, FakeInspector(), source=CountingSource(n=30, shape=(120, 160))) as d:
        assert d.wait(30)  # shutdown (leaving the block) flushes the archive's writer
    # CountingSource: every third frame is bright, and the fake judges it anomalous: 10 rejects, the last 4 shown
    s = ViewSettings(publish="tcp://127.0.0.1:1", control=None, prefix=PREFIX, archive=archive, rejects=4)
    with TestClient(create_app(s)) as c:
        rs = c.get("/api/state").json()["data"]["rejects"]
        assert [r["frame_id"] for r in rs] == [21, 24, 27, 30] and all(r["h"]["archived"] and r["has_jpeg"] for r in rs)
        jpg = c.get(f"/api/rejects/{rs[-1]['id']}.jpg")
        img = cv2.imdecode(np.frombuffer(jpg.content, np.uint8), cv2.IMREAD_COLOR)
        assert img.shape == (120, 160, 3) and img.mean() > 150  # the bright frame itself
        assert c.get(f"/api/rejects/{rs[-1]['id']}/mask.png").content[:4] == b"\x89PNG"
    other = s.model_copy(update={"prefix": "other.station"})  # another station's rows are not this view's
    with TestClient(create_app(other)) as c:
        assert c.get("/api/state").json()["data"]["rejects"] == []
    broken = s.model_copy(update={"archive": ArchiveConfig(url=f"sqlite:///{tmp_path}/missing.db")})
    with TestClient(create_app(broken)) as c:  # no archive there: an empty strip, not a failure
        assert c.get("/api/state").json()["data"]["rejects"] == []
