// Drives the console in real headless Chromium (playwright-core, Debian's
// chromium), for control-plane/tests/console_browser.rs, which starts the
// control plane, makes the data, and checks what this script reports on
// stdout (one JSON line) against the catalog and the disk.
//
// Environment: COFFER_URL, COFFER_TOKEN (the job's owner), COFFER_OTHER_TOKEN
// (a second user), COFFER_JOB_ID, COFFER_JOB_NAME, COFFER_RESTORE_DIR,
// COFFER_SPKI (base64 SHA-256 of the server key, which Chromium is told to
// trust), COFFER_SCREENSHOTS (a directory), CHROMIUM (the executable).

import { mkdtempSync, mkdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
};
const url = env("COFFER_URL");
const shots = env("COFFER_SCREENSHOTS");
mkdirSync(shots, { recursive: true });
const report = { pagesChecked: [] };
const TIMEOUT = 120_000;

async function shoot(page, name) {
  await page.screenshot({ path: join(shots, `${name}.png`), fullPage: true });
}

/** Every control of the page has an accessible name, and Tab reaches each one. */
async function checkKeyboard(page, name) {
  const unlabelled = await page.evaluate(() => {
    const controls = [...document.querySelectorAll("a[href], button, input, select, textarea")];
    const nameOf = (el) => {
      if (el.getAttribute("aria-label")) return el.getAttribute("aria-label");
      const by = el.getAttribute("aria-labelledby");
      if (by) return document.getElementById(by)?.textContent ?? "";
      if (el.id) {
        const label = document.querySelector(`label[for="${CSS.escape(el.id)}"]`);
        if (label) return label.textContent;
      }
      return el.textContent;
    };
    controls.forEach((el, i) => el.setAttribute("data-control", String(i)));
    return controls.filter((el) => !(nameOf(el) ?? "").trim()).map((el) => el.outerHTML.slice(0, 120));
  });
  if (unlabelled.length) throw new Error(`${name}: controls without a name: ${unlabelled.join(" | ")}`);
  const total = await page.locator("[data-control]").count();
  const reached = new Set();
  await page.locator("body").focus();
  for (let i = 0; i < total + 5 && reached.size < total; i++) {
    await page.keyboard.press("Tab");
    const id = await page.evaluate(() => document.activeElement?.getAttribute("data-control"));
    if (id !== null && id !== undefined) reached.add(id);
  }
  if (reached.size < total) throw new Error(`${name}: Tab reached ${reached.size} of ${total} controls`);
  report.pagesChecked.push(name);
}

async function signIn(page, token) {
  await page.goto(`${url}/#/login`);
  await page.getByLabel("API token").fill(token);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByRole("heading", { name: "Overview" }).waitFor({ timeout: TIMEOUT });
}

async function waitForRun(page) {
  await page.locator("#run-progress[data-state=succeeded], #run-progress[data-state=failed]").waitFor({ timeout: TIMEOUT });
  return page.locator("#run-progress").getAttribute("data-state");
}

const profile = mkdtempSync(join(tmpdir(), "coffer-chromium-"));
const context = await chromium.launchPersistentContext(profile, {
  executablePath: env("CHROMIUM"),
  headless: true,
  args: [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    `--ignore-certificate-errors-spki-list=${env("COFFER_SPKI")}`,
  ],
  viewport: { width: 1280, height: 900 },
});
try {
  const page = context.pages()[0] ?? (await context.newPage());
  page.setDefaultTimeout(TIMEOUT);
  const consoleErrors = [];
  page.on("console", (message) => {
    if (message.type() === "error") consoleErrors.push(message.text());
  });

  // Log in.
  await page.goto(url);
  await page.getByLabel("API token").waitFor();
  await checkKeyboard(page, "login");
  await shoot(page, "login");
  await signIn(page, env("COFFER_TOKEN"));
  await page.getByRole("link", { name: env("COFFER_JOB_NAME"), exact: true }).waitFor();
  await checkKeyboard(page, "overview");
  await shoot(page, "overview");

  // Start a backup from the job page and watch it reach success live.
  await page.getByRole("link", { name: env("COFFER_JOB_NAME"), exact: true }).click();
  await page.getByRole("button", { name: "Back up now" }).click();
  await page.locator("#run-progress").waitFor();
  const statesSeen = new Set();
  const observe = setInterval(async () => {
    const state = await page.locator("#run-progress").getAttribute("data-state").catch(() => null);
    if (state) statesSeen.add(state);
  }, 50);
  report.backupState = await waitForRun(page);
  clearInterval(observe);
  report.backupStatesSeen = [...statesSeen];
  report.backupRunId = page.url().split("#/runs/")[1];
  await shoot(page, "backup-run");

  // The job's charts, snapshots and retention plan.
  await page.goto(`${url}/#/jobs/${env("COFFER_JOB_ID")}`);
  await page.getByRole("heading", { name: "Run history" }).waitFor();
  report.charts = await page.locator("figure.chart").count();
  report.chartBars = await page.locator("figure.chart rect.bar").count();
  report.retentionRows = await page.locator("section[aria-labelledby=retention-title] tbody tr").count();
  await checkKeyboard(page, "job");
  await shoot(page, "job");

  // Diff the two snapshots.
  await page.getByRole("link", { name: /^changes since/ }).first().click();
  await page.getByRole("heading", { name: "Changes between snapshots" }).waitFor();
  report.diff = await page.locator("table tbody tr").evaluateAll((rows) =>
    rows.map((row) => [...row.querySelectorAll("td")].slice(0, 2).map((td) => td.textContent)),
  );
  report.diffSummary = await page.getByRole("list", { name: "Summary" }).textContent();
  await checkKeyboard(page, "diff");
  await shoot(page, "diff");

  // Browse the new snapshot two levels deep, and see a file's versions.
  await page.goto(`${url}/#/snapshots/${report.backupRunId}`);
  await page.getByRole("link", { name: "docs/", exact: true }).click();
  await page.getByRole("link", { name: "sub/", exact: true }).click();
  await page.getByRole("cell", { name: "deep.txt", exact: true }).waitFor();
  report.deepListing = await page.locator("table tbody tr td:nth-child(2)").allTextContents();
  await page.getByRole("button", { name: "docs/sub/deep.txt: Versions" }).click();
  await page.getByRole("heading", { name: "Versions of docs/sub/deep.txt" }).waitFor();
  report.deepVersions = await page.locator("section[aria-live] tbody tr").count();
  // Download the file through the control plane and keep its bytes.
  const [downloaded] = await Promise.all([
    page.waitForEvent("download"),
    page.getByRole("button", { name: "docs/sub/deep.txt: Download" }).click(),
  ]);
  report.downloadName = downloaded.suggestedFilename();
  report.downloadedHex = readFileSync(await downloaded.path()).toString("hex");
  await checkKeyboard(page, "snapshot");
  await shoot(page, "snapshot");

  // Restore one file from the page and watch its run.
  await page.getByLabel("Pick docs/sub/deep.txt for restore").check();
  await page.getByLabel("Restore to (absolute path)").fill(env("COFFER_RESTORE_DIR"));
  await page.getByRole("button", { name: "Restore", exact: true }).click();
  report.restoreState = await waitForRun(page);
  report.restoreRunId = page.url().split("#/runs/")[1];
  await shoot(page, "restore-run");

  // Admin: a new token's secret is shown once.
  await page.goto(`${url}/#/admin`);
  await page.getByLabel("Token name").fill("from the console");
  await page.getByRole("button", { name: "Create token" }).click();
  await page.locator("output.secret code").waitFor();
  report.tokenShown = ((await page.locator("output.secret code").textContent()) ?? "").length > 20;
  await shoot(page, "admin");

  // The API reference, generated from the protos.
  await page.goto(`${url}/#/api`);
  await page.getByRole("heading", { name: "service ObjectService" }).waitFor();
  report.apiDocumentsDiff = (await page.getByText(/^DiffSnapshots\(DiffSnapshotsRequest\)/).count()) > 0;
  await shoot(page, "api-reference");
  report.consoleErrors = consoleErrors;

  // A second user sees none of the first user's jobs.
  await page.getByRole("button", { name: "Sign out" }).click();
  await signIn(page, env("COFFER_OTHER_TOKEN"));
  report.otherUserSeesJob = (await page.getByRole("link", { name: env("COFFER_JOB_NAME"), exact: true }).count()) > 0;
  await page.goto(`${url}/#/jobs/${env("COFFER_JOB_ID")}`);
  report.otherUserJobError = await page.getByRole("alert").textContent();
  await shoot(page, "other-user");
} finally {
  await context.close();
  rmSync(profile, { recursive: true, force: true });
}
console.log(JSON.stringify(report));
