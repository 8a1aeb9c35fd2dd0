"""The in-browser classifier (web/, serve_web.py) in real headless Chromium, against the Python path that
`predict.py --model skin_model.onnx` takes: the same crop pixels and calibrated P(malignant) within 1e-3 on real
photos (EXIF-rotated, transparent, 16-bit, grey, odd sizes), the same words as predict.py prints (the label, P
against the threshold, the operating point, a lesion-type model's types), the cautions beside the result, the
model card's summary, the heat map in predict.py --explain's colours and its toggle, messages for bad files, no
network request after load, keyboard use, phone and desktop layouts, screenshots and timings
(`pytest -s tests/test_web.py` prints them; WEB_SCREENSHOT=DIR also saves the screenshots there). Also, without
a browser: every function the page shares with Python has a twin of the same name there.
serve_web.py's own checks (the build, what it serves, its headers and errors) are in tests/test_serve_web.py.

Needs Chromium (apt-get install -y chromium, or CHROMIUM=/path/to/chrome), node_modules (npm ci) and
Playwright (pip install playwright). Without them the browser tests skip on a developer machine and fail
where the CI environment variable is set."""

import hashlib
import json
import os
import re
import shutil
import time
import urllib.request

import measure
import numpy as np
import onnx
import pytest
from PIL import Image
from scipy.special import softmax

import model
import predict
from conftest import ROOT, grey_photo, make_net, run, save_model, skip_or_fail, start_server
from skinlesion import answer, explain, familiarity, files, messages, metrics, model_file, photos

pytestmark = pytest.mark.slow  # each test starts serve_web.py (and a browser): make test, not make check

SIZE = 64
TIMINGS = {}  # filled by the tests, printed by test_timings
WEB = os.path.join(ROOT, "web")
NO_PYTHON_TWIN = {  # functions of web/preprocess.js without a namesake in skinlesion/photos.py, and why
    "resizeBicubic": "Pillow's img.resize(..., Image.BICUBIC), ported bit for bit",
    "roundHalfEven": "Python's own round()",
}
APP_TWINS = {"decisionTexts": answer, "likelyTypes": answer, "modelCautions": answer, "classProbabilities": model,
             "calibratedProbabilities": model, "malignantSumText": predict, "reweighted": metrics,
             "predictiveValues": metrics, "weakModelWarning": metrics, "prevalenceTexts": answer,
             "unfamiliarSentence": familiarity, "answerShown": answer, "marked": answer,
             "percentText": messages}  # fmt: skip
TYPES = ["nevus", "seborrheic_keratosis", "basal_cell_carcinoma", "melanoma_invasive"]  # the lesion-type model's
TYPE_NAMES = ["Nevus", "Seborrheic Keratosis", "Basal Cell Carcinoma", "Melanoma Invasive"]
# the lesion-type model's calibration: softmax(a * logits + b * malignant)
CALIBRATION = {"method": "platt", "a": 1.6, "b": -0.3, "val_log_loss_before": 0.6, "val_log_loss_after": 0.5,
               "val_ece_before": 0.1, "val_ece_after": 0.05, "applies_to": "logits"}  # fmt: skip


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
        skip_or_fail("the web page tests need " + ", ".join(missing))


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


def reference(path, session, meta):
    """What predict.py --model skin_model.onnx computes for a photo, by its own code (predict.onnx_predictor): the
    calibrated P(malignant) (the file's p_malignant), the class probabilities, the cam and whether the photo is
    unfamiliar (familiarity.unfamiliar); with the crop's uint8 pixels (H x W x 3)."""
    img = photos.load_image(path)
    p, probabilities, cam, distance = predict.onnx_predictor(session, meta, tta=False, explain_it=True)(img)
    cfg = model_file.meta_data_config(meta)
    x = photos.preprocess(img, cfg)
    pixels = (x.transpose(1, 2, 0) * np.array(cfg["std"]) + np.array(cfg["mean"])) * 255
    assert np.abs(pixels - pixels.round()).max() < 0.01
    unfamiliar = familiarity.unfamiliar(distance, meta)
    return dict(p=p, probabilities=probabilities, crop=pixels.round().astype(np.uint8), cam=cam, unfamiliar=unfamiliar)


def familiar_names(refs):
    """The photos predict.py answers (not unfamiliar), by P(malignant), lowest first; at least two."""
    names = sorted((name for name, ref in refs.items() if not ref["unfamiliar"]), key=lambda name: refs[name]["p"])
    assert len(names) >= 2, {name: ref["unfamiliar"] for name, ref in refs.items()}
    return names


def export(checkpoint, path, check_images):
    """`python export_onnx.py` of checkpoint to path."""
    r = run(
        "export_onnx.py",
        "--model",
        checkpoint,
        "--output",
        path,
        "--check-images",
        check_images,
        cwd=os.path.dirname(path),
    )
    assert r.returncode == 0, r.stdout + r.stderr


def answers(path, photo_paths):
    """Python's answers for the photos (reference), with the exported model's threshold moved between their
    probabilities if none or all reach it: (refs, threshold)."""
    session, meta = model.load_onnx(path)
    refs = {name: reference(photo, session, meta) for name, photo in photo_paths.items()}
    ps = sorted(ref["p"] for ref in refs.values())
    threshold = meta["threshold"]
    if not ps[0] < threshold <= ps[-1]:  # both answers among the photos
        threshold = (ps[len(ps) // 2 - 1] + ps[len(ps) // 2]) / 2
        set_threshold(path, threshold)
    assert ps[-1] - ps[0] > 0.05, ps  # the model's answer varies across the photos: the comparison can fail
    return refs, threshold


@pytest.fixture(scope="module")
def setup(tmp_path_factory, trained_model, trained_onnx):
    """The model the test suite trained, exported by export_onnx.py (conftest.trained_onnx, copied without its int8
    twin: the page runs the full model), with its model card beside it (as AItraining.py leaves it beside the
    .pth); the photos and Python's answers for them."""
    folder = tmp_path_factory.mktemp("web")
    path = str(folder / "skin_model.onnx")
    shutil.copy(trained_onnx["full"], path)
    card = os.path.splitext(trained_model[0])[0] + ".md"
    assert os.path.isfile(card), "AItraining.py wrote no model card beside the model"
    shutil.copy(card, folder / "skin_model.md")
    photo_paths = write_photos(str(folder / "photos"))
    refs, threshold = answers(path, photo_paths)
    return dict(folder=folder, model=path, card=card, photos=photo_paths, refs=refs, threshold=threshold)


@pytest.fixture(scope="module")
def types_setup(tmp_path_factory, setup):
    """A lesion-type model: a random-init 4-class EfficientNet-B0 (conftest.make_net's, with a 4-class head),
    two of its classes malignant, with a calibration, at chance, and an operating point that flags almost every
    photo; saved as AItraining.py saves a model (no card beside it), exported by export_onnx.py; Python's answers
    for the photos."""
    import torch

    folder = tmp_path_factory.mktemp("web_types")
    net = make_net(SIZE, seed=1)
    net.reset_classifier(len(TYPES))
    with torch.no_grad():
        torch.nn.init.uniform_(net.classifier.weight, -0.7 * 0.2, 0.7 * 0.2)
        torch.nn.init.zeros_(net.classifier.bias)
    op = dict(target_sensitivity=0.9, threshold=0.5, sensitivity=0.95, sensitivity_ci95=[0.8, 1.0])
    op.update(specificity=0.1, specificity_ci95=[0.02, 0.25], n_malignant=20, n_benign=20)
    checkpoint = save_model(
        folder / "types.pth",
        net.eval(),
        SIZE,
        classes=TYPES,
        malignant_classes=TYPES[2:],
        class_names=TYPE_NAMES,
        calibration=CALIBRATION,
        at_chance=True,
        val_metrics={"roc_auc": 0.52},
        val_auc_ci95=[0.41, 0.63],
        operating_point=op,
    )
    path = str(folder / "types.onnx")
    export(checkpoint, path, os.path.dirname(setup["photos"]["grey.jpg"]))
    names = ["lesion_4x3.jpg", "lesion_portrait.png", "transparent.png", "grey.jpg"]
    refs, threshold = answers(path, {name: setup["photos"][name] for name in names})
    return dict(folder=folder, model=path, photos=setup["photos"], refs=refs, threshold=threshold)


def serving(model_path, site_dir):
    """serve_web.py building into a folder of its own and serving it on a free port: yields {url, web}."""
    require_browser()
    proc, url, _, _ = start_server("--model", model_path, "--site-dir", site_dir, log=site_dir.parent / "server.log")
    try:
        yield dict(url=url, web=str(site_dir))
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def server(setup):
    yield from serving(setup["model"], setup["folder"] / "site")


@pytest.fixture(scope="module")
def types_server(types_setup):
    yield from serving(types_setup["model"], types_setup["folder"] / "site")


@pytest.fixture(scope="module")
def browser(server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=find_chromium(), headless=True, args=measure.CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def open_page(browser, url, requests, **context_args):
    """The page in a fresh context, its service worker blocked (test_a_second_visit_works_offline... has one)."""
    context = browser.new_context(service_workers="block", **context_args)
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
    assert run["label"] == label and run["unfamiliar"] == ref["unfamiliar"]
    text = page["page"].inner_text("#result")
    p_text, t_text, _ = answer.decision_texts(
        run["p"], setup["threshold"], answer.BORDERLINE
    )  # the digits predict.py prints
    if ref["unfamiliar"]:  # withheld as predict.py withholds it: no label, no P
        assert "Prediction: unfamiliar" in text and "P(malignant) =" not in text and f"Prediction: {label}" not in text
        return
    assert f"Prediction: {label}" in text and f"P(malignant) = {p_text} (threshold {t_text}" in text
    assert page["page"].is_visible("text=This is not a medical device; see a doctor about any lesion that worries you")
    if ref["cam"].max() <= 0:  # no evidence for malignant at all (the map is signed): said in words, no blank overlay
        assert "no region of the photo stands out as evidence for malignant" in text
        assert not page["page"].is_visible("#heat")


def predict_prints(photo, model_path, capsys):
    """The lines `python predict.py photo --model model_path` prints (its main, in this process)."""
    capsys.readouterr()
    predict.main([photo, "--model", model_path])
    return capsys.readouterr().out.splitlines()


def result_lines(pg):
    """The page's result, by element: the label, the P line, the operating point and the Type line."""
    ids = ["label", "probability", "operating-point", "types"]
    return {i: pg.inner_text(f"#{i}") if pg.is_visible(f"#{i}") else None for i in ids}


def test_page_says_what_predict_py_prints(page, setup, capsys):
    names = familiar_names(setup["refs"])
    for name in [names[0], names[-1]]:  # the most benign and the most malignant photo predict.py answers
        lines = predict_prints(setup["photos"][name], setup["model"], capsys)
        run, _ = classify(page["page"], setup["photos"][name])
        said = result_lines(page["page"])
        assert said["label"] == lines[0] == f"Prediction: {run['label']}"
        p_line = lines[1].split(":")[0]  # up to the borderline remark
        assert p_line.startswith("P(malignant) = ") and said["probability"].startswith(p_line.rstrip(")")), lines
        operating = [line for line in lines if line.startswith("Operating point: ")]
        assert said["operating-point"] == (operating[0] if operating else None)
        assert said["types"] is None and not any(line.startswith("Type: ") for line in lines)  # a two-class model


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
    pg.keyboard.press("Space")  # the toggle, by keyboard: the map, its legend and the sentence about it go
    assert not pg.is_visible("#heat") and pg.is_visible("#crop")
    assert not pg.is_visible("#heat-text") and not pg.is_visible("#legend")
    classify(pg, setup["photos"][name])  # the next photo keeps the choice
    assert not pg.is_visible("#heat") and not pg.is_visible("#heat-text") and pg.is_visible("#show-heat")
    pg.focus("#show-heat")
    pg.keyboard.press("Space")
    assert pg.is_visible("#heat") and pg.is_visible("#heat-text") and pg.is_visible("#legend")
    shoot(pg, setup, "web_desktop.png")


def test_heat_map_colours_are_those_of_predict_py_explain(page):
    """The page colours a value as skinlesion/explain.py's overlay does (inferno, alpha = value squared), and its
    legend is that ramp."""
    pg = page["page"]
    values = np.linspace(0, 1, 257)
    got = np.array(pg.evaluate("(vs) => import('./app.js').then((app) => vs.map(app.colour))", values.tolist()))
    want = explain.overlay(values) * 255
    assert np.abs(got[:, :3] - want[:, :3]).max() <= 7 and np.abs(got[:, 3] - want[:, 3]).max() <= 0.5
    legend = pg.evaluate("""(() => { const c = document.getElementById('ramp');
        return Array.from(c.getContext('2d').getImageData(0, 0, c.width, 1).data); })()""")
    legend = np.array(legend).reshape(-1, 4)
    ramp = explain.overlay(np.linspace(0, 1, len(legend))) * 255
    assert (legend[:, 3] == 255).all() and np.abs(legend[:, :3] - ramp[:, :3]).max() <= 7


def test_all_zero_heat_map_is_said_in_words(page):
    pg = page["page"]
    drawn = pg.evaluate("import('./app.js').then((app) => app.drawHeatMap([0, 0, 0, 0], 2, 2, 64))")
    assert drawn is False
    assert "no region of the photo stands out as evidence for malignant" in pg.inner_text("#heat-text")
    assert not pg.is_visible("#heat")


def test_bad_files_get_a_message_and_the_page_keeps_working(page, setup, tmp_path):
    pg = page["page"]
    (tmp_path / "notes.txt").write_text("not a photo\n")
    (tmp_path / "renamed.jpg").write_bytes(b"%PDF-1.4\n% a document, not a photo\n" * 20)
    (tmp_path / "empty.jpg").write_bytes(b"")
    Image.new("RGB", (8000, 5000), (205, 150, 125)).save(tmp_path / "40mp.jpg", quality=50)
    with open(tmp_path / "huge.jpg", "wb") as f:
        f.truncate(31_000_000)
    Image.new("RGB", (100000, 1), (200, 150, 120)).save(tmp_path / "thin.png", optimize=True)  # 375 bytes
    cases = {
        "thin.png": "is 100000 × 1 pixels, one side over 10 times the other: not a photo of a lesion",
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
    assert loaded.count("model_card.md") == 1  # asked once, while the model loads
    assert set(loaded) == {
        "",
        "style.css",
        "app.js",
        "preprocess.js",
        "vendor/ort.wasm.bundle.min.mjs",
        "model.json",
        "model.onnx",
        "model_card.md",
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


def test_a_page_that_cannot_check_its_model_runs_nothing(browser, server, setup):
    """Where the browser offers no SHA-256 (crypto.subtle exists only in a secure context: a copy served over plain
    http from another computer), the model is not checked, so it is not run: one message says where to serve it."""
    context = browser.new_context(service_workers="block")
    context.add_init_script("Object.defineProperty(globalThis.crypto, 'subtle', { value: undefined })")
    pg = context.new_page()
    pg.goto(server["url"])
    pg.wait_for_selector("#app[data-state=model-error]")
    message = pg.inner_text("#message")
    assert "this page can check its model file only over https or at 127.0.0.1" in message, message
    run, _ = classify(pg, setup["photos"]["grey.jpg"])
    assert run is None and "The model failed to load" in pg.inner_text("#message")
    context.close()


def test_model_bytes_of_another_build_are_refused_before_they_run(browser, server, setup, familiar_onnx):
    """model.onnx whose SHA-256 is not model.json's model_sha256 (another valid model: a page that got files of two
    builds) is refused in one message, nothing run; the page's own model (test_page_classifies_like_python) runs."""
    with open(familiar_onnx[0], "rb") as f:
        other = f.read()
    context = browser.new_context(service_workers="block")
    pg = context.new_page()
    pg.route("**/model.onnx", lambda route: route.fulfill(status=200, body=other))
    pg.goto(server["url"])
    pg.wait_for_selector("#app[data-state=model-error]")
    expected = json.loads((setup["folder"] / "site" / "model.json").read_text())["model_sha256"]
    found = hashlib.sha256(other).hexdigest()
    message = pg.inner_text("#message")
    assert f"the model file's SHA-256 {found} is not the {expected} that model.json names" in message, message
    run, _ = classify(pg, setup["photos"]["grey.jpg"])
    assert run is None and "The model failed to load" in pg.inner_text("#message")
    context.close()


def assert_cautions_beside_the_result(pg, expected):
    """The cautions are the list right under the result's label and P, each one said, none in the header."""
    assert pg.is_visible("#result #cautions")
    items = pg.locator("#cautions li").all_inner_texts()
    assert len(items) == len(expected) and all(want in item for item, want in zip(items, expected)), items
    label, cautions = pg.locator("#label").bounding_box(), pg.locator("#cautions").bounding_box()
    assert 0 <= cautions["y"] - (label["y"] + label["height"]) < 150, (label, cautions)
    assert not any(word in pg.inner_text("header") for word in ("chance", "Borderline", "threshold"))


def test_model_at_chance_and_borderline_result_are_said(browser, server, setup):
    name = familiar_names(setup["refs"])[0]
    p = setup["refs"][name]["p"]
    warning = "this threshold calls almost every photo malignant (it cleared only 5% of benign)"
    with open(os.path.join(server["web"], "model.json")) as f:
        sidecar = dict(json.load(f), at_chance=True, val_auc_ci95=[0.4, 0.7], operating_point_warning=warning)
    sidecar.update(threshold=round(p + 0.01, 4), card_summary=None)  # 0.01 from the threshold; no card summary
    context = browser.new_context()
    pg = context.new_page()
    pg.route(
        "**/model.json",
        lambda route: route.fulfill(status=200, content_type="application/json", body=json.dumps(sidecar)),
    )
    pg.goto(server["url"])
    pg.wait_for_selector("#app[data-state=ready]")
    assert not pg.is_visible("#cautions")  # said with the result it qualifies
    assert pg.is_visible("#no-summary") and not pg.is_visible("#card-summary") and pg.is_visible("#card-link")
    run, _ = classify(pg, setup["photos"][name])
    assert run["borderline"] and run["label"] == "benign"
    assert "Prediction: benign" in pg.inner_text("#result")
    expected = [f"Caution: {text}." for text in answer.model_cautions(dict(at_chance=True, val_auc_ci95=[0.4, 0.7]))]
    expected += [f"Caution: {warning} on its validation photos.", "Borderline: P(malignant) is within 0.02"]
    assert_cautions_beside_the_result(pg, expected)
    assert "cannot be told from chance (its validation ROC-AUC 95% interval 0.400-0.700" in expected[0]
    context.close()


def test_about_this_model_shows_the_card(page, server, setup):
    pg = page["page"]
    with open(os.path.join(server["web"], "model.json")) as f:
        summary = json.load(f)["card_summary"]
    assert summary and pg.is_visible("#about") and not pg.is_visible("#no-summary")
    assert pg.inner_text("#trained-on") == summary["trained_on"] and pg.inner_text("#how-well") == summary["how_well"]
    assert pg.inner_text("#intended-use") == summary["intended_use"]
    assert pg.locator("#card-limits li").all_inner_texts() == summary["limits"]
    with open(os.path.join(server["web"], "model.onnx"), "rb") as f:  # to compare with the published one
        assert pg.inner_text("#model-sha256") == hashlib.sha256(f.read()).hexdigest()
    assert pg.is_visible("#card-link") and pg.get_attribute("#card-link a", "href") == "model_card.md"
    with open(setup["card"], "rb") as f, urllib.request.urlopen(server["url"] + "model_card.md", timeout=10) as got:
        assert got.read() == f.read()  # the card, fetched here (not by the page: it makes no request after load)


@pytest.fixture(scope="module")
def types_page(browser, types_server):
    requests = []
    page, errors = open_page(browser, types_server["url"], requests, viewport={"width": 1280, "height": 900})
    page.wait_for_selector("#app[data-state=ready]", timeout=60_000)
    yield dict(page=page, requests=requests, errors=errors)
    page.context.close()


def test_lesion_type_model_on_the_page(types_page, types_setup, capsys):
    pg, setup = types_page["page"], types_setup
    session, meta = model.load_onnx(setup["model"])
    malignant = model.malignant_mask(meta)
    assert list(malignant) == [False, False, True, True] and meta["calibration"] == CALIBRATION
    for name, ref in setup["refs"].items():
        before = len(types_page["requests"])
        run, _ = classify(pg, setup["photos"][name])
        assert run is not None, pg.inner_text("#message")
        assert types_page["requests"][before:] == []
        x = photos.preprocess(photos.load_image(setup["photos"][name]), model_file.meta_data_config(meta))
        logits, p_malignant = session.run(["logits", "p_malignant"], {"image": x[None]})
        # the one calibrated distribution, by hand: softmax(a * logits + b * malignant); P is its malignant sum
        distribution = softmax(CALIBRATION["a"] * logits[0].astype(np.float64) + CALIBRATION["b"] * malignant)
        calibrated = distribution[malignant].sum()
        assert abs(run["p"] - p_malignant[0]) <= 1e-3 and abs(run["p"] - calibrated) <= 1e-3
        assert abs(run["p"] - ref["p"]) <= 1e-3 and abs(p_malignant[0] - calibrated) <= 1e-5  # the ONNX output
        assert np.allclose(run["probabilities"], distribution, atol=1e-3)  # the page's types: its own logits, as P
        assert abs(run["p"] - np.sum(np.array(run["probabilities"])[malignant])) <= 1e-5  # add up to the P shown
        assert abs(ref["p"] - np.sum(np.array(ref["probabilities"])[malignant])) <= 1e-6  # predict.py's, ONNX
        label = model.CLASSES[int(ref["p"] >= setup["threshold"])]
        assert run["label"] == label and f"Prediction: {label}" == pg.inner_text("#label")
        top = TYPE_NAMES[int(np.argmax(ref["probabilities"]))]
        assert run["types"][0][0] == top and pg.inner_text("#types").startswith(f"Type: {top} (P = ")
        lines = predict_prints(setup["photos"][name], setup["model"], capsys)
        assert pg.inner_text("#types") == next(line for line in lines if line.startswith("Type: "))
        assert pg.inner_text("#malignant-types") == next(line for line in lines if line.startswith("Malignant types"))
        assert pg.inner_text("#label") == lines[0]
        assert pg.inner_text("#operating-point") == next(line for line in lines if line.startswith("Operating point"))
        expected = [f"Caution: {text}." for text in answer.model_cautions(meta)]
        if abs(ref["p"] - setup["threshold"]) < answer.BORDERLINE:
            expected.append("Borderline")
        assert_cautions_beside_the_result(pg, expected)
        assert "cannot be told from chance" in expected[0] and "calls almost every photo malignant" in expected[1]
    assert {ref["p"] >= setup["threshold"] for ref in setup["refs"].values()} == {True, False}
    summary = meta["card_summary"]  # export_onnx.py's, from the model's metadata; no card file beside it
    assert pg.is_visible("#about") and pg.inner_text("#trained-on") == summary["trained_on"]
    assert not pg.is_visible("#card-link")
    shoot(pg, setup, "web_types.png")
    assert types_page["errors"] == []


def test_page_functions_agree_with_their_python_twins(page):
    pg = page["page"]
    pairs = [(0.734, 0.5), (0.5001, 0.5), (0.50000001, 0.5), (0.0625, 0.5), (0.5625, 0.5), (0.1875, 0.9)]
    pairs += [(0.4999, 0.5), (0.51, 0.5), (0.3, 0.31), (0.123456789, 0.123457), (1.0, 1.0), (0.0, 0.0)]
    pairs += [(0.4822319, 0.482232), (0.5000004, 0.5)]  # equal to 6 digits: 'just below', 'just above'
    got = pg.evaluate(
        "([pairs, margin]) => import('./app.js').then((app) => pairs.map(([p, t]) => app.decisionTexts(p, t, margin)))",
        [pairs, answer.BORDERLINE],
    )
    assert got == [list(answer.decision_texts(p, t, answer.BORDERLINE)) for p, t in pairs]
    assert got[3][0] == "0.062"  # a tie: Python rounds it to even, toFixed would say 0.063
    assert got[-2][0] == "just below 0.482232" and got[-1][0] == "just above 0.500000"
    shares = [0.05, 0.0001, 0.00015, 0.9999, 0.5, 0.00999, 0.001, 1e-6, 0.123456, 0.0625]
    rules = [[unfamiliar, asked] for unfamiliar in (False, True) for asked in (False, True)]
    percents, shown, marks = pg.evaluate(
        """([shares, rules]) => import('./app.js').then((app) => [shares.map(app.percentText),
            rules.map(([u, a]) => app.answerShown(u, a)), rules.map(([u]) => app.marked('P(malignant) = 0.7', u))])""",
        [shares, rules],
    )
    assert percents == [messages.percent_text(s) for s in shares] and percents[:2] == ["5.0%", "0.01%"]
    assert shown == [answer.answer_shown(u, a) for u, a in rules] == [True, True, False, True]
    assert marks == [answer.marked("P(malignant) = 0.7", u) for u, _ in rules]
    logits = [[0.3, -1.2, 2.5, 2.5], [80.0, -80.0, 0.0, 1e-9]]
    probabilities = pg.evaluate("(rows) => import('./app.js').then((app) => rows.map(app.classProbabilities))", logits)
    assert np.allclose(probabilities, model.class_probabilities(logits), rtol=1e-12, atol=1e-300)
    meta = dict(classes=TYPES, class_names=TYPE_NAMES, at_chance=True, val_auc_ci95=[0.41, 0.63])
    op = dict(sensitivity=0.1, sensitivity_ci95=[0.0, 0.3], specificity=0.97, specificity_ci95=[0.9, 1.0])
    sidecar = dict(meta, operating_point_warning=metrics.operating_point_warning(op))  # as serve_web.py writes it
    ranked, cautions = pg.evaluate(
        """([p, sidecar]) => import('./app.js').then((app) =>
            [app.likelyTypes(app.classProbabilities(p), sidecar), app.modelCautions(sidecar)])""",
        [logits[0], sidecar],
    )
    want = answer.likely_types(model.class_probabilities([logits[0]])[0], meta)
    assert [name for name, _ in ranked] == [name for name, _ in want] == [TYPE_NAMES[i] for i in (2, 3, 0, 1)]
    assert np.allclose([q for _, q in ranked], [q for _, q in want], rtol=1e-12)
    assert cautions == answer.model_cautions(dict(meta, operating_point=op)) and len(cautions) == 2
    sizes = [(1000, 100), (100, 1000), (1001, 100), (100, 1001), (100000, 1), (640, 480), (1, 1)]
    elongated = pg.evaluate(
        "(sizes) => import('./preprocess.js').then((p) => [p.MAX_ASPECT, sizes.map(([w, h]) => p.tooElongated(w, h))])",
        sizes,
    )
    assert elongated == [photos.MAX_ASPECT, [photos.too_elongated(w, h) for w, h in sizes]]
    assert elongated[1] == [False, False, True, True, True, False, False]
    typed = dict(meta, malignant_classes=TYPES[2:], calibration=CALIBRATION)
    calibrated, summed = pg.evaluate(
        """([p, meta]) => import('./app.js').then((app) => [app.calibratedProbabilities(p, meta),
            app.malignantSumText(app.calibratedProbabilities(p, meta), meta)])""",
        [logits[0], typed],
    )
    by_hand = softmax(CALIBRATION["a"] * np.array(logits[0]) + CALIBRATION["b"] * np.array([0, 0, 1, 1]))
    assert np.allclose(calibrated, by_hand, rtol=1e-12) and np.allclose(
        calibrated, model.calibrated_probabilities([logits[0]], typed)[0]
    )
    assert summed == predict.malignant_sum_text(by_hand, typed)
    op = dict(op, specificity=0.27)
    prevalence = [[0.7, 0.5, 0.05], [0.9, 0.3, 0.01]]
    at, values, weak, texts = pg.evaluate(
        """([rows, op, meta]) => import('./app.js').then((app) => [rows.map(([p, a, b]) => app.reweighted(p, a, b)),
            app.predictiveValues(0.9, 0.6, 0.05), app.weakModelWarning(op, [0.62, 0.8]),
            app.prevalenceTexts(meta, 0.05, false)])""",
        [prevalence, op, dict(prior_malignant=0.5, operating_point=op)],
    )
    assert np.allclose(at, [metrics.reweighted(*row) for row in prevalence], rtol=1e-12)
    assert np.allclose(values, metrics.predictive_values(0.9, 0.6, 0.05), rtol=1e-12)
    assert weak == metrics.weak_model_warning(op, [0.62, 0.8])
    assert texts == list(answer.prevalence_texts(dict(prior_malignant=0.5, operating_point=op), 0.05, False))
    tested = dict(sensitivity=0.8, specificity=0.3)  # the test figures, where the model has them: PPV from them
    cases = [[0.05, tested], [0.0001, tested], [None, tested], [0.05, None]]
    texts = pg.evaluate(
        """([cases, meta]) => import('./app.js').then((app) =>
            cases.map(([prevalence, tested]) => app.prevalenceTexts(meta, prevalence, false, tested)))""",
        [cases, dict(prior_malignant=0.5, operating_point=op)],
    )
    meta = dict(prior_malignant=0.5, operating_point=op)
    assert texts == [list(answer.prevalence_texts(meta, share, False, found)) for share, found in cases]
    assert "from the test sensitivity" in texts[0][1] and "0.01%" in texts[1][1] and texts[2][1] is None


def js_functions(name):
    """The names of the functions a file of web/ exports."""
    with open(os.path.join(WEB, name), encoding="utf-8") as f:
        return re.findall(r"^export (?:async )?function (\w+)", f.read(), re.M)


def snake_case(name):
    return re.sub(r"(?<!^)([A-Z])", r"_\1", name).lower()


def test_the_page_writes_text_never_html():
    """Text from the model file (class names, the card's summary) reaches the page through textContent only: no
    script of the page parses a string as HTML."""
    for name in ("app.js", "preprocess.js"):
        with open(os.path.join(ROOT, "web", name), encoding="utf-8") as f:
            code = f.read()
        found = re.findall(r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|createContextualFragment|DOMParser"
                           r"|srcdoc|\beval\(|new Function", code)  # fmt: skip
        assert found == [], (name, found)
        assert "textContent" in code or name == "preprocess.js"


def test_every_function_the_page_shares_with_python_has_its_python_name():
    """Each step of web/preprocess.js is the function of the same name in skinlesion/photos.py (camelCase there
    snake_case here), but for those NO_PYTHON_TWIN names with the reason; app.js's words are predict.py's."""
    exported = js_functions("preprocess.js")
    assert "loadImage" in exported and "centreCrop" in exported
    missing = [n for n in exported if n not in NO_PYTHON_TWIN and not callable(getattr(photos, snake_case(n), None))]
    assert missing == [], f"web/preprocess.js exports {missing} without a twin in skinlesion/photos.py"
    assert set(NO_PYTHON_TWIN) <= set(exported), "NO_PYTHON_TWIN names a function preprocess.js no longer has"
    in_app = js_functions("app.js")
    for name, module in APP_TWINS.items():
        assert name in in_app and callable(getattr(module, snake_case(name), None)), (name, module.__name__)


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


@pytest.fixture(scope="module")
def familiar_page(tmp_path_factory, familiar_model, familiar_onnx, browser):
    """The page serving conftest.familiar_model (a small trained model with a familiarity measure), exported by
    export_onnx.py (conftest.familiar_onnx, copied), in a page of its own (the module's browser: one Playwright per
    process); with a flat grey photo and one of the model's own test photos."""
    checkpoint, data = familiar_model
    folder = tmp_path_factory.mktemp("web_familiar")
    path = str(shutil.copyfile(familiar_onnx[0], folder / "familiar.onnx"))
    benign = os.path.join(data, "test", "benign")
    photo_paths = dict(grey=grey_photo(folder / "grey.png"), own=os.path.join(benign, sorted(os.listdir(benign))[0]))
    for served in serving(path, folder / "site"):
        page, errors = open_page(browser, served["url"], [], viewport={"width": 1280, "height": 900})
        yield dict(page=page, errors=errors, model=path, photos=photo_paths, folder=folder)
        page.context.close()


def test_the_page_shows_why_instead_of_a_result_for_an_unfamiliar_photo(familiar_page):
    """A flat grey photo: the page says 'Prediction: unfamiliar' and predict.py's line why (the distance of the
    ONNX graph, the limit), no P and no heat map, and a button that shows the answer, marked unreliable; the
    model's own test photo gets its ordinary result."""
    pg, photo_paths = familiar_page["page"], familiar_page["photos"]
    session, meta = model.load_onnx(familiar_page["model"])
    x = photos.preprocess(photos.load_image(photo_paths["grey"]), model_file.meta_data_config(meta))
    (distance,) = session.run(["familiarity_distance"], {"image": x[None]})[0]
    run_, _ = classify(pg, photo_paths["grey"])
    assert run_["unfamiliar"] and abs(run_["distance"] - distance) <= 1e-3 * distance
    assert pg.inner_text("#label") == "Prediction: unfamiliar"
    said = familiarity.unfamiliar_text(run_["distance"], meta, shown=False).split(" (--show-unfamiliar")[0]
    assert pg.inner_text("#unfamiliar") == said and said.startswith(familiarity.unfamiliar_sentence(meta))
    assert not pg.is_visible("#probability") and not pg.is_visible("#heat") and not pg.is_visible("#types")
    assert pg.is_visible("#show-anyway") and not pg.is_visible("#unreliable")
    shots = [str(familiar_page["folder"])] + (
        [os.environ["WEB_SCREENSHOT"]] if os.environ.get("WEB_SCREENSHOT") else []
    )
    for folder in shots:
        os.makedirs(folder, exist_ok=True)
        pg.screenshot(path=os.path.join(folder, "web_unfamiliar.png"), full_page=True)
    pg.click("#show-anyway")
    label = model.CLASSES[int(run_["p"] >= meta["threshold"])]
    assert pg.inner_text("#unreliable") == f"Unreliable answer: {label}" and pg.is_visible("#probability")
    assert pg.inner_text("#unfamiliar") == familiarity.unfamiliar_text(run_["distance"], meta, shown=True)
    assert not pg.is_visible("#show-anyway") and pg.inner_text("#label") == "Prediction: unfamiliar"
    run_, _ = classify(pg, photo_paths["own"])
    assert not run_["unfamiliar"] and pg.inner_text("#label") in ("Prediction: benign", "Prediction: malignant")
    assert not pg.is_visible("#unfamiliar") and not pg.is_visible("#show-anyway") and pg.is_visible("#probability")
    sidecar = dict(familiarity=dict(image_types=["clinical: overview", "dermoscopic"]))
    said = pg.evaluate("(meta) => import('./app.js').then((app) => app.unfamiliarSentence(meta))", sidecar)
    assert said == familiarity.unfamiliar_sentence(sidecar)
    assert familiar_page["errors"] == []


def test_a_prevalence_typed_before_or_after_an_unfamiliar_photo_shows_nothing_of_its_answer(familiar_page, capsys):
    """Issue 29 §3: the page showed 'At a prevalence of 5.0%: P(malignant) = 0.107' with PPV and NPV for an
    unfamiliar photo. A share typed before it, and another typed after it: no P, no prevalence line, no PPV or NPV,
    no heat map; once shown anyway, each of those lines says what predict.py --show-unfamiliar prints, marked
    unreliable; a familiar photo's lines are unmarked."""
    pg, photo_paths, path = familiar_page["page"], familiar_page["photos"], familiar_page["model"]
    answer_ids = ["#probability", "#at-prevalence", "#assumes", "#heat", "#heat-text", "#tested", "#operating-point"]
    classify(pg, photo_paths["own"])
    pg.fill("#prevalence", "5")  # typed before
    assert pg.inner_text("#at-prevalence").startswith("At a prevalence of 5.0%: P(malignant) = ")
    run_, _ = classify(pg, photo_paths["grey"])
    assert run_["unfamiliar"] and not any(pg.is_visible(i) for i in answer_ids)
    pg.fill("#prevalence", "0.01")  # typed after
    text = pg.inner_text("#result")
    assert not any(pg.is_visible(i) for i in answer_ids) and not any(
        w in text for w in ("PPV", "NPV", "P(malignant) =")
    )
    pg.click("#show-anyway")
    status = predict.main([photo_paths["grey"], "--model", path, "--show-unfamiliar", "--prevalence", "0.0001"])
    assert status == predict.UNFAMILIAR_EXIT
    lines = capsys.readouterr().out.splitlines()
    at_prevalence = [line for line in lines if line.startswith(answer.UNRELIABLE + "At a prevalence of 0.01%")]
    ppv = [line for line in lines if line.startswith(answer.UNRELIABLE + "Prevalence: at a prevalence of 0.01%")]
    assert len(at_prevalence) == len(ppv) == 1, lines
    assert pg.inner_text("#at-prevalence") == f"{at_prevalence[0]}. {ppv[0]}"
    assert pg.inner_text("#probability").startswith(answer.UNRELIABLE + "P(malignant) = ")
    assert pg.is_visible("#assumes") and pg.inner_text("#heat-text").startswith(answer.UNRELIABLE + "Heat map")
    run_, _ = classify(pg, photo_paths["own"])
    assert not run_["unfamiliar"] and pg.inner_text("#at-prevalence").startswith("At a prevalence of 0.01%: P")
    assert "Unreliable" not in pg.inner_text("#result")
    pg.fill("#prevalence", "")
    assert familiar_page["errors"] == []


def test_the_test_and_external_figures_stand_beside_each_other_and_ppv_comes_from_the_test(browser, server, setup):
    """Issue 29 §4, §5: the page's 'Tested' line and an external data set's line beside it, as export_onnx.py puts
    them in the card summary; PPV and NPV at a typed prevalence from the test figures, the validation ones beside
    them (answer.prevalence_texts computes the same words)."""
    with open(os.path.join(server["web"], "model.json")) as f:
        sidecar = json.load(f)
    summary = dict(sidecar["card_summary"], tested="on the test photos, at the same threshold, it caught 90%")
    summary.update(externals=["on Clinic B (598 photos, 11% malignant), at the same threshold, it caught 70%"])
    summary["test_point"] = dict(sensitivity=0.9, specificity=0.33)
    sidecar.update(card_summary=summary, prior_malignant=0.5)
    context = browser.new_context()
    pg = context.new_page()
    pg.route("**/model.json", lambda route: route.fulfill(status=200, content_type="application/json",
                                                           body=json.dumps(sidecar)))  # fmt: skip
    pg.goto(server["url"])
    pg.wait_for_selector("#app[data-state=ready]")
    run_, _ = classify(pg, setup["photos"][familiar_names(setup["refs"])[0]])
    assert not run_["unfamiliar"] and pg.inner_text("#tested") == f"Tested: {summary['tested']}."
    assert pg.inner_text("#externals") == f"External validation: {summary['externals'][0]}."
    pg.fill("#prevalence", "5")
    _, said = answer.prevalence_texts(sidecar, 0.05, False, summary["test_point"])
    assert said.startswith("at a prevalence of 5.0%, from the test sensitivity") and "from the validation" in said
    assert pg.inner_text("#at-prevalence").endswith(f"Prevalence: {said}.")
    context.close()


def test_the_unfamiliar_and_borderline_rules_agree_with_their_python_twins(page):
    """The two rules a user reads, familiarity.is_unfamiliar and answer.is_borderline, and their twins in
    web/app.js (isUnfamiliar, isBorderline; decisionTexts says 'borderline' by it) answer alike at their edges: a
    NaN, a distance at the limit and the floats either side of it, |P - threshold| at the margin exactly and
    1e-12 either side of it, P at the threshold; and the page decides each only through its rule."""
    pg = page["page"]
    distances = []
    for limit in (1.0, 0.7391, 3.25):
        above, below = (float(np.nextafter(limit, side)) for side in (np.inf, -np.inf))
        distances += [[float("nan"), limit], [limit, limit], [above, limit], [below, limit], [0.0, limit]]
    distances += [[float("inf"), 1.0], [1.0, float("nan")]]
    expected = [True, False, True, False, False] * 3 + [True, True]
    cases, borderline = [], []
    for threshold in (0.5, 0.3, 0.9):
        for margin in (answer.BORDERLINE, 0.25):
            over, under = threshold + margin, threshold - margin
            at_over, at_under = over - threshold, threshold - under  # |P - threshold| exactly, as both compute it
            cases += [[over, threshold, at_over], [under, threshold, at_under]]
            cases += [[over, threshold, at_over + 1e-12], [over, threshold, at_over - 1e-12]]
            cases += [[threshold + margin - 1e-12, threshold, margin], [threshold - margin + 1e-12, threshold, margin]]
            cases += [[threshold + margin + 1e-12, threshold, margin], [threshold, threshold, margin]]
            cases += [[float("nan"), threshold, margin]]
            borderline += [False, False, True, False, True, True, False, True, False]
    assert all(abs(p - t) == m for p, t, m in cases[::9])  # the first case of each: P exactly at the margin
    unfamiliar, near, said = pg.evaluate(
        """([distances, cases]) => import('./app.js').then((app) => [
            distances.map(([d, limit]) => app.isUnfamiliar(d, limit)),
            cases.map(([p, t, margin]) => app.isBorderline(p, t, margin)),
            cases.map(([p, t, margin]) => app.decisionTexts(p, t, margin)[2])])""",
        [distances, cases],
    )
    assert [familiarity.is_unfamiliar(d, limit) for d, limit in distances] == unfamiliar == expected
    assert [answer.is_borderline(p, t, m) for p, t, m in cases] == near == borderline
    assert said == [answer.decision_texts(p, t, m)[2] for p, t, m in cases] == ["borderline" if b else "" for b in near]
    d, limits = np.array([d for d, _ in distances[:15]]), [limit for _, limit in distances[:15]]
    assert familiarity.is_unfamiliar(d, np.array(limits)).tolist() == expected[:15]  # one answer per photo
    p, t, m = (np.array(column) for column in zip(*cases))
    assert answer.is_borderline(p, t, m).tolist() == borderline
    with open(os.path.join(WEB, "app.js"), encoding="utf-8") as f:
        code = f.read()
    assert {"isUnfamiliar", "isBorderline"} <= set(js_functions("app.js"))
    assert len(re.findall(r"<=? *[\w.]*limit\b|\blimit\b[\w.]* *>=?", code)) == 1, "isUnfamiliar alone compares"
    assert len(re.findall(r"Math\.abs\([^)]*\) *<", code)) == 1, "isBorderline alone says borderline"


# ----------------------------------------------------------------------------- offline after the first visit


def until(pg, expression, timeout=120):
    """Wait until expression (JavaScript, awaited) is true in the page, across its reloads; fail after timeout s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if pg.evaluate(expression):
                return
        except Exception as e:  # the page reloaded while it was asked
            if "context was destroyed" not in str(e) and "navigat" not in str(e):
                raise
        time.sleep(0.1)
    pytest.fail(f"not true after {timeout} s: {expression}")


CACHED = """(async () => Object.fromEntries(await Promise.all((await caches.keys()).map(async (name) =>
  [name, (await (await caches.open(name)).keys()).map((r) => new URL(r.url).pathname).sort()]))))()"""


def cached_build(site):
    """(cache name, sorted URL paths) the worker of a build keeps: every file of the build but sw.js."""
    script = (site / "sw.js").read_text()
    files = json.loads(re.search(r"^const FILES = (.*);$", script, re.M).group(1))
    build = re.search(r'^const BUILD = "(\w+)";$', script, re.M).group(1)
    return f"skin-lesion-page-{build}", sorted("/" + name.removeprefix("./") for name in files)


def assert_runs(pg, photo, sha256, p):
    """The page is ready with the model of this SHA-256 and gives P(malignant) p for the photo."""
    pg.wait_for_selector(f"#model-sha256:text-is('{sha256}')", timeout=120_000)
    pg.wait_for_selector("#app[data-state=ready]", timeout=120_000)
    run, _ = classify(pg, photo)
    assert run is not None, pg.inner_text("#message")
    assert abs(run["p"] - p) < 1e-3, (run["p"], p)


def test_a_second_visit_works_offline_and_a_new_model_replaces_the_cached_one(browser, setup, familiar_onnx, tmp_path):
    """First visit online; once the worker controls the page its cache holds exactly this build, fetched as 304s
    (the HTTP cache's copies, revalidated: nothing downloaded twice, but the card the page only asked about).
    Offline, a reload gives the same answer. Then another model (another SHA-256) is served at the same origin:
    one online reload and the page runs it, the old build's cache gone; offline it still runs the new one."""
    photo = setup["photos"]["lesion_4x3.jpg"]
    other = str(shutil.copyfile(familiar_onnx[0], tmp_path / "other.onnx"))
    p_other = reference(photo, *model.load_onnx(other))["p"]
    sha = {path: files.file_sha256(path) for path in (setup["model"], other)}
    sites = {setup["model"]: tmp_path / "site_a", other: tmp_path / "site_b"}
    proc, url, port, _ = start_server(
        "--model", setup["model"], "--site-dir", sites[setup["model"]], log=tmp_path / "a.log"
    )
    context = browser.browser_type.launch_persistent_context(  # a profile on disk: its HTTP cache keeps the model
        str(tmp_path / "profile"), executable_path=find_chromium(), headless=True, args=measure.CHROMIUM_ARGS
    )
    try:
        pg = context.pages[0]
        pg.goto(url)
        assert_runs(pg, photo, sha[setup["model"]], setup["refs"]["lesion_4x3.jpg"]["p"])
        until(pg, "Boolean(navigator.serviceWorker.controller)")
        name, paths = cached_build(sites[setup["model"]])
        assert pg.evaluate(CACHED) == {name: paths}  # complete before the worker took over
        fetched = context.service_workers[0].evaluate(
            "performance.getEntriesByType('resource').map((e) => [new URL(e.name).pathname, e.transferSize])"
        )
        assert sorted(path for path, _ in fetched) == paths
        downloaded = [path for path, size in fetched if size > 1000]  # more than headers: not a 304
        assert downloaded == ["/model_card.md"], fetched  # the one file the page only asked about (HEAD)
        context.set_offline(True)
        pg.reload()
        assert_runs(pg, photo, sha[setup["model"]], setup["refs"]["lesion_4x3.jpg"]["p"])

        context.set_offline(False)
        proc.terminate()
        proc.wait(timeout=10)
        proc, *_ = start_server("--model", other, "--site-dir", sites[other], log=tmp_path / "b.log", port=port)
        pg.reload()  # the old build's page, from its cache; its new worker takes over and the page reloads
        assert_runs(pg, photo, sha[other], p_other)
        name, paths = cached_build(sites[other])
        assert pg.evaluate(CACHED) == {name: paths}  # the old build's cache is gone
        context.set_offline(True)
        pg.reload()
        assert_runs(pg, photo, sha[other], p_other)
        assert pg.evaluate(CACHED) == {name: paths}
    finally:
        context.close()
        proc.terminate()
        proc.wait(timeout=10)
