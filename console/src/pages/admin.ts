// Administration: users, API tokens (a new token's secret is shown once),
// grants, secrets (their metadata; values are never returned) and the audit
// log. Non-admins see their own tokens; the rest answers PERMISSION_DENIED,
// which the page says.

import { api, errorText, isPermissionDenied } from "../api";
import { add, field, h, replace, table } from "../dom";
import { shortId, time } from "../format";
import { GrantUse } from "../gen/coffer/v1/common_pb";
import { TokenScope } from "../gen/coffer/v1/users_pb";
import type { PageContext } from "../nav";

/** A titled section filled by `fill`; a refusal becomes a sentence. */
async function section(id: string, title: string, fill: () => Promise<Node[]>): Promise<HTMLElement> {
  const element = h("section", { "aria-labelledby": id }, h("h2", { id }, title));
  try {
    element.append(...(await fill()));
  } catch (error) {
    element.append(h("p", { class: "muted" }, isPermissionDenied(error) ? "Only admins see this." : errorText(error)));
  }
  return element;
}

async function users(): Promise<Node[]> {
  const list = (await api.users.listUsers({ pageSize: 200 })).users;
  const username = h("input", { type: "text", name: "username", required: true });
  const email = h("input", { type: "email", name: "email", required: true });
  const status = h("p", { role: "status" });
  const form = h(
    "form",
    {
      "aria-label": "New user",
      onsubmit: async (event: Event) => {
        event.preventDefault();
        try {
          const user = (await api.users.createUser({ user: { username: username.value, email: email.value } })).user;
          status.textContent = `Created ${user?.username} (${user?.id}).`;
        } catch (error) {
          status.textContent = errorText(error);
        }
      },
    },
    field("Username", username),
    field("Email", email),
    h("button", { type: "submit" }, "Create user"),
    status,
  );
  return [
    table("Users", ["Username", "Email", "Admin", "Id", "Created"], list.map((u) => [u.username, u.email, u.admin ? "yes" : "", u.id, time(u.createTime)])),
    form,
  ];
}

async function tokens(): Promise<Node[]> {
  const me = (await api.users.getCurrentUser({})).user;
  const list = (await api.users.listApiTokens({ userId: me?.id ?? "", pageSize: 200 })).tokens;
  const name = h("input", { type: "text", name: "display_name", required: true });
  const secret = h("output", { "aria-live": "polite", class: "secret" });
  const form = h(
    "form",
    {
      "aria-label": "New token",
      onsubmit: async (event: Event) => {
        event.preventDefault();
        try {
          const created = await api.users.createApiToken({ userId: me?.id ?? "", displayName: name.value, scope: TokenScope.USER });
          replace(secret, "New token (shown once, copy it now): ", h("code", {}, created.secret));
        } catch (error) {
          replace(secret, errorText(error));
        }
      },
    },
    field("Token name", name),
    h("button", { type: "submit" }, "Create token"),
    secret,
  );
  return [
    table("Your API tokens", ["Name", "Prefix", "Created", "Last used", "Expires"], list.map((t) => [t.displayName, t.prefix, time(t.createTime), time(t.lastUsedTime), time(t.expireTime) || "never"])),
    form,
  ];
}

async function grants(): Promise<Node[]> {
  const list = (await api.grants.listGrants({ pageSize: 200 })).grants;
  return [
    table(
      "Grants",
      ["Grantee", "Root", "Uses", "Worker labels"],
      list.map((g) => [
        shortId(g.granteeId),
        g.root,
        g.uses.map((use) => (GrantUse[use] ?? String(use)).toLowerCase()).join(", "),
        Object.entries(g.workerSelector).map(([k, v]) => `${k}=${v}`).join(", "),
      ]),
    ),
  ];
}

async function secrets(): Promise<Node[]> {
  const list = (await api.secrets.listSecrets({ pageSize: 200 })).secrets;
  return [
    table("Secrets (values are never shown)", ["Name", "Owner", "Access key", "Updated"], list.map((s) => [s.name, shortId(s.ownerId), s.accessKeyIdHint, time(s.updateTime)])),
  ];
}

async function audit(): Promise<Node[]> {
  const list = (await api.audit.listAuditEvents({ pageSize: 50 })).auditEvents;
  return [
    table(
      "The latest audited calls",
      ["Time", "Action", "Result", "Actor", "Targets", "Peer"],
      list.map((e) => [time(e.time), e.action, e.result, shortId(e.actorUserId), e.targetIds.map(shortId).join(", "), e.peer]),
    ),
  ];
}

export async function adminPage({ main }: PageContext): Promise<void> {
  add(main, h("h1", {}, "Administration"));
  add(main, 
    ...(await Promise.all([
      section("users-title", "Users", users),
      section("tokens-title", "API tokens", tokens),
      section("grants-title", "Grants", grants),
      section("secrets-title", "Secrets", secrets),
      section("audit-title", "Audit log", audit),
    ])),
  );
}
