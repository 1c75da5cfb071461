"""The benchmarks' peak-RSS sampler: each process's memory counted once."""

import subprocess
import sys
import textwrap
import time

from bench.common import PeakMemory

RESIDENT_MIB = 200

# A child that holds RESIDENT_MIB resident, then forks without exec (as the JVM's posix_spawn child is,
# until it execs) and starts a program of its own.
_CHILD = textwrap.dedent(f"""
    import ctypes, os, subprocess, sys, threading, time
    block = b"x" * ({RESIDENT_MIB} * 2**20)

    def spawn():  # from a thread named as the JVM names its own: the fork takes the thread's name
        ctypes.CDLL(None).prctl(15, b"Executor task l")  # PR_SET_NAME
        forked = os.fork()
        if forked == 0:
            time.sleep(60)
            os._exit(0)
        other = subprocess.Popen(["sleep", "60"])
        print(forked, other.pid, flush=True)

    threading.Thread(target=spawn).start()
    time.sleep(60)
""")


def test_a_child_between_fork_and_exec_is_not_counted_again_and_a_program_it_starts_is():
    child = subprocess.Popen([sys.executable, "-c", _CHILD], stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        forked, other = map(int, child.stdout.readline().split())
        with PeakMemory(include=lambda process: process.pid == child.pid, interval_seconds=0.05) as memory:
            time.sleep(0.5)
            members = {process.pid for process in memory._members()}
        assert child.pid in members and other in members
        assert forked not in members
        assert RESIDENT_MIB * 2**20 <= memory.peak.jvm < 1.5 * RESIDENT_MIB * 2**20
    finally:
        subprocess.run(["pkill", "-KILL", "-s", str(child.pid)], check=False)
        child.wait()
