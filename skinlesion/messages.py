"""What a user reads outside the flags: one-line errors (UserError) and warnings, printable names (nothing read from
a data or model file can forge a line), counts, shares and the first few of a list. Torch-free."""

import math
import os
import sys

ESCAPES = {code: f"\\x{code:02x}" for code in [*range(32), 127]} | {
    9: "\\t",
    10: "\\n",
    13: "\\r",
}  # control characters


class UserError(Exception):
    """A user's mistake: message, one line saying what is wrong and how to fix it, and status, the exit status a
    script ends with (1 unless said). The package raises it; only the scripts' handler (interrupts.run_script)
    prints it, as `error: <message>` with no traceback, and returns its status for the script to exit with.
    Picklable with both (pool workers raise it)."""

    def __init__(self, message, status=1):
        super().__init__(message, status)  # both in args: what pickle hands back to __init__
        self.message = message
        self.status = status

    def __str__(self):
        return str(self.message)


def report(error):
    """Print a UserError as its one line on stderr, `error: <message>`; returns its exit status."""
    print(f"error: {error.message}", file=sys.stderr)
    return error.status


def warn(message):
    print(f"warning: {message}", file=sys.stderr)


def printable(path):
    """A path (or any name, or any text read from a data or model file) as one printable line: bytes that are not
    UTF-8 (a file name from another system) as \\xNN, control characters such as a newline as \\n or \\xNN, and
    other characters that are not printable (C1 controls, bidirectional overrides, line separators) as \\uNNNN,
    so a name cannot forge a line or hide text. Everything a script prints from a data file goes through it."""
    text = os.fsencode(path).decode("utf-8", "backslashreplace") if isinstance(path, (str, bytes)) else str(path)
    text = text.translate(ESCAPES)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def counts_text(values, most=6):
    """'a 3, b 1, ...': the most common values with their counts ('' shown as 'empty')."""
    import pandas as pd

    counts = pd.Series(values).value_counts()
    parts = [f"{printable(value) if value else 'empty'} {n}" for value, n in counts[:most].items()]
    if len(counts) > most:
        parts.append("...")
    return ", ".join(parts)


def percent_text(share):
    """A share as a percentage with one decimal, or with as many as show its first two significant digits (and
    those of 1 - share), trailing zeros cut: 0.05 '5.0%', 0.0001 '0.01%', 0.9999 '99.99%'; never '0.0%' for a
    share that is not 0."""
    closest = 100 * min(share, 1 - share)
    digits = max(1, 1 - math.floor(math.log10(closest))) if closest > 0 else 1
    text = f"{100 * share:.{digits}f}"
    return (text.rstrip("0").rstrip(".") if digits > 1 else text) + "%"


def first_few(items, most=3):
    """'a, b, c, ...': the first few items."""
    items = list(items)
    parts = [printable(item) for item in items[:most]]
    if len(items) > most:
        parts.append("...")
    return ", ".join(parts)
