"""
How long the web page (serve_web.py, web/) takes to give its first result, with the full model and with its int8
twin, in headless Chromium, and what it downloads (the bytes on the wire: gzip-compressed where the server does);
also a second visit, offline, from the service worker's cache. A measuring tool, not a part of the product; what
it measures in full: docs/reference.md; results: docs/measurements.md.

    python tools/measure_page.py --model skin_model.onnx --photos dataset/test
    python tools/measure_page.py --model skin_model.onnx --throttle-mbps 1.6    # also on a phone-like network
"""

import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

import measure

from skinlesion import flags, interrupts, messages

# -----------------------------------------------------------------------------
MODEL = "skin_model.onnx"  # ONNX file from export_onnx.py; its int8 twin (.int8.onnx beside it) is measured too
PHOTOS = "dataset/test"  # folder of photos to choose on the page (searched recursively, spread over the sorted list)
LOADS = 3  # page loads per model, each in a fresh browser context (the medians count), 1 to 100
WARM_RUNS = 5  # photos chosen after the first one on each load (their median is 'warm'), 1 to 100
THROTTLE_MBPS = 0.0  # also one load per model at this download speed, 0 to 10000 Mbit/s (1.6: fast 3G; 0: none)
LATENCY_MS = 150  # round-trip time added under THROTTLE_MBPS, in ms, 0 to 10000
CHROMIUM = "/usr/lib/chromium/chromium"  # the Chromium that Playwright drives
TIMEOUT = 600  # seconds to wait for the model to be ready or for a result, 1 to 3600
SECOND_VISIT = True  # also one second visit per model, offline (the service worker's cache answers)
# -----------------------------------------------------------------------------
ENDED = "#app[data-state=done], #app[data-state=error], #app[data-state=model-error]"  # a result or a message
HEAD = (  # the table's columns
    "model",
    "network",
    "on the wire: model / page",
    "open -> model ready",
    "first photo -> result",
    "warm photo -> result",
)


def parse_args(argv=None):
    """The flags, every value checked before any work (one error line)."""
    args = flags.parse_flags(globals(), argv)
    flags.check(os.path.isfile(args.model), "--model", args.model, "not found; pass an ONNX file from export_onnx.py")
    flags.check(os.path.isdir(args.photos), "--photos", args.photos, "not found; pass a folder of photos")
    flags.check(os.path.isfile(args.chromium), "--chromium", args.chromium, "not found; apt-get install -y chromium")
    return args


def chosen_photos(folder, n):
    """n photos of folder, spread over the sorted list (repeated where it holds fewer)."""
    from skinlesion import photos

    paths = photos.find_images([folder])[0]
    if not paths:
        raise messages.UserError(f"--photos {messages.printable(folder)} holds no photo; pass a folder of photos")
    step = max(1, len(paths) // n)
    return [paths[(i * step) % len(paths)] for i in range(n)]


def start_page(model_path, site_dir, log):
    """serve_web.py serving model_path (as the model itself) on a free port: (process, url, its 'built' line)."""
    script = os.path.join(measure.ROOT, "serve_web.py")
    cmd = [sys.executable, script, "--model", model_path, "--site-dir", site_dir, "--port", "0", "--no-small-model"]
    with open(log, "w") as stderr:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=stderr, text=True, encoding="utf-8")
    built, serving = proc.stdout.readline(), proc.stdout.readline()
    found = re.search(r"http://127\.0\.0\.1:\d+/", serving)
    if not found:
        proc.kill()
        proc.wait()
        with open(log, encoding="utf-8") as f:
            raise messages.UserError(f"serve_web.py did not start: {(built + serving + f.read()).strip()[-1000:]}")
    return proc, found.group(0), built


def page_choice(model_path, site_dir):
    """What serve_web.py says the page runs for model_path by default (its int8 twin or the full model, and why)."""
    cmd = [sys.executable, os.path.join(measure.ROOT, "serve_web.py"), "--model", model_path]
    r = subprocess.run([*cmd, "--site-dir", site_dir, "--no-serve"], capture_output=True, text=True)
    if r.returncode:
        raise messages.UserError(f"serve_web.py failed: {r.stderr.strip()[-1000:]}")
    return r.stdout.split("the page runs ", 1)[-1].strip()


def choose(page, photo, timeout):
    """Choose the photo and wait for its result: seconds from choosing to the result shown."""
    page.evaluate("document.getElementById('app').dataset.state = 'submitted'")
    start = time.perf_counter()
    page.set_input_files("#file", photo)
    page.wait_for_selector(ENDED, timeout=timeout * 1000)
    seconds = time.perf_counter() - start
    if page.get_attribute("#app", "data-state") != "done":
        raise messages.UserError(
            f"the page gave no result for {messages.printable(photo)}: {page.inner_text('#message')[:300]}"
        )
    return seconds


def wire_bytes(page):
    """(bytes of model.onnx, bytes of the whole page) on the wire so far, headers included (resource timing's
    transferSize: 0 for what a cache answered)."""
    entries = page.evaluate(
        "performance.getEntriesByType('navigation').concat(performance.getEntriesByType('resource'))"
        ".map((e) => [e.name, e.transferSize])"
    )
    model = sum(size for name, size in entries if name.split("?")[0].endswith("/model.onnx"))
    return model, sum(size for _, size in entries)


def wait_ready(page, timeout):
    """Wait until the model is ready on the page; raise UserError with the page's message if it failed."""
    page.wait_for_selector("#app[data-state=ready], #app[data-state=model-error]", timeout=timeout * 1000)
    if page.get_attribute("#app", "data-state") != "ready":
        raise messages.UserError(f"the model did not load on the page: {page.inner_text('#message')[:300]}")


def timed_results(page, photos, timeout):
    """(seconds from the navigation to the model ready, first photo to result, warm median, bytes on the wire)."""
    wait_ready(page, timeout)
    ready = page.evaluate("window.__modelReadyAt") / 1000  # from the start of the navigation
    first = choose(page, photos[0], timeout)
    wire = wire_bytes(page)
    warm = statistics.median(choose(page, photo, timeout) for photo in photos[1:])
    return ready, first, warm, wire


def one_load(browser, url, photos, args, throttle_mbps):
    """One first visit in a fresh context: (seconds to the model ready, first photo to result, warm median, (model,
    page) bytes on the wire). Its service worker is blocked: a fresh context keeps no 16 MB model in its in-memory
    HTTP cache, so the worker's precache would download it again (a browser's disk cache answers it with a 304)."""
    context = browser.new_context(viewport={"width": 412, "height": 915}, service_workers="block")  # a phone's screen
    try:
        page = context.new_page()
        if throttle_mbps:
            cdp = context.new_cdp_session(page)
            cdp.send("Network.enable")
            rate = throttle_mbps * 1e6 / 8  # bytes per second
            conditions = dict(offline=False, latency=args.latency_ms, downloadThroughput=rate, uploadThroughput=rate)
            cdp.send("Network.emulateNetworkConditions", conditions)
        page.goto(url)
        return timed_results(page, photos, args.timeout)
    finally:
        context.close()


def second_visit(browser, url, photos, args):
    """A first visit in a fresh context, until the service worker controls the page (its cache complete: it takes
    over only then); then, offline, the page reloaded: what one_load returns for that second visit."""
    context = browser.new_context(viewport={"width": 412, "height": 915})
    try:
        page = context.new_page()
        page.goto(url)
        wait_ready(page, args.timeout)
        deadline = time.monotonic() + args.timeout
        while not page.evaluate("Boolean(navigator.serviceWorker.controller)"):
            if time.monotonic() > deadline:
                raise messages.UserError(f"the page's service worker did not take over within {args.timeout} s")
            time.sleep(0.1)
        context.set_offline(True)
        page.reload()
        return timed_results(page, photos, args.timeout)
    finally:
        context.close()


def row(name, network, wire, ready, first, warm, spread=""):
    return (name, network, f"{wire[0] / 1e6:.2f} MB / {wire[1] / 1e6:.2f} MB", f"{ready:.2f} s{spread}",
            f"{first:.2f} s", f"{warm:.2f} s")  # fmt: skip


def measure_model(browser, name, model_path, photos, args, work):
    """The rows of one model: the medians of LOADS loads, one throttled load with THROTTLE_MBPS, one second visit
    offline (SECOND_VISIT)."""
    site = os.path.join(work, f"site_{name}")
    proc, url, _ = start_page(model_path, site, os.path.join(work, f"server_{name}.log"))
    try:
        loads = [one_load(browser, url, photos, args, 0) for _ in range(args.loads)]
        ready, first, warm = (statistics.median(values) for values in list(zip(*loads))[:3])
        spread = (
            f" ({min(load[0] for load in loads):.2f}-{max(load[0] for load in loads):.2f})" if args.loads > 1 else ""
        )
        rows = [row(name, "local", loads[0][3], ready, first, warm, spread)]
        if args.throttle_mbps:
            ready, first, warm, wire = one_load(browser, url, photos, args, args.throttle_mbps)
            rows.append(row(name, f"{args.throttle_mbps:g} Mbit/s, +{args.latency_ms:g} ms", wire, ready, first, warm))
        if args.second_visit:
            ready, first, warm, wire = second_visit(browser, url, photos, args)
            rows.append(row(name, "offline, second visit", wire, ready, first, warm))
        return rows
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def load_average():
    return ", ".join(f"{v:.2f}" for v in os.getloadavg())


def main(argv=None):
    args = parse_args(argv)
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        raise messages.UserError("Playwright is not installed; pip install playwright") from None
    from skinlesion import quantise

    twin = quantise.quantised_path(args.model)
    models = [("full", args.model)] + ([("int8", twin)] if os.path.isfile(twin) else [])
    photos = chosen_photos(args.photos, 1 + args.warm_runs)
    print(f"machine: {measure.cpu_name()}, {os.cpu_count()} cores; load average (1, 5, 15 min) {load_average()}")
    if len(models) == 1:
        print(f"no int8 twin {messages.printable(twin)}: the full model only (export_onnx.py writes the twin)")
    rows = []
    with tempfile.TemporaryDirectory() as work, sync_playwright() as pw:
        choice = page_choice(args.model, os.path.join(work, "site_default"))
        browser = pw.chromium.launch(executable_path=args.chromium, headless=True, args=measure.CHROMIUM_ARGS)
        try:
            for name, path in models:
                rows += measure_model(browser, name, path, photos, args, work)
                print(f"measured {name} ({messages.printable(path)})", flush=True)
        finally:
            browser.close()
    print(f"load average after: {load_average()}")
    print(f"medians of {args.loads} loads (the range of 'model ready'); warm: median of {args.warm_runs} photos;")
    print("on the wire: the bytes the page downloaded up to its first result, headers included (0: from a cache)")
    print(measure.plain_table(rows, HEAD))
    print(f"by default the page runs {choice}")
    print()
    print(measure.markdown_table(rows, HEAD))


if __name__ == "__main__":
    sys.exit(interrupts.run_script(main))
