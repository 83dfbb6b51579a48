"""Thousands of malformed requests: every one is answered, the daemon stays up."""

from __future__ import annotations

import grpc
import pytest
from crishim.cri_api import api_pb2 as pb
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.daemon import Daemon

pytestmark = pytest.mark.root

ids = st.one_of(st.text(max_size=80), st.binary(max_size=64).map(lambda b: b.hex()), st.just("x" * 100_000))
labels = st.dictionaries(st.text(max_size=20), st.text(max_size=40), max_size=4)

REQUESTS = st.one_of(
    st.builds(lambda i: ("ContainerStatus", pb.ContainerStatusRequest(container_id=i, verbose=True)), ids),
    st.builds(lambda i: ("PodSandboxStatus", pb.PodSandboxStatusRequest(pod_sandbox_id=i)), ids),
    st.builds(lambda i: ("StopContainer", pb.StopContainerRequest(container_id=i, timeout=-5)), ids),
    st.builds(lambda i: ("RemovePodSandbox", pb.RemovePodSandboxRequest(pod_sandbox_id=i)), ids),
    st.builds(
        lambda i, c: ("ExecSync", pb.ExecSyncRequest(container_id=i, cmd=c, timeout=1)),
        ids,
        st.lists(st.text(max_size=10), max_size=3),
    ),
    st.builds(
        lambda i, lab: (
            "ListContainers",
            pb.ListContainersRequest(filter=pb.ContainerFilter(id=i, label_selector=lab)),
        ),
        ids,
        labels,
    ),
    st.builds(
        lambda n, u, ns, a, h: (
            "RunPodSandbox",
            pb.RunPodSandboxRequest(
                config=pb.PodSandboxConfig(metadata=pb.PodSandboxMetadata(name=n, uid=u, namespace=ns, attempt=a)),
                runtime_handler=h,
            ),
        ),
        st.just("") | st.text(max_size=3).map(lambda t: t + "/"),
        st.text(max_size=10),
        st.text(max_size=10),
        st.integers(0, 2**32 - 1),
        st.text(max_size=10).filter(lambda h: h not in ("", "runc", "crun")),
    ),
    st.builds(
        lambda i, s: (
            "CreateContainer",
            pb.CreateContainerRequest(
                pod_sandbox_id=i, config=pb.ContainerConfig(metadata=pb.ContainerMetadata(name=s))
            ),
        ),
        ids,
        st.text(max_size=10),
    ),
    st.builds(lambda i: ("Exec", pb.ExecRequest(container_id=i, cmd=["sh"], stdout=True)), ids),
    st.builds(lambda i: ("PortForward", pb.PortForwardRequest(pod_sandbox_id=i, port=[-1, 70000])), ids),
    st.builds(lambda i: ("ContainerStats", pb.ContainerStatsRequest(container_id=i)), ids),
    st.builds(
        lambda i: (
            "UpdateContainerResources",
            pb.UpdateContainerResourcesRequest(container_id=i, linux=pb.LinuxContainerResources(cpu_shares=-1)),
        ),
        ids,
    ),
    st.builds(lambda i: ("ReopenContainerLog", pb.ReopenContainerLogRequest(container_id=i)), ids),
)

IMAGE_REQUESTS = st.one_of(
    st.builds(lambda r: ("ImageStatus", pb.ImageStatusRequest(image=pb.ImageSpec(image=r))), ids),
    st.builds(lambda r: ("RemoveImage", pb.RemoveImageRequest(image=pb.ImageSpec(image=r))), ids),
    st.builds(lambda r: ("PullImage", pb.PullImageRequest(image=pb.ImageSpec(image=r + ":bad tag"))), ids),
)

ALLOWED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}


@settings(max_examples=1500, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.one_of(REQUESTS.map(lambda r: ("runtime", r)), IMAGE_REQUESTS.map(lambda r: ("images", r))))
def test_random_requests_get_a_status_and_never_crash_the_daemon(live_daemon: Daemon, item) -> None:
    service, (method, request) = item
    stub = live_daemon.runtime if service == "runtime" else live_daemon.images
    try:
        getattr(stub, method)(request, timeout=30)
        code = grpc.StatusCode.OK
    except grpc.RpcError as exc:
        code, details = exc.code(), exc.details() or ""
    else:
        details = ""
    assert "internal error" not in details, f"{method}: {details}"
    assert code in ALLOWED, f"{method} answered {code}"
    assert live_daemon.proc is not None
    assert live_daemon.proc.poll() is None
