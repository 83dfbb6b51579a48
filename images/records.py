"""Plain records the image store hands out (no protobuf: runtime/ converts them)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class ImageRecord:
    """One stored image. `id` is `sha256:` + the config digest, the same whichever registry it came from."""

    id: str
    repo_tags: tuple[str, ...]
    repo_digests: tuple[str, ...]
    size: int
    pinned: bool
    config: dict[str, Any]
    layers: tuple[str, ...]  # chain IDs, lowest first
    manifest_digest: str
    created: float
    image_set: str = ""  # '' = shared by every runtime handler; else the handler it was pulled for
    # The image manifest's annotations: what marks a checkpoint packed as an image (checkpoint_image.py).
    annotations: dict[str, str] = field(default_factory=dict)

    @property
    def user(self) -> str:
        """The config's User (`name`, `uid`, `uid:gid`, `name:group`), '' when unset."""
        inner = self.config.get("config") or {}
        return str(inner.get("User") or "")

    @property
    def uid(self) -> int | None:
        """The numeric user the image runs as, when its User is numeric (CRI Image.uid)."""
        user = self.user.split(":", 1)[0]
        return int(user) if user.isdigit() else None

    @property
    def username(self) -> str:
        """The user name when User is not numeric (CRI Image.username)."""
        user = self.user.split(":", 1)[0]
        return "" if user.isdigit() else user


@dataclass(frozen=True, slots=True)
class PullProgress:
    """One progress report for one layer of one pull."""

    ref: str
    layer: str  # compressed blob digest
    downloaded: int
    total: int  # -1 when the manifest did not say
    done: bool
    cached: bool = False


ProgressFn = Callable[[PullProgress], None]
