"""resize_held_terminals: a pty master held by another process gets the new size."""

from __future__ import annotations

import fcntl
import os
import struct
import subprocess
import sys
import termios

from crishim.runtime.streaming.streams import TerminalSize
from crishim.runtime.streaming.terminal import resize_held_terminals

HOLDER = "import os, sys, time; m, s = os.openpty(); print(os.ttyname(s), flush=True); time.sleep(30)"


def test_resizes_the_pty_master_another_process_holds() -> None:
    holder = subprocess.Popen([sys.executable, "-c", HOLDER], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None
        slave_path = holder.stdout.readline().strip()
        assert resize_held_terminals(holder.pid, TerminalSize(width=123, height=45)) == 1
        fd = os.open(slave_path, os.O_RDWR | os.O_NOCTTY)
        try:
            rows, cols, _, _ = struct.unpack("HHHH", fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8))
        finally:
            os.close(fd)
        assert (rows, cols) == (45, 123)
    finally:
        holder.kill()
        holder.wait()
        if holder.stdout is not None:
            holder.stdout.close()


def test_a_process_without_terminals_or_gone_is_left_alone() -> None:
    sleeper = subprocess.Popen(["sleep", "30"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    try:
        assert resize_held_terminals(sleeper.pid, TerminalSize(width=80, height=24)) == 0
    finally:
        sleeper.kill()
        sleeper.wait()
    assert resize_held_terminals(sleeper.pid, TerminalSize(width=80, height=24)) == 0
