"""containerd as a live anchor for the benchmarks: a private daemon timed in the same rounds.

A figure measured against containerd on another day, on another load, says little on a
shared host; a containerd started beside crishim and driven through its own CRI socket in
the same rounds does. This module starts one with every path of its own (root, state,
sockets, runc root, CNI conf and IPAM dirs, a bridge and subnet apart from crishim0), so it
neither meets a node's containerd nor crishim, and on stop removes everything it left: its
pods' shims, runc containers, mounts, netns, cgroups, bridge and files.

Only used where a `containerd` binary is installed (Debian's 1.6 is what it was written
against); `find_containerd()` says whether there is one.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import subprocess
import tarfile
import time
from collections.abc import Mapping
from pathlib import Path

import grpc
from crishim.cri_api import api_pb2 as pb
from crishim.cri_api import api_pb2_grpc
from crishim.images import build as b
from crishim.oci.mounttable import unmount
from crishim.runtime.network.defaultconf import render_default_conflist

NAMESPACE = "k8s.io"  # where containerd's CRI plugin keeps its images and containers
BRIDGE = "ctdanchor0"
POD_CIDR = "10.89.0.0/24"
CNI_BIN = "/usr/lib/cni"
START_TIMEOUT = 60.0
CGROUP_ROOT = Path("/sys/fs/cgroup")
NETNS_DIR = Path("/var/run/netns")
SHIM_SOCKETS = Path("/run/containerd/s")
CONTAINERD_ID = re.compile(r"^[0-9a-f]{64}$")


def find_containerd() -> str | None:
    """The containerd binary with its runc v2 shim beside it, or None: then nothing is timed."""
    binary = shutil.which("containerd")
    if binary is None or shutil.which("containerd-shim-runc-v2") is None:
        return None
    return binary


def containerd_version(binary: str) -> str:
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False).stdout.split()
    return out[2] if len(out) >= 3 else "unknown"


def _snapshot_names(path: Path) -> set[str]:
    return set(os.listdir(path)) if path.is_dir() else set()


def _cgroup_dirs() -> set[Path]:
    """Every cgroup directory two levels deep in every hierarchy: the "before" picture."""
    out: set[Path] = set()
    for hierarchy in CGROUP_ROOT.iterdir():
        if hierarchy.is_dir() and not hierarchy.is_symlink():
            out.update(p for p in hierarchy.glob("*") if p.is_dir())
            out.update(p for p in hierarchy.glob("*/*") if p.is_dir())
    return out


class Containerd:
    """A private containerd (config version 2, CRI plugin, overlayfs, runc v2 shim) under `base`.

    `registry_host` (127.0.0.1:PORT) is made a plain-HTTP registry through a hosts.d dir;
    `sandbox_image` is the pause image its pods use (import it with `import_images`).
    """

    def __init__(self, base: Path, registry_host: str, sandbox_image: str, binary: str = "containerd") -> None:
        self.base = base
        self.binary = binary
        self.registry_host = registry_host
        self.sandbox_image = sandbox_image
        self.root = base / "root"
        self.state = base / "state"
        self.socket = base / "containerd.sock"
        self.runc_root = base / "runc"
        self.log_file = base / "containerd.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._channel: grpc.Channel | None = None
        self._netns_before: set[str] = set()
        self._shim_sockets_before: set[str] = set()
        self._cgroups_before: set[Path] = set()
        self._had_shim_dir = SHIM_SOCKETS.parent.exists()

    # -- configuration -------------------------------------------------------------------------

    def write_config(self) -> Path:
        """config.toml, the hosts.d entry of the local registry and the CNI conflist."""
        for d in (self.root, self.state, self.runc_root, self.base / "net.d", self.base / "opt"):
            d.mkdir(parents=True, exist_ok=True)
        hosts = self.base / "certs.d" / self.registry_host
        hosts.mkdir(parents=True, exist_ok=True)
        (hosts / "hosts.toml").write_text(
            f'server = "http://{self.registry_host}"\n\n'
            f'[host."http://{self.registry_host}"]\n  capabilities = ["pull", "resolve"]\n'
        )
        # The same network crishim installs by default (bridge, host-local, portmap, no per-pod
        # masquerade), on its own bridge and subnet, its IPAM state in this dir.
        conflist = render_default_conflist(POD_CIDR, network="ctd-anchor", bridge=BRIDGE)
        conflist["plugins"][0]["ipam"]["dataDir"] = str(self.base / "cni-ipam")
        (self.base / "net.d" / "10-ctd-anchor.conflist").write_text(json.dumps(conflist, indent=2))
        cri = 'plugins."io.containerd.grpc.v1.cri"'
        config = f"""version = 2
root = "{self.root}"
state = "{self.state}"
disabled_plugins = [
  "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
]

[grpc]
  address = "{self.socket}"

[ttrpc]
  address = "{self.socket}.ttrpc"

[debug]
  level = "info"

[plugins."io.containerd.internal.v1.opt"]
  path = "{self.base / "opt"}"

[{cri}]
  sandbox_image = "{self.sandbox_image}"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  # Pods ask for oom_score_adj -998 (sandboxes) and below; where this process may not lower
  # its own score (no CAP_SYS_RESOURCE) runc's init fails on it. Clamp to the daemon's own.
  restrict_oom_score_adj = true

[{cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"

[{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[{cri}.containerd.runtimes.runc.options]
  BinaryName = "{os.environ.get("CTD_RUNC") or shutil.which("runc") or "runc"}"
  Root = "{self.runc_root}"
  SystemdCgroup = false

# The same handler names as crishim's, so one benchmark runs on both.
[{cri}.containerd.runtimes.crun]
  runtime_type = "io.containerd.runc.v2"

[{cri}.containerd.runtimes.crun.options]
  BinaryName = "{shutil.which("crun") or "crun"}"
  Root = "{self.base / "crun"}"
  SystemdCgroup = false

[{cri}.cni]
  bin_dir = "{CNI_BIN}"
  conf_dir = "{self.base / "net.d"}"
  max_conf_num = 1

[{cri}.registry]
  config_path = "{self.base / "certs.d"}"
"""
        path = self.base / "config.toml"
        path.write_text(config)
        return path

    # -- process -------------------------------------------------------------------------------

    def start(self) -> None:
        """Starts the daemon and waits until its CRI socket answers Version."""
        self.base.mkdir(parents=True, exist_ok=True)
        config = self.write_config()
        self._netns_before = _snapshot_names(NETNS_DIR)
        self._shim_sockets_before = _snapshot_names(SHIM_SOCKETS)
        self._cgroups_before = _cgroup_dirs()
        with open(self.log_file, "ab") as log:
            self.proc = subprocess.Popen(
                [self.binary, "--config", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"containerd exited with {self.proc.returncode}: {self.log_tail()}")
            if self.socket.exists():
                try:
                    self.runtime.Version(pb.VersionRequest(), timeout=2)
                    return
                except grpc.RpcError:
                    pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"containerd did not answer on {self.socket}: {self.log_tail()}")
            time.sleep(0.05)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def log_tail(self, n: int = 2000) -> str:
        try:
            return self.log_file.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def channel(self) -> grpc.Channel:
        if self._channel is None:
            self._channel = grpc.insecure_channel(f"unix://{self.socket}")
        return self._channel

    @property
    def runtime(self) -> api_pb2_grpc.RuntimeServiceStub:
        return api_pb2_grpc.RuntimeServiceStub(self.channel())

    @property
    def images(self) -> api_pb2_grpc.ImageServiceStub:
        return api_pb2_grpc.ImageServiceStub(self.channel())

    def ctr(self, *args: str, timeout: float = 300) -> str:
        """`ctr` against this daemon, in the CRI plugin's namespace."""
        proc = subprocess.run(
            ["ctr", "--address", str(self.socket), "--namespace", NAMESPACE, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"ctr {' '.join(args)} failed: {proc.stderr.strip()}")
        return proc.stdout

    # -- images and content --------------------------------------------------------------------

    def import_images(self, refs: Mapping[str, b.Built]) -> None:
        """Our locally built images (the pause image, say) as an OCI archive through `ctr
        images import`, unpacked on overlayfs, under the names given (containerd's
        io.containerd.image.name annotation in index.json)."""
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tf:
            for rel, data in sorted(b.layout_files(refs).items()):
                info = tarfile.TarInfo(rel)
                info.size = len(data)
                info.mode = 0o644
                tf.addfile(info, io.BytesIO(data))
        archive = self.base / "import.tar"
        archive.write_bytes(buf.getvalue())
        try:
            self.ctr("images", "import", "--snapshotter", "overlayfs", str(archive))
        finally:
            archive.unlink(missing_ok=True)

    def blob_path(self, digest: str) -> Path:
        return self.root / "io.containerd.content.v1.content" / "blobs" / "sha256" / digest.removeprefix("sha256:")

    def remove_image_cold(self, ref: str, digests: list[str], snapshots_left: int = 0, timeout: float = 30.0) -> str:
        """RemoveImage over CRI, then make sure the next pull is cold: no blob of `digests` in
        the content store and no more than `snapshots_left` overlayfs snapshots unpacked.

        The CRI plugin's RemoveImage deletes the image record and leaves blobs and snapshots
        to the garbage collector. This waits for the collector; a blob that outlives the wait is
        removed with `ctr content rm`. Returns how the content went: "gc" or "ctr content rm".
        """
        self.images.RemoveImage(pb.RemoveImageRequest(image=pb.ImageSpec(image=ref)), timeout=120)
        how = "gc"
        deadline = time.monotonic() + timeout
        while True:
            left = [d for d in digests if self.blob_path(d).exists()]
            unpacked = len(self.snapshots())
            if not left and unpacked <= snapshots_left:
                return how
            if time.monotonic() > deadline:
                break
            time.sleep(0.02)
        if left:
            self.ctr("content", "rm", *left)
            how = "ctr content rm"
        still = [d for d in left if self.blob_path(d).exists()]
        if still or len(self.snapshots()) > snapshots_left:
            raise RuntimeError(
                f"after RemoveImage containerd still holds blobs {still} and "
                f"{len(self.snapshots())} snapshots (expected {snapshots_left})"
            )
        return how

    def snapshots(self) -> list[str]:
        """The overlayfs snapshots on disk: a cold pull must find none of its layers unpacked."""
        path = self.root / "io.containerd.snapshotter.v1.overlayfs" / "snapshots"
        return sorted(os.listdir(path)) if path.is_dir() else []

    def has_blobs(self, digests: list[str]) -> bool:
        return all(self.blob_path(d).exists() for d in digests)

    # -- stop and clean ------------------------------------------------------------------------

    def remove_all_pods(self) -> None:
        """Stop and remove every pod sandbox (and so every container) it still has."""
        try:
            pods = self.runtime.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=30).items
        except grpc.RpcError:
            return
        for pod in pods:
            try:
                self.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod.id), timeout=60)
                self.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod.id), timeout=60)
            except grpc.RpcError:
                pass

    def stop(self) -> list[str]:
        """Stops the daemon and removes all it left; returns what had to be cleaned by force."""
        cleaned: list[str] = []
        if self.proc is not None and self.proc.poll() is None:
            self.remove_all_pods()
        if self._channel is not None:
            self._channel.close()
            self._channel = None
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
                    cleaned.append("containerd (killed)")
            self.proc = None
        cleaned += self._clean()
        return cleaned

    def _our_shims(self) -> list[int]:
        """Shim processes started for this daemon: their command line names its socket."""
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if argv and argv[0].endswith(b"containerd-shim-runc-v2") and str(self.socket).encode() in argv:
                pids.append(int(entry.name))
        return pids

    def _clean(self) -> list[str]:
        cleaned: list[str] = []
        for runtime, root in (("runc", self.runc_root), ("crun", self.base / "crun")):
            binary = shutil.which(runtime)
            if binary is None or not root.is_dir():
                continue
            for ns_root in [root, *root.iterdir()]:  # the shim adds the namespace to Root
                if not ns_root.is_dir():
                    continue
                out = subprocess.run(
                    [binary, "--root", str(ns_root), "list", "-q"], capture_output=True, text=True, check=False
                ).stdout.split()
                for cid in out:
                    subprocess.run(
                        [binary, "--root", str(ns_root), "delete", "--force", cid], capture_output=True, check=False
                    )
                    cleaned.append(f"{runtime} container {cid[:12]}")
        for pid in self._our_shims():
            try:
                os.kill(pid, signal.SIGKILL)
                cleaned.append(f"shim {pid}")
            except ProcessLookupError:
                pass
        for name in sorted(_snapshot_names(SHIM_SOCKETS) - self._shim_sockets_before):
            (SHIM_SOCKETS / name).unlink(missing_ok=True)
            cleaned.append(f"shim socket {name}")
        if not self._had_shim_dir:
            for d in (SHIM_SOCKETS, SHIM_SOCKETS.parent):
                try:
                    d.rmdir()
                except OSError:
                    pass
        prefix = str(self.base) + "/"
        with open("/proc/self/mountinfo") as f:
            points = [row.split()[4] for row in f]
        for point in sorted((p for p in points if p.startswith(prefix)), key=len, reverse=True):
            unmount(Path(point))
            cleaned.append(f"mount {point.removeprefix(prefix)}")
        for name in sorted(_snapshot_names(NETNS_DIR) - self._netns_before):
            if name.startswith("cni-"):
                subprocess.run(["ip", "netns", "delete", name], capture_output=True, check=False)
                cleaned.append(f"netns {name}")
        # The CRI plugin's cgroups are /k8s.io/<id> in every hierarchy; only those are touched
        # (other work on the host makes cgroups of its own meanwhile).
        new_cgroups = _cgroup_dirs() - self._cgroups_before
        for path in sorted(new_cgroups, key=lambda p: len(p.parts), reverse=True):
            ours = path.name == NAMESPACE or (CONTAINERD_ID.match(path.name) and path.parent.name == NAMESPACE)
            if ours:
                try:
                    path.rmdir()
                    cleaned.append(f"cgroup {path.relative_to(CGROUP_ROOT)}")
                except OSError:
                    pass
        if Path(f"/sys/class/net/{BRIDGE}").exists():
            subprocess.run(["ip", "link", "delete", BRIDGE], capture_output=True, check=False)
        shutil.rmtree(self.base, ignore_errors=True)
        return cleaned


def rss_kb(pid: int, key: str = "VmRSS") -> int:
    with open(f"/proc/{pid}/status") as f:
        for row in f:
            if row.startswith(key + ":"):
                return int(row.split()[1])
    raise KeyError(key)
