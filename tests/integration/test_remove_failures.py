"""RemoveContainer keeps the record while the runtime cannot delete the container's state.

The handler here is a wrapper around the real runc that fails `delete` while a
marker file exists, as a runc would that cannot remove its state directory.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from crishim.cri_api import api_pb2 as pb

from tests.support.cri import code_of, container_config, pod_config, remove_pod, start_container
from tests.support.daemon import Daemon, running_daemon

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def failing_delete(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The marker file: while it exists, the `flaky` handler's `delete` exits 1."""
    base = tmp_path_factory.mktemp("flaky-runc")
    base.chmod(0o711)
    marker = base / "fail-delete"
    runc = shutil.which("runc")
    assert runc is not None
    wrapper = base / "runc"
    wrapper.write_text(
        "#!/bin/sh\n"
        'for arg in "$@"; do\n'
        f'  if [ "$arg" = delete ] && [ -e {marker} ]; then\n'
        '    echo "cannot remove the state of the container: device or resource busy" >&2\n'
        "    exit 1\n"
        "  fi\n"
        "done\n"
        f'exec {runc} "$@"\n'
    )
    wrapper.chmod(0o755)
    return marker


@pytest.fixture(scope="module")
def flaky_daemon(failing_delete: Path) -> Iterator[Daemon]:
    wrapper = failing_delete.parent / "runc"
    with running_daemon(f'[runtimes.flaky]\ntype = "runc"\npath = "{wrapper}"\n') as daemon:
        yield daemon


def test_failed_runtime_delete_keeps_the_container_until_a_retry_succeeds(
    flaky_daemon: Daemon, failing_delete: Path, test_images
) -> None:
    rt = flaky_daemon.runtime
    busybox = test_images.ref("busybox:latest")
    flaky_daemon.images.PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=busybox)), timeout=120)
    config = pod_config("flaky-delete", flaky_daemon)
    sid = rt.RunPodSandbox(pb.RunPodSandboxRequest(config=config, runtime_handler="flaky"), timeout=60).pod_sandbox_id
    try:
        cid = start_container(flaky_daemon, sid, config, container_config("app", busybox, ["sleep", "3600"]))
        failing_delete.touch()
        try:
            remove = rt.RemoveContainer
            request = pb.RemoveContainerRequest(container_id=cid)
            with pytest.raises(grpc.RpcError) as failed:
                remove(request, timeout=60)
            assert failed.value.code() == grpc.StatusCode.INTERNAL
            assert "could not delete" in (failed.value.details() or "")
            listed = rt.ListContainers(pb.ListContainersRequest(filter=pb.ContainerFilter(id=cid)), timeout=10)
            assert [c.id for c in listed.containers] == [cid]
        finally:
            failing_delete.unlink(missing_ok=True)
        assert code_of(remove, request) == grpc.StatusCode.OK
        listed = rt.ListContainers(pb.ListContainersRequest(filter=pb.ContainerFilter(id=cid)), timeout=10)
        assert list(listed.containers) == []
        # Absent from the runtime and from the store: removing again is still fine (api.proto).
        assert code_of(remove, request) == grpc.StatusCode.OK
    finally:
        failing_delete.unlink(missing_ok=True)
        remove_pod(flaky_daemon, sid)
