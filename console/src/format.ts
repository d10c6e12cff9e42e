// Numbers, sizes and times as the console shows them.

import { timestampDate, type Timestamp, type Duration } from "@bufbuild/protobuf/wkt";
import { FileKind } from "./gen/coffer/v1/objects_pb";
import { RunState } from "./gen/coffer/v1/runs_pb";

export function bytes(value: bigint | number): string {
  let n = Number(value);
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let unit = 0;
  while (n >= 1024 && unit < units.length - 1) {
    n /= 1024;
    unit += 1;
  }
  return unit === 0 ? `${n} B` : `${n.toFixed(2)} ${units[unit]}`;
}

export function time(value: Timestamp | undefined): string {
  if (!value) return "";
  return timestampDate(value).toISOString().replace("T", " ").replace(/\.\d+Z$/, " UTC");
}

export function seconds(value: number): string {
  if (value < 60) return `${value.toFixed(1)} s`;
  const minutes = Math.floor(value / 60);
  return `${minutes} min ${Math.round(value % 60)} s`;
}

/** Seconds between two timestamps, or NaN when one is missing. */
export function elapsed(start: Timestamp | undefined, end: Timestamp | undefined): number {
  if (!start || !end) return NaN;
  return (timestampDate(end).getTime() - timestampDate(start).getTime()) / 1000;
}

export function duration(value: Duration | undefined): string {
  return value ? seconds(Number(value.seconds)) : "";
}

export function stateName(state: RunState): string {
  return (RunState[state] ?? "UNKNOWN").toLowerCase();
}

/** `drwxr-xr-x`. */
export function modeString(kind: FileKind, mode: number): string {
  const type = kind === FileKind.DIRECTORY ? "d" : kind === FileKind.SYMLINK ? "l" : "-";
  let text = type;
  for (const shift of [6, 3, 0]) {
    const bits = (mode >> shift) & 7;
    text += (bits & 4 ? "r" : "-") + (bits & 2 ? "w" : "-") + (bits & 1 ? "x" : "-");
  }
  return text;
}

/** The short form of an id, for tables: its random end (UUIDv7 ids made close together share their start). */
export function shortId(id: string): string {
  return id.slice(-8);
}
