"""Small, exact helpers for cgroup files: read numbers, key/value tables and PSI,
write values with errors that name the file, remove trees that are draining."""

from __future__ import annotations

import errno
import os
import time

from .errors import FailedPrecondition, Internal, InvalidArgument, NotFound, PermissionDenied, Unavailable
from .records import PsiData, PsiStats


def read_text(path: str) -> str:
    with open(path) as f:
        return f.read()


def read_opt_text(path: str) -> str | None:
    try:
        return read_text(path)
    except FileNotFoundError:
        return None


def read_int(path: str) -> int:
    text = read_text(path).strip()
    try:
        return int(text)
    except ValueError:
        raise Internal(f"{path} holds {text!r}, not a number") from None


def read_opt_int(path: str) -> int | None:
    """None when the file is missing; "max" reads as None too (unlimited)."""
    text = read_opt_text(path)
    if text is None:
        return None
    text = text.strip()
    if text == "max":
        return None
    try:
        return int(text)
    except ValueError:
        raise Internal(f"{path} holds {text!r}, not a number") from None


def read_kv(path: str) -> dict[str, int]:
    """memory.stat / cpu.stat: lines of "key value"."""
    out: dict[str, int] = {}
    text = read_opt_text(path)
    if text is None:
        return out
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        try:
            out[key] = int(value)
        except ValueError:
            continue
    return out


def parse_psi(text: str) -> PsiStats | None:
    """`some avg10=0.00 avg60=0.00 avg300=0.00 total=0` (and a `full` line)."""
    lines: dict[str, PsiData] = {}
    for line in text.splitlines():
        kind, *pairs = line.split()
        values = dict(p.split("=", 1) for p in pairs if "=" in p)
        try:
            lines[kind] = PsiData(
                total_ns=int(values["total"]) * 1000,
                avg10=float(values["avg10"]),
                avg60=float(values["avg60"]),
                avg300=float(values["avg300"]),
            )
        except (KeyError, ValueError):
            continue
    if "some" not in lines:
        return None
    return PsiStats(some=lines["some"], full=lines.get("full"))


def read_psi(path: str) -> PsiStats | None:
    """None when the file is missing or PSI is disabled (reading gives EOPNOTSUPP)."""
    try:
        text = read_text(path)
    except FileNotFoundError:
        return None
    except OSError as e:
        if e.errno in (errno.EOPNOTSUPP, errno.ENOTSUP):
            return None
        raise
    return parse_psi(text)


def write_value(path: str, value: str | int) -> None:
    """Write one value the way the kernel expects: a single write, no creation."""
    data = str(value).encode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    except FileNotFoundError:
        raise NotFound(f"cgroup file {path} does not exist: is the cgroup (and its controller) there?") from None
    except PermissionError as e:
        raise PermissionDenied(f"cannot open {path}: {e.strerror}; the daemon must run as root") from None
    try:
        os.write(fd, data)
    except OSError as e:
        if e.errno in (errno.EPERM, errno.EACCES):
            raise PermissionDenied(f"writing {value!r} to {path}: {e.strerror}") from None
        if e.errno == errno.EINVAL:
            raise InvalidArgument(f"the kernel rejected {value!r} for {path}: check the value") from None
        if e.errno == errno.EBUSY:
            raise FailedPrecondition(f"writing {value!r} to {path}: {e.strerror}") from None
        raise
    finally:
        os.close(fd)


def rmdir_tree(top: str, timeout: float = 5.0) -> None:
    """Remove a cgroup directory and all its children, deepest first.

    cgroup dirs hold only kernel files, so rmdir works once no task is left;
    EBUSY means processes are still exiting, so retry until `timeout`.
    """
    if not os.path.isdir(top):
        return
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        busy: str | None = None
        for dirpath, _dirs, _files in os.walk(top, topdown=False):
            try:
                os.rmdir(dirpath)
            except FileNotFoundError:
                continue
            except OSError as e:
                if e.errno == errno.EBUSY:
                    busy = dirpath
                    break
                if e.errno in (errno.EPERM, errno.EACCES):
                    raise PermissionDenied(f"cannot remove cgroup {dirpath}: {e.strerror}") from None
                raise
        if busy is None:
            return
        if time.monotonic() >= deadline:
            raise Unavailable(
                f"cgroup {busy} still has processes after {timeout:.1f}s: kill them, then remove it again"
            )
        time.sleep(delay)
        delay = min(delay * 2, 0.2)
