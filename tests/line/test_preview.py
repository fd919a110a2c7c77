"""The preview topic's gate (runtime/line/preview.py): rate limit per camera, off without subscribers
(a real XPUB publisher and real SUB sockets), JPEG downscaling, and wildcard subscribers left alone."""

from __future__ import annotations

import time

import cv2
import numpy as np
import pytest
import zmq

from runtime.line.messages import PreviewHeader
from runtime.line.preview import PreviewGate, encode_preview
from runtime.line.publish import Publisher
from runtime.tools.subscribe import ResultSubscriber


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def _gate(fps=5.0, clock=None, sent=None):
    sent = [] if sent is None else sent
    g = PreviewGate("l.s.preview", fps, 64, lambda h, j: sent.append((h, j)) or True, clock=clock or Clock())
    return g, sent


def _poll(cond, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.01)
    return cond()


def test_rate_limit_per_camera_and_rejects_have_their_own():
    clock = Clock()
    g, _ = _gate(fps=4.0, clock=clock)  # steps of 1/8 s: exact in binary
    g.subscription(b"\x01l.s.preview")
    assert g.want("a") and not g.want("a")  # 0.25 s between two previews of one camera
    assert g.want("b")  # another camera has its own budget
    clock.t += 0.125
    assert not g.want("a")
    assert g.want("a", reject=True) and not g.want("a", reject=True)  # a reject: its own 4/s on top
    clock.t += 0.125
    assert g.want("a") and not g.want("a")
    # 10 s of 100 frames/s, a third of them rejected: at most 4 + 4 previews a second
    taken = 0
    for i in range(1000):
        clock.t += 0.01
        taken += g.want("a", reject=i % 3 == 0)
    assert 70 <= taken <= 81


def test_off_without_subscribers_and_for_fps_zero():
    g, _ = _gate()
    assert not g.active and not g.want("a")
    g.subscription(b"\x01l.s.")  # a wildcard (agpt subscribe, a controller) asks for no JPEGs
    g.subscription(b"\x01")
    assert not g.active
    g.subscription(b"\x01l.s.preview")
    assert g.active
    g.subscription(b"\x00l.s.preview")  # ZeroMQ sends this once the last subscriber has gone
    assert not g.active and not g.want("a")
    off, _ = _gate(fps=0)
    off.subscription(b"\x01l.s.preview")
    assert not off.active and not off.want("a")


def test_encode_preview_downscales_and_keeps_the_aspect():
    img = np.zeros((480, 640, 3), np.uint8)
    img[100:200, 300:400] = 255
    jpeg, w, h = encode_preview(img, 320, 80)
    assert (w, h) == (320, 240)
    back = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert back.shape == (240, 320, 3) and back[75, 175].mean() > 200 and back[10, 10].mean() < 30
    small = np.zeros((60, 80, 3), np.uint8)
    assert encode_preview(small, 320, 80)[1:] == (80, 60)  # never scaled up


def test_offer_keeps_only_the_newest_frame_per_camera_until_encoded():
    g, sent = _gate()
    g.subscription(b"\x01l.s.preview")
    img = np.zeros((32, 32, 3), np.uint8)
    assert g.offer("a", 1, img, 1.0)
    g.clock.t += 1
    assert g.offer("a", 2, img, 2.0)  # the encoder thread is not running: frame 1 is replaced
    assert g.replaced == 1
    g.start()
    try:
        assert _poll(lambda: g.sent == 1)
    finally:
        g.stop()
    h, jpeg = sent[0]
    assert isinstance(h, PreviewHeader) and h.frame_id == 2 and jpeg[:3] == b"\xff\xd8\xff"


def test_real_xpub_turns_previews_on_and_off():
    """Publisher + gate on real sockets: no subscriber, no preview made; a SUB to <prefix>.preview gets them;
    one of two subscribers leaving keeps them on; the last leaving turns them off."""
    ctx = zmq.Context()
    pub = Publisher(ctx, "tcp://127.0.0.1:*", "l.s", heartbeat_s=0.2)
    gate = PreviewGate(pub.topic("preview"), 50.0, 64, pub.publish_preview)
    pub.on_subscription = gate.subscription
    pub.start()
    gate.start()
    img = np.full((120, 160, 3), 90, np.uint8)
    subs = []
    try:
        for i in range(5):
            gate.clock = lambda i=i: 100.0 + i
            assert not gate.offer("cam0", i + 1, img, time.time())
        assert gate.offered == 0
        wild = ResultSubscriber(pub.endpoint, ["l.s."], ctx=ctx)  # sees previews while on, never turns them on
        subs.append(wild)
        for _ in range(2):
            s = ctx.socket(zmq.SUB)
            s.setsockopt(zmq.SUBSCRIBE, b"l.s.preview")
            s.connect(pub.endpoint)
            subs.append(s)
        assert _poll(lambda: gate.active)
        frame_id = [10]

        def offered_and_received(sock) -> bool:
            frame_id[0] += 1
            gate.offer("cam0", frame_id[0], img, time.time())  # 50/s: every offer 20 ms apart passes
            return bool(sock.poll(20))

        assert _poll(lambda: offered_and_received(subs[1]))
        topic, header, jpeg = subs[1].recv_multipart()
        h = PreviewHeader.model_validate_json(header)
        assert topic == b"l.s.preview" and h.camera == "cam0" and (h.width, h.height) == (64, 48)
        assert (h.frame_width, h.frame_height) == (160, 120) and jpeg[:2] == b"\xff\xd8"
        for _ in range(3):
            wild.recv(0.5)
        assert wild.malformed == 0  # the result subscriber skips previews quietly
        subs[1].close()
        time.sleep(0.3)  # no event to wait on for "nothing happened": give a stray unsubscribe time to arrive
        assert gate.active
        subs[2].close()
        assert _poll(lambda: not gate.active)
        before = gate.offered
        gate.clock = lambda: 1e6
        assert not gate.offer("cam0", 999, img, time.time()) and gate.offered == before
        assert pub.drops == 0
    finally:
        for s in subs:
            s.close()
        gate.stop()
        pub.stop()
        ctx.term()


@pytest.mark.parametrize("fps", [0.5, 5.0])
def test_header_rejects_nothing_the_gate_makes(fps):
    g, sent = _gate(fps=fps)
    g.subscription(b"\x01l.s.preview")
    g.offer("c", 1, np.zeros((10, 300, 3), np.uint8), 0.0, reject=True)
    g.encode_one("c", g._pending.pop("c"))
    h, _ = sent[0]
    assert h.reject and (h.width, h.height) == (64, 2)
