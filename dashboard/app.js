// kiln's dashboard: a page over kiln's public API and nothing else. Every view reads the same
// /v1 endpoints any client can, with the caller's token, so a tenant sees exactly what the API
// shows it. Live views follow the API's Server-Sent Events through fetch (EventSource cannot
// send an Authorization header) and resume by event id when a stream drops.
//
// What jobs write is as hostile as their code: nothing from the API is ever parsed as HTML.
// Every node is built with textContent (see `h`).
"use strict";

const TOKEN_KEY = "kiln.token";
const STATUSES = ["queued", "running", "succeeded", "failed", "timed_out", "cancelled", "error"];
const OUTCOME_COLOURS = {
  success: "#1a7f37", nonzero_exit: "#cf222e", signal: "#a40e26", wall_time_limit: "#bf8700",
  cpu_time_limit: "#9a6700", memory_limit: "#d4a72c", output_limit: "#bc4c00",
  cancelled: "#6e7781", lease_expired: "#8250df", shutdown: "#57606a", runner_error: "#82071e",
};

// ---- building the page ----

/** An element with attributes (on* handlers as functions) and children (strings are text). */
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "class") el.className = value;
    // Through the CSSOM: the page's policy refuses style attributes, which setAttribute makes.
    else if (key === "style") el.style.cssText = value;
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

const SVG = "http://www.w3.org/2000/svg";
function s(tag, attrs, ...children) {
  const el = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs || {})) el.setAttribute(key, String(value));
  append(el, children);
  return el;
}

function badge(status) {
  return h("span", { class: `status s-${status}` }, status.replace("_", " "));
}

function verdictBadge(verdict) {
  return verdict ? h("span", { class: `status v-${verdict}` }, verdict.replace(/_/g, " ")) : "";
}

function ms(n) {
  if (n === null || n === undefined) return "–";
  if (n < 1000) return `${Math.round(n * 10) / 10} ms`;
  if (n < 60_000) return `${(n / 1000).toFixed(n < 10_000 ? 2 : 1)} s`;
  return `${Math.floor(n / 60_000)} min ${Math.round((n % 60_000) / 1000)} s`;
}

function when(iso) {
  if (!iso) return "–";
  const t = new Date(iso);
  const ago = (Date.now() - t.getTime()) / 1000;
  if (ago < 60) return `${Math.max(0, Math.round(ago))} s ago`;
  if (ago < 3600) return `${Math.round(ago / 60)} min ago`;
  return t.toLocaleString();
}

function duration(job) {
  if (job.wall_ms !== undefined && job.wall_ms !== null) return ms(job.wall_ms);
  if (job.started_at && job.finished_at) return ms(new Date(job.finished_at) - new Date(job.started_at));
  if (job.started_at) return `${ms(Date.now() - new Date(job.started_at))}…`;
  return "–";
}

/** Text of a value the API sends as text or `{"base64": ...}`, decoded where it is UTF-8. */
function text(value) {
  if (typeof value === "string") return value;
  if (value && typeof value.base64 === "string") {
    const bytes = Uint8Array.from(atob(value.base64), (c) => c.charCodeAt(0));
    try {
      return new TextDecoder("utf-8", { fatal: true }).decode(bytes);
    } catch {
      return `(${bytes.length} bytes that are not UTF-8 text)`;
    }
  }
  return "";
}

// ---- the API ----

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

function headers(extra) {
  const token = localStorage.getItem(TOKEN_KEY);
  return Object.assign(token ? { Authorization: `Bearer ${token}` } : {}, extra || {});
}

async function api(path, options) {
  const response = await fetch(path, Object.assign({}, options, { headers: headers(options && options.headers) }));
  if (response.status === 401) {
    askForToken(response.status);
    throw new ApiError(401, "unauthorized", "a token is needed");
  }
  const body = response.headers.get("content-type")?.includes("json") ? await response.json() : await response.text();
  if (!response.ok) {
    const error = body && body.error ? body.error : { code: "http", message: `HTTP ${response.status}` };
    throw new ApiError(response.status, error.code, error.message);
  }
  return body;
}

/**
 * Follows an event stream of the API until `signal` aborts it, calling `onMessage(type, data)`
 * for each message; reconnects after a drop, resuming after the last event id it saw. Resolves
 * when the server ends the stream for good (204, or the end of a job's or suite's stream).
 */
async function follow(path, onMessage, signal) {
  let last = null;
  for (let attempt = 0; !signal.aborted; attempt++) {
    try {
      const response = await fetch(path, {
        headers: headers(Object.assign({ Accept: "text/event-stream" }, last ? { "Last-Event-ID": last } : {})),
        signal,
      });
      if (response.status === 204) return;
      if (response.status === 401) return askForToken(401);
      if (!response.ok) throw new Error(`stream answered ${response.status}`);
      attempt = 0;
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      let ended = false;
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, cut);
          buffer = buffer.slice(cut + 2);
          let type = "message", data = "", id = null;
          for (const line of block.split("\n")) {
            if (line.startsWith(":")) continue;
            const colon = line.indexOf(":");
            const field = colon < 0 ? line : line.slice(0, colon);
            const content = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
            if (field === "event") type = content;
            else if (field === "data") data += (data ? "\n" : "") + content;
            else if (field === "id") id = content;
          }
          if (id !== null) last = id;
          if (!data) continue;
          let parsed;
          try { parsed = JSON.parse(data); } catch { parsed = data; }
          if (onMessage(type, parsed) === "end") ended = true;
        }
      }
      if (ended) return;
    } catch (error) {
      if (signal.aborted) return;
    }
    await new Promise((resolve) => setTimeout(resolve, Math.min(5000, 250 * 2 ** attempt)));
  }
}

/** Follows the event feed from now on (its stored history is not replayed). */
async function followFeed(onMessage, signal) {
  const newest = await api("/v1/events?order=newest&limit=1");
  const after = newest.events.length ? newest.events[0].id : 0;
  return follow(`/v1/events?after=${after}`, onMessage, signal);
}

/** Runs `fn` at most once per `wait` ms however often it is asked for, last call included. */
function throttle(fn, wait) {
  let timer = null, pending = false;
  return () => {
    if (timer) { pending = true; return; }
    fn();
    timer = setTimeout(function again() {
      timer = null;
      if (pending) { pending = false; fn(); timer = setTimeout(again, wait); }
    }, wait);
  };
}

// ---- the token ----

function askForToken(status) {
  const main = document.getElementById("main");
  if (main.querySelector("#token-form")) return;
  main.replaceChildren(
    h("h1", {}, "A token is needed"),
    h("p", {}, status === 401 && localStorage.getItem(TOKEN_KEY)
      ? "This server refused the token given. Paste another (kiln token create makes one)."
      : "This server requires a token. Paste one (kiln token create makes one); it is kept in this browser only."),
    h("form", {
      id: "token-form",
      onsubmit: (event) => {
        event.preventDefault();
        const value = event.target.querySelector("input").value.trim();
        if (value) localStorage.setItem(TOKEN_KEY, value);
        route();
      },
    },
      h("label", {}, "Token", h("input", { type: "password", name: "token", autocomplete: "off", required: true, size: 40 })),
      h("button", { type: "submit" }, "Use this token")),
  );
}

/** Says whom the token acts for; false if the server wants a token first (the form is shown). */
async function showWho() {
  const who = document.getElementById("who");
  try {
    const me = await api("/v1/tenant");
    who.replaceChildren(
      me.admin ? (me.tenant ? `admin (${me.tenant})` : "admin") : `tenant ${me.tenant}`,
      localStorage.getItem(TOKEN_KEY)
        ? h("button", { type: "button", style: "margin-left:.5rem", onclick: () => { localStorage.removeItem(TOKEN_KEY); location.hash = "#/"; route(); } }, "Sign out")
        : "",
    );
    return true;
  } catch (error) {
    who.replaceChildren();
    return !(error instanceof ApiError && error.status === 401);
  }
}

// ---- the views ----

/** What stops the current view's streams and timers when another view takes its place. */
let viewAbort = new AbortController();

async function route() {
  viewAbort.abort();
  viewAbort = new AbortController();
  const signal = viewAbort.signal;
  const hash = location.hash.replace(/^#/, "") || "/";
  const [path, query] = hash.split("?");
  const params = new URLSearchParams(query || "");
  const parts = path.split("/").filter(Boolean);
  for (const a of document.querySelectorAll("nav a")) {
    const target = a.getAttribute("href").slice(1);
    a.toggleAttribute("aria-current", target === "/" ? path === "/" : path.startsWith(target));
    if (a.hasAttribute("aria-current")) a.setAttribute("aria-current", "page");
  }
  const main = document.getElementById("main");
  main.replaceChildren(h("p", { class: "muted" }, "Loading…"));
  // One question first, so that a server wanting a token gets one refused request, not one
  // per panel of the view.
  if (!(await showWho()) || signal.aborted) return;
  try {
    if (parts.length === 0) await overview(main, signal);
    else if (parts[0] === "jobs" && parts[1]) await jobPage(main, parts[1], signal);
    else if (parts[0] === "jobs") await jobsPage(main, params, signal);
    else if (parts[0] === "suites" && parts[1]) await suitePage(main, parts[1], params, signal);
    else if (parts[0] === "suites") await suitesPage(main, params, signal);
    else main.replaceChildren(h("h1", {}, "Not found"), h("p", {}, "No such page. ", h("a", { href: "#/" }, "Overview")));
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) return;
    if (signal.aborted) return;
    main.replaceChildren(
      h("h1", {}, error.status === 404 ? "Not found" : "Something went wrong"),
      h("p", { class: "notice error", role: "alert" }, error.message),
    );
  }
}

// Overview: the queue now, throughput and latency over the last hour or day, recent failures.
async function overview(main, signal) {
  let window = 3600;
  const cards = h("div", { class: "cards", id: "stats" });
  const charts = h("div", { class: "row" });
  const failures = h("div", { class: "table-wrap" });
  const picker = h("select", { "aria-label": "Window", onchange: (e) => { window = Number(e.target.value); refresh(); } },
    h("option", { value: 3600 }, "last hour"), h("option", { value: 86400 }, "last day"));
  main.replaceChildren(
    h("h1", {}, "Overview ", h("span", { class: "live-dot", title: "live" }), h("span", { class: "sr-only" }, "(live)")),
    cards,
    h("h2", {}, "History ", picker),
    charts,
    h("h2", {}, "Recent failures"),
    failures,
  );
  async function refresh() {
    const [stats, series, recent] = await Promise.all([
      api("/v1/stats"),
      api(`/v1/stats/series?window=${window}`),
      Promise.all(["failed", "timed_out", "error"].map((status) => api(`/v1/jobs?status=${status}&order=newest&limit=10`))),
    ]);
    if (signal.aborted) return;
    const card = (n, label, id) => h("div", { class: "card", id }, h("div", { class: "n" }, n), h("div", { class: "l" }, label));
    cards.replaceChildren(
      ...STATUSES.map((status) => card(stats.jobs[status] ?? 0, status.replace("_", " "), `count-${status}`)),
      card(stats.oldest_queued_ms === null ? "–" : ms(stats.oldest_queued_ms), "oldest queued waited", "oldest"),
      card(`${stats.workers.busy} / ${stats.workers.total}`, "workers busy (this server)", "workers"),
      card(stats.sandbox, "sandbox", "sandbox"),
    );
    charts.replaceChildren(
      h("section", {}, h("h2", {}, "Finished per step, by outcome"), throughputChart(series)),
      h("section", {}, h("h2", {}, "Queue wait and run time (p50, p95, p99)"), latencyChart(series)),
    );
    const rows = recent.flatMap((page) => page.jobs).sort((a, b) => (a.id < b.id ? 1 : -1)).slice(0, 10);
    failures.replaceChildren(rows.length ? jobTable(rows) : h("p", { class: "muted" }, "None."));
  }
  await refresh();
  const again = throttle(() => refresh().catch(() => {}), 1000);
  followFeed(() => again(), signal).catch(() => {});
  const timer = setInterval(again, 15000);
  signal.addEventListener("abort", () => clearInterval(timer));
}

function throughputChart(series) {
  const W = 600, H = 180, pad = 28;
  const steps = series.steps;
  const totals = steps.map((st) => Object.values(st.ended).reduce((a, b) => a + b, 0));
  const max = Math.max(1, ...totals);
  const bw = (W - pad) / steps.length;
  const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart", role: "img", "aria-label": `Jobs finished per ${series.step / 60} min step, by outcome; at most ${max} in a step` });
  svg.append(s("text", { x: 2, y: 10 }, String(max)), s("text", { x: 2, y: H - pad + 4 }, "0"));
  const outcomes = new Set();
  steps.forEach((st, i) => {
    let y = H - pad;
    for (const [outcome, n] of Object.entries(st.ended)) {
      outcomes.add(outcome);
      const height = (n / max) * (H - pad - 12);
      y -= height;
      svg.append(s("rect", { x: pad + i * bw, y, width: Math.max(1, bw - 1), height, fill: OUTCOME_COLOURS[outcome] || "#6e7781" },
        s("title", {}, `${new Date(st.at).toLocaleTimeString()}: ${n} ${outcome}`)));
    }
  });
  svg.append(s("text", { x: pad, y: H - 8 }, new Date(series.from).toLocaleTimeString()),
    s("text", { x: W - 60, y: H - 8 }, new Date(series.to).toLocaleTimeString()));
  const legend = h("div", { class: "legend" }, [...outcomes].map((o) =>
    h("span", {}, h("span", { style: `display:inline-block;width:.8rem;height:.8rem;background:${OUTCOME_COLOURS[o] || "#6e7781"};margin-right:.25rem` }), o)));
  return h("div", {}, svg, outcomes.size ? legend : h("p", { class: "muted" }, "Nothing finished in this window."));
}

function latencyChart(series) {
  const W = 600, H = 180, pad = 40;
  const lines = [["wait_ms", "p50", "#0969da"], ["wait_ms", "p99", "#54aeff"], ["run_ms", "p50", "#1a7f37"], ["run_ms", "p95", "#4ac26b"], ["run_ms", "p99", "#aceebb"]];
  const values = series.steps.flatMap((st) => lines.map(([k, p]) => st[k]?.[p]).filter((v) => v !== undefined && v !== null));
  const max = Math.max(1, ...values);
  const lmax = Math.log10(max + 1);
  const x = (i) => pad + (i + 0.5) * ((W - pad) / series.steps.length);
  const y = (v) => H - 20 - (Math.log10(v + 1) / lmax) * (H - 34);
  const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart", role: "img", "aria-label": `Queue wait and run time percentiles, log scale, up to ${ms(max)}` });
  svg.append(s("text", { x: 2, y: 12 }, ms(max)), s("text", { x: 2, y: H - 20 }, "0"));
  for (const [key, p, colour] of lines) {
    const points = series.steps.map((st, i) => (st[key] ? [x(i), y(st[key][p]), st] : null)).filter(Boolean);
    if (points.length > 1) svg.append(s("polyline", { points: points.map(([px, py]) => `${px},${py}`).join(" "), fill: "none", stroke: colour, "stroke-width": 2 }));
    // A dot per step, so a window with one busy step still shows, and each value can be read.
    for (const [px, py, st] of points) {
      svg.append(s("circle", { cx: px, cy: py, r: 2.5, fill: colour },
        s("title", {}, `${new Date(st.at).toLocaleTimeString()}: ${key === "wait_ms" ? "wait" : "run"} ${p} ${ms(st[key][p])}`)));
    }
  }
  const legend = h("div", { class: "legend" }, lines.map(([k, p, colour]) =>
    h("span", {}, h("span", { style: `display:inline-block;width:.8rem;height:.25rem;background:${colour};margin:0 .25rem .2rem 0` }), `${k === "wait_ms" ? "wait" : "run"} ${p}`)));
  return h("div", {}, svg, values.length ? legend : h("p", { class: "muted" }, "No job started in this window."));
}

function jobTable(jobs) {
  return h("table", {},
    h("thead", {}, h("tr", {}, h("th", {}, "Job"), h("th", {}, "Status"), h("th", { class: "wide" }, "Runtime"), h("th", {}, "Duration"), h("th", { class: "wide" }, "Submitted"))),
    h("tbody", {}, jobs.map((job) => h("tr", { "data-id": job.id },
      h("td", { class: "id" }, h("a", { href: `#/jobs/${job.id}` }, job.id.slice(0, 13) + "…")),
      h("td", {}, badge(job.status), job.outcome && job.outcome !== "success" ? h("span", { class: "muted" }, ` ${job.outcome}`) : ""),
      h("td", { class: "wide" }, job.runtime),
      h("td", {}, duration(job)),
      h("td", { class: "wide" }, when(job.created_at))))));
}

// Jobs: newest first, filtered, paged by cursor, live on the first page.
async function jobsPage(main, params, signal) {
  const field = (name, label, input) => h("label", {}, label, input);
  const select = (name, values) => h("select", { name }, h("option", { value: "" }, "any"), values.map((v) => h("option", { value: v, selected: params.get(name) === v }, v)));
  const runtimes = await api("/v1/runtimes").then((r) => r.runtimes.map((x) => x.name)).catch(() => []);
  const me = await api("/v1/tenant");
  const form = h("form", { class: "filters", onsubmit: (event) => {
    event.preventDefault();
    const data = new FormData(form);
    const id = String(data.get("search") || "").trim();
    if (id) { location.hash = `#/jobs/${id}`; return; }
    const next = new URLSearchParams();
    for (const [key, value] of data) if (value && key !== "search") next.set(key, key === "since" || key === "until" ? new Date(value).toISOString() : value);
    location.hash = `#/jobs?${next}`;
  } },
    field("status", "Status", select("status", STATUSES)),
    field("outcome", "Outcome", select("outcome", Object.keys(OUTCOME_COLOURS))),
    field("runtime", "Runtime", select("runtime", runtimes)),
    field("batch", "Suite", h("input", { name: "batch", value: params.get("batch") || "", placeholder: "suite id", size: 12 })),
    me.admin ? field("tenant", "Tenant", h("input", { name: "tenant", value: params.get("tenant") || "", size: 10 })) : "",
    field("since", "Since", h("input", { type: "datetime-local", name: "since", value: localInput(params.get("since")) })),
    field("until", "Until", h("input", { type: "datetime-local", name: "until", value: localInput(params.get("until")) })),
    field("search", "Job id", h("input", { name: "search", placeholder: "go to a job by id", size: 14 })),
    h("button", { type: "submit" }, "Apply"));
  const list = h("div", { class: "table-wrap", id: "jobs" });
  const pager = h("div", { class: "actions" });
  main.replaceChildren(h("h1", {}, "Jobs ", params.get("before") ? "" : h("span", { class: "live-dot", title: "live" })), form, list, pager);
  const query = new URLSearchParams(params);
  query.set("order", "newest");
  query.set("limit", "50");
  async function load() {
    const page = await api(`/v1/jobs?${query}`);
    if (signal.aborted) return;
    list.replaceChildren(page.jobs.length ? jobTable(page.jobs) : h("p", { class: "muted" }, "No jobs match."));
    pager.replaceChildren(
      params.get("before") ? h("a", { href: `#/jobs?${withoutCursor(params)}` }, "Newest") : "",
      page.next_before ? h("a", { href: `#/jobs?${withCursor(params, page.next_before)}` }, "Older →") : "");
  }
  await load();
  if (!params.get("before")) {
    const again = throttle(() => load().catch(() => {}), 500);
    followFeed((type, event) => { if (event && event.job_id) again(); }, signal).catch(() => {});
  }
}

function localInput(iso) {
  if (!iso) return "";
  const t = new Date(iso);
  return new Date(t.getTime() - t.getTimezoneOffset() * 60000).toISOString().slice(0, 16);
}

function withCursor(params, before) {
  const next = new URLSearchParams(params);
  next.set("before", before);
  return next;
}

function withoutCursor(params) {
  const next = new URLSearchParams(params);
  next.delete("before");
  return next;
}

// A job: its input, limits, usage, output (live while it runs), progress, history, actions.
async function jobPage(main, id, signal) {
  const [job, input, events] = await Promise.all([
    api(`/v1/jobs/${encodeURIComponent(id)}`),
    api(`/v1/jobs/${encodeURIComponent(id)}/input`),
    api(`/v1/jobs/${encodeURIComponent(id)}/events`),
  ]);
  const head = h("div", {});
  const facts = h("dl", { class: "facts" });
  const progress = h("div", { id: "progress" });
  const stdout = h("pre", { id: "stdout", "aria-label": "stdout", tabindex: 0 });
  const stderr = h("pre", { id: "stderr", class: "stderr", "aria-label": "stderr", tabindex: 0 });
  const timeline = h("ol", { class: "timeline", id: "timeline" });
  const hooks = h("ul", { class: "timeline", id: "webhooks" });
  const actions = h("div", { class: "actions" });
  const message = h("div", { role: "status" });
  main.replaceChildren(head, actions, message, progress, facts,
    h("h2", {}, "Output"), h("div", {}, "stdout"), stdout, h("div", {}, "stderr"), stderr,
    h("h2", {}, "Code"), code(input.code, job.runtime),
    input.args.length ? [h("h2", {}, "Arguments"), h("pre", {}, input.args.join(" "))] : "",
    text(input.stdin) ? [h("h2", {}, "Stdin"), h("pre", {}, text(input.stdin))] : "",
    Object.keys(input.files).length ? [h("h2", {}, "Files"), Object.entries(input.files).map(([name, value]) => [h("div", { class: "mono" }, name), h("pre", {}, text(value))])] : "",
    input.expected_output !== undefined ? [h("h2", {}, "Expected output"), h("pre", {}, text(input.expected_output))] : "",
    h("h2", {}, "Limits"), h("dl", { class: "facts" }, Object.entries(job.limits).map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)])),
    h("h2", {}, "History"), timeline,
    h("h2", {}, "Webhook deliveries"), hooks);

  let current = job;
  let live = { stdout: "", stderr: "" };
  function render() {
    const j = current;
    head.replaceChildren(h("h1", {}, "Job ", h("span", { class: "mono" }, j.id), " ", badge(j.status)),
      j.batch_id ? h("p", {}, "Case ", h("b", {}, j.case_name || ""), " of suite ", h("a", { href: `#/suites/${j.batch_id}` }, j.batch_id.slice(0, 13) + "…"), " ", verdictBadge(j.verdict), j.verdict_detail ? ` ${j.verdict_detail}` : "") : "");
    facts.replaceChildren(...[
      ["runtime", j.runtime], ["outcome", j.outcome || "–"], ["exit code", j.exit_code ?? "–"], ["signal", j.signal ?? "–"],
      ["attempt", `${j.attempt} of ${j.max_attempts}`], ["submitted", when(j.created_at)], ["started", when(j.started_at)],
      ["finished", when(j.finished_at)], ["wall", ms(j.wall_ms)], ["cpu", ms(j.cpu_ms)],
      ["memory", j.memory_kb === null || j.memory_kb === undefined ? "–" : `${(j.memory_kb / 1024).toFixed(1)} MiB`],
      ["error", j.error || "–"],
    ].map(([k, v]) => [h("dt", {}, k), h("dd", {}, String(v))]).flat());
    const done = !["queued", "running"].includes(j.status);
    if (done) {
      stdout.textContent = j.stdout_encoding === "base64" ? text({ base64: j.stdout }) : j.stdout;
      stderr.textContent = j.stderr_encoding === "base64" ? text({ base64: j.stderr }) : j.stderr;
    } else {
      stdout.textContent = live.stdout;
      stderr.textContent = live.stderr;
    }
    const p = j.progress;
    progress.replaceChildren(p && !done ? h("div", {}, h("div", { class: "bar", role: "progressbar", "aria-valuenow": p.percent, "aria-valuemin": 0, "aria-valuemax": 100 }, h("span", { style: `width:${p.percent}%` })), h("div", { class: "muted" }, `${p.percent}% ${p.message || ""}`)) : "");
    actions.replaceChildren(
      h("button", { type: "button", class: "danger", id: "cancel", disabled: done, onclick: cancel }, "Cancel"),
      h("button", { type: "button", id: "again", onclick: runAgain }, "Run again"));
  }
  function addEvent(event) {
    if (!event.type) return;
    const item = h("li", {}, h("span", { class: "mono" }, `#${event.id} `), when(event.at), " ", h("b", {}, event.type), event.attempt === null || event.attempt === undefined ? " " : ` attempt ${event.attempt} `,
      h("span", { class: "muted" }, Object.keys(event.data || {}).length ? JSON.stringify(event.data) : ""));
    (event.type.startsWith("webhook.") ? hooks : timeline).append(item);
  }
  async function cancel() {
    try {
      current = await api(`/v1/jobs/${id}/cancel`, { method: "POST" });
      render();
    } catch (error) {
      message.replaceChildren(h("p", { class: "notice error" }, error.message));
    }
  }
  async function runAgain() {
    const body = Object.assign({}, input);
    delete body.expected_output;
    try {
      const made = await api("/v1/jobs", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
      location.hash = `#/jobs/${made.id}`;
    } catch (error) {
      message.replaceChildren(h("p", { class: "notice error" }, error.message));
    }
  }
  for (const event of events.events || events) addEvent(event);
  if (!hooks.children.length) hooks.append(h("li", { class: "muted" }, "None."));
  render();
  if (["queued", "running"].includes(job.status)) {
    const last = (events.events || events).slice(-1)[0];
    const after = last ? `?after=${last.id}` : "";
    const refresh = throttle(async () => { try { current = await api(`/v1/jobs/${id}`); render(); } catch { /* the next event tries again */ } }, 300);
    follow(`/v1/jobs/${id}/events${after}`, (type, data) => {
      if (type === "output") {
        live[data.stream] += data.encoding === "base64" ? text({ base64: data.data }) : data.data;
        if (["queued", "running"].includes(current.status)) render();
      } else if (type === "job.started") {
        live = { stdout: "", stderr: "" };
        addEvent(data);
        refresh();
      } else if (data && data.type) {
        addEvent(data);
        refresh();
        if (["job.succeeded", "job.failed", "job.timed_out", "job.cancelled", "job.error"].includes(type)) return "end";
      }
    }, signal);
  }
}

const KEYWORDS = {
  python: "and as assert async await break class continue def del elif else except False finally for from global if import in is lambda None nonlocal not or pass raise return True try while with yield",
  c: "auto break case char const continue default do double else enum extern float for goto if int long register return short signed sizeof static struct switch typedef union unsigned void volatile while include define",
  javascript: "async await break case catch class const continue default delete do else export extends false finally for function if import in instanceof let new null return super switch this throw true try typeof undefined var void while yield",
  sh: "case do done elif else esac fi for function if in then until while echo exit export local read return set shift",
};
KEYWORDS.cpp = KEYWORDS.c + " bool catch class delete false namespace new nullptr private protected public template this throw true try using virtual std";
KEYWORDS.java = "abstract boolean break byte case catch char class continue default do double else extends final finally float for if implements import instanceof int interface long new null package private protected public return short static super switch this throw throws true false try void while String System";
KEYWORDS.go = "break case chan const continue default defer else fallthrough for func go goto if import interface map package range return select struct switch type var nil true false";
KEYWORDS.rust = "as async await break const continue crate else enum false fn for if impl in let loop match mod move mut pub ref return self Self static struct super trait true type unsafe use where while";
KEYWORDS.bash = KEYWORDS.sh;
KEYWORDS.typescript = KEYWORDS.javascript + " interface type enum implements private public readonly";
KEYWORDS.ruby = "begin break case class def do else elsif end ensure false for if in module next nil not or redo rescue retry return self super then true undef unless until when while yield puts require";
KEYWORDS.php = "abstract and array as break case catch class const continue declare default do echo else elseif empty extends final for foreach function global if implements include isset list new or print private protected public require return static switch throw try unset use var while";
KEYWORDS.perl = "my our local sub if elsif else unless while until for foreach last next redo return use package print say";

/** The code, highlighted by a small tokenizer: comments, strings, numbers and keywords. */
function code(value, runtime) {
  const source = text(value);
  const words = new Set((KEYWORDS[runtime] || "").split(" "));
  const hashComments = ["python", "sh", "bash", "ruby", "perl"].includes(runtime);
  const pre = h("pre", { class: "code", id: "code", tabindex: 0 });
  const token = /(\/\/[^\n]*|\/\*[\s\S]*?\*\/|#[^\n]*|"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*'|`(?:[^`\\]|\\.)*`|\b\d[\d_.]*\b|\b[A-Za-z_]\w*\b)/g;
  let at = 0;
  for (const match of source.matchAll(token)) {
    const [t] = match;
    if (match.index > at) pre.append(source.slice(at, match.index));
    let cls = null;
    if (t.startsWith("//") || t.startsWith("/*")) cls = hashComments && t.startsWith("//") ? null : "com";
    else if (t.startsWith("#")) cls = hashComments ? "com" : (runtime === "c" || runtime === "cpp" ? "kw" : null);
    else if (/^["'`]/.test(t)) cls = "str";
    else if (/^\d/.test(t)) cls = "num";
    else if (words.has(t)) cls = "kw";
    pre.append(cls ? h("span", { class: cls }, t) : t);
    at = match.index + t.length;
  }
  if (at < source.length) pre.append(source.slice(at));
  return pre;
}

// Suites: newest first, paged.
async function suitesPage(main, params, signal) {
  const query = new URLSearchParams({ limit: "50" });
  if (params.get("before")) query.set("before", params.get("before"));
  const page = await api(`/v1/batches?${query}`);
  if (signal.aborted) return;
  main.replaceChildren(h("h1", {}, "Suites"),
    page.batches.length ? h("div", { class: "table-wrap" }, h("table", {},
      h("thead", {}, h("tr", {}, h("th", {}, "Suite"), h("th", {}, "Progress"), h("th", {}, "Passed"), h("th", {}, "Failed"), h("th", { class: "wide" }, "Runtime"), h("th", { class: "wide" }, "Submitted"))),
      h("tbody", {}, page.batches.map((b) => h("tr", {},
        h("td", { class: "id" }, h("a", { href: `#/suites/${b.id}` }, b.id.slice(0, 13) + "…")),
        h("td", {}, `${b.progress.done} / ${b.progress.total}`, b.done ? "" : h("span", { class: "muted" }, " running")),
        h("td", {}, b.passed), h("td", {}, b.failed), h("td", { class: "wide" }, b.runtime || "mixed"), h("td", { class: "wide" }, when(b.created_at)))))))
      : h("p", { class: "muted" }, "No suites yet."),
    h("div", { class: "actions" }, page.next_before ? h("a", { href: `#/suites?before=${page.next_before}` }, "Older →") : ""));
}

// A suite: a progress bar, a grid of its cases by verdict (live), counts, groups, actions.
async function suitePage(main, id, params, signal) {
  const batchPath = `/v1/batches/${encodeURIComponent(id)}`;
  let batch = await api(batchPath);
  const cases = new Map();
  for (let after = null; ;) {
    const page = await api(`${batchPath}/cases?limit=1000${after === null ? "" : `&after=${after}`}`);
    for (const c of page.cases) cases.set(c.job_id, c);
    if (page.next_after === null || page.next_after === undefined || signal.aborted) break;
    after = page.next_after;
  }
  const only = params.get("verdict") || "";
  const head = h("div", {});
  const grid = h("div", { class: "grid", id: "grid", role: "list", "aria-label": "Cases" });
  const counts = h("div", { class: "legend", id: "counts" });
  const detail = h("div", { id: "case", "aria-live": "polite" });
  const groups = h("div", { class: "table-wrap", id: "groups" });
  const failing = h("div", { class: "table-wrap", id: "failing" });
  const filter = h("select", { "aria-label": "Show verdict", onchange: (e) => { location.hash = `#/suites/${id}${e.target.value ? `?verdict=${e.target.value}` : ""}`; } },
    h("option", { value: "" }, "every verdict"),
    ["passed", "wrong_answer", "runtime_error", "compile_error", "time_limit", "memory_limit", "output_limit", "cancelled", "error"].map((v) => h("option", { value: v, selected: only === v }, v.replace(/_/g, " "))));
  const message = h("div", { role: "status" });
  main.replaceChildren(head, message, counts, h("div", { class: "actions" }, filter), grid, detail,
    h("h2", {}, "Groups"), groups, h("h2", {}, "Failing cases"), failing);

  function render() {
    const b = batch;
    const percent = b.progress.total ? Math.round((100 * b.progress.done) / b.progress.total) : 100;
    head.replaceChildren(
      h("h1", {}, "Suite ", h("span", { class: "mono" }, b.id), " ", b.done ? "" : h("span", { class: "live-dot", title: "live" })),
      h("div", { class: "bar", role: "progressbar", "aria-valuenow": percent, "aria-valuemin": 0, "aria-valuemax": 100, "aria-label": "cases done" }, h("span", { style: `width:${percent}%` })),
      h("p", {}, `${b.progress.done} of ${b.progress.total} cases done, ${b.passed} passed, ${b.failed} failed`),
      h("div", { class: "actions" },
        h("button", { type: "button", class: "danger", disabled: b.done, onclick: cancel }, "Cancel the suite"),
        h("button", { type: "button", onclick: junit }, "Download JUnit")));
    counts.replaceChildren(...Object.entries(b.by_verdict).filter(([, n]) => n > 0).map(([v, n]) => h("span", { id: `verdict-${v}` }, verdictBadge(v), ` ${n}`)));
    grid.replaceChildren(...[...cases.values()].filter((c) => !only || c.verdict === only).map((c) =>
      h("button", { type: "button", role: "listitem", class: `cell ${c.verdict ? `v-${c.verdict}` : `s-${c.status}`}`, title: `${c.name}: ${c.verdict || c.status}`, "aria-label": `${c.name}: ${c.verdict || c.status}`, "data-case": c.name,
        onclick: () => showCase(c) })));
    const bad = [...cases.values()].filter((c) => c.verdict && c.verdict !== "passed").slice(0, 200);
    failing.replaceChildren(bad.length ? h("table", {},
      h("thead", {}, h("tr", {}, h("th", {}, "Case"), h("th", {}, "Verdict"), h("th", {}, "Why"))),
      h("tbody", {}, bad.map((c) => h("tr", {}, h("td", {}, h("a", { href: `#/jobs/${c.job_id}` }, c.name)), h("td", {}, verdictBadge(c.verdict)), h("td", { class: "mono" }, c.detail || "")))))
      : h("p", { class: "muted" }, "None."));
  }
  function showCase(c) {
    detail.replaceChildren(h("p", {}, h("b", {}, c.name), c.group ? ` (group ${c.group})` : "", " ", verdictBadge(c.verdict) || badge(c.status), " ", c.detail || "", " ", ms(c.wall_ms), " ", h("a", { href: `#/jobs/${c.job_id}` }, "the job")));
  }
  async function loadGroups() {
    if (!batch.groups) { groups.replaceChildren(h("p", { class: "muted" }, "This suite names no groups.")); return; }
    const page = await api(`${batchPath}/groups?limit=1000`);
    const ks = Object.keys(batch.groups.pass_at_k || {});
    groups.replaceChildren(h("table", {},
      h("thead", {}, h("tr", {}, h("th", {}, "Group"), h("th", {}, "Cases"), h("th", {}, "Passed"), ks.map((k) => h("th", {}, `pass@${k}`)))),
      h("tbody", {}, page.groups.map((g) => h("tr", {}, h("td", {}, g.group ?? g.name), h("td", {}, g.cases), h("td", {}, g.passed), ks.map((k) => h("td", {}, fmt(g.pass_at_k?.[k])))))),
      h("tfoot", {}, h("tr", {}, h("th", {}, `mean of ${batch.groups.groups ?? page.groups.length}`), h("th", {}), h("th", {}), ks.map((k) => h("th", {}, fmt(batch.groups.pass_at_k[k])))))));
  }
  function fmt(v) { return v === null || v === undefined ? "–" : (Math.round(v * 1000) / 1000).toFixed(3); }
  async function cancel() {
    try { await api(`${batchPath}/cancel`, { method: "POST" }); batch = await api(batchPath); render(); }
    catch (error) { message.replaceChildren(h("p", { class: "notice error" }, error.message)); }
  }
  async function junit() {
    const response = await fetch(`${batchPath}/report?format=junit`, { headers: headers() });
    const url = URL.createObjectURL(await response.blob());
    const a = h("a", { href: url, download: `kiln-${id}.xml` });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 1000);
  }
  render();
  await loadGroups();
  if (!batch.done) {
    const refresh = throttle(async () => {
      try { batch = await api(batchPath); render(); if (batch.done) await loadGroups(); } catch { /* the next event tries again */ }
    }, 500);
    follow(`${batchPath}/events`, (type, event) => {
      if (event && event.job_id && cases.has(event.job_id)) {
        const c = cases.get(event.job_id);
        if (type === "job.started") c.status = "running";
        if (event.data && event.data.verdict) c.verdict = event.data.verdict;
        if (type === "job.cancelled") c.verdict = "cancelled";
        if (type === "job.error") c.verdict = "error";
        if (event.data && (event.data.verdict_detail || event.data.error)) c.detail = event.data.verdict_detail || event.data.error;
      }
      refresh();
      if (type === "batch.completed") return "end";
    }, signal);
  }
}

window.addEventListener("hashchange", route);
window.addEventListener("DOMContentLoaded", route);
