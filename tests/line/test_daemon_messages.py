"""Daemon config (YAML -> pydantic, errors name file and field), message models, control request parsing,
and docs/messages.md kept in sync with the models."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the shared fakes

from runtime.errors import AgptError
from runtime.line.config import CameraConfig, is_local_endpoint, load_config, parse_config
from runtime.line.messages import (
    SUBSCRIBER_EXAMPLE,
    AddProductRequest,
    AskRequest,
    Drops,
    RequestError,
    ResultHeader,
    Status,
    SwapBankRequest,
    parse_request,
    schema_markdown,
)
from runtime.tools.subscribe import ResultSubscriber, StatusMessage, format_result, mask_to_frame

ROOT = Path(__file__).resolve().parents[2]


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "line.yaml"
    p.write_text(text)
    return p


MINIMAL = "bundle: b\nproduct: cookie\ncamera: {kind: folder, source: imgs}\n"


def test_example_config_loads_and_resolves_paths():
    cfg = load_config(ROOT / "configs" / "line-example.yaml")
    assert cfg.bundle == (ROOT / "models" / "anomalygpt").resolve()
    assert cfg.publish == "tcp://127.0.0.1:5555" and cfg.control == "tcp://127.0.0.1:5556"
    assert cfg.line == "line1" and cfg.station == "station3"


def test_every_config_field_is_documented():
    from runtime.line.config import BackendConfig, CurveConfig, DaemonConfig

    for model in (DaemonConfig, CameraConfig, BackendConfig, CurveConfig):
        for name, f in model.model_fields.items():
            assert f.description, f"{model.__name__}.{name} has no description"


def test_minimal_config_relative_paths(tmp_path):
    cfg = load_config(_write(tmp_path, MINIMAL))
    assert cfg.bundle == tmp_path / "b"
    assert cfg.camera.source == str(tmp_path / "imgs")
    assert cfg.verdict_mode == "first_token" and cfg.frames is None


@pytest.mark.parametrize(
    "text, where",
    [
        (MINIMAL + "sndhwm: -3\n", "sndhwm"),
        (MINIMAL.replace("kind: folder", "kind: floppy"), "camera.kind"),
        (MINIMAL + "camera_typo: 1\n", "camera_typo"),
        (MINIMAL.replace("source: imgs", "source: imgs, fps_limit: 0"), "camera.fps_limit"),
        (MINIMAL.replace("cookie", "../etc"), "product"),
        (MINIMAL + "verdict_mode: vibes\n", "verdict_mode"),
        (MINIMAL + "publish: http://x\n", "publish"),
        (MINIMAL + "topic_prefix: 'line 1'\n", "topic_prefix"),
        ("bundle: b\nproduct: cookie\ncamera: {kind: gstreamer, source: 'v4l2src ! fakesink'}\n", "camera"),
        ("bundle: b\nproduct: cookie\ncamera: {kind: device, source: 0, when_full: wait}\n", "camera"),
        (MINIMAL + "control: tcp://0.0.0.0:5556\n", "control"),
        (MINIMAL + "control: tcp://*:5556\n", "control"),
    ],
)
def test_config_errors_name_file_and_field(tmp_path, text, where):
    with pytest.raises(AgptError) as e:
        load_config(_write(tmp_path, text))
    msg = str(e.value)
    assert msg.startswith(str(tmp_path / "line.yaml") + f": {where}"), msg
    assert "\n" not in msg


def test_config_unreadable_and_not_yaml(tmp_path):
    with pytest.raises(AgptError, match="cannot read config"):
        load_config(tmp_path / "absent.yaml")
    with pytest.raises(AgptError, match="not valid YAML"):
        load_config(_write(tmp_path, "a: [1, 2\n"))
    with pytest.raises(AgptError, match="mapping"):
        load_config(_write(tmp_path, "- 1\n"))


def test_remote_control_needs_curve(tmp_path):
    text = (
        MINIMAL + "control: tcp://0.0.0.0:5556\ncurve: {server_secret_key: k/server.key_secret, authorized_clients: k/clients}\n"
    )
    cfg = load_config(_write(tmp_path, text))
    assert cfg.curve.server_secret_key == tmp_path / "k" / "server.key_secret"
    for ep, local in [("tcp://127.0.0.1:1", True), ("tcp://127.8.0.1:1", True), ("tcp://localhost:1", True),
                      ("tcp://[::1]:1", True), ("ipc:///tmp/x", True), ("inproc://x", True), ("tcp://*:1", False),
                      ("tcp://10.0.0.2:1", False), ("tcp://eth0:1", False)]:  # fmt: skip
        assert is_local_endpoint(ep) is local, ep


def test_overrides_from_cli(tmp_path):
    cfg = load_config(_write(tmp_path, MINIMAL), frames=5, product="gadget", log_level=None)
    assert cfg.frames == 5 and cfg.product == "gadget" and cfg.log_level == "INFO"
    with pytest.raises(AgptError, match="frames"):
        parse_config({"bundle": "b", "product": "x", "camera": {"kind": "folder", "source": "f"}, "frames": 0})


# ---- control requests ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw, fragment",
    [
        (b"", "not JSON"),
        (b"\xff\xfe", "not JSON"),
        (b"[1, 2]", "JSON object"),
        (b"{}", "missing 'cmd'"),
        (b'{"cmd": "format_disk"}', "does not match"),
        (b'{"cmd": 3}', ""),
        (b'{"cmd": "status", "extra": 1}', "extra"),
        (b'{"cmd": "swap_bank"}', "product"),
        (b'{"cmd": "swap_bank", "product": "../../etc"}', "product"),
        (b'{"cmd": "swap_bank", "product": "a/b"}', "product"),
        (b'{"cmd": "swap_bank", "product": ".hidden"}', "product"),
        (b'{"cmd": "swap_bank", "product": 7}', "product"),
        (b'{"cmd": "swap_bank", "product": "' + b"a" * 65 + b'"}', "product"),
        (b'{"cmd": "ask", "question": ""}', "question"),
        (b'{"cmd": "ask", "question": "q", "frame_id": "3"}', "frame_id"),
        (b'{"cmd": "ask", "question": "q", "frame_id": true}', "frame_id"),
        (b'{"cmd": "add_product", "name": "x", "shots": []}', "shots"),
        (b'{"cmd": "add_product", "name": "x", "shots": ["a"], "replace": "yes"}', "replace"),
        (b"[" * 1000, "not JSON"),
        (b'{"cmd": "status", "pad": "' + b"x" * 2000 + b'"}', "exceeds"),
    ],
)
def test_malformed_requests_are_one_line_errors(raw, fragment):
    with pytest.raises(RequestError) as e:
        parse_request(raw, max_bytes=1024)
    assert fragment in str(e.value) and "\n" not in str(e.value) and len(str(e.value)) <= 300


def test_valid_requests():
    assert isinstance(parse_request(b'{"cmd": "swap_bank", "product": "cookie.v2_A-1", "id": 9}'), SwapBankRequest)
    r = parse_request(json.dumps({"cmd": "add_product", "name": "x", "description": "d", "shots": ["/a.png"]}).encode())
    assert isinstance(r, AddProductRequest) and not r.activate
    a = parse_request(b'{"cmd": "ask", "question": "where?", "frame_id": 4}')
    assert isinstance(a, AskRequest) and a.frame_id == 4
    with pytest.raises(RequestError) as e:
        parse_request(b'{"cmd": "nope", "id": "abc"}')
    assert e.value.req_id == "abc"


# ---- messages, subscriber helpers, docs -------------------------------------------------------------------


def _header(seq: int, frame_id: int) -> ResultHeader:
    return ResultHeader(
        seq=seq, frame_id=frame_id, camera="cam0", line="l", station="s", prefix="l.s", product="p", bank_id="b",
        capture_time=1.0, publish_time=1.1, verdict=True, p_anomaly=0.9, score=0.8, judge="llm-first_token",
        locations=["top left"], latency_ms={"total": 12.0}, drops=Drops(),
    )  # fmt: skip


def test_subscriber_counts_seq_gaps_and_ignores_resent_status():
    sub = ResultSubscriber.__new__(ResultSubscriber)
    sub.last_seq, sub.lost, sub.malformed = {}, {}, 0
    import cv2

    png = cv2.imencode(".png", np.zeros((224, 224), np.uint8))[1].tobytes()
    for seq in (1, 2, 5, 6):
        assert sub.parse([b"l.s.result", _header(seq, seq).model_dump_json().encode(), png]) is not None
    assert sub.lost == {"l.s.result": 2}
    st = Status(seq=3, time=0, uptime_s=0, fps=0, queue_depth=0, drops=Drops(), product=None, bank_id=None, camera="c",
                camera_state="open", frames_captured=0, frames_judged=0, paused=False)  # fmt: skip
    for _ in range(2):  # the late-joiner re-send repeats a seq: not a loss, not a gap
        assert isinstance(sub.parse([b"l.s.status", st.model_dump_json().encode()]), StatusMessage)
    assert "l.s.status" not in sub.lost
    assert sub.parse([b"l.s.result", b"{not json", b""]) is None and sub.malformed == 1
    line = format_result(_header(1, 42))
    assert "frame     42" in line and "ANOMALY" in line and "top left" in line


def test_mask_to_frame_undoes_the_crop():
    from runtime.line.messages import FrameTransformInfo
    from runtime.pipeline.preprocess import plan

    t = plan(300, 400)  # landscape: resized 224x298, crop left 37
    info = FrameTransformInfo(**t.as_dict())
    mask = np.zeros((224, 224), np.uint8)
    mask[:, :112] = 255
    full = mask_to_frame(mask, info)
    assert full.shape == (300, 400)
    assert full[150, 5] == 0  # the cropped-away margin
    assert full[150, 100] == pytest.approx(1.0) and full[150, 300] == 0


def test_docs_messages_md_is_generated_from_the_models():
    doc = (ROOT / "docs" / "messages.md").read_text()
    assert doc == schema_markdown(), "regenerate: python -m runtime.line.messages > docs/messages.md"
    assert len(SUBSCRIBER_EXAMPLE.strip().splitlines()) <= 16


def test_subscriber_example_runs_against_a_publisher():
    """The copy-paste example must work on a real message (run with a one-message socket pair)."""
    import zmq

    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    code = SUBSCRIBER_EXAMPLE.replace("tcp://127.0.0.1:5555", f"tcp://127.0.0.1:{port}").replace(
        "while True:", "for _ in range(1):"
    )
    code = code.replace("ctx = zmq.Context()", "ctx = zmq.Context.instance()")
    import threading
    import time

    import cv2

    h = _header(1, 7)
    png = cv2.imencode(".png", np.full((224, 224), 200, np.uint8))[1].tobytes()
    stop = threading.Event()

    def send():
        while not stop.is_set():
            pub.send_multipart([b"line1.station1.result", h.model_dump_json().encode(), png])
            time.sleep(0.02)

    t = threading.Thread(target=send, daemon=True)
    t.start()
    scope: dict = {}
    try:
        exec(compile(code, "example", "exec"), scope)
    finally:
        stop.set()
        t.join()
        pub.close(0)
        ctx.term()
    assert scope["h"]["frame_id"] == 7 and scope["defect"].all()
