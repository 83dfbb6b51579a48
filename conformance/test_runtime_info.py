"""critest "Runtime info": Version and Status answer with what the kubelet needs."""

from __future__ import annotations

import pytest
from crishim.cri_api import api_pb2 as pb

from tests.support import cri
from tests.support.daemon import Daemon

pytestmark = pytest.mark.root


def test_version_reports_every_field(daemon: Daemon) -> None:
    """[k8s.io] Runtime info runtime should support returning runtime info
    runtime should return version info [Conformance]"""
    # critest asks with version "0.1.0" and checks the four fields are present;
    # proto3 strings are never nil, so we also require them to say something.
    version = daemon.runtime.Version(pb.VersionRequest(version="0.1.0"), timeout=cri.CALL_TIMEOUT)
    assert version.version
    assert version.runtime_name
    assert version.runtime_version
    assert version.runtime_api_version


def test_status_reports_runtime_and_network_ready(daemon: Daemon) -> None:
    """[k8s.io] Runtime info runtime should support returning runtime info
    runtime should return runtime conditions [Conformance]"""
    status = daemon.runtime.Status(pb.StatusRequest(), timeout=cri.CALL_TIMEOUT)
    ready = {c.type for c in status.status.conditions if c.status}
    assert {"RuntimeReady", "NetworkReady"} <= ready, list(status.status.conditions)
