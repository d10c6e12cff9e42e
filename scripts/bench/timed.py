#!/usr/bin/env python3
"""Runs a command and records its wall time and peak memory.

  timed.py OUT.json -- COMMAND [ARGS...]

The command inherits standard input/output/error. OUT.json gets
{"seconds": wall time, "maxrss_kb": peak resident set of the command (the
largest of it and its waited-for descendants, from wait4), "rc": exit status}.
Exits with the command's status.
"""
import json
import os
import subprocess
import sys
import time


def main():
    if len(sys.argv) < 4 or sys.argv[2] != "--":
        sys.exit(__doc__)
    out, command = sys.argv[1], sys.argv[3:]
    started = time.monotonic()
    child = subprocess.Popen(command)
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.monotonic() - started
    rc = os.waitstatus_to_exitcode(status)
    with open(out, "w") as f:
        json.dump({"seconds": round(seconds, 3), "maxrss_kb": usage.ru_maxrss, "rc": rc}, f)
    sys.exit(rc if rc >= 0 else 128 - rc)


if __name__ == "__main__":
    main()
