"""The in-browser classifier (web/, serve_web.py) in real headless Chromium, against the Python path that
`predict.py --model skin_model.onnx` takes: the same crop pixels and P(malignant) within 1e-3 on real photos
(EXIF-rotated, transparent, 16-bit, grey, odd sizes), the heat map and its toggle, messages for bad files, no
network request after load, keyboard use, phone and desktop layouts, screenshots and timings
(`pytest -s tests/test_web.py` prints them; WEB_SCREENSHOT=DIR also saves the screenshots there).
serve_web.py's own checks (the build, what it serves, its headers and errors) are in tests/test_serve_web.py.

Needs Chromium (apt-get install -y chromium, or CHROMIUM=/path/to/chrome), node_modules (npm ci) and
Playwright (pip install playwright). Without them the browser tests skip on a developer machine and fail
where the CI environment variable is set."""

import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from PIL import Image

import model
import predict
from skinlesion import photos

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "serve_web.py")
SIZE = 64
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]  # without the network flags Chromium calls Google hosts
TIMINGS = {}  # filled by the tests, printed by test_timings


def find_chromium():
    candidates = [
        os.environ.get("CHROMIUM"),
        "/usr/lib/chromium/chromium",
        "/usr/bin/chromium",
        shutil.which("chromium"),
        shutil.which("chromium-browser"),
        shutil.which("google-chrome"),
    ]
    return next((path for path in candidates if path and os.path.isfile(path) and os.access(path, os.X_OK)), None)


def require_browser():
    """Skip (developer machine) or fail (CI) when what the browser tests need is missing."""
    missing = []
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("Playwright (pip install playwright)")
    if not find_chromium():
        missing.append("Chromium (apt-get install -y chromium, or set CHROMIUM=/path/to/chrome)")
    if not os.path.isdir(os.path.join(ROOT, "node_modules", "onnxruntime-web", "dist")):
        missing.append("node_modules (run npm ci in the repository root)")
    if missing:
        reason = "the web page tests need " + ", ".join(missing)
        pytest.fail(reason) if os.environ.get("CI") else pytest.skip(reason)


# ----------------------------------------------------------------------------- the model and the photos


def set_threshold(path, threshold):
    m = onnx.load(path)
    for prop in m.metadata_props:
        if prop.key == "threshold":
            prop.value = json.dumps(threshold)
    onnx.save(m, path)


def lesion(w, h, seed, grey=False):
    """Skin-coloured noise with a dark blob (float array h x w x 3, 0..255)."""
    rng = np.random.default_rng(seed)
    img = np.array([205, 150, 125]) + rng.normal(0, 18, (h, w, 3))
    yy, xx = np.mgrid[:h, :w]
    cy, cx, r = rng.uniform(0.35, 0.65) * h, rng.uniform(0.35, 0.65) * w, min(w, h) * rng.uniform(0.12, 0.3)
    img[(yy - cy) ** 2 + (xx - cx) ** 2 < r**2] *= rng.uniform(0.25, 0.6)
    return img.mean(2, keepdims=True).repeat(3, 2) if grey else img


def u8(img):
    return Image.fromarray(img.clip(0, 255).astype(np.uint8))


def write_photos(folder):
    """The photos the page must classify as Python does; name -> path. 160 x 120 and 120 x 200 resize to 97 and
    121 px, whose centre crops start at x.5 (Python rounds half to even, JavaScript's Math.round up)."""
    os.makedirs(folder, exist_ok=True)
    p = lambda name: os.path.join(folder, name)  # noqa: E731
    u8(lesion(160, 120, 1)).save(p("lesion_4x3.jpg"), quality=90)
    u8(lesion(120, 200, 2)).save(p("lesion_portrait.png"))
    u8(lesion(50, 50, 3)).save(p("lesion_small.jpg"), quality=95)  # upscaled
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: shown rotated 90 degrees clockwise
    u8(lesion(200, 150, 4)).save(p("exif_rotated.jpg"), quality=90, exif=exif.tobytes())
    rgba = np.concatenate([lesion(140, 110, 5), np.zeros((110, 140, 1))], 2)
    yy, xx = np.mgrid[:110, :140]
    rgba[..., 3] = np.clip(255 - 6 * (np.hypot(yy - 55, xx - 70) - 30), 0, 255)  # opaque centre, every alpha around it
    u8(rgba).save(p("transparent.png"))
    grey16 = lesion(130, 100, 6, grey=True)[..., 0] / 255 * 65535 + np.linspace(0, 2000, 130)  # all 16 bits used
    Image.fromarray(grey16.clip(0, 65535).astype(np.uint16)).save(p("grey16.png"))
    u8(lesion(110, 140, 7, grey=True)[..., 0]).save(p("grey.jpg"), quality=90)
    u8(lesion(300, 1000, 8)).save(p("tall.png"))  # taller than 2:1: Pillow 13 resizes it vertical pass first
    u8(lesion(2000, 1500, 9)).save(p("phone.jpg"), quality=92)  # a phone-sized photo, for the timing
    return {name: p(name) for name in sorted(os.listdir(folder))}


def reference(path, session, cfg):
    """What predict.py --model skin_model.onnx computes, P(malignant), with the crop's uint8 pixels (H x W x 3)
    and the cam."""
    x = photos.preprocess(photos.load_image(path), cfg)
    logits, cam = session.run(["logits", "cam"], {"image": x[None]})
    p = float(1 / (1 + np.exp(np.float64(logits[0, 0]) - logits[0, 1])))
    pixels = (x.transpose(1, 2, 0) * np.array(cfg["std"]) + np.array(cfg["mean"])) * 255
    assert np.abs(pixels - pixels.round()).max() < 0.01
    return dict(p=p, crop=pixels.round().astype(np.uint8), cam=cam[0])


@pytest.fixture(scope="module")
def setup(tmp_path_factory, trained_model, demo_dataset):
    """The model the test suite trained, exported by export_onnx.py (its threshold moved between the photos'
    probabilities if none or all reach it), the photos and Python's answers for them."""
    folder = tmp_path_factory.mktemp("web")
    path = str(folder / "skin_model.onnx")
    r = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "export_onnx.py"),
            "--model",
            trained_model[0],
            "--output",
            path,
            "--check-images",
            os.path.join(demo_dataset, "test"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    assert r.returncode == 0, r.stdout + r.stderr
    photos = write_photos(str(folder / "photos"))
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    props = session.get_modelmeta().custom_metadata_map
    meta = {
        key: json.loads(props[key]) for key in ("image_size", "mean", "std", "interpolation", "crop_pct", "threshold")
    }
    cfg = model.meta_data_config(meta)
    refs = {name: reference(photo, session, cfg) for name, photo in photos.items()}
    ps = sorted(ref["p"] for ref in refs.values())
    threshold = meta["threshold"]
    if not ps[0] < threshold <= ps[-1]:  # both answers among the photos
        threshold = (ps[len(ps) // 2 - 1] + ps[len(ps) // 2]) / 2
        set_threshold(path, threshold)
    assert ps[-1] - ps[0] > 0.05, ps  # the model's answer varies across the photos: the comparison can fail
    return dict(folder=folder, model=path, photos=photos, refs=refs, threshold=threshold)


@pytest.fixture(scope="module")
def server(setup):
    """serve_web.py building into a folder of its own and serving it on a free port."""
    require_browser()
    web = setup["folder"] / "site"
    proc = subprocess.Popen(
        [sys.executable, SCRIPT, "--model", setup["model"], "--site-dir", str(web), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        built, serving = proc.stdout.readline(), proc.stdout.readline()
        assert "serving the page at http://127.0.0.1:" in serving, built + serving + proc.stderr.read()
        yield dict(url=serving.split(" at ")[1].split()[0], web=str(web))
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def browser(server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=find_chromium(), headless=True, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def open_page(browser, url, requests, **context_args):
    context = browser.new_context(**context_args)
    context.on("request", lambda request: requests.append(request.url))
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(url)
    return page, errors


def classify(page, path, selector="#file"):
    """Choose the photo; wait for the result or a message; (window.__lastRun or None, seconds taken)."""
    page.evaluate("document.getElementById('app').dataset.state = 'submitted'")
    start = time.perf_counter()
    page.set_input_files(selector, path)
    page.wait_for_selector(
        "#app[data-state=done], #app[data-state=error], #app[data-state=model-error]", timeout=60_000
    )
    seconds = time.perf_counter() - start
    done = page.get_attribute("#app", "data-state") == "done"
    run = page.evaluate("({...window.__lastRun, crop: Array.from(window.__lastRun.crop)})") if done else None
    return run, seconds


@pytest.fixture(scope="module")
def page(browser, server, setup):
    """The page at desktop size, timed from opening it to its first result; every request it makes is kept."""
    requests = []
    start = time.perf_counter()
    page, errors = open_page(browser, server["url"], requests, viewport={"width": 1280, "height": 900})
    run, _ = classify(page, setup["photos"]["lesion_4x3.jpg"])  # chosen while the model may still be loading
    TIMINGS["first_result_s"] = time.perf_counter() - start
    TIMINGS["model_ready_ms"] = page.evaluate("window.__modelReadyAt")
    assert run is not None, page.inner_text("#message")
    yield dict(page=page, requests=requests, errors=errors)
    page.context.close()


# ----------------------------------------------------------------------------- the page


@pytest.mark.parametrize(
    "name",
    [
        "lesion_4x3.jpg",
        "lesion_portrait.png",
        "lesion_small.jpg",
        "exif_rotated.jpg",
        "transparent.png",
        "grey16.png",
        "grey.jpg",
        "tall.png",
        "phone.jpg",
    ],
)
def test_page_classifies_like_python(page, setup, name):
    ref = setup["refs"][name]
    run, seconds = classify(page["page"], setup["photos"][name])
    assert run is not None, page["page"].inner_text("#message")
    TIMINGS.setdefault("photos", {})[name] = (seconds, run["timings"])
    crop = np.array(run["crop"], dtype=np.uint8).reshape(SIZE, SIZE, 3)
    assert (crop == ref["crop"]).all(), f"{int((crop != ref['crop']).sum())} crop values differ from Pillow's"
    assert abs(run["p"] - ref["p"]) <= 1e-3
    cam = np.array(run["cam"]).reshape(run["camShape"])
    assert cam.shape == ref["cam"].shape and np.abs(cam - ref["cam"]).max() <= 1e-3 * max(10, np.abs(ref["cam"]).max())
    label = model.CLASSES[int(ref["p"] >= setup["threshold"])]
    assert run["label"] == label
    text = page["page"].inner_text("#result")
    p_text, t_text, _ = predict.decision_texts(run["p"], setup["threshold"])  # the digits predict.py prints
    assert f"Prediction: {label}" in text and f"P(malignant) = {p_text} (threshold {t_text}" in text
    assert page["page"].is_visible("text=This is not a medical device; see a doctor about any lesion that worries you")
    if (
        ref["cam"].max() <= 0
    ):  # no evidence for malignant at all (the map is signed):  # no evidence at all: said in words, no blank overlay
        assert "no evidence for malignant found in this photo" in text and not page["page"].is_visible("#heat")


def test_heat_map_over_the_crop_and_its_toggle(page, setup):
    refs = setup["refs"]
    name = max(
        (n for n in refs if refs[n]["cam"].max() > 0), key=lambda n: refs[n]["p"]
    )  # most malignant, some evidence
    assert refs[name]["p"] >= setup["threshold"]
    run, _ = classify(page["page"], setup["photos"][name])
    assert run["label"] == "malignant"
    pg = page["page"]
    heat = pg.evaluate("""(() => { const c = document.getElementById('heat');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let drawn = 0; for (let i = 3; i < d.length; i += 4) drawn += d[i] > 0;
        return {width: c.width, height: c.height, drawn}; })()""")
    assert heat["width"] == heat["height"] == SIZE and heat["drawn"] > SIZE * SIZE // 10
    assert pg.is_visible("#heat") and "evidence for malignant" in pg.inner_text("#heat-text")
    box, crop_box = pg.locator("#heat").bounding_box(), pg.locator("#crop").bounding_box()
    assert box == crop_box  # exactly over the crop
    pg.focus("#show-heat")
    pg.keyboard.press("Space")  # the toggle, by keyboard
    assert not pg.is_visible("#heat") and pg.is_visible("#crop")
    pg.keyboard.press("Space")
    assert pg.is_visible("#heat")
    shoot(pg, setup, "web_desktop.png")


def test_all_zero_heat_map_is_said_in_words(page):
    pg = page["page"]
    drawn = pg.evaluate("import('./app.js').then((app) => app.drawHeatMap([0, 0, 0, 0], 2, 2, 64))")
    assert drawn is False
    assert "no evidence for malignant found in this photo" in pg.inner_text("#heat-text")
    assert not pg.is_visible("#heat")


def test_bad_files_get_a_message_and_the_page_keeps_working(page, setup, tmp_path):
    pg = page["page"]
    (tmp_path / "notes.txt").write_text("not a photo\n")
    (tmp_path / "renamed.jpg").write_bytes(b"%PDF-1.4\n% a document, not a photo\n" * 20)
    (tmp_path / "empty.jpg").write_bytes(b"")
    Image.new("RGB", (8000, 5000), (205, 150, 125)).save(tmp_path / "40mp.jpg", quality=50)
    with open(tmp_path / "huge.jpg", "wb") as f:
        f.truncate(31_000_000)
    cases = {
        "notes.txt": "is not an image this browser can read",
        "renamed.jpg": "is not an image this browser can read",
        "empty.jpg": "is empty (0 bytes)",
        "40mp.jpg": "is 8000 × 5000 pixels (40.0 megapixels)",
        "huge.jpg": "is 31.0 MB; this page takes photos up to 30 MB",
    }
    for name, expected in cases.items():
        run, seconds = classify(pg, str(tmp_path / name))
        assert run is None and pg.is_visible("#message"), name
        assert expected in pg.inner_text("#message") and name in pg.inner_text("#message"), pg.inner_text("#message")
        assert seconds < 10, (name, seconds)
        start = time.perf_counter()
        assert pg.evaluate("1 + 1") == 2 and time.perf_counter() - start < 1  # not frozen
        assert not pg.is_visible("#label")  # no stale result under the message
    run, _ = classify(pg, setup["photos"]["lesion_small.jpg"])
    assert run is not None and not pg.is_visible("#message")


def test_file_picker_works_by_keyboard_with_visible_focus(page, setup):
    pg = page["page"]
    pg.evaluate("document.activeElement && document.activeElement.blur()")
    pg.evaluate("window.scrollTo(0, 0)")
    for _ in range(10):
        pg.keyboard.press("Tab")
        if pg.evaluate("document.activeElement.id") == "file":
            break
    assert pg.evaluate("document.activeElement.id") == "file"
    assert pg.evaluate("getComputedStyle(document.activeElement).outlineStyle") != "none"
    pg.evaluate("document.getElementById('app').dataset.state = 'submitted'")
    from playwright.sync_api import TimeoutError as NoChooser

    for _attempt in range(3):  # headless Chromium now and then drops the first key press on a freshly focused picker
        try:
            with pg.expect_file_chooser(timeout=5000) as chooser:
                pg.keyboard.press("Space")
            break
        except NoChooser:
            pg.focus("#file")
    chooser.value.set_files(setup["photos"]["grey.jpg"])
    pg.wait_for_selector("#app[data-state=done]")
    assert pg.get_attribute("#result", "aria-live") == "polite" and "Prediction: " in pg.inner_text("#result")


def test_a_dropped_photo_is_checked(page, setup):
    pg = page["page"]
    with open(setup["photos"]["lesion_small.jpg"], "rb") as f:
        data = list(f.read())
    pg.evaluate("document.getElementById('app').dataset.state = 'submitted'")
    pg.evaluate(
        """(bytes) => { const files = new DataTransfer();
        files.items.add(new File([new Uint8Array(bytes)], 'dropped.jpg', {type: 'image/jpeg'}));
        const drop = new DragEvent('drop', {dataTransfer: files, bubbles: true, cancelable: true});
        document.querySelector('h1').dispatchEvent(drop); }""",
        data,
    )
    pg.wait_for_selector("#app[data-state=done]")
    run = pg.evaluate("({name: __lastRun.name, p: __lastRun.p})")
    assert run["name"] == "dropped.jpg" and abs(run["p"] - setup["refs"]["lesion_small.jpg"]["p"]) <= 1e-3


def test_no_request_after_load_and_none_off_this_computer(page, server, setup):
    before = len(page["requests"])
    run, _ = classify(page["page"], setup["photos"]["transparent.png"])
    assert run is not None
    assert page["requests"][before:] == []
    loaded = [url.split("/", 3)[3] for url in page["requests"]]
    assert all(url.startswith(server["url"]) for url in page["requests"]), page["requests"]
    assert set(loaded) == {
        "",
        "style.css",
        "app.js",
        "preprocess.js",
        "vendor/ort.wasm.min.mjs",
        "model.json",
        "model.onnx",
        "vendor/ort-wasm-simd-threaded.mjs",
        "vendor/ort-wasm-simd-threaded.wasm",
    }
    assert page["errors"] == []


def test_model_that_fails_to_load_is_reported(browser, server, setup):
    context = browser.new_context()
    pg = context.new_page()
    pg.route("**/model.onnx", lambda route: route.fulfill(status=404, body="missing"))
    pg.goto(server["url"])
    pg.wait_for_selector("#app[data-state=model-error]")
    assert "The model failed to load (HTTP 404 for model.onnx)" in pg.inner_text("#message")
    run, _ = classify(pg, setup["photos"]["grey.jpg"])
    assert run is None and "The model failed to load" in pg.inner_text("#message")
    context.close()


def test_model_at_chance_and_borderline_result_are_said(browser, server, setup):
    name = "grey.jpg"
    p = setup["refs"][name]["p"]
    with open(os.path.join(server["web"], "model.json")) as f:
        sidecar = dict(json.load(f), at_chance=True, threshold=round(p + 0.01, 4))  # 0.01 from the threshold
    context = browser.new_context()
    pg = context.new_page()
    pg.route(
        "**/model.json",
        lambda route: route.fulfill(status=200, content_type="application/json", body=json.dumps(sidecar)),
    )
    pg.goto(server["url"])
    pg.wait_for_selector("#app[data-state=ready]")
    assert pg.is_visible("#caution") and "could not be told from chance" in pg.inner_text("#caution")
    run, _ = classify(pg, setup["photos"][name])
    assert run["borderline"] and run["label"] == "benign"
    assert pg.is_visible("#borderline") and "Borderline" in pg.inner_text("#borderline")
    assert "Prediction: benign" in pg.inner_text("#result")
    context.close()


def test_phone_layout(browser, server, setup):
    requests = []
    pg, errors = open_page(
        browser,
        server["url"],
        requests,
        viewport={"width": 390, "height": 844},
        device_scale_factor=1,
        is_mobile=True,
        has_touch=True,
    )
    run, _ = classify(pg, setup["photos"]["exif_rotated.jpg"], selector="#camera")  # the camera picker
    assert run is not None and pg.is_visible("#camera")
    assert pg.evaluate("document.documentElement.scrollWidth <= window.innerWidth")  # no sideways scrolling
    assert pg.locator("#crop").bounding_box()["width"] <= 390
    shoot(pg, setup, "web_phone.png")
    pg.context.close()
    assert errors == []


def shoot(pg, setup, name):
    """A full-page screenshot into the tests' temporary folder and, with WEB_SCREENSHOT=DIR, there too."""
    folders = [TIMINGS.setdefault("screenshots", str(setup["folder"] / "screenshots"))]
    if os.environ.get("WEB_SCREENSHOT"):
        folders.append(os.environ["WEB_SCREENSHOT"])
    width = pg.viewport_size["width"]  # the whole page: a viewport that tall (full_page loses the touch emulation)
    pg.set_viewport_size({"width": width, "height": pg.evaluate("document.documentElement.scrollHeight")})
    for folder in folders:
        os.makedirs(folder, exist_ok=True)
        pg.screenshot(path=os.path.join(folder, name))


def test_timings(page):
    photos = TIMINGS.get("photos", {})
    inference = sorted(t["inference"] for _, t in photos.values())
    total = sorted(t["total"] for _, t in photos.values())
    print(
        f"\nweb page: open -> model ready {TIMINGS['model_ready_ms'] / 1000:.2f} s, open -> first result "
        f"{TIMINGS['first_result_s']:.2f} s; per photo ({len(photos)}): inference median "
        f"{np.median(inference) if inference else float('nan'):.0f} ms, decode + preprocess + inference median "
        f"{np.median(total) if total else float('nan'):.0f} ms"
    )
    for name, (seconds, t) in photos.items():
        print(
            f"  {name}: {seconds * 1000:.0f} ms choose -> result (decode {t['decode']:.0f}, preprocess "
            f"{t['preprocess']:.0f}, inference {t['inference']:.0f} ms)"
        )
    print(f"  screenshots in {TIMINGS.get('screenshots')}")
    assert TIMINGS["first_result_s"] < 60
