// A run's live progress: a labelled progress bar and counters, fed by
// WatchRun until the run ends.

import { api } from "./api";
import { h, replace } from "./dom";
import { bytes, duration, stateName } from "./format";
import { RunPhase, RunState, type Run } from "./gen/coffer/v1/runs_pb";

export function isFinal(run: Run): boolean {
  return run.state === RunState.SUCCEEDED || run.state === RunState.FAILED || run.state === RunState.CANCELLED;
}

/** The fraction done, by bytes once totals are known, else by files. */
function fraction(run: Run): number {
  const p = run.progress;
  if (run.state === RunState.SUCCEEDED) return 1;
  if (!p) return 0;
  if (p.bytesSeen > 0n) return Number(p.bytesDone) / Number(p.bytesSeen);
  if (p.filesSeen > 0n) return Number(p.filesDone) / Number(p.filesSeen);
  return 0;
}

/** Draws `run`'s state and progress into `into`. */
export function drawProgress(into: HTMLElement, run: Run): void {
  const p = run.progress;
  const percent = Math.round(Math.min(1, fraction(run)) * 100);
  into.dataset.state = stateName(run.state);
  replace(
    into,
    h("span", { class: `state ${stateName(run.state)}` }, stateName(run.state)),
    " ",
    h("progress", { max: 100, value: percent, "aria-label": `Progress of run ${run.id}` }),
    ` ${percent}%`,
    p
      ? h(
          "span",
          { class: "counters" },
          ` ${p.filesDone}/${p.filesSeen} files, ${bytes(p.bytesDone)} of ${bytes(p.bytesSeen)}, ` +
            `${bytes(p.bytesUploaded)} uploaded` +
            (p.phase ? `, ${RunPhase[p.phase].toLowerCase()}` : "") +
            (p.eta ? `, ${duration(p.eta)} left` : "") +
            (p.uploadLimitBytesPerSecond > 0n ? `, uploads limited to ${bytes(p.uploadLimitBytesPerSecond)}/s` : "") +
            (p.downloadLimitBytesPerSecond > 0n ? `, downloads limited to ${bytes(p.downloadLimitBytesPerSecond)}/s` : ""),
        )
      : null,
    run.error ? h("span", { class: "error" }, ` ${run.error}`) : null,
  );
}

/** Follows run `id` until it ends or `signal` fires, drawing every update. */
export async function watchRun(id: string, into: HTMLElement, signal: AbortSignal): Promise<Run | undefined> {
  let last: Run | undefined;
  for await (const update of api.runs.watchRun({ id }, { signal })) {
    if (!update.run) continue;
    last = update.run;
    drawProgress(into, last);
  }
  return last;
}
