// Drives kiln's dashboard in headless Chromium against a real server (started by
// tests/it/dashboard.rs, which passes its URL and tokens), checking what a person would see.
// Each check names the behaviour; the first that fails ends the run with a non-zero status.
//
//   KILN_URL, KILN_ADMIN_TOKEN, KILN_ACME_TOKEN, KILN_GLOBEX_TOKEN: the server and its tokens
//   KILN_NODE_MODULES: where `npm ci` put playwright-core
//   KILN_SCREENSHOTS: where to save the screenshots
//   CHROMIUM: the browser (default /usr/bin/chromium)

import { createRequire } from "node:module";
import { mkdirSync } from "node:fs";
import { join } from "node:path";

const require = createRequire(join(process.env.KILN_NODE_MODULES, "/"));
const { chromium } = require("playwright-core");

const url = process.env.KILN_URL;
const tokens = {
  admin: process.env.KILN_ADMIN_TOKEN,
  acme: process.env.KILN_ACME_TOKEN,
  globex: process.env.KILN_GLOBEX_TOKEN,
};
const shots = process.env.KILN_SCREENSHOTS;
mkdirSync(shots, { recursive: true });

async function call(token, method, path, body) {
  const response = await fetch(url + path, {
    method,
    headers: { Authorization: `Bearer ${token}`, "Content-Type": "application/json" },
    body: body ? JSON.stringify(body) : undefined,
  });
  const json = await response.json();
  if (!response.ok) throw new Error(`${method} ${path}: ${response.status} ${JSON.stringify(json)}`);
  return json;
}

function check(condition, what) {
  if (!condition) throw new Error(`failed: ${what}`);
  console.log(`ok: ${what}`);
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});

/** A fresh browser profile signed in with `token` through the page's own token form. */
async function signedIn(token) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  const problems = [];
  page.on("console", (message) => { if (message.type() === "error") problems.push(message.text()); });
  page.on("pageerror", (error) => problems.push(String(error)));
  page.on("requestfailed", (request) => {
    const failure = request.failure()?.errorText || "";
    // A stream the page closes when it leaves a view is aborted on purpose.
    if (!failure.includes("ERR_ABORTED")) problems.push(`${request.url()}: ${failure}`);
  });
  await page.goto(url + "/");
  await page.waitForSelector("#token-form");
  // Asking whom it acts for, with no token yet, is the one request a server with tokens refuses.
  check(problems.length === 1 && problems[0].includes("401"),
    `a page without a token asks for one after a single refused request (${problems.join("; ")})`);
  problems.length = 0;
  await page.fill("#token-form input", token);
  await page.click("#token-form button");
  return { context, page, problems };
}

try {
  // The overview, signed in as an admin, with work of each kind in the history.
  for (const code of ["true", "exit 3"]) await call(tokens.admin, "POST", "/v1/jobs", { runtime: "sh", code });
  const admin = await signedIn(tokens.admin);
  const { page } = admin;
  await page.waitForSelector("#count-succeeded");
  await page.waitForFunction(() => Number(document.querySelector("#count-succeeded .n")?.textContent) >= 1);
  check((await page.textContent("#sandbox .n")) === "full", "the overview shows the sandbox level");
  await page.waitForSelector("svg.chart rect");
  await page.screenshot({ path: join(shots, "overview.png"), fullPage: true });
  check(admin.problems.length === 0, `the overview loads with no console errors (${admin.problems.join("; ")})`);

  // A job submitted through the API appears in the list without a reload and goes to succeeded.
  await page.click('nav a[href="#/jobs"]');
  await page.waitForSelector("#jobs table, #jobs p");
  const slow = await call(tokens.admin, "POST", "/v1/jobs", { runtime: "sh", code: "sleep 1; echo done" });
  const row = `#jobs tr[data-id="${slow.id}"]`;
  await page.waitForSelector(row, { timeout: 10000 });
  check(true, "a job submitted through the API appears in the list without a reload");
  await page.waitForSelector(`${row} .s-succeeded`, { timeout: 15000 });
  check(true, "its row goes to succeeded live");

  // Its page shows output while it runs, then the stored result.
  const talker = await call(tokens.admin, "POST", "/v1/jobs", {
    runtime: "sh", code: "echo first; sleep 2; echo second", limits: { wall_ms: 20000 } });
  await page.goto(`${url}/#/jobs/${talker.id}`);
  await page.waitForFunction(() => document.querySelector("#stdout")?.textContent.includes("first"), null, { timeout: 10000 });
  const early = await call(tokens.admin, "GET", `/v1/jobs/${talker.id}`);
  check(early.status !== "succeeded" && !(await page.textContent("#stdout")).includes("second"),
    "a job's page shows its output streaming while it runs");
  await page.waitForFunction(() => document.querySelector("#stdout")?.textContent.includes("second"), null, { timeout: 15000 });
  await page.waitForSelector("h1 .s-succeeded", { timeout: 15000 });
  check((await page.textContent("#code")).includes("echo first"), "the page shows the job's code");
  check((await page.textContent("#timeline")).includes("job.succeeded"), "and its history to the end");

  // Cancel from the page ends a running job.
  const sleeper = await call(tokens.admin, "POST", "/v1/jobs", { runtime: "sh", code: "echo up; sleep 60", limits: { wall_ms: 90000 } });
  await page.goto(`${url}/#/jobs/${sleeper.id}`);
  await page.waitForFunction(() => document.querySelector("#stdout")?.textContent.includes("up"), null, { timeout: 10000 });
  await page.click("#cancel");
  await page.waitForSelector("h1 .s-cancelled", { timeout: 10000 });
  const cancelled = await call(tokens.admin, "GET", `/v1/jobs/${sleeper.id}`);
  check(cancelled.status === "cancelled", "cancel from the page ends a running job");

  // A suite's grid fills in live, and its counts are the API's.
  const cases = Array.from({ length: 24 }, (_, i) => ({
    name: `t${i}`, stdin: String(i), expected_output: String(i % 5 === 0 ? i + 1 : i), group: `p${i % 4}` }));
  const suite = await call(tokens.admin, "POST", "/v1/batches", {
    runtime: "sh", code: "read x; sleep 0.2; echo $x", pass_at_k: [1, 2], cases });
  await page.goto(`${url}/#/suites/${suite.id}`);
  await page.waitForSelector("#grid .cell");
  const before = await page.$$eval("#grid .cell.v-passed, #grid .cell.v-wrong_answer", (cells) => cells.length);
  await page.waitForFunction(() => document.querySelectorAll("#grid .cell.v-passed, #grid .cell.v-wrong_answer").length === 24, null, { timeout: 60000 });
  check(before < 24, `the suite's grid fills in live (${before} of 24 cells had a verdict when it opened)`);
  const batch = await call(tokens.admin, "GET", `/v1/batches/${suite.id}`);
  await page.waitForSelector("#verdict-passed");
  check((await page.textContent("#verdict-passed")).trim().endsWith(String(batch.by_verdict.passed)) &&
    (await page.textContent("#verdict-wrong_answer")).trim().endsWith(String(batch.by_verdict.wrong_answer)),
    `the suite's counts match the API (${batch.by_verdict.passed} passed, ${batch.by_verdict.wrong_answer} wrong)`);
  const why = await page.textContent("#failing");
  check(why.includes("expected") && why.includes("got"), `each failing case says why, live (${why.slice(0, 120)})`);
  await page.waitForSelector("#groups table");
  check((await page.$$("#groups tbody tr")).length === 4, "the suite's groups table lists each group with its pass@k");
  await page.screenshot({ path: join(shots, "suite.png"), fullPage: true });

  // Keyboard: a cell of the grid takes the focus and Enter opens its case.
  await page.focus("#grid .cell");
  await page.keyboard.press("Enter");
  await page.waitForFunction(() => document.querySelector("#case")?.textContent.includes("the job"));
  check((await page.textContent("#case")).startsWith("t0"), "a grid cell opens its case from the keyboard");

  // At a phone's width nothing runs off the side of the page: wide tables scroll in their box.
  // A job's limits read as a list of terms, not as text the page made of its own elements.
  await page.goto(`${url}/#/jobs/${slow.id}`);
  await page.waitForSelector("dl.facts dt");
  const limits = await page.$$eval("dl.facts", (lists) => lists.map((l) => l.textContent).join(" "));
  check(limits.includes("wall_ms") && !limits.includes("[object"), `a job's limits are listed term by term (${limits.slice(-80)})`);
  await page.screenshot({ path: join(shots, "job.png"), fullPage: true });

  await page.setViewportSize({ width: 375, height: 800 });
  for (const view of [`#/suites/${suite.id}`, "#/", "#/jobs", `#/jobs/${slow.id}`]) {
    await page.goto(`${url}/${view}`);
    await page.waitForSelector("main h1");
    await page.waitForTimeout(300);
    const [width, widest] = await page.evaluate(() => {
      // The innermost element that reaches furthest right, to name what overflows.
      let far = null;
      const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
      for (let text = walker.nextNode(); text; text = walker.nextNode()) {
        const range = document.createRange();
        range.selectNodeContents(text);
        const right = range.getBoundingClientRect().right;
        const el = text.parentElement;
        if (right > 375 && (!far || right >= far.right)) far = { right, name: `text in ${el.tagName.toLowerCase()}#${el.id}.${el.className}` };
      }
      return [document.documentElement.scrollWidth, far ? `${far.name} to ${Math.round(far.right)} px` : "nothing"];
    });
    check(width <= 375, `${view} fits a 375 px wide screen (${width} px; widest: ${widest})`);
  }
  check(admin.problems.length === 0, `no console errors across the admin's pages (${admin.problems.join("; ")})`);
  await admin.context.close();

  // A tenant sees only its own jobs, and another tenant's job is not found.
  const mine = await call(tokens.acme, "POST", "/v1/jobs", { runtime: "sh", code: "true" });
  const theirs = await call(tokens.globex, "POST", "/v1/jobs", { runtime: "sh", code: "true" });
  const acme = await signedIn(tokens.acme);
  await acme.page.click('nav a[href="#/jobs"]');
  await acme.page.waitForSelector(`#jobs tr[data-id="${mine.id}"]`);
  const listed = await acme.page.$$eval("#jobs tr[data-id]", (rows) => rows.map((r) => r.dataset.id));
  check(!listed.includes(theirs.id) && !listed.includes(slow.id), "a tenant's token lists only that tenant's jobs");
  await acme.page.goto(`${url}/#/jobs/${theirs.id}`);
  await acme.page.waitForSelector("h1");
  await acme.page.waitForFunction(() => document.querySelector("h1").textContent === "Not found");
  check(true, "another tenant's job id shows not found");
  await acme.context.close();
} finally {
  await browser.close();
}
