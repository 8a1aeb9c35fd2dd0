"""skinlesion/interrupts.py: Ctrl-C is one line and exit code 130, even where a library turned the interrupt into
another error; an escaped OSError is one error line; a pool's workers leave Ctrl-C to the main process. (Each
script's Ctrl-C, sent to its whole process group, is tested with the script.)"""

import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import ENV, ROOT, alarm, ctrl_c, ctrl_c_as_in_a_terminal, handler_fails
from skinlesion import interrupts, messages


def interrupted(capsys, main):
    """run_script(main) returns 130, the status the script exits with; returns its stderr lines."""
    assert interrupts.run_script(main, "interrupted; nothing written") == 130
    return capsys.readouterr().err.strip().splitlines()


def test_ctrl_c_is_one_line_and_exit_code_130(capsys):
    assert interrupted(capsys, ctrl_c) == ["interrupted; nothing written"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # pytest's Ctrl-C is back


def test_a_ctrl_c_a_library_turned_into_another_error_is_still_the_interrupt(capsys):
    def import_cut_short():  # a C extension interrupted while it is imported raises ImportError
        try:
            ctrl_c()
        except KeyboardInterrupt:
            raise ImportError("initialization failed") from None

    def format_skipped():  # a library drops the failed import; one of our checks reports what follows
        try:
            import_cut_short()
        except ImportError:
            raise messages.UserError("no readable image in the export") from None

    assert interrupted(capsys, import_cut_short) == ["interrupted; nothing written"]
    assert interrupted(capsys, format_skipped) == [
        "error: no readable image in the export",
        "",
        "interrupted; nothing written",
    ]


def test_errors_without_a_ctrl_c_are_left_as_they_are(capsys):
    def bug():
        raise ImportError("a real bug: its traceback is wanted")

    with pytest.raises(ImportError, match="a real bug"):
        interrupts.run_script(bug)

    def mistake():
        raise messages.UserError("no readable image")

    handler_fails(capsys, "error: no readable image", mistake)


def test_an_oserror_that_escaped_is_one_line(capsys):
    def full_disk():
        raise OSError("OSError: could not write out.csv (No space left on device)")

    handler_fails(capsys, "error: could not write out.csv (No space left", full_disk)


def test_an_oserror_naming_no_file_in_its_text_is_said_with_its_file(capsys):
    """'error: [Errno 28] No space left on device' named no file; the error knows it (open's, makedirs')."""

    def full_disk():
        raise OSError(28, "No space left on device", "dataset.tmp-7/benign")

    _, err = handler_fails(capsys, "error: dataset.tmp-7/benign: No space left on device", full_disk)
    assert err == "error: dataset.tmp-7/benign: No space left on device\n"


def test_a_ctrl_c_the_shell_ignores_stays_ignored():
    finished = []

    def background_job():  # `python script.py &` in a shell script: Ctrl-C in the terminal is not for it
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.1)
        finished.append(True)

    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        assert interrupts.run_script(background_job) == 0
        assert finished and signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


POOL = """
import multiprocessing, os, signal, sys, time
from skinlesion import interrupts

def ignores_ctrl_c(pid):  # /proc/PID/status SigIgn: the mask of the signals it ignores
    with open(f"/proc/{pid}/status") as f:
        ignored = next(int(line.split()[1], 16) for line in f if line.startswith("SigIgn:"))
    return bool(ignored >> (signal.SIGINT - 1) & 1)

pool = interrupts.worker_pool(2)
workers = multiprocessing.active_children()
for worker in workers:
    os.kill(worker.pid, signal.SIGINT)
while not all(not worker.is_alive() or ignores_ctrl_c(worker.pid) for worker in workers):
    time.sleep(0.01)  # until each worker has died of it, or set it aside (its initializer ran)
print(len(workers), sum(worker.is_alive() for worker in workers), pool.map(abs, [-1, -2]), flush=True)
os._exit(0)  # a pool whose worker died can hang on closing
"""


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/proc"), reason="a process's ignored signals are read from Linux /proc")
def test_the_pool_workers_ignore_ctrl_c():
    assert interrupts.worker_pool(1).__enter__() is None  # one worker: no pool, the work runs in this process
    r = subprocess.run(  # the workers ignore Ctrl-C because quiet_worker says so, not because the suite's parent did
        [sys.executable, "-c", POOL], cwd=ROOT, capture_output=True, text=True, timeout=60,
        preexec_fn=ctrl_c_as_in_a_terminal,
    )  # fmt: skip
    assert r.stdout.split() == ["2", "2", "[1,", "2]"], r.stderr  # both alive, and they still work


def test_a_ctrl_c_python_could_only_print_is_no_traceback_and_stops_the_next_output(capsys):
    class Closes:
        def __del__(self):  # Python prints what is raised here, and goes on
            ctrl_c()

    def main():
        Closes()
        interrupts.raise_if_pressed()  # what files.atomic_write and folders.replaced_folder do before replacing

    assert interrupted(capsys, main) == ["interrupted; nothing written"]  # no "Exception ignored", no traceback


LOADING = """
import importlib.abc, runpy, sys, time

class SlowNumpy(importlib.abc.MetaPathFinder):  # the script's libraries load slowly: it is still importing numpy
    def find_spec(self, name, path, target=None):
        if name == "numpy":
            print("importing numpy", flush=True)
            time.sleep(60)

sys.meta_path.insert(0, SlowNumpy())
sys.argv = [sys.argv[1], "--help"]  # should it get past the imports: it only prints its flags
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.mark.slow
@pytest.mark.parametrize(
    "script",
    [*sorted(p for p in os.listdir(ROOT) if p.endswith(".py") and p != "model.py"), "tools/bench.py"],
)
def test_a_ctrl_c_while_a_script_is_still_importing_its_libraries_is_one_line(script, tmp_path):
    """Ctrl-C before run_script runs, while numpy, pandas or the model load (a second on a busy machine), was a
    KeyboardInterrupt traceback out of whichever import it cut short."""
    path = os.path.join(ROOT, script)  # its folder comes first on the path, as when Python runs it: tools/ for bench
    p = subprocess.Popen(
        [sys.executable, "-c", LOADING, path],
        cwd=tmp_path,
        env=dict(ENV, PYTHONPATH=os.pathsep.join([os.path.dirname(path), ENV["PYTHONPATH"]])),
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=ctrl_c_as_in_a_terminal,
    )
    with alarm(60, f"{script} never imported numpy"):
        marker = p.stdout.readline()
    assert marker == "importing numpy\n", marker + p.communicate()[1]
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130 and err.strip().splitlines() == ["interrupted"], err


def test_a_ctrl_c_the_shell_ignores_stays_ignored_while_loading_too():
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        interrupts.one_line_while_loading()  # a background job
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
        signal.signal(signal.SIGINT, signal.default_int_handler)
        interrupts.one_line_while_loading()  # a terminal's
        assert signal.getsignal(signal.SIGINT) is interrupts.interrupted_while_loading
    finally:
        signal.signal(signal.SIGINT, previous)


# ---------------------------------------------------------------------------- the one handler's status (issue 30)
def test_a_user_error_is_its_line_and_its_own_status_which_run_script_returns(capsys):
    """The handler returns the status (the script's last line exits with it): never an exit of its own."""

    def mistake():
        raise messages.UserError("x", 3)

    _, err = handler_fails(capsys, "error: x", mistake, status=3)
    assert err == "error: x\n"
    assert interrupts.run_script(lambda: None) == 0  # main returned: 0
    assert interrupts.run_script(lambda: 3) == 3  # main's own status (predict.py's unfamiliar photo) is handed on
    with pytest.raises(SystemExit) as exit_info:  # a main that exits itself (argparse's --help) is left to do so
        interrupts.run_script(lambda: sys.exit(0))
    assert exit_info.value.code == 0
    assert capsys.readouterr() == ("", "")


def test_an_oserror_with_a_file_is_one_line_naming_it_and_status_1(capsys):
    """Its file name printable (a newline in it cannot make a second line), its reason, no '[Errno 13]'."""

    def denied():
        raise PermissionError(13, "Permission denied", "runs/a\nerror: forged.csv")

    _, err = handler_fails(capsys, "error: runs/a\\nerror: forged.csv: Permission denied", denied)
    assert err == "error: runs/a\\nerror: forged.csv: Permission denied\n"


def test_a_user_error_raised_after_a_ctrl_c_is_the_interrupt_and_130_not_its_status(capsys):
    """A check that fails because the Ctrl-C cut its input short says its line, then the interrupt's; the status
    is the interrupt's, 130, not the error's own."""

    def check_after_ctrl_c():
        try:
            ctrl_c()
        except KeyboardInterrupt:  # a library swallowed it; the next check finds nothing
            raise messages.UserError("nothing to read", 3) from None

    assert interrupted(capsys, check_after_ctrl_c) == ["error: nothing to read", "", "interrupted; nothing written"]


def refuse_odd(n):  # a pool worker's check: module level, so that the pool can hand it to its workers
    if n % 2:
        raise messages.UserError(f"photo {n} is refused; pass another", 4)
    return n


def test_a_user_error_a_pool_worker_raises_reaches_the_main_process_with_its_message_and_status(capsys):
    """UserError pickles with both: what a worker of interrupts.worker_pool raises is what the main process sees,
    and so what the handler prints and returns."""
    with interrupts.worker_pool(2) as pool:
        assert pool.map(refuse_odd, [0, 2, 4]) == [0, 2, 4]
        with pytest.raises(messages.UserError) as raised:
            pool.map(refuse_odd, [0, 2, 3])
        assert (type(raised.value), str(raised.value), raised.value.status) == (
            messages.UserError,
            "photo 3 is refused; pass another",
            4,
        )
        handler_fails(capsys, "error: photo 5 is refused; pass another", lambda: pool.map(refuse_odd, [5]), status=4)
