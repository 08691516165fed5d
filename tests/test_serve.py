"""``pvtv2 serve``: the JSON API over plain HTTP, and the page in Debian's headless Chromium driven by Selenium.

One server for the module, in a thread of this process, on a free port of 127.0.0.1, with small models written to
disk by the package's own save functions (so the checkpoint loaders are exercised): a B0 classifier (10 classes), a
narrow Mask R-CNN-B0 and a Semantic FPN-B0, all with random weights, and a ``runs`` directory the page can switch to
(another B0 classifier, a copy of the detector, a corrupt file). The browser test never skips: without
/usr/bin/chromium or /usr/bin/chromedriver it fails with one line saying to run ``make setup``.
``PVTV2_SCREENSHOT=docs/figures/serve.png`` also writes the page's screenshot there.
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from pvtv2.detection.interop.mmdet import COCO_CLASSES
from pvtv2.segmentation import ADE20K_CLASSES
from pvtv2.serve.app import MAX_BYTES, ServeServer, make_server
from pvtv2.serve.models import load_models

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
CHROME_ARGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
               "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--window-size=1400,1000")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeServer]:
    from pvtv2 import create_model, save_weights
    from pvtv2.detection.inference import build_from_meta, detector_meta, save_detector
    from pvtv2.segmentation import DatasetMeta, save_segmentor, semantic_fpn

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the shared 2-core machine: one thread is faster than two fighting
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("serve")
    save_weights(create_model("pvt_v2_b0"), d / "clf.safetensors")  # 1000 classes: ImageNet names
    meta = detector_meta("mask_rcnn", backbone="pvt_v2_b0", class_names=["background", *COCO_CLASSES],
                         min_size=256, max_size=426, options={"fpn_channels": 64, "box_score_thresh": 0.0,
                                                              "box_detections_per_img": 20})
    save_detector(build_from_meta(meta), meta, d / "det.pth")
    save_segmentor(semantic_fpn(backbone="pvt_v2_b0", num_classes=150), DatasetMeta(150, ADE20K_CLASSES, 255, True),
                   d / "seg.pth")
    runs = d / "runs"
    (runs / "cls").mkdir(parents=True)
    (runs / "det").mkdir()
    torch.manual_seed(1)  # other random weights: other top-5 classes
    save_weights(create_model("pvt_v2_b0"), runs / "cls" / "best.safetensors")
    shutil.copy(d / "det.pth", runs / "det" / "last.pth")
    (runs / "broken.pth").write_bytes(b"PK\x03\x04 not really a checkpoint")
    models = load_models(str(d / "clf.safetensors"), str(d / "det.pth"), str(d / "seg.pth"),
                         classifier_model="pvt_v2_b0", seg_size=256, runs=runs)
    srv = make_server(models)  # default host, port 0: a free port
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join(10)
    torch.set_num_threads(threads)


def _request(srv: ServeServer, path: str, body: bytes | None = None,
             ctype: str = "application/octet-stream") -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(srv.url + path.lstrip("/"), data=body, headers={"Content-Type": ctype})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


def _call(srv: ServeServer, task: str, **fields: Any) -> tuple[int, dict[str, Any]]:
    return _request(srv, f"/api/{task}", json.dumps(fields).encode(), "application/json")


def _encode(img: Image.Image, fmt: str, **kw: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _preview(answer: dict[str, Any]) -> np.ndarray:
    """The working copy the server answered with, as ``(H, W, 3)`` uint8."""
    data = base64.b64decode(answer["preview"].split(",", 1)[1])
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def _photo() -> Image.Image:
    import skimage.data

    return Image.fromarray(skimage.data.chelsea())  # 451x300 RGB


# --- plain HTTP ---------------------------------------------------------------------------------------------------
def test_binds_loopback_by_default(server: ServeServer) -> None:
    from pvtv2.cli import build_parser

    assert server.server_address[0] == "127.0.0.1"
    assert server.url.startswith("http://127.0.0.1:")
    args = build_parser().parse_args(["serve"])
    assert args.host == "127.0.0.1" and args.classifier == "pvt_v2_b0" and args.detector == "random"


def test_page_and_assets_are_local(server: ServeServer) -> None:
    with urllib.request.urlopen(server.url, timeout=30) as r:
        html = r.read().decode()
    assert "/page.js" in html and "/page.css" in html
    assert "http://" not in html and "https://" not in html  # no CDN: works offline
    status, info = _request(server, "/api/info")
    assert status == 200 and set(info["panels"]) == {"classify", "attention", "detect", "segment"}
    assert info["panels"]["detect"]["source"].endswith("det.pth") and not info["panels"]["detect"]["random"]
    with urllib.request.urlopen(server.url + "api/example/rocket.jpg", timeout=30) as r:
        assert Image.open(io.BytesIO(r.read())).size == (640, 427)


@pytest.mark.parametrize("case", ["text", "empty", "truncated", "too_many_pixels", "too_large"])
def test_bad_upload_is_one_json_line(server: ServeServer, case: str) -> None:
    body = {"text": b"these are notes, not a photo\n" * 20,
            "empty": b"",
            "truncated": _encode(_photo(), "JPEG")[:2000],
            "too_many_pixels": _encode(Image.new("1", (8000, 6000)), "PNG"),  # 48 MP, a few kB
            "too_large": b"\xff\xd8" + bytes(MAX_BYTES)}[case]
    status, answer = _request(server, "/api/image", body)
    assert status == (413 if case.startswith("too") else 400)
    message = answer["error"]
    assert message and "\n" not in message and len(message) < 200, message
    expected = {"text": "not an image", "empty": "empty", "truncated": "cannot be decoded",
                "too_many_pixels": "40 megapixels", "too_large": "20 MB"}[case]
    assert expected in message


@pytest.mark.parametrize("case", ["cmyk_jpeg", "png16", "palette", "rgba", "grey"])
def test_unusual_images_become_rgb(server: ServeServer, case: str) -> None:
    if case == "cmyk_jpeg":  # pure cyan ink: RGB (0, 255, 255)
        body, rgb, word = _encode(Image.new("CMYK", (64, 48), (255, 0, 0, 0)), "JPEG", quality=95), (0, 255, 255), "CMYK"
    elif case == "png16":  # 16-bit grey 0x8080 = 32896: 128 in 8 bits (scaled, not clipped to 255)
        img = Image.fromarray(np.full((48, 64), 32896, dtype=np.uint16))
        body, rgb, word = _encode(img, "PNG"), (128, 128, 128), "16-bit"
    elif case == "palette":
        img = Image.new("P", (64, 48), 1)
        img.putpalette([0, 0, 0, 200, 30, 60] + [0] * 762)
        body, rgb, word = _encode(img, "PNG"), (200, 30, 60), "palette"
    elif case == "rgba":  # fully transparent: over white
        body, rgb, word = _encode(Image.new("RGBA", (64, 48), (10, 20, 30, 0)), "PNG"), (255, 255, 255), "white"
    else:
        body, rgb, word = _encode(Image.new("L", (64, 48), 77), "PNG"), (77, 77, 77), "grey"
    status, answer = _request(server, "/api/image", body)
    assert status == 200, answer
    assert (answer["width"], answer["height"]) == (64, 48)
    assert word in answer["note"], answer["note"]
    assert np.abs(_preview(answer).astype(int) - rgb).max() <= 3  # JPEG preview of a flat colour
    if case == "png16":  # and the models run on it
        status, top = _call(server, "classify", id=answer["id"])
        assert status == 200 and len(top["top"]) == 5


def test_api_runs_every_panel(server: ServeServer) -> None:
    status, image = _request(server, "/api/image", _encode(_photo(), "PNG"))
    assert status == 200 and (image["width"], image["height"]) == (451, 300)
    key = image["id"]
    status, top = _call(server, "classify", id=key)
    assert status == 200 and [r["class"] for r in top["top"]] and len(top["top"]) == 5 and top["ms"] > 0
    assert sum(r["prob"] for r in top["top"]) <= 1.0 + 1e-4
    status, det = _call(server, "detect", id=key)
    assert status == 200 and det["masks"] and 0 < len(det["detections"]) <= 20
    scores = [d["score"] for d in det["detections"]]
    assert scores == sorted(scores, reverse=True)
    d0 = det["detections"][0]
    assert d0["name"] in COCO_CLASSES and len(d0["box"]) == 4
    assert any("mask" in d for d in det["detections"])
    status, seg = _call(server, "segment", id=key)
    assert status == 200 and seg["size"] == [451, 300]
    layer = Image.open(io.BytesIO(base64.b64decode(seg["overlay"].split(",", 1)[1])))
    assert layer.mode == "RGBA" and layer.size == (451, 300)
    shares = [r["share"] for r in seg["legend"]]  # the 12 largest classes
    assert shares == sorted(shares, reverse=True) and 0 < sum(shares) <= 1 + 1e-3
    assert len(shares) == min(12, seg["classes"]) and all(r["class"] in ADE20K_CLASSES for r in seg["legend"])
    status, att = _call(server, "attention", id=key, y=100.0, x=300.0)
    assert status == 200 and len(att["stages"]) == 4
    for s in att["stages"]:
        assert len(s["weights"]) == s["keys"][0] * s["keys"][1]
        assert abs(sum(s["weights"]) - 1) < 1e-3  # one query's softmax row, mean over heads
    status, bad = _call(server, "attention", id=key, y=1000.0, x=5.0)
    assert status == 400 and "outside" in bad["error"]
    status, gone = _call(server, "classify", id="0123")
    assert status == 400 and "upload it again" in gone["error"]


def _choice(srv: ServeServer, panel: str, ending: str) -> str:
    status, info = _request(srv, "/api/info")
    return next(o["id"] for o in info["choices"][panel]["options"] if o["label"].endswith(ending))


def test_switch_model_from_runs(server: ServeServer) -> None:
    status, info = _request(server, "/api/info")
    assert status == 200
    labels = {k: [o["label"] for o in v["options"]] for k, v in info["choices"].items()}
    assert [c["current"] for c in info["choices"].values()] == ["startup"] * 3
    assert labels["classify"][0].endswith("clf.safetensors (start-up)")
    assert labels["classify"][1] == "B0, random weights"
    assert labels["classify"][2].endswith("runs/cls/best.safetensors") and len(labels["classify"]) == 3
    assert labels["detect"][2].endswith("runs/det/last.pth") and len(labels["detect"]) == 3
    assert labels["segment"] == [labels["segment"][0], "B0, random weights"]  # the corrupt file: skipped
    assert not any("broken" in label for v in labels.values() for label in v)

    status, image = _request(server, "/api/image", _encode(_photo(), "PNG"))
    try:
        clf_id = _choice(server, "classify", "best.safetensors")
        status, answer = _call(server, "model", panel="classify", choice=clf_id)
        assert status == 200 and answer["attention"], answer
        assert answer["panels"]["classify"]["source"].endswith("runs/cls/best.safetensors")
        assert answer["panels"]["attention"]["source"] == answer["panels"]["classify"]["source"]
        status, top = _call(server, "classify", id=image["id"])
        assert status == 200 and len(top["top"]) == 5
        status, info = _request(server, "/api/info")
        assert info["panels"]["classify"]["source"].endswith("best.safetensors")
        assert info["choices"]["classify"]["current"] == _choice(server, "classify", "best.safetensors")

        status, answer = _call(server, "model", panel="detect", choice=_choice(server, "detect", "last.pth"))
        assert status == 200 and answer["panels"]["detect"]["source"].endswith("runs/det/last.pth")
        status, det = _call(server, "detect", id=image["id"])
        assert status == 200 and det["detections"]

        for bad in ({"panel": "classify", "choice": "/etc/passwd"}, {"panel": "attention", "choice": "startup"},
                    {"panel": "classify"}):
            status, answer = _call(server, "model", **bad)
            assert status == 400 and answer["error"] and "\n" not in answer["error"], (bad, answer)
        status, answer = _call(server, "model", panel="classify", choice="/etc/passwd")
        assert "no model choice '/etc/passwd'" in answer["error"]
    finally:
        for panel in ("classify", "detect"):
            assert _call(server, "model", panel=panel, choice="startup")[0] == 200
    status, info = _request(server, "/api/info")
    assert info["panels"]["classify"]["source"].endswith("clf.safetensors")


# --- the page in a real browser -----------------------------------------------------------------------------------
def _browser(profile: Path) -> Any:
    for exe in (CHROMIUM, CHROMEDRIVER):
        if not os.access(exe, os.X_OK):
            pytest.fail(f"{exe} is missing: run `make setup` (it installs Debian's chromium and chromium-driver)",
                        pytrace=False)
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for arg in (*CHROME_ARGS, f"--user-data-dir={profile}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)  # explicit driver: no Selenium Manager
    driver.set_page_load_timeout(60)
    driver.set_script_timeout(30)
    return driver


def test_page_in_headless_chromium(server: ServeServer, tmp_path: Path) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    photo, notes = tmp_path / "astronaut.jpg", tmp_path / "notes.jpg"
    import skimage.data

    Image.fromarray(skimage.data.astronaut()).save(photo, quality=92)
    notes.write_text("a text file renamed .jpg\n")
    driver = _browser(tmp_path / "profile")
    try:
        wait = WebDriverWait(driver, 60, poll_frequency=0.1)
        css = lambda sel: driver.find_elements(By.CSS_SELECTOR, sel)  # noqa: E731
        state = lambda task: driver.find_element(By.ID, f"panel-{task}").get_attribute("data-state")  # noqa: E731
        driver.get(server.url)
        wait.until(lambda _: len(css("#examples button")) == 4)
        assert "random weights" not in driver.find_element(By.ID, "detect-model").text
        assert driver.find_element(By.ID, "detect-model").text.startswith("mask_rcnn / pvt_v2_b0")

        t0 = time.perf_counter()
        driver.find_element(By.ID, "file").send_keys(str(photo))
        wait.until(lambda _: state("classify") in ("done", "error"))
        first = time.perf_counter() - t0
        wait.until(lambda _: all(state(t) in ("done", "error") for t in ("classify", "segment", "detect")))
        assert driver.find_element(By.ID, "error").get_attribute("hidden") is not None, \
            driver.find_element(By.ID, "error").text
        assert [state(t) for t in ("classify", "segment", "detect")] == ["done"] * 3
        print(f"first result {first:.2f} s, all three {time.perf_counter() - t0:.2f} s after send_keys")

        rows = css("#top5 .row")
        assert len(rows) == 5 and all(r.find_element(By.CSS_SELECTOR, ".name").text for r in rows)
        assert "ms" in driver.find_element(By.ID, "classify-ms").text

        def size(canvas_id: str) -> tuple[int, int, int, int]:
            return tuple(driver.execute_script(  # type: ignore[return-value]
                "const c = document.getElementById(arguments[0]);"
                "return [c.width, c.height, c.clientWidth, c.clientHeight];", canvas_id))

        assert size("det-canvas")[:2] == (512, 512) and min(size("det-canvas")[2:]) > 0
        slider = driver.find_element(By.ID, "det-score")
        count = driver.find_element(By.ID, "det-count")
        set_slider = "arguments[0].value = arguments[1]; arguments[0].dispatchEvent(new Event('input'));"
        driver.execute_script(set_slider, slider, "0")
        all_text, all_pixels = count.text, driver.execute_script("return arguments[0].toDataURL()",
                                                                  driver.find_element(By.ID, "det-canvas"))
        driver.execute_script(set_slider, slider, "1")
        none_text = count.text
        assert all_text.startswith("20 of 20") and none_text.startswith("0 of 20"), (all_text, none_text)
        assert driver.execute_script("return arguments[0].toDataURL()",
                                     driver.find_element(By.ID, "det-canvas")) != all_pixels  # boxes gone
        driver.execute_script(set_slider, slider, "0")

        assert size("seg-canvas")[:2] == (512, 512) and min(size("seg-canvas")[2:]) > 0
        assert css("#seg-legend li")
        seg_differs = ("const a = document.getElementById('seg-canvas').getContext('2d').getImageData(0, 0, 512, 512);"
                       "const b = document.getElementById('photo').getContext('2d').getImageData(0, 0, 512, 512);"
                       "let n = 0; for (let i = 0; i < a.data.length; i += 4) n += a.data[i] !== b.data[i];"
                       "return n;")
        assert driver.execute_script(seg_differs) > 512 * 512 // 4  # the colour layer is drawn

        assert not css("#attn-maps canvas")
        ActionChains(driver).move_to_element_with_offset(driver.find_element(By.ID, "photo"), -40, -60).click() \
            .perform()
        wait.until(lambda _: state("attention") in ("done", "error") and len(css("#attn-maps canvas")) == 4)
        assert state("attention") == "done"
        assert all(c.size["width"] > 0 and c.size["height"] > 0 for c in css("#attn-maps canvas"))
        assert "stage 1" in driver.find_element(By.ID, "attn-maps").text

        from selenium.webdriver.support.ui import Select

        label = driver.find_element(By.ID, "classify-model")
        before = [r.text for r in css("#top5 .row")]
        assert label.text.endswith("clf.safetensors") and len(Select(driver.find_element(By.ID, "classify-choice"))
                                                               .options) == 3
        old_row = css("#top5 .row")[0]
        Select(driver.find_element(By.ID, "classify-choice")).select_by_visible_text(
            next(o.text for o in Select(driver.find_element(By.ID, "classify-choice")).options
                 if o.text.endswith("best.safetensors")))
        wait.until(lambda _: label.text.endswith("runs/cls/best.safetensors") and state("classify") == "done"
                   and len(css("#top5 .row")) == 5 and css("#top5 .row")[0] != old_row)
        assert [r.text for r in css("#top5 .row")] != before  # other weights, other top-5
        wait.until(lambda _: state("attention") == "done"  # it follows the classifier: redrawn for the same point
                   and "ms" in driver.find_element(By.ID, "attention-ms").text)
        assert driver.find_element(By.ID, "attention-model").text == label.text
        assert driver.find_element(By.ID, "error").get_attribute("hidden") is not None

        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",  # the whole page in one screenshot
                               {"width": 1400, "height": min(height, 3000), "deviceScaleFactor": 1, "mobile": False})
        time.sleep(0.3)
        driver.save_screenshot(str(tmp_path / "serve.png"))
        if os.environ.get("PVTV2_SCREENSHOT"):  # the docs' figure: 256 colours, a quarter of the bytes
            target = Path(os.environ["PVTV2_SCREENSHOT"])
            target.parent.mkdir(parents=True, exist_ok=True)
            shot = Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB")
            shot.quantize(256).save(target, optimize=True)
        assert (tmp_path / "serve.png").stat().st_size > 10_000

        driver.find_element(By.ID, "file").send_keys(str(notes))
        error = driver.find_element(By.ID, "error")
        wait.until(lambda _: error.is_displayed() and error.text)
        assert error.text.startswith("notes.jpg: not an image"), error.text
        assert "\n" not in error.text and error.size["height"] < 48  # one line across the page
    finally:
        driver.quit()
