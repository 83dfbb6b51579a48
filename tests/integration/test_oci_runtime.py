"""oci/ end to end: specs from build_container_spec, run under conmon by runc and crun."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from crishim.oci import conmon, processes
from crishim.oci.errors import DeadlineExceeded, RuntimeCommandError
from crishim.oci.features import RuntimeFeatures
from crishim.oci.inputs import ContainerSpecInput, IdMapping, Mount, NamespaceMode, Resources, UserNamespace
from crishim.oci.processes import reap
from crishim.oci.runtime import INIT_PROCESS_KEYS, OciRuntime, become_subreaper
from crishim.oci.spec import build_container_spec

from tests.integration.oci_rootfs import make_rootfs

pytestmark = pytest.mark.root

# Per test process: two suites on one node must not remove each other's cgroups.
CGROUP_PARENT = f"crishim-oci-test-{os.getpid()}"
CONTROLLERS = (
    "cpu",
    "cpuacct",
    "cpuset",
    "memory",
    "devices",
    "freezer",
    "blkio",
    "pids",
    "hugetlb",
    "systemd",
    "unified",  # the v2 hierarchy of a hybrid host: runc makes the cgroup there too
)
CRI_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+(Z|[+-]\d\d:\d\d) (stdout|stderr) (F|P) (.*)$")


@dataclass
class Running:
    rt: OciRuntime
    cid: str
    bundle: Path
    log_path: Path
    exit_dir: Path
    result: conmon.ConmonResult


@pytest.fixture(scope="module", autouse=True)
def _subreaper() -> None:
    become_subreaper()


@pytest.fixture(params=["runc", "crun"])
def runtime(request: pytest.FixtureRequest, tmp_path: Path) -> OciRuntime:
    kind = request.param
    path = shutil.which(kind)
    if path is None:
        pytest.skip(f"{kind} is not installed")
    return OciRuntime(kind, path, tmp_path / f"{kind}-state", kind)


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    return make_rootfs(tmp_path / "rootfs")


@pytest.fixture
def _cgroup_parent() -> Iterator[None]:
    yield
    for c in CONTROLLERS:
        d = Path("/sys/fs/cgroup", c, CGROUP_PARENT)
        if d.is_dir():
            for sub in sorted(d.iterdir()):
                if sub.is_dir():
                    sub.rmdir()
            d.rmdir()


def _pid_gone(pid: int) -> bool:
    reap(pid)
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z" and reap(pid) is not None


class Launcher:
    def __init__(self, tmp: Path, rootfs: Path) -> None:
        self.tmp = tmp
        self.rootfs = rootfs
        self.started: list[Running] = []
        self.extra_dirs: list[Path] = []

    def input(self, rt: OciRuntime, args: tuple[str, ...], **kw: Any) -> ContainerSpecInput:
        cid = "t" + uuid.uuid4().hex[:12]
        base = ContainerSpecInput(
            id=cid,
            rootfs=str(self.rootfs),
            args=args,
            hostname="oci-test",
            network_mode=NamespaceMode.CONTAINER,
            pid_mode=NamespaceMode.CONTAINER,
            ipc_mode=NamespaceMode.CONTAINER,
            cgroups_path=f"/{CGROUP_PARENT}/{cid}",
        )
        return replace(base, **kw)

    async def create(
        self, rt: OciRuntime, inp: ContainerSpecInput, before_start: Callable[[int], Awaitable[None]] | None = None
    ) -> Running:
        bundle = self.tmp / "bundles" / inp.id
        bundle.mkdir(parents=True)
        (bundle / "config.json").write_text(json.dumps(build_container_spec(inp)))
        log_path = self.tmp / "logs" / f"{inp.id}.log"
        exit_dir = self.tmp / "exits"
        res = await conmon.launch_container(
            rt,
            conmon.ConmonLaunch(
                cid=inp.id, bundle=bundle, log_path=log_path, exit_dir=exit_dir, socket_dir=self.tmp / "attach"
            ),
            before_start=before_start,
        )
        run = Running(rt, inp.id, bundle, log_path, exit_dir, res)
        self.started.append(run)
        return run

    async def run(self, rt: OciRuntime, inp: ContainerSpecInput) -> Running:
        run = await self.create(rt, inp)
        await rt.start(run.cid)
        return run

    async def cleanup(self) -> None:
        for run in self.started:
            try:
                await run.rt.delete(run.cid, force=True)
            except Exception:
                pass
            for _ in range(200):
                if _pid_gone(run.result.conmon_pid):
                    break
                await asyncio.sleep(0.02)
            assert _pid_gone(run.result.conmon_pid), "conmon still running after delete"
        for d in self.extra_dirs:
            shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
async def launcher(tmp_path: Path, rootfs: Path, _cgroup_parent: None) -> AsyncIterator[Launcher]:
    lc = Launcher(tmp_path, rootfs)
    yield lc
    await lc.cleanup()


async def wait_exit(run: Running, limit: float = 10.0) -> int:
    for _ in range(int(limit / 0.02)):
        exited = conmon.read_exit(run.exit_dir, run.cid)
        if exited is not None:
            return exited[0]
        await asyncio.sleep(0.02)
    raise AssertionError(f"{run.cid} did not exit within {limit}s")


async def output_of(launcher: Launcher, rt: OciRuntime, script: str, **kw: object) -> list[str]:
    run = await launcher.run(rt, launcher.input(rt, ("sh", "-c", script), **kw))
    assert await wait_exit(run) == 0, run.log_path.read_text()
    return [CRI_LINE.match(line).group(4) for line in run.log_path.read_text().splitlines()]  # type: ignore[union-attr]


async def test_output_goes_to_cri_log_and_exit_code_to_exit_file(launcher: Launcher, runtime: OciRuntime) -> None:
    run = await launcher.run(runtime, launcher.input(runtime, ("sh", "-c", "echo hello; echo oops >&2; exit 3")))
    assert await wait_exit(run) == 3
    lines = run.log_path.read_text().splitlines()
    parsed = [CRI_LINE.match(line) for line in lines]
    assert all(parsed), lines
    assert {(m.group(2), m.group(3), m.group(4)) for m in parsed if m} == {
        ("stdout", "F", "hello"),
        ("stderr", "F", "oops"),
    }


async def test_kill_stops_running_container(launcher: Launcher, runtime: OciRuntime) -> None:
    run = await launcher.run(runtime, launcher.input(runtime, ("sleep", "100")))
    assert (await runtime.state(run.cid))["status"] == "running"
    assert run.result.pid in await runtime.ps(run.cid)
    await runtime.kill(run.cid, signal.SIGKILL)
    assert await wait_exit(run) == 137


async def test_signal_init_reaches_the_init_without_the_runtime(launcher: Launcher, runtime: OciRuntime) -> None:
    run = await launcher.run(runtime, launcher.input(runtime, ("sleep", "100")))
    assert runtime.signal_init(run.cid, signal.SIGKILL) is True
    assert await wait_exit(run) == 137
    # The init is gone: nothing to signal, which is no failure (runc would answer "not running").
    assert runtime.signal_init(run.cid, signal.SIGKILL) is True
    await runtime.delete(run.cid, force=True)
    assert runtime.signal_init(run.cid, signal.SIGKILL) is False  # no state at all


async def test_signal_init_leaves_a_reused_pid_alone(launcher: Launcher, runtime: OciRuntime) -> None:
    """A state whose start time is not the process's names a PID now reused: nothing is signalled."""
    run = await launcher.run(runtime, launcher.input(runtime, ("sleep", "100")))
    file, _, start_key = INIT_PROCESS_KEYS[runtime.kind]
    state_file = runtime.root / run.cid / file
    recorded = state_file.read_bytes()
    state = json.loads(recorded)
    state[start_key] = int(state[start_key]) + 1
    state_file.write_text(json.dumps(state))
    assert runtime.signal_init(run.cid, signal.SIGKILL) is True  # "gone", as far as this container goes
    await asyncio.sleep(0.1)
    assert _running(run.result.pid)
    state_file.write_bytes(recorded)
    await runtime.kill(run.cid, signal.SIGKILL)
    assert await wait_exit(run) == 137


async def test_exec_sync_captures_output_and_exit_code(launcher: Launcher, runtime: OciRuntime) -> None:
    run = await launcher.run(runtime, launcher.input(runtime, ("sleep", "100")))
    proc = {
        "args": ["sh", "-c", "echo out; echo err >&2; exit 4"],
        "cwd": "/",
        "env": ["PATH=/bin"],
        "user": {"uid": 0, "gid": 0},
    }
    res = await runtime.exec(run.cid, proc, time_limit=10)
    assert (res.exit_code, res.stdout, res.stderr) == (4, b"out\n", b"err\n")


async def test_exec_sync_timeout_kills_and_reaps_the_process(launcher: Launcher, runtime: OciRuntime) -> None:
    run = await launcher.run(runtime, launcher.input(runtime, ("sleep", "100")))
    proc = {"args": ["sleep", "77"], "cwd": "/", "env": ["PATH=/bin"], "user": {"uid": 0, "gid": 0}}
    with pytest.raises(DeadlineExceeded):
        await runtime.exec(run.cid, proc, time_limit=0.5)
    assert await runtime.ps(run.cid) == [run.result.pid]
    zombies = our_zombies()
    assert zombies == []


def read(path: Path) -> str:
    return path.read_text()


def run_cmd(*args: str) -> None:
    subprocess.run(args, check=True)


def _running(pid: int) -> bool:
    """Whether `pid` is a process that has not exited (a zombie has)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def our_zombies() -> list[Path]:
    return [p for p in Path("/proc").iterdir() if p.name.isdigit() and _is_our_zombie(p)]


def _is_our_zombie(p: Path) -> bool:
    try:
        fields = p.joinpath("stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return fields[0] == "Z" and int(fields[1]) == os.getpid()


async def test_exec_sync_output_is_capped(launcher: Launcher, runtime: OciRuntime) -> None:
    run = await launcher.run(runtime, launcher.input(runtime, ("sleep", "100")))
    proc = {
        "args": ["sh", "-c", "head -c 300000 /dev/zero"],
        "cwd": "/",
        "env": ["PATH=/bin"],
        "user": {"uid": 0, "gid": 0},
    }
    res = await runtime.exec(run.cid, proc, time_limit=10, output_cap=1000)
    assert (len(res.stdout), res.stdout_truncated, res.exit_code) == (1000, True, 0)


async def test_update_changes_memory_cgroup(launcher: Launcher, runtime: OciRuntime) -> None:
    inp = launcher.input(runtime, ("sleep", "100"), resources=Resources(memory_limit=64 << 20))
    run = await launcher.run(runtime, inp)
    limit_file = Path("/sys/fs/cgroup/memory", CGROUP_PARENT, run.cid, "memory.limit_in_bytes")
    assert int(read(limit_file)) == 64 << 20
    await runtime.update(run.cid, {"memory": {"limit": 96 << 20, "swap": 96 << 20}})
    assert int(read(limit_file)) == 96 << 20


async def test_before_start_runs_while_conmon_waits_to_fork(launcher: Launcher, runtime: OciRuntime) -> None:
    """The hook (under the systemd driver: the move into conmon's scope) sees conmon alone,
    before the monitor or the runtime exists, so everything conmon starts inherits its cgroup."""
    seen: dict[str, object] = {}

    async def before_start(pid: int) -> None:
        seen["exe"] = os.path.basename(os.readlink(f"/proc/{pid}/exe"))
        seen["children"] = processes.children(pid)
        seen["runtime state"] = runtime.has_state(cid)

    inp = launcher.input(runtime, ("sleep", "100"))
    cid = inp.id
    run = await launcher.create(runtime, inp, before_start=before_start)
    assert seen == {"exe": "conmon", "children": [], "runtime state": False}
    await runtime.start(run.cid)
    assert (await runtime.state(run.cid))["status"] == "running"


async def test_a_failing_before_start_leaves_no_conmon_and_no_container(
    launcher: Launcher, runtime: OciRuntime
) -> None:
    conmons: list[int] = []

    async def before_start(pid: int) -> None:
        conmons.append(pid)
        raise RuntimeError("no scope for you")

    inp = launcher.input(runtime, ("sleep", "100"))
    with pytest.raises(RuntimeError, match="no scope for you"):
        await launcher.create(runtime, inp, before_start=before_start)
    assert len(conmons) == 1
    assert not _running(conmons[0]), "conmon was left running"
    assert reap(conmons[0]) is None, "conmon was left uncollected"
    assert not runtime.has_state(inp.id)
    assert not conmon.pid_file(launcher.tmp / "bundles" / inp.id).exists()
    assert our_zombies() == []


async def test_missing_command_fails_create_with_runtime_message(launcher: Launcher, runtime: OciRuntime) -> None:
    with pytest.raises(RuntimeCommandError) as info:
        await launcher.create(runtime, launcher.input(runtime, ("/bin/no-such-thing",)))
    assert "no-such-thing" in str(info.value)
    assert await runtime.list_containers() == [] or all(
        c["status"] != "created" for c in await runtime.list_containers()
    )


async def test_default_capabilities_visible_in_proc_status(launcher: Launcher, runtime: OciRuntime) -> None:
    lines = await output_of(launcher, runtime, "grep CapBnd /proc/self/status")
    assert lines == ["CapBnd:\t00000000a80425fb"]


async def test_privileged_gets_host_bounding_set(launcher: Launcher, runtime: OciRuntime) -> None:
    host = next(ln for ln in read(Path("/proc/self/status")).splitlines() if ln.startswith("CapBnd"))
    lines = await output_of(launcher, runtime, "grep -E 'CapBnd|Seccomp:' /proc/self/status", privileged=True)
    assert lines == [host, "Seccomp:\t0"]


async def test_default_seccomp_filter_is_applied(launcher: Launcher, runtime: OciRuntime) -> None:
    lines = await output_of(launcher, runtime, "grep 'Seccomp:' /proc/self/status")
    assert lines == ["Seccomp:\t2"]


async def test_readonly_rootfs_refuses_writes(launcher: Launcher, runtime: OciRuntime) -> None:
    lines = await output_of(
        launcher, runtime, "touch /x 2>/dev/null && echo wrote || echo refused", readonly_rootfs=True
    )
    assert lines == ["refused"]


async def test_sysctls_are_applied(launcher: Launcher, runtime: OciRuntime) -> None:
    lines = await output_of(
        launcher,
        runtime,
        "cat /proc/sys/kernel/shm_rmid_forced /proc/sys/net/ipv4/ip_forward",
        sysctls={"kernel.shm_rmid_forced": "1", "net.ipv4.ip_forward": "1"},
    )
    assert lines == ["1", "1"]


async def test_user_and_groups_from_image(launcher: Launcher, runtime: OciRuntime) -> None:
    from crishim.oci.inputs import UserSpec

    lines = await output_of(launcher, runtime, "id", user=UserSpec(image_user="app"))
    assert lines == ["uid=1000(app) gid=1000(app) groups=1000(app),2000(extra)"]


async def test_features_probe_matches_handler(runtime: OciRuntime) -> None:
    # Debian's runc 1.1.5 knows `rro` (mount_setattr) but not idmapped mounts; crun 1.8.1 knows both.
    feats = await runtime.features()
    idmap = runtime.kind == "crun"
    assert feats == RuntimeFeatures(recursive_read_only=True, idmap_mounts=idmap, user_namespaces=idmap)
    assert await runtime.features() is feats


async def test_recursive_readonly_mount_covers_submounts(
    launcher: Launcher, runtime: OciRuntime, tmp_path: Path
) -> None:
    rt = runtime
    src = tmp_path / "vol"
    (src / "sub").mkdir(parents=True)
    run_cmd("mount", "-t", "tmpfs", "tmpfs", str(src / "sub"))
    try:
        mount = Mount("/data", str(src), readonly=True, recursive_readonly=True)
        lines = await output_of(
            launcher,
            rt,
            "touch /data/sub/f 2>/dev/null && echo wrote || echo refused",
            mounts=(mount,),
            features=await rt.features(),
        )
        assert lines == ["refused"]
    finally:
        run_cmd("umount", str(src / "sub"))


async def test_user_namespace_with_idmapped_volume_on_crun(launcher: Launcher, tmp_path: Path) -> None:
    rt = OciRuntime("crun", shutil.which("crun") or "crun", tmp_path / "crun-state", "crun")
    # The mapped root must be able to reach the rootfs: pytest's tmp root is 0700.
    launcher.rootfs = make_rootfs(Path(tempfile.mkdtemp(prefix="oci-userns-")) / "rootfs")
    launcher.extra_dirs.append(launcher.rootfs.parent)
    launcher.rootfs.parent.chmod(0o755)
    vol = tmp_path / "vol"
    vol.mkdir()
    (vol / "file").write_text("x")
    os.chmod(tmp_path, 0o755)
    m = (IdMapping(0, 200000, 65536),)
    lines = await output_of(
        launcher,
        rt,
        "cat /proc/self/uid_map; stat -c %u /data/file",
        userns=UserNamespace(m, m),
        mounts=(Mount("/data", str(vol)),),
        features=await rt.features(),
    )
    assert lines[0].split() == ["0", "200000", "65536"]
    assert lines[1] == "0"
