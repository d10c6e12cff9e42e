#!/usr/bin/env python3
"""Renders scripts/bench.sh's results as a Markdown section.

  report.py RESULTS.tsv META.env FAILURES.txt

RESULTS.tsv holds `key<TAB>value` lines (the last value of a key wins),
META.env `name=value` lines about the machine and the command. The section
goes to standard output.
"""
import json
import os
import sys

MIB = 1024 * 1024
TOOLS = ("coffer", "restic", "rclone")


def load(path, sep):
    values = {}
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                line = line.rstrip("\n")
                if sep in line:
                    key, value = line.split(sep, 1)
                    values[key] = value
    return values


def num(r, key):
    try:
        value = r.get(key, "")
        return float(value) if value not in ("", "null", "None") else None
    except ValueError:
        return None


def ok(r, key):
    return r.get(f"{key}.status", "ok") == "ok"


def secs(r, key):
    v = num(r, f"{key}.seconds")
    if v is None:
        return "—"
    text = f"{v:.1f}" if v >= 10 else f"{v:.2f}"
    return text if ok(r, key) else f"{text} (FAILED)"


def mib(v):
    if v is None:
        return "—"
    if v < 10 * MIB:
        return f"{v / MIB:.2f} MiB"
    return f"{v / MIB:,.0f} MiB"


def rss(r, key):
    v = num(r, f"{key}.rss_kb")
    return "—" if v is None else f"{v / 1024:.0f}"


def verdict(flag):
    if flag is None:
        return "n/a"
    return "**yes**" if flag else "**NO**"


def main():
    r = load(sys.argv[1], "\t")
    meta = load(sys.argv[2], "=")
    failures = []
    if len(sys.argv) > 3 and os.path.exists(sys.argv[3]):
        with open(sys.argv[3]) as f:
            failures = [line.strip() for line in f if line.strip()]
    corpus = num(r, "corpus.bytes") or 0
    corpus_after = num(r, "corpus.bytes_after_edit") or corpus
    out = []
    w = out.append

    w(f"## {meta.get('date', '?')} — `{meta.get('command', 'scripts/bench.sh')}`")
    w("")
    w(
        f"Machine: {meta.get('nproc', '?')} cores ({meta.get('cpu', '?')}), {meta.get('ram', '?')} RAM, "
        f"kernel {meta.get('kernel', '?')}, work dir on {meta.get('bench_dir_fs', '?')}. "
        f"Versions: {meta.get('restic', '?')}; {meta.get('rclone', '?')}; garage {meta.get('garage', '?')}; "
        f"Coffer {meta.get('coffer', '?')} built with {meta.get('rustc', '?')}."
    )
    w("")
    random_share = (num(r, "corpus.random_bytes") or 0) / corpus * 100 if corpus else 0
    w(
        f"Corpus: {int(num(r, 'corpus.files') or 0):,} files, {mib(corpus)} "
        f"({random_share:.0f}% random bytes, the rest text-like; 3 large files of "
        f"{mib(num(r, 'corpus.large_file_bytes'))}). Edit: {int(num(r, 'edit.files') or 0):,} files "
        f"(1%, including one large file; {mib(num(r, 'edit.bytes'))} in those files) got 64 bytes inserted "
        f"in the middle. Page cache dropped before every step: "
        f"{'yes' if r.get('drop_caches') == '1' else 'no'}."
    )
    w("")
    w("| | coffer | restic | rclone copy | target (coffer) | met |")
    w("|---|---|---|---|---|---|")

    c, rs, rc = (num(r, f"{t}.first.seconds") for t in TOOLS)
    met = None
    if c is not None and rs is not None and rc is not None and ok(r, "coffer.first"):
        met = c * 1.5 <= rs and c <= rc
    tgt = "≥1.5× faster than restic, ≤ rclone"
    if rs is not None and rc is not None:
        tgt += f" (≤ {min(rs / 1.5, rc):.1f} s)"
    w(f"| first backup, s | {secs(r, 'coffer.first')} | {secs(r, 'restic.first')} | {secs(r, 'rclone.first')} | {tgt} | {verdict(met)} |")

    c, rs = num(r, "coffer.incr.seconds"), num(r, "restic.incr.seconds")
    met = None if c is None or rs is None or not ok(r, "coffer.incr") else c <= rs / 2
    tgt = "≤ ½ restic" + (f" (≤ {rs / 2:.2f} s)" if rs is not None else "")
    w(f"| no-change incremental, s | {secs(r, 'coffer.incr')} | {secs(r, 'restic.incr')} | {secs(r, 'rclone.incr')} | {tgt} | {verdict(met)} |")

    w(f"| backup after the 1% edit, s | {secs(r, 'coffer.edit')} | {secs(r, 'restic.edit')} | {secs(r, 'rclone.edit')} | — | |")

    cells = []
    for t in TOOLS:
        v = num(r, f"{t}.edit.uploaded")
        cells.append("—" if v is None else f"{mib(v)} ({v / corpus_after * 100:.2f}%)")
    v = num(r, "coffer.edit.uploaded")
    met = None if v is None or not ok(r, "coffer.edit") else v <= 0.03 * corpus_after
    w(f"| uploaded after the 1% edit (% of corpus) | {cells[0]} | {cells[1]} | {cells[2]} | ≤ 3% of the corpus | {verdict(met)} |")

    cells = [
        f"{mib(num(r, 'coffer.edit.reported_bytes'))} (progress.bytes_uploaded)",
        f"{mib(num(r, 'restic.edit.reported_bytes'))} (data_added)",
        "whole files",
    ]
    w(f"| the tool's own count after the edit | {cells[0]} | {cells[1]} | {cells[2]} | — | |")

    cells = [mib(num(r, f"{t}.incr.uploaded")) for t in TOOLS]
    w(f"| uploaded by the no-change incremental | {cells[0]} | {cells[1]} | {cells[2]} | — | |")

    cells = []
    for t in TOOLS:
        v = num(r, f"{t}.first.bucket_bytes")
        cells.append("—" if v is None else f"{mib(v)} ({int(num(r, f'{t}.first.uploaded_objects') or 0):,} objects)")
    w(f"| bucket after the first backup | {cells[0]} | {cells[1]} | {cells[2]} | — | |")

    c, rs = num(r, "coffer.restore.seconds"), num(r, "restic.restore.seconds")
    met = None if c is None or rs is None or not ok(r, "coffer.restore") else c <= rs
    tgt = "≤ restic" + (f" (≤ {rs:.1f} s)" if rs is not None else "")
    rclone_restore = secs(r, "rclone.restore") + " (copy back)" if "rclone.restore.seconds" in r else "not run"
    w(f"| restore into an empty dir, s | {secs(r, 'coffer.restore')} | {secs(r, 'restic.restore')} | {rclone_restore} | {tgt} | {verdict(met)} |")
    cells = [r.get(f"{t}.restore.verified", "not checked") for t in TOOLS]
    w(f"| restore identical to the source (`diff -r`) | {cells[0]} | {cells[1]} | {cells[2]} | identical | {verdict(None if cells[0] == 'not checked' else cells[0] == 'yes')} |")

    for phase, label in (("first", "first backup"), ("incr", "no-change incremental"), ("edit", "after edit"), ("restore", "restore")):
        w(f"| peak RSS, MiB: {label} | {rss(r, f'coffer.{phase}')} (worker) | {rss(r, f'restic.{phase}')} | {rss(r, f'rclone.{phase}')} | — | |")

    for phase, label in (("first", "first backup"), ("incr", "no-change incremental"), ("edit", "after edit")):
        o, v = num(r, f"coffer.{phase}.rows_objects"), num(r, f"coffer.{phase}.rows_versions")
        cell = "—" if o is None else f"{int(o):,} objects + {int(v):,} versions"
        w(f"| catalog rows written: {label} | {cell} | n/a | n/a | — | |")

    if "million.files" in r:
        n = int(num(r, "million.files") or 0)
        hwm = num(r, "coffer.million.rss_kb")
        met = None if hwm is None or not ok(r, "coffer.million") else hwm / 1024 < 256
        o, v = num(r, "coffer.million.rows_objects"), num(r, "coffer.million.rows_versions")
        rows = "—" if o is None else f"{int(o):,} objects + {int(v):,} versions"
        w(f"| {n:,} tiny files: backup s / worker peak RSS MiB / catalog rows | {secs(r, 'coffer.million')} / {rss(r, 'coffer.million')} / {rows} | not run | not run | peak < 256 MB (checked as 256 MiB) | {verdict(met)} |")

    w("")
    cp = num(r, "controlplane.rss_kb")
    notes = []
    phases = (("first", "first"), ("incr", "no-change"), ("edit", "edit"), ("restore", "restore"), ("million", "tiny files"))

    def series(suffix):
        return ", ".join(
            f"{label} {num(r, f'coffer.{phase}.{suffix}'):.2f} s"
            for phase, label in phases
            if num(r, f"coffer.{phase}.{suffix}") is not None
        )

    if series("seconds"):
        notes.append(
            "Coffer's times run from the run's createTime (CreateRun) to the moment WatchRun delivered the final "
            "state, i.e. after the control plane committed the snapshot to its catalog (the worker process was "
            "already connected). The worker's own part (createTime to the finishTime it reported): "
            + series("worker_seconds")
            + "; the wall time around the grpcurl calls (adds ~0.3 s per grpcurl start-up): "
            + series("client_seconds")
        )
    notes.append(
        "uploaded bytes are, for every tool, the sizes of the objects in its bucket whose server-side "
        "LastModified falls after the step started"
    )
    if cp is not None:
        notes.append(f"control-plane peak RSS over the whole run {cp / 1024:.0f} MiB")
    cat = num(r, "catalog.bytes")
    if cat is not None:
        notes.append(f"control-plane data dir (SQLite catalog) {mib(cat)} at the end")
    if num(r, "build.seconds") is not None:
        notes.append(f"release build {num(r, 'build.seconds'):.0f} s")
    if num(r, "script.seconds") is not None:
        notes.append(f"whole script {num(r, 'script.seconds') / 60:.1f} min")
    if notes:
        w("Also: " + "; ".join(notes) + ".")
        w("")
    bad = {k: v for k, v in r.items() if k.endswith(".status") and v != "ok" and not v.startswith("not run")}
    if bad or failures:
        w("**Failures:**")
        w("")
        for k, v in sorted(bad.items()):
            w(f"- `{k[:-7]}`: {v}")
        for line in failures:
            w(f"- {line}")
        w("")
    print("\n".join(out))


if __name__ == "__main__":
    main()
