"""A live crishim daemon for tests: temporary dirs, its own socket, real runc and conmon."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from crishim.cri_api import api_pb2, api_pb2_grpc
from crishim.oci import conmon, processes
from crishim.oci.mounttable import mount_points, unmount
from crishim.runtime.network.netns import release_dir

MAX_MESSAGE = 16 * 1024 * 1024


# Start-up probes every runtime handler; under software emulation (the node VM) with a busy
# host that alone can take a minute.
START_TIMEOUT = 240.0 if os.environ.get("CRISHIM_NODE_VM") == "1" else 60.0


@dataclass
class Daemon:
    """A running `crishim serve`, with stubs ready to call."""

    dir: Path
    config_file: Path
    socket: Path
    proc: subprocess.Popen[bytes] | None = None
    extra_config: str = ""
    log_file: Path = field(init=False)
    _channel: grpc.Channel | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.log_file = self.dir / "daemon.log"

    @property
    def root(self) -> Path:
        return self.dir / "root"

    def channel(self) -> grpc.Channel:
        """One channel per daemon, reconnecting by itself after a daemon restart."""
        if self._channel is None:
            self._channel = grpc.insecure_channel(
                f"unix://{self.socket}",
                options=[
                    ("grpc.max_send_message_length", MAX_MESSAGE),
                    ("grpc.max_receive_message_length", MAX_MESSAGE),
                ],
            )
        return self._channel

    def close_channel(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None

    @property
    def runtime(self) -> api_pb2_grpc.RuntimeServiceStub:
        return api_pb2_grpc.RuntimeServiceStub(self.channel())

    @property
    def images(self) -> api_pb2_grpc.ImageServiceStub:
        return api_pb2_grpc.ImageServiceStub(self.channel())

    def start(self, timeout: float | None = None) -> None:
        timeout = START_TIMEOUT if timeout is None else timeout
        with self.log_file.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "crishim.runtime.cli", "--config", str(self.config_file), "serve"],
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"crishim exited with {self.proc.returncode}:\n{self.log_tail()}")
            if self.socket.exists():
                try:
                    self.runtime.Version(api_pb2.VersionRequest(), timeout=2)
                    return
                except grpc.RpcError:
                    pass
            time.sleep(0.05)
        raise RuntimeError(f"crishim did not answer within {timeout}s:\n{self.log_tail()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def kill9(self) -> None:
        self.stop(signal.SIGKILL)

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def write_config(
    base: Path, extra: str = "", *, cni_dir: Path | None = None, cni_extra: str = "", nri_extra: str = ""
) -> Path:
    cni = cni_dir or (base / "net.d")
    config = base / "crishim.toml"
    config.write_text(
        f'socket = "{base}/crishim.sock"\n'
        f'root = "{base}/root"\n'
        f'state_dir = "{base}/run"\n'
        'log_level = "debug"\n' + extra + "\n[cni]\n"
        f'conf_dir = "{cni}"\n'
        f'cache_dir = "{base}/cni-cache"\n' + cni_extra + "[registries]\n"
        f'config_path = "{base}/certs.d"\n'
        # NRI: the socket and plugin directories of this daemon alone, never the node's.
        "[nri]\n"
        f'socket_path = "{base}/nri/nri.sock"\n'
        f'plugin_path = "{base}/nri/plugins"\n'
        f'plugin_config_path = "{base}/nri/conf.d"\n' + nri_extra
    )
    return config


@contextmanager
def running_daemon(
    extra_config: str = "", *, start: bool = True, cni_extra: str = "", nri_extra: str = ""
) -> Iterator[Daemon]:
    """Starts crishim in fresh temp dirs; on exit removes every pod and stops it."""
    base = Path(tempfile.mkdtemp(prefix="cs-", dir="/tmp"))
    base.chmod(0o711)  # user-namespaced pods must traverse to their rootfs
    config = write_config(base, extra_config, cni_extra=cni_extra, nri_extra=nri_extra)
    daemon = Daemon(dir=base, config_file=config, socket=base / "crishim.sock", extra_config=extra_config)
    try:
        if start:
            daemon.start()
        yield daemon
    finally:
        try:
            if daemon.proc is not None and daemon.proc.poll() is None:
                remove_all_pods(daemon)
        finally:
            daemon.stop()
            daemon.close_channel()
            end_conmons_under(base)
            release_dir(str(base / "run" / "netns"))
            keep_log(daemon.log_file)
            if os.environ.get("CRISHIM_KEEP_TEST_DIRS") != "1":
                shutil.rmtree(base, ignore_errors=True)


def keep_log(log_file: Path) -> None:
    """Copies a test daemon's log into $CRISHIM_TEST_LOGS, named after the test module that ran it.

    The node VM sets it to its share: the guest's /tmp goes with the VM, and a failure seen only
    there (a call that ran out of time on a slow software-emulated node) is then read afterwards.
    """
    target = os.environ.get("CRISHIM_TEST_LOGS")
    if not target or not log_file.is_file():
        return
    current = os.environ.get("PYTEST_CURRENT_TEST", "").split("::", 1)[0]
    module = Path(current).stem or "session"
    os.makedirs(target, exist_ok=True)
    shutil.copyfile(log_file, Path(target) / f"{module}-{log_file.parent.name}.log")


def remove_all_pods(daemon: Daemon) -> None:
    """Removes every pod through CRI; a pod whose removal fails (a slow node) is tried again,
    and one failure never leaves the other pods behind."""
    stub = daemon.runtime
    for _attempt in range(2):
        try:
            pods = stub.ListPodSandbox(api_pb2.ListPodSandboxRequest(), timeout=30).items
        except grpc.RpcError:
            return
        if not pods:
            return
        for pod in pods:
            try:
                stub.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=pod.id), timeout=60)
                stub.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod.id), timeout=60)
            except grpc.RpcError:
                continue  # tried again below, after the others


def end_conmons_under(base: Path) -> None:
    """Last resort after a test that left its daemon unable to clean up (killed, hung):
    conmons of this daemon's directory, and their containers, must not outlive the test
    and show up as another test's leak."""
    exits = base / "run" / "exits"
    for cid, pids in conmon.conmons_for(exits).items():
        print(f"test teardown: conmon {pids} of {cid[:13]} outlived its daemon; killing it", file=sys.stderr)
        for pid in pids:
            processes.kill_tree(pid)
    for handler in ("runc", "crun"):
        state = base / "run" / handler
        if state.is_dir() and shutil.which(handler):
            listed = subprocess.run([handler, "--root", str(state), "list", "-q"], capture_output=True, text=True)
            for cid in listed.stdout.split():
                subprocess.run([handler, "--root", str(state), "delete", "--force", cid], capture_output=True)
    prefix = f"{base / 'root'}/"
    for target in sorted((m for m in mount_points() if m.startswith(prefix)), key=len, reverse=True):
        unmount(target)
