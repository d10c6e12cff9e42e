#!/usr/bin/env python3
"""Reads WatchRun output (grpcurl's JSON stream) on standard input, copies it
to OUT, and writes the wall-clock time (Unix seconds) at which the first final
state (SUCCEEDED, FAILED, CANCELLED) arrived to STAMP.

  grpcurl ... WatchRun | watch.py OUT STAMP
"""
import re
import sys
import time

FINAL = re.compile(r'"state":\s*"RUN_STATE_(SUCCEEDED|FAILED|CANCELLED)"')


def main():
    out, stamp = sys.argv[1], sys.argv[2]
    seen = False
    with open(out, "w") as f:
        for line in sys.stdin:
            if not seen and FINAL.search(line):
                seen = True
                with open(stamp, "w") as s:
                    s.write(f"{time.time():.6f}\n")
            f.write(line)
            f.flush()


if __name__ == "__main__":
    main()
