"""Reading a file at a network address (http(s)://, ftp(s)://, sftp://, scp://, gs:// or pipe:<command>, as
WebDataset names them): fetched by curl, gsutil or the shell in a process of its own, with a deadline for
connecting and one for the whole read, so that a server that accepts and never answers is one error line, not a
hang; a failure is one plain line naming the address. Only the user's own address (--data-dir) reaches a shell
(pipe:); a name read from data is checked by its caller before it is put after it. POSIX only (select on a pipe)."""

import contextlib
import os
import select
import signal
import subprocess
import time

from skinlesion.cli import printable

CONNECT_SECONDS = 30.0  # connecting may take this long at most (less where the whole read may take less)
SECONDS = [600.0]  # how long the whole read of one file may take: the scripts' --network-timeout (set_seconds)
CURL = ("http", "https", "ftp", "ftps", "sftp", "scp")  # the schemes curl reads
ADDRESSES = "http(s)://, ftp(s)://, sftp://, scp://, gs:// or pipe:<command>"
CURL_WHY = {  # curl's exit codes, in words
    6: "its host name is not known",
    7: "the server does not accept a connection",
    22: "the server answers with an error (not found, or not allowed)",
    35: "the secure connection failed",
    52: "the server answered nothing",
    56: "the connection broke",
    60: "the server's certificate is not trusted",
}


def set_seconds(seconds):
    """How long the whole read of one file may take from now on (a script's --network-timeout)."""
    SECONDS[0] = float(seconds)


def is_remote(path):
    """An address read over the network or through a command, not a path on this computer."""
    return "://" in str(path) or str(path).startswith("pipe:")


def command(url, seconds):
    """(the command that writes the file at url to its standard output, the tool's name); OSError for an address
    of another kind."""
    if url.startswith("pipe:"):
        return ["/bin/sh", "-c", url[len("pipe:") :]], "the command"
    scheme = url.split("://", 1)[0].lower()
    if scheme in CURL:
        connect = f"{min(CONNECT_SECONDS, seconds):g}"
        return ["curl", "--fail", "--silent", "--location", "--connect-timeout", connect, "--max-time", f"{seconds:g}",
                url], "curl"  # fmt: skip
    if scheme == "gs":
        return ["gsutil", "cat", url], "gsutil"
    raise OSError(f"{printable(url)} is an address of a kind that is not read here; use {ADDRESSES}")


class Reader:
    """The file at url, read from the standard output of the process that fetches it (command); read raises
    OSError naming the address, in one line, when the process fails or the deadline passes. Use it in a with."""

    def __init__(self, url, seconds=None):
        self.url, self.seconds = url, SECONDS[0] if seconds is None else seconds
        argv, self.tool = command(url, self.seconds)
        self.deadline, self.done = time.monotonic() + self.seconds, False
        quiet = subprocess.DEVNULL if self.tool != "the command" else None  # a command's own messages are the user's
        try:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=quiet,
                                         start_new_session=True)  # fmt: skip
        except FileNotFoundError:
            raise OSError(f"{printable(url)} cannot be read: {argv[0]} is not installed") from None

    def failure(self, why):
        self.close()
        return OSError(f"{printable(self.url)} cannot be read: {why}")

    def too_late(self):
        why = f"no complete answer within {self.seconds:g} s; check the address and the network, or raise"
        return self.failure(why + " --network-timeout")

    def read(self, size=-1):
        """Up to size bytes (all that is left when size is -1 or None); b'' at the end."""
        if size is None or size < 0:
            return b"".join(iter(lambda: self.read(1 << 20), b""))
        if self.done or size == 0:
            return b""
        left = self.deadline - time.monotonic()
        if left <= 0 or not select.select([self.proc.stdout], [], [], left)[0]:
            raise self.too_late()
        data = os.read(self.proc.stdout.fileno(), min(size, 1 << 20))
        if not data:
            self.finished()
        return data

    def finished(self):
        """At the end of the output: the process's exit status says whether all of the file came."""
        try:
            status = self.proc.wait(max(self.deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            raise self.too_late() from None
        self.done = True
        if status == 0:
            return
        if self.tool == "curl" and status == 28:  # its --max-time
            raise self.too_late()
        if self.tool == "curl":
            raise self.failure(CURL_WHY.get(status, f"curl ended with exit code {status}"))
        raise self.failure(f"{self.tool} ended with exit status {status}")

    def close(self):
        """Stop the process (and whatever it started) if it still runs."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):  # ended meanwhile
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.proc.stdout.close()
        self.done = True

    def __enter__(self):
        return self

    def __exit__(self, *_):
        self.close()


def read_all(url, most):
    """The bytes of the file at url, at most most of them (OSError naming the address beyond)."""
    chunks, size = [], 0
    with Reader(url) as f:
        while True:
            chunk = f.read(1 << 20)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
            size += len(chunk)
            if size > most:
                raise OSError(f"{printable(url)} cannot be read: it holds over {most:,} bytes, more than it may")
