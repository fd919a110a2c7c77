"""`agpt demo --config configs/demo.yaml [--frames N]`: the README's main job in one command.

Makes what a fresh machine lacks (the bundle, the product's pack from the synthetic line's normal parts),
then runs the real daemon and a real subscriber over ZeroMQ on loopback, one printed line per frame.
The daemon starts paused and is resumed once the subscriber has its first status (the zguide's answer
to the slow-joiner problem), so no result of a bounded run is missed.
"""

from __future__ import annotations

import argparse
import threading
from pathlib import Path

from runtime.errors import AgptError
from runtime.line.config import DaemonConfig, load_config
from runtime.line.control import request
from runtime.tools.subscribe import ResultMessage, ResultSubscriber, StatusMessage, Tally, format_result


def ensure_bundle(cfg: DaemonConfig, progress=print) -> None:
    if (cfg.bundle / "bundle.json").is_file():
        return
    if cfg.demo is None:
        raise AgptError(f"{cfg.bundle}: no bundle, and the config has no `demo:` section saying how to make one")
    progress(f"[demo] no bundle at {cfg.bundle}: making one ({cfg.demo.bundle_from}); this needs the export extra (torch)")
    if cfg.demo.bundle_from == "lite":
        from export.lite import export_lite

        export_lite(out=cfg.bundle, progress=progress)
    else:
        from export.bundle_writer import export_bundle
        from export.tiny import make_tiny

        ckpt = make_tiny(cfg.bundle.parent / f"{cfg.bundle.name}_ckpt", progress=progress)
        export_bundle(ckpt, cfg.bundle, products={cfg.product: cfg.demo.description}, quant=cfg.demo.quant, progress=progress)


def ensure_product(cfg: DaemonConfig, inspector, progress=print) -> None:
    """A pack for the config's product, from the synthetic line's own normal parts (never its defects).
    `inspector`: the daemon's own, so the models are loaded once."""
    from runtime.line.sources import make_source
    from runtime.pipeline.products import build_pack
    from runtime.pipeline.store import ProductStore

    store = ProductStore(cfg.bundle / "products", inspector.pack_spec, dict(inspector.manifest_products))
    if store.pack_path(cfg.product).is_file():  # not store.exists: a product named only in bundle.json has no pack
        return
    cam = cfg.camera_list[0]  # with `cameras:`, the first camera's line makes the shots
    if cam.kind != "synthetic":
        raise AgptError(
            f"product {cfg.product!r} has no pack: build one with 'agpt bank build' (the demo only makes packs for a synthetic line)"
        )
    n = cfg.demo.shots if cfg.demo else 4
    progress(f"[demo] setting up product {cfg.product!r} from {n} normal shots")
    shots = make_source(cam).normal_shots(n)
    description = cfg.demo.description if cfg.demo else ""
    pack = build_pack(inspector, cfg.product, description, shots)
    store.save(pack, replace=True)
    progress(f"[demo] pack {pack.bank_id} written; calibration: {pack.calibration or 'none (the LLM judges)'}")


def watch(cfg: DaemonConfig, daemon_thread: threading.Thread, publish: str, control: str, on_line=print) -> int:
    """Subscribe, resume the paused daemon once subscribed, print one line per result until the final status.
    publish/control: the endpoints the daemon actually bound (a config may ask for any free port, tcp://host:*)."""
    tally = Tally()
    with ResultSubscriber(publish, [cfg.topic_prefix + "."]) as sub:
        resumed = False
        while daemon_thread.is_alive() or sub.sock.poll(0):
            msg = sub.recv(0.5)
            if msg is None:
                continue
            if isinstance(msg, StatusMessage):
                if not resumed:  # subscribed: now no result can be missed
                    request(control, {"cmd": "resume"})
                    resumed = True
                if msg.status.final:
                    break
            elif isinstance(msg, ResultMessage):
                tally.add(msg.header)
                on_line(format_result(msg.header, tally.accuracy))
        lost = sum(sub.lost.values())
    correct, labelled = tally.accuracy
    on_line(
        f"[demo] {tally.results} results received, {lost} lost"
        + (f", accuracy {correct}/{labelled} = {correct / labelled:.3f}" if labelled else "")
    )
    return tally.results


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        type=Path,
        default=Path("configs/demo.yaml"),
        help="demo config (configs/demo.yaml: lite; configs/demo-tiny.yaml: tiny AnomalyGPT)",
    )
    p.add_argument("--frames", type=int, default=None, help="stop after N judged frames (0 or absent: until Ctrl-C)")


def run(args: argparse.Namespace) -> int:
    import logging

    from runtime.line.daemon import Daemon

    cfg = load_config(args.config, frames=args.frames or None)
    logging.basicConfig(level="WARNING", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    ensure_bundle(cfg)
    cfg.start_paused = True
    daemon = Daemon(cfg)
    daemon.inspector = daemon.open_inspector()
    ensure_product(cfg, daemon.inspector)
    daemon.start()  # binding errors surface here, as one line

    def serve() -> None:
        daemon.wait()
        daemon.shutdown()  # publishes the final status the watcher stops on

    t = threading.Thread(target=serve, name="daemon", daemon=True)
    t.start()
    try:
        watch(cfg, t, daemon.publish_endpoint, daemon.control_endpoint)
    except KeyboardInterrupt:
        print("[demo] Ctrl-C: stopping after the frame in flight")
        daemon.request_stop("SIGINT")
    t.join()
    print(f"[demo] daemon stopped ({daemon.stop_reason}): {daemon.judged} frames judged")
    return 0
