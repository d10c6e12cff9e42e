// The API reference, generated from the protos: the descriptor set with
// source info (built with the console, `api.binpb`) rendered as services,
// methods, messages and enums with their comments.

import { fromBinary } from "@bufbuild/protobuf";
import {
  FileDescriptorSetSchema,
  FieldDescriptorProto_Label,
  FieldDescriptorProto_Type,
  type FieldDescriptorProto,
  type FileDescriptorProto,
} from "@bufbuild/protobuf/wkt";
import { add, h, type Child } from "../dom";
import type { PageContext } from "../nav";

// Field numbers of FileDescriptorProto, DescriptorProto and friends, as
// source-code-info paths use them.
const MESSAGE_TYPE = 4;
const ENUM_TYPE = 5;
const SERVICE = 6;
const FIELD = 2;
const METHOD = 2;
const ENUM_VALUE = 2;

function comments(file: FileDescriptorProto): Map<string, string> {
  const byPath = new Map<string, string>();
  for (const location of file.sourceCodeInfo?.location ?? []) {
    const text = location.leadingComments.trim();
    if (text) byPath.set(location.path.join("."), text);
  }
  return byPath;
}

function typeName(f: FieldDescriptorProto): string {
  const base = f.typeName ? f.typeName.replace(/^\./, "") : (FieldDescriptorProto_Type[f.type] ?? "").toLowerCase();
  return f.label === FieldDescriptorProto_Label.REPEATED ? `repeated ${base}` : base;
}

function anchor(name: string): string {
  return `api-${name.replace(/\./g, "-")}`;
}

function doc(text: string | undefined): Child {
  return text ? h("p", { class: "doc" }, text) : null;
}

function renderFile(file: FileDescriptorProto): Child[] {
  const docs = comments(file);
  const out: Child[] = [];
  file.service.forEach((service, s) => {
    out.push(
      h("h2", { id: anchor(service.name) }, `service ${service.name}`),
      doc(docs.get(`${SERVICE}.${s}`)),
      h(
        "dl",
        { class: "methods" },
        service.method.map((m, i) => [
          h("dt", {}, `${m.name}(${m.clientStreaming ? "stream " : ""}${m.inputType.replace(/^\.coffer\.v1\./, "")}) → ${m.serverStreaming ? "stream " : ""}${m.outputType.replace(/^\.coffer\.v1\./, "")}`),
          h("dd", {}, docs.get(`${SERVICE}.${s}.${METHOD}.${i}`) ?? ""),
        ]),
      ),
    );
  });
  file.messageType.forEach((message, m) => {
    out.push(
      h("h3", { id: anchor(message.name) }, `message ${message.name}`),
      doc(docs.get(`${MESSAGE_TYPE}.${m}`)),
      message.field.length
        ? h(
            "table",
            {},
            h("caption", {}, `Fields of ${message.name}`),
            h("thead", {}, h("tr", {}, ["Field", "Number", "Type", "Description"].map((c) => h("th", { scope: "col" }, c)))),
            h(
              "tbody",
              {},
              message.field.map((f, i) =>
                h("tr", {}, h("td", {}, f.name), h("td", {}, f.number), h("td", {}, typeName(f)), h("td", {}, docs.get(`${MESSAGE_TYPE}.${m}.${FIELD}.${i}`) ?? "")),
              ),
            ),
          )
        : null,
    );
  });
  file.enumType.forEach((e, n) => {
    out.push(
      h("h3", { id: anchor(e.name) }, `enum ${e.name}`),
      doc(docs.get(`${ENUM_TYPE}.${n}`)),
      h(
        "dl",
        {},
        e.value.map((v, i) => [h("dt", {}, `${v.name} = ${v.number}`), h("dd", {}, docs.get(`${ENUM_TYPE}.${n}.${ENUM_VALUE}.${i}`) ?? "")]),
      ),
    );
  });
  return out;
}

export async function apiReferencePage({ main, params, signal }: PageContext): Promise<void> {
  const response = await fetch("/api.binpb", { signal });
  const set = fromBinary(FileDescriptorSetSchema, new Uint8Array(await response.arrayBuffer()));
  const files = set.file.filter((f) => f.package === "coffer.v1").sort((a, b) => a.name.localeCompare(b.name));
  add(main, 
    h("h1", {}, "API reference: coffer.v1"),
    h("p", {}, "Every service the console, the CLI and grpcurl use, generated from the protos."),
    h(
      "nav",
      { "aria-label": "Services" },
      h("ul", {}, files.flatMap((f) => f.service.map((s) => h("li", {}, h("a", { href: `#/api?service=${s.name}` }, s.name))))),
    ),
    files.map((f) => h("section", { "aria-label": f.name }, renderFile(f))),
  );
  const wanted = params.get("service");
  const heading = wanted ? document.getElementById(anchor(wanted)) : null;
  if (heading) {
    heading.tabIndex = -1;
    heading.focus();
  }
}
