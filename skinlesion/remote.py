"""Reading a file at a network address (http(s)://, ftp(s)://, sftp://, scp://, gs:// or pipe:<command>, as
WebDataset names them): fetched by curl, gsutil or the shell in a process of its own, with a deadline for
connecting and one for the whole read, so that a server that accepts and never answers is one error line, not a
hang; a failure is one plain line naming the address. A transient failure of curl's (a connection refused, reset
or cut short, an answer 5xx, 408 or 429) is tried again a few times within the deadline, from the byte it stopped
at (curl --continue-at: a server that cannot resume fails plainly), as WebDataset's curl --retry did; a permanent
one (not found, a certificate not trusted) at once. Only the user's own address (--data-dir) reaches a shell
(pipe:); a name read from data is checked by its caller before it is put after it. POSIX only (select on a pipe)."""

import contextlib
import os
import select
import signal
import subprocess
import time

from skinlesion.messages import printable

CONNECT_SECONDS = 30.0  # connecting may take this long at most (less where the whole read may take less)
SECONDS = [600.0]  # how long the whole read of one file may take: the scripts' --network-timeout (set_seconds)
CURL = ("http", "https", "ftp", "ftps", "sftp", "scp")  # the schemes curl reads
ADDRESSES = "http(s)://, ftp(s)://, sftp://, scp://, gs:// or pipe:<command>"
CURL_WHY = {  # curl's exit codes, in words
    6: "its host name is not known",
    7: "the server does not accept a connection",
    18: "the connection broke before the whole file came",
    22: "the server answers with an error (not found, or not allowed)",
    33: "the server cannot resume a read cut short",
    35: "the secure connection failed",
    52: "the server answered nothing",
    55: "the connection broke",
    56: "the connection broke",
    60: "the server's certificate is not trusted",
}
TRANSIENT = {7, 18, 52, 55, 56}  # curl's exit codes worth another try: refused, reset, cut short
TRANSIENT_HTTP = {408, 429, 500, 502, 503, 504}  # answers worth another try (curl --retry's)
TRIES = 4  # a transient failure is tried again up to this many tries in all, within the deadline
PAUSES = [1.0, 2.0, 4.0]  # seconds before the second, third and fourth try


def set_seconds(seconds):
    """How long the whole read of one file may take from now on (a script's --network-timeout)."""
    SECONDS[0] = float(seconds)


def is_remote(path):
    """An address read over the network or through a command, not a path on this computer."""
    return "://" in str(path) or str(path).startswith("pipe:")


def command(url, seconds, offset=0):
    """(the command that writes the file at url to its standard output, from byte offset on, the tool's name);
    OSError for an address of another kind. curl writes the HTTP status of its answer to its standard error."""
    if url.startswith("pipe:"):
        return ["/bin/sh", "-c", url[len("pipe:") :]], "the command"
    scheme = url.split("://", 1)[0].lower()
    if scheme in CURL:
        connect = f"{min(CONNECT_SECONDS, seconds):g}"
        resume = ["--continue-at", str(offset)] if offset else []
        return ["curl", "--fail", "--silent", "--location", "--connect-timeout", connect, "--max-time", f"{seconds:g}",
                "--write-out", "%{stderr}%{http_code}", *resume, url], "curl"  # fmt: skip
    if scheme == "gs":
        return ["gsutil", "cat", url], "gsutil"
    raise OSError(f"{printable(url)} is an address of a kind that is not read here; use {ADDRESSES}")


class Reader:
    """The file at url, read from the standard output of the process that fetches it (command); read raises
    OSError naming the address, in one line, when the process fails or the deadline passes. A transient failure
    of curl's is tried again (TRIES, PAUSES) from the byte it stopped at, within the same deadline. Use it in a
    with."""

    def __init__(self, url, seconds=None):
        self.url, self.seconds = url, SECONDS[0] if seconds is None else seconds
        self.deadline, self.done, self.tries, self.delivered = time.monotonic() + self.seconds, False, 0, 0
        self.start()

    def start(self):
        """Start the process that fetches the file from byte self.delivered on, with what is left of the deadline."""
        argv, self.tool = command(self.url, max(self.deadline - time.monotonic(), 0.1), self.delivered)
        quiet = subprocess.DEVNULL if self.tool != "the command" else None  # a command's own messages are the user's
        status = subprocess.PIPE if self.tool == "curl" else quiet  # curl's: the HTTP status (--write-out)
        try:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=status,
                                         start_new_session=True)  # fmt: skip
        except FileNotFoundError:
            raise OSError(f"{printable(self.url)} cannot be read: {argv[0]} is not installed") from None
        self.tries += 1

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
        while not self.done and size:
            left = self.deadline - time.monotonic()
            if left <= 0 or not select.select([self.proc.stdout], [], [], left)[0]:
                raise self.too_late()
            data = os.read(self.proc.stdout.fileno(), min(size, 1 << 20))
            if data:
                self.delivered += len(data)
                return data
            self.finished()  # the end of this process's output: all of the file, another try, or an error
        return b""

    def finished(self):
        """At the end of the output: the process's exit status says whether all of the file came (done), or a
        transient failure is tried again (a new process, from the byte it stopped at); else OSError."""
        try:
            status = self.proc.wait(max(self.deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            raise self.too_late() from None
        answer = self.proc.stderr.read(100).decode("ascii", "replace").strip() if self.tool == "curl" else ""
        if status == 0:
            self.done = True
            return
        if self.tool == "curl" and status == 28:  # its --max-time
            raise self.too_late()
        if self.tool != "curl":
            raise self.failure(f"{self.tool} ended with exit status {status}")
        why, transient = curl_failure(status, answer)
        pause = PAUSES[min(self.tries, len(PAUSES)) - 1]
        if not transient or self.tries >= TRIES or time.monotonic() + pause >= self.deadline:
            if transient:
                tries = f"{self.tries} {'try' if self.tries == 1 else 'tries'}"
                why += f"; gave up after {tries} within --network-timeout {self.seconds:g} s"
            raise self.failure(why)
        self.close()
        time.sleep(pause)
        self.done = False
        self.start()

    def close(self):
        """Stop the process (and whatever it started) if it still runs."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):  # ended meanwhile
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream:
                stream.close()
        self.done = True

    def __enter__(self):
        return self

    def __exit__(self, *_):
        self.close()


def curl_failure(status, answer):
    """(why curl failed, in words; whether another try may succeed) from its exit status and the HTTP status it
    wrote (answer: '503'; '000' or '' when there was none)."""
    code = int(answer) if answer.isdigit() else 0
    if status == 22 and code in TRANSIENT_HTTP:
        return f"the server answers with an error (HTTP {code}: busy or failing)", True
    if status == 22 and code >= 500:
        return f"the server answers with an error (HTTP {code}: a failure of its own)", False
    if status == 22 and code:
        return f"the server answers with an error (HTTP {code}: not found, or not allowed)", False
    return CURL_WHY.get(status, f"curl ended with exit code {status}"), status in TRANSIENT


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
