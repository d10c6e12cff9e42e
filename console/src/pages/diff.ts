// What changed between two snapshots (ObjectService.DiffSnapshots): the
// summary, then the changes a page at a time, filterable by path prefix and
// kind of change.

import { api } from "../api";
import { add, field, h, table } from "../dom";
import { bytes, shortId } from "../format";
import { SnapshotChangeKind, type SnapshotChange } from "../gen/coffer/v1/objects_pb";
import { go, link, type PageContext } from "../nav";

const KIND_NAMES: Record<number, string> = {
  [SnapshotChangeKind.ADDED]: "added",
  [SnapshotChangeKind.REMOVED]: "removed",
  [SnapshotChangeKind.CONTENT]: "content changed",
  [SnapshotChangeKind.METADATA]: "metadata changed",
};

function sizeOf(change: SnapshotChange): string {
  const before = change.fromVersion ? bytes(change.fromVersion.sizeBytes) : "";
  const after = change.toVersion ? bytes(change.toVersion.sizeBytes) : "";
  if (!change.fromVersion) return after;
  if (!change.toVersion) return before;
  return before === after ? after : `${before} → ${after}`;
}

export async function diffPage({ main, params }: PageContext): Promise<void> {
  const from = params.get("from") ?? "";
  const to = params.get("to") ?? "";
  const prefix = params.get("prefix") ?? "";
  const kind = Number(params.get("kind") ?? "0");
  const pageToken = params.get("page") ?? "";
  const answer = await api.objects.diffSnapshots({
    fromRunId: from,
    toRunId: to,
    pathPrefix: prefix,
    changeKinds: kind ? [kind] : [],
    pageSize: 200,
    pageToken,
  });
  const s = answer.summary;
  const prefixInput = h("input", { type: "text", name: "prefix", value: prefix });
  const kindSelect = h(
    "select",
    { name: "kind" },
    h("option", { value: "0" }, "every change"),
    Object.entries(KIND_NAMES).map(([value, name]) => h("option", { value, selected: Number(value) === kind }, name)),
  );
  const query = (extra: Record<string, string>) => new URLSearchParams({ from, to, ...extra }).toString();
  add(main, 
    h("h1", {}, "Changes between snapshots"),
    h(
      "p",
      {},
      "From ",
      h("a", { href: link(`snapshots/${from}`) }, shortId(from)),
      " to ",
      h("a", { href: link(`snapshots/${to}`) }, shortId(to)),
    ),
    s
      ? h(
          "ul",
          { class: "summary", "aria-label": "Summary" },
          h("li", {}, `${s.addedCount} added (${bytes(s.addedBytes)})`),
          h("li", {}, `${s.removedCount} removed (${bytes(s.removedBytes)})`),
          h("li", {}, `${s.contentChangedCount} changed (${bytes(s.changedBytes)})`),
          h("li", {}, `${s.metadataChangedCount} with new metadata only`),
        )
      : null,
    h(
      "form",
      {
        "aria-label": "Filter changes",
        onsubmit: (event: Event) => {
          event.preventDefault();
          go(`diff?${query({ prefix: prefixInput.value, kind: kindSelect.value })}`);
        },
      },
      field("Paths starting with", prefixInput),
      field("Kind of change", kindSelect),
      h("button", { type: "submit" }, "Filter"),
    ),
    answer.changes.length
      ? table(
          "Changed paths",
          ["Change", "Path", "Size", "What changed"],
          answer.changes.map((c) => [
            h("span", { class: `change k${c.kind}` }, KIND_NAMES[c.kind] ?? "?"),
            c.path,
            sizeOf(c),
            c.changedFields.join(", "),
          ]),
        )
      : h("p", {}, "No changes."),
    answer.nextPageToken
      ? h("a", { href: `#/diff?${query({ prefix, kind: String(kind), page: answer.nextPageToken })}` }, "Next page")
      : null,
  );
}
