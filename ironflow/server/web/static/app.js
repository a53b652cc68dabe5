// ironflow web view: one script, no framework, no build step.
//
// Every value from the server (event data, step results, errors, ids) reaches the page through
// text nodes (h() below) and never through innerHTML: data cannot inject markup.
// A token-protected server answers 401; the page then asks for the token once, keeps it in
// sessionStorage (this tab) and sends it as a bearer header. No cookie: nothing for a
// cross-site form to ride on.
"use strict";

const REFRESH_MS = 1500;
const TOKEN_KEY = "ironflow.token";
const STATUSES = ["pending", "running", "waiting", "completed", "failed", "cancelled", "blocked"];
const ACTIVE = ["pending", "running", "waiting", "blocked"];
const SINCE = [["", "any time"], ["15m", "last 15 minutes"], ["1h", "last hour"],
               ["24h", "last 24 hours"], ["7d", "last 7 days"]];
const SECONDS = { m: 60, h: 3600, d: 86400 };

// --- DOM -------------------------------------------------------------------------------------

function h(tag, props, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "style") Object.assign(node.style, value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  append(node, children);
  return node;
}

function append(node, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

function mount(...children) {
  const main = document.getElementById("main");
  main.replaceChildren();
  append(main, children);
}

const badge = (status) => h("span", { class: `badge s-${String(status).replace(/ /g, "-")}` }, status);
const json = (value) => h("pre", { class: "json" }, JSON.stringify(value, null, 2));
const runLink = (id) => h("a", { href: `/runs/${encodeURIComponent(id)}`, class: "mono" }, id);

function when(iso) {
  if (!iso) return "-";
  const d = new Date(iso);
  return isNaN(d) ? String(iso) : d.toISOString().replace("T", " ").slice(0, 19);
}

function duration(seconds) {
  if (seconds === null || seconds === undefined || isNaN(seconds)) return "-";
  if (seconds < 1) return `${Math.round(seconds * 1000)}ms`;
  if (seconds < 60) return `${seconds.toFixed(1)}s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)}m${Math.round(seconds % 60)}s`;
  if (seconds < 86400) return `${Math.floor(seconds / 3600)}h${Math.floor((seconds % 3600) / 60)}m`;
  return `${Math.floor(seconds / 86400)}d${Math.floor((seconds % 86400) / 3600)}h`;
}

const between = (a, b) => (a && b ? (Date.parse(b) - Date.parse(a)) / 1000 : null);

function errorBox(error) {
  if (!error) return null;
  return h("div", { class: "error-box" },
    h("strong", { class: "error-type" }, error.type), ": ",
    h("span", { class: "error-message" }, error.message),
    error.traceback ? h("details", {}, h("summary", {}, "traceback"),
                        h("pre", { class: "traceback" }, error.traceback)) : null);
}

// --- the API -----------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, body) {
    const message = (body && body.error && body.error.message) || `HTTP ${status}`;
    super(message);
    this.status = status;
  }
}

async function api(method, path, body) {
  for (;;) {
    const headers = { Accept: "application/json" };
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (token) headers.Authorization = `Bearer ${token}`;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const response = await fetch(path, {
      method, headers, body: body === undefined ? undefined : JSON.stringify(body),
      credentials: "omit", cache: "no-store",
    });
    if (response.status === 401) {
      await askToken(token ? "That token was refused; try again." : "");
      continue;
    }
    let data = null;
    try { data = await response.json(); } catch (_) { data = null; }
    if (!response.ok) throw new ApiError(response.status, data);
    return data;
  }
}

let tokenAsked = null;
function askToken(problem) {
  // One dialog however many requests were refused at once.
  if (tokenAsked) return tokenAsked;
  tokenAsked = new Promise((resolve) => {
    const dialog = document.getElementById("token");
    const input = document.getElementById("token-input");
    document.getElementById("token-error").textContent = problem;
    input.value = "";
    dialog.addEventListener("close", function done() {
      dialog.removeEventListener("close", done);
      sessionStorage.setItem(TOKEN_KEY, input.value.trim());
      tokenAsked = null;
      resolve();
    });
    dialog.showModal();
    input.focus();
  });
  return tokenAsked;
}

function confirmAction(text) {
  return new Promise((resolve) => {
    const dialog = document.getElementById("confirm");
    document.getElementById("confirm-text").textContent = text;
    dialog.returnValue = "";
    dialog.addEventListener("close", function done() {
      dialog.removeEventListener("close", done);
      resolve(dialog.returnValue === "ok");
    });
    dialog.showModal();
  });
}

// --- live refresh --------------------------------------------------------------------------------

let timer = null;
function every(refresh) {
  // Polling (not SSE): the same JSON routes, one request per page every 1.5 s, and any proxy
  // passes it. A refresh still in flight is never overlapped.
  let busy = false;
  const tick = async () => {
    if (busy || document.querySelector("dialog[open]")) return;
    busy = true;
    try {
      await refresh();
      document.getElementById("live").textContent = `live · updated ${new Date().toLocaleTimeString()}`;
    } catch (error) {
      document.getElementById("live").textContent = `live · ${error.message}`;
    } finally {
      busy = false;
    }
  };
  clearInterval(timer);
  timer = setInterval(tick, REFRESH_MS);
  return tick();
}

function failure(error) {
  return h("div", { class: "error-box", id: "load-error" }, error.message || String(error));
}

// --- runs list -----------------------------------------------------------------------------------

async function runsPage() {
  const params = new URLSearchParams(location.search);
  const state = {
    status: params.get("status") || "", function: params.get("function") || "",
    since: params.get("since") || "", cursors: [null],
  };
  const statusSelect = h("select", { name: "status", id: "filter-status" },
    h("option", { value: "" }, "any status"), STATUSES.map((s) => h("option", { value: s }, s)));
  const functionSelect = h("select", { name: "function", id: "filter-function" },
    h("option", { value: "" }, "any function"));
  const sinceSelect = h("select", { name: "since", id: "filter-since" },
    SINCE.map(([value, label]) => h("option", { value }, label)));
  statusSelect.value = state.status;
  sinceSelect.value = state.since;
  const search = h("input", { type: "search", id: "search", placeholder: "run id", size: 36 });
  const searchNote = h("span", { class: "error-text", id: "search-note" });
  const body = h("tbody", { id: "runs" });
  const older = h("button", { class: "secondary", id: "older" }, "Older →");
  const newer = h("button", { class: "secondary", id: "newer" }, "← Newer");
  const pageNote = h("span", { class: "muted", id: "page-note" });

  api("GET", "/api/functions").then((found) => {
    for (const fn of functionsOf(found)) functionSelect.append(h("option", { value: fn.id }, fn.id));
    functionSelect.value = state.function;
  }).catch(() => {});

  const onFilter = () => {
    state.status = statusSelect.value;
    state.function = functionSelect.value;
    state.since = sinceSelect.value;
    state.cursors = [null];
    const query = new URLSearchParams();
    for (const key of ["status", "function", "since"]) if (state[key]) query.set(key, state[key]);
    history.replaceState(null, "", query.toString() ? `/?${query}` : "/");
    refresh();
  };
  for (const select of [statusSelect, functionSelect, sinceSelect]) select.addEventListener("change", onFilter);

  const searchForm = h("form", { class: "search", onsubmit: async (event) => {
    event.preventDefault();
    const id = search.value.trim();
    if (!id) return;
    try {
      await api("GET", `/api/view/run?id=${encodeURIComponent(id)}`);
      location.href = `/runs/${encodeURIComponent(id)}`;
    } catch (error) {
      searchNote.textContent = error.status === 404 ? `no run with id ${id}` : error.message;
    }
  } }, h("label", {}, "search by run id", search), searchNote);

  older.addEventListener("click", () => { state.cursors.push(state.next); refresh(); });
  newer.addEventListener("click", () => { state.cursors.pop(); refresh(); });

  mount(
    h("h1", {}, "Runs"),
    h("div", { class: "filters" },
      h("label", {}, "status", statusSelect), h("label", {}, "function", functionSelect),
      h("label", {}, "started", sinceSelect), searchForm),
    h("table", { class: "runs" },
      h("thead", {}, h("tr", {}, ["Run", "Function", "Status", "Started (UTC)", "Duration", "Parent"]
        .map((title) => h("th", {}, title)))),
      body),
    h("div", { class: "pager" }, newer, older, pageNote));

  async function refresh() {
    const query = new URLSearchParams({ limit: "50" });
    if (state.status) query.set("status", state.status);
    if (state.function) query.set("function", state.function);
    if (state.since) {
      const [, n, unit] = state.since.match(/^(\d+)([mhd])$/);
      query.set("created_after", new Date(Date.now() - n * SECONDS[unit] * 1000).toISOString());
    }
    const cursor = state.cursors[state.cursors.length - 1];
    if (cursor) query.set("cursor", cursor);
    const found = await api("GET", `/api/runs?${query}`);
    state.next = found.next_cursor;
    body.replaceChildren(...found.runs.map((run) => h("tr", {
      class: "clickable", "data-run": run.id, "data-status": run.status,
      onclick: (event) => { if (event.target.tagName !== "A") location.href = `/runs/${encodeURIComponent(run.id)}`; },
    },
      h("td", {}, runLink(run.id)), h("td", {}, run.function), h("td", {}, badge(run.status)),
      h("td", {}, when(run.created_at)),
      h("td", {}, duration(between(run.created_at, run.ended_at))),
      h("td", {}, run.parent_run_id ? runLink(run.parent_run_id) : ""))));
    if (!found.runs.length) body.append(h("tr", {}, h("td", { colspan: 6, class: "muted" }, "no runs match")));
    older.disabled = !found.next_cursor;
    newer.disabled = state.cursors.length <= 1;
    pageNote.textContent = `page ${state.cursors.length}`;
  }
  await every(refresh);
}

function functionsOf(found) {
  // GET /api/functions: a list, or {"functions": [...]}.
  const list = Array.isArray(found) ? found : (found && found.functions) || [];
  return list.map((fn) => (typeof fn === "string" ? { id: fn } : fn));
}

// --- run page ------------------------------------------------------------------------------------

async function runPage(runId) {
  const open = new Set(); // the step rows whose details are unfolded survive a refresh
  const root = h("div", { id: "run" });
  mount(root);
  let last = "";
  let view = null;
  open.redraw = () => root.replaceChildren(...renderRun(view, open));

  async function refresh() {
    const found = await api("GET", `/api/view/run?id=${encodeURIComponent(runId)}`);
    const text = JSON.stringify(found);
    if (text === last) return; // nothing moved: keep the page (and any selection) as it is
    last = text;
    view = found;
    open.redraw();
  }
  try {
    await every(refresh);
  } catch (error) {
    mount(h("h1", {}, `Run ${runId}`), failure(error));
  }
}

function renderRun(view, open) {
  const run = view.run;
  const facts = h("dl", { class: "facts" },
    h("dt", {}, "function"), h("dd", {}, run.function),
    h("dt", {}, "status"), h("dd", { id: "run-status", "data-status": run.status }, badge(run.status)),
    run.waiting_for ? [h("dt", {}, "pending"), h("dd", {}, run.waiting_for)] : null,
    run.code_version ? [h("dt", {}, "code"), h("dd", { class: "mono" }, run.code_version)] : null,
    run.parent_run_id ? [h("dt", {}, "parent"), h("dd", {}, runLink(run.parent_run_id))] : null,
    run.source_run_id ? [h("dt", {}, "source"), h("dd", {}, runLink(run.source_run_id))] : null,
    h("dt", {}, "started"), h("dd", {}, `${when(run.created_at)} UTC`),
    run.ended_at ? [h("dt", {}, "ended"),
                    h("dd", {}, `${when(run.ended_at)} UTC (${duration(run.duration_s)})`)] : null,
    view.trigger ? [h("dt", {}, "trigger"),
                    h("dd", {}, `event ${view.trigger.name} `, h("span", { class: "muted mono" }, view.trigger.id))] : null);
  const parts = [
    h("h1", {}, "Run ", h("span", { class: "mono", id: "run-id" }, run.id)),
    h("div", { class: "panel" }, facts),
    actions(run),
  ];
  if (view.trigger) parts.push(h("h2", {}, "Trigger data"), json(view.trigger.data));
  if (run.status === "completed") parts.push(h("h2", {}, "Output"), json(run.output));
  if (run.error) parts.push(h("h2", {}, "Error"), h("div", { id: "run-error" }, errorBox(run.error)));
  if (view.diff) {
    parts.push(h("h2", {}, `Blocked: recorded vs current code (history seq ${view.diff.seq})`),
      h("div", { class: "diff", id: "diff" },
        h("div", { class: "panel rec" }, h("strong", {}, "recorded"), h("pre", {}, view.diff.recorded)),
        h("div", { class: "panel cur" }, h("strong", {}, "current"), h("pre", {}, view.diff.current))),
      h("p", { class: "muted" }, "Fix the code (guard the change with ctx.patched()) and resume, or cancel the run."));
  }
  parts.push(h("h2", {}, "Timeline"), gantt(view, open));
  if (view.markers.length) {
    parts.push(h("h2", {}, "Run events"), h("ul", { class: "markers" },
      view.markers.map((m) => h("li", { class: "marker" }, `${when(m.ts)} UTC · ${m.kind} `, m.detail || ""))));
  }
  return parts;
}

function actions(run) {
  const buttons = [];
  const act = (label, verb, question, enabled, id) => {
    buttons.push(h("button", { id, class: verb === "cancel" ? "danger" : "", disabled: !enabled,
      onclick: () => control(run.id, verb, question) }, label));
  };
  act("Cancel", "cancel", `Cancel run ${run.id} and its unfinished child runs?`,
      ACTIVE.includes(run.status), "cancel");
  act("Resume", "resume", `Resume run ${run.id} with the code the workers have now?`,
      run.status === "failed" || run.status === "blocked", "resume");
  act("Rerun", "rerun", `Start a new run of ${run.function} with the same trigger as ${run.id}?`,
      true, "rerun");
  return h("div", { class: "actions" }, buttons, h("span", { class: "error-text", id: "action-error" }));
}

async function control(runId, verb, question, body) {
  if (!(await confirmAction(question))) return;
  const note = document.getElementById("action-error");
  try {
    const answer = await api("POST", `/api/runs/${encodeURIComponent(runId)}/${verb}`, body || {});
    if (answer && answer.run_id && answer.run_id !== runId) {
      location.href = `/runs/${encodeURIComponent(answer.run_id)}`;
    }
  } catch (error) {
    if (note) note.textContent = `${verb} refused: ${error.message}`;
  }
}

function gantt(view, open) {
  const run = view.run;
  const steps = view.steps;
  if (!steps.length) return h("p", { class: "muted", id: "timeline" }, "no steps yet");
  const times = [Date.parse(run.created_at)];
  for (const step of steps) {
    for (const iso of [step.started_at, step.ended_at, step.due]) if (iso) times.push(Date.parse(iso));
  }
  const start = Math.min(...times);
  const end = Math.max(...times, run.ended_at ? Date.parse(run.ended_at) : Date.now());
  const span = Math.max(end - start, 1);
  const at = (iso) => `${(100 * (Date.parse(iso) - start)) / span}%`;
  const width = (a, b) => `${Math.max((100 * (b - a)) / span, 0.4)}%`;
  const nowOrEnd = run.ended_at ? Date.parse(run.ended_at) : Date.now();

  const rows = [h("div", { class: "g-row head" }, h("div", { class: "g-name" }, "step"),
    h("div", { class: "g-dur", style: { textAlign: "left" } }, `${when(new Date(start).toISOString())} → ${duration(span / 1000)}`),
    h("div", { class: "g-dur" }, "duration"))];
  for (const step of steps) {
    const from = Date.parse(step.started_at);
    const to = step.ended_at ? Date.parse(step.ended_at) : nowOrEnd;
    const bars = [];
    if (step.attempt_list.length > 1) {
      // One bar per attempt: a failed try red, the retry's wait left blank.
      for (const attempt of step.attempt_list) {
        if (!attempt.started_at) continue;
        const a = Date.parse(attempt.started_at);
        const b = attempt.ended_at ? Date.parse(attempt.ended_at) : to;
        bars.push(h("div", { class: `g-bar s-${attempt.status}`, title: `attempt ${attempt.attempt}: ${attempt.status}`,
          style: { left: at(attempt.started_at), width: width(a, b) } }));
      }
    } else {
      bars.push(h("div", { class: `g-bar s-${step.status.replace(/ /g, "-")}`, title: step.status,
        style: { left: at(step.started_at), width: width(from, to) } }));
    }
    if (step.due && !step.ended_at) bars.push(h("div", { class: "g-due", title: `due ${when(step.due)} UTC`, style: { left: at(step.due) } }));
    const toggle = () => { open.has(step.id) ? open.delete(step.id) : open.add(step.id); open.redraw(); };
    rows.push(h("div", { class: "g-row step", "data-step": step.id, "data-status": step.status },
      h("div", { class: "g-name", style: { paddingLeft: `${8 + 18 * step.depth}px` }, title: step.id, onclick: toggle },
        open.has(step.id) ? "▾ " : "▸ ", step.name, h("span", { class: "kind" }, step.kind), " ", badge(step.status)),
      h("div", { class: "g-track", onclick: toggle }, bars),
      h("div", { class: "g-dur" }, duration(step.duration_s)),
      open.has(step.id) ? stepDetail(view, step) : null));
  }
  return h("div", { class: "gantt", id: "timeline" }, rows);
}

function stepDetail(view, step) {
  const detail = step.detail || {};
  const parts = [h("div", { class: "muted mono" }, `id ${step.id}`,
    step.scope ? ` · scope ${step.scope}` : "", step.branch !== null ? ` · branch ${step.branch}` : "")];
  if (detail.event !== undefined && step.kind === "wait_for_event") {
    let what = `waits for event ${detail.event}`;
    if (detail.match) what += ` where ${detail.match} == ${JSON.stringify(detail.match_value)}`;
    parts.push(h("p", { class: "wait" }, what));
  }
  if (step.due && !step.ended_at) parts.push(h("p", { class: "due" }, `${step.kind === "wait_for_event" ? "times out" : "due"} ${when(step.due)} UTC`));
  if (step.child_run_id) parts.push(h("p", {}, "child run ", runLink(step.child_run_id)));
  parts.push(h("h3", {}, "Input (as recorded)"), json(detail));
  if (step.attempt_list.length) {
    parts.push(h("h3", {}, "Attempts"), h("table", { class: "attempts" },
      h("thead", {}, h("tr", {}, ["#", "status", "began", "ended", "error"].map((t) => h("th", {}, t)))),
      h("tbody", {}, step.attempt_list.map((a) => h("tr", {},
        h("td", {}, a.attempt), h("td", {}, badge(a.status)), h("td", {}, when(a.started_at)),
        h("td", {}, when(a.ended_at)), h("td", {}, errorBox(a.error)))))));
  }
  if (step.output !== null && step.output !== undefined) parts.push(h("h3", {}, "Output"), json(step.output));
  if (step.error) parts.push(h("h3", {}, "Error"), errorBox(step.error));
  const terminal = !ACTIVE.includes(view.run.status);
  if (terminal && !step.scope) {
    parts.push(h("div", { class: "actions" }, h("button", { class: "secondary fork", "data-fork": step.id,
      onclick: () => control(view.run.id, "fork", `Start a new run from step ${step.id}? The steps recorded before it are kept, not run again.`, { from_step: step.id }) },
      "Fork from this step")));
  }
  return h("div", { class: "g-detail" }, parts);
}

// --- functions and events ---------------------------------------------------------------------

async function functionsPage() {
  const list = h("div", { id: "functions" });
  const workers = h("div", { id: "workers" });
  mount(h("h1", {}, "Functions"), list, h("h2", {}, "Live workers"), workers);
  await every(async () => {
    const [found, live] = await Promise.all([api("GET", "/api/functions"), api("GET", "/api/view/workers")]);
    list.replaceChildren(h("table", {},
      h("thead", {}, h("tr", {}, ["Function", "Triggers", "Flow control", "Code version", "Live"].map((t) => h("th", {}, t)))),
      h("tbody", {}, functionsOf(found).map((fn) => {
        const settings = fn.settings || {};
        const shown = Object.entries(settings).filter(([, value]) => value !== null);
        return h("tr", { "data-function": fn.id }, h("td", { class: "mono" }, fn.id),
          h("td", {}, (fn.triggers || []).map(String).join(", ") || "-"),
          h("td", {}, shown.length ? json(Object.fromEntries(shown)) : "-"),
          h("td", { class: "mono" }, fn.code_version || "-"),
          h("td", {}, fn.live === true ? "yes" : fn.live === false ? "no live worker" : "-"));
      }))));
    workers.replaceChildren(live.workers.length ? h("table", {},
      h("thead", {}, h("tr", {}, ["Worker", "Functions and code versions", "Last seen (UTC)"].map((t) => h("th", {}, t)))),
      h("tbody", {}, live.workers.map((w) => h("tr", { "data-worker": w.id }, h("td", { class: "mono" }, w.id),
        h("td", {}, Object.entries(w.functions).map(([fid, version]) =>
          h("div", {}, h("span", { class: "mono" }, fid), " ", h("span", { class: "muted mono" }, version || "version not reported")))),
        h("td", {}, when(w.seen_at))))))
      : h("p", { class: "muted" }, "no live worker"));
  });
}

async function eventsPage() {
  const body = h("tbody", { id: "events" });
  const befores = [null];
  let next = null;
  const older = h("button", { class: "secondary", onclick: () => { befores.push(next); refresh(); } }, "Older →");
  const newer = h("button", { class: "secondary", onclick: () => { befores.pop(); refresh(); } }, "← Newer");
  mount(h("h1", {}, "Events"), h("table", {},
    h("thead", {}, h("tr", {}, ["Event", "Time (UTC)", "Data", "Started", "Woke"].map((t) => h("th", {}, t)))), body),
    h("div", { class: "pager" }, newer, older));
  async function refresh() {
    const before = befores[befores.length - 1];
    const found = await api("GET", `/api/view/events?limit=50${before ? `&before=${encodeURIComponent(before)}` : ""}`);
    next = found.next_before;
    body.replaceChildren(...found.events.map((e) => h("tr", { "data-event": e.id },
      h("td", {}, h("strong", {}, e.name), h("div", { class: "muted mono" }, e.id)),
      h("td", {}, when(e.ts)), h("td", {}, json(e.data)),
      h("td", {}, e.started.map((id) => h("div", {}, runLink(id)))),
      h("td", {}, e.woke.map((id) => h("div", {}, runLink(id)))))));
    if (!found.events.length) body.append(h("tr", {}, h("td", { colspan: 5, class: "muted" }, "no events")));
    older.disabled = !next;
    newer.disabled = befores.length <= 1;
  }
  await every(refresh);
}

// --- routing -------------------------------------------------------------------------------------

function route() {
  const path = location.pathname;
  let page = "runs";
  let run;
  if (path.startsWith("/runs/")) { page = "run"; run = decodeURIComponent(path.slice(6)); }
  else if (path === "/functions") page = "functions";
  else if (path === "/events") page = "events";
  for (const link of document.querySelectorAll("nav a")) {
    link.classList.toggle("current", link.dataset.page === (page === "run" ? "runs" : page));
  }
  document.title = run ? `${run} · ironflow` : `${page} · ironflow`;
  const shown = { runs: runsPage, run: () => runPage(run), functions: functionsPage, events: eventsPage }[page]();
  shown.catch((error) => mount(failure(error)));
}

document.addEventListener("DOMContentLoaded", route);
