"""The checks of resource values and request paths refuse what the kernel or the layout would."""

from __future__ import annotations

from pathlib import Path

import pytest
from crishim.cri_api import api_pb2 as pb
from crishim.runtime import cpusets, validate
from crishim.runtime.errors import InvalidArgument


@pytest.mark.parametrize(("text", "members"), [("0", {0}), ("0-2,5", {0, 1, 2, 5}), (" 1 , 3-4\n", {1, 3, 4})])
def test_cpuset_lists_parse_as_the_kernel_writes_them(text: str, members: set[int]) -> None:
    assert cpusets.parse_list(text) == members
    assert cpusets.parse_list(cpusets.format_list(members)) == members


@pytest.mark.parametrize("text", ["", "a", "3-1", "-1", "0-", "1,,2"])
def test_malformed_cpuset_lists_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="invalid literal|bad range"):
        cpusets.parse_list(text)


def test_a_cpuset_naming_an_absent_cpu_names_the_field_and_what_is_online(tmp_path: Path, monkeypatch) -> None:
    online = tmp_path / "online"
    online.write_text("0-1\n")
    monkeypatch.setattr(cpusets, "ONLINE_CPUS", online)
    assert cpusets.check("0-1", "f", memory_nodes=False) == "0-1"
    with pytest.raises(InvalidArgument, match=r"f '1-3' names CPUs .* \(\[2, 3\]\); online: 0-1"):
        cpusets.check("1-3", "f", memory_nodes=False)
    with pytest.raises(InvalidArgument, match="is not a list"):
        cpusets.check("x", "f", memory_nodes=False)


@pytest.mark.parametrize(
    ("resources", "message"),
    [
        (pb.LinuxContainerResources(cpu_period=1), r"cpu_period 1 is outside 1000\.\.1000000"),
        (pb.LinuxContainerResources(cpu_quota=5), "cpu_quota 5 is below"),
        (pb.LinuxContainerResources(cpu_shares=300_000), "cpu_shares 300000 is outside"),
        (pb.LinuxContainerResources(cpu_shares=-2), "cpu_shares -2 is outside"),
        (pb.LinuxContainerResources(oom_score_adj=1001), "oom_score_adj 1001"),
        (pb.LinuxContainerResources(memory_limit_in_bytes=-5), "is negative"),
        (pb.LinuxContainerResources(memory_swap_limit_in_bytes=-2), "below -1"),
        (pb.LinuxContainerResources(memory_swap_limit_in_bytes=1), "needs memory_limit_in_bytes"),
        (
            pb.LinuxContainerResources(memory_limit_in_bytes=2 << 20, memory_swap_limit_in_bytes=1 << 20),
            "below memory_limit_in_bytes",
        ),
        (pb.LinuxContainerResources(hugepage_limits=[pb.HugepageLimit(page_size="3MB")]), "not a huge page size"),
        (pb.LinuxContainerResources(unified={"../x": "1"}), "not a cgroup v2 file name"),
        (pb.LinuxContainerResources(unified={"memory.high": "1\n2"}), "holds a newline"),
    ],
)
def test_resource_values_the_kernel_refuses_are_invalid_arguments(
    resources: pb.LinuxContainerResources, message: str
) -> None:
    with pytest.raises(InvalidArgument, match=message):
        validate.resources(resources, "linux.resources")


def test_resource_values_a_kubelet_sends_pass() -> None:
    validate.resources(
        pb.LinuxContainerResources(
            cpu_period=100_000,
            cpu_quota=-1,
            cpu_shares=2,
            memory_limit_in_bytes=64 << 20,
            memory_swap_limit_in_bytes=-1,
            oom_score_adj=-997,
            cpuset_cpus="0",
            cpuset_mems="0",
            unified={"memory.high": "max"},
        ),
        "linux.resources",
    )


def test_huge_page_sizes_are_named_as_cri_names_them(tmp_path: Path) -> None:
    for name in ("hugepages-2048kB", "hugepages-1048576kB", "hugepages-64kB", "other"):
        (tmp_path / name).mkdir()
    assert validate.supported_page_sizes(tmp_path) == {"2MB", "1GB", "64KB"}


def test_relative_paths_and_climbing_out_are_refused() -> None:
    assert validate.absolute_path("/var/log/pods/x", "f") == "/var/log/pods/x"
    assert validate.absolute_path("", "f") == ""
    with pytest.raises(InvalidArgument, match="f 'logs' must be absolute"):
        validate.absolute_path("logs", "f")
    assert validate.path_inside("app/0.log", "f") == "app/0.log"
    assert validate.path_inside("a/../b.log", "f") == "a/../b.log"
    for bad in ("../x.log", "a/../../x.log", "..", "/../x"):
        with pytest.raises(InvalidArgument, match="climbs out"):
            validate.path_inside(bad, "f")
