"""
Regenerate what docs/ holds from the demo, so that the README's pictures and examples cannot drift from the code:
the demo's training curves, evaluation pictures, Grad-CAM picture and model card, a screenshot of the page
classifying one of the demo's unseen photos, and flags.md from the scripts' constants blocks.

    make docs          # runs make demo first, then this
    python docs/make_docs.py --no-screenshot   # without the browser

Run from the project folder after `make demo`. Each picture is shrunk to at most WIDTH px and stays under 200 KB.
"""

import os
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

from skinlesion import cli, files, interrupts  # noqa: E402  (the project's package, beside docs/)

# -----------------------------------------------------------------------------
WIDTH = 1000  # largest width of a picture in docs/, in px, 100 to 4000
SCREENSHOT = True  # also photograph the page (needs Debian's chromium, playwright and node_modules)
PHOTO = "demo_data/unseen/malignant_1.jpg"  # the photo the page classifies for the screenshot
# -----------------------------------------------------------------------------
PICTURES = {"training_curves.png": "training_curves.png", "confusion_matrix.png": "confusion_matrix.png",
            "roc_curve.png": "roc_curve.png", "calibration.png": "calibration.png",
            "gradcam/malignant_1_jpg_gradcam.png": "gradcam.png"}  # fmt: skip
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]  # fmt: skip


def shrunk(source, target, width):
    """source as a PNG at most width px wide and under 200 KB (fewer colours if it must), into target."""
    from PIL import Image

    with Image.open(source) as img:
        img = img.convert("RGB")
        if img.width > width:
            img = img.resize((width, round(img.height * width / img.width)), Image.LANCZOS)
        for colours in (None, 256, 128, 64):
            picture = img if colours is None else img.quantize(colours)
            picture.save(target, optimize=True)
            if os.path.getsize(target) < 200_000:
                return
    cli.die(f"{target} stays over 200 KB; lower --width")


def screenshot(target):
    """The page, served by serve_web.py for the demo's skin_model.onnx, after classifying PHOTO."""
    from playwright.sync_api import sync_playwright

    chromium = next(p for p in ("/usr/lib/chromium/chromium", "/usr/bin/chromium") if os.path.exists(p))
    server = subprocess.Popen(
        [sys.executable, "serve_web.py", "--port", "0"], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        server.stdout.readline()
        url = server.stdout.readline().split(" at ")[1].split()[0]
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            page.goto(url)
            page.set_input_files("#file", os.path.join(ROOT, PHOTO))
            page.wait_for_selector("#app[data-state=done]", timeout=60_000)
            page.set_viewport_size({"width": 1100, "height": page.evaluate("document.documentElement.scrollHeight")})
            page.screenshot(path=target)
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=10)


def is_tool_script(name):
    """Whether tools/name is a measuring script (a constants block: flags), not a module of theirs."""
    if not name.endswith(".py"):
        return False
    with open(os.path.join(ROOT, "tools", name), encoding="utf-8") as f:
        return bool(cli.RULER.search(f.read()))


def main(argv=None):
    args = cli.parse_flags(globals(), argv)
    os.chdir(ROOT)
    for source, name in PICTURES.items():
        if not os.path.isfile(source):
            cli.die(f"{source} not found; run make demo first (make docs does)")
        shrunk(source, os.path.join(HERE, name), args.width)
    shutil.copyfile("skin_model.md", os.path.join(HERE, "model_card.md"))
    scripts = sorted(f for f in os.listdir(ROOT) if f.endswith(".py") and f != "model.py")
    scripts += sorted(f"tools/{f}" for f in os.listdir(os.path.join(ROOT, "tools")) if is_tool_script(f))
    files.write_text(os.path.join(HERE, "flags.md"), cli.flags_markdown([os.path.join(ROOT, s) for s in scripts]), None)
    if args.screenshot:
        raw = os.path.join(HERE, "web_page.raw.png")
        screenshot(raw)
        shrunk(raw, os.path.join(HERE, "web_page.png"), args.width)
        os.remove(raw)
    print(f"wrote docs/: {', '.join(sorted(os.listdir(HERE)))}")


if __name__ == "__main__":
    interrupts.run_script(main)
