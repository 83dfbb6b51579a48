"""A restore's page images copied into the bundle behind CreateContainer, while StartContainer's CRIU starts.

Restoring from an archive, most of CreateContainer's time is one copy: CRIU's page images
(the container's memory) out of the tar. CRIU reads them only once it has set up the
container's namespaces, most of a second into StartContainer (conmon, `runc restore`, the
systemd scopes, CRIU's own start). Right then CRIU tells runc ("setup-namespaces") and
waits while runc runs the spec's createRuntime hooks. So the copy need not come first:

    CreateContainer: unpack all but the large page images (their place in the archive kept)
      -> bundle/late-pages.pending written, bundle/late-pages.lock locked (flock, exclusive)
      -> a thread copies each image in (NAME.partial, renamed once whole), then unlocks
      -> the spec's first createRuntime hook: `flock --shared bundle/late-pages.lock true`
    StartContainer: conmon -> runc restore -> CRIU ... setup-namespaces: the hook waits
      for the unlock -> CRIU reads the pages

The copy and the restore's start overlap instead of following each other. The archive is
opened before CreateContainer returns, so removing it afterwards takes nothing from the
copy. A copy that fails leaves no image under its final name, so CRIU can never read a
partial one; StartContainer reports the copy's error instead of starting. Removing the
container stops the copy first (`cancel`). A daemon killed mid-copy leaves the pending
file: the restarted daemon records the container EXITED, to be created again
(`interrupted`, from restore_start.undo_interrupted). The hook is dropped from the
bundle's spec once the process is restored (`drop_hook`): a later checkpoint's spec.dump,
and what ContainerStatus shows, must not name a lock of this bundle.

Only a plain tar's members can be copied this way (a compressed archive has no offsets
to copy from), only images large enough to matter, and only where flock(1) is found.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import shutil
import tarfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crishim.runtime.checkpoint.kernel_copy import copy_range

log = logging.getLogger("crishim.checkpoint")

LOCK_FILE = "late-pages.lock"
PENDING_FILE = "late-pages.pending"
PARTIAL_SUFFIX = ".partial"
# A page image smaller than this is copied with the rest: its copy costs less than the hook.
MIN_BYTES = 8 << 20
# As long as a restore may take (restore_start.RESTORE_TIME_LIMIT): the hook never waits longer.
WAIT_SECONDS = 300
_PAGE_IMAGE = re.compile(r"checkpoint/pages-[0-9]+\.img")
_CHUNK = 64 << 20  # one copy call's most: a cancel is seen between calls


def is_late(member: tarfile.TarInfo) -> bool:
    """Whether the unpacking leaves this member for the copy behind CreateContainer."""
    return member.isreg() and member.size >= MIN_BYTES and _PAGE_IMAGE.fullmatch(member.name) is not None


def tools() -> tuple[str, str] | None:
    """flock(1) and true(1), which the hook runs; None where either is missing (then nothing is late)."""
    flock, true = shutil.which("flock"), shutil.which("true")
    return (flock, true) if flock and true else None


def hook(bundle: Path, found: tuple[str, str]) -> dict[str, Any]:
    """The createRuntime hook that holds CRIU until the copy has unlocked the bundle's lock."""
    flock, true = found
    return {
        "path": flock,
        "args": ["flock", "--shared", "--wait", str(WAIT_SECONDS), str(bundle / LOCK_FILE), true],
        "timeout": WAIT_SECONDS + 10,
    }


def with_hook(spec: dict[str, Any], bundle: Path, found: tuple[str, str]) -> None:
    """Puts the hook first among the spec's createRuntime hooks (before an NRI plugin's)."""
    spec.setdefault("hooks", {}).setdefault("createRuntime", []).insert(0, hook(bundle, found))


def drop_hook(bundle: Path) -> None:
    """Blocking: the hook removed from bundle/config.json (the process is restored; it never runs again)."""
    path = bundle / "config.json"
    try:
        spec = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    hooks = spec.get("hooks") or {}
    lock = str(bundle / LOCK_FILE)
    kept = [h for h in hooks.get("createRuntime") or [] if lock not in (h.get("args") or [])]
    if len(kept) == len(hooks.get("createRuntime") or []):
        return
    if kept:
        hooks["createRuntime"] = kept
    else:
        hooks.pop("createRuntime", None)
    if not hooks:
        spec.pop("hooks", None)
    partial = path.with_name(path.name + PARTIAL_SUFFIX)
    partial.write_text(json.dumps(spec))
    os.replace(partial, path)


@dataclass(slots=True)
class LateCopy:
    """One container's copy: its thread, the lock it holds, and how it ended."""

    bundle: Path
    thread: threading.Thread | None = None
    cancelled: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)
    error: str | None = None


# The copies of this daemon, by bundle: StartContainer asks for an error, RemoveContainer cancels.
_copies: dict[str, LateCopy] = {}
_copies_lock = threading.Lock()


def start(archive: Path, members: Sequence[tarfile.TarInfo], images: Path, bundle: Path) -> LateCopy:
    """Blocking: locks the bundle's lock and starts the thread copying `members` of `archive`
    into `images`. The lock is held when this returns, so no hook can pass before the copy ends."""
    copy = LateCopy(bundle)
    (bundle / PENDING_FILE).write_text("\n".join(m.name for m in members) + "\n")
    lock_fd = os.open(bundle / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX)
        source_fd = os.open(archive, os.O_RDONLY | os.O_CLOEXEC)
    except BaseException:
        os.close(lock_fd)
        raise
    copy.thread = threading.Thread(
        target=_run, args=(copy, source_fd, lock_fd, members, images), name="crishim-late-pages", daemon=True
    )
    with _copies_lock:
        _copies[str(bundle)] = copy
    copy.thread.start()
    return copy


def _run(copy: LateCopy, source_fd: int, lock_fd: int, members: Sequence[tarfile.TarInfo], images: Path) -> None:
    """The thread: every member copied and renamed into place, then the lock let go."""
    try:
        for member in members:
            _copy_member(copy, source_fd, member, images / Path(member.name).name)
        (copy.bundle / PENDING_FILE).unlink(missing_ok=True)
    except _Cancelled:
        pass
    except OSError as exc:
        copy.error = f"copying {members[0].name} out of the checkpoint archive failed: {exc}"
        log.error("%s: %s", copy.bundle.name[:13], copy.error)
    finally:
        os.close(source_fd)
        os.close(lock_fd)  # the hook passes: CRIU goes on, finding each image whole or not at all
        copy.done.set()
        if copy.error is None:
            _forget(copy)


class _Cancelled(Exception):
    pass


def _copy_member(copy: LateCopy, source_fd: int, member: tarfile.TarInfo, target: Path) -> None:
    partial = target.with_name(target.name + PARTIAL_SUFFIX)
    try:
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, member.mode & 0o7777 or 0o600)
        try:
            done = 0
            while done < member.size:
                if copy.cancelled.is_set():
                    raise _Cancelled
                want = min(_CHUNK, member.size - done)
                got = copy_range(source_fd, member.offset_data + done, fd, want)
                if got != want:
                    raise OSError(f"the archive ends inside {member.name} (truncated)")
                done += got
        finally:
            os.close(fd)
        os.rename(partial, target)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def _forget(copy: LateCopy) -> None:
    with _copies_lock:
        if _copies.get(str(copy.bundle)) is copy:
            del _copies[str(copy.bundle)]


def failure(bundle: Path) -> str | None:
    """The error of this bundle's copy, once it has failed; None while it runs or after it succeeded."""
    with _copies_lock:
        copy = _copies.get(str(bundle))
    return copy.error if copy is not None and copy.done.is_set() else None


def cancel(bundle: Path) -> None:
    """Blocking: stops this bundle's copy, if one runs, and waits for its thread (its files closed)."""
    with _copies_lock:
        copy = _copies.pop(str(bundle), None)
    if copy is None:
        return
    copy.cancelled.set()
    if copy.thread is not None:
        copy.thread.join()


def interrupted(bundle: Path) -> bool:
    """Blocking: whether a copy into this bundle began and neither ended nor runs in this daemon
    (a daemon killed mid-copy): its images are incomplete, and the restore cannot be started."""
    with _copies_lock:
        running = str(bundle) in _copies
    return not running and (bundle / PENDING_FILE).exists()
