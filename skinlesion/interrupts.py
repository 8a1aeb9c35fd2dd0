"""What ends a script, the same in every script: run_script, the one handler, returns the exit status the script
exits with: a user's mistake (UserError) or an OSError that escaped a script's own checks is one `error:` line,
Ctrl-C one line and 130, whatever a library made of the interrupt. Worker pools leave Ctrl-C to the main process."""

import os
import signal
import sys

from skinlesion.messages import UserError, printable, report

PRESSED = []  # the Ctrl-Cs seen while run_script runs a main
SAYS = []  # what a Ctrl-C says once an output changed (run_script's own message is about the outputs before)


def raise_if_pressed():
    """Raise KeyboardInterrupt if Ctrl-C was pressed, even one a library swallowed (raised inside a weakref callback
    it is only printed, and the run goes on): called before an output replaces the previous one."""
    if PRESSED:
        raise KeyboardInterrupt


def say_on_ctrl_c(message):
    """From now on, a Ctrl-C prints message instead of run_script's: an output was replaced (a folder swapped in),
    and 'the previous dataset is untouched' would no longer be true."""
    SAYS.append(message)


def one_line_while_loading():
    """Called by a script run as a program before it imports its libraries (numpy, pandas, model: run_script is not
    running yet): a Ctrl-C while they load prints `interrupted` and ends it with exit code 130 at once, instead of
    a traceback out of whichever import it cut short (a library may turn the interrupt into another error there).
    Nothing is written before main runs, so nothing is left to clean. A Ctrl-C the shell told the script to ignore
    (a background job) stays ignored."""
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, interrupted_while_loading)


def interrupted_while_loading(signum, frame):
    try:
        print("\ninterrupted", file=sys.stderr, flush=True)
    finally:
        os._exit(130)


def run_script(main, interrupted="interrupted"):
    """Run a script's main and return the status the script exits with, the one handler of what ends a script
    (the exit itself is the script's own last line): what main returns, 0 for None (predict.py returns 3 for a
    single photo unlike the training photos). A UserError (a user's mistake, raised anywhere below) is its
    `error:` line and its status. An OSError that escaped the script's own checks (an unreadable photo reported by
    a DataLoader worker, a full disk) is one error line and 1. Ctrl-C prints `interrupted` (or what main told
    say_on_ctrl_c) and gives 130; SIGTERM (kill PID) unwinds the same way, then the process dies of that signal,
    as a kill does. A library may turn the interrupt into another error (a C extension cut short while it is
    imported, such as scipy's, raises ImportError; a library that drops the failed import leaves one of our
    checks to report what follows), so any error after a Ctrl-C counts as the interrupt. A Ctrl-C the shell told
    the script to ignore (a background job) stays ignored. Any other error (a bug) goes on, with its traceback."""

    def on_ctrl_c(signum, frame):  # SIGTERM (kill PID) too: the same unwinding, then death by that signal
        PRESSED.append(signum)
        raise KeyboardInterrupt

    def quiet_about_ctrl_c(unraisable):  # a Ctrl-C that Python can only print: raise_if_pressed acts on it
        if not isinstance(unraisable.exc_value, KeyboardInterrupt):
            previous_hook(unraisable)

    PRESSED.clear()
    SAYS.clear()
    previous, previous_hook = signal.getsignal(signal.SIGINT), sys.unraisablehook
    previous_term = signal.getsignal(signal.SIGTERM)
    ours = previous in (signal.default_int_handler, interrupted_while_loading)  # not one the shell set aside
    if ours:
        signal.signal(signal.SIGINT, on_ctrl_c)
    if previous_term == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, on_ctrl_c)
    sys.unraisablehook = quiet_about_ctrl_c
    try:
        status = main()
    except BaseException as e:
        status = exit_status(e, interrupted)
        if status is None:
            raise
        return status
    finally:
        PRESSED.clear()
        SAYS.clear()
        sys.unraisablehook = previous_hook
        if ours:
            signal.signal(signal.SIGINT, previous)
        if previous_term == signal.SIG_DFL:
            signal.signal(signal.SIGTERM, previous_term)
    return 0 if status is None else status


def exit_status(error, interrupted):
    """run_script's status for an error out of main, once its line is printed; None for an error that is not a
    user's (a bug: it goes on, with its traceback)."""
    if PRESSED or isinstance(error, KeyboardInterrupt):
        if isinstance(error, UserError):  # a check that ran after the Ctrl-C: its line, then the interrupt's
            report(error)
        said = SAYS[-1] if SAYS else interrupted
        print(f"\n{said}", file=sys.stderr)
        if signal.SIGTERM in PRESSED:  # the workers and temporaries are gone: die of it, as a kill does
            sys.stderr.flush()
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
        return 130
    if isinstance(error, UserError):  # a user's mistake: its one line and its exit status
        return report(error)
    if not isinstance(error, OSError):
        return None
    if error.filename is not None and error.strerror:  # '[Errno 28] No space left on device' alone names no file
        return report(UserError(f"{printable(error.filename)}: {error.strerror}"))
    last_line = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
    return report(UserError(last_line.removeprefix("OSError: ")))


def quiet_worker():
    """A pool worker leaves Ctrl-C to the main process, and dies of SIGTERM at once, silently (Pool.terminate sends
    it; the main process's handler, inherited, would print a traceback)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})


def worker_pool(workers):
    """A process pool whose workers ignore Ctrl-C (the main process handles it, once; SIGTERM to the main process
    ends them with it), or a None-yielding context for 1 worker. Ctrl-C and SIGTERM are held back while the
    workers are forked: arriving inside a fork hook they would be lost."""
    from contextlib import nullcontext
    from multiprocessing import Pool

    if workers == 1:
        return nullcontext()
    hold = getattr(signal, "pthread_sigmask", None)  # POSIX only; Windows does not fork
    if hold:
        hold(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        return Pool(workers, quiet_worker)
    finally:
        if hold:
            hold(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
