from __future__ import annotations

from pathlib import Path

from crishim.cgroups.detect import CgroupVersion, default_driver, detect, hybrid_blocks_crun

V1_LINES = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd,release_agent=/x
"""


def _mountinfo(tmp_path: Path, text: str) -> str:
    p = tmp_path / "mountinfo"
    p.write_text(text)
    return str(p)


def test_v1_only_host_maps_each_controller_to_its_mount(tmp_path: Path) -> None:
    layout = detect(_mountinfo(tmp_path, V1_LINES))
    assert layout.version is CgroupVersion.V1
    assert layout.v1_mounts["cpu"] == "/sys/fs/cgroup/cpu,cpuacct"
    assert layout.v1_mounts["cpuacct"] == "/sys/fs/cgroup/cpu,cpuacct"
    assert layout.v1_mounts["memory"] == "/sys/fs/cgroup/memory"
    assert layout.v1_mounts["name=systemd"] == "/sys/fs/cgroup/systemd"
    assert "xattr" not in layout.v1_mounts
    assert layout.v2_mount is None
    assert not layout.psi
    assert not hybrid_blocks_crun(layout)


def test_hybrid_with_v2_controllers_blocks_crun(tmp_path: Path) -> None:
    unified = tmp_path / "unified"
    unified.mkdir()
    (unified / "cgroup.controllers").write_text("hugetlb\n")
    (unified / "cpu.pressure").write_text("some avg10=0.00 avg60=0.00 avg300=0.00 total=0\n")
    text = V1_LINES + f"41 31 0:38 / {unified} rw,relatime - cgroup2 cgroup2 rw\n"
    layout = detect(_mountinfo(tmp_path, text))
    assert layout.version is CgroupVersion.HYBRID
    assert layout.v2_mount == str(unified)
    assert layout.v2_controllers == frozenset({"hugetlb"})
    assert layout.psi
    assert hybrid_blocks_crun(layout)


def test_hybrid_without_v2_controllers_does_not_block_crun(tmp_path: Path) -> None:
    unified = tmp_path / "unified"
    unified.mkdir()
    (unified / "cgroup.controllers").write_text("\n")
    text = V1_LINES + f"41 31 0:38 / {unified} rw,relatime - cgroup2 cgroup2 rw\n"
    assert not hybrid_blocks_crun(detect(_mountinfo(tmp_path, text)))


def test_unified_only_host_is_v2(tmp_path: Path) -> None:
    root = tmp_path / "cg"
    root.mkdir()
    (root / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    text = f"30 23 0:26 / {root} rw,nosuid - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot\n"
    layout = detect(_mountinfo(tmp_path, text))
    assert layout.version is CgroupVersion.V2
    assert layout.v2_controllers == frozenset({"cpuset", "cpu", "io", "memory", "pids"})
    assert not hybrid_blocks_crun(layout)


def test_mount_points_with_spaces_are_unescaped(tmp_path: Path) -> None:
    text = "35 31 0:32 / /mnt/my\\040cg rw - cgroup cgroup rw,memory\n"
    assert detect(_mountinfo(tmp_path, text)).v1_mounts["memory"] == "/mnt/my cg"


def test_driver_is_systemd_only_when_run_systemd_system_exists(tmp_path: Path) -> None:
    assert default_driver(str(tmp_path)) == "cgroupfs"
    (tmp_path / "run/systemd/system").mkdir(parents=True)
    assert default_driver(str(tmp_path)) == "systemd"
