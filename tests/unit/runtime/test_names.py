"""Name reservation: taken before any work, free again when the create ends."""

from __future__ import annotations

import pytest
from crishim.runtime.errors import AlreadyExists
from crishim.runtime.names import NameRegistry


def nothing_recorded() -> str | None:
    return None


def test_a_name_being_created_is_refused_until_that_create_ends() -> None:
    names = NameRegistry()
    with names.reserved("sb/app_0", "id-1", "container 'app' attempt 0", nothing_recorded):
        with pytest.raises(AlreadyExists, match="container 'app' attempt 0 is being created as id-1"):
            with names.reserved("sb/app_0", "id-2", "container 'app' attempt 0", nothing_recorded):
                pytest.fail("the second reservation must not be granted")
        with names.reserved("sb/app_1", "id-3", "container 'app' attempt 1", nothing_recorded):
            pass  # another attempt number is another name
    with names.reserved("sb/app_0", "id-4", "container 'app' attempt 0", nothing_recorded):
        pass


def test_a_failed_create_frees_its_name() -> None:
    names = NameRegistry()
    with pytest.raises(RuntimeError), names.reserved("k8s_p_ns_uid_0", "id-1", "pod sandbox p", nothing_recorded):
        raise RuntimeError("runc create failed")
    with names.reserved("k8s_p_ns_uid_0", "id-2", "pod sandbox p", nothing_recorded):
        pass


def test_a_recorded_name_is_refused_with_its_holder() -> None:
    names = NameRegistry()
    with pytest.raises(AlreadyExists, match="pod sandbox p already exists as abc; remove it first"):
        with names.reserved("k8s_p_ns_uid_0", "id-1", "pod sandbox p", lambda: "abc"):
            pytest.fail("a recorded name must not be reserved")
    with names.reserved("k8s_p_ns_uid_0", "id-1", "pod sandbox p", nothing_recorded):
        pass  # the refused call left no reservation behind
