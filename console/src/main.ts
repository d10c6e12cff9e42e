// The console's shell: sign-in, navigation and the fragment router
// (`#/jobs/ID`), so the server serves one page and knows no routes.

import { api, errorText, isUnauthenticated, signOut, token } from "./api";
import { h, replace } from "./dom";
import { go, type PageContext } from "./nav";
import { adminPage } from "./pages/admin";
import { apiReferencePage } from "./pages/apiref";
import { diffPage } from "./pages/diff";
import { jobPage } from "./pages/job";
import { loginPage } from "./pages/login";
import { overviewPage } from "./pages/overview";
import { runPage } from "./pages/run";
import { snapshotPage } from "./pages/snapshot";

type Page = (context: PageContext) => Promise<void>;

const routes: Record<string, Page> = {
  "": overviewPage,
  jobs: jobPage,
  runs: runPage,
  snapshots: snapshotPage,
  diff: diffPage,
  admin: adminPage,
  api: apiReferencePage,
};

let leaving = new AbortController();

function header(username: string): HTMLElement {
  return h(
    "header",
    {},
    h("span", { class: "brand" }, "Coffer"),
    h(
      "nav",
      { "aria-label": "Main" },
      h("a", { href: "#/" }, "Overview"),
      h("a", { href: "#/admin" }, "Admin"),
      h("a", { href: "#/api" }, "API reference"),
    ),
    h("span", { class: "who" }, `Signed in as ${username}`),
    h(
      "button",
      {
        type: "button",
        onclick: () => {
          signOut();
          go("login");
          void render();
        },
      },
      "Sign out",
    ),
  );
}

async function render(): Promise<void> {
  leaving.abort();
  leaving = new AbortController();
  const root = document.getElementById("app");
  if (!root) return;
  const [path, query = ""] = window.location.hash.replace(/^#\/?/, "").split("?", 2);
  const segments = path.split("/").filter((s) => s.length > 0).map(decodeURIComponent);
  const main = h("main", { id: "main", tabindex: "-1" });
  if (segments[0] === "login" || !token()) {
    replace(root, main);
    loginPage(main, () => {
      if (window.location.hash === "#/") void render();
      else go("");
    });
    return;
  }
  let username = "";
  try {
    username = (await api.users.getCurrentUser({})).user?.username ?? "";
  } catch (error) {
    if (isUnauthenticated(error)) {
      signOut();
      go("login");
      return;
    }
    username = "?";
  }
  replace(root, header(username), main);
  const page = routes[segments[0] ?? ""] ?? overviewPage;
  try {
    await page({ main, params: new URLSearchParams(query), segments: segments.slice(1), signal: leaving.signal });
  } catch (error) {
    if (leaving.signal.aborted) return;
    main.append(h("p", { class: "error", role: "alert" }, errorText(error)));
  }
}

window.addEventListener("hashchange", () => void render());
void render();
