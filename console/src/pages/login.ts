// Sign-in: the API token is the login. It is checked by calling the API
// with it, and kept in this tab's sessionStorage only.

import { api, errorText, signIn, signOut } from "../api";
import { field, h, replace } from "../dom";

export function loginPage(main: HTMLElement, done: () => void): void {
  const input = h("input", { type: "password", name: "token", autocomplete: "off", required: true });
  const status = h("p", { role: "status" });
  const form = h(
    "form",
    {
      "aria-labelledby": "login-title",
      onsubmit: async (event: Event) => {
        event.preventDefault();
        signIn(input.value.trim());
        try {
          await api.users.getCurrentUser({});
          done();
        } catch (error) {
          signOut();
          replace(status, errorText(error));
          status.className = "error";
        }
      },
    },
    field("API token", input),
    h("button", { type: "submit" }, "Sign in"),
    status,
  );
  replace(
    main,
    h("h1", { id: "login-title" }, "Sign in to Coffer"),
    h("p", {}, "Paste an API token (for example the admin's from coffer-data/admin.token)."),
    form,
  );
  input.focus();
}
