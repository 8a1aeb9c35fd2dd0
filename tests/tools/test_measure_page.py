"""tools/measure_page.py: --help without torch, every flag checked with one error line before any browser starts
(fast: in this process), and one tiny real run (slow): a small trained model and its int8 twin, each measured on the
page in Chromium (the bytes on the wire, a second visit offline), rows in both tables."""

import gzip
import os
import shutil

import measure_page
import pytest

from conftest import help_of, main_fails, run
from skinlesion import quantise

BAD_FLAGS = [
    ("--loads", 0, "--loads 0: use 1 to 100 (or set LOADS at the top of tools/measure_page.py)"),
    ("--loads", 101, "--loads 101: use 1 to 100"),
    ("--warm-runs", 0, "--warm-runs 0: use 1 to 100"),
    ("--throttle-mbps", -1, "--throttle-mbps -1.0: use 0 to 10000"),
    ("--latency-ms", 10001, "--latency-ms 10001: use 0 to 10000"),
    ("--timeout", 0, "--timeout 0: use 1 to 3600"),
    ("--loads", "1.5", "invalid int value: '1.5'"),
    ("--model", "missing.onnx", "--model missing.onnx: not found; pass an ONNX file from export_onnx.py"),
    ("--chromium", "no_chrome", "--chromium no_chrome: not found; apt-get install -y chromium"),
]


def test_help_lists_every_flag_with_its_default(capsys):
    with pytest.raises(SystemExit) as exit_info:
        measure_page.main(["--help"])
    out = " ".join(capsys.readouterr().out.split())  # as argparse wraps it for any width
    assert exit_info.value.code == 0
    for flag in ("--model", "--photos", "--loads", "--warm-runs", "--throttle-mbps", "--latency-ms", "--timeout"):
        assert flag in out, out
    assert "(default: 3)" in out and "(default: /usr/lib/chromium/chromium)" in out


@pytest.mark.parametrize("flag, value, expected", BAD_FLAGS)
def test_a_bad_flag_is_one_error_line_before_any_work(tmp_path, capsys, flag, value, expected):
    model = tmp_path / "m.onnx"
    model.write_bytes(b"not read before the flags pass")
    main_fails(measure_page.main, ["--model", model, "--photos", tmp_path, flag, value], capsys, expected)


def test_the_defaults_and_the_flags_parse(tmp_path):
    model = tmp_path / "m.onnx"
    model.write_bytes(b"")
    args = measure_page.parse_args(["--model", str(model), "--photos", str(tmp_path), "--throttle-mbps", "1.6"])
    assert (args.loads, args.warm_runs, args.latency_ms, args.throttle_mbps) == (3, 5, 150, 1.6)


@pytest.mark.slow
def test_help_answers_before_torch_is_imported():
    r = help_of("tools/measure_page.py")
    assert r.stdout.strip().endswith("NO TORCH") and "--throttle-mbps THROTTLE_MBPS" in r.stdout, r.stdout


@pytest.mark.slow
def test_a_tiny_run_measures_the_full_model_and_its_twin(familiar_model, familiar_onnx, tmp_path):
    """export_onnx.py writes the twin of a small trained model (conftest.familiar_onnx, both files copied here);
    the tool measures both on the page."""
    _, data = familiar_model
    exported, said = familiar_onnx
    twin = quantise.quantised_path(exported)
    assert os.path.isfile(twin) and f"wrote {twin} (" in said, said
    full = str(tmp_path / "m.onnx")
    shutil.copyfile(exported, full)
    shutil.copyfile(twin, tmp_path / "m.int8.onnx")
    photos, before = ["--photos", os.path.join(data, "test")], sorted(os.listdir(tmp_path))
    options = ["--loads", 1, "--warm-runs", 2]
    r = run("tools/measure_page.py", "--model", full, *photos, *options, cwd=tmp_path, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("machine: ") and "load average" in lines[0]
    markdown = lines[lines.index("| " + " | ".join(measure_page.HEAD) + " |") :]
    assert [row.split(" | ")[0] for row in markdown[2:]] == ["| full", "| full", "| int8", "| int8"], r.stdout
    with open(full, "rb") as f:  # the model's bytes as serve_web.py sends them: gzip -9 where that is smaller
        model_gzip = min(len(gzip.compress(f.read(), compresslevel=9, mtime=0)), os.path.getsize(full))
    for row, network in zip(markdown[2:], ["local", "offline, second visit"] * 2):
        cells = row.strip("| ").split(" | ")
        assert cells[1] == network and all(float(c.split()[0]) > 0 for c in cells[3:]), row
        model_mb, page_mb = (float(part.split()[0]) for part in cells[2].split(" / "))
        if network == "offline, second visit":
            assert model_mb == page_mb == 0, row  # the service worker's cache answered everything
        elif cells[0] == "full":  # the model's bytes as sent, plus headers; the page's more
            assert model_gzip / 1e6 <= model_mb + 0.005 < model_gzip / 1e6 + 0.01 and page_mb > model_mb, row
    assert any(line.startswith("by default the page runs ") for line in lines)
    assert sorted(os.listdir(tmp_path)) == before  # its sites were built in a temporary folder, gone
