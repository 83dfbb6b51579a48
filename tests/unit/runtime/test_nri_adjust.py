"""Adjustments: merged in plugin order, conflicts refused naming both plugins, applied to the spec."""

from __future__ import annotations

from typing import Any

import pytest
from crishim.runtime.nri import nri_pb2
from crishim.runtime.nri.adjust import AdjustmentConflict, AdjustmentRefused, apply_to_spec, collect_adjustments


def reply(**adjust: Any) -> nri_pb2.CreateContainerResponse:
    return nri_pb2.CreateContainerResponse(adjust=nri_pb2.ContainerAdjustment(**adjust))


def spec() -> dict[str, Any]:
    return {
        "process": {
            "args": ["top"],
            "env": ["PATH=/bin", "OLD=1"],
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
        },
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc", "options": []},
            {"destination": "/data", "type": "bind", "source": "/x", "options": ["rbind"]},
        ],
        "annotations": {"keep": "1", "drop": "2"},
        "linux": {"resources": {"memory": {"limit": 100}}},
    }


def test_every_kind_of_adjustment_reaches_the_spec() -> None:
    first = reply(
        annotations={"added": "yes", "-drop": ""},
        env=[nri_pb2.KeyValue(key="NEW", value="v"), nri_pb2.KeyValue(key="-OLD")],
        mounts=[nri_pb2.Mount(destination="/extra", type="bind", source="/srv", options=["ro", "rbind"])],
        rlimits=[nri_pb2.POSIXRlimit(type="RLIMIT_NOFILE", hard=4096, soft=2048)],
        hooks=nri_pb2.Hooks(poststart=[nri_pb2.Hook(path="/bin/true", args=["true"])]),
        CDI_devices=[nri_pb2.CDIDevice(name="vendor.com/gpu=0")],
    )
    linux = nri_pb2.LinuxContainerAdjustment(
        devices=[nri_pb2.LinuxDevice(path="/dev/fuse", type="c", major=10, minor=229)],
        resources=nri_pb2.LinuxResources(
            memory=nri_pb2.LinuxMemory(limit=nri_pb2.OptionalInt64(value=64 << 20)),
            cpu=nri_pb2.LinuxCPU(cpus="0", quota=nri_pb2.OptionalInt64(value=50000)),
            pids=nri_pb2.LinuxPids(limit=64),
            unified={"memory.high": "50000000"},
        ),
        oom_score_adj=nri_pb2.OptionalInt(value=500),
    )
    second = reply(mounts=[nri_pb2.Mount(destination="-/data")], linux=linux)
    merged = collect_adjustments([("00-a", first), ("10-b", second)])
    assert merged.cdi_devices == ["vendor.com/gpu=0"]
    adjusted = spec()
    apply_to_spec(adjusted, merged)
    assert adjusted["annotations"] == {"keep": "1", "added": "yes"}
    assert adjusted["process"]["env"] == ["PATH=/bin", "NEW=v"]
    assert [m["destination"] for m in adjusted["mounts"]] == ["/proc", "/extra"]
    assert adjusted["process"]["rlimits"] == [{"type": "RLIMIT_NOFILE", "hard": 4096, "soft": 2048}]
    assert adjusted["hooks"]["poststart"] == [{"path": "/bin/true", "args": ["true"], "env": []}]
    assert adjusted["process"]["oomScoreAdj"] == 500
    resources = adjusted["linux"]["resources"]
    assert resources["memory"]["limit"] == 64 << 20
    assert resources["cpu"] == {"cpus": "0", "quota": 50000}
    assert resources["pids"] == {"limit": 64}
    assert resources["unified"] == {"memory.high": "50000000"}
    assert adjusted["linux"]["devices"] == [{"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229}]
    assert resources["devices"] == [{"allow": True, "type": "c", "major": 10, "minor": 229, "access": "rwm"}]


@pytest.mark.parametrize(
    ("one", "two", "item"),
    [
        (
            {"env": [nri_pb2.KeyValue(key="A", value="1")]},
            {"env": [nri_pb2.KeyValue(key="-A")]},
            "environment variable 'A'",
        ),
        ({"annotations": {"k": "1"}}, {"annotations": {"k": "2"}}, "annotation 'k'"),
        (
            {"linux": nri_pb2.LinuxContainerAdjustment(oom_score_adj=nri_pb2.OptionalInt(value=1))},
            {"linux": nri_pb2.LinuxContainerAdjustment(oom_score_adj=nri_pb2.OptionalInt(value=2))},
            "OOM score",
        ),
    ],
)
def test_two_plugins_adjusting_one_item_conflict(one: dict[str, Any], two: dict[str, Any], item: str) -> None:
    with pytest.raises(AdjustmentConflict, match=f"00-a and 10-b both adjust {item}"):
        collect_adjustments([("00-a", reply(**one)), ("10-b", reply(**two))])


def test_no_adjustment_leaves_the_spec_alone() -> None:
    merged = collect_adjustments([("00-a", nri_pb2.CreateContainerResponse())])
    assert merged.empty


def linux_reply(**linux: Any) -> nri_pb2.CreateContainerResponse:
    return reply(linux=nri_pb2.LinuxContainerAdjustment(**linux))


def applied(*replies: nri_pb2.CreateContainerResponse, base: dict[str, Any] | None = None) -> dict[str, Any]:
    named = [(f"{i:02d}-p{i}", r) for i, r in enumerate(replies)]
    adjusted = spec() if base is None else base
    apply_to_spec(adjusted, collect_adjustments(named))
    return adjusted


def test_io_priority_scheduler_and_memory_policy_reach_the_process_and_linux() -> None:
    priority = nri_pb2.LinuxIOPriority(priority=3)
    setattr(priority, "class", nri_pb2.IOPRIO_CLASS_BE)
    scheduler = nri_pb2.LinuxScheduler(
        policy=nri_pb2.SCHED_FIFO, priority=10, flags=[nri_pb2.SCHED_FLAG_RESET_ON_FORK], period=1000
    )
    policy = nri_pb2.LinuxMemoryPolicy(mode=nri_pb2.MPOL_BIND, nodes="0", flags=[nri_pb2.MPOL_F_STATIC_NODES])
    adjusted = applied(linux_reply(io_priority=priority, scheduler=scheduler, memory_policy=policy))
    assert adjusted["process"]["ioPriority"] == {"class": "IOPRIO_CLASS_BE", "priority": 3}
    assert adjusted["process"]["scheduler"] == {
        "policy": "SCHED_FIFO",
        "nice": 0,
        "priority": 10,
        "flags": ["SCHED_FLAG_RESET_ON_FORK"],
        "period": 1000,
    }
    assert adjusted["linux"]["memoryPolicy"] == {"mode": "MPOL_BIND", "nodes": "0", "flags": ["MPOL_F_STATIC_NODES"]}


def test_the_none_class_and_policy_remove_what_the_spec_had() -> None:
    base = spec()
    base["process"].update(ioPriority={"class": "IOPRIO_CLASS_RT", "priority": 0}, scheduler={"policy": "SCHED_RR"})
    none = nri_pb2.LinuxIOPriority()
    adjusted = applied(linux_reply(io_priority=none, scheduler=nri_pb2.LinuxScheduler()), base=base)
    assert "ioPriority" not in adjusted["process"]
    assert "scheduler" not in adjusted["process"]


def test_a_seccomp_policy_replaces_the_containers() -> None:
    base = spec()
    base["linux"]["seccomp"] = {"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"]}]}
    arg = nri_pb2.LinuxSeccompArg(index=1, value=2, value_two=3, op="SCMP_CMP_EQ")
    policy = nri_pb2.LinuxSeccomp(
        default_action="SCMP_ACT_ALLOW",
        default_errno=nri_pb2.OptionalUInt32(value=38),
        architectures=["SCMP_ARCH_X86_64"],
        flags=["SECCOMP_FILTER_FLAG_LOG"],
        syscalls=[
            nri_pb2.LinuxSyscall(
                names=["mkdir", "mkdirat"], action="SCMP_ACT_ERRNO", errno_ret=nri_pb2.OptionalUInt32(value=1)
            ),
            nri_pb2.LinuxSyscall(names=["personality"], action="SCMP_ACT_KILL", args=[arg]),
        ],
    )
    adjusted = applied(linux_reply(seccomp_policy=policy), base=base)
    assert adjusted["linux"]["seccomp"] == {
        "defaultAction": "SCMP_ACT_ALLOW",
        "defaultErrnoRet": 38,
        "architectures": ["SCMP_ARCH_X86_64"],
        "flags": ["SECCOMP_FILTER_FLAG_LOG"],
        "syscalls": [
            {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1},
            {
                "names": ["personality"],
                "action": "SCMP_ACT_KILL",
                "args": [{"index": 1, "value": 2, "valueTwo": 3, "op": "SCMP_CMP_EQ"}],
            },
        ],
    }


def test_namespaces_and_net_devices_are_replaced_added_or_removed_by_key() -> None:
    base = spec()
    base["linux"]["namespaces"] = [{"type": "pid"}, {"type": "network", "path": "/run/netns/a"}, {"type": "ipc"}]
    base["linux"]["netDevices"] = {"eth9": {"name": "old"}}
    namespaces = [
        nri_pb2.LinuxNamespace(type="network", path="/run/netns/b"),
        nri_pb2.LinuxNamespace(type="-ipc"),
        nri_pb2.LinuxNamespace(type="cgroup"),
    ]
    devices = {"eth1": nri_pb2.LinuxNetDevice(name="net1"), "-eth9": nri_pb2.LinuxNetDevice()}
    adjusted = applied(linux_reply(namespaces=namespaces, net_devices=devices), base=base)
    assert adjusted["linux"]["namespaces"] == [
        {"type": "pid"},
        {"type": "network", "path": "/run/netns/b"},
        {"type": "cgroup"},
    ]
    assert adjusted["linux"]["netDevices"] == {"eth1": {"name": "net1"}}


def test_device_cgroup_rules_are_appended_from_every_plugin() -> None:
    deny = nri_pb2.LinuxDeviceCgroup(
        allow=False, type="c", major=nri_pb2.OptionalInt64(value=1), minor=nri_pb2.OptionalInt64(value=3)
    )
    allow_all = nri_pb2.LinuxDeviceCgroup(allow=True, access="r")
    base = spec()
    base["linux"]["resources"]["devices"] = [{"allow": False, "access": "rwm"}]
    one = linux_reply(resources=nri_pb2.LinuxResources(devices=[deny]))
    two = linux_reply(resources=nri_pb2.LinuxResources(devices=[allow_all]))
    adjusted = applied(one, two, base=base)
    assert adjusted["linux"]["resources"]["devices"] == [
        {"allow": False, "access": "rwm"},
        {"allow": False, "type": "c", "major": 1, "minor": 3, "access": "rwm"},
        {"allow": True, "type": "a", "access": "r"},
    ]


def test_the_remaining_memory_values_reach_the_spec() -> None:
    memory = nri_pb2.LinuxMemory(
        kernel=nri_pb2.OptionalInt64(value=1 << 20),
        kernel_tcp=nri_pb2.OptionalInt64(value=2 << 20),
        disable_oom_killer=nri_pb2.OptionalBool(value=True),
        use_hierarchy=nri_pb2.OptionalBool(value=False),
    )
    adjusted = applied(linux_reply(resources=nri_pb2.LinuxResources(memory=memory)))
    assert adjusted["linux"]["resources"]["memory"] == {
        "limit": 100,
        "kernel": 1 << 20,
        "kernelTCP": 2 << 20,
        "disableOOMKiller": True,
        "useHierarchy": False,
    }


def test_rdt_class_and_rdt_fields_become_intel_rdt() -> None:
    rdt = nri_pb2.LinuxRdt(
        schemata=nri_pb2.OptionalRepeatedString(value=["L3:0=f"]),
        enable_monitoring=nri_pb2.OptionalBool(value=True),
    )
    klass = linux_reply(resources=nri_pb2.LinuxResources(rdt_class=nri_pb2.OptionalString(value="gold")))
    adjusted = applied(klass, linux_reply(rdt=rdt))
    assert adjusted["linux"]["intelRdt"] == {"closID": "gold", "schemata": ["L3:0=f"], "enableMonitoring": True}
    base = spec()
    base["linux"]["intelRdt"] = {"closID": "silver", "l3CacheSchema": "L3:0=1"}
    removed = applied(linux_reply(rdt=nri_pb2.LinuxRdt(remove=True)), base=base)
    assert "intelRdt" not in removed["linux"]
    empty_class = linux_reply(resources=nri_pb2.LinuxResources(rdt_class=nri_pb2.OptionalString(value="")))
    assert "intelRdt" not in applied(empty_class, base=base)["linux"]


def test_a_blockio_class_is_refused_naming_the_plugin() -> None:
    klass = linux_reply(resources=nri_pb2.LinuxResources(blockio_class=nri_pb2.OptionalString(value="slow")))
    with pytest.raises(AdjustmentRefused, match="NRI plugin 00-a sets blockio class 'slow'.*no blockio classes"):
        collect_adjustments([("00-a", klass)])
    empty = linux_reply(resources=nri_pb2.LinuxResources(blockio_class=nri_pb2.OptionalString(value="")))
    merged = collect_adjustments([("00-a", empty)])  # an empty class asks for none: nothing to refuse
    assert merged.owners == {"blockio class": "00-a"}
    assert applied(empty)["linux"]["resources"] == spec()["linux"]["resources"]


def one_of_each_linux_kind() -> list[tuple[dict[str, Any], str]]:
    """(LinuxContainerAdjustment fields, the item's name in a conflict) for the kinds set once per container."""
    resources = nri_pb2.LinuxResources
    return [
        ({"io_priority": nri_pb2.LinuxIOPriority(priority=1)}, "I/O priority"),
        ({"seccomp_policy": nri_pb2.LinuxSeccomp(default_action="SCMP_ACT_ALLOW")}, "seccomp policy"),
        ({"scheduler": nri_pb2.LinuxScheduler(policy=nri_pb2.SCHED_BATCH)}, "scheduler"),
        ({"memory_policy": nri_pb2.LinuxMemoryPolicy(mode=nri_pb2.MPOL_LOCAL)}, "memory policy"),
        ({"namespaces": [nri_pb2.LinuxNamespace(type="ipc")]}, "namespace 'ipc'"),
        ({"net_devices": {"eth1": nri_pb2.LinuxNetDevice(name="n")}}, "net device 'eth1'"),
        ({"rdt": nri_pb2.LinuxRdt(clos_id=nri_pb2.OptionalString(value="a"))}, "RDT class"),
        ({"resources": resources(rdt_class=nri_pb2.OptionalString(value="b"))}, "RDT class"),
        ({"rdt": nri_pb2.LinuxRdt(remove=True)}, "RDT class"),
        (
            {"resources": resources(memory=nri_pb2.LinuxMemory(kernel_tcp=nri_pb2.OptionalInt64(value=1)))},
            "memory.kernel_tcp",
        ),
        (
            {"resources": resources(memory=nri_pb2.LinuxMemory(use_hierarchy=nri_pb2.OptionalBool(value=True)))},
            "memory.use_hierarchy",
        ),
    ]


@pytest.mark.parametrize("index", range(len(one_of_each_linux_kind())))
def test_each_new_linux_kind_conflicts_between_two_plugins(index: int) -> None:
    fields, item = one_of_each_linux_kind()[index]
    other = {"rdt": nri_pb2.LinuxRdt(clos_id=nri_pb2.OptionalString(value="z"))} if item == "RDT class" else fields
    with pytest.raises(AdjustmentConflict, match=f"00-a and 10-b both adjust {item}"):
        collect_adjustments([("00-a", linux_reply(**fields)), ("10-b", linux_reply(**other))])
