"""Hand-encoded protobuf bytes decode to the expected fields: the wire contract.

The bytes are built here from field numbers and wire types alone, never by the
protobuf library, so a renumbered or retyped field in api.proto fails this test.
"""

from __future__ import annotations

from crishim.cri_api import api_pb2

VARINT, LEN = 0, 2


def varint(value: int) -> bytes:
    out = bytearray()
    value &= (1 << 64) - 1
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def key(field: int, wire: int) -> bytes:
    return varint(field << 3 | wire)


def string(field: int, text: str | bytes) -> bytes:
    data = text.encode() if isinstance(text, str) else text
    return key(field, LEN) + varint(len(data)) + data


def message(field: int, body: bytes) -> bytes:
    return key(field, LEN) + varint(len(body)) + body


def number(field: int, value: int) -> bytes:
    return key(field, VARINT) + varint(value)


def map_entry(field: int, k: str, v: str) -> bytes:
    return message(field, string(1, k) + string(2, v))


def test_pod_sandbox_config_decodes() -> None:
    metadata = string(1, "web") + string(2, "uid-1") + string(3, "default") + number(4, 2)
    dns = string(1, "10.0.0.10") + string(2, "svc.cluster.local") + string(3, "ndots:5")
    port = number(1, 0) + number(2, 80) + number(3, 8080) + string(4, "0.0.0.0")
    security = message(1, number(1, 0) + number(2, 1) + number(3, 2))  # namespace_options
    linux = string(1, "/kubepods/pod1") + message(2, security) + map_entry(3, "net.ipv4.ip_forward", "1")
    raw = (
        message(1, metadata)
        + string(2, "web-0")
        + string(3, "/var/log/pods/x")
        + message(4, dns)
        + message(5, port)
        + map_entry(6, "app", "web")
        + map_entry(7, "note", "n")
        + message(8, linux)
    )
    config = api_pb2.PodSandboxConfig.FromString(raw)
    assert (config.metadata.name, config.metadata.uid, config.metadata.namespace, config.metadata.attempt) == (
        "web",
        "uid-1",
        "default",
        2,
    )
    assert config.hostname == "web-0"
    assert config.log_directory == "/var/log/pods/x"
    assert list(config.dns_config.servers) == ["10.0.0.10"]
    assert list(config.dns_config.options) == ["ndots:5"]
    assert config.port_mappings[0].container_port == 80
    assert config.port_mappings[0].host_port == 8080
    assert config.port_mappings[0].protocol == api_pb2.TCP
    assert dict(config.labels) == {"app": "web"}
    assert dict(config.annotations) == {"note": "n"}
    ns = config.linux.security_context.namespace_options
    assert (ns.network, ns.pid, ns.ipc) == (api_pb2.POD, api_pb2.CONTAINER, api_pb2.NODE)
    assert config.linux.cgroup_parent == "/kubepods/pod1"
    assert dict(config.linux.sysctls) == {"net.ipv4.ip_forward": "1"}


def test_container_config_with_mounts_and_security_context_decodes() -> None:
    mount = string(1, "/data") + string(2, "/srv/data") + number(3, 1) + number(5, 2) + number(8, 1)
    image_mount = string(1, "/model") + message(9, string(1, "registry/model:1")) + string(10, "weights")
    caps = string(1, "NET_ADMIN") + string(2, "ALL") + string(3, "NET_BIND_SERVICE")
    security = (
        message(1, caps)
        + number(2, 0)
        + message(5, number(1, 1000))
        + message(12, number(1, 3000))
        + number(7, 1)
        + number(8, 42)
        + number(17, 1)
        + number(11, 1)
        + string(13, "/proc/kcore")
        + message(15, number(1, 2) + string(2, "profiles/audit.json"))
    )
    resources = number(1, 100000) + number(2, 50000) + number(4, 64 << 20) + number(5, -998 & ((1 << 64) - 1))
    raw = (
        message(1, string(1, "app") + number(2, 3))
        + message(2, string(1, "busybox:1.36"))
        + string(3, "sh")
        + string(4, "-c")
        + string(4, "echo hi")
        + string(5, "/work")
        + message(6, string(1, "A") + string(2, "1"))
        + message(7, mount)
        + message(7, image_mount)
        + string(11, "app/3.log")
        + number(12, 1)
        + number(14, 1)
        + message(15, message(1, resources) + message(2, security))
    )
    config = api_pb2.ContainerConfig.FromString(raw)
    assert config.metadata.name == "app"
    assert config.metadata.attempt == 3
    assert config.image.image == "busybox:1.36"
    assert list(config.command) == ["sh"]
    assert list(config.args) == ["-c", "echo hi"]
    assert config.working_dir == "/work"
    assert config.envs[0].key == "A"
    assert config.envs[0].value == b"1"
    first, second = config.mounts
    assert (first.container_path, first.host_path, first.readonly) == ("/data", "/srv/data", True)
    assert first.propagation == api_pb2.PROPAGATION_BIDIRECTIONAL
    assert first.recursive_read_only
    assert second.image.image == "registry/model:1"
    assert second.image_sub_path == "weights"
    assert config.log_path == "app/3.log"
    assert config.stdin
    assert config.tty
    res = config.linux.resources
    assert (res.cpu_period, res.cpu_quota, res.memory_limit_in_bytes, res.oom_score_adj) == (
        100000,
        50000,
        64 << 20,
        -998,
    )
    sc = config.linux.security_context
    assert list(sc.capabilities.add_capabilities) == ["NET_ADMIN"]
    assert list(sc.capabilities.drop_capabilities) == ["ALL"]
    assert list(sc.capabilities.add_ambient_capabilities) == ["NET_BIND_SERVICE"]
    assert sc.run_as_user.value == 1000
    assert sc.run_as_group.value == 3000
    assert sc.readonly_rootfs
    assert sc.no_new_privs
    assert list(sc.supplemental_groups) == [42]
    assert sc.supplemental_groups_policy == api_pb2.Strict
    assert list(sc.masked_paths) == ["/proc/kcore"]
    assert sc.seccomp.profile_type == api_pb2.SecurityProfile.Localhost
    assert sc.seccomp.localhost_ref == "profiles/audit.json"


def test_pull_image_request_with_auth_decodes() -> None:
    auth = (
        string(1, "alice")
        + string(2, "s3cret")
        + string(3, "YWxpY2U6czNjcmV0")
        + string(4, "registry.example")
        + string(5, "id-token")
        + string(6, "reg-token")
    )
    raw = message(1, string(1, "registry.example/app:1") + string(19, "crun")) + message(2, auth)
    request = api_pb2.PullImageRequest.FromString(raw)
    assert request.image.image == "registry.example/app:1"
    assert request.image.runtime_handler == "crun"
    a = request.auth
    assert (a.username, a.password, a.auth, a.server_address, a.identity_token, a.registry_token) == (
        "alice",
        "s3cret",
        "YWxpY2U6czNjcmV0",
        "registry.example",
        "id-token",
        "reg-token",
    )
