// One run: what it is, its live progress until it ends, and its per-file errors.

import { api } from "../api";
import { add, h, table } from "../dom";
import { shortId, time } from "../format";
import { RunKind, RunState } from "../gen/coffer/v1/runs_pb";
import { link, type PageContext } from "../nav";
import { drawProgress, isFinal, watchRun } from "../progress";

export async function runPage({ main, segments, signal }: PageContext): Promise<void> {
  const id = segments[0] ?? "";
  const run = (await api.runs.getRun({ id })).run;
  if (!run) return;
  const progress = h("div", { class: "run-progress", id: "run-progress", role: "status", "aria-live": "polite" });
  drawProgress(progress, run);
  const facts: [string, string | Node][] = [
    ["Kind", RunKind[run.kind].toLowerCase()],
    ["Created", time(run.createTime)],
    ["Attempt", `${run.attempt} of ${run.maxAttempts}`],
  ];
  if (run.jobId) facts.push(["Job", h("a", { href: link(`jobs/${run.jobId}`) }, shortId(run.jobId))]);
  if (run.spec.case === "restore") {
    facts.push(["Snapshot", h("a", { href: link(`snapshots/${run.spec.value.snapshotRunId}`) }, shortId(run.spec.value.snapshotRunId))]);
    facts.push(["Destination", run.spec.value.destinationPath || "in place"]);
    facts.push(["Paths", run.spec.value.paths.join(", ") || "everything"]);
  }
  add(main, 
    h("h1", {}, `Run ${shortId(run.id)}`),
    h("dl", {}, facts.map(([name, value]) => [h("dt", {}, name), h("dd", {}, value)])),
    progress,
  );
  const finished = isFinal(run) ? run : await watchRun(id, progress, signal);
  if (finished?.state === RunState.SUCCEEDED && finished.kind === RunKind.BACKUP) {
    main.append(h("p", {}, h("a", { href: link(`snapshots/${id}`) }, "Browse this snapshot")));
  }
  const errors = (await api.runs.listRunErrors({ runId: id, pageSize: 100 })).errors;
  if (errors.length) {
    main.append(table("Per-file errors", ["Path", "Error", "Attempt"], errors.map((e) => [e.path, e.message, e.attempt])));
  }
}
