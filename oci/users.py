"""Resolving a container user from the image's /etc/passwd and /etc/group.

The files are read from the container rootfs (never the host's), and paths
inside the rootfs are not followed out of it: a symlinked /etc/passwd that
points outside the rootfs is treated as missing.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .errors import InvalidArgument
from .inputs import SupplementalGroupsPolicy, UserSpec


@dataclass(frozen=True, slots=True)
class PasswdEntry:
    name: str
    uid: int
    gid: int


@dataclass(frozen=True, slots=True)
class GroupEntry:
    name: str
    gid: int
    members: tuple[str, ...]


def _read_in_rootfs(rootfs: Path, rel: str) -> str:
    root = os.path.realpath(rootfs)
    path = os.path.realpath(os.path.join(root, rel.lstrip("/")))
    if path != root and not path.startswith(root + os.sep):
        return ""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return ""


def _entries(text: str, min_fields: int) -> Iterator[list[str]]:
    """The colon-separated fields of each line that has `min_fields` of them and is not a comment."""
    for line in text.splitlines():
        parts = line.split(":")
        if len(parts) >= min_fields and not line.startswith("#"):
            yield parts


def parse_passwd(text: str) -> list[PasswdEntry]:
    out = []
    for parts in _entries(text, 4):
        try:
            out.append(PasswdEntry(parts[0], int(parts[2]), int(parts[3])))
        except ValueError:
            continue
    return out


def parse_group(text: str) -> list[GroupEntry]:
    out = []
    for parts in _entries(text, 3):
        try:
            members = tuple(m for m in parts[3].split(",") if m) if len(parts) > 3 else ()
            out.append(GroupEntry(parts[0], int(parts[2]), members))
        except ValueError:
            continue
    return out


def _lookup_user(passwd: list[PasswdEntry], who: str) -> PasswdEntry | None:
    if who.isdigit():
        uid = int(who)
        return next((p for p in passwd if p.uid == uid), None)
    return next((p for p in passwd if p.name == who), None)


def _lookup_group(groups: list[GroupEntry], which: str, user_spec: str) -> int:
    if which.isdigit():
        return int(which)
    for g in groups:
        if g.name == which:
            return g.gid
    raise InvalidArgument(f"group {which!r} of user {user_spec!r} is not in the image's /etc/group")


def resolve_user(
    rootfs: Path | str,
    user_spec: str,
    *,
    supplemental: tuple[int, ...] = (),
    policy: SupplementalGroupsPolicy = SupplementalGroupsPolicy.MERGE,
) -> tuple[int, int, tuple[int, ...]]:
    """(uid, gid, supplemental gids) for an image-style user string.

    Accepts "", "name", "uid", "uid:gid", "name:group", "uid:group",
    "name:gid". A numeric uid absent from /etc/passwd is allowed (gid 0), as
    Docker does; a name absent from it is an error. Under MERGE the groups
    /etc/group lists the user in are added to `supplemental`; under STRICT
    only `supplemental` is used.
    """
    root = Path(rootfs)
    passwd = parse_passwd(_read_in_rootfs(root, "etc/passwd"))
    groups = parse_group(_read_in_rootfs(root, "etc/group"))
    who, _, grp = (user_spec or "0").partition(":")
    entry = _lookup_user(passwd, who or "0")
    if entry is None:
        if not who.isdigit():
            raise InvalidArgument(f"user {who!r} is not in the image's /etc/passwd; use a numeric uid")
        uid, gid, name = int(who), 0, ""
    else:
        uid, gid, name = entry.uid, entry.gid, entry.name
    if grp:
        gid = _lookup_group(groups, grp, user_spec)
    return uid, gid, _supplemental(groups, name, gid, supplemental, policy)


def _supplemental(
    groups: list[GroupEntry], name: str, gid: int, asked: tuple[int, ...], policy: SupplementalGroupsPolicy
) -> tuple[int, ...]:
    out = list(dict.fromkeys(asked))
    if policy is SupplementalGroupsPolicy.MERGE and name:
        for g in groups:
            if name in g.members and g.gid not in out:
                out.append(g.gid)
    # The primary gid leads the list, as containerd reports it and critest expects.
    return (gid, *(g for g in out if g != gid))


def resolve_user_spec(rootfs: Path | str, spec: UserSpec) -> tuple[int, int, tuple[int, ...]]:
    """Resolve a UserSpec: CRI run_as_user/run_as_username first, then the image's USER."""
    if spec.uid is not None:
        text = str(spec.uid) if spec.gid is None else f"{spec.uid}:{spec.gid}"
    elif spec.username:
        text = spec.username if spec.gid is None else f"{spec.username}:{spec.gid}"
    else:
        if spec.gid is not None:
            raise InvalidArgument("run_as_group is set without run_as_user or run_as_username")
        text = spec.image_user
    return resolve_user(rootfs, text, supplemental=spec.supplemental_groups, policy=spec.policy)
