"""Daemon configuration: built-in defaults, then the main file, then drop-ins, then flags.

Precedence follows what CRI-O users know: /etc/crishim/crishim.toml, then
/etc/crishim/crishim.d/*.toml in name order, each overriding the keys it sets;
command-line flags last. Unknown keys and wrong types are refused with the file
and the dotted key named, because a silently ignored typo is the worst failure
mode a node operator can meet.
"""

from __future__ import annotations

import copy
import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crishim.runtime.errors import ConfigError

DEFAULT_CONFIG_FILE = Path("/etc/crishim/crishim.toml")


@dataclass(slots=True)
class RuntimeHandlerConfig:
    """One OCI runtime handler (a CRI runtime class maps to one of these)."""

    path: str = ""
    root: str = ""
    type: str = "runc"
    # KEP-4216: pull and keep images separately for this handler.
    separate_images: bool = False


@dataclass(slots=True)
class CniConfig:
    conf_dir: str = "/etc/cni/net.d"
    bin_dirs: list[str] = field(default_factory=lambda: ["/opt/cni/bin", "/usr/lib/cni"])
    cache_dir: str = ""
    plugin_timeout: float = 60.0
    # Pod CIDR of the embedded default bridge network (UpdateRuntimeConfig may replace it).
    pod_cidr: str = "10.88.0.0/16"
    install_default: bool = True


@dataclass(slots=True)
class StreamingConfig:
    address: str = "127.0.0.1:0"
    # Lifetime of an exec/attach/port-forward URL, as the kubelet's streaming cache keeps them.
    token_ttl: float = 60.0
    tls_cert: str = ""
    tls_key: str = ""


@dataclass(slots=True)
class RegistriesConfig:
    config_path: str = "/etc/crishim/certs.d"


@dataclass(slots=True)
class MetricsConfig:
    address: str = ""


@dataclass(slots=True)
class ImagesConfig:
    """[images]: pinned pre-fetch and the sharing of downloads between pulls."""

    # Pulled in the background at start-up and pinned (the kubelet never removes them).
    prefetch: list[str] = field(default_factory=list)
    # Seconds between re-pulls of the pre-fetched tags (a moved tag is followed); 0 = never.
    refresh_interval: float = 3600.0
    # Layer downloads at once on the node, shared round-robin between pulls;
    # 0 = max_parallel_layer_downloads.
    max_concurrent_downloads: int = 0
    # Pulls for pods of these namespaces (or annotated crishim.io/pull-priority: high) go first.
    priority_namespaces: list[str] = field(default_factory=lambda: ["kube-system"])


@dataclass(slots=True)
class NriConfig:
    """[nri]: the Node Resource Interface socket and plugins (timeouts in seconds, as containerd's)."""

    enable: bool = True
    socket_path: str = "/var/run/nri/nri.sock"
    # Pre-installed plugins, started with the daemon: executables named NN-name (NN the index).
    plugin_path: str = "/opt/nri/plugins"
    # Their configuration: NN-name.conf, else name.conf.
    plugin_config_path: str = "/etc/nri/conf.d"
    plugin_registration_timeout: float = 5.0
    plugin_request_timeout: float = 2.0
    # Only pre-installed plugins: no socket for external ones.
    disable_connections: bool = False


@dataclass(slots=True)
class Config:
    """The effective daemon settings (top-level keys of crishim.toml).

    `cdi_spec_dirs`: where CDI spec files are read (KEP-4009); a later dir wins over an earlier one.
    """

    socket: str = "/run/crishim/crishim.sock"
    root: str = "/var/lib/crishim"
    state_dir: str = "/run/crishim"
    image_store: str = ""
    # "" chooses at start-up: crun where it probes fully (user namespaces, idmapped and
    # recursive read-only mounts), as CRI-O prefers it, else runc.
    default_runtime: str = ""
    runtimes: dict[str, RuntimeHandlerConfig] = field(
        default_factory=lambda: {
            "runc": RuntimeHandlerConfig(path="runc", type="runc"),
            "crun": RuntimeHandlerConfig(path="crun", type="crun"),
        }
    )
    conmon: str = "conmon"
    sandbox_image: str = ""
    # Pods run no pause container: their IPC and UTS namespaces are pinned by bind mounts (as
    # CRI-O's drop_infra_ctr), and a shared PID namespace is held by a confined catatonit
    # (runtime/sandbox/pidholder.py). A user-namespaced pod keeps one. False: every pod has one.
    drop_infra_container: bool = True
    cgroup_driver: str = ""
    log_level: str = "info"
    log_format: str = "text"
    log_size_max: int = -1
    image_pull_progress_timeout: float = 300.0
    max_parallel_layer_downloads: int = 3
    # containers-policy.json(5) for every pull; absent = accept every image.
    image_policy: str = "/etc/crishim/policy.json"
    # <namespace>.json here replaces image_policy for pulls of that pod namespace.
    image_policy_dir: str = "/etc/crishim/policies"
    cni: CniConfig = field(default_factory=CniConfig)
    streaming: StreamingConfig = field(default_factory=StreamingConfig)
    registries: RegistriesConfig = field(default_factory=RegistriesConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    images: ImagesConfig = field(default_factory=ImagesConfig)
    nri: NriConfig = field(default_factory=NriConfig)
    cdi_spec_dirs: list[str] = field(default_factory=lambda: ["/etc/cdi", "/var/run/cdi"])

    # Derived locations; one place decides where everything lives.
    @property
    def image_store_path(self) -> Path:
        return Path(self.image_store) if self.image_store else Path(self.root) / "images"

    @property
    def download_limit(self) -> int:
        """The node-wide bound on concurrent layer downloads."""
        return self.images.max_concurrent_downloads or self.max_parallel_layer_downloads

    @property
    def db_path(self) -> Path:
        return Path(self.root) / "state.db"

    @property
    def exits_dir(self) -> Path:
        return Path(self.state_dir) / "exits"

    @property
    def netns_dir(self) -> Path:
        return Path(self.state_dir) / "netns"

    @property
    def pid_holder_dir(self) -> Path:
        """The root of the processes holding shared PID namespaces (runtime/sandbox/pidholder.py)."""
        return Path(self.state_dir) / "pid-holder"

    @property
    def attach_dir(self) -> Path:
        return Path(self.state_dir) / "attach"

    @property
    def cni_cache_dir(self) -> Path:
        return Path(self.cni.cache_dir) if self.cni.cache_dir else Path(self.root) / "cni-cache"

    def handler_root(self, name: str) -> Path:
        handler = self.runtimes[name]
        return Path(handler.root) if handler.root else Path(self.state_dir) / name


LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")
HANDLER_TYPES = ("runc", "crun")
CGROUP_DRIVERS = ("", "systemd", "cgroupfs")


def _coerce(value: Any, annotation: str, where: str) -> Any:
    """Checks a TOML value against a field annotation (as a string, from __future__)."""
    if annotation == "str":
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {type(value).__name__} {value!r}")
        return value
    if annotation == "bool":
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if annotation == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if annotation == "float":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if annotation == "list[str]":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where}: expected a list of strings, got {value!r}")
        return list(value)
    raise ConfigError(f"{where}: unsupported type {annotation}")


def _merge_into(target: Any, data: dict[str, Any], source: str, prefix: str = "") -> None:
    fields = {f.name: f for f in dataclasses.fields(target)}
    for key, value in data.items():
        where = f"{source}: key '{prefix}{key}'"
        if key not in fields:
            known = ", ".join(sorted(fields))
            raise ConfigError(f"{where} is unknown (known keys here: {known})")
        annotation = str(fields[key].type)
        current = getattr(target, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: expected a table [{prefix}{key}]")
            _merge_into(current, value, source, f"{prefix}{key}.")
        elif annotation == "dict[str, RuntimeHandlerConfig]":
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: expected tables [runtimes.NAME]")
            for name, table in value.items():
                if not isinstance(table, dict):
                    raise ConfigError(f"{where}.{name}: expected a table [runtimes.{name}]")
                handler = current.get(name) or RuntimeHandlerConfig(
                    path=name, type="crun" if name == "crun" else "runc"
                )
                _merge_into(handler, table, source, f"{prefix}{key}.{name}.")
                current[name] = handler
        else:
            setattr(target, key, _coerce(value, annotation, where))


def check_values(config: Config, source: str) -> None:
    """Checks of single values, run after each file so the error names that file."""
    where = f"{source}: "
    if config.log_level not in LOG_LEVELS:
        raise ConfigError(f"{where}log_level must be one of {', '.join(LOG_LEVELS)}, not {config.log_level!r}")
    if config.log_format not in LOG_FORMATS:
        raise ConfigError(f"{where}log_format must be one of {', '.join(LOG_FORMATS)}, not {config.log_format!r}")
    if config.cgroup_driver not in CGROUP_DRIVERS:
        raise ConfigError(f"{where}cgroup_driver must be 'systemd' or 'cgroupfs', not {config.cgroup_driver!r}")
    for name, handler in config.runtimes.items():
        if handler.type not in HANDLER_TYPES:
            raise ConfigError(f"{where}runtimes.{name}.type must be 'runc' or 'crun', not {handler.type!r}")
        if not handler.path:
            raise ConfigError(f"{where}runtimes.{name}.path is empty: name the runc or crun binary")
    if config.streaming.token_ttl <= 0:
        raise ConfigError(f"{where}streaming.token_ttl must be above 0, not {config.streaming.token_ttl}")
    _check_images(config.images, where)
    _check_nri(config.nri, where)
    for key in ("socket", "root", "state_dir"):
        if not getattr(config, key).startswith("/"):
            raise ConfigError(f"{where}{key} must be an absolute path, not {getattr(config, key)!r}")


def _check_images(images: ImagesConfig, where: str) -> None:
    from crishim.images.errors import InvalidArgument
    from crishim.images.reference import parse_reference

    if images.refresh_interval < 0:
        raise ConfigError(f"{where}images.refresh_interval must be 0 (never) or above, not {images.refresh_interval}")
    if images.max_concurrent_downloads < 0:
        raise ConfigError(f"{where}images.max_concurrent_downloads must be 0 or above")
    for ref in images.prefetch:
        try:
            parse_reference(ref)
        except InvalidArgument as exc:
            raise ConfigError(f"{where}images.prefetch: {exc}") from exc


def _check_nri(nri: NriConfig, where: str) -> None:
    for key in ("plugin_registration_timeout", "plugin_request_timeout"):
        if getattr(nri, key) <= 0:
            raise ConfigError(f"{where}nri.{key} must be above 0 seconds, not {getattr(nri, key)}")
    for key in ("socket_path", "plugin_path", "plugin_config_path"):
        if not getattr(nri, key).startswith("/"):
            raise ConfigError(f"{where}nri.{key} must be an absolute path, not {getattr(nri, key)!r}")


def validate(config: Config) -> None:
    """Cross-field checks on the effective configuration."""
    if config.default_runtime and config.default_runtime not in config.runtimes:
        raise ConfigError(
            f"default_runtime {config.default_runtime!r} is not a configured handler "
            f"(configured: {', '.join(sorted(config.runtimes))})"
        )


def read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc


def dropin_dir_for(config_file: Path) -> Path:
    """crishim.toml -> crishim.d beside it."""
    return config_file.with_name(config_file.stem + ".d")


def load_config(
    config_file: Path | None = None,
    overrides: dict[str, Any] | None = None,
    *,
    require_file: bool = False,
) -> Config:
    """Defaults, then the file (if present), then drop-ins in name order, then overrides."""
    config = Config()
    path = config_file or DEFAULT_CONFIG_FILE
    if path.exists():
        _merge_into(config, read_toml(path), str(path))
        check_values(config, str(path))
    elif require_file:
        raise ConfigError(f"{path}: config file does not exist")
    dropins = dropin_dir_for(path)
    if dropins.is_dir():
        for dropin in sorted(dropins.glob("*.toml")):
            _merge_into(config, read_toml(dropin), str(dropin))
            check_values(config, str(dropin))
    if overrides:
        _merge_into(config, overrides, "command line")
        check_values(config, "command line")
    validate(config)
    return config


def config_to_dict(config: Config) -> dict[str, Any]:
    return copy.deepcopy(dataclasses.asdict(config))


def dump_config(config: Config) -> str:
    import tomli_w

    return tomli_w.dumps(config_to_dict(config))
