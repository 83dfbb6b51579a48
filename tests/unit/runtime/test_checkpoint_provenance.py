"""Whether this node can restore an archive, from where config.dump says it was taken."""

from __future__ import annotations

import asyncio
import platform
import shutil
import subprocess

import pytest
from crishim.runtime.checkpoint import provenance
from crishim.runtime.errors import FailedPrecondition

NODE = provenance.Provenance(architecture="amd64", criu_version="3.17.1", crishim_version="0.1.0")


def _config(**recorded: object) -> dict[str, object]:
    origin = provenance.Provenance("amd64", "3.17.1").as_dict()
    origin.update(recorded)
    return {"id": "c1", "crishim": origin}


def test_an_archive_from_this_kind_of_node_is_restorable() -> None:
    provenance.check_restorable(_config(), NODE, "/a.tar")
    provenance.check_restorable(_config(criuVersion="3.16"), NODE, "/a.tar")  # an older CRIU's images


def test_another_engines_archive_is_left_to_criu() -> None:
    provenance.check_restorable({"id": "c1", "rootfsImageName": "busybox"}, NODE, "/a.tar")


def test_another_architecture_is_refused_naming_both() -> None:
    with pytest.raises(FailedPrecondition) as refused:
        provenance.check_restorable(_config(architecture="arm64"), NODE, "/a.tar")
    message = str(refused.value)
    assert "checkpoint '/a.tar' was taken on an arm64 node and this node is amd64" in message
    assert "restore it on an arm64 node" in message


def test_a_newer_criu_is_refused_saying_what_to_upgrade() -> None:
    with pytest.raises(FailedPrecondition, match=r"dumped by CRIU 4\.1, newer than this node's CRIU 3\.17\.1.*"
                       r"upgrade criu on this node to 4\.1 or later"):  # fmt: skip
        provenance.check_restorable(_config(criuVersion="4.1"), NODE, "/a.tar")


def test_an_unknown_criu_version_on_this_node_does_not_refuse() -> None:
    unknown = provenance.Provenance("amd64", "")
    provenance.check_restorable(_config(criuVersion="9.9"), unknown, "/a.tar")


def test_a_newer_format_is_refused_saying_to_upgrade_crishim() -> None:
    with pytest.raises(FailedPrecondition, match="format 2, written by crishim 9.0.*upgrade crishim"):
        provenance.check_restorable(_config(format=2, version="9.0"), NODE, "/a.tar")


def test_node_architecture_uses_the_oci_names() -> None:
    expected = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
    assert provenance.node_architecture() == expected


def test_criu_version_is_what_criu_says() -> None:
    criu = shutil.which("criu")
    if criu is None:
        pytest.skip("criu is not installed")
    said = subprocess.run([criu, "--version"], capture_output=True, text=True, check=False).stdout
    version = asyncio.run(provenance.criu_version())
    assert version
    assert f"Version: {version}" in said
