"""A client for the daemon's results, and `agpt subscribe ENDPOINT [--topic ...] [--save-masks DIR]`.

    from runtime.tools.subscribe import ResultSubscriber, ResultMessage
    with ResultSubscriber("tcp://127.0.0.1:5555", ["line1.station1.result"]) as sub:
        for msg in sub:
            if isinstance(msg, ResultMessage) and msg.header.verdict:
                print(msg.header.frame_id, msg.header.locations, msg.mask.shape)

docs/messages.md has the schema and a bare-pyzmq version for controllers without this package.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zmq

from runtime.errors import AgptError
from runtime.line.messages import Event, FrameTransformInfo, ResultHeader, Status
from runtime.line.publish import apply_curve_client, apply_socket_limits


@dataclass
class ResultMessage:
    topic: str
    header: ResultHeader
    mask: np.ndarray | None  # (224, 224) uint8, map = mask / 255
    png: bytes


@dataclass
class StatusMessage:
    topic: str
    status: Status


@dataclass
class EventMessage:
    topic: str
    event: Event


Message = ResultMessage | StatusMessage | EventMessage


def mask_to_frame(mask: np.ndarray, t: FrameTransformInfo) -> np.ndarray:
    """The 224x224 mask (uint8 or float) -> a float32 map in [0,1] over the camera frame (cropped margins 0)."""
    from runtime.pipeline.preprocess import FrameTransform, map_to_frame

    m = mask.astype(np.float32) / (255.0 if mask.dtype == np.uint8 else 1.0)
    return map_to_frame(m, FrameTransform(**t.model_dump()))


class ResultSubscriber:
    """SUB socket + parsing + loss accounting. `lost[topic]` counts seq gaps (messages this client missed)."""

    def __init__(
        self,
        endpoint: str,
        topics: Sequence[str] = ("",),
        ctx: zmq.Context | None = None,
        curve: dict | None = None,
        rcvhwm: int = 1000,
        max_message_bytes: int = 64 << 20,
    ):
        self._own = ctx is None
        self.ctx = ctx or zmq.Context()
        self.sock = self.ctx.socket(zmq.SUB)
        apply_socket_limits(self.sock, max_message_bytes)
        self.sock.setsockopt(zmq.RCVHWM, rcvhwm)
        if curve:
            apply_curve_client(self.sock, curve)
        for t in topics:
            self.sock.setsockopt(zmq.SUBSCRIBE, t.encode())
        self.sock.connect(endpoint)
        self.topics = list(topics)
        self.last_seq: dict[str, int] = {}
        self.lost: dict[str, int] = {}
        self.received = 0
        self.malformed = 0

    def _account(self, topic: str, seq: int) -> None:
        last = self.last_seq.get(topic)
        if last is not None and seq > last + 1:
            self.lost[topic] = self.lost.get(topic, 0) + seq - last - 1
        self.last_seq[topic] = seq  # a smaller seq: the daemon restarted; count from here

    def parse(self, frames: list[bytes]) -> Message | None:
        topic = frames[0].decode(errors="replace")
        kind = topic.rsplit(".", 1)[-1]
        try:
            if kind == "result" and len(frames) >= 3:
                header = ResultHeader.model_validate_json(frames[1])
                mask = None
                if frames[2]:
                    import cv2

                    mask = cv2.imdecode(np.frombuffer(frames[2], np.uint8), cv2.IMREAD_GRAYSCALE)
                msg: Message = ResultMessage(topic, header, mask, frames[2])
                seq = header.seq
            elif kind == "status":
                msg = StatusMessage(topic, Status.model_validate_json(frames[1]))
                seq = msg.status.seq
            elif kind == "event":
                msg = EventMessage(topic, Event.model_validate_json(frames[1]))
                seq = msg.event.seq
            elif kind == "preview":  # a view's JPEGs reach wildcard subscribers too: not ours, not malformed
                return None
            else:
                raise ValueError(topic)
        except Exception:
            self.malformed += 1
            return None
        if not (isinstance(msg, StatusMessage) and self.last_seq.get(topic) == seq):  # a re-sent last status
            self._account(topic, seq)
        return msg

    def recv(self, timeout_s: float | None = None) -> Message | None:
        """The next message, or None after timeout_s (None: wait forever)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            wait = None if deadline is None else max(0, int((deadline - time.monotonic()) * 1000))
            if not self.sock.poll(wait):
                return None
            msg = self.parse(self.sock.recv_multipart())
            if msg is not None:
                self.received += 1
                return msg
            if deadline is not None and time.monotonic() >= deadline:
                return None

    def __iter__(self) -> Iterator[Message]:
        while True:
            msg = self.recv()
            if msg is not None:
                yield msg

    def close(self) -> None:
        self.sock.close()
        if self._own:
            self.ctx.term()

    def __enter__(self) -> ResultSubscriber:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ---- agpt subscribe ----------------------------------------------------------------------------------


@dataclass
class Tally:
    """Results seen and, where the source knows the truth (a synthetic line), how many verdicts were right."""

    results: int = 0
    labelled: int = 0
    correct: int = 0

    def add(self, h: ResultHeader) -> None:
        self.results += 1
        if h.truth is not None and h.truth.label is not None and h.verdict is not None:
            self.labelled += 1
            self.correct += int(h.verdict == h.truth.label)

    @property
    def accuracy(self) -> tuple[int, int]:
        return self.correct, self.labelled


def format_result(h: ResultHeader, accuracy: tuple[int, int] | None = None) -> str:
    verdict = "ANOMALY" if h.verdict else ("ok" if h.verdict is False else "??")
    p = f" p={h.p_anomaly:.3f}" if h.p_anomaly is not None else ""
    where = f" at {', '.join(h.locations)}" if h.locations else ""
    lat = h.latency_ms.get("total")
    lat_s = f"  {lat:.1f} ms" if lat is not None else ""
    truth = ""
    if h.truth is not None and h.truth.label is not None:
        truth = f"  truth={'anomaly' if h.truth.label else 'ok'}"
        if accuracy and accuracy[1]:
            truth += f" acc={accuracy[0] / accuracy[1]:.3f} ({accuracy[1]})"
    return f"frame {h.frame_id:>6} {h.camera} {h.product}@{h.bank_id} {verdict:<7}{p} score={h.score:.3f}{where}{lat_s}{truth}"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("endpoint", help="the daemon's publish endpoint, e.g. tcp://127.0.0.1:5555")
    p.add_argument("--topic", action="append", default=None, help="topic prefix (repeatable; default: everything)")
    p.add_argument("--save-masks", type=Path, default=None, help="write each mask PNG into this folder")
    p.add_argument("--count", type=int, default=None, help="exit after N results")
    p.add_argument("--timeout", type=float, default=None, help="exit 1 when nothing arrives for this many seconds")
    p.add_argument("--json", action="store_true", help="print the raw header JSON instead of a summary line")
    p.add_argument("--server-key", type=Path, default=None, help="CURVE: the daemon's public key file (server.key)")
    p.add_argument("--client-key", type=Path, default=None, help="CURVE: this client's secret key file")


def run(args: argparse.Namespace) -> int:
    curve = None
    if args.server_key or args.client_key:
        if not (args.server_key and args.client_key):
            raise AgptError("CURVE needs both --server-key and --client-key")
        curve = {"server_public_key": args.server_key, "client_secret_key": args.client_key}
    if args.save_masks:
        args.save_masks.mkdir(parents=True, exist_ok=True)
    tally = Tally()
    with ResultSubscriber(args.endpoint, args.topic or [""], curve=curve) as sub:
        while args.count is None or tally.results < args.count:
            msg = sub.recv(args.timeout)
            if msg is None:
                print(f"# nothing for {args.timeout} s", file=sys.stderr)
                return 1
            if isinstance(msg, ResultMessage):
                h = msg.header
                tally.add(h)
                if args.save_masks and msg.png:
                    (args.save_masks / f"{h.prefix}_{h.camera}_{h.frame_id:08d}.png").write_bytes(msg.png)
                print(h.model_dump_json() if args.json else format_result(h, tally.accuracy), flush=True)
            elif isinstance(msg, StatusMessage):
                s = msg.status
                if args.json:
                    print(s.model_dump_json(), flush=True)
                else:
                    print(
                        f"# status {s.product}@{s.bank_id} fps={s.fps:.1f} judged={s.frames_judged} queue={s.queue_depth} "
                        f"drops={json.dumps(s.drops.model_dump(), separators=(',', ':'))} camera={s.camera_state}"
                        + (" PAUSED" if s.paused else "") + (" FINAL" if s.final else ""),
                        flush=True,
                    )  # fmt: skip
            else:
                e = msg.event
                print(e.model_dump_json() if args.json else f"# event {e.kind} {json.dumps(e.detail)}", flush=True)
        lost = sum(sub.lost.values())
        if lost:
            print(f"# lost {lost} message(s) (seq gaps): {sub.lost}", file=sys.stderr)
    return 0
