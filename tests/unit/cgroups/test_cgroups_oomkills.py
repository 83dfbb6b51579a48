"""The kernel log's OOM kill records: parsing, and matching them to a container that exited."""

from __future__ import annotations

from pathlib import Path

import pytest
from crishim.cgroups.oomkills import OomKill, OomKillLog, parse_kmsg_record, split_records

SCOPE = "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice/crishim-abc.scope"
SUMMARY = (
    "6,1201,5000000,-;oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=/,mems_allowed=0,"
    f"oom_memcg={SCOPE},task_memcg={SCOPE},task=sh,pid=4242,uid=0"
)
KILLED = (
    "3,1202,5000100,-;Memory cgroup out of memory: Killed process 4242 (sh) total-vm:36000kB, "
    "anon-rss:32000kB, file-rss:0kB, shmem-rss:0kB, UID:0 pgtables:100kB oom_score_adj:1000"
)


def test_summary_line_names_the_victim_and_its_cgroup() -> None:
    assert parse_kmsg_record(SUMMARY, 1_000) == OomKill(pid=4242, memcg=SCOPE, at_ns=1_000 + 5_000_000_000)


def test_killed_process_line_names_the_victim() -> None:
    assert parse_kmsg_record(KILLED, 0) == OomKill(pid=4242, memcg=None, at_ns=5_000_100_000)
    global_oom = "3,7,10,-;Out of memory: Killed process 99 (python3) total-vm:1kB"
    assert parse_kmsg_record(global_oom, 0) == OomKill(pid=99, memcg=None, at_ns=10_000)


@pytest.mark.parametrize(
    "record",
    [
        "6,1,2,-;eth0: link up",
        "no header",
        "4,1,x,-;Killed process 1 (a) ",
        "6,5,6,-;Tasks state (memory values in pages):",
    ],
)
def test_other_records_are_no_kills(record: str) -> None:
    assert parse_kmsg_record(record, 0) is None


def test_continuation_lines_stay_with_their_record() -> None:
    text = f"{SUMMARY}\n SUBSYSTEM=memory\n{KILLED}\n"
    assert split_records(text) == [f"{SUMMARY}\n SUBSYSTEM=memory", KILLED]


def test_a_kill_is_matched_by_cgroup_once(tmp_path: Path) -> None:
    kmsg = tmp_path / "kmsg"
    kmsg.write_text(SUMMARY + "\n")
    oom_log = OomKillLog(str(kmsg))
    try:
        assert not oom_log.killed("/other.slice/crishim-def.scope", 1, 0)
        assert oom_log.killed(SCOPE, 1, 0)
        assert not oom_log.killed(SCOPE, 1, 0)
    finally:
        oom_log.close()


def test_a_kill_is_matched_by_pid_only_after_the_process_was_created(tmp_path: Path) -> None:
    kmsg = tmp_path / "kmsg"
    kmsg.write_text("")
    oom_log = OomKillLog(str(kmsg))
    try:
        # Records written after the log was opened are read on the next question.
        kmsg.write_text(KILLED + "\n")
        kill_at = oom_log._boot_wall_ns + 5_000_100_000
        assert not oom_log.killed("/x/crishim-abc.scope", 4242, kill_at + 60_000_000_000)
        assert oom_log.killed("/x/crishim-abc.scope", 4242, kill_at - 1_000_000_000)
    finally:
        oom_log.close()


def test_unreadable_kernel_log_disables_the_source(tmp_path: Path) -> None:
    assert OomKillLog.open(str(tmp_path / "missing")) is None
