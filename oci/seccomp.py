"""Seccomp profiles: our RuntimeDefault, Localhost files, Unconfined.

The default profile denies with EPERM by default and allows the syscalls
an ordinary workload needs, the same effect as Docker's and containerd's
default: system-wide knobs (kernel modules, reboot, clock, swap, kexec,
keyrings, namespaces without CAP_SYS_ADMIN...) stay denied unless the
container holds the capability that guards them. The list is ours and
grouped by purpose so a reviewer can check each group.
"""

from __future__ import annotations

import json
import platform
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .errors import InvalidArgument

EPERM, ENOSYS = 1, 38

_FILES = """
access faccessat faccessat2 chdir fchdir chmod fchmod fchmodat fchmodat2 chown chown32 fchown fchown32
fchownat lchown lchown32 close close_range copy_file_range creat dup dup2 dup3 fadvise64 fadvise64_64
fallocate fcntl fcntl64 fdatasync flock fsync ftruncate ftruncate64 truncate truncate64 getcwd getdents
getdents64 link linkat lseek _llseek mkdir mkdirat mknod mknodat open openat openat2 name_to_handle_at
pipe pipe2 read readv pread64 preadv preadv2 readahead readlink readlinkat rename renameat renameat2
rmdir sendfile sendfile64 splice tee vmsplice stat stat64 fstat fstat64 lstat lstat64 newfstatat
fstatat64 statx statfs statfs64 fstatfs fstatfs64 symlink symlinkat sync sync_file_range syncfs umask
unlink unlinkat utime utimes utimensat utimensat_time64 futimesat write writev pwrite64 pwritev pwritev2
getxattr lgetxattr fgetxattr listxattr llistxattr flistxattr removexattr lremovexattr fremovexattr
setxattr lsetxattr fsetxattr inotify_init inotify_init1 inotify_add_watch inotify_rm_watch
fanotify_mark memfd_create memfd_secret io_setup io_destroy io_getevents io_pgetevents
io_pgetevents_time64 io_submit io_cancel ioctl
landlock_create_ruleset landlock_add_rule landlock_restrict_self cachestat
"""
_PROCESS = """
arch_prctl brk capget capset clone execve execveat exit exit_group fork vfork getpid getppid gettid
getpgid getpgrp getsid setsid setpgid getpriority setpriority getrlimit setrlimit prlimit64 ugetrlimit
getrusage getuid getuid32 geteuid geteuid32 getgid getgid32 getegid getegid32 getgroups getgroups32
getresuid getresuid32 getresgid getresgid32 setuid setuid32 setgid setgid32 setreuid setreuid32
setregid setregid32 setresuid setresuid32 setresgid setresgid32 setgroups setgroups32 setfsuid
setfsuid32 setfsgid setfsgid32 kill tgkill tkill pidfd_open pidfd_send_signal pidfd_getfd wait4
waitid waitpid prctl rseq restart_syscall rt_sigaction rt_sigpending rt_sigprocmask rt_sigqueueinfo
rt_sigreturn rt_sigsuspend rt_sigtimedwait rt_sigtimedwait_time64 rt_tgsigqueueinfo sigaction
sigaltstack signal signalfd signalfd4 sigpending sigprocmask sigreturn sigsuspend set_robust_list
get_robust_list set_tid_address set_thread_area get_thread_area sched_getaffinity sched_setaffinity
sched_getattr sched_setattr sched_getparam sched_setparam sched_get_priority_max
sched_get_priority_min sched_getscheduler sched_setscheduler sched_rr_get_interval
sched_rr_get_interval_time64 sched_yield ioprio_get ioprio_set getcpu uname olduname times
personality futex futex_time64 futex_waitv futex_wake futex_wait futex_requeue membarrier
process_mrelease capget
"""
_MEMORY = """
mmap mmap2 munmap mremap mprotect pkey_mprotect pkey_alloc pkey_free madvise mincore mlock mlock2
mlockall munlock munlockall msync remap_file_pages shmat shmctl shmdt shmget semctl semget semop
semtimedop semtimedop_time64 msgctl msgget msgrcv msgsnd mq_open mq_unlink mq_timedsend
mq_timedsend_time64 mq_timedreceive mq_timedreceive_time64 mq_notify mq_getsetattr ipc
map_shadow_stack
"""
_EVENTS = """
epoll_create epoll_create1 epoll_ctl epoll_ctl_old epoll_wait epoll_wait_old epoll_pwait epoll_pwait2
eventfd eventfd2 poll ppoll ppoll_time64 select _newselect pselect6 pselect6_time64 pause alarm
nanosleep clock_nanosleep clock_nanosleep_time64 clock_gettime clock_gettime64 clock_getres
clock_getres_time64 gettimeofday time getitimer setitimer timer_create timer_delete timer_getoverrun
timer_gettime timer_gettime64 timer_settime timer_settime64 timerfd_create timerfd_gettime
timerfd_gettime64 timerfd_settime timerfd_settime64 getrandom sysinfo
"""
_NETWORK = """
socket socketpair socketcall bind connect listen accept accept4 getsockname getpeername getsockopt
setsockopt sendto sendmsg sendmmsg recv recvfrom recvmsg recvmmsg recvmmsg_time64 send shutdown
"""
_ARCH_SPECIFIC = {
    "x86_64": "modify_ldt",
    "aarch64": "",
}

# Syscalls allowed only to holders of a capability: what the capability
# exists to guard.
_BY_CAPABILITY = {
    "CAP_SYS_ADMIN": """bpf clone3 fanotify_init fsconfig fsmount fsopen fspick lookup_dcookie mount
        mount_setattr move_mount open_tree perf_event_open quotactl quotactl_fd setdomainname sethostname
        setns umount umount2 unshare""",
    "CAP_SYS_BOOT": "reboot",
    "CAP_SYS_CHROOT": "chroot",
    "CAP_SYS_MODULE": "delete_module init_module finit_module",
    "CAP_SYS_PACCT": "acct",
    "CAP_SYS_PTRACE": "kcmp process_madvise process_vm_readv process_vm_writev ptrace",
    "CAP_SYS_RAWIO": "iopl ioperm",
    "CAP_SYS_TIME": "settimeofday stime clock_settime clock_settime64 adjtimex clock_adjtime clock_adjtime64",
    "CAP_SYS_TTY_CONFIG": "vhangup",
    "CAP_SYS_NICE": "get_mempolicy mbind set_mempolicy set_mempolicy_home_node",
    "CAP_SYSLOG": "syslog",
    "CAP_BPF": "bpf",
    "CAP_PERFMON": "perf_event_open",
    "CAP_DAC_READ_SEARCH": "open_by_handle_at",
}

# personality(2) values a workload may set without changing the ABI:
# PER_LINUX, PER_LINUX32, UNAME26, UNAME26|PER_LINUX32, and the query.
_PERSONALITIES = (0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF)
# CLONE_NEWNS|NEWCGROUP|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET|NEWTIME(0x80)
_CLONE_NS_FLAGS = 0x7E020000 | 0x80

_ARCHES = {
    "x86_64": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
    "aarch64": ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"],
    "arm64": ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"],
}


def _names(text: str) -> list[str]:
    return sorted(set(text.split()))


def host_architectures(machine: str | None = None) -> list[str]:
    """The seccomp architectures of this host (native + compat ABIs)."""
    return _ARCHES.get(machine or platform.machine(), ["SCMP_ARCH_NATIVE"])


def default_profile(capabilities: Iterable[str], machine: str | None = None) -> dict[str, Any]:
    """Our RuntimeDefault profile, for a container holding `capabilities`."""
    caps = set(capabilities)
    arch = machine or platform.machine()
    allowed = set(_names(_FILES + _PROCESS + _MEMORY + _EVENTS + _NETWORK))
    allowed.update(_names(_ARCH_SPECIFIC.get(arch, "")))
    allowed.discard("personality")
    allowed.discard("clone")
    for cap, names in _BY_CAPABILITY.items():
        if cap in caps:
            allowed.update(_names(names))
    syscalls: list[dict[str, Any]] = [{"names": sorted(allowed), "action": "SCMP_ACT_ALLOW"}]
    syscalls.extend(
        {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
         "args": [{"index": 0, "value": v, "op": "SCMP_CMP_EQ"}]}
        for v in _PERSONALITIES
    )  # fmt: skip
    if "CAP_SYS_ADMIN" in caps:
        syscalls.append({"names": ["clone"], "action": "SCMP_ACT_ALLOW"})
    else:
        # clone is allowed without namespace flags. Its flags are the
        # first argument except on s390; clone3 passes them in memory
        # where seccomp cannot look, so it answers ENOSYS and libc falls
        # back to clone.
        syscalls.append(
            {"names": ["clone"], "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 0, "value": _CLONE_NS_FLAGS, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}]}
        )  # fmt: skip
        syscalls.append({"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": ENOSYS})
    return {
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": EPERM,
        "architectures": host_architectures(arch),
        "syscalls": syscalls,
    }


def load_localhost_profile(path: str, capabilities: Iterable[str] = (), machine: str | None = None) -> dict[str, Any]:
    """A Localhost profile file as an OCI linux.seccomp object.

    Files in Docker's format are accepted too: `archMap` becomes the host's
    architectures, `name` becomes `names`, and `includes`/`excludes`
    conditions on capabilities and architectures are evaluated here.
    """
    if not path or not Path(path).is_absolute():
        raise InvalidArgument(f"seccomp localhost profile path {path!r} must be an absolute path")
    try:
        raw = json.loads(Path(path).read_text())
    except OSError as e:
        raise InvalidArgument(f"cannot read seccomp profile {path}: {e.strerror}") from e
    except ValueError as e:
        raise InvalidArgument(f"seccomp profile {path} is not valid JSON: {e}") from e
    if not isinstance(raw, dict) or "defaultAction" not in raw:
        raise InvalidArgument(f"seccomp profile {path} has no defaultAction")
    return _normalize(raw, set(capabilities), machine or platform.machine())


def _condition_holds(cond: dict[str, Any], caps: set[str], arches: list[str], include: bool) -> bool:
    want_caps = set(cond.get("caps") or ())
    want_arches = set(cond.get("arches") or ())
    if include:
        return want_caps <= caps and (not want_arches or bool(want_arches & set(arches)))
    return not (want_caps & caps) and not (want_arches & set(arches))


def _normalize(raw: dict[str, Any], caps: set[str], machine: str) -> dict[str, Any]:
    arches = host_architectures(machine)
    out: dict[str, Any] = {"defaultAction": raw["defaultAction"]}
    for key in ("defaultErrnoRet", "listenerPath", "listenerMetadata", "flags"):
        if key in raw:
            out[key] = raw[key]
    if "architectures" in raw:
        out["architectures"] = list(raw["architectures"])
    elif "archMap" in raw:
        out["architectures"] = [
            a
            for m in raw["archMap"]
            if m["architecture"] in arches
            for a in [m["architecture"], *m.get("subArchitectures", [])]
        ]
    plain_arches = [a.removeprefix("SCMP_ARCH_").lower() for a in arches]
    syscalls = []
    for entry in raw.get("syscalls") or []:
        if not isinstance(entry, dict) or "action" not in entry:
            raise InvalidArgument("every seccomp syscalls entry needs an action")
        if "includes" in entry and not _condition_holds(entry["includes"], caps, plain_arches, True):
            continue
        if "excludes" in entry and not _condition_holds(entry["excludes"], caps, plain_arches, False):
            continue
        names = list(entry.get("names") or ([entry["name"]] if entry.get("name") else []))
        rule = {"names": names, "action": entry["action"]}
        for key in ("args", "errnoRet"):
            if entry.get(key) is not None:
                rule[key] = entry[key]
        syscalls.append(rule)
    if syscalls:
        out["syscalls"] = syscalls
    return out
