// The console's clients of the coffer.v1 API: gRPC-Web to the origin that
// served the page, with the user's token as the `authorization` metadata,
// exactly as any other client sends it. No cookies, so no CSRF.

import { Code, ConnectError, createClient, type Client, type Interceptor } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { AuditService } from "./gen/coffer/v1/audit_pb";
import { BucketService } from "./gen/coffer/v1/buckets_pb";
import { DownloadService } from "./gen/coffer/v1/downloads_pb";
import { GrantService } from "./gen/coffer/v1/grants_pb";
import { JobService } from "./gen/coffer/v1/jobs_pb";
import { ObjectService } from "./gen/coffer/v1/objects_pb";
import { RetentionService } from "./gen/coffer/v1/retention_pb";
import { RunService } from "./gen/coffer/v1/runs_pb";
import { SecretService } from "./gen/coffer/v1/secrets_pb";
import { UserService } from "./gen/coffer/v1/users_pb";
import { WorkerService } from "./gen/coffer/v1/workers_pb";

const TOKEN_KEY = "coffer.token";

/** The token of this tab's session (sessionStorage: gone when the tab closes). */
export function token(): string | null {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function signIn(value: string): void {
  sessionStorage.setItem(TOKEN_KEY, value);
}

export function signOut(): void {
  sessionStorage.removeItem(TOKEN_KEY);
}

const authorization: Interceptor = (next) => async (request) => {
  const current = token();
  if (current) request.header.set("authorization", `Bearer ${current}`);
  return next(request);
};

const transport = createGrpcWebTransport({
  baseUrl: window.location.origin,
  interceptors: [authorization],
});

export const api = {
  audit: createClient(AuditService, transport),
  buckets: createClient(BucketService, transport),
  downloads: createClient(DownloadService, transport),
  grants: createClient(GrantService, transport),
  jobs: createClient(JobService, transport),
  objects: createClient(ObjectService, transport),
  retention: createClient(RetentionService, transport),
  runs: createClient(RunService, transport),
  secrets: createClient(SecretService, transport),
  users: createClient(UserService, transport),
  workers: createClient(WorkerService, transport),
};

export type Api = typeof api;
export type { Client };

/** What went wrong, in words, for an error line on the page. */
export function errorText(error: unknown): string {
  if (error instanceof ConnectError) {
    return `${Code[error.code] ?? "error"}: ${error.rawMessage}`;
  }
  return error instanceof Error ? error.message : String(error);
}

/** Whether the server refused the caller's token. */
export function isUnauthenticated(error: unknown): boolean {
  return error instanceof ConnectError && error.code === Code.Unauthenticated;
}

/** Whether the call needs an admin. */
export function isPermissionDenied(error: unknown): boolean {
  return error instanceof ConnectError && error.code === Code.PermissionDenied;
}
