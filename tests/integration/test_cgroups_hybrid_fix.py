"""fix_hybrid_for_crun mounts v2-held controllers as v1 hierarchies, idempotently.

Runs the fix in a child process inside its own mount namespace, so the mounts
it makes vanish with that process and never touch the host.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from crishim.cgroups.detect import CgroupVersion, detect, fix_hybrid_for_crun

pytestmark = pytest.mark.root

CHILD = """
import json, sys
from crishim.cgroups.detect import CgroupLayout, CgroupVersion, fix_hybrid_for_crun
from crishim.oci.mounttable import read_mountinfo
root, controller = sys.argv[1], sys.argv[2]
layout = CgroupLayout(CgroupVersion.HYBRID, {}, "/sys/fs/cgroup/unified", frozenset({controller}), False)
first = fix_hybrid_for_crun(layout, cgroup_root=root)
second = fix_hybrid_for_crun(layout, cgroup_root=root)
mounts = [
    (m.point, m.fstype, list(m.super_options))
    for m in read_mountinfo()
    if m.point.startswith(root)
]
print(json.dumps({"first": first, "second": second, "mounts": mounts}))
"""


def test_fix_mounts_each_v2_controller_once_as_v1(tmp_path: Path) -> None:
    layout = detect()
    if layout.version is not CgroupVersion.HYBRID:
        pytest.skip("needs a hybrid host (v1 hierarchies beside v2)")
    assert "hugetlb" not in layout.v2_controllers, "hugetlb is still on v2: scripts/setup's fix did not run"
    if "hugetlb" not in layout.v1_mounts:
        pytest.skip("this kernel has no hugetlb controller")
    out = subprocess.run(
        [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            sys.executable,
            "-c",
            CHILD,
            str(tmp_path),
            "hugetlb",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    result = json.loads(out.stdout)
    assert result["first"] == ["hugetlb"]
    assert result["second"] == []
    assert [(p, t) for p, t, _ in result["mounts"]] == [(str(tmp_path / "hugetlb"), "cgroup")]
    assert "hugetlb" in result["mounts"][0][2]
    # The host's mount table is untouched.
    assert str(tmp_path) not in Path("/proc/self/mountinfo").read_text()


def test_fix_on_this_host_is_a_no_op_once_fixed() -> None:
    layout = detect()
    if layout.version is not CgroupVersion.HYBRID:
        pytest.skip("needs a hybrid host (v1 hierarchies beside v2)")
    assert not layout.v2_controllers, f"v2 still holds {sorted(layout.v2_controllers)}: scripts/setup's fix did not run"
    assert fix_hybrid_for_crun(layout) == []
    assert detect() == layout
