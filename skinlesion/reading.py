"""Reading a file from a folder that a user, an archive or a copy can fill: only a regular file is opened (a named
pipe would block the open or the read for ever, a device such as /dev/zero would never end, a folder is no file),
what was checked is what is read (checked again on the open file), and never more than a stated number of bytes;
JSON only as deeply nested as Python can parse. A refusal is an Unreadable (an OSError) whose message names the
file and says what it is, on one line. Torch-free; it imports nothing of the project but messages."""

import errno
import json
import os
import stat

from skinlesion.messages import printable

NO_WAIT = getattr(os, "O_NONBLOCK", 0)  # opening a named pipe never waits for a writer (not on Windows)
NO_LINK = getattr(os, "O_NOFOLLOW", 0)


class Unreadable(OSError):
    """A file that is not read: its message names it and says what it is (one line)."""


def what_it_is(mode):
    """None for a regular file's st_mode, else what it is, in words."""
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a named pipe"
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a device"


def refuse_kind(path, mode):
    kind = what_it_is(mode)
    if kind:
        raise Unreadable(f"{printable(path)} is {kind}, not a regular file")


def open_regular(path, most=None, follow_links=True):
    """path opened to read (binary), only if it is a regular file of at most most bytes (None: any size): its kind
    is looked at before it is opened (a device is never opened), it is opened without waiting (a named pipe that
    took its place meanwhile), and checked again on the open file. follow_links=False refuses a link. Raises
    Unreadable, or the open's own OSError (missing, not permitted)."""
    try:
        refuse_kind(path, os.stat(path, follow_symlinks=follow_links).st_mode)
        fd = os.open(path, os.O_RDONLY | NO_WAIT | (0 if follow_links else NO_LINK) | getattr(os, "O_BINARY", 0))
    except OSError as e:
        if e.errno == errno.ELOOP and not follow_links:
            raise Unreadable(f"{printable(path)} is a symbolic link, not a regular file") from None
        raise
    try:
        info = os.fstat(fd)
        refuse_kind(path, info.st_mode)
        if most is not None and info.st_size > most:
            raise Unreadable(f"{printable(path)} is {info.st_size:,} bytes, over the {most:,} it may be")
        if NO_WAIT:
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_bytes(path, most, follow_links=True):
    """The bytes of a regular file of at most most bytes (open_regular), also when it grows while it is read."""
    with open_regular(path, most, follow_links) as f:
        data = f.read(most + 1)
    if len(data) > most:
        raise Unreadable(f"{printable(path)} grew over the {most:,} bytes it may be while it was read")
    return data


def parse_json(data, name):
    """The JSON value of data (bytes or text) read from name; Unreadable when it is not JSON, or is nested too
    deeply to parse (a RecursionError)."""
    try:
        return json.loads(data)
    except RecursionError:
        raise Unreadable(f"{printable(name)} is JSON nested too deeply to read") from None
    except ValueError as e:  # not UTF-8, not JSON
        raise Unreadable(f"{printable(name)} is not JSON ({printable(str(e).splitlines()[0])})") from None


def read_json(path, most):
    """The JSON value of a regular file of at most most bytes."""
    return parse_json(read_bytes(path, most), path)
