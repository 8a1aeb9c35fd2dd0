"""skinlesion/messages.py: names are printed as one safe line (nothing read from a file can forge one), lists and
counts are summed up in a few words, and a share is never printed as zero percent."""

import os

import pytest

from skinlesion import messages


def test_printable_escapes_control_characters_and_bytes_that_are_not_utf8():
    forged = "a.jpg\nPrediction: benign"
    assert messages.printable(forged) == "a.jpg\\nPrediction: benign"
    assert "\n" not in messages.printable(forged)
    assert messages.printable("a\rb\tc\x1b[31md\x7fe\x00") == "a\\rb\\tc\\x1b[31md\\x7fe\\x00"
    assert messages.printable(b"caf\xe9.jpg") == "caf\\xe9.jpg"
    assert messages.printable(os.fsdecode(b"\xff\xfe.jpg")) == "\\xff\\xfe.jpg"  # a str name read from the disk
    assert messages.printable("naïve Ünïcode ✓.jpg") == "naïve Ünïcode ✓.jpg"  # UTF-8 is kept as it is
    assert messages.printable(3) == "3"
    for char in map(chr, range(32)):
        assert messages.printable(char).isprintable(), repr(char)
    hidden = "evil\u202egpj.exe\x85\u2028\u200b"  # a right-to-left override, C1 NEL, a line separator, zero width
    assert (
        messages.printable(hidden) == "evil\\u202egpj.exe\\x85\\u2028\\u200b"
        and messages.printable(hidden).isprintable()
    )
    assert messages.printable("Mélanome, NOS 😀") == "Mélanome, NOS 😀"  # printable text is kept as it is


def test_first_few_and_counts_text():
    assert messages.first_few(["a", "b"]) == "a, b"
    assert messages.first_few(range(5)) == "0, 1, 2, ..."
    assert messages.first_few("abcde", most=4) == "a, b, c, d, ..."
    assert messages.counts_text(["x", "y", "x", ""]) == "x 2, y 1, empty 1"
    assert messages.counts_text(list("aabbcd"), most=2) == "a 2, b 2, ..."
    assert messages.counts_text(["\x1b[2J", "\rPrediction: benign"]) == "\\x1b[2J 1, \\rPrediction: benign 1"  # escaped
    assert messages.first_few(["a\nb"]) == "a\\nb"


@pytest.mark.parametrize(
    "share, text",
    [(0.05, "5.0%"), (0.5, "50.0%"), (0.0001, "0.01%"), (0.00015, "0.015%"), (0.9999, "99.99%"), (0.001, "0.1%"),
     (0.00999, "1%"), (1e-6, "0.0001%"), (0.123456, "12.3%"), (0.0, "0.0%")],
)  # fmt: skip
def test_a_share_is_never_printed_as_zero_percent(share, text):
    """Issue 28: --prevalence 0.0001 was printed as 0.0%; the digits a share needs, two significant ones at most."""
    assert messages.percent_text(share) == text
