"""The command line's flags: made from a script's constants block, checks of flag values (each numeric flag
against the range its constant's comment states) and of writable paths.

Torch-free, so that `--help` and the ONNX path start in a fraction of a second."""

import argparse
import math
import os
import re
import tempfile
from typing import NamedTuple

from skinlesion.messages import UserError, printable

PROJECT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the scripts' folder
RULER = re.compile(r"^# -{20,}$", re.M)  # the two lines around a script's constants block
NUMBER = r"\d+(?:\.\d+)?(?:e-?\d+)?(?:\*\*\d+(?: - \d+)?)?"  # 1, 0.99, 1e6, 1e-9, 2**32 - 1 (none negative)
YES_NO = {"yes": True, "true": True, "1": True, "no": False, "false": False, "0": False}  # None-or-bool flags
RANGE = re.compile(
    rf"(?<![\w.*<>=])(?:(?P<low>{NUMBER}) to (?P<open><)?(?P<high>{NUMBER})|(?P<op>>=?) ?(?P<bound>{NUMBER}))(?!\w)"
)  # the phrases of a range in a constant's comment: A to B, A to <B, >= A, > A (see allowed_range)


def constants_block(script):
    """[(NAME, comment)] of the `NAME = value  # comment` lines between the first two rulers of a script: its
    constants block, the only names that become flags."""
    with open(script, encoding="utf-8") as f:
        parts = RULER.split(f.read(), maxsplit=2)
    if len(parts) < 3:
        return []
    names = re.findall(r"^([A-Z][A-Z0-9_]*) = ", parts[1], re.M)
    comments = dict(re.findall(r"^([A-Z][A-Z0-9_]*) = .*?  # (.*)$", parts[1], re.M))
    return [(name, comments.get(name, "")) for name in names]


def flags_markdown(scripts):
    """The flags of the scripts as markdown tables (flag, default as written in the script, meaning): what
    `python SCRIPT --help` says, for docs/flags.md (make docs writes it; a test keeps it equal)."""
    text = [
        "# Flags",
        "",
        "Generated from each script's constants block by `make docs`; `python SCRIPT --help` says the "
        "same. Every flag is a constant at the top of its script: edit it there, or pass the flag. A number must "
        "lie in the range its meaning states first (`A to B`, `A to <B`, `>= A`, `> A`).",
    ]
    for script in scripts:
        with open(script, encoding="utf-8") as f:
            block = RULER.split(f.read(), maxsplit=2)[1]
        text += ["", f"## {os.path.basename(script)}", "", "| flag | default | meaning |", "|---|---|---|"]
        for name, default, comment in re.findall(r"^([A-Z][A-Z0-9_]*) = (.*?)  # (.*)$", block, re.M):
            text.append(f"| `{flag_name(name)}` | `{default}` | {comment.replace('|', '/')} |")
    return "\n".join(text) + "\n"


def flag_name(name):
    """EPOCHS -> --epochs, IMAGE_SIZE -> --image-size."""
    return "--" + name.lower().replace("_", "-")


class OneLineParser(argparse.ArgumentParser):
    """argparse whose mistakes (an unknown flag, 'abc' for a number) are one `error:` line, as every other."""

    def error(self, message):
        raise UserError(f"{message}; see python {self.prog} --help")


def flag_type(name, value, types=None):
    """The type a constant's flag takes: bool (--x/--no-x), int, float or str, or that of a list's items; a
    constant that is None takes its type from types (str if not there)."""
    if isinstance(value, bool):
        return bool
    kind = (types or {}).get(name)
    if kind is not None:
        return kind
    if isinstance(value, list):
        return type(value[0]) if value else str
    if value is None:
        return str
    return type(value)


def value_converter(name, kind, nullable):
    """text -> a value of kind; 'none' gives None only where the constant allows it."""

    def convert(text):
        if text.lower() == "none":
            if nullable:
                return None
            raise argparse.ArgumentTypeError("none: this flag needs a value (a file named none: pass ./none)")
        if kind is bool:  # bool('false') is True: a yes/no flag that may also be None (CLASS_WEIGHTS)
            if text.lower() not in YES_NO:
                raise argparse.ArgumentTypeError(f"{text}: use yes or no (true/false, 1/0), or none")
            return YES_NO[text.lower()]
        return kind(text)

    convert.__name__ = kind.__name__  # argparse then says "invalid int value: 'abc'"
    return convert


def script_name(path):
    """How a user runs the script at path: AItraining.py, tools/bench.py (its own name outside the project)."""
    inside = os.path.relpath(os.path.abspath(path), PROJECT)
    return os.path.basename(path) if inside.startswith("..") else inside


def parse_flags(constants, argv=None, positional=None, types=None, nullable=()):
    """args for a script: one flag per constant of its constants block (between the two rulers), its default
    taken from the constant, its help from the comment (EPOCHS -> --epochs, PRETRAINED -> --pretrained/
    --no-pretrained, a list -> one or more values). A constant that is None takes its type from types and
    accepts 'none'; so do the names in nullable. positional: a (name, help) argument taking one or more values.
    Each number (each of a list) must lie in the range the constant's comment states (see allowed_range); None
    passes where the constant allows it. args.given holds the flags typed on the command line."""
    block = constants_block(constants["__file__"])
    script = script_name(constants["__file__"])
    parsers = []
    for with_defaults in (True, False):
        parser = OneLineParser(
            prog=script,
            description=constants["__doc__"],
            allow_abbrev=False,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )  # --epoch is not --epochs
        if positional:
            parser.add_argument(positional[0], nargs="+", help=positional[1])
        for name, comment in block:
            value = constants[name]
            if with_defaults:
                default = value
            else:
                default = argparse.SUPPRESS
            options = dict(
                default=default, dest=name.lower(), help=comment.replace("%", "%%") + " (default: %(default)s)"
            )
            kind = flag_type(name, value, types)
            if isinstance(value, bool):
                options["action"] = argparse.BooleanOptionalAction
            else:
                converter = value_converter(name, kind, value is None or name in nullable)
                options.update(metavar=name, type=converter)
                if isinstance(value, list):
                    options["nargs"] = "+"
            parser.add_argument(flag_name(name), **options)
        parsers.append(parser)
    args = parsers[0].parse_args(argv)
    for name, _ in block:  # `--output ''` is no path: it passed the later checks (one run trained an epoch first)
        value = getattr(args, name.lower())
        if value == "" or (isinstance(value, list) and "" in value):
            raise UserError(f"{flag_name(name)} '' is empty; pass a value (or set {name} at the top of {script})")
    for name, comment in block:
        check_allowed(name, comment, getattr(args, name.lower()), script)
    typed = vars(parsers[1].parse_known_args(argv)[0])
    args.given = set(typed) - {positional[0] if positional else None}
    return args


def check(ok, flag, value, wanted):
    """raise UserError unless ok: '--epochs 0: use a whole number >= 1'."""
    if not ok:
        raise UserError(f"{flag} {value}: {wanted}")


def in_range(value, low=-math.inf, high=math.inf):
    """Whether value is a finite number (not a bool) from low to high: a flag's value, or a model file's."""
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and low <= value <= high
    )


class Range(NamedTuple):
    """A flag's allowed values as its constant's comment states them (allowed_range)."""

    low: float
    high: float  # inf after >= A and > A
    low_open: bool  # low itself is not allowed
    high_open: bool
    text: str  # the phrase, as the comment writes it: '0 to <1'


def range_number(text):
    """A number as a range in a comment writes it: '1', '0.99', '1e6', '2**32 - 1' (an int unless it has . or e)."""
    power, _, minus = text.partition(" - ")
    base, _, exponent = power.partition("**")
    if "." in base or "e" in base:
        value = float(base)
    else:
        value = int(base)
    if exponent:
        value = value ** int(exponent)
    if minus:
        value = value - int(minus)
    return value


def allowed_range(comment):
    """The range a constant's comment states, the one source of its flag's allowed values: the first of these
    phrases in the comment, or None where it has none.
        A to B     from A to B, both allowed              (0 to 0.9, 32 to 2048, 0 to 2**32 - 1)
        A to <B    from A, allowed, up to B, not allowed  (0 to <1)
        >= A       A or more                              (>= 1)
        > A        more than A                            (> 0)
    A and B are numbers written as 1, 0.99, 1e6, 1e-9 or 2**32 - 1 (none negative). A phrase ends where a
    word starts: in '0 to 1: stop when ...' it is '0 to 1'."""
    found = RANGE.search(comment)
    if found is None:
        return None
    if found["op"]:
        return Range(range_number(found["bound"]), math.inf, found["op"] == ">", False, found[0])
    return Range(range_number(found["low"]), range_number(found["high"]), False, bool(found["open"]), found[0])


def is_allowed(value, allowed):
    """Whether value is a finite number (not a bool) within allowed, a Range (its open ends not allowed)."""
    if not in_range(value, allowed.low, allowed.high):
        return False
    return not (allowed.low_open and value == allowed.low) and not (allowed.high_open and value == allowed.high)


def check_allowed(name, comment, value, script):
    """raise UserError unless value (each value of a list) is a number within the range the comment of the constant name
    states, e.g. '--epochs 0: use >= 1 (or set EPOCHS at the top of AItraining.py)'. None, text, a bool, and a
    constant whose comment states no range pass."""
    allowed = allowed_range(comment)
    values = value if isinstance(value, list) else [value]
    for v in values:
        if allowed is None or isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        wanted = f"use {allowed.text} (or set {name} at the top of {script})"
        check(is_allowed(v, allowed), flag_name(name), v, wanted)


def is_list_of(value, check, length=None):
    return isinstance(value, list) and length in (None, len(value)) and all(check(v) for v in value)


def check_writable(path, flag, folder=False):
    """Before any slow work: fail unless a file (or, with folder, files in the folder) can be written at path:
    tried with a real file in the nearest existing folder (permissions, read-only disks, root alike)."""
    if os.path.exists(path) and os.path.isdir(path) != folder:
        if folder:
            raise UserError(f"{flag} {printable(path)} is a file; pass a folder")
        raise UserError(f"{flag} {printable(path)} is a folder; pass a file name")
    if folder:
        target = os.path.abspath(path)
    else:
        target = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(target):  # a folder the script will create: its parent must take it
        target = os.path.dirname(target)
    if not os.path.isdir(target):
        raise UserError(f"{flag} {printable(path)}: {printable(target)} is a file, not a folder; pass another path")
    try:
        fd, probe = tempfile.mkstemp(dir=target, prefix=".write-test-")
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        where = printable(target)
        raise UserError(
            f"{flag} {printable(path)}: cannot write in {where} ({e.strerror}); pass a path in a writable folder"
        ) from None
