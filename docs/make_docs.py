"""
Regenerate docs/ from the code and the demo (after `make demo`), so that the README's pictures cannot drift: the
demo's training curves, evaluation pictures, Grad-CAM picture and model card, a screenshot of the page, flags.md
from the scripts' constants blocks, layout.md (the package by stage, who imports whom) and layout.png (the same, in
layers). Pictures: at most WIDTH px wide, under 200 KB. It imports this checkout's package (make setup, PYTHONPATH=.).

    make docs          # runs make demo first, then this
    python docs/make_docs.py --no-screenshot   # without the browser
    python docs/make_docs.py --text-only       # only flags.md and layout.md, after changing flags or imports
"""

import ast
import importlib.util
import os
import re
import shutil
import subprocess
import sys

from skinlesion import files, flags, interrupts, messages  # the project's package (make setup installs it)

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

# -----------------------------------------------------------------------------
WIDTH = 1000  # largest width of a picture in docs/, in px, 100 to 4000
SCREENSHOT = True  # also photograph the page (needs Debian's chromium, playwright and node_modules)
PHOTO = "demo_data/unseen/malignant_1.jpg"  # the photo the page classifies for the screenshot
TEXT_ONLY = False  # only flags.md and layout.md, read from the code (no demo needed)
# -----------------------------------------------------------------------------
PICTURES = {"training_curves.png": "training_curves.png", "confusion_matrix.png": "confusion_matrix.png",
            "roc_curve.png": "roc_curve.png", "calibration.png": "calibration.png",
            "gradcam/malignant_1_jpg_gradcam.png": "gradcam.png"}  # fmt: skip
STAGES = [("reading an export", ["isic"]), ("photos", ["photos"]),
          ("the prepared dataset", ["dataset", "splits", "shards", "shard_format", "other_types"]),
          ("the training data path", ["training", "devices", "resume", "folds"]), ("the folds averaged", ["ensemble"]),
          ("the model's parts", ["backbone", "model_file", "onnx_file", "schema", "familiarity", "mahalanobis",
                                 "non_lesions", "explain", "quantise"]),
          ("numbers", ["metrics", "plots", "answer"]), ("the card", ["card"]),
          ("safe outputs", ["files", "folders", "ledger", "cleaning", "interrupts"]),
          ("safe inputs", ["reading", "remote"]), ("the command line", ["flags", "messages"])]  # fmt: skip


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
    raise messages.UserError(f"{target} stays over 200 KB; lower --width")


def screenshot(target):
    """The page, served by serve_web.py for the demo's skin_model.onnx, after classifying PHOTO."""
    from playwright.sync_api import sync_playwright

    spec = importlib.util.spec_from_file_location("measure", os.path.join(ROOT, "tools", "measure.py"))
    measure = importlib.util.module_from_spec(spec)  # the measuring tools' module: the browser's flags
    spec.loader.exec_module(measure)

    chromium = next(p for p in ("/usr/lib/chromium/chromium", "/usr/bin/chromium") if os.path.exists(p))
    server = subprocess.Popen(
        [sys.executable, "serve_web.py", "--port", "0"], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        server.stdout.readline()
        url = server.stdout.readline().split(" at ")[1].split()[0]
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, headless=True, args=measure.CHROMIUM_ARGS)
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
        return bool(flags.RULER.search(f.read()))


def imported_modules(path):
    """The project modules a file imports (model, skinlesion's modules), at its top or inside its functions."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name == "model"}
        elif isinstance(node, ast.ImportFrom) and node.module == "skinlesion":
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("skinlesion."):
            found.add(node.module.split(".")[1])
    return found


def first_sentence(path):
    """The first sentence of a file's docstring, on one line; a long one up to its first colon or bracket."""
    with open(path, encoding="utf-8") as f:
        doc = " ".join((ast.get_docstring(ast.parse(f.read())) or "").split())
    sentence = re.split(r"(?<!et al)(?<!e\.g)\.( |$)", doc)[0]
    if len(sentence) > 140:
        sentence = re.split(r": | \(", sentence)[0]
    return sentence + "."


def import_scan(root):
    """(the scripts, tools/ included; skinlesion's modules; {file: the project modules it imports, sorted}) of the
    checkout at root, model.py and skinlesion/NAME.py among the files: what layout.md and layout.png show."""
    scripts = sorted(f for f in os.listdir(root) if f.endswith(".py") and f != "model.py")
    scripts += sorted(f"tools/{f}" for f in os.listdir(os.path.join(root, "tools")) if f.endswith(".py"))
    modules = sorted(f[:-3] for f in os.listdir(os.path.join(root, "skinlesion")) if f.endswith(".py"))
    modules.remove("__init__")
    sources = ["model.py", *scripts, *(f"skinlesion/{m}.py" for m in modules)]
    return scripts, modules, {name: sorted(imported_modules(os.path.join(root, name))) for name in sources}


def layout_markdown(root):
    """docs/layout.md: the scripts and what they import, then skinlesion/ by pipeline stage (STAGES): each
    module's first docstring sentence and its importers. Read from the code; a test keeps it equal."""
    scripts, modules, imports = import_scan(root)
    sources = list(imports)
    importers = {m: [name for name in sources if m in imports[name]] for m in ["model", *modules]}

    text = ["# Layout", "", "Generated from the code by `make docs` (a test keeps it equal). The scripts run in the "
            "order of the README; `model.py` holds the model, `skinlesion/model_file.py` its file; `skinlesion/` "
            "holds every other shared concept, one module each, grouped here by the stage of the pipeline it "
            "serves; `tools/` holds the measuring tools. No script imports another script.", "",
            "![Who imports whom, in layers: a file stands above what it imports](layout.png)", "",
            "## Scripts", "", "| file | imports |", "|---|---|"]  # fmt: skip
    for name in ["model.py", *scripts]:
        used = ", ".join(imports[name]) or "-"
        text.append(f"| `{name}` | {used} |")
    for stage, names in STAGES:
        text += ["", f"## {stage[0].upper() + stage[1:]}", "", "| module | what it is | imported by |"]
        text.append("|---|---|---|")
        for m in names:
            path = f"skinlesion/{m}.py"
            who = ", ".join(f"`{n}`" for n in importers[m])
            text.append(f"| `{m}` | {first_sentence(os.path.join(root, path))} | {who} |")
    return "\n".join(text) + "\n"


def layout_graph(root):
    """({box: its group}, {box: the boxes it imports}) for layout.png, from import_scan: model.py, each script, the
    tools as one box "tools/", skinlesion's modules by their name, grouped by STAGES."""
    scripts, _, imports = import_scan(root)
    groups = {"tools/": "measuring tools", "model.py": "the model"}
    groups.update({name: "scripts" for name in scripts if not name.startswith("tools/")})
    groups.update({m: stage for stage, names in STAGES for m in names})
    arrows = {box: set() for box in groups}
    for name, used in imports.items():
        box = "tools/" if name.startswith("tools/") else name
        if name.startswith("skinlesion/"):
            box = name.removeprefix("skinlesion/").removesuffix(".py")
        arrows[box] |= {"model.py" if m == "model" else m for m in used}
    return groups, {box: sorted(used) for box, used in arrows.items()}


def floors(arrows):
    """{box: its floor}: 0 for a box that imports none, else one above the highest box it imports, so that every
    arrow runs down. Raises UserError naming the boxes left without a floor: an import cycle and what imports it."""
    found = {}
    while len(found) < len(arrows):
        ready = [box for box, used in arrows.items() if box not in found and all(m in found for m in used)]
        if not ready:
            raise messages.UserError(f"an import cycle among {', '.join(sorted(set(arrows) - set(found)))}")
        found.update({box: 1 + max((found[m] for m in arrows[box]), default=-1) for box in ready})
    return found


def layout_picture(root, target, width):
    """docs/layout.png: layout_graph's boxes on their floors (a box stands above what it imports), coloured by group,
    with the import arrows; the arrows into a box that most boxes import are left out, its box underlined."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups, arrows = layout_graph(root)
    floor, order = floors(arrows), list(dict.fromkeys(groups.values()))
    colours = {group: plt.cm.tab20(i % 20) for i, group in enumerate(order)}
    rows = {}
    for box in sorted(groups, key=lambda b: (order.index(groups[b]), b)):
        rows.setdefault(floor[box], []).append(box)
    most = {m for m in groups if sum(m in used for used in arrows.values()) > len(groups) / 2}
    wide, high = max(len(row) for row in rows.values()), max(rows) + 1
    fig, ax = plt.subplots(figsize=(width / 100, 1.2 + 0.55 * high), dpi=100)
    at = {box: ((i + 0.5) * wide / len(row), floor) for floor, row in rows.items() for i, box in enumerate(row)}
    for box, used in arrows.items():
        for m in used:
            if m not in most:
                ax.annotate("", at[m], at[box], arrowprops=dict(arrowstyle="-|>", lw=0.5, alpha=0.35, shrinkA=6,
                            shrinkB=7, color=colours[groups[box]], mutation_scale=6))  # fmt: skip
    for box, (x, y) in at.items():
        ax.text(x, y, box, ha="center", va="center", fontsize=6.5, bbox=dict(boxstyle="round,pad=0.3",
                fc=colours[groups[box]], ec="black" if box in most else "none", lw=1.5))  # fmt: skip
    ax.set(xlim=(0, wide), ylim=(-0.7, high - 0.4), xticks=[], yticks=[])
    ax.set_title("Who imports whom: a box stands above what it imports (the arrows run down)", fontsize=9)
    handles = [plt.Rectangle((0, 0), 1, 1, fc=colours[group]) for group in order]
    ax.legend(handles, order, loc="upper center", bbox_to_anchor=(0.5, 0), ncol=5, fontsize=6.5, frameon=False)
    if most:
        fig.text(0.01, 0.005, f"framed: {', '.join(sorted(most))}, imported by most boxes (its arrows not drawn)",
                 fontsize=6.5)  # fmt: skip
    for side in ax.spines.values():
        side.set_visible(False)
    fig.savefig(target, bbox_inches="tight")
    plt.close(fig)


def main(argv=None):
    args = flags.parse_flags(globals(), argv)
    imported = os.path.dirname(os.path.dirname(os.path.abspath(flags.__file__)))
    if os.path.realpath(imported) != os.path.realpath(ROOT):  # another checkout's code would write these docs
        raise messages.UserError(
            f"skinlesion is imported from {messages.printable(imported)}, not from this checkout "
            f"{messages.printable(ROOT)}; run make setup here, or PYTHONPATH=. python docs/make_docs.py"
        )
    os.chdir(ROOT)
    scripts = sorted(f for f in os.listdir(ROOT) if f.endswith(".py") and f != "model.py")
    scripts += sorted(f"tools/{f}" for f in os.listdir(os.path.join(ROOT, "tools")) if is_tool_script(f))
    files.write_text(
        os.path.join(HERE, "flags.md"), flags.flags_markdown([os.path.join(ROOT, s) for s in scripts]), None
    )
    files.write_text(os.path.join(HERE, "layout.md"), layout_markdown(ROOT), None)
    if args.text_only:
        print("wrote docs/flags.md and docs/layout.md")
        return
    raw = os.path.join(HERE, "layout.raw.png")
    layout_picture(ROOT, raw, args.width)
    shrunk(raw, os.path.join(HERE, "layout.png"), args.width)
    os.remove(raw)
    for source, name in PICTURES.items():
        if not os.path.isfile(source):
            raise messages.UserError(f"{source} not found; run make demo first (make docs does)")
        shrunk(source, os.path.join(HERE, name), args.width)
    shutil.copyfile("skin_model.md", os.path.join(HERE, "model_card.md"))
    if args.screenshot:
        raw = os.path.join(HERE, "web_page.raw.png")
        screenshot(raw)
        shrunk(raw, os.path.join(HERE, "web_page.png"), args.width)
        os.remove(raw)
    print(f"wrote docs/: {', '.join(sorted(os.listdir(HERE)))}")


if __name__ == "__main__":
    sys.exit(interrupts.run_script(main))
