// The overview: every job with its last run, next run and health; runs in
// progress with live progress; recent failures; workers and free slots.

import { timestampDate } from "@bufbuild/protobuf/wkt";
import { api, errorText, isPermissionDenied } from "../api";
import { add, h, table, type Child } from "../dom";
import { bytes, elapsed, seconds, shortId, time } from "../format";
import { RunKind, RunState, type Run } from "../gen/coffer/v1/runs_pb";
import type { Job } from "../gen/coffer/v1/jobs_pb";
import { link, type PageContext } from "../nav";
import { drawProgress, watchRun } from "../progress";

/** A job's health: failing when its last run failed, stale when a scheduled job's last success is old. */
function health(job: Job, last: Run | undefined): string {
  if (last?.state === RunState.FAILED) return "failing";
  if (!job.schedule?.cron || job.schedule.paused) return last ? "ok" : "never run";
  const finished = last?.finishTime ? timestampDate(last.finishTime).getTime() : 0;
  const next = job.nextRunTime ? timestampDate(job.nextRunTime).getTime() : 0;
  // A schedule whose next fire time has long passed without a run is stuck.
  if (next && Date.now() - next > 3600_000) return "stale";
  return finished ? "ok" : "never run";
}

async function jobsSection(): Promise<HTMLElement> {
  const jobs = (await api.jobs.listJobs({ pageSize: 200 })).jobs;
  const lastRuns = await Promise.all(
    jobs.map(async (job) =>
      job.lastRun?.runId ? (await api.runs.getRun({ id: job.lastRun.runId })).run : undefined,
    ),
  );
  const rows: Child[][] = jobs.map((job, i) => {
    const last = lastRuns[i];
    return [
      h("a", { href: link(`jobs/${job.id}`) }, job.name),
      last ? h("a", { href: link(`runs/${last.id}`) }, RunState[last.state].toLowerCase()) : "none",
      last ? time(last.finishTime ?? last.createTime) : "",
      last ? (Number.isNaN(elapsed(last.startTime, last.finishTime)) ? "" : seconds(elapsed(last.startTime, last.finishTime))) : "",
      last?.progress ? bytes(last.progress.bytesSeen) : "",
      time(job.nextRunTime) || (job.schedule?.cron ? "paused" : "on demand"),
      h("span", { class: `health ${health(job, last).replace(" ", "-")}` }, health(job, last)),
    ];
  });
  return h(
    "section",
    { "aria-labelledby": "jobs-title" },
    h("h2", { id: "jobs-title" }, "Jobs"),
    jobs.length === 0
      ? h("p", {}, "No jobs yet.")
      : table("Jobs with their last run", ["Job", "Last run", "When", "Duration", "Size", "Next run", "Health"], rows),
  );
}

async function activeSection(signal: AbortSignal): Promise<HTMLElement> {
  const [running, queued] = await Promise.all([
    api.runs.listRuns({ state: RunState.RUNNING, pageSize: 50 }),
    api.runs.listRuns({ state: RunState.QUEUED, pageSize: 50 }),
  ]);
  const runs = [...running.runs, ...queued.runs];
  const items = runs.map((run) => {
    const bar = h("span", { class: "run-progress" });
    drawProgress(bar, run);
    void watchRun(run.id, bar, signal).catch(() => undefined);
    return h(
      "li",
      {},
      h("a", { href: link(`runs/${run.id}`) }, `${RunKind[run.kind].toLowerCase()} ${shortId(run.id)}`),
      " ",
      bar,
      run.waitingMessage ? h("span", { class: "muted" }, ` ${run.waitingMessage}`) : null,
    );
  });
  return h(
    "section",
    { "aria-labelledby": "active-title" },
    h("h2", { id: "active-title" }, "Runs in progress"),
    items.length ? h("ul", { class: "runs" }, items) : h("p", {}, "Nothing is running."),
  );
}

async function failuresSection(): Promise<HTMLElement> {
  const failed = (await api.runs.listRuns({ state: RunState.FAILED, pageSize: 10 })).runs;
  return h(
    "section",
    { "aria-labelledby": "failures-title" },
    h("h2", { id: "failures-title" }, "Recent failures"),
    failed.length === 0
      ? h("p", {}, "No failed runs.")
      : table(
          "The last failed runs",
          ["Run", "Kind", "Finished", "Error"],
          failed.map((run) => [
            h("a", { href: link(`runs/${run.id}`) }, shortId(run.id)),
            RunKind[run.kind].toLowerCase(),
            time(run.finishTime),
            run.error,
          ]),
        ),
  );
}

async function workersSection(): Promise<HTMLElement> {
  const section = h("section", { "aria-labelledby": "workers-title" }, h("h2", { id: "workers-title" }, "Workers"));
  try {
    const workers = (await api.workers.listWorkers({})).workers;
    section.append(
      table(
        "Registered workers",
        ["Worker", "Connected", "Slots", "Free slots", "Last seen", "Version"],
        workers.map((w) => [
          w.name,
          w.connected ? "yes" : "no",
          w.slots,
          w.connected ? Math.max(0, w.slots - w.leases.length) : 0,
          time(w.lastSeenTime),
          w.version,
        ]),
      ),
    );
  } catch (error) {
    section.append(h("p", { class: "muted" }, isPermissionDenied(error) ? "Only admins see the workers." : errorText(error)));
  }
  return section;
}

export async function overviewPage({ main, signal }: PageContext): Promise<void> {
  // The heading comes with the data, so "Overview" on screen means loaded.
  const sections = await Promise.all([jobsSection(), activeSection(signal), failuresSection(), workersSection()]);
  add(main, h("h1", {}, "Overview"), ...sections);
}
