"""critest "Container Mount Propagation" and "Container Mount Readonly".

Propagation: critest bind-mounts a host temp dir on itself, makes it rprivate or
rshared, gives it to a privileged container with the propagation under test, then
mounts on the host side (must appear in the container for rslave/rshared) and in
the container (must appear on the host only for rshared).

Readonly: a host dir holding a tmpfs submount is mounted read-only at /mnt; a plain
read-only mount leaves the submount writable, a recursive one (only where the
handler advertises it) makes it read-only; invalid recursive-read-only requests
must be refused at CreateContainer.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from crishim.cri_api import api_pb2 as pb

from tests.support import cri, critest
from tests.support.daemon import Daemon
from tests.support.mounts import MS_BIND, MS_PRIVATE, MS_REC, MS_SHARED, mount, umount_all

pytestmark = pytest.mark.root

PRIVATE = pb.PROPAGATION_PRIVATE
HOST_TO_CONTAINER = pb.PROPAGATION_HOST_TO_CONTAINER
BIDIRECTIONAL = pb.PROPAGATION_BIDIRECTIONAL


# ---- propagation -------------------------------------------------------------------------------


@contextlib.contextmanager
def propagation_host_path(pod_id: str, propagation: pb.MountPropagation) -> Iterator[tuple[Path, Path, Path]]:
    """createHostPathForMountPropagation: yields (mnt source, propagation src, mount point)."""
    host_path = Path(tempfile.mkdtemp(prefix="test" + pod_id[:12]))
    mnt_source = host_path / "mnt"
    mnt_point = mnt_source / "propagationMnt"
    src_dir = host_path / "propagationSrcDir"
    mnt_point.mkdir(parents=True, mode=0o700)
    src_dir.mkdir(mode=0o700)
    (src_dir / "flagFile").touch()
    try:
        mount(mnt_source, mnt_source, "bind", MS_BIND | MS_REC)
        shared = propagation in (HOST_TO_CONTAINER, BIDIRECTIONAL)
        mount("", mnt_source, "", (MS_SHARED if shared else MS_PRIVATE) | MS_REC)
        yield mnt_source, src_dir, mnt_point
    finally:
        # Whatever the test left (including mounts propagated back from the container).
        umount_all(mnt_source / "containerMntPoint")
        umount_all(mnt_point)
        umount_all(mnt_source)
        shutil.rmtree(host_path, ignore_errors=True)


def _check_propagation(daemon: Daemon, propagation: pb.MountPropagation) -> None:
    with (
        critest.privileged_pod(daemon) as (pod_id, pod_cfg),
        propagation_host_path(pod_id, propagation) as (mnt_source, src_dir, mnt_point),
    ):
        config = critest.container_config(
            "mount-propagation-test-",
            command=critest.PAUSE_COMMAND,
            linux=pb.LinuxContainerConfig(security_context=pb.LinuxContainerSecurityContext(privileged=True)),
            mounts=[pb.Mount(host_path=str(mnt_source), container_path=str(mnt_source), propagation=propagation)],
        )
        cid = critest.create_container(daemon, pod_id, pod_cfg, config)

        mounts = cri.container_status(daemon, cid, verbose=True).mounts
        assert len(mounts) == 1, mounts
        assert mounts[0].container_path == str(mnt_source)
        assert mounts[0].host_path == str(mnt_source)
        assert not mounts[0].readonly
        assert not mounts[0].selinux_relabel
        assert mounts[0].propagation == propagation, mounts[0]

        cri.start(daemon, cid)
        cri.wait_running(daemon, cid)

        # Host -> container.
        mount(src_dir, mnt_point, "bind", MS_BIND | MS_REC)
        listing = critest.exec_ok(daemon, cid, ["ls", "-A", str(mnt_point)])
        if propagation == PRIVATE:
            assert listing == "", f"a host mount reached an rprivate mount: {listing!r}"
        else:
            assert listing != "", "a host mount did not reach the container"

        # Container -> host.
        container_mnt_point = mnt_source / "containerMntPoint"
        critest.exec_ok(daemon, cid, ["sh", "-c", f"mkdir -p {container_mnt_point}"])
        critest.exec_ok(daemon, cid, ["sh", "-c", f"mount --bind /etc {container_mnt_point}"])
        entries = os.listdir(container_mnt_point)
        if propagation == BIDIRECTIONAL:
            assert entries, "a container mount did not reach the host through an rshared mount"
        else:
            assert not entries, f"a container mount reached the host: {entries}"


def test_rprivate_mount_propagates_nothing(daemon: Daemon) -> None:
    """[k8s.io] Container Mount Propagation runtime should support mount propagation mount with 'rprivate'
    should not support propagation"""
    _check_propagation(daemon, PRIVATE)


def test_rshared_mount_propagates_both_ways(daemon: Daemon) -> None:
    """[k8s.io] Container Mount Propagation runtime should support mount propagation mount with 'rshared'
    should support propagation from host to container and vice versa"""
    _check_propagation(daemon, BIDIRECTIONAL)


def test_rslave_mount_propagates_host_to_container(daemon: Daemon) -> None:
    """[k8s.io] Container Mount Propagation runtime should support mount propagation mount with 'rslave'
    should support propagation from host to container"""
    _check_propagation(daemon, HOST_TO_CONTAINER)


# ---- readonly ----------------------------------------------------------------------------------


def require_rro(daemon: Daemon) -> None:
    """critest's runtimeSupportsRRO: skip unless Status says the handler does recursive read-only mounts."""
    features = critest.handler_features(daemon)
    if features is None or not features.recursive_read_only_mounts:
        pytest.skip(
            f"runtime does not implement recursive readonly mounts (handler {critest.RUNTIME_HANDLER!r}; "
            "set CRITEST_RUNTIME_HANDLER to one that does)"
        )


@contextlib.contextmanager
def rro_host_path(pod_id: str) -> Iterator[Path]:
    """createHostPathForRROMount: a temp dir with a tmpfs mounted on its "tmpfs" subdirectory."""
    host_path = Path(tempfile.mkdtemp(prefix="test" + pod_id[:12]))
    tmpfs = host_path / "tmpfs"
    tmpfs.mkdir(mode=0o700)
    try:
        mount("none", tmpfs, "tmpfs")
        yield host_path
    finally:
        umount_all(tmpfs)
        shutil.rmtree(host_path, ignore_errors=True)


def mount_container_config(
    host_path: Path, *, readonly: bool, rro: bool, propagation: pb.MountPropagation = PRIVATE
) -> pb.ContainerConfig:
    """createMountContainer's config: busybox `sh -c top` with `host_path` mounted at /mnt."""
    volume = pb.Mount(
        host_path=str(host_path),
        container_path="/mnt",
        readonly=readonly,
        recursive_read_only=rro,
        selinux_relabel=True,
        propagation=propagation,
    )
    config = critest.container_config("test-mount-", command=critest.PAUSE_COMMAND, mounts=[volume])
    config.ClearField("linux")  # critest leaves Linux unset here
    return config


def _check_readonly_mount(daemon: Daemon, rro: bool) -> None:
    if rro:
        require_rro(daemon)
    with critest.privileged_pod(daemon) as (pod_id, pod_cfg), rro_host_path(pod_id) as host_path:
        config = mount_container_config(host_path, readonly=True, rro=rro)
        cid = critest.create_container(daemon, pod_id, pod_cfg, config)
        status = cri.container_status(daemon, cid, verbose=True)
        assert len(status.mounts) == len(config.mounts), status.mounts
        cri.start(daemon, cid)
        cri.wait_running(daemon, cid)
        if rro:
            critest.exec_ok(daemon, cid, ["sh", "-c", 'touch /mnt/tmpfs/foo 2>&1 | grep -q "Read-only file system"'])
        else:
            critest.exec_ok(daemon, cid, ["touch", "/mnt/tmpfs/file"])


def test_non_recursive_readonly_mount_leaves_submounts_writable(daemon: Daemon) -> None:
    """[k8s.io] Container Mount Readonly runtime should support readonly mounts should support
    non-recursive readonly mounts"""
    _check_readonly_mount(daemon, rro=False)


def test_recursive_readonly_mount_makes_submounts_readonly(daemon: Daemon) -> None:
    """[k8s.io] Container Mount Readonly runtime should support readonly mounts should support recursive
    readonly mounts"""
    _check_readonly_mount(daemon, rro=True)


def _check_rro_refused(daemon: Daemon, *, readonly: bool, propagation: pb.MountPropagation, details: str) -> None:
    """createMountContainer must fail: INVALID_ARGUMENT with `details`, after the image is pulled."""
    require_rro(daemon)
    with critest.privileged_pod(daemon) as (pod_id, pod_cfg), rro_host_path(pod_id) as host_path:
        config = mount_container_config(host_path, readonly=readonly, rro=True, propagation=propagation)
        critest.prepare_image(daemon, pod_cfg, config)
        cri.assert_refused(
            lambda: cri.create_container(daemon, pod_id, pod_cfg, config), grpc.StatusCode.INVALID_ARGUMENT, details
        )


def test_recursive_readonly_with_host_to_container_propagation_is_refused(daemon: Daemon) -> None:
    """[k8s.io] Container Mount Readonly runtime should support readonly mounts should reject a recursive
    readonly mount with PROPAGATION_HOST_TO_CONTAINER"""
    _check_rro_refused(
        daemon,
        readonly=True,
        propagation=HOST_TO_CONTAINER,
        details="config.mounts[0]: recursive_read_only needs PROPAGATION_PRIVATE, "
        "not PROPAGATION_HOST_TO_CONTAINER ('/mnt')",
    )


def test_recursive_readonly_with_bidirectional_propagation_is_refused(daemon: Daemon) -> None:
    """[k8s.io] Container Mount Readonly runtime should support readonly mounts should reject a recursive
    readonly mount with PROPAGATION_BIDIRECTIONAL"""
    _check_rro_refused(
        daemon,
        readonly=True,
        propagation=BIDIRECTIONAL,
        details="config.mounts[0]: recursive_read_only needs PROPAGATION_PRIVATE, "
        "not PROPAGATION_BIDIRECTIONAL ('/mnt')",
    )


def test_recursive_readonly_without_readonly_is_refused(daemon: Daemon) -> None:
    """[k8s.io] Container Mount Readonly runtime should support readonly mounts should reject a recursive
    readonly mount with ReadOnly: false"""
    _check_rro_refused(
        daemon,
        readonly=False,
        propagation=PRIVATE,
        details="config.mounts[0]: recursive_read_only needs readonly=true ('/mnt')",
    )
