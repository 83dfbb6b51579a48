"""A daemon killed while conmon is inside `runc create` leaves nothing once it is back.

The pod runs under `held`, a wrapper around the real runc that sleeps before `create`
while a marker file exists, so the daemon can be killed with conmon and the runtime
mid-create. The restarted daemon's start-up sweep ends every conmon no record names,
with the runtime command under it, before it lists the runtime's containers: a create
that had got past reading its bundle would otherwise finish after the sweep and leave
a container and its conmon that no record names.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from pathlib import Path

import grpc
import pytest
from crishim.cri_api import api_pb2 as pb

from tests.support.cri import container_config, pull_test_image, remove_pod, run_pod
from tests.support.daemon import running_daemon

pytestmark = pytest.mark.root

HOLD_SECONDS = 8


def _held_runc(base: Path) -> Path:
    runc = shutil.which("runc")
    assert runc is not None
    script = base / "runc"
    script.write_text(
        "#!/bin/sh\n"
        f'echo "$*" >> {base}/calls\n'
        'for arg in "$@"; do\n'
        f'  [ "$arg" = create ] && [ -e "{base}/hold" ] && sleep {HOLD_SECONDS}\n'
        "done\n"
        f'exec {runc} "$@"\n'
    )
    script.chmod(0o755)
    return script


def _conmons(base: Path) -> list[str]:
    out = subprocess.run(["pgrep", "-f", f"conmon.*{base}"], capture_output=True, text=True).stdout
    return out.split()


def test_a_kill_during_runc_create_leaves_no_conmon_or_container(tmp_path: Path, test_images) -> None:
    tmp_path.chmod(0o711)
    runc = _held_runc(tmp_path)
    with running_daemon(f'[runtimes.held]\ntype = "runc"\npath = "{runc}"\n') as daemon:
        image = pull_test_image(daemon, test_images)
        sandbox_id, pod = run_pod(daemon, "mid-create", handler="held")
        infra_conmons = set(_conmons(daemon.dir))
        (tmp_path / "hold").touch()
        request = pb.CreateContainerRequest(
            pod_sandbox_id=sandbox_id, config=container_config("app", image, ["sleep", "1000"]), sandbox_config=pod
        )

        def create() -> None:
            try:
                daemon.runtime.CreateContainer(request, timeout=60)
            except grpc.RpcError:
                pass  # the daemon dies under the call

        caller = threading.Thread(target=create)
        caller.start()
        deadline = time.monotonic() + 30
        while "/containers/" not in (tmp_path / "calls").read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "/containers/" in (tmp_path / "calls").read_text(), "runc create was never called"
        assert set(_conmons(daemon.dir)) - infra_conmons, "no conmon is running the create"
        daemon.kill9()
        caller.join()
        (tmp_path / "hold").unlink()
        daemon.start()

        time.sleep(HOLD_SECONDS + 2)  # a create that survived the sweep would have finished by now
        assert set(_conmons(daemon.dir)) == infra_conmons
        listed = subprocess.run(
            ["runc", "--root", str(daemon.dir / "run" / "held"), "list", "-q"], capture_output=True, text=True
        ).stdout.split()
        assert listed == []  # the pod itself has no runtime container: its PID namespace holder runs without one
        containers = daemon.runtime.ListContainers(pb.ListContainersRequest(), timeout=30).containers
        assert [c.id for c in containers] == []
        remove_pod(daemon, sandbox_id)
        assert _conmons(daemon.dir) == []
