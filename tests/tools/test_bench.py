"""tools/bench.py and tools/measure.py: --help without torch, every numeric flag checked with one error line before
any work, a work folder of someone else's files refused, one tiny real run (the prepare_dataset.py benchmark
on 20 small photos) that prints both tables, and measure.py's pure functions."""

import os
import sys

import growth
import measure
import pandas as pd
import pytest
from PIL import Image

import bench
from conftest import alarm, fingerprint, help_of, main_fails, run, write_export
from skinlesion import flags, folders
from skinlesion.messages import UserError

ROWS = [("train, model alone", "21.4 img/s", "1.00", "reference"), ("peak memory", "0.11 GB", "0.11 of 1 GB", "")]


# ---------------------------------------------------------------------------- bench.py
@pytest.mark.slow
def test_help_answers_before_torch_is_imported():
    r = help_of("tools/bench.py")
    assert r.stdout.strip().endswith("NO TORCH") and "--n-prepare-images N_PREPARE_IMAGES" in r.stdout, r.stdout
    assert "(default: None)" in r.stdout and "--no-train" in r.stdout, r.stdout


RANGES = {
    flags.flag_name(name): flags.allowed_range(comment) for name, comment in flags.constants_block(bench.__file__)
}
BAD_FLAGS = [(flag, r.low - 1, f"{flag} {r.low - 1}: use {r.text}") for flag, r in RANGES.items() if r]  # below each
BAD_FLAGS += [(flag, "none", "this flag needs a value") for flag, _, _ in BAD_FLAGS]
BAD_FLAGS += [
    ("--image-size", 2049, "--image-size 2049: use 32 to 2048 (or set IMAGE_SIZE at the top of tools/bench.py)"),
    ("--demo-photo-size", 10001, "--demo-photo-size 10001: use 64 to 10000"),
    ("--rounds", 0, "--rounds 0: use >= 1"),
    ("--warmup", -1, "--warmup -1: use >= 0"),
    ("--steps", "1.5", "invalid int value: '1.5'"),
    ("--compile", "none", "unrecognized arguments: none"),
]


@pytest.mark.parametrize("flag, value, expected", BAD_FLAGS)
def test_a_bad_flag_is_one_error_line_before_any_work(tmp_path, capsys, flag, value, expected):
    work = tmp_path / "work"
    main_fails(bench.main, [flag, value, "--work-dir", work], capsys, expected)
    assert not work.exists() and os.listdir(tmp_path) == []


def test_a_work_dir_of_other_files_is_refused_and_left_alone(tmp_path, capsys):
    (tmp_path / "skin_model.pth").write_bytes(b"someone's model")
    before = fingerprint(tmp_path)
    main_fails(bench.main, ["--work-dir", tmp_path], capsys, "holds files that bench.py did not make (skin_model.pth)")
    main_fails(bench.main, ["--work-dir", tmp_path / "skin_model.pth"], capsys, "is a file; pass a folder")
    assert fingerprint(tmp_path) == before


@pytest.mark.slow
def test_a_tiny_run_prints_both_tables_and_keeps_its_work_dir(tmp_path):
    work = tmp_path / "work"
    options = ["--no-train", "--no-predict", "--no-memory", "--n-prepare-images", 20, "--demo-photo-size", 64]
    r = run("tools/bench.py", *options, "--work-dir", work, cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("machine: ") and f"work dir {work}" in r.stdout
    head = next(i for i, line in enumerate(lines) if line.startswith("measurement "))
    assert lines[head].split() == ["measurement", "result", "ratio", "target"]
    assert lines[head + 1].startswith("prepare_dataset.py, 20 photos: 1 worker ")
    assert f"{os.cpu_count()} workers " in lines[head + 1] and "x the speed of 1" in lines[head + 1]
    assert lines[head + 2].startswith("peak memory, prepare_dataset.py") and "of 1 GB" in lines[head + 2]
    markdown = lines[lines.index("| measurement | result | ratio | target |") :]
    assert markdown[1] == "|---|---|---|---|" and len(markdown) == 4
    assert markdown[2].startswith("| prepare_dataset.py, 20 photos: 1 worker ") and markdown[2].endswith(" |  |")
    assert markdown[3].startswith("| peak memory, prepare_dataset.py | ") and "< 1 GB: " in markdown[3]
    assert not any("train" in line or "predict 1 photo" in line for line in lines[head:])
    assert folders.made_here(work) and os.path.isfile(work / "photos_64px" / "export_20" / "metadata.csv")
    assert not os.path.exists(work / "photos_64px" / "dataset_256")  # no measurement needed it
    assert bench.parse_args(["--work-dir", str(work)]).work_dir == str(work)  # the next run may re-use it


@pytest.mark.slow
def test_the_growth_table_has_a_row_per_count_and_kind(tmp_path):
    work = tmp_path / "work"
    options = ["--no-train", "--no-predict", "--no-memory", "--no-prepare", "--growth", 24, 40]
    options += ["--growth-photo-size", 64, "--image-size", 32, "--batch-size", 4, "--warmup", 0, "--steps", 1]
    r = run("tools/bench.py", *options, "--work-dir", work, cwd=tmp_path, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    table = lines[lines.index("| " + " | ".join(growth.HEAD) + " |") + 2 :]
    assert [row.split(" | ")[:2] for row in table] == [["| 24", "folders"], ["| 24", "shards"], ["| 40", "folders"],
                                                        ["| 40", "shards"]]  # fmt: skip
    for row, n, kind in zip(table, [24, 24, 40, 40], ["folders", "shards"] * 2):
        cells = row.strip("| ").split(" | ")
        out = work / "growth" / f"dataset_{n}_{kind}"
        files = [os.path.join(d, f) for d, _, names in os.walk(out) for f in names]
        if kind == "shards":
            files = [f for f in files if os.sep + "shards" + os.sep in f]
        else:
            files = [f for f in files if os.sep + "shards" + os.sep not in f]
        assert cells[4] == f"{sum(map(os.path.getsize, files)) / 1e6:.1f} MB"
        assert cells[8].startswith("cached") and float(cells[7].split()[0]) > 0.1  # GB: torch at least


# ---------------------------------------------------------------------------- measure.py
def test_tables_in_plain_text_and_markdown():
    plain = measure.plain_table(ROWS).splitlines()
    assert plain[0].split() == list(measure.HEAD) and len(plain) == 3
    assert plain[1].index("21.4 img/s") == plain[0].index("result") == plain[2].index("0.11 GB")
    assert plain[1].index("1.00") == plain[0].index("ratio") and plain[2] == plain[2].rstrip()
    assert measure.markdown_table(ROWS) == (
        "| measurement | result | ratio | target |\n|---|---|---|---|\n"
        "| train, model alone | 21.4 img/s | 1.00 | reference |\n| peak memory | 0.11 GB | 0.11 of 1 GB |  |"
    )
    assert measure.markdown_table([("a|b", "x\ny", 1, "")]).splitlines()[-1] == "| a\\|b | x y | 1 |  |"
    assert measure.ok(True) == "yes" and measure.ok(False) == "NO"


def fake_clock(monkeypatch, ticks):
    ticks = iter(ticks)
    monkeypatch.setattr(measure.time, "perf_counter", lambda: next(ticks))


def test_median_seconds_of_runs(monkeypatch):
    fake_clock(monkeypatch, [0, 1, 1, 4, 4, 6])  # runs of 1, 3 and 2 s
    calls = []
    assert measure.median_seconds(lambda: calls.append(1), 3) == 2 and len(calls) == 3


def test_timed_batches_and_their_rate(monkeypatch):
    fake_clock(monkeypatch, [0, 5, 6, 7, 8])  # the first batch is slow: it is skipped
    times = []
    assert list(measure.timed("abcd", times)) == list("abcd") and times == [0, 5, 6, 7, 8]
    assert measure.per_second(times, 1, 32) == 3 * 32 / 3


SAMPLED = """
import os, sys, time
{code}
open({ready!r}, "w").close()
for _ in range(6000):  # until measure.run has sampled this process since (at most 60 s)
    if os.path.exists({go!r}):
        break
    time.sleep(0.01)
sys.exit({exit_code})
"""


def sampled_command(folder, monkeypatch, code, exit_code=0):
    """A Python command that runs code, then waits until measure.run has taken a memory sample of it: its peak is
    that of a running Python however busy the machine (a command that ends before the first sample measured
    188 KB, against an expected > 1 MB, on a loaded machine). measure.tree_pss, wrapped, says when."""
    ready, go = os.path.join(folder, "ready"), os.path.join(folder, "go")
    for done in (ready, go):
        if os.path.exists(done):
            os.remove(done)
    tree_pss = measure.tree_pss

    def sampling(pid):
        after_code = os.path.exists(ready)
        pss = tree_pss(pid)
        if after_code:
            open(go, "w").close()
        return pss

    monkeypatch.setattr(measure, "tree_pss", sampling)
    return [sys.executable, "-c", SAMPLED.format(code=code, ready=ready, go=go, exit_code=exit_code)]


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/proc"), reason="PSS is read from Linux /proc")
def test_tree_pss_and_a_command_with_its_peak_memory(tmp_path, monkeypatch):
    assert measure.tree_pss(os.getpid()) > 1e6  # this Python with pandas loaded
    assert measure.tree_pss(2**22 + 12345) == 0  # no such process
    cmd = sampled_command(tmp_path, monkeypatch, "time.sleep(0.6)")
    with alarm(120, "measure.run never saw the command running"):
        seconds, peak = measure.run(cmd, measure_memory=True)
    assert seconds >= 0.6 and peak > 1e6
    assert measure.run([sys.executable, "-c", "pass"])[1] is None


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/proc"), reason="PSS is read from Linux /proc")
def test_a_command_that_writes_more_than_a_pipe_holds_while_its_memory_is_sampled_finishes(
    tmp_path, monkeypatch, capsys
):
    """prepare_dataset.py at 50,000 photos wrote more than 64 KB while bench.py sampled its memory and never read
    the pipe: both waited forever. 1 MB of output, then memory samples, now finish, and a failure still shows the
    output's end."""
    code = "sys.stdout.write('x' * 2**20 + '\\nend of it\\n'); sys.stdout.flush()"
    with alarm(120, "measure.run hung on a command that wrote more than a pipe holds"):
        seconds, peak = measure.run(sampled_command(tmp_path, monkeypatch, code), measure_memory=True)
        assert peak > 1e6
        with pytest.raises(UserError) as raised:
            measure.run(sampled_command(tmp_path, monkeypatch, code, exit_code=1), measure_memory=True)
    assert raised.value.message.rstrip().endswith("end of it")


@pytest.mark.slow
def test_a_failed_command_dies_with_its_output(capsys):
    with pytest.raises(UserError) as raised:
        measure.run([sys.executable, "-c", "print('what went wrong'); raise SystemExit(3)"])
    assert raised.value.status == 1 and "what went wrong" in raised.value.message


def test_distinct_copies_export(tmp_path):
    sides = {"ISIC_9000001": "Benign", "ISIC_9000002": "Malignant", "ISIC_9000003": "Indeterminate"}
    rows = [dict(isic_id=i, diagnosis_1=side, image_type="clinical: overview") for i, side in sides.items()]
    demo = write_export(tmp_path / "demo", rows)
    measure.distinct_copies_export(demo, str(tmp_path / "export"), 5)
    out = pd.read_csv(tmp_path / "export" / "metadata.csv")
    assert list(out.isic_id) == [f"ISIC_{i:07d}" for i in range(5)]
    assert sorted(out.diagnosis_1) == ["Benign"] * 3 + ["Malignant"] * 2  # balanced; the rest never copied
    written = fingerprint(tmp_path / "export")
    for isic_id in out.isic_id:
        with Image.open(tmp_path / "export" / f"{isic_id}.jpg") as img:
            img.load()  # decodes
            assert img.size == (48, 40)
    assert len({written[f"{i}.jpg"] for i in out.isic_id}) == 5
    assert sorted(os.listdir(tmp_path)) == ["demo", "export"]  # no temporary left


def test_import_seconds_sums_the_top_level_imports_of_importtime():
    """What `python -X importtime` writes: a header, nested imports (indented names) inside their importer's
    cumulative time, and top-level ones; 0.25 s + 0.5 s here, the nested 0.2 s counted once, inside."""
    text = (
        "import time: self [us] | cumulative | imported package\n"
        "import time:       100 |        200000 |   numpy.core\n"
        "import time:       300 |        250000 | numpy\n"
        "import time:      1000 |        500000 | model\n"
        "a line that is not from importtime | 9 | x\n"
    )
    assert measure.import_seconds(text) == 0.75
