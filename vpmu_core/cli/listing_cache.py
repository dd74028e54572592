"""The listing cache: `vpmu plugins` and `vpmu plugins --json` answered without discovery.

Listing the installed plugins costs a discovery (importlib.metadata, stevedore, pluggy,
pydantic, every plugin's registration) and click and rich to print it: about ten times
what starting Python does. The answer changes only when what it was computed from
changes, so the command's exact output bytes are kept here and replayed while every input
is unchanged. docs/cli.md ("The listing cache") is the user's side of this.

This module is imported by `vpmu_core.cli.main` before anything else of the command and
uses only the standard library modules Python has loaded at startup anyway (os, sys, io,
marshal) and `_blake2`, so a cached answer costs little more than starting Python.

When (`begin`): argv is exactly `plugins` or `plugins --json`, `VPMU_CACHE` is not `0`
(or false/no/off), stdout and stderr are open and stdout is not a terminal, and the table's
width does not depend on a terminal (`COLUMNS` a number, or unset without `FORCE_COLOR` /
`TTY_COMPATIBLE=1`, which make rich ask the terminal for its size).

Key: a blake2b digest of argv, the environment (every variable but `VOLATILE_ENV`),
sys.path, the interpreter (executable, version, flags), the working directory and the
encodings of stdout and the file system. The digest names the entry file and is checked
again inside it; the environment itself is never written down.

Stamp (`Run.store`): (mtime_ns, ctime_ns, size) of every input, or "missing": the
interpreter, every sys.path entry, installed distribution metadata (`*.dist-info`,
`*.egg-info`: the folder, METADATA/PKG-INFO, entry_points.txt) and `*.pth` files in each
sys.path folder, every module file and package folder imported during the listing, every
file and folder of each loaded plugin's top-level package, and each registered scenario
file with its folder. It is checked on every use (`Run.serve`): one difference and the
command runs as without a cache. ctime changes with any write, so a same-size rewrite
whose mtime was put back still counts as a change.

Stored only for a clean run: exit 0, no plugin failed to load or register, nothing
written to stderr; and not when an input was modified less than `RECENT_NS` before the run
started (mtime) or during it (mtime or ctime): a file system with coarse timestamps could
otherwise give a later change the stamp the entry was made with. Written atomically (a
temporary file renamed over the entry); an unreadable or unwritable cache is a miss, never
an error.
"""

from __future__ import annotations

import io
import marshal
import os
import sys
import time

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator
    from typing import Any

#: bump when the entry layout or what the stamp covers changes
FORMAT = 1
SWITCH_ENV = "VPMU_CACHE"
DIR_ENV = "VPMU_CACHE_DIR"
#: the commands answered from the cache, exactly as typed after `vpmu`
COMMANDS = (("plugins",), ("plugins", "--json"))
#: variables a shell changes between two runs of the same command that no listing reads
#: (the working directory is part of the key itself)
VOLATILE_ENV = frozenset({"_", "OLDPWD", "PWD", "SHLVL"})
#: inputs modified less than this before the run (mtime granularity) are not trusted
RECENT_NS = 2_000_000_000
#: a package with more files than this is not walked, and the listing not stored
MAX_PACKAGE_FILES = 5000
#: entries kept in the cache folder (the oldest beyond are removed when one is stored)
MAX_ENTRIES = 32

Sig = tuple[int, int, int] | None


def enabled() -> bool:
    return os.environ.get(SWITCH_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def cache_dir() -> str | None:
    """`$VPMU_CACHE_DIR`, else `$XDG_CACHE_HOME/vpmu`, else `~/.cache/vpmu`; None without a
    home folder (no cache rather than a folder named `~` in the working directory)."""
    explicit = os.environ.get(DIR_ENV)
    if explicit:
        return explicit
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    if os.path.isabs(xdg):  # the XDG spec: a relative value is ignored
        return os.path.join(xdg, "vpmu")
    home = os.path.expanduser("~")
    return os.path.join(home, ".cache", "vpmu") if os.path.isabs(home) else None


def _width_is_fixed(env: Any) -> bool:
    """Whether the table's width is known without a terminal (vpmu_core.cli.app.console
    and rich's Console): COLUMNS a number, or COLUMNS unset and rich not told that the
    output is a terminal (then the command uses 160 columns)."""
    columns = env.get("COLUMNS")
    if columns is not None:
        return columns.isdigit()
    tty_compatible = env.get("TTY_COMPATIBLE", "")
    if tty_compatible in ("0", "1"):
        return tty_compatible == "0"
    return not env.get("FORCE_COLOR")


def _sig(path: str) -> Sig:
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return (st.st_mtime_ns, st.st_ctime_ns, st.st_size)


def _digest(parts: Any) -> bytes:
    try:
        from _blake2 import blake2b  # CPython's; hashlib would cost more than this whole module
    except ImportError:  # pragma: no cover - another implementation
        from hashlib import blake2b
    return blake2b(marshal.dumps(parts), digest_size=20).digest()


def begin(args: list[str]) -> Run | None:
    """A cacheable run of `args`, or None (see the module docstring: when)."""
    if tuple(args) not in COMMANDS or not enabled():
        return None
    out, err = sys.stdout, sys.stderr
    # open text streams over a binary buffer (the recording tees that buffer)
    if not (isinstance(out, io.TextIOWrapper) and isinstance(err, io.TextIOWrapper)):
        return None
    folder = cache_dir()
    if folder is None:
        return None
    try:
        if out.isatty() or not _width_is_fixed(os.environ):
            return None
        cwd = os.getcwd()
        env = sorted((k, v) for k, v in os.environ.items() if k not in VOLATILE_ENV)
        key = _digest(
            (
                FORMAT,
                tuple(args),
                tuple(env),
                tuple(sys.path),
                sys.executable,
                sys.version,
                tuple(sys.flags),
                cwd,
                str(out.encoding),
                str(out.errors),
                str(err.encoding),
                str(err.errors),
                sys.getfilesystemencoding(),
            )
        )
    except (OSError, ValueError):  # no working directory, a closed stream
        return None
    return Run(key, folder)


class _TeeBuffer(io.BufferedIOBase):
    """A binary stream that writes through to `raw` and keeps a copy of every byte."""

    def __init__(self, raw: Any) -> None:
        super().__init__()
        self._raw = raw
        self.data = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        data = bytes(b)
        _write_all(self._raw.write, data, self.data)
        return len(data)

    def flush(self) -> None:
        self._raw.flush()

    def fileno(self) -> int:
        return int(self._raw.fileno())

    def isatty(self) -> bool:
        return bool(self._raw.isatty())


def _write_all(write: Callable[[bytes], int | None], data: bytes, copy: bytearray | None = None) -> None:
    """Write all of `data` with `write`, which may take part of it (os.write, a FileIO
    under `python -u`); `copy` gets each part written."""
    done = 0
    while done < len(data):
        n = write(data[done:] if done else data)
        if n is None:  # a non-blocking stream that would block
            raise BlockingIOError(11, "stdout would block", done)
        if copy is not None:
            copy += data[done : done + n]
        done += n


def _recording(stream: Any) -> tuple[Any, _TeeBuffer]:
    """A text stream like `stream` (encoding, errors, buffering) over a tee of its buffer."""
    stream.flush()
    tee = _TeeBuffer(stream.buffer)
    buffer: Any = tee  # a BufferedIOBase; typeshed's protocol asks for more than writing needs
    wrapper = io.TextIOWrapper(
        buffer,
        encoding=stream.encoding,
        errors=stream.errors,
        newline="\n",
        line_buffering=stream.line_buffering,
        write_through=True,
    )
    return wrapper, tee


class Run:
    """One cacheable invocation: `serve()` the cached answer, or `record()` the command and
    `store()` what it printed."""

    def __init__(self, key: bytes, folder: str) -> None:
        self.key = key
        self.started_ns = time.time_ns()
        self.path = os.path.join(folder, key.hex() + ".listing")
        self.out: _TeeBuffer | None = None
        self.err: _TeeBuffer | None = None

    # ---- the cached answer ------------------------------------------------------------------
    def _entry(self) -> bytes | None:
        """The stored output, if the entry is ours and every input is as it was."""
        try:
            with open(self.path, "rb") as f:
                if os.fstat(f.fileno()).st_uid != os.getuid():
                    return None  # a shared folder: only our own entries are trusted
                fmt, key, paths, sigs, data = marshal.loads(f.read())
        except Exception:  # missing, unreadable, truncated, another layout: a miss
            return None
        if fmt != FORMAT or key != self.key:
            return None
        for path, sig in zip(paths, sigs):
            if _sig(path) != sig:
                return None
        return bytes(data)

    def serve(self) -> bool:
        """Write the cached output to stdout and return True, or return False: a miss, or
        stdout failed (a closed pipe, a full device), when the command then runs uncached
        and reports the error exactly as it does without the cache (the failed write wrote
        nothing in the cases that matter: a closed pipe, /dev/full)."""
        data = self._entry()
        if data is None:
            return False
        try:
            fd = sys.stdout.fileno()
            sys.stdout.flush()
        except (OSError, ValueError):  # no file descriptor (a replaced sys.stdout)
            return False
        try:
            _write_all(lambda b: os.write(fd, b), data)
        except OSError:
            return False
        except KeyboardInterrupt:  # as the command's own Ctrl-C (app.VpmuGroup)
            try:
                sys.stderr.write("vpmu: interrupted\n")
                sys.stderr.flush()
            except OSError:
                pass
            sys.exit(130)
        return True

    # ---- recording a fresh answer -----------------------------------------------------------
    def record(self) -> Recording:
        return Recording(self)

    def store(self, clean: bool, plugins: Iterable[Any] = (), files: Iterable[str] = ()) -> bool:
        """Keep what the run printed if it was clean (exit 0, no failed plugin: `clean`) and
        wrote nothing to stderr, with the stamp of its inputs (`plugins`: the loaded plugin
        objects, whose packages are walked; `files`: more input files, e.g. scenarios).
        Any problem (an input changed too recently, an unwritable folder) stores nothing."""
        try:
            if not clean or self.out is None or self.err is None or self.err.data:
                self.discard()
                return False
            stamp = _stamp(plugins, files)
            if stamp is None:
                self.discard()
                return False
            recent = self.started_ns - RECENT_NS
            for sig in stamp.values():
                if sig is not None and (sig[0] >= recent or sig[1] >= self.started_ns):
                    return False  # an input changed just before or during the run
            entry = marshal.dumps((FORMAT, self.key, tuple(stamp), tuple(stamp.values()), bytes(self.out.data)))
            _write(self.path, entry)
            return True
        except Exception:  # the cache never breaks the command
            return False

    def discard(self) -> None:
        try:
            os.unlink(self.path)
        except OSError:
            pass


class Recording:
    """`with run.record():` the command runs with stdout and stderr teed (run.out, run.err)."""

    def __init__(self, run: Run) -> None:
        self.run = run

    def __enter__(self) -> Run:
        self.saved = sys.stdout, sys.stderr
        sys.stdout, self.run.out = _recording(sys.stdout)
        sys.stderr, self.run.err = _recording(sys.stderr)
        return self.run

    def __exit__(self, *exc: object) -> None:
        wrappers = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = self.saved
        for w in wrappers:  # left open: a log handler may still hold one (it writes through)
            try:
                w.flush()
            except (OSError, ValueError):
                pass


# ---- the stamp ----------------------------------------------------------------------------
def _stamp(plugins: Iterable[Any], files: Iterable[str]) -> dict[str, Sig] | None:
    """path -> signature of every input (module docstring), or None when too large."""
    paths: dict[str, None] = {}
    add = paths.setdefault
    add(sys.executable)
    for entry in sys.path:
        folder = os.path.abspath(entry or ".")
        add(folder)
        for p in _metadata(folder):
            add(p)
    for mod in list(sys.modules.values()):
        f = getattr(mod, "__file__", None)
        if isinstance(f, str):
            add(f)
        for d in _package_path(mod):
            add(d)
    for obj in plugins:
        walked = _plugin_files(obj)
        if walked is None:
            return None
        for p in walked:
            add(p)
    for f in files:
        add(os.path.abspath(f))
        add(os.path.dirname(os.path.abspath(f)))
    return {p: _sig(p) for p in paths}


def _package_path(mod: Any) -> list[str]:
    try:
        path = getattr(mod, "__path__", None)
        return [p for p in path if isinstance(p, str)] if path is not None else []
    except Exception:  # an odd namespace path object
        return []


def _metadata(folder: str) -> Iterator[str]:
    """Distribution metadata and .pth files directly in a sys.path folder."""
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return
    for e in entries:
        if e.name.endswith(".pth"):
            yield e.path
        elif e.name.endswith((".dist-info", ".egg-info")):
            yield e.path
            if e.is_dir():
                for name in ("METADATA", "PKG-INFO", "entry_points.txt"):
                    yield os.path.join(e.path, name)


def _plugin_files(obj: Any) -> list[str] | None:
    """Every file and folder of the top-level package a plugin object comes from (its
    data files, e.g. scenarios, included; `__pycache__` left out), or just its module file
    when it is not in a package. None: the package is too large to walk."""
    name = obj.__name__ if isinstance(obj, type(sys)) else getattr(obj, "__module__", None)
    if not isinstance(name, str):
        return []
    top = sys.modules.get(name.partition(".")[0])
    if top is None:
        return []
    roots = _package_path(top)
    if not roots:
        f = getattr(top, "__file__", None)
        return [f] if isinstance(f, str) else []
    out: list[str] = []
    for root in roots:
        for folder, dirs, names in os.walk(root):
            dirs[:] = sorted(d for d in dirs if d != "__pycache__")
            out.append(folder)
            out += (os.path.join(folder, n) for n in names)
            if len(out) > MAX_PACKAGE_FILES:
                return None
    return out


def _write(path: str, data: bytes) -> None:
    """Atomically: a temporary file in the same folder, renamed over the entry."""
    folder = os.path.dirname(path)
    os.makedirs(folder, mode=0o700, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with open(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _prune(folder)


def _prune(folder: str) -> None:
    try:
        entries = [e for e in os.scandir(folder) if e.name.endswith(".listing")]
        if len(entries) <= MAX_ENTRIES:
            return
        entries.sort(key=lambda e: e.stat().st_mtime_ns)
        for e in entries[: len(entries) - MAX_ENTRIES]:
            os.unlink(e.path)
    except OSError:
        pass
