"""The operator's page in a real browser: headless Debian Chromium + chromedriver (Selenium) against a running
daemon on the lite bundle (two cameras on a synthetic line, two products) and `agpt view`'s app on uvicorn."""

from __future__ import annotations

import base64
import shutil
import threading

import numpy as np
import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
pytest.importorskip("selenium")

import _view_helpers as vh
from selenium.common.exceptions import ElementClickInterceptedException, StaleElementReferenceException

pytestmark = pytest.mark.slow

# one synchronous script: the overlay's frame id and its alpha channel are read between two paints
OVERLAY_JS = """
const el = document.querySelector(arguments[0]);
const c = el.querySelector ? (el.querySelector('canvas.overlay') || el) : el;
const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
const a = new Uint8Array(c.width * c.height);
for (let i = 0; i < a.length; i++) a[i] = d[4 * i + 3];
let s = ''; for (let i = 0; i < a.length; i += 8192) s += String.fromCharCode.apply(null, a.subarray(i, i + 8192));
return {frame_id: Number(c.dataset.frameId || 0), w: c.width, h: c.height, alpha: btoa(s)};
"""


class Collector:
    """Every result the daemon publishes (its own SUB), by (camera, frame_id): the truth the page is checked with."""

    def __init__(self, endpoint: str):
        from runtime.tools.subscribe import EventMessage, ResultMessage, ResultSubscriber

        self.results: dict = {}
        self.events: list = []
        self.lock = threading.Lock()  # the test reads while this thread writes
        self.sub = ResultSubscriber(endpoint, [f"{vh.PREFIX}.result", f"{vh.PREFIX}.event"])
        self._stop = threading.Event()
        self.kinds = (ResultMessage, EventMessage)
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def _run(self):
        while not self._stop.is_set():
            m = self.sub.recv(0.2)
            with self.lock:
                if isinstance(m, self.kinds[0]):
                    self.results[(m.header.camera, m.header.frame_id)] = m
                elif isinstance(m, self.kinds[1]):
                    self.events.append(m.event)

    def result(self, camera: str, frame_id: int):
        with self.lock:
            return self.results.get((camera, frame_id))

    def copy(self) -> tuple[dict, list]:
        with self.lock:
            return dict(self.results), list(self.events)

    def close(self):
        self._stop.set()
        self.t.join(5)
        self.sub.close()


def _canvas_points(mask: np.ndarray, ft, w: int, h: int, select) -> list[tuple[int, int]]:
    """Canvas pixels over the mask pixels `select` picks (224x224 model frame -> camera frame -> canvas)."""
    ys, xs = np.nonzero(select(mask))
    sx, sy = ft.width / ft.resized_w * w / ft.width, ft.height / ft.resized_h * h / ft.height
    cx = ((ft.left + xs + 0.5) * sx).astype(int)
    cy = ((ft.top + ys + 0.5) * sy).astype(int)
    keep = (cx >= 0) & (cx < w) & (cy >= 0) & (cy < h)
    return list(zip(cx[keep], cy[keep]))


def _overlay(driver, selector):
    o = driver.execute_script(OVERLAY_JS, selector)
    alpha = np.frombuffer(base64.b64decode(o["alpha"]), np.uint8).reshape(o["h"], o["w"])
    return o["frame_id"], alpha


@pytest.fixture(scope="module")
def bundle(lite_bundle, tmp_path_factory):
    """A copy of the lite bundle with two products of the synthetic line (other tests' bundle left alone)."""
    from runtime.pipeline.inspector import Inspector

    out = tmp_path_factory.mktemp("viewbundle") / "lite"
    shutil.copytree(lite_bundle, out, ignore=shutil.ignore_patterns("products"))
    insp = Inspector.from_config(out)
    vh.lite_products(out, insp)
    return out, insp


def test_the_page_shows_the_line_and_switches_products(bundle, tmp_path):
    missing = vh.chromium_missing()
    if missing:
        pytest.skip(missing)
    from runtime.tools.view.app import create_app
    from runtime.tools.view.settings import ViewSettings

    path, insp = bundle
    shots = tmp_path / "shots"
    shots.mkdir()
    cfg = vh.daemon_cfg(path, shots_root=shots, cameras=2)
    with vh.running_daemon(cfg, insp) as d:
        col = Collector(d.publish_endpoint)
        s = ViewSettings(publish=d.publish_endpoint, control=d.control_endpoint, prefix=vh.PREFIX, token=vh.TOKEN,
                         uploads=shots / "up")  # fmt: skip
        try:
            with vh.serving(create_app(s)) as url, vh.chromium(tmp_path / "profile") as drv:
                drv.get(url + "/")
                # a grid of two cameras, the live frame, >= 20 results updating
                assert vh.poll(lambda: drv.execute_script("return document.querySelectorAll('#cameras .camera').length") == 2)
                first = vh.poll(lambda: drv.execute_script("return document.querySelector('#camera-cam0').dataset.frameId"))
                assert vh.poll(lambda: drv.execute_script("return window.__agptCounts.results") >= 20, 60)
                later = vh.poll(lambda: (f := drv.execute_script("return document.querySelector('#camera-cam0').dataset.frameId"))
                                != first and f)  # fmt: skip
                assert int(later) > int(first)
                assert vh.poll(lambda: drv.execute_script("return window.__agptCounts.frames") >= 2, 60)
                assert vh.poll(lambda: int(drv.find_element("css selector", "#camera-cam0 .count").text) >= 20, 60)
                assert vh.poll(lambda: "frame" in drv.find_element("css selector", "#camera-cam0 .caption").text, 60)

                # the overlay has colour where the map is high and none where it is ~0, on the frame it belongs to
                def checked_overlay():
                    fid, alpha = _overlay(drv, "#camera-cam0")
                    m = col.result("cam0", fid)
                    if m is None or m.mask is None or m.mask.max() < 64:
                        return None  # a frame with a clear blob is needed: wait for the next preview
                    ft = m.header.mask.frame_transform
                    hot = _canvas_points(m.mask, ft, alpha.shape[1], alpha.shape[0], lambda k: k >= max(64, 0.6 * k.max()))
                    cold = _canvas_points(m.mask, ft, alpha.shape[1], alpha.shape[0], lambda k: k < 13)
                    return fid, hot, cold, alpha

                fid, hot, cold, alpha = vh.poll(checked_overlay, 60)
                assert hot, "no high-map pixels"
                hot_alpha = np.array([alpha[y, x] for x, y in hot])
                assert (hot_alpha > 0).mean() > 0.95, f"frame {fid}: overlay empty over the map's blob"
                if cold:  # the location box may cross low-map pixels: most stay clear
                    assert (np.array([alpha[y, x] for x, y in cold]) == 0).mean() > 0.8

                # the last rejects: a thumbnail opens full size with its overlay
                assert vh.poll(lambda: drv.execute_script("return document.querySelectorAll('#rejects .thumb').length") >= 1, 60)

                def painted():
                    return drv.execute_script("return document.querySelector('#modal').dataset.painted")

                def click_a_reject():
                    # thumbnails are re-made as rejects come (and get their picture), and a reject that leaves the strip
                    # before the click opens nothing: retry until a clicked reject is the one the modal painted
                    shown = drv.execute_script(
                        "const m = document.querySelector('#modal'); return m.hidden ? null : m.dataset.id"
                    )
                    if shown:  # a click already opened it: wait for its paint (a slow paint is no reason to click again)
                        return shown if painted() == shown else None
                    try:
                        thumb = drv.find_element("css selector", "#rejects .thumb")
                        rid = thumb.get_attribute("data-id")
                        thumb.click()
                    except (StaleElementReferenceException, ElementClickInterceptedException):
                        return None
                    return rid if vh.poll(lambda: painted() == rid, 3) else None

                rid = vh.poll(click_a_reject, 60)
                assert rid and painted() == rid
                assert drv.find_element("css selector", "#modal").is_displayed()
                _, modal_alpha = _overlay(drv, "#modal-overlay")
                assert (modal_alpha > 0).any()
                assert "frame" in drv.find_element("css selector", "#modal-info").text
                drv.find_element("css selector", "#modal-close").click()

                # a product swap from the page: the next results are the new product's
                drv.find_element("css selector", "#token").send_keys(vh.TOKEN)
                assert vh.poll(lambda: drv.execute_script(
                    "return [...document.querySelectorAll('#product option')].map(o => o.value).includes('tiles2')"))  # fmt: skip
                drv.execute_script("document.querySelector('#product').value = 'tiles2'")
                drv.find_element("css selector", "#swap").click()
                assert vh.poll(lambda: "now tiles2" in drv.find_element("css selector", "#message").text, 60), \
                    drv.find_element("css selector", "#message").text  # fmt: skip
                assert vh.poll(lambda: drv.execute_script(
                    "return ['cam0','cam1'].every(c => document.querySelector('#camera-' + c).dataset.product === 'tiles2')"), 60)  # fmt: skip
                # the collector is its own subscriber: it may still be reading what the page already shows
                change = vh.poll(
                    lambda: next((e for e in col.copy()[1] if e.kind == "changeover" and e.detail["camera"] == "cam0"), None)
                )
                assert change is not None

                def after_change():
                    return [m.header.product for (cam, f), m in col.copy()[0].items()
                            if cam == "cam0" and f > change.detail["after_frame_id"]]  # fmt: skip

                assert vh.poll(after_change, 30)
                assert set(after_change()) == {"tiles2"}
                assert d.lanes[0].pack.name == "tiles2"

                # the reject window's feedback: paused, the newest reject shown is among the daemon's kept frames
                drv.find_element("css selector", "#pause").click()
                assert vh.poll(lambda: drv.find_element("css selector", "#paused-flag").is_displayed(), 30)
                rid = vh.poll(click_a_reject, 30)
                assert vh.poll(lambda: drv.execute_script("return document.querySelector('#modal').dataset.painted") == rid)
                drv.find_element("css selector", "#operator").send_keys("alice")
                drv.find_element("css selector", "#fb-add-to-bank").click()
                reply = vh.poll(
                    lambda: (t := drv.find_element("css selector", "#modal-reply").text) and "..." not in t and t, 120
                )
                assert "new bank" in reply, reply
                new_bank = reply.split("new bank ", 1)[1].split()[0]
                assert drv.execute_script("return localStorage.getItem('agpt-operator')") == "alice"
                product = drv.find_element("css selector", "#fb-product").text
                assert d.store.load(product).bank_id == new_bank
                drv.execute_script("window.confirm = () => true")  # the rollback asks first
                drv.find_element("css selector", "#fb-rollback").click()
                reply = vh.poll(lambda: "rolled back" in (t := drv.find_element("css selector", "#modal-reply").text) and t, 60)
                assert f"(was {new_bank})" in reply and d.store.load(product).bank_id != new_bank
                drv.find_element("css selector", "#modal-close").click()
                drv.find_element("css selector", "#resume").click()

                shot = tmp_path / "view.png"
                assert drv.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
                lat = drv.execute_script("return window.__agptLatency")
                assert lat["frame"] and lat["result"]
                severe = [e for e in drv.get_log("browser") if e["level"] == "SEVERE"]
                assert not severe, severe
        finally:
            col.close()
