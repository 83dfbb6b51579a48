"""Generated protobuf and gRPC modules compared for what their protos say, not which toolchain wrote them.

grpcio-tools and protoc stamp their own version into what they generate (the gRPC stub's
GRPC_GENERATED_VERSION, the protobuf module's header and runtime check). A newer
grpcio-tools on PyPI changes those stamps and nothing else, so a drift check compares the
modules with the stamps blanked: it fails when a proto changed and the modules were not
generated again, not when the generator had a release.
"""

from __future__ import annotations

import re

_STAMPS = (
    (re.compile(r"GRPC_GENERATED_VERSION = '[^']*'"), "GRPC_GENERATED_VERSION = '*'"),
    (re.compile(r"# Protobuf Python Version: .*"), "# Protobuf Python Version: *"),
    (re.compile(r"ValidateProtobufRuntimeVersion\(.*?\)", re.DOTALL), "ValidateProtobufRuntimeVersion(*)"),
)


def without_version_stamps(text: str) -> str:
    for pattern, blank in _STAMPS:
        text = pattern.sub(blank, text)
    return text
