"""crishim's default AppArmor profile: its text, and loading it into the kernel.

The profile confines what a container needs no access to (host /proc and
/sys knobs, firmware, the LSM's own files, mount) and allows the rest, so
images run unchanged; capabilities and seccomp do the fine-grained work.

Loading happens once per daemon start and only when needed: the text that
was last loaded is kept under the daemon's state directory, and the parser
runs when that text differs from the one rendered now (a new template, a
different daemon label) or the kernel no longer lists the profile. The
state directory lives on /run, as the kernel's policy does, so both are
gone after a reboot together. Compiling the profile costs hundreds of
milliseconds (seconds on slow machines) and every test daemon would pay
it; an unconditional reload would buy nothing more, since replacing the
profile by hand under the same name is the administrator's choice until
the template changes or the file is removed.
"""

from __future__ import annotations

import asyncio
import logging
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from string import Template

from . import apparmor

log = logging.getLogger("crishim.oci.apparmor")

POLICY_DIR = Path("/etc/apparmor.d")
PARSER_TIMEOUT = 120.0
_SBIN_PATH = "/usr/sbin:/sbin:/usr/bin:/bin"
# A label usable as a bare peer name in a rule (no spaces, globs or stacking).
_PLAIN_LABEL = re.compile(r"[A-Za-z0-9_.:/+-]+")

_TEMPLATE = Template("""\
# crishim's default container profile, written by crishim at start-up.
$preamble
profile $name flags=(attach_disconnected,mediate_deleted) {
$base
  network,
  capability,
  file,
  umount,

  # Mounting is for the runtime, never for the container.
  deny mount,

  # Signals: from the host and the runtime, and among the container's own processes.
$signals
  signal (send,receive) peer=$name,

  # ps, top and /proc/PID reads among processes sharing this profile.
  ptrace (trace,read,tracedby,readby) peer=$name,

  # /proc: no writes to the top-level files, nor below any directory other than a
  # process's own /proc/PID and /proc/sys; in /proc/sys only kernel/shm* is writable.
  deny @{PROC}/* w,
  deny @{PROC}/{[^1-9s]*,s[^y]*,sy[^s]*,sys?*}/** w,
  deny @{PROC}/sys/[^k]** w,
  deny @{PROC}/sys/k[^e]** w,
  deny @{PROC}/sys/kernel/{[^s]**,s[^h]**,sh[^m]**} w,
  deny @{PROC}/{kcore,sysrq-trigger} rwklx,

  # /sys: read-only except the cgroup tree; secrets and power counters not even readable.
  deny /sys/{[^f]*,f[^s]*,fs/[^c]*,fs/c[^g]*,fs/cg[^r]*}/** wklx,
  deny /sys/firmware/** rwklx,
  deny /sys/kernel/security/** rwklx,
  deny /sys/devices/virtual/powercap/** rwklx,
}
""")


@dataclass(frozen=True, slots=True)
class LoadResult:
    """What start-up did about the default profile; `error` is empty when it is usable."""

    loaded: bool
    error: str = ""
    skipped: bool = False  # already loaded, same text


def find_parser() -> str | None:
    """apparmor_parser on PATH, or in the sbin directories a non-root PATH lacks."""
    return shutil.which("apparmor_parser") or shutil.which("apparmor_parser", path=_SBIN_PATH)


def daemon_label(current: Path = Path("/proc/self/attr/current")) -> str:
    """This process's AppArmor label without its mode ("unconfined" when unknown)."""
    try:
        text = current.read_text().strip().rstrip("\0").strip()
    except OSError:
        return "unconfined"
    return text.rsplit(" (", 1)[0] or "unconfined"


def render_default_profile(
    name: str = apparmor.DEFAULT_PROFILE_NAME,
    *,
    label: str = "unconfined",
    policy_dir: Path = POLICY_DIR,
) -> str:
    """The default profile's text.

    `label` is the daemon's own label: the runtime it starts (runc, crun, conmon)
    inherits it and must be able to signal the container. runc and crun have
    profiles of their own on some distributions, so those names may signal too.
    An include the host lacks is left out (the parser would refuse the file).
    """
    if (policy_dir / "tunables" / "global").is_file():
        preamble = "#include <tunables/global>"
    else:
        preamble = "@{PROC}=/proc/"
    base = "  #include <abstractions/base>\n" if (policy_dir / "abstractions" / "base").is_file() else ""
    peers = ["unconfined", "runc", "crun"]
    if label not in peers and label != name and _PLAIN_LABEL.fullmatch(label):
        peers.append(label)
    signals = "\n".join(f"  signal (receive) peer={p}," for p in peers)
    return _TEMPLATE.substitute(name=name, preamble=preamble, base=base, signals=signals)


async def run_parser(parser: str, args: list[str], text: str, time_limit: float = PARSER_TIMEOUT) -> tuple[int, str]:
    """apparmor_parser ARGS with the profile on stdin: (exit code, stderr)."""
    try:
        proc = await asyncio.create_subprocess_exec(
            parser, *args,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
    except OSError as exc:
        return -1, f"cannot run {parser}: {exc}"
    try:
        _, err = await asyncio.wait_for(proc.communicate(text.encode()), time_limit)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return -1, f"apparmor_parser did not finish within {time_limit:.0f}s"
    return proc.returncode or 0, err.decode(errors="replace").strip()


async def ensure_default_profile(
    state_dir: Path,
    *,
    enabled: bool | None = None,
    parser: str | None = None,
    profiles_path: Path | None = None,
) -> LoadResult:
    """Loads crishim-default with `apparmor_parser -Kr` when AppArmor is on and it is not current.

    Never raises: a failure is logged with the parser's words and recorded, so
    containers asking for runtime/default are refused naming it (see
    apparmor.select_profile) while everything else keeps working.
    """
    name = apparmor.DEFAULT_PROFILE_NAME
    on = apparmor.apparmor_enabled() if enabled is None else enabled
    if not on:
        return LoadResult(loaded=False)
    loaded = apparmor.loaded_profiles() if profiles_path is None else apparmor.loaded_profiles(profiles_path)
    text = await asyncio.to_thread(render_default_profile, name, label=daemon_label())
    record = state_dir / "apparmor" / name
    if name in loaded and await asyncio.to_thread(_read, record) == text:
        apparmor.record_default_failure("")
        return LoadResult(loaded=True, skipped=True)
    exe = parser or find_parser()
    if exe is None:
        if name in loaded:
            log.warning("apparmor_parser not found; keeping the %s profile already loaded", name)
            apparmor.record_default_failure("")
            return LoadResult(loaded=True)
        return _failed("apparmor_parser is not installed (Debian package 'apparmor')")
    # -K: no cache (the text changes with the template); -r: replace, or add when absent.
    rc, err = await run_parser(exe, ["-K", "-r"], text)
    if rc != 0:
        return _failed(f"apparmor_parser -Kr failed (exit {rc}): {err or 'no message'}")
    if err:
        log.info("apparmor_parser: %s", err)
    try:
        await asyncio.to_thread(_write, record, text)
    except OSError as exc:  # only costs a reload at the next start
        log.warning("cannot record the loaded AppArmor profile in %s: %s", record, exc)
    apparmor.record_default_failure("")
    log.info("AppArmor profile %s loaded", name)
    return LoadResult(loaded=True)


def _failed(reason: str) -> LoadResult:
    log.warning("AppArmor default profile not loaded: %s; runtime/default containers will be refused", reason)
    apparmor.record_default_failure(reason)
    return LoadResult(loaded=False, error=reason)


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)
