// The snapshot browser: a snapshot's tree from the catalog, one directory at
// a time, with sizes, modes and times; search by path; a file's versions;
// restore of picked files or the directory shown; download of one file (a
// worker reads it and streams it through the control plane); compare with
// another snapshot.

import { api, errorText } from "../api";
import { add, field, h, replace, table, type Child } from "../dom";
import { bytes, modeString, shortId, time } from "../format";
import { FileKind, type SnapshotFile } from "../gen/coffer/v1/objects_pb";
import { RunKind, RunState } from "../gen/coffer/v1/runs_pb";
import { go, link, type PageContext } from "../nav";

/** At most this many entries are read for one directory or search. */
const LIST_LIMIT = 5000;

async function listFiles(runId: string, pathPrefix: string): Promise<{ files: SnapshotFile[]; truncated: boolean }> {
  const files: SnapshotFile[] = [];
  let pageToken = "";
  do {
    const page = await api.objects.listSnapshotFiles({ runId, pathPrefix, pageSize: 1000, pageToken });
    files.push(...page.files);
    pageToken = page.nextPageToken;
  } while (pageToken && files.length < LIST_LIMIT);
  return { files, truncated: pageToken !== "" };
}

interface Entry {
  name: string;
  path: string;
  file?: SnapshotFile;
}

/** The children of directory `dir` ("" for the root), including directories only implied by deeper paths. */
function children(files: SnapshotFile[], dir: string): Entry[] {
  const prefix = dir ? `${dir}/` : "";
  const entries = new Map<string, Entry>();
  for (const file of files) {
    if (!file.path.startsWith(prefix) || file.path === dir) continue;
    const rest = file.path.slice(prefix.length);
    const name = rest.split("/")[0];
    const path = prefix + name;
    const existing = entries.get(name);
    if (rest === name) entries.set(name, { name, path, file });
    else if (!existing) entries.set(name, { name, path });
  }
  return [...entries.values()].sort((a, b) => a.name.localeCompare(b.name));
}

function isDirectory(entry: Entry): boolean {
  return !entry.file || entry.file.version?.kind === FileKind.DIRECTORY;
}

function breadcrumbs(runId: string, dir: string): HTMLElement {
  const parts = dir ? dir.split("/") : [];
  const crumbs: Child[] = [h("a", { href: link(`snapshots/${runId}`) }, "root")];
  parts.forEach((part, i) => {
    crumbs.push(" / ", h("a", { href: link(`snapshots/${runId}`, { path: parts.slice(0, i + 1).join("/") }) }, part));
  });
  return h("nav", { "aria-label": "Directory", class: "crumbs" }, crumbs);
}

async function showVersions(into: HTMLElement, entry: Entry): Promise<void> {
  const objectId = entry.file?.objectId ?? "";
  try {
    const versions = (await api.objects.listObjectVersions({ objectId, pageSize: 100 })).versions;
    replace(
      into,
      h("h2", { id: "versions-title", tabindex: "-1" }, `Versions of ${entry.path}`),
      table(
        `Every version of ${entry.path}, newest first`,
        ["First snapshot", "Until", "Size", "Mode", "Modified", "Content"],
        versions.map((v) => [
          h("a", { href: link(`snapshots/${v.firstRunId}`) }, shortId(v.firstRunId)),
          v.deleted ? "deleted" : v.lastRunId ? shortId(v.lastRunId) : "current",
          bytes(v.sizeBytes),
          modeString(v.kind, v.mode),
          time(v.mtime),
          v.contentHash.slice(0, 12),
        ]),
      ),
    );
    into.querySelector<HTMLElement>("#versions-title")?.focus();
  } catch (error) {
    replace(into, h("p", { class: "error" }, errorText(error)));
  }
}

/**
 * Downloads one file through `DownloadService` and hands it to the browser
 * as a file to save. The bytes are gathered in memory first: the stream ends
 * OK only once all of them arrived, and an error before that saves nothing.
 */
async function download(runId: string, entry: Entry, status: HTMLElement): Promise<void> {
  status.className = "";
  status.textContent = `Downloading ${entry.path}…`;
  try {
    const parts: Uint8Array[] = [];
    let received = 0;
    for await (const message of api.downloads.downloadFile({ snapshotRunId: runId, path: entry.path })) {
      if (message.part.case === "data") {
        parts.push(message.part.value);
        received += message.part.value.length;
      }
    }
    const url = URL.createObjectURL(new Blob(parts as BlobPart[], { type: "application/octet-stream" }));
    const anchor = h("a", { href: url, download: entry.name.split("/").pop() ?? "download" });
    document.body.append(anchor);
    anchor.click();
    anchor.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60_000);
    status.textContent = `Downloaded ${entry.path} (${bytes(received)}).`;
  } catch (error) {
    status.textContent = errorText(error);
    status.className = "error";
  }
}

function restoreForm(runId: string, dir: string, selected: Set<string>): HTMLElement {
  const destination = h("input", { type: "text", name: "destination", placeholder: "/restore/here", required: true });
  const status = h("p", { role: "status" });
  const form = h(
    "form",
    {
      "aria-labelledby": "restore-title",
      onsubmit: async (event: Event) => {
        event.preventDefault();
        const paths = selected.size ? [...selected] : dir ? [dir] : [];
        try {
          const run = (
            await api.runs.createRun({
              spec: { case: "restore", value: { snapshotRunId: runId, paths, destinationPath: destination.value.trim() } },
            })
          ).run;
          if (run) go(`runs/${run.id}`);
        } catch (error) {
          status.textContent = errorText(error);
          status.className = "error";
        }
      },
    },
    field("Restore to (absolute path)", destination),
    h("button", { type: "submit" }, "Restore"),
    status,
  );
  return h(
    "section",
    {},
    h("h2", { id: "restore-title" }, "Restore"),
    h("p", {}, "Restores the files picked above, or this whole directory when none is picked."),
    form,
  );
}

async function compareForm(runId: string, jobId: string): Promise<HTMLElement | null> {
  if (!jobId) return null;
  const others = (await api.runs.listRuns({ jobId, kind: RunKind.BACKUP, state: RunState.SUCCEEDED, pageSize: 100 })).runs.filter(
    (run) => run.id !== runId,
  );
  if (!others.length) return null;
  const select = h("select", { name: "other" }, others.map((run) => h("option", { value: run.id }, `${shortId(run.id)} (${time(run.finishTime)})`)));
  const form = h(
    "form",
    {
      "aria-labelledby": "compare-title",
      onsubmit: (event: Event) => {
        event.preventDefault();
        const [from, to] = select.value < runId ? [select.value, runId] : [runId, select.value];
        go(`diff?${new URLSearchParams({ from, to })}`);
      },
    },
    field("Compare with snapshot", select),
    h("button", { type: "submit" }, "Show changes"),
  );
  return h("section", {}, h("h2", { id: "compare-title" }, "Compare"), form);
}

export async function snapshotPage({ main, segments, params }: PageContext): Promise<void> {
  const runId = segments[0] ?? "";
  const dir = params.get("path") ?? "";
  const search = params.get("search") ?? "";
  const run = (await api.runs.getRun({ id: runId })).run;
  const { files, truncated } = await listFiles(runId, search || (dir ? `${dir}/` : ""));
  const entries: Entry[] = search
    ? files.map((file) => ({ name: file.path, path: file.path, file }))
    : children(files, dir);
  const selected = new Set<string>();
  const versions = h("section", { "aria-live": "polite" });
  const downloadStatus = h("p", { role: "status" });
  const rows = entries.map((entry) => {
    const version = entry.file?.version;
    const pick = h("input", {
      type: "checkbox",
      "aria-label": `Pick ${entry.path} for restore`,
      onchange: (event: Event) => {
        if ((event.target as HTMLInputElement).checked) selected.add(entry.path);
        else selected.delete(entry.path);
      },
    });
    const name = isDirectory(entry)
      ? h("a", { href: link(`snapshots/${runId}`, { path: entry.path }) }, `${entry.name}/`)
      : entry.name;
    return [
      pick,
      name,
      version ? modeString(version.kind, version.mode) : "d?????????",
      version && !isDirectory(entry) ? bytes(version.sizeBytes) : "",
      version ? time(version.mtime) : "",
      entry.file
        ? [
            h("button", { type: "button", onclick: () => void showVersions(versions, entry) }, h("span", { class: "sr-only" }, `${entry.path}: `), "Versions"),
            version?.kind === FileKind.REGULAR
              ? [" ", h("button", { type: "button", onclick: () => void download(runId, entry, downloadStatus) }, h("span", { class: "sr-only" }, `${entry.path}: `), "Download")]
              : null,
          ]
        : "",
    ];
  });
  const searchInput = h("input", { type: "search", name: "search", value: search });
  add(main, 
    h("h1", {}, `Snapshot ${shortId(runId)}`),
    h("p", {}, run ? `Taken ${time(run.finishTime)}${run.jobId ? "" : " (ad hoc)"}` : ""),
    run?.jobId ? h("p", {}, h("a", { href: link(`jobs/${run.jobId}`) }, "Back to the job")) : null,
    h(
      "form",
      {
        role: "search",
        onsubmit: (event: Event) => {
          event.preventDefault();
          const query = searchInput.value.trim();
          go(`snapshots/${encodeURIComponent(runId)}${query ? `?${new URLSearchParams({ search: query })}` : ""}`);
        },
      },
      field("Find paths starting with", searchInput),
      h("button", { type: "submit" }, "Search"),
    ),
    search ? h("p", {}, `Paths starting with “${search}”`) : breadcrumbs(runId, dir),
    truncated ? h("p", { class: "muted" }, `Only the first ${LIST_LIMIT} entries are shown.`) : null,
    entries.length
      ? table(search ? "Matching paths" : `Contents of /${dir}`, ["Pick", "Name", "Mode", "Size", "Modified", "Actions"], rows)
      : h("p", {}, "Nothing here."),
    downloadStatus,
    versions,
    restoreForm(runId, dir, selected),
    await compareForm(runId, run?.jobId ?? ""),
  );
}
