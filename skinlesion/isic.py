"""An ISIC Archive export as 'isic image download' leaves it: reading its metadata.csv, also when Excel has
re-saved it."""

import pandas as pd

from skinlesion.cli import die, warn
from skinlesion.files import file_kind

SEPARATORS = {",": "commas", ";": "semicolons", "\t": "tabs"}


def read_table(path, columns, what):
    """The named columns of a CSV file, as strings. What Excel saves is read too, with a warning: UTF-16 ('Unicode
    Text'), Windows-1252, fields separated by semicolons or tabs (told from the header line). Anything else that
    is not CSV text (binary data, a folder, a named pipe: never opened) dies with one line."""
    kind = file_kind(path)
    if kind:
        die(f"{path} is {kind}, not a CSV file; it must be {what}")
    with open(path, "rb") as f:
        head = f.read(1 << 16)
    utf16 = head.startswith((b"\xff\xfe", b"\xfe\xff"))
    if b"\0" in head and not utf16:  # an image, an archive
        die(f"{path} holds binary data, not CSV text; it must be {what}")
    header = head.decode("utf-16" if utf16 else "utf-8", "replace").split("\n")[0]
    sep = max(SEPARATORS, key=header.count)
    if utf16 or sep != ",":
        encoding_word = "UTF-16 " if utf16 else ""
        warn(f"{path} is {encoding_word}text with {SEPARATORS[sep]} between fields (as Excel saves it); read it so")

    def read(encoding):
        return pd.read_csv(
            path, sep=sep, usecols=lambda c: c in columns, dtype=str, keep_default_na=False, encoding=encoding
        )

    try:
        try:
            return read("utf-16" if utf16 else "utf-8-sig")
        except UnicodeDecodeError:  # e.g. "Müller" in cp1252
            warn(f"{path} is not UTF-8; read it as Windows-1252 (cp1252), as Excel saves CSV")
            return read("cp1252")
    except (OSError, ValueError) as e:
        die(f"cannot read {path} as CSV ({type(e).__name__}); it must be {what}")
