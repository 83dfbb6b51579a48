"""Regenerates api_pb2.py, api_pb2.pyi and api_pb2_grpc.py from api.proto.

The stubs are committed so that installing crishim needs no grpcio-tools;
tests/unit/cri_api/test_stubs.py fails when they drift from the proto.
"""

from __future__ import annotations

import re
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
GENERATED = ("api_pb2.py", "api_pb2.pyi", "api_pb2_grpc.py")


def generate_into(out_dir: Path) -> None:
    """Runs protoc (from grpcio-tools) on api.proto, writing the stubs to out_dir."""
    from grpc_tools import protoc  # dev dependency only

    args = [
        "protoc",
        f"-I{HERE}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        str(HERE / "api.proto"),
    ]
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed on api.proto")
    grpc_stub = out_dir / "api_pb2_grpc.py"
    # protoc writes a top-level import; the stubs live inside a package.
    text = re.sub(r"^import api_pb2 as", "from . import api_pb2 as", grpc_stub.read_text(), flags=re.M)
    grpc_stub.write_text(text)


def regenerate(package_dir: Path, generated: tuple[str, ...], generate: Callable[[Path], None]) -> int:
    """Generates into a temporary directory, then replaces the committed modules: a protoc
    failure leaves the committed ones untouched. Shared with runtime/nri/generate.py."""
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        for name in generated:
            (package_dir / name).write_text((Path(tmp) / name).read_text())
    print("regenerated", ", ".join(generated))
    return 0


def main() -> int:
    return regenerate(HERE, GENERATED, generate_into)


if __name__ == "__main__":
    sys.exit(main())
