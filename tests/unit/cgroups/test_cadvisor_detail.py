"""The cAdvisor metric set: the cgroup files each value comes from, on v1 and v2, and the samples."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from crishim.cgroups.blkio import device_name, parse_io_stat, read_v1
from crishim.cgroups.cadvisor import Filesystem, NetworkCounters, cgroup_metrics, list_descriptors
from crishim.cgroups.detail import CgroupDetail, read_detail, weight_to_shares
from crishim.cgroups.netdev import parse_net_dev
from crishim.cgroups.records import CgroupStats, CpuStats, IoStats, MemoryStats, ProcessStats, PsiData, PsiStats
from crishim.cgroups.tasks import count_tasks, max_open_files
from crishim.cgroups.v1 import V1Cgroup
from crishim.cgroups.v2 import V2Cgroup

from tests.support.critest import EXPECTED_METRIC_DESCRIPTORS

# What the kubelet's /metrics/cadvisor serves (cri-tools' expected descriptor names after v1.36).
KUBELET_CADVISOR_METRICS = set(EXPECTED_METRIC_DESCRIPTORS)
GIB = 1 << 30


def write(directory: Path, files: dict[str, str]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / name).write_text(text)


def test_descriptors_are_the_kubelet_set_with_cadvisor_labels_and_types() -> None:
    by_name = {d.name: d for d in list_descriptors()}
    assert set(by_name) == KUBELET_CADVISOR_METRICS
    assert by_name["container_cpu_usage_seconds_total"].label_keys == ("id", "name", "image", "cpu")
    assert by_name["container_blkio_device_usage_total"].label_keys == (
        "id",
        "name",
        "image",
        "device",
        "major",
        "minor",
        "operation",
    )
    assert by_name["container_fs_usage_bytes"].label_keys[3:] == ("device",)
    assert by_name["container_memory_failures_total"].label_keys[3:] == ("failure_type", "scope")
    assert by_name["container_ulimits_soft"].label_keys[3:] == ("ulimit",)
    assert by_name["container_memory_failcnt"].type == "counter"
    assert by_name["container_threads_max"].type == "gauge"
    assert all(d.help and d.label_keys[:3] == ("id", "name", "image") for d in by_name.values())


def test_v2_detail_reads_cpu_memory_limits_io_and_tasks(tmp_path: Path) -> None:
    cgroup = V2Cgroup(str(tmp_path), "/pod/c1")
    write(
        Path(cgroup.dir),
        {
            "cpu.stat": "usage_usec 9000000\nuser_usec 6000000\nsystem_usec 3000000\n"
            "nr_periods 40\nnr_throttled 7\nthrottled_usec 2500000\n",
            "cpu.max": "20000 100000\n",
            "cpu.weight": "1\n",
            "memory.current": "4096\n",
            "memory.stat": "anon 1000\nfile 300\nfile_mapped 200\nkernel 150\npgfault 12\npgmajfault 3\n",
            "memory.events": "low 0\nhigh 0\nmax 5\noom 2\noom_kill 1\n",
            "memory.swap.current": "64\n",
            "memory.peak": "8192\n",
            "memory.max": "67108864\n",
            "memory.swap.max": "max\n",
            "memory.min": "0\n",
            "io.stat": "8:0 rbytes=4096 wbytes=8192 rios=1 wios=2 dbytes=0 dios=0\n",
            "cgroup.procs": f"{os.getpid()}\n",
        },
    )
    detail = read_detail(cgroup, os.getpid())
    assert (detail.cpu.user_ns, detail.cpu.system_ns) == (6 * 10**9, 3 * 10**9)
    assert (detail.cpu.periods, detail.cpu.throttled_periods, detail.cpu.throttled_ns) == (40, 7, 25 * 10**8)
    assert detail.memory is not None
    assert (detail.memory.cache, detail.memory.mapped_file, detail.memory.kernel) == (300, 200, 150)
    assert (detail.memory.swap, detail.memory.failcnt, detail.memory.max_usage) == (64, 5, 8192)
    assert detail.oom_kills == 1
    spec = detail.spec
    assert (spec.cpu_period, spec.cpu_quota, spec.cpu_shares) == (100000, 20000, 2)
    assert (spec.memory_limit, spec.memory_swap_limit, spec.memory_reservation) == (64 << 20, 0, 0)
    [disk] = detail.blkio
    assert (disk.major, disk.minor, dict(disk.bytes), dict(disk.ios)) == (
        8,
        0,
        {"Read": 4096, "Write": 8192},
        {"Read": 1, "Write": 2},
    )
    assert detail.tasks.processes == 1
    assert detail.tasks.file_descriptors > 0
    assert detail.max_open_files == max_open_files(os.getpid())


def test_v2_kernel_memory_is_summed_where_memory_stat_has_no_kernel_line(tmp_path: Path) -> None:
    cgroup = V2Cgroup(str(tmp_path), "/c")
    write(
        Path(cgroup.dir),
        {"memory.current": "1\n", "memory.stat": "kernel_stack 10\npagetables 20\nslab 30\nsock 1\npercpu 2\n"},
    )
    detail = read_detail(cgroup)
    assert detail.memory is not None
    assert detail.memory.kernel == 63
    assert (detail.spec.cpu_quota, detail.spec.memory_limit, detail.max_open_files) == (0, 0, None)


def test_v1_detail_reads_each_controller_hierarchy(tmp_path: Path) -> None:
    mounts = {name: str(tmp_path / name) for name in ("cpu", "cpuacct", "memory", "blkio")}
    rel = "/pod/c1"
    write(tmp_path / "cpuacct" / "pod/c1", {"cpuacct.stat": "user 100\nsystem 50\n", "cgroup.procs": ""})
    write(
        tmp_path / "cpu" / "pod/c1",
        {
            "cpu.stat": "nr_periods 10\nnr_throttled 4\nthrottled_time 3000000000\n",
            "cpu.cfs_quota_us": "-1\n",
            "cpu.cfs_period_us": "100000\n",
            "cpu.shares": "1024\n",
            "cgroup.procs": f"{os.getpid()}\n",
        },
    )
    write(
        tmp_path / "memory" / "pod/c1",
        {
            "memory.stat": "cache 1\ntotal_cache 500\ntotal_mapped_file 70\ntotal_swap 9\npgfault 6\npgmajfault 1\n",
            "memory.kmem.usage_in_bytes": "2048\n",
            "memory.failcnt": "3\n",
            "memory.max_usage_in_bytes": "777\n",
            "memory.oom_control": "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
            "memory.limit_in_bytes": "9223372036854771712\n",
            "memory.memsw.limit_in_bytes": "134217728\n",
            "memory.soft_limit_in_bytes": "9223372036854771712\n",
        },
    )
    write(
        tmp_path / "blkio" / "pod/c1",
        {
            "blkio.bfq.io_service_bytes_recursive": "Total 0\n",
            "blkio.throttle.io_service_bytes_recursive": "8:0 Read 100\n8:0 Write 200\n8:0 Total 300\nTotal 300\n",
            "blkio.throttle.io_serviced_recursive": "8:0 Read 1\n8:0 Write 2\n8:0 Total 3\nTotal 3\n",
        },
    )
    detail = read_detail(V1Cgroup(mounts, rel), os.getpid())
    tick_ns = 10**9 // os.sysconf("SC_CLK_TCK")
    assert (detail.cpu.user_ns, detail.cpu.system_ns) == (100 * tick_ns, 50 * tick_ns)
    assert (detail.cpu.periods, detail.cpu.throttled_periods, detail.cpu.throttled_ns) == (10, 4, 3 * 10**9)
    assert detail.memory is not None
    memory = detail.memory
    assert (memory.cache, memory.mapped_file, memory.kernel, memory.swap) == (500, 70, 2048, 9)
    assert (memory.failcnt, memory.max_usage, memory.pgfault, memory.pgmajfault) == (3, 777, 6, 1)
    assert detail.oom_kills == 2
    spec = detail.spec
    assert (spec.cpu_period, spec.cpu_quota, spec.cpu_shares) == (100000, 0, 1024)
    assert (spec.memory_limit, spec.memory_swap_limit, spec.memory_reservation) == (0, 128 << 20, 0)
    [disk] = detail.blkio
    assert dict(disk.bytes) == {"Read": 100, "Write": 200, "Total": 300}
    assert dict(disk.ios) == {"Read": 1, "Write": 2, "Total": 3}
    assert detail.tasks.processes == 1  # cgroup.procs of the cpu hierarchy


def test_weight_converts_back_to_shares_as_cadvisor_does() -> None:
    assert (weight_to_shares(1), weight_to_shares(10000)) == (2, 262144)


def test_block_devices_are_named_from_sysfs(tmp_path: Path) -> None:
    write(tmp_path / "253:1", {"uevent": "MAJOR=253\nMINOR=1\nDEVNAME=vda1\nDEVTYPE=partition\n"})
    assert device_name(253, 1, str(tmp_path)) == "/dev/vda1"
    assert device_name(7, 9, str(tmp_path)) == ""
    devices = parse_io_stat("\n259:0 rbytes=1 wbytes=2 rios=3 wios=4\nbad line\n")
    assert [(d.major, d.minor, d.bytes["Write"], d.ios["Read"]) for d in devices] == [(259, 0, 2, 3)]
    assert read_v1(str(tmp_path / "missing")) == ()


def test_net_dev_gives_every_counter_of_each_interface_but_lo() -> None:
    text = (
        "Inter-|   Receive                                                |  Transmit\n"
        " face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls"
        " carrier compressed\n"
        "    lo:     100       1    0    0    0     0          0         0      100       1    0    0    0     0"
        "       0          0\n"
        "  eth0:    5000      40    1    2    0     0          0         0     6000      50    3    4    0     0"
        "       0          0\n"
    )
    assert parse_net_dev(text) == [NetworkCounters("eth0", 5000, 6000, 1, 3, 40, 50, 2, 4)]


def test_tasks_count_descriptors_and_sockets_of_the_cgroup_processes(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    fd_dir = proc / "42" / "fd"
    fd_dir.mkdir(parents=True)
    (fd_dir / "0").symlink_to("/dev/null")
    (fd_dir / "1").symlink_to("socket:[1234]")
    (fd_dir / "2").symlink_to("pipe:[99]")
    write(proc / "42", {"limits": "Limit  Soft Limit  Hard Limit  Units\nMax open files  1024  4096  files\n"})
    write(proc / "43", {"limits": "Max open files  unlimited  unlimited  files\n"})
    write(tmp_path / "cg", {"cgroup.procs": "42\n77\n"})  # 77 has exited
    counts = count_tasks(str(tmp_path / "cg"), str(proc))
    assert (counts.processes, counts.file_descriptors, counts.sockets) == (2, 3, 1)
    assert max_open_files(42, str(proc)) == 1024
    assert max_open_files(43, str(proc)) is None
    assert max_open_files(0, str(proc)) is None


def _psi(total_ns: int) -> PsiStats:
    return PsiStats(PsiData(total_ns, 0.0, 0.0, 0.0), PsiData(total_ns // 2, 0.0, 0.0, 0.0))


def _stats() -> CgroupStats:
    ts = 1_700_000_000 * 10**9
    return CgroupStats(
        timestamp_ns=ts,
        cpu=CpuStats(ts, 7 * 10**9, None, _psi(4 * 10**9)),
        memory=MemoryStats(ts, 100, 80, 60, 10, 2, 1000, 920, _psi(2 * 10**9)),
        swap=None,
        process=ProcessStats(ts, 5, None),
        io=IoStats(ts, _psi(6 * 10**9)),
    )


def _detail(tmp_path: Path, quota: str) -> CgroupDetail:
    cgroup = V2Cgroup(str(tmp_path), "/c")
    write(
        Path(cgroup.dir),
        {
            "cpu.stat": "user_usec 5000000\nsystem_usec 1000000\nnr_periods 9\nnr_throttled 2\n"
            "throttled_usec 3000000\n",
            "cpu.max": f"{quota} 100000\n",
            "cpu.weight": "39\n",
            "memory.current": "100\n",
            "memory.stat": "file 1\n",
            "io.stat": "8:0 rbytes=10 wbytes=20 rios=1 wios=2\n",
            "cgroup.procs": "",
        },
    )
    return read_detail(cgroup, os.getpid())


def test_a_container_gets_every_metric_but_the_pods_network(tmp_path: Path) -> None:
    fs = Filesystem("/dev/vda1", 4096, 10 * GIB, 1000, 900)
    samples = cgroup_metrics(
        _stats(), "/pod/c", "app", "busybox", detail=_detail(tmp_path, "20000"), filesystem=fs, start_time_ns=5 * 10**9
    )
    keys = {d.name: d.label_keys for d in list_descriptors()}
    assert all(len(s.label_values) == len(keys[s.name]) for s in samples)
    assert all(s.label_values[:3] == ("/pod/c", "app", "busybox") for s in samples)
    emitted = {s.name for s in samples}
    assert emitted == {n for n in KUBELET_CADVISOR_METRICS if "network" not in n and "hugetlb" not in n}
    value = {(s.name, s.label_values[3:]): s.value for s in samples}
    assert value["container_cpu_usage_seconds_total", ("total",)] == 7
    assert value["container_cpu_user_seconds_total", ()] == 5
    assert value["container_cpu_cfs_throttled_seconds_total", ()] == 3
    assert value["container_spec_cpu_quota", ()] == 20000
    assert value["container_spec_cpu_shares", ()] == weight_to_shares(39)
    assert value["container_pressure_cpu_waiting_seconds_total", ()] == 4
    assert value["container_pressure_cpu_stalled_seconds_total", ()] == 2
    assert value["container_fs_limit_bytes", ("/dev/vda1",)] == 10 * GIB
    assert value["container_blkio_device_usage_total", ("", "8", "0", "Write")] == 20
    assert value["container_start_time_seconds", ()] == 5
    assert value["container_last_seen", ()] == 1_700_000_000
    assert value["container_threads", ()] == 5
    assert value["container_ulimits_soft", ("max_open_files",)] == max_open_files(os.getpid())


def test_cfs_metrics_and_the_quota_need_a_quota_as_in_cadvisor(tmp_path: Path) -> None:
    nic = NetworkCounters("eth0", 1, 2, 0, 0, 3, 4, 0, 0)
    samples = cgroup_metrics(_stats(), "/pod", "", "", [nic], detail=_detail(tmp_path, "max"))
    names = {s.name for s in samples}
    assert not {n for n in names if "cfs" in n}
    assert "container_spec_cpu_quota" not in names
    assert {"container_spec_cpu_period", "container_network_receive_packets_total"} <= names
    assert "container_fs_usage_bytes" not in names
    assert "container_ulimits_soft" in names


def test_a_live_socket_of_this_process_is_counted(tmp_path: Path) -> None:
    write(tmp_path / "cg", {"cgroup.procs": f"{os.getpid()}\n"})
    before = count_tasks(str(tmp_path / "cg")).sockets
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM):
        assert count_tasks(str(tmp_path / "cg")).sockets == before + 1
