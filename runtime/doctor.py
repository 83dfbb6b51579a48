"""`crishim doctor`: what this node lacks to run pods, and which package brings it."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from crishim.runtime.config import Config
from crishim.runtime.nri.report import nri_summary


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    ok: bool
    detail: str
    warning: bool = False


def _binary(name: str, path: str, package: str) -> Check:
    found = shutil.which(path)
    if not found:
        return Check(name, False, f"{path} not found; install the Debian package '{package}'")
    try:
        out = subprocess.run([found, "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Check(name, False, f"{found} does not run: {exc}")
    first = out.strip().splitlines()[0] if out.strip() else "unknown version"
    return Check(name, True, f"{found} ({first})")


def _cni_plugins(config: Config) -> Check:
    wanted = ("bridge", "host-local", "loopback", "portmap")
    missing = [p for p in wanted if not any((Path(d) / p).exists() for d in config.cni.bin_dirs)]
    if missing:
        return Check(
            "CNI plugins",
            False,
            f"missing {', '.join(missing)} in {', '.join(config.cni.bin_dirs)}; "
            "install the Debian package 'containernetworking-plugins'",
        )
    return Check("CNI plugins", True, f"bridge, host-local, loopback, portmap in {', '.join(config.cni.bin_dirs)}")


def _overlayfs(modules: Path = Path("/lib/modules")) -> Check:
    """Registered, or a module the kernel loads on the first overlay mount (a fresh Debian boot)."""
    if "overlay" in Path("/proc/filesystems").read_text():
        return Check("overlayfs", True, "supported by the kernel")
    try:
        dep = (modules / os.uname().release / "modules.dep").read_text()
    except OSError:
        dep = ""
    if "/overlay.ko" in dep:
        return Check("overlayfs", True, "available as a module, loaded on the first overlay mount")
    return Check("overlayfs", False, "the kernel lacks overlayfs: install a kernel with the 'overlay' module")


def _criu() -> Check:
    """CheckpointContainer needs a criu that passes `criu check` on this kernel."""
    found = shutil.which("criu")
    if not found:
        return Check("CRIU", False, "not installed; checkpoint and restore are unavailable (Debian package 'criu')",
                     warning=True)  # fmt: skip
    try:
        run = subprocess.run([found, "check"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Check("CRIU", False, f"{found} check did not finish: {exc}; checkpoint is unavailable", warning=True)
    if run.returncode != 0:
        last = (run.stderr or run.stdout).strip().splitlines()[-1:] or ["no output"]
        return Check("CRIU", False, f"{found} check fails on this kernel ({last[0]}); checkpoint is unavailable",
                     warning=True)  # fmt: skip
    return Check("CRIU", True, f"{found}: criu check passes")


def _cgroups(config: Config, fix: bool) -> list[Check]:
    from crishim.cgroups import detect

    checks = []
    layout = detect.detect()
    driver = config.cgroup_driver or detect.default_driver()
    checks.append(Check("cgroups", True, f"{layout.version.name.lower()}, driver {driver}"))
    if detect.hybrid_blocks_crun():
        if fix:
            detect.fix_hybrid_for_crun()
        if detect.hybrid_blocks_crun():
            checks.append(
                Check(
                    "crun on hybrid cgroups",
                    False,
                    "the cgroup v2 hierarchy holds controllers beside v1 ones and crun refuses to run; "
                    "run 'crishim doctor --fix' to mount them as v1 hierarchies",
                    warning="crun" not in config.runtimes,
                )
            )
        else:
            checks.append(Check("crun on hybrid cgroups", True, "v2 controllers remounted as v1 hierarchies"))
    elif layout.version.name == "HYBRID":
        checks.append(Check("crun on hybrid cgroups", True, "the v2 hierarchy holds no controllers; crun can run"))
    psi = layout.psi
    checks.append(
        Check(
            "PSI",
            psi,
            "pressure stall information available"
            if psi
            else "no PSI files (boot with psi=1 on cgroup v2); stats omit PSI",
            warning=not psi,
        )
    )
    return checks


def _idmap(config: Config) -> Check:
    import asyncio
    import tempfile

    from crishim.oci.runtime import OciRuntime

    parts = []
    for name, handler in config.runtimes.items():
        path = shutil.which(handler.path) or handler.path
        try:
            with tempfile.TemporaryDirectory(prefix="crishim-doctor-") as root:
                runtime = OciRuntime(name, path, Path(root), handler.type)  # type: ignore[arg-type]
                features = asyncio.run(runtime.features())
        except Exception as exc:  # noqa: BLE001 - doctor reports, never crashes
            parts.append(f"{name}: probe failed ({exc})")
            continue
        parts.append(
            f"{name}: idmap mounts {'yes' if features.idmap_mounts else 'no'}, "
            f"recursive read-only {'yes' if features.recursive_read_only else 'no'}"
        )
    return Check("runtime features", True, "; ".join(parts))


def _apparmor() -> Check:
    """AppArmor on or off; if on, the parser and crishim's default profile (compiled here as a check)."""
    import asyncio

    from crishim.oci import apparmor, apparmor_profile

    name = apparmor.DEFAULT_PROFILE_NAME
    if not apparmor.apparmor_enabled():
        return Check("AppArmor", True, "not enabled in this kernel; containers run without an AppArmor profile")
    parser = apparmor_profile.find_parser()
    loaded = name in apparmor.loaded_profiles()
    state = f"{name} loaded" if loaded else f"{name} not loaded yet (crishim serve loads it at start-up)"
    if parser is None:
        return Check(
            "AppArmor",
            loaded,
            f"enabled; apparmor_parser not found, install the Debian package 'apparmor'; {state}",
        )
    text = apparmor_profile.render_default_profile(name, label=apparmor_profile.daemon_label())
    rc, err = asyncio.run(apparmor_profile.run_parser(parser, ["-Q", "-K"], text))
    if rc != 0:
        return Check("AppArmor", False, f"enabled; {parser} refuses the {name} profile: {err}")
    return Check("AppArmor", True, f"enabled; {parser}; {state}")


def run_checks(config: Config, fix: bool = False) -> list[Check]:
    checks = [
        Check(
            "running as root",
            os.geteuid() == 0,
            "yes" if os.geteuid() == 0 else "crishim serve needs root (mounts, namespaces, cgroups)",
        )
    ]
    for name, handler in config.runtimes.items():
        checks.append(_binary(f"runtime {name}", handler.path, handler.type))
    checks.append(_binary("conmon", config.conmon, "conmon"))
    cat = shutil.which("catatonit")
    checks.append(
        Check("catatonit", bool(cat), cat or "not found; install 'catatonit' (the built-in pause image needs it)")
    )
    checks.append(_cni_plugins(config))
    checks.append(_overlayfs())
    checks.extend(_cgroups(config, fix))
    checks.append(_idmap(config))
    checks.append(_apparmor())
    checks.append(_criu())
    checks.append(Check("NRI", *nri_summary(config)))
    return checks
