"""Pods and containers as plugins see them: the OCI spec's Linux values and a pod's namespaces in NRI's form."""

from __future__ import annotations

from crishim.runtime.nri import messages, nri_pb2
from crishim.runtime.nri.messages import spec_linux
from crishim.runtime.state.records import SandboxMeta


def test_memory_device_rules_io_priority_and_rdt_reach_the_plugins_view() -> None:
    linux = {
        "resources": {
            "memory": {"limit": 64, "kernelTCP": 8, "swappiness": 10, "disableOOMKiller": True},
            "devices": [{"allow": False, "access": "rwm"}, {"allow": True, "type": "c", "major": 1, "minor": 3}],
        },
        "intelRdt": {"closID": "gold", "schemata": ["L3:0=f"], "enableMonitoring": True},
    }
    process = {"ioPriority": {"class": "IOPRIO_CLASS_IDLE", "priority": 7}}
    message = spec_linux(linux, process)
    memory = message.resources.memory
    assert (memory.limit.value, memory.kernel_tcp.value, memory.swappiness.value) == (64, 8, 10)
    assert memory.disable_oom_killer.value is True
    assert not memory.HasField("kernel")
    rules = message.resources.devices
    assert (rules[0].allow, rules[0].type, rules[0].access, rules[0].HasField("major")) == (False, "a", "rwm", False)
    assert (rules[1].type, rules[1].major.value, rules[1].minor.value) == ("c", 1, 3)
    assert getattr(message.io_priority, "class") == nri_pb2.IOPRIO_CLASS_IDLE
    assert message.io_priority.priority == 7
    assert message.rdt.clos_id.value == "gold"
    assert list(message.rdt.schemata.value) == ["L3:0=f"]
    assert message.rdt.enable_monitoring.value is True


def test_a_spec_without_them_leaves_the_fields_unset() -> None:
    message = spec_linux({"resources": {}}, {})
    assert not message.HasField("io_priority")
    assert not message.HasField("rdt")
    assert not message.resources.memory.HasField("limit")
    assert list(message.resources.devices) == []


def test_a_pod_without_a_pause_process_names_its_pinned_namespaces() -> None:
    meta = SandboxMeta(
        id="s1", name="pod", namespace="ns", uid="u", attempt=0, created_at=1, runtime_handler="runc",
        config=b"", bundle="/b", netns_path="/run/netns/s1", infra_container=False,
        namespace_paths={"uts": "/b/ns/uts", "ipc": "/b/ns/ipc"},
    )  # fmt: skip
    message = messages.pod(meta)
    assert message.pid == 0
    assert [(n.type, n.path) for n in message.linux.namespaces] == [
        ("network", "/run/netns/s1"),
        ("ipc", "/b/ns/ipc"),
        ("uts", "/b/ns/uts"),
    ]
