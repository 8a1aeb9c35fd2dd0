"""The project's own conventions, checked: files cut by concern with short functions, flags only from each
script's constants block, --help answered without importing torch, the flag documentation equal to what --help
says, every numeric flag's range stated once (in its constant's comment), a README read in ten minutes that names
only flags that exist, test folders that mirror the code."""

import ast
import glob
import importlib
import importlib.util
import os
import re
import subprocess
import sys

import pytest

from conftest import ENV, ROOT, fails, help_of
from skinlesion import flags, model_file

TOOLS = sorted(glob.glob(os.path.join(ROOT, "tools", "*.py")))  # measuring tools: scripts (a constants block), modules


def is_script(path):
    with open(path, encoding="utf-8") as f:
        return bool(flags.RULER.search(f.read()))


SCRIPTS = sorted(os.path.basename(p) for p in glob.glob(os.path.join(ROOT, "*.py")) if not p.endswith("/model.py"))
SCRIPTS += [os.path.relpath(p, ROOT) for p in TOOLS if is_script(p)]
MODULES = sorted(glob.glob(os.path.join(ROOT, "skinlesion", "*.py"))) + [p for p in TOOLS if not is_script(p)]
FUNCTION_LINES = 60  # a function reads as the steps of one job: about this many lines at most (issue 30)


def lines(path):
    with open(path, encoding="utf-8") as f:
        return sum(1 for _ in f)


def function_lengths(path):
    """{function name: lines} of every function and method in a Python file (nested ones by their own name)."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    kinds = (ast.FunctionDef, ast.AsyncFunctionDef)
    return [(n.name, n.end_lineno - n.lineno + 1) for n in ast.walk(tree) if isinstance(n, kinds)]


def test_no_function_grows_past_its_budget():
    """A file may be as long as its one concern needs; a function may not: none over FUNCTION_LINES, in the
    scripts, model.py, the package, the tools and docs/make_docs.py."""
    over = []
    docs = sorted(glob.glob(os.path.join(ROOT, "docs", "*.py")))
    for path in [os.path.join(ROOT, s) for s in SCRIPTS] + [os.path.join(ROOT, "model.py")] + MODULES + docs:
        name = os.path.relpath(path, ROOT)
        for function, length in function_lengths(path):
            if length > FUNCTION_LINES:
                over.append(f"{name}: {function} {length} lines")
    assert not over, f"over {FUNCTION_LINES} lines: {over}"


def test_the_package_init_is_empty():
    assert lines(os.path.join(ROOT, "skinlesion", "__init__.py")) == 0


WHOLE_PROJECT_TESTS = {"conventions", "web", "backbones"}  # tests/test_<these>.py: conventions, the page, a backbone


def test_the_test_folders_mirror_the_code():
    """tests/test_<script>.py for each script and model.py (and WHOLE_PROJECT_TESTS), tests/skinlesion/
    test_<module>.py for each package module, tests/tools/test_<tool>.py for each tool: a test file of a module that
    moved or went is one here; and no two test files share a name (pytest imports them by their basename)."""
    tests = os.path.join(ROOT, "tests")
    found = sorted(os.path.relpath(p, tests) for p in glob.glob(os.path.join(tests, "**", "test_*.py"), recursive=True))
    code = {"": ROOT, "skinlesion": os.path.join(ROOT, "skinlesion"), "tools": os.path.join(ROOT, "tools")}
    strays = []
    for path in found:
        folder, name = os.path.split(path)
        subject = name.removeprefix("test_").removesuffix(".py")
        mirrored = folder in code and os.path.isfile(os.path.join(code[folder], subject + ".py"))
        if not mirrored and not (folder == "" and subject in WHOLE_PROJECT_TESTS):
            strays.append(path)
    assert found and not strays, f"test files that name no script, module or tool where they are: {strays}"
    names = [os.path.basename(path) for path in found]
    assert len(set(names)) == len(names), sorted(name for name in names if names.count(name) > 1)


@pytest.mark.slow
@pytest.mark.parametrize("script", SCRIPTS)
def test_every_flag_comes_from_the_constants_block_and_help_needs_no_torch(script):
    """The flags --help offers are exactly the block's constants (plus --help), each with its comment and default,
    and --help never waits for torch (~4 s)."""
    r = help_of(script)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().endswith("NO TORCH") and "(default: " in r.stdout, r.stdout + r.stderr
    offered = set(re.findall(r"^  (--[a-z0-9-]+)", r.stdout, re.M)) - {"--help"}
    block = flags.constants_block(os.path.join(ROOT, script))
    assert offered == {flags.flag_name(name) for name, _ in block}, script
    assert all(comment for _, comment in block), f"{script}: a constant without its comment"


def test_the_flag_tables_are_what_help_says():
    """docs/flags.md is generated from the constants blocks (make docs): it must not drift from them."""
    with open(os.path.join(ROOT, "docs", "flags.md"), encoding="utf-8") as f:
        written = f.read()
    assert written == flags.flags_markdown([os.path.join(ROOT, s) for s in SCRIPTS]), (
        "run python docs/make_docs.py --text-only"
    )


class Spied(Exception):
    """Raised in place of flags.parse_flags, once it has seen the script's call."""


def flag_types(script, monkeypatch):
    """{NAME: the type its flag takes} for the constants of a script (not lists), as flags.parse_flags gets them: the
    script's call (its types) is seen by a spy, which stops it there."""
    module = importlib.import_module(os.path.basename(script).removesuffix(".py"))
    seen = {}

    def spy(constants, argv=None, positional=None, types=None, nullable=()):
        seen.update(types or {})
        raise Spied

    monkeypatch.setattr(flags, "parse_flags", spy)
    with pytest.raises(Spied):
        getattr(module, "parse_args", module.main)([])
    block = flags.constants_block(os.path.join(ROOT, script))
    return {
        n: flags.flag_type(n, getattr(module, n), seen) for n, _ in block if not isinstance(getattr(module, n), list)
    }


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_numeric_flag_states_its_range_in_its_comment(script, monkeypatch):
    """The comment is the one source of a flag's allowed values (flags.allowed_range reads it; parse_flags checks
    each value against it): a number flag whose comment states no range would take any value."""
    types = flag_types(script, monkeypatch)
    numeric = [name for name, kind in types.items() if kind in (int, float)]
    assert numeric, f"{script}: no numeric flag seen (the spy saw no types?)"
    comments = dict(flags.constants_block(os.path.join(ROOT, script)))
    unstated = [f"{name}  # {comments[name]}" for name in numeric if flags.allowed_range(comments[name]) is None]
    assert not unstated, f"{script}: state the allowed values (e.g. '>= 1', '0 to 0.99') in: {unstated}"


def test_every_image_size_range_is_the_models():
    """IMAGE_SIZE's range is written in each script that has one: each must say model_file.IMAGE_SIZES, the sizes a
    model file may have, so that the scripts cannot drift from it or from each other."""
    found = {}
    for script in SCRIPTS:
        for name, comment in flags.constants_block(os.path.join(ROOT, script)):
            if name == "IMAGE_SIZE":
                found[script] = tuple(flags.allowed_range(comment) or ())[:4]
    assert set(found) == {"AItraining.py", "tools/bench.py", "tools/measure_transfer.py", "tools/measure_folds.py"}
    assert found == dict.fromkeys(found, (*model_file.IMAGE_SIZES, False, False))


def test_the_readme_is_short_and_names_only_flags_that_exist():
    path = os.path.join(ROOT, "README.md")
    assert os.path.getsize(path) <= 12_288, f"README.md is {os.path.getsize(path)} bytes; keep it at most 12 KB"
    with open(path, encoding="utf-8") as f:
        readme = f.read()
    known = {"--help"}
    for script in SCRIPTS:
        for name, _ in flags.constants_block(os.path.join(ROOT, script)):
            known |= {flags.flag_name(name), "--no-" + flags.flag_name(name)[2:]}
    named = set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9_-]+)", readme))
    outside = {
        "--nproc_per_node",
        "--nnodes",
        "--rdzv_id",
        "--rdzv_backend",
        "--rdzv_endpoint",
        "--local-dir",
        "--search",
        "--limit",
        "--logdir",
        "--metadata-csv-only",
    }  # other programs: torchrun, hf, isic, tensorboard
    assert named - known - outside == set()


@pytest.mark.slow
@pytest.mark.parametrize("script", SCRIPTS)
def test_none_for_a_path_or_number_flag_is_one_line(script, tmp_path):
    """`--model none`, `--port none`, `--dataset-dir none`: one error line in every script, nothing written."""
    constants = flags.constants_block(os.path.join(ROOT, script))
    with open(os.path.join(ROOT, script), encoding="utf-8") as f:
        text = f.read()
    values = dict(re.findall(r"^([A-Z][A-Z0-9_]*) = (.*?)  # ", text, re.M))
    name = next(n for n, _ in constants if values[n] not in ("None", "True", "False") and not values[n].startswith("["))
    r = subprocess.run(
        [sys.executable, os.path.join(ROOT, script), flags.flag_name(name), "none"],
        cwd=tmp_path,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert (
        r.stderr.strip() == f"error: argument {flags.flag_name(name)}: none: this flag needs a value (a file named "
        f"none: pass ./none); see python {script} --help"
    )
    assert os.listdir(tmp_path) == []


@pytest.mark.slow
def test_a_flag_that_is_not_a_constant_is_refused():
    """`evaluate.py --metrics foo` was accepted and ignored: METRICS was an upper-case global outside the block."""
    r = subprocess.run(
        [sys.executable, "evaluate.py", "--metrics", "foo"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 1 and r.stderr.strip().splitlines() == [
        "error: unrecognized arguments: --metrics foo; see python evaluate.py --help"
    ]


def test_the_layout_page_is_what_the_code_imports():
    """docs/layout.md (the package by pipeline stage, who imports whom) is read from the code: it must not drift,
    and every module of skinlesion/ stands in exactly one stage."""
    spec = importlib.util.spec_from_file_location("make_docs", os.path.join(ROOT, "docs", "make_docs.py"))
    make_docs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_docs)
    staged = [m for _, names in make_docs.STAGES for m in names]
    modules = [os.path.basename(m)[:-3] for m in MODULES if os.path.dirname(m).endswith("skinlesion")]
    assert sorted(staged) == sorted(set(modules) - {"__init__"}), "each module in exactly one of make_docs.STAGES"
    with open(os.path.join(ROOT, "docs", "layout.md"), encoding="utf-8") as f:
        assert f.read() == make_docs.layout_markdown(ROOT), "run python docs/make_docs.py --text-only"


DOCSTRING_LINES = 10  # a module's docstring says what it is and how to run it; the rest is in docs/


def test_every_module_docstring_is_short():
    """Each script's, tool's and module's docstring (a script's is its --help) is at most DOCSTRING_LINES lines, from
    its opening quotes to its closing ones: details go to docs/reference.md, measurements to docs/measurements.md."""
    paths = [os.path.join(ROOT, s) for s in SCRIPTS] + [os.path.join(ROOT, "model.py")] + MODULES
    paths += [os.path.join(ROOT, "docs", "make_docs.py")]
    missing, long = [], []
    for path in paths:
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read())
        name = os.path.relpath(path, ROOT)
        if ast.get_docstring(tree) is None:
            missing.append(name)
        elif tree.body[0].end_lineno - tree.body[0].lineno + 1 > DOCSTRING_LINES:
            long.append(f"{name}: {tree.body[0].end_lineno - tree.body[0].lineno + 1} lines")
    assert missing == [os.path.join("skinlesion", "__init__.py")], missing  # the one empty file
    assert not long, f"module docstrings over {DOCSTRING_LINES} lines: {long}"


def test_the_package_declares_the_requirements():
    """pyproject.toml's dependencies (pip install -e .) are requirements.txt's, in the same order: one list."""
    import tomllib

    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)["project"]
    with open(os.path.join(ROOT, "requirements.txt"), encoding="utf-8") as f:
        required = [line.split("#")[0].strip() for line in f]
    assert project["dependencies"] == [r for r in required if r]


def test_make_docs_refuses_another_checkouts_package(monkeypatch, tmp_path, capsys):
    """docs/make_docs.py imports the package through the install: when that is another checkout's (an editable
    install elsewhere), it says so in one line and writes nothing, instead of writing these docs from that code."""
    spec = importlib.util.spec_from_file_location("make_docs", os.path.join(ROOT, "docs", "make_docs.py"))
    make_docs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_docs)
    monkeypatch.setattr(make_docs, "ROOT", str(tmp_path))
    monkeypatch.setattr(make_docs, "HERE", str(tmp_path / "docs"))
    fails(
        capsys,
        f"skinlesion is imported from {ROOT}, not from this checkout {tmp_path}",
        make_docs.main,
        ["--text-only"],
    )
    assert os.listdir(tmp_path) == []


def project_imports(path):
    """The project modules (model, skinlesion's modules) a file imports, at its top or inside its functions."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name.removeprefix("skinlesion.") for a in node.names if a.name.startswith("skinlesion.")}
            found |= {a.name for a in node.names if a.name == "model"}
        elif isinstance(node, ast.ImportFrom) and node.module == "skinlesion":
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("skinlesion."):
            found.add(node.module.split(".")[1])
    return found


def import_cycle(graph):
    """One cycle of a {module: modules it imports} graph as a list of modules (its first one again at its end), or
    None where there is none: a depth-first walk that meets a module still on its path."""
    state, path = {}, []

    def visit(name):
        state[name] = "on path"
        path.append(name)
        for other in sorted(graph.get(name, ())):
            if state.get(other) == "on path":
                return path[path.index(other) :] + [other]
            if other not in state:
                found = visit(other)
                if found:
                    return found
        state[name] = "done"
        path.pop()
        return None

    for name in sorted(graph):
        if name not in state:
            found = visit(name)
            if found:
                return found
    return None


def test_import_cycle_finds_a_cycle_and_only_a_cycle():
    assert import_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert import_cycle({"a": {"a"}}) == ["a", "a"]
    assert import_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set(), "d": {"a", "c"}}) is None


def test_no_import_cycle():
    """No module of the package (nor model.py) imports, even inside a function, one that leads back to it: each
    concept is owned by one module, and what it needs lies below it."""
    paths = sorted(glob.glob(os.path.join(ROOT, "skinlesion", "*.py"))) + [os.path.join(ROOT, "model.py")]
    graph = {os.path.basename(p)[:-3]: project_imports(p) - {"__init__"} for p in paths}
    assert len(graph) > 30 and graph["training"], "the package's modules and their imports were read"
    cycle = import_cycle(graph)
    assert cycle is None, f"an import cycle: {' -> '.join(cycle)}"


def test_the_layout_picture_has_no_arrow_running_up():
    """docs/layout.png (make docs) draws make_docs.layout_graph's boxes on make_docs.floors' floors: every import
    arrow runs down (a box stands above what it imports, so the import graph has no cycle), every module of
    skinlesion/, model.py and each script is a box in one of the groups (STAGES), and each arrow is an import."""
    spec = importlib.util.spec_from_file_location("make_docs", os.path.join(ROOT, "docs", "make_docs.py"))
    make_docs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_docs)
    groups, arrows = make_docs.layout_graph(ROOT)
    floor = make_docs.floors(arrows)
    up = [f"{box} -> {used}" for box in arrows for used in arrows[box] if floor[used] >= floor[box]]
    assert not up, f"arrows that do not run down: {up}"
    modules = {os.path.basename(m)[:-3] for m in MODULES if os.path.dirname(m).endswith("skinlesion")} - {"__init__"}
    assert set(groups) == modules | {"model.py", "tools/"} | {s for s in SCRIPTS if "/" not in s}
    expected = {box: set() for box in groups}  # the imports as this file's own scan reads them, box by box
    for path in [os.path.join(ROOT, s) for s in SCRIPTS] + [os.path.join(ROOT, "model.py")] + MODULES:
        name = os.path.relpath(path, ROOT)
        box = name
        if name.startswith("tools"):
            box = "tools/"
        elif name.startswith("skinlesion"):
            box = os.path.basename(name)[:-3]
        if box != "__init__":
            expected[box] |= {"model.py" if m == "model" else m for m in project_imports(path) - {"__init__"}}
    assert {box: set(used) for box, used in arrows.items()} == expected
    assert "training" in arrows["folds"] and "model_file" in arrows["AItraining.py"], "the imports were read"
    with pytest.raises(make_docs.messages.UserError, match="an import cycle among a, b"):
        make_docs.floors({"a": ["b"], "b": ["a"], "c": []})
    assert make_docs.floors({"a": ["b", "c"], "b": ["c"], "c": []}) == {"a": 2, "b": 1, "c": 0}
