"""Writing the command's outputs: atomically, with one-line errors.

Every file the command writes (`run -o`, `compare -o`, `sweep -o`, `trace -o`, `plot -o`)
goes to a temporary file in the target's directory that is renamed over the target only
once it is complete (`os.replace` is atomic on POSIX within one file system), so an
interrupted or failed write never leaves half a file, and an existing file is either the
old one or the new one. stdout gets the same care: a full device or a closed pipe is one
line on stderr and exit 1, never a traceback.

Test hook: `VPMU_TEST_SIGNAL_AT=write` sends this process SIGINT after the first chunk of
an output file is written (`progress` and `sweep-point` are handled by the command), so
tests interrupt a write deterministically, without sleeps.
"""

from __future__ import annotations

import errno
import os
import signal
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, NoReturn

EXIT_IO = 1
EXIT_USAGE = 2
#: test-only: where to send ourselves SIGINT (see the module docstring)
SIGNAL_AT_ENV = "VPMU_TEST_SIGNAL_AT"


def signal_hook(point: str, group: bool = False) -> None:
    """Raise SIGINT here if `VPMU_TEST_SIGNAL_AT` names `point` (a testing aid; `group`:
    the whole process group, as a terminal's Ctrl-C does)."""
    if os.environ.get(SIGNAL_AT_ENV) != point:
        return
    os.environ.pop(SIGNAL_AT_ENV, None)  # once
    if group:
        os.killpg(os.getpgid(0), signal.SIGINT)
    else:
        os.kill(os.getpid(), signal.SIGINT)


def _say(prefix: str, message: str, code: int) -> NoReturn:
    try:
        sys.stderr.write(f"vpmu: {prefix}: {message}\n")
        sys.stderr.flush()
    except OSError:
        pass
    sys.exit(code)


def _reason(e: OSError) -> str:
    return e.strerror or errno.errorcode.get(e.errno or 0, "") or str(e)


def check_target(path: str, option: str = "-o") -> None:
    """Usage errors (exit 2) found before anything runs: a directory, a missing or
    unwritable directory. Nothing is written."""
    p = Path(path)
    if p.is_dir():
        _say("error", f"{option} {path}: is a directory (expected a file name)", EXIT_USAGE)
    parent = p.resolve().parent if not p.is_symlink() else p.parent
    if not parent.is_dir():
        _say("error", f"{option} {path}: directory {parent} does not exist", EXIT_USAGE)
    if not os.access(parent, os.W_OK | os.X_OK):
        _say("error", f"{option} {path}: directory {parent} is not writable", EXIT_USAGE)
    if p.exists() and not p.is_file():
        # a device or a pipe cannot be replaced by rename: write it directly
        return
    if p.exists() and not os.access(p, os.W_OK):
        _say("error", f"{option} {path}: file is not writable", EXIT_USAGE)


class _HookedFile:
    """A file (text or binary) that fires the `write` test hook after its first chunk."""

    def __init__(self, f: IO[Any]) -> None:
        self._f = f
        self._n = 0

    def write(self, s: Any) -> int:
        n = self._f.write(s)
        self._n += 1
        if self._n == 1:
            self._f.flush()
            signal_hook("write")
        return n

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)


def atomic_write(path: str, write: Callable[[IO[Any]], object], *, binary: bool = False, option: str = "-o") -> None:
    """Call `write(f)` on a temporary file next to `path`, then rename it to `path`.

    Any failure (an OSError such as ENOSPC, an exception, KeyboardInterrupt) removes the
    temporary file and leaves `path` as it was; an OSError is one line on stderr, exit 1.
    A target that is not a regular file (/dev/null, a FIFO) is written directly."""
    p = Path(path)
    if p.exists() and not p.is_file():
        try:
            with open(p, "wb") if binary else open(p, "w", encoding="utf-8") as f:
                write(_HookedFile(f))  # type: ignore[arg-type]
        except OSError as e:
            _say("I/O error", f"{option} {path}: {_reason(e)}", EXIT_IO)
        return
    tmp: str | None = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=str(p.resolve().parent))
        with os.fdopen(fd, "wb") if binary else os.fdopen(fd, "w", encoding="utf-8") as f:
            write(_HookedFile(f))  # type: ignore[arg-type]
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # as open() would create it, not mkstemp's 0600
        os.replace(tmp, p)
        tmp = None
    except OSError as e:
        _say("I/O error", f"{option} {path}: {_reason(e)}", EXIT_IO)
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass


def write_text(path: str, text: str, option: str = "-o") -> None:
    atomic_write(path, lambda f: f.write(text), option=option)


def _silence_stdout() -> None:
    """After stdout failed, point it at /dev/null so the interpreter's final flush is quiet."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


@contextmanager
def stdout_errors() -> Iterator[None]:
    """A closed pipe or a full device on stdout: one line on stderr, exit 1."""
    try:
        yield
        if sys.stdout is not None:
            sys.stdout.flush()
    except OSError as e:
        if e.errno not in (errno.EPIPE, errno.ENOSPC, errno.EIO, errno.EDQUOT, errno.EFBIG, errno.EBADF):
            raise
        _silence_stdout()
        what = "closed pipe" if e.errno == errno.EPIPE else _reason(e)
        _say("I/O error", f"stdout: {what}", EXIT_IO)


def require_stdout() -> None:
    """Output for stdout with stdout closed (`>&-`): one line, exit 1 (not a silent success)."""
    if sys.stdout is None:
        _say("I/O error", "stdout: closed", EXIT_IO)
