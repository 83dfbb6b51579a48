"""Regenerates the protobuf modules of nri.proto and ttrpc.proto (nri_pb2, ttrpc_pb2 and their .pyi).

The modules are committed so that installing crishim needs no grpcio-tools;
tests/unit/runtime/nri/test_nri_stubs.py fails when they drift from the protos.
No gRPC stubs: NRI speaks ttrpc, served by runtime/nri/ttrpc.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

from crishim.cri_api.generate import regenerate

HERE = Path(__file__).resolve().parent
PROTOS = ("nri.proto", "ttrpc.proto")
GENERATED = ("nri_pb2.py", "nri_pb2.pyi", "ttrpc_pb2.py", "ttrpc_pb2.pyi")


def generate_into(out_dir: Path) -> None:
    """Runs protoc (from grpcio-tools) on the protos, writing the modules to out_dir."""
    from grpc_tools import protoc  # dev dependency only

    args = ["protoc", f"-I{HERE}", f"--python_out={out_dir}", f"--pyi_out={out_dir}"]
    if protoc.main([*args, *(str(HERE / name) for name in PROTOS)]) != 0:
        raise RuntimeError("protoc failed on " + ", ".join(PROTOS))


def main() -> int:
    return regenerate(HERE, GENERATED, generate_into)


if __name__ == "__main__":
    sys.exit(main())
