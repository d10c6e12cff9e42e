// A job: its run history as charts, its snapshots, its retention plan with
// the rule that keeps each snapshot, and "back up now".

import { api, errorText } from "../api";
import { barChart } from "../chart";
import { add, h, table } from "../dom";
import { bytes, elapsed, seconds, shortId, time } from "../format";
import { RunKind, RunState, type Run } from "../gen/coffer/v1/runs_pb";
import { go, link, type PageContext } from "../nav";

async function backupRuns(jobId: string): Promise<Run[]> {
  const runs = (await api.runs.listRuns({ jobId, kind: RunKind.BACKUP, pageSize: 100 })).runs;
  return runs.filter((run) => run.state === RunState.SUCCEEDED || run.state === RunState.FAILED).reverse();
}

function charts(runs: Run[]): HTMLElement {
  const labels = runs.map((run) => time(run.finishTime));
  const count = (value: number) => String(Math.round(value));
  const size = (value: number) => bytes(Math.round(value));
  let stored = 0;
  const uploadedSoFar = runs.map((run) => (stored += Number(run.progress?.bytesUploaded ?? 0n)));
  return h(
    "section",
    { "aria-labelledby": "history-title", class: "charts" },
    h("h2", { id: "history-title" }, "Run history"),
    barChart("Duration", labels, {
      label: "Duration",
      values: runs.map((run) => Math.max(0, elapsed(run.startTime, run.finishTime) || 0)),
      format: seconds,
    }),
    barChart("Bytes read", labels, { label: "Bytes read", values: runs.map((r) => Number(r.progress?.bytesRead ?? 0n)), format: size }),
    barChart("Bytes uploaded", labels, { label: "Bytes uploaded", values: runs.map((r) => Number(r.progress?.bytesUploaded ?? 0n)), format: size }),
    barChart("Files", labels, { label: "Files", values: runs.map((r) => Number(r.progress?.filesSeen ?? 0n)), format: count }),
    barChart("Storage written by the job so far", labels, { label: "Uploaded in total", values: uploadedSoFar, format: size }),
  );
}

function snapshots(runs: Run[]): HTMLElement {
  const succeeded = runs.filter((run) => run.state === RunState.SUCCEEDED).reverse();
  return h(
    "section",
    { "aria-labelledby": "snapshots-title" },
    h("h2", { id: "snapshots-title" }, "Snapshots"),
    table(
      "Snapshots of this job, newest first",
      ["Snapshot", "Taken", "Files", "Size", "Compare"],
      succeeded.map((run, i) => [
        h("a", { href: link(`snapshots/${run.id}`) }, shortId(run.id)),
        time(run.finishTime),
        String(run.progress?.filesSeen ?? 0n),
        bytes(run.progress?.bytesSeen ?? 0n),
        succeeded[i + 1]
          ? h("a", { href: link("diff", { from: succeeded[i + 1].id, to: run.id }) }, `changes since ${shortId(succeeded[i + 1].id)}`)
          : "",
      ]),
    ),
  );
}

async function retention(jobId: string): Promise<HTMLElement> {
  const section = h("section", { "aria-labelledby": "retention-title" }, h("h2", { id: "retention-title" }, "Retention plan"));
  try {
    const plan = await api.retention.planRetention({ jobId });
    section.append(
      h("p", {}, `${plan.keepCount} kept, ${plan.removeCount} would be removed (as of ${time(plan.planTime)}).`),
      table(
        "Each snapshot and the rules that keep it",
        ["Snapshot", "Taken", "Fate", "Kept by"],
        plan.decisions.map((d) => [shortId(d.runId), time(d.snapshotTime), d.keep ? "keep" : "remove", d.reasons.join(", ")]),
      ),
    );
  } catch (error) {
    section.append(h("p", { class: "error" }, errorText(error)));
  }
  return section;
}

export async function jobPage({ main, segments }: PageContext): Promise<void> {
  const jobId = segments[0] ?? "";
  const job = (await api.jobs.getJob({ id: jobId })).job;
  if (!job) return;
  const status = h("p", { role: "status" });
  const backUp = h(
    "button",
    {
      type: "button",
      onclick: async () => {
        try {
          const run = (await api.runs.createRun({ spec: { case: "backup", value: { jobId } } })).run;
          if (run) go(`runs/${run.id}`);
        } catch (error) {
          status.textContent = errorText(error);
        }
      },
    },
    "Back up now",
  );
  const runs = await backupRuns(jobId);
  add(main, 
    h("h1", {}, `Job ${job.name}`),
    h(
      "dl",
      {},
      h("dt", {}, "Source"),
      h("dd", {}, job.sourcePath),
      h("dt", {}, "Schedule"),
      h("dd", {}, job.schedule?.cron ? `${job.schedule.cron} (${job.schedule.timeZone || "UTC"})` : "on demand"),
      h("dt", {}, "Next run"),
      h("dd", {}, time(job.nextRunTime) || "none"),
    ),
    backUp,
    status,
    charts(runs),
    snapshots(runs),
    await retention(jobId),
  );
}
