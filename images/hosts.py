"""Per-registry settings from `<config_dir>/<host>/hosts.toml` (containerd's format).

Example:

    server = "https://registry.example.com"
    [host."https://mirror.example.com"]
      capabilities = ["pull", "resolve"]
      ca = "/etc/crishim/certs.d/mirror.pem"
    [host."http://10.0.0.5:5000"]
      skip_verify = true

Mirrors are tried in file order, then the upstream `server`. An `http://`
URL means plain HTTP. Without a file, the upstream is `https://<host>`,
except `docker.io` (served by registry-1.docker.io) and loopback hosts
(`localhost`, `127.0.0.0/8`, `::1`), which are plain HTTP by default just
as containerd treats them: a local test registry then needs no setup.
"""

from __future__ import annotations

import ipaddress
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import InvalidArgument

DOCKER_HUB_DOMAIN = "docker.io"
DOCKER_HUB_HOST = "registry-1.docker.io"
ALL_CAPABILITIES = frozenset({"pull", "resolve", "push"})
DEFAULT_DIR = "_default"


@dataclass(frozen=True, slots=True)
class RegistryHost:
    """One endpoint to try for a registry: a mirror or the upstream itself."""

    scheme: str
    netloc: str
    base_path: str = "/v2"
    capabilities: frozenset[str] = ALL_CAPABILITIES
    ca_files: tuple[Path, ...] = ()
    client_certs: tuple[tuple[Path, Path | None], ...] = ()
    skip_verify: bool = False
    headers: tuple[tuple[str, str], ...] = ()
    is_mirror: bool = False

    @property
    def api_root(self) -> str:
        """`https://host/v2`: every distribution API path is appended to this."""
        return f"{self.scheme}://{self.netloc}{self.base_path}"

    @property
    def display(self) -> str:
        return f"{self.scheme}://{self.netloc}"


def is_loopback_host(netloc: str) -> bool:
    """True for `localhost[:port]`, `127.x.y.z[:port]` and `[::1][:port]`."""
    host = netloc
    if host.startswith("["):
        host = host[1 : host.find("]")] if "]" in host else host
    elif host.count(":") == 1:
        host = host.split(":", 1)[0]
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def default_upstream(domain: str) -> RegistryHost:
    """The registry itself when no hosts.toml says otherwise."""
    if domain == DOCKER_HUB_DOMAIN:
        return RegistryHost(scheme="https", netloc=DOCKER_HUB_HOST)
    scheme = "http" if is_loopback_host(domain) else "https"
    return RegistryHost(scheme=scheme, netloc=domain)


def _config_file(config_dir: Path, domain: str) -> Path | None:
    candidates = [domain]
    if domain == DOCKER_HUB_DOMAIN:
        candidates.append(DOCKER_HUB_HOST)
    candidates.append(DEFAULT_DIR)
    for name in candidates:
        path = config_dir / name / "hosts.toml"
        if path.is_file():
            return path
    return None


def _as_paths(value: Any, base: Path, what: str, source: Path) -> tuple[Path, ...]:
    if value is None:
        return ()
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(v, str) for v in items):
        raise InvalidArgument(f"{source}: {what} must be a path or a list of paths")
    return tuple((base / v) if not Path(v).is_absolute() else Path(v) for v in items)


def _client_certs(value: Any, base: Path, source: Path) -> tuple[tuple[Path, Path | None], ...]:
    if value is None:
        return ()
    items = [value] if isinstance(value, str) else value
    pairs: list[tuple[Path, Path | None]] = []
    for item in items:
        if isinstance(item, str):
            pairs.append((base / item, None))
        elif isinstance(item, list) and len(item) == 2 and all(isinstance(v, str) for v in item):
            pairs.append((base / item[0], base / item[1]))
        else:
            raise InvalidArgument(f"{source}: client must be a cert path or [cert, key] pairs")
    return tuple(pairs)


def _headers(value: Any, source: Path) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    if not isinstance(value, dict):
        raise InvalidArgument(f"{source}: header must be a table of name = value or [values]")
    out: list[tuple[str, str]] = []
    for name, v in value.items():
        for item in [v] if isinstance(v, str) else v:
            out.append((name, str(item)))
    return tuple(out)


def _parse_url(url: str, source: Path, override_path: bool) -> tuple[str, str, str]:
    if "://" not in url:
        url = "https://" + url
    scheme, _, rest = url.partition("://")
    if scheme not in ("http", "https"):
        raise InvalidArgument(f"{source}: host URL {url!r} must use http:// or https://")
    netloc, slash, path = rest.partition("/")
    if not netloc:
        raise InvalidArgument(f"{source}: host URL {url!r} has no host")
    path = ("/" + path).rstrip("/") if slash else ""
    if not override_path:
        path = path + "/v2" if not path.endswith("/v2") else path
    return scheme, netloc, path


def _host_entry(url: str, table: dict[str, Any], base: Path, source: Path, *, is_mirror: bool) -> RegistryHost:
    override = bool(table.get("override_path", False))
    scheme, netloc, path = _parse_url(url, source, override)
    caps = table.get("capabilities")
    if caps is not None and (not isinstance(caps, list) or not all(isinstance(c, str) for c in caps)):
        raise InvalidArgument(f"{source}: capabilities of {url!r} must be a list of strings")
    skip = table.get("skip_verify", False)
    if not isinstance(skip, bool):
        raise InvalidArgument(f"{source}: skip_verify of {url!r} must be true or false")
    return RegistryHost(
        scheme=scheme,
        netloc=netloc,
        base_path=path,
        capabilities=frozenset(caps) if caps is not None else ALL_CAPABILITIES,
        ca_files=_as_paths(table.get("ca"), base, "ca", source),
        client_certs=_client_certs(table.get("client"), base, source),
        skip_verify=skip,
        headers=_headers(table.get("header"), source),
        is_mirror=is_mirror,
    )


def load_hosts(domain: str, config_dir: Path | None) -> list[RegistryHost]:
    """Endpoints able to pull for `domain`, in the order to try them: mirrors, then upstream."""
    upstream = default_upstream(domain)
    if config_dir is None:
        return [upstream]
    source = _config_file(config_dir, domain)
    if source is None:
        return [upstream]
    try:
        data = tomllib.loads(source.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise InvalidArgument(f"cannot read registry settings {source}: {exc}") from exc
    base = source.parent
    hosts: list[RegistryHost] = []
    mirrors = data.get("host", {})
    if not isinstance(mirrors, dict):
        raise InvalidArgument(f'{source}: [host."URL"] entries must be tables')
    for url, table in mirrors.items():
        if not isinstance(table, dict):
            raise InvalidArgument(f"{source}: host {url!r} must be a table")
        hosts.append(_host_entry(url, table, base, source, is_mirror=True))
    server = data.get("server")
    if server is not None:
        if not isinstance(server, str):
            raise InvalidArgument(f"{source}: server must be a URL string")
        hosts.append(_host_entry(server, data, base, source, is_mirror=False))
    elif any(k in data for k in ("ca", "skip_verify", "client", "header")):
        # Top-level TLS settings without `server` apply to the default upstream.
        default_url = f"{upstream.scheme}://{upstream.netloc}"
        hosts.append(_host_entry(default_url, data, base, source, is_mirror=False))
    else:
        hosts.append(upstream)
    pullers = [h for h in hosts if "pull" in h.capabilities]
    if not pullers:
        raise InvalidArgument(f"{source}: no host has the 'pull' capability, so nothing can be pulled")
    return pullers
