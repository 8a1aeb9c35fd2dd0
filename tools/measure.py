"""Measuring (bench.py): timing the batches a loop asks for, the median of repeated runs, a command's time and
peak memory (the summed PSS of its process tree, Linux /proc), what the machine is, tables of results in plain
text and markdown, and an export of many distinct photos. Nothing here is about the model: torch is imported
only inside the functions that describe it."""

import ast
import os
import platform
import statistics
import subprocess
import time

from skinlesion.messages import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the project: the scripts the tools measure
# headless Chromium for the page (measure_page.py, the browser tests, make_docs.py); without the network flags
# Chromium calls Google hosts
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]  # fmt: skip


def script_constant(script, name):
    """The value of a constant in one of the project's scripts, read from its source (a tool imports no script)."""
    with open(os.path.join(ROOT, script), encoding="utf-8") as f:
        tree = ast.parse(f.read())
    for node in tree.body:
        if isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == [name]:
            return ast.literal_eval(node.value)
    raise KeyError(f"{script} has no constant {name}")


def training_default(name):
    """AItraining.py's constant name (its default), e.g. NUM_WORKERS."""
    return script_constant("AItraining.py", name)


HEAD = ("measurement", "result", "ratio", "target")  # the columns of a table of results


def timed(batches, times):
    """batches; times[i] = when batch i was asked for, times[-1] = when the loop asked past the end."""
    batches = iter(batches)
    while True:
        times.append(time.perf_counter())
        batch = next(batches, None)
        if batch is None:
            return
        yield batch


def per_second(times, skip, items):
    """items per second over the batches after the first skip, from timed's times (items per batch)."""
    return (len(times) - 1 - skip) * items / (times[-1] - times[skip])


def median_seconds(fn, n):
    """The median wall time of n calls of fn()."""
    times = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def tree_pss(pid):
    """Summed PSS in bytes of pid and its descendants (PSS counts pages shared by forked workers once); 0 where
    there is no /proc."""
    parent = {}
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        try:
            with open(f"/proc/{entry}/stat") as f:
                parent[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    tree, total = {pid}, 0
    for _ in range(4):  # children, grandchildren, ...
        tree |= {p for p, pp in parent.items() if pp in tree}
    for p in tree:
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                total += next(int(line.split()[1]) * 1024 for line in f if line.startswith("Pss:"))
        except (OSError, StopIteration):
            continue
    return total


def run(cmd, measure_memory=False, env=None, cwd=None):
    """(seconds, peak memory in bytes or None) of a command, which must succeed: a failure dies with the command
    and the end of its output."""
    import tempfile

    start, peak = time.perf_counter(), 0
    with tempfile.TemporaryFile("w+") as log:  # not a pipe: a command that writes more than a pipe holds (64 KB)
        proc = subprocess.Popen(  # while memory is sampled would wait for a reader forever (prepare at 50,000)
            cmd, stdout=log, stderr=subprocess.STDOUT, text=True, env={**os.environ, **(env or {})}, cwd=cwd
        )
        try:
            while measure_memory and proc.poll() is None:
                peak = max(peak, tree_pss(proc.pid))
                time.sleep(0.2)
            proc.wait()
        except BaseException:  # Ctrl-C: the command goes too
            proc.kill()
            proc.wait()
            raise
        log.seek(0)
        out = log.read()
    if proc.returncode:
        raise UserError(f"{' '.join(cmd)} failed:\n{out[-3000:]}")
    if measure_memory:
        return time.perf_counter() - start, peak
    return time.perf_counter() - start, None


def import_seconds(text):
    """Seconds spent importing, from what `python -X importtime` wrote on stderr: the sum of the cumulative times
    of the imports made at the top level (each includes the imports it made)."""
    total = 0
    for line in text.splitlines():
        parts = line.split("|")
        top_level = len(parts) == 3 and parts[2].startswith(" ") and not parts[2].startswith("  ")
        if line.startswith("import time:") and top_level and parts[1].strip().isdigit():
            total += int(parts[1])
    return total / 1e6


def imports_of(cmd, env=None, cwd=None, runs=3):
    """The median over runs of import_seconds of a Python command [python, script, args...], which must succeed."""
    seconds = []
    for _ in range(runs):
        r = subprocess.run(
            [cmd[0], "-X", "importtime", *cmd[1:]],
            capture_output=True,
            text=True,
            env={**os.environ, **(env or {})},
            cwd=cwd,
        )
        if r.returncode:
            raise UserError(f"{' '.join(cmd)} failed:\n{r.stderr[-3000:]}")
        seconds.append(import_seconds(r.stderr))
    return statistics.median(seconds)


def cpu_name():
    """The CPU's model name (Linux /proc/cpuinfo), else what platform says."""
    if os.path.isfile("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine(device):
    """One line: the GPU (on CUDA), the CPU, its cores, torch and its threads, the OpenMP wait policy, Python."""
    import torch

    gpu = ""
    if device.type == "cuda":
        gpu = f"{torch.cuda.get_device_name(device)}, "
    return (
        f"{gpu}{cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads, "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}), Python {platform.python_version()}"
    )


def native_bf16(device):
    """(whether the device computes bf16 natively, why not)."""
    import torch

    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(), "this GPU has no native bf16"
    flags = ""
    if os.path.isfile("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    return ("avx512_bf16" in flags or "amx_bf16" in flags), "this CPU has no native bf16 (no AVX512_BF16 or AMX)"


def ok(good):
    """'yes' or 'NO', for a target column."""
    if good:
        return "yes"
    return "NO"


def plain_table(rows, head=HEAD):
    """rows: (measurement, result, ratio, target), or the columns of head -> the table as aligned text under head."""
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in [head, *rows]]
    return "\n".join(lines)


def markdown_cell(value):
    """A table cell: a '|' would end the cell early, a newline the row."""
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(rows, head=HEAD):
    """rows: (measurement, result, ratio, target), or the columns of head -> the same table in markdown."""
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(markdown_cell(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def distinct_copies_export(demo_dir, out_dir, n):
    """An ISIC-like export of n distinct large JPEGs, half benign, half malignant: the demo export's photos copied
    under new ids, each with a different JPEG comment (a COM segment) so its bytes, and so its sha256, differ;
    decoding is the same work. Built beside out_dir and renamed into place: a killed run leaves no half export."""
    import shutil

    import pandas as pd

    meta = pd.read_csv(os.path.join(demo_dir, "metadata.csv"))
    meta = meta[meta.image_type.eq("clinical: overview") & meta.diagnosis_1.isin(["Benign", "Malignant"])]
    sides = [group for _, group in meta.groupby("diagnosis_1")]
    counts = [n // len(sides) + (k < n % len(sides)) for k in range(len(sides))]  # balanced, as prepare samples
    rows = pd.concat([g.sample(c, replace=True, random_state=0) for g, c in zip(sides, counts)], ignore_index=True)
    tmp = f"{out_dir}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        for i, row in rows.iterrows():
            with open(os.path.join(demo_dir, row.isic_id + ".jpg"), "rb") as f:
                data = f.read()
            comment = f"copy {i}".encode()
            segment = b"\xff\xfe" + (len(comment) + 2).to_bytes(2, "big") + comment
            with open(os.path.join(tmp, f"ISIC_{i:07d}.jpg"), "wb") as f:
                f.write(data[:2] + segment + data[2:])
        ids = [f"ISIC_{i:07d}" for i in range(n)]
        rows.assign(isic_id=ids, lesion_id="", patient_id="").to_csv(os.path.join(tmp, "metadata.csv"), index=False)
        os.rename(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
