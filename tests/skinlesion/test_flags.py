"""skinlesion/flags.py: flags come only from a script's constants block, every mistake (argparse's too) is one
`error:` line with exit 1, 'none' only where a constant may be None, outputs are checked before the work. (That
every script answers --help without importing torch is checked in test_conventions.py; names and shares as printed
in test_messages.py.)"""

import importlib
import os
import runpy

import pytest

import AItraining
from conftest import fails, help_of
from skinlesion import flags

RULER = "# " + "-" * 70
TINY = f'''"""tiny.py: a script with a constants block."""

HIDDEN = 3  # above the block: not a flag
{RULER}
EPOCHS = 10  # a whole number >= 1
DATA_DIR = "dataset"  # a folder
PORT = 8000  # a port number
LR = None  # a number > 0, or none for the recipe's
OUTPUT = "out.csv"  # a file name, or none for no file
PRETRAINED = True  # start from ImageNet weights
SIZES = [64, 128]  # one or more sizes, 32 to 2048
{RULER}
THAT_FLAG = 1  # below the block: not a flag either
'''


@pytest.fixture
def tiny(tmp_path):
    """parse(argv): flags.parse_flags on the globals of a tiny script file with constants inside and outside its
    block (LR is None and typed float; OUTPUT is named nullable; PORT's comment states no range)."""
    path = tmp_path / "tiny.py"
    path.write_text(TINY)
    constants = runpy.run_path(str(path))

    def parse(argv):
        return flags.parse_flags(constants, argv, types={"LR": float}, nullable=("OUTPUT",))

    return parse


def fails_in_one_line(parse, argv, capsys, expected):
    """parse(argv) exits 1 and stderr is that one `error:` line: no usage block, no traceback."""
    _, err = fails(capsys, expected, parse, argv)
    assert err.count("\n") == 1, err


# ---------------------------------------------------------------------------- flags
@pytest.mark.slow
def test_flags_come_from_the_constants_with_their_comments():
    args = AItraining.parse_args(["--epochs", "5", "--no-pretrained", "--weights-file", "none"])
    assert (
        args.epochs == 5
        and args.lr is None
        and args.pretrained is False
        and args.weights_file is None
        and args.image_size == 224
    )
    assert args.given == {"epochs", "pretrained", "weights_file"}
    r = help_of("AItraining.py")
    assert (
        "--image-size IMAGE_SIZE" in r.stdout and "128 trains ~3x faster" in r.stdout and "(default: 224)" in r.stdout
    )


def test_only_the_constants_between_the_rulers_become_flags(tiny, capsys):
    args = tiny(["--epochs", "3", "--sizes", "32", "48", "--no-pretrained", "--lr", "0.01"])
    assert (args.epochs, args.sizes, args.pretrained, args.lr) == (3, [32, 48], False, 0.01)
    assert (args.data_dir, args.port, args.output) == ("dataset", 8000, "out.csv")  # the defaults
    assert args.given == {"epochs", "sizes", "pretrained", "lr"}
    assert not hasattr(args, "hidden") and not hasattr(args, "that_flag")
    with pytest.raises(SystemExit):
        tiny(["--help"])
    help_text = capsys.readouterr().out
    assert "--epochs EPOCHS" in help_text and "a whole number >= 1 (default: 10)" in help_text
    assert "--hidden" not in help_text and "--that-flag" not in help_text
    for flag in ["--that-flag", "--hidden"]:
        fails_in_one_line(tiny, [flag, "x"], capsys, f"unrecognized arguments: {flag} x; see python tiny.py --help")


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--epochs", "abc"], "argument --epochs: invalid int value: 'abc'"),
        (["--port", "80.5"], "argument --port: invalid int value: '80.5'"),
        (["--lr", "fast"], "argument --lr: invalid float value: 'fast'"),
        (["--sizes"], "argument --sizes: expected at least one argument"),
        (["--epoch", "3", "--bogus"], "unrecognized arguments: --epoch 3 --bogus"),  # no abbreviations
    ],
)
def test_an_argparse_mistake_is_one_error_line(tiny, capsys, argv, expected):
    fails_in_one_line(tiny, argv, capsys, expected)


@pytest.mark.parametrize("flag", ["--epochs", "--data-dir", "--port", "--sizes"])
def test_none_is_refused_where_the_constant_is_not_none(tiny, capsys, flag):
    fails_in_one_line(tiny, [flag, "none"], capsys, f"argument {flag}: none: this flag needs a value")


@pytest.mark.parametrize("flag, name", [("--data-dir", "DATA_DIR"), ("--output", "OUTPUT")])
def test_an_empty_value_is_refused_when_the_flags_are_read(tiny, tmp_path, capsys, flag, name):
    """`--output ''` passed every check (one run trained a whole epoch before its traceback); so did a constant
    set to "". A value of one space, the nearest that must pass, passes."""
    expected = f"{flag} '' is empty; pass a value (or set {name} at the top of tiny.py)"
    fails_in_one_line(tiny, [flag, ""], capsys, expected)
    assert getattr(tiny([flag, " "]), name.lower()) == " "
    path = tmp_path / "tiny.py"
    path.write_text(TINY.replace(f"{name} = ", f'{name} = ""  #'))
    constants = runpy.run_path(str(path))
    fails_in_one_line(lambda argv: flags.parse_flags(constants, argv), [], capsys, expected)


@pytest.mark.parametrize(
    "script, flag",
    [("AItraining.py", "--output"), ("AItraining.py", "--log-dir"), ("AItraining.py", "--resume-file"),
     ("predict.py", "--csv"), ("prepare_dataset.py", "--dataset-dir"), ("export_onnx.py", "--output"),
     ("evaluate.py", "--output-dir"), ("serve_web.py", "--site-dir")],
)  # fmt: skip
def test_every_scripts_empty_path_flag_is_refused_before_any_work(script, flag, capsys):
    module = importlib.import_module(script.removesuffix(".py"))
    argv = ["photo.jpg", flag, ""] if script == "predict.py" else [flag, ""]
    parse = getattr(module, "parse_args", module.main)  # serve_web.py reads its flags first thing in main
    fails_in_one_line(parse, argv, capsys, f"{flag} '' is empty; pass a value")


def test_none_is_accepted_for_a_none_constant_and_a_nullable_name(tiny):
    args = tiny(["--lr", "None", "--output", "none"])
    assert args.lr is None and args.output is None and args.given == {"lr", "output"}
    assert tiny(["--lr", "3e-4"]).lr == 3e-4


# ---------------------------------------------------------------------------- checks
def test_outputs_are_checked_before_the_work(tmp_path, readonly_folder, capsys):
    (tmp_path / "file").write_text("")
    for path, folder, expected in [
        (os.path.join(readonly_folder, "m.pth"), False, "cannot write in"),
        (str(tmp_path), False, "is a folder; pass a file name"),
        (str(tmp_path / "file"), True, "is a file; pass a folder"),
        (os.path.join(readonly_folder, "out"), True, "cannot write in"),
        (str(tmp_path / "file" / "m.pth"), False, "is a file, not a folder"),
    ]:
        fails(capsys, expected, flags.check_writable, path, "--output", folder=folder)
    flags.check_writable(str(tmp_path / "new" / "folder"), "--output-dir", folder=True)  # its parent takes it
    assert sorted(os.listdir(tmp_path)) == ["file", "readonly"]  # a check writes nothing


def test_number_checks():
    assert flags.in_range(3, 1, 5) and not flags.in_range(0, 1) and not flags.in_range(True, 0, 1)
    assert not flags.in_range(float("nan"), 0) and not flags.in_range(float("inf"), 0) and not flags.in_range("3", 0)
    assert flags.is_list_of([1, 2.5], flags.in_range, 2) and not flags.is_list_of([1, 2], flags.in_range, 3)


# ---------------------------------------------------------------------------- ranges from the comments
INF = float("inf")


@pytest.mark.parametrize(
    "comment, expected",
    [
        ("a whole number >= 1", (1, INF, False, False, ">= 1")),
        ("peak rate, > 0; None: the recipe's", (0, INF, True, False, "> 0")),
        ("a share, 0 to 0.9 in steps of 0.05", (0, 0.9, False, False, "0 to 0.9")),
        ("share of the steps, 0 to <1 (0: none)", (0, 1, False, True, "0 to <1")),
        ("largest difference, 1e-9 to 0.1", (1e-9, 0.1, False, False, "1e-9 to 0.1")),
        ("epochs, 1 to 1e6", (1, 1e6, False, False, "1 to 1e6")),
        ("sampling and split, 0 to 2**32 - 1", (0, 2**32 - 1, False, False, "0 to 2**32 - 1")),
        (
            "network input in px, 32 to 2048 (224 = ImageNet; 128 trains ~3x faster)",
            (32, 2048, False, False, "32 to 2048"),
        ),
        ("0 to 1: stop when less of the rows survive; >= 5 is ignored", (0, 1, False, False, "0 to 1")),  # the first
        ("processes, >= 1 (or 2 to 8 on a laptop)", (1, INF, False, False, ">= 1")),  # the first phrase counts
    ],
)
def test_a_range_is_read_from_the_first_phrase_of_the_comment(comment, expected):
    found = flags.allowed_range(comment)
    assert tuple(found) == expected and type(found.low) is type(expected[0]), found


@pytest.mark.parametrize(
    "comment",
    [
        "a folder",
        "e.g. 0.05; None: the recipe's (finetune 20, scratch 100)",
        "likewise, val + test <= 0.9",  # <= is not in the grammar
        "from B0 to B7",  # a word is not a number
        "0 = never",
    ],
)
def test_a_comment_without_a_range_states_none(comment):
    assert flags.allowed_range(comment) is None


@pytest.mark.parametrize(
    "comment, allowed, refused",
    [
        (">= 1", [1, 1.0, 1e9], [0, 0.999, -1]),  # closed: the bound itself is allowed
        ("> 0", [1e-12, 1], [0, 0.0, -1e-12]),  # open: the bound itself is refused
        ("0 to <1", [0, 0.0, 0.999999], [1, 1.0, -1e-9, 1.000001]),
        ("32 to 2048", [32, 2048], [31, 2049, 31.999]),
        ("0 to 2**32 - 1", [0, 2**32 - 1], [-1, 2**32]),
        ("0.1 to 3600", [0.1, 3600.0], [0.09999, 3600.001]),
        ("0 to 1", [0, 1], [float("nan"), INF, -INF, True, "0.5"]),  # not finite, a bool, text: never a number
    ],
)
def test_the_nearest_values_outside_a_range_are_refused(comment, allowed, refused):
    bounds = flags.allowed_range(comment)
    assert [flags.is_allowed(v, bounds) for v in allowed] == [True] * len(allowed)
    assert [flags.is_allowed(v, bounds) for v in refused] == [False] * len(refused)


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--epochs", "0"], "--epochs 0: use >= 1 (or set EPOCHS at the top of tiny.py)"),
        (["--lr", "0"], "--lr 0.0: use > 0 (or set LR at the top of tiny.py)"),
        (["--lr", "nan"], "--lr nan: use > 0"),
        (["--sizes", "64", "31"], "--sizes 31: use 32 to 2048 (or set SIZES at the top of tiny.py)"),  # each of a list
    ],
)
def test_a_flag_outside_its_comments_range_is_one_error_line(tiny, capsys, argv, expected):
    fails_in_one_line(tiny, argv, capsys, expected)


def test_values_at_the_bounds_none_and_flags_without_a_range_pass(tiny):
    args = tiny(["--epochs", "1", "--lr", "1e-12", "--sizes", "32", "2048", "--port", "-7"])
    assert (args.epochs, args.lr, args.sizes, args.port) == (1, 1e-12, [32, 2048], -7)  # PORT: no range, no check
    assert tiny(["--lr", "none"]).lr is None  # LR may be None: None is no number to check


def test_a_constant_set_outside_its_range_is_refused_too(tmp_path, capsys):
    path = tmp_path / "tiny.py"
    path.write_text(TINY.replace("EPOCHS = 10  #", "EPOCHS = 0  #"))
    constants = runpy.run_path(str(path))
    expected = "--epochs 0: use >= 1 (or set EPOCHS at the top of tiny.py)"
    fails_in_one_line(lambda argv: flags.parse_flags(constants, argv), [], capsys, expected)
    assert flags.parse_flags(constants, ["--epochs", "2"]).epochs == 2


@pytest.mark.parametrize("text, value", [("false", False), ("no", False), ("0", False), ("False", False),
                                         ("true", True), ("yes", True), ("1", True), ("none", None)])  # fmt: skip
def test_a_yes_no_flag_that_may_be_none_reads_false_as_false(text, value):
    """AItraining.py's CLASS_WEIGHTS is None (the recipe's) or a bool: `--class-weights false` trained with class
    weights, as bool('false') is True."""
    import AItraining

    assert AItraining.parse_args(["--class-weights", text]).class_weights is value


def test_a_yes_no_flag_refuses_what_is_neither(capsys):
    import AItraining

    fails_in_one_line(AItraining.parse_args, ["--class-weights", "maybe"], capsys, "maybe: use yes or no")
