"""asyncio imported without ssl (runtime/lazyssl.py): no ssl at idle, working TLS once loaded.

Each check runs in a fresh interpreter: pytest itself has asyncio and ssl loaded.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.support.tls import self_signed

# A TLS echo over asyncio's own TLS (sslproto), which the streaming server's TLS uses.
TLS_ROUND_TRIP = """
import sys
from crishim.runtime.lazyssl import import_asyncio_without_ssl

assert import_asyncio_without_ssl()
import asyncio
assert "ssl" not in sys.modules and "_ssl" not in sys.modules, "ssl loaded with asyncio"
assert "_hashlib" not in sys.modules, "libcrypto loaded with asyncio"

import ssl

cert, key = sys.argv[1], sys.argv[2]

async def main() -> bytes:
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    client_ctx = ssl.create_default_context(cafile=cert)

    async def echo(reader, writer):
        writer.write(await reader.readline())
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_ctx, server_hostname="localhost")
    writer.write(b"over tls\\n")
    line = await reader.readline()
    assert writer.get_extra_info("peercert")["subject"], "no peer certificate: not TLS"
    writer.close()
    server.close()
    return line

assert asyncio.run(main()) == b"over tls\\n"
print("ok")
"""


def test_asyncio_tls_works_after_ssl_is_loaded_late(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path, "localhost")
    done = subprocess.run(
        [sys.executable, "-c", TLS_ROUND_TRIP, str(cert), str(key)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_nothing_is_done_when_asyncio_is_already_loaded() -> None:
    code = (
        "import asyncio, sys\n"
        "from crishim.runtime.lazyssl import import_asyncio_without_ssl\n"
        "assert not import_asyncio_without_ssl()\n"
        "assert sys.modules['asyncio.base_events'].ssl is sys.modules['ssl']\n"
        "assert not any(type(f).__name__ == '_SslWatcher' for f in sys.meta_path)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=30)


def test_serve_imports_neither_ssl_nor_hashlib_before_a_pull() -> None:
    """What `crishim serve` loads before it builds the services: grpc, the CRI stubs, the servicers."""
    code = (
        "import sys\n"
        "from crishim.runtime.lazyssl import import_asyncio_without_ssl\n"
        "import_asyncio_without_ssl()\n"
        "import grpc\n"
        "from crishim.runtime import server, bootstrap\n"
        "from crishim.runtime.rpc import images, runtime\n"
        "from crishim.images import pause, store\n"
        "loaded = sorted({'ssl', '_ssl', 'hashlib', '_hashlib', 'secrets', 'hmac'} & set(sys.modules))\n"
        "assert not loaded, loaded\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
