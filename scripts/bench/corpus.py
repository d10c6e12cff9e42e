#!/usr/bin/env python3
"""Deterministic benchmark corpora for scripts/bench.sh.

  corpus.py generate OUT --scale S --seed N   # many small files + a few large ones
  corpus.py edit ROOT --fraction F --seed N   # insert bytes in the middle of F of the files
  corpus.py tiny OUT --count N --seed N       # N tiny files (the million-file phase)

Every command prints one JSON object (what it did) on standard output; progress
goes to standard error. The same arguments always produce the same bytes.

generate: 100,000 x scale small files of 1-32 KiB (uniform) under
small/tNN/dNNN/, plus 3 large files of 256 MiB x scale under large/. Half of
the data is random (incompressible), half text-like (words drawn from a fixed
vocabulary: about 2x compressible, not deduplicable): each small file is one or
the other by a coin toss; large/random.bin is random, large/text.log is text,
large/mixed.dat alternates 1 MiB blocks of both.

edit: picks round(F x number of files) files with its own seeded generator --
always including large/text.log, so that an edit inside a large file is part
of the change -- and inserts 64 random bytes at the middle of each.
"""
import argparse
import json
import os
import random
import sys
import time

KIB = 1024
MIB = 1024 * KIB
FILES_PER_DIR = 50
DIRS_PER_TOP = 40
LARGE_SIZE = 256 * MIB
SMALL_FILES = 100_000


def log(msg):
    print(f"corpus: {msg}", file=sys.stderr, flush=True)


class Text:
    """Text-like bytes: words from a fixed vocabulary, with line breaks."""

    def __init__(self, rng):
        self.rng = rng
        vocab_rng = random.Random(12345)
        letters = "abcdefghijklmnopqrstuvwxyz"
        self.words = [
            "".join(vocab_rng.choice(letters) for _ in range(vocab_rng.randint(2, 10)))
            for _ in range(5000)
        ]
        self.words += ["\n"] * 300 + ["ERROR", "INFO", "WARN", "DEBUG", "2024-01-01"] * 40

    def make(self, size):
        out = []
        have = 0
        while have < size:
            k = max(64, (size - have) // 6 + 16)
            chunk = " ".join(self.rng.choices(self.words, k=k)).encode()
            out.append(chunk)
            have += len(chunk)
        return b"".join(out)[:size]


def write(path, data):
    with open(path, "wb") as f:
        f.write(data)


def generate(args):
    rng = random.Random(args.seed)
    text = Text(rng)
    n_small = max(1, round(SMALL_FILES * args.scale))
    large = max(1 * MIB, (round(LARGE_SIZE * args.scale) // MIB) * MIB)
    out = args.out
    os.makedirs(out, exist_ok=True)
    files = 0
    total = 0
    random_bytes = 0
    started = time.time()
    for i in range(n_small):
        top, rest = divmod(i, FILES_PER_DIR * DIRS_PER_TOP)
        d = rest // FILES_PER_DIR
        directory = os.path.join(out, "small", f"t{top:02d}", f"d{d:03d}")
        if i % FILES_PER_DIR == 0:
            os.makedirs(directory, exist_ok=True)
        size = rng.randint(1 * KIB, 32 * KIB)
        if rng.random() < 0.5:
            data = rng.randbytes(size)
            name = f"f{i:06d}.bin"
            random_bytes += size
        else:
            data = text.make(size)
            name = f"f{i:06d}.txt"
        write(os.path.join(directory, name), data)
        files += 1
        total += size
        if i and i % 20000 == 0:
            log(f"{i}/{n_small} small files ({time.time() - started:.0f} s)")
    os.makedirs(os.path.join(out, "large"), exist_ok=True)
    for name in ("random.bin", "text.log", "mixed.dat"):
        with open(os.path.join(out, "large", name), "wb") as f:
            for block in range(large // MIB):
                if name == "random.bin" or (name == "mixed.dat" and block % 2 == 0):
                    f.write(rng.randbytes(MIB))
                    random_bytes += MIB
                else:
                    f.write(text.make(MIB))
        files += 1
        total += large
        log(f"large/{name}: {large // MIB} MiB ({time.time() - started:.0f} s)")
    return {
        "files": files,
        "small_files": n_small,
        "large_files": 3,
        "large_file_bytes": large,
        "bytes": total,
        "random_bytes": random_bytes,
        "seconds": round(time.time() - started, 1),
    }


def all_files(root):
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            found.append(os.path.relpath(os.path.join(dirpath, name), root))
    return sorted(found)


def edit(args):
    rng = random.Random(args.seed * 7919 + 1)
    files = all_files(args.root)
    count = max(1, round(len(files) * args.fraction))
    chosen = rng.sample(files, count)
    forced = os.path.join("large", "text.log")
    if forced in files and forced not in chosen:
        chosen[-1] = forced
    changed_bytes = 0
    for rel in sorted(chosen):
        path = os.path.join(args.root, rel)
        with open(path, "rb") as f:
            data = f.read()
        middle = len(data) // 2
        insert = rng.randbytes(args.insert)
        write(path, data[:middle] + insert + data[middle:])
        changed_bytes += len(data) + len(insert)
    return {
        "files_total": len(files),
        "files_edited": len(chosen),
        "inserted_bytes_each": args.insert,
        "edited_files_bytes": changed_bytes,
        "includes": forced if forced in chosen else None,
    }


def tiny(args):
    rng = random.Random(args.seed)
    started = time.time()
    per_dir = 1000
    total = 0
    for i in range(args.count):
        if i % per_dir == 0:
            directory = os.path.join(args.out, f"t{i // 100_000:02d}", f"d{(i // per_dir) % 100:02d}")
            os.makedirs(directory, exist_ok=True)
        size = rng.randint(1, 512)
        write(os.path.join(directory, f"f{i:07d}"), rng.randbytes(size))
        total += size
        if i and i % 100_000 == 0:
            log(f"{i}/{args.count} tiny files ({time.time() - started:.0f} s)")
    return {"files": args.count, "bytes": total, "seconds": round(time.time() - started, 1)}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate")
    g.add_argument("out")
    g.add_argument("--scale", type=float, default=1.0)
    g.add_argument("--seed", type=int, default=42)
    e = sub.add_parser("edit")
    e.add_argument("root")
    e.add_argument("--fraction", type=float, default=0.01)
    e.add_argument("--insert", type=int, default=64)
    e.add_argument("--seed", type=int, default=42)
    t = sub.add_parser("tiny")
    t.add_argument("out")
    t.add_argument("--count", type=int, default=1_000_000)
    t.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    result = {"generate": generate, "edit": edit, "tiny": tiny}[args.command](args)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
