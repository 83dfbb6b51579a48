"""CRIU's staging directory in the container's own directory, and what a crash leaves of it.

A checkpoint stages CRIU's images and work files in `<container dir>/.checkpoint-*`,
and names there the hidden file its archive is being written to. A daemon killed
mid-checkpoint leaves that directory, possibly runc and CRIU still running (they
have a session of their own), a half-written archive, and the container paused.
At start-up `collect_interrupted` ends all of it and resumes the container, so a
kill -9 never leaves a frozen container, a stray CRIU or a partial archive.
CRIU's images may be on a tmpfs mounted in the stage (memstage.py), unmounted before the
stage is removed. CheckpointPod stages in the pod's directory the same way (its containers'
archives, and the name of its partial pod archive), removed at start-up too.
RestorePod stages its unpacked archive in `<containers dir>/.restore-pod-*` and
names there the pod it made; a pod named by a stage a crash left is a restore the
caller never heard of, removed at start-up (`interrupted_pod_restores`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import threading
from pathlib import Path

from crishim.oci.checkpoint import end_session
from crishim.runtime.checkpoint import memstage
from crishim.runtime.checkpoint.archive import CHECKPOINT_DIRECTORY
from crishim.runtime.services import Services

log = logging.getLogger("crishim.checkpoint")

STAGE_PREFIX = ".checkpoint-"
# A finished checkpoint's stage, renamed so and removed behind the call's back (discard_stage).
DISCARDED_PREFIX = ".discarded-checkpoint-"
# Inside a stage: the path of the archive's partial file, once its writing has begun.
PARTIAL_FILE = "archive.partial"
PARTIAL_SUFFIX = ".partial"


RESTORE_POD_PREFIX = ".restore-pod-"
# Inside a RestorePod stage: the ID of the pod the restore made, once it exists.
RESTORED_POD_FILE = "pod"


def record_restored_pod(stage: Path, sandbox_id: str) -> None:
    (stage / RESTORED_POD_FILE).write_text(sandbox_id)


def interrupted_pod_restores(containers_dir: Path) -> list[str]:
    """Blocking: the pods RestorePod calls made before a crash ended them (their stages still exist)."""
    found = []
    for marker in sorted(containers_dir.glob(f"{RESTORE_POD_PREFIX}*/{RESTORED_POD_FILE}")):
        with contextlib.suppress(OSError, UnicodeDecodeError):
            found.append(marker.read_text().strip())
    return [sandbox_id for sandbox_id in found if sandbox_id]


def record_partial(stage: Path, partial: Path) -> None:
    (stage / PARTIAL_FILE).write_text(str(partial))


def discard_stage(stage: Path) -> None:
    """Blocking: a finished checkpoint's stage out of the way at once, its files removed by a thread.

    Removing CRIU's images (the size of the container's memory) takes a tenth of a second
    per 100 MiB on a slow node, which the caller need not wait for: the stage is renamed
    (instant, and no longer a stage for collect_interrupted), and a thread removes it. One a
    restart interrupts is removed at start-up, or with the container's directory.
    """
    discarded = stage.with_name(DISCARDED_PREFIX + stage.name.removeprefix(STAGE_PREFIX))
    try:
        stage.rename(discarded)
    except OSError:
        remove_stage(stage)
        return
    threading.Thread(target=remove_stage, args=(discarded,), name="crishim-stage", daemon=True).start()


def remove_stage(stage: Path) -> None:
    """Blocking: a stage's image tmpfs unmounted (memstage.py), then its files removed."""
    memstage.release(stage / CHECKPOINT_DIRECTORY)  # first: the removal would stop at a mount
    shutil.rmtree(stage, ignore_errors=True)


def stages_of(bundle: Path) -> list[Path]:
    return sorted(bundle.glob(STAGE_PREFIX + "*"))


def clean_stage(stage: Path) -> list[int]:
    """Blocking: ends the stage's runc and CRIU, removes its partial archive and itself; the pids ended."""
    ended = end_session(stage)
    with contextlib.suppress(OSError, ValueError):
        partial = Path((stage / PARTIAL_FILE).read_text().strip())
        if partial.is_absolute() and partial.name.endswith(PARTIAL_SUFFIX):
            partial.unlink(missing_ok=True)
    remove_stage(stage)
    return ended


async def collect_interrupted(svc: Services) -> None:
    """Start-up: checkpoints a previous daemon left unfinished are ended and their containers resumed."""
    containers = list(svc.state.containers.all())
    found = await asyncio.to_thread(lambda: {c.meta.id: stages_of(Path(c.meta.bundle)) for c in containers})
    directories = [Path(c.meta.bundle) for c in containers] + [Path(p.meta.bundle) for p in svc.state.sandboxes.all()]
    await asyncio.to_thread(_remove_discarded, directories)
    for record in containers:
        stages = found.get(record.meta.id)
        if not stages:
            continue
        for stage in stages:
            ended = await asyncio.to_thread(clean_stage, stage)
            log.warning("container %s: ended a checkpoint interrupted by a restart (processes %s)",
                        record.meta.id[:13], ended)  # fmt: skip
        await _resume_if_paused(svc, record.meta.id, record.meta.runtime_handler)
    # CheckpointPod's stages, in the pod's directory: its containers' archives, its partial pod archive.
    sandboxes = list(svc.state.sandboxes.all())
    pod_stages = await asyncio.to_thread(lambda: [s for p in sandboxes for s in stages_of(Path(p.meta.bundle))])
    for stage in pod_stages:
        await asyncio.to_thread(clean_stage, stage)
        log.warning("pod sandbox %s: removed a pod checkpoint interrupted by a restart", stage.parent.name[:13])


def _remove_discarded(directories: list[Path]) -> None:
    for directory in directories:
        for discarded in directory.glob(DISCARDED_PREFIX + "*"):
            remove_stage(discarded)


async def _resume_if_paused(svc: Services, container_id: str, handler_name: str) -> None:
    # Only a checkpoint pauses a container here, so a paused one with a stage was paused by it.
    handler = svc.handlers.get(handler_name or svc.default_handler)
    if handler is None:
        return
    try:
        if (await handler.runtime.state(container_id)).get("status") == "paused":
            await handler.runtime.resume(container_id)
            log.warning("container %s: resumed, paused by the interrupted checkpoint", container_id[:13])
    except Exception as exc:  # noqa: BLE001 - gone meanwhile: the exit is recorded by reconcile
        log.warning("container %s: cannot resume after an interrupted checkpoint: %s", container_id[:13], exc)
