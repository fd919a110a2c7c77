"""A changeover: a new pack for some cameras, applied between two frames, remembered for a restart.

The pack was loaded and validated off the loop (commands.py); here it only replaces each camera's pack
reference on the loop thread, so no frame ever sees two packs, and `.active.json` records it.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from runtime.errors import AgptError
from runtime.line.lanes import Lane
from runtime.line.messages import Reply
from runtime.pipeline.products import ProductPack

log = logging.getLogger("agpt.daemon")


def apply(station: Any, pack: ProductPack, lanes: list[Lane]) -> dict:
    """On the loop thread, between two frames (batches): one reference per camera."""
    per = {}
    for lane in lanes:
        old = lane.pack
        lane.pack = pack
        info = {
            "product": pack.name,
            "bank_id": pack.bank_id,
            "previous": {"product": old.name, "bank_id": old.bank_id},
            "after_frame_id": lane.last_frame_id,
            "camera": lane.name,
        }
        station.event("changeover", info)
        log.info("changeover on %s: %s (%s) -> %s (%s) after frame %d", lane.name, old.name, old.bank_id, pack.name,
                 pack.bank_id, lane.last_frame_id)  # fmt: skip
        per[lane.name] = info
    first = per[lanes[0].name]
    out = {k: first[k] for k in ("product", "bank_id", "previous", "after_frame_id")}
    out["cameras"] = {name: {"previous": i["previous"], "after_frame_id": i["after_frame_id"]} for name, i in per.items()}
    return out


def commit(station: Any, pack: ProductPack, load_ms: float, lanes: list[Lane]) -> Reply:
    """Apply on the loop (waits for the frame in flight), then remember it for a restart."""
    t0 = time.perf_counter()
    info = station.loop.call(lambda: apply(station, pack, lanes)).result()
    info["swap_wait_ms"] = round((time.perf_counter() - t0) * 1e3, 3)
    info["load_ms"] = round(load_ms, 3)
    try:
        station.store.set_active(pack.name, pack.bank_id, cameras={l.name: l.base_product for l in lanes})
    except OSError as e:
        info["warning"] = f"not remembered for a restart: {e}"
        log.warning("could not record the active product: %s", e)
    return Reply(ok=True, data=info)


def initial_pack(station: Any, lane: Lane) -> ProductPack:
    """The camera's config product, or the last committed changeover while the config still names the same
    product it was made from (editing the config's product wins over an old changeover)."""
    name = lane.base_product
    last = station.store.active_entry(lane.name) if station.cfg.resume_last_product else None
    if last and last.get("base") == name and last.get("product") != name:
        try:
            pack = station.store.load(last["product"])
            log.info("resuming %s with product %s (last changeover)", lane.name, pack.name)
            return pack
        except AgptError as e:
            log.warning("last committed product %s does not load (%s); starting with %s", last["product"], e, name)
    return station.store.load(name)
