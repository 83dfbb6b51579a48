"""asyncio without the ssl module until something needs TLS.

`import asyncio` imports ssl (base_events, selector_events and sslproto each try it), and
ssl loads libssl and libcrypto: about 6 MiB of an idle daemon's RSS, for TLS that only a
pull from an https registry or a TLS streaming server uses. So the daemon imports asyncio
while `import ssl` fails, which those three modules are written for (they bind `ssl =
None`), and watches for the first real `import ssl` (httpx, images/registry.py,
streaming/server.py): once ssl has loaded, the three modules get it back, sslproto by
re-running its own code, so asyncio's TLS works as if ssl had been there from the start.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
from collections.abc import Sequence
from types import ModuleType

# The asyncio modules that bind `ssl` at import; sslproto also derives names from it.
_BINDERS = ("asyncio.base_events", "asyncio.selector_events")
_SSLPROTO = "asyncio.sslproto"


def import_asyncio_without_ssl() -> bool:
    """Imports asyncio with ssl held back; False (nothing done) when either is loaded already."""
    if "asyncio" in sys.modules or "ssl" in sys.modules:
        return False
    sys.modules["ssl"] = None  # type: ignore[assignment]  # `import ssl` raises ImportError
    try:
        import asyncio  # noqa: F401
    finally:
        del sys.modules["ssl"]
    sys.meta_path.insert(0, _SslWatcher())
    return True


def _give_asyncio_ssl(ssl: ModuleType) -> None:
    for name in _BINDERS:
        module = sys.modules.get(name)
        if module is not None and getattr(module, "ssl", None) is None:
            module.ssl = ssl  # type: ignore[attr-defined]
    sslproto = sys.modules.get(_SSLPROTO)
    if sslproto is not None and getattr(sslproto, "ssl", None) is None:
        importlib.reload(sslproto)


class _SslWatcher(importlib.abc.MetaPathFinder):
    """Finds nothing itself: on the first `import ssl` it wraps the real loader, then leaves."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != "ssl":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec("ssl")
        if spec is None or spec.loader is None:
            return spec
        spec.loader = _ThenGiveAsyncio(spec.loader)
        return spec


class _ThenGiveAsyncio(importlib.abc.Loader):
    def __init__(self, inner: importlib.abc.Loader) -> None:
        self._inner = inner

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._inner.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._inner.exec_module(module)
        _give_asyncio_ssl(module)
