"""CDI devices (KEP-4009) through the live daemon: a spec dir of our own, real runc."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from crishim.cri_api import api_pb2 as pb

from tests.support.cri import container_config, pull_test_image, remove_pod, run_pod, start_container, wait_exited
from tests.support.daemon import Daemon, running_daemon
from tests.support.images import TestImages

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def cdi_dirs() -> Iterator[tuple[Path, Path]]:
    """(spec dir, host dir mounted by the spec)."""
    base = Path(tempfile.mkdtemp(prefix="cs-cdi-", dir="/tmp"))
    spec_dir, shared = base / "cdi", base / "shared"
    spec_dir.mkdir()
    shared.mkdir()
    (shared / "hello").write_text("from the host\n")
    (spec_dir / "test.json").write_text(
        json.dumps(
            {
                "cdiVersion": "0.6.0",
                "kind": "example.com/test",
                "containerEdits": {"env": ["CDI_VENDOR=example"]},
                "devices": [
                    {
                        "name": "null",
                        "containerEdits": {
                            "env": ["CDI_TEST=null-device"],
                            "deviceNodes": [{"path": "/dev/cdi-null", "hostPath": "/dev/null"}],
                            "mounts": [
                                {
                                    "hostPath": str(shared),
                                    "containerPath": "/cdi-shared",
                                    "options": ["ro", "bind"],
                                }
                            ],
                        },
                    }
                ],
            }
        )
    )
    yield spec_dir, shared
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def cdi_daemon(cdi_dirs: tuple[Path, Path]) -> Iterator[Daemon]:
    with running_daemon(f'cdi_spec_dirs = ["{cdi_dirs[0]}"]\n') as daemon:
        yield daemon


@pytest.fixture(scope="module")
def image(cdi_daemon: Daemon, test_images: TestImages) -> str:
    return pull_test_image(cdi_daemon, test_images)


def test_cdi_device_env_node_and_mount_reach_the_container(cdi_daemon: Daemon, image: str) -> None:
    sid, pod = run_pod(cdi_daemon, "cdi")
    try:
        script = (
            "echo env=$CDI_TEST/$CDI_VENDOR; ls -l /dev/cdi-null; cat /cdi-shared/hello; "
            "echo data > /dev/cdi-null && echo wrote; touch /cdi-shared/x 2>/dev/null || echo readonly"
        )
        config = container_config(
            "app", image, ["sh", "-c", script], CDI_devices=[pb.CDIDevice(name="example.com/test=null")]
        )
        cid = start_container(cdi_daemon, sid, pod, config)
        status = wait_exited(cdi_daemon, cid)
        assert status.exit_code == 0
        out = Path(status.log_path).read_text()
        assert "env=null-device/example" in out
        assert "crw-rw-rw-" in out
        assert "1,   3" in out
        assert "from the host" in out
        assert "wrote" in out
        assert "readonly" in out
    finally:
        remove_pod(cdi_daemon, sid)


def test_cdi_device_from_annotation(cdi_daemon: Daemon, image: str) -> None:
    sid, pod = run_pod(cdi_daemon, "cdi-annot")
    try:
        config = container_config(
            "app",
            image,
            ["sh", "-c", "test -c /dev/cdi-null && echo $CDI_TEST"],
            annotations={"cdi.k8s.io/test": "example.com/test=null"},
        )
        cid = start_container(cdi_daemon, sid, pod, config)
        status = wait_exited(cdi_daemon, cid)
        assert status.exit_code == 0
        assert "null-device" in Path(status.log_path).read_text()
    finally:
        remove_pod(cdi_daemon, sid)


def test_unknown_cdi_device_is_invalid_argument_naming_it(
    cdi_daemon: Daemon, image: str, cdi_dirs: tuple[Path, Path]
) -> None:
    sid, pod = run_pod(cdi_daemon, "cdi-unknown")
    try:
        config = container_config("app", image, ["true"], CDI_devices=[pb.CDIDevice(name="example.com/test=gpu9")])
        with pytest.raises(grpc.RpcError) as err:
            cdi_daemon.runtime.CreateContainer(
                pb.CreateContainerRequest(pod_sandbox_id=sid, config=config, sandbox_config=pod), timeout=60
            )
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "example.com/test=gpu9" in err.value.details()
        assert str(cdi_dirs[0]) in err.value.details()
        listed = cdi_daemon.runtime.ListContainers(
            pb.ListContainersRequest(filter=pb.ContainerFilter(pod_sandbox_id=sid)), timeout=10
        )
        assert not listed.containers  # nothing half-created is left behind
    finally:
        remove_pod(cdi_daemon, sid)
