"""Which handler serves a pod that names no runtime class."""

from __future__ import annotations

from pathlib import Path

from crishim.oci.features import RuntimeFeatures
from crishim.oci.runtime import OciRuntime
from crishim.runtime.bootstrap import choose_default_handler
from crishim.runtime.config import Config
from crishim.runtime.services import Handler

FULL = RuntimeFeatures(recursive_read_only=True, idmap_mounts=True, user_namespaces=True)
NO_IDMAP = RuntimeFeatures(recursive_read_only=True, idmap_mounts=False, user_namespaces=False)


def _handlers(**features: RuntimeFeatures) -> dict[str, Handler]:
    return {
        name: Handler(name, OciRuntime(name, name, Path("/nonexistent"), "crun" if name == "crun" else "runc"), f)
        for name, f in features.items()
    }


def test_crun_that_probes_fully_is_the_default() -> None:
    assert choose_default_handler(Config(), _handlers(runc=NO_IDMAP, crun=FULL)) == "crun"


def test_runc_is_the_default_when_crun_lacks_idmapped_mounts() -> None:
    assert choose_default_handler(Config(), _handlers(runc=NO_IDMAP, crun=NO_IDMAP)) == "runc"


def test_runc_is_the_default_when_crun_is_unusable() -> None:
    assert choose_default_handler(Config(), _handlers(runc=NO_IDMAP)) == "runc"


def test_configured_default_runtime_wins() -> None:
    config = Config()
    config.default_runtime = "runc"
    assert choose_default_handler(config, _handlers(runc=NO_IDMAP, crun=FULL)) == "runc"
