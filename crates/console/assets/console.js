// The Concord console: one page, routed by the URL's #fragment, drawing what the service's JSON
// APIs answer. Text is put in as text (textContent), never as markup. The token is kept in
// this tab's sessionStorage only and sent as a bearer token; the service decides what it may
// see and do.
"use strict";

const REFRESH_MS = 2000;
const PAGE_SIZE = 50;

const state = { manifest: null, timer: null, cursors: [], sagaCursors: [] };

// ---- small helpers ------------------------------------------------------------------------

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function svg(tag, attrs) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, value);
  return node;
}

function badge(text) {
  return el("span", { class: "state " + String(text || "").replace(/[^a-z-]/g, "") }, text || "—");
}

function ago(ms) {
  if (ms === undefined || ms === null) return "—";
  const s = Math.floor(ms / 1000);
  if (s < 1) return ms + " ms";
  if (s < 120) return s + " s";
  if (s < 7200) return Math.floor(s / 60) + " min " + (s % 60) + " s";
  return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
}

function when(unixMs) {
  if (!unixMs) return "—";
  return new Date(unixMs).toISOString().replace("T", " ").replace("Z", " UTC");
}

function offset(ms) {
  return ms === undefined || ms === null ? el("span", { class: "not-yet" }, "not yet") : "+" + ms + " ms";
}

function show(message, isError) {
  const box = document.getElementById("message");
  box.textContent = message || "";
  box.hidden = !message;
  box.className = "message" + (isError ? " error" : "");
}

function token() {
  return sessionStorage.getItem("concord-token") || "";
}

async function api(path, options) {
  const headers = { "Content-Type": "application/json" };
  if (token()) headers["Authorization"] = "Bearer " + token();
  const response = await fetch(path, Object.assign({ headers, cache: "no-store" }, options || {}));
  let body = null;
  try { body = await response.json(); } catch (_) { body = null; }
  if (!response.ok) {
    const why = body && body.error ? body.error : response.status + " " + response.statusText;
    const error = new Error(why);
    error.status = response.status;
    throw error;
  }
  return body;
}

function main(...children) {
  const root = document.getElementById("main");
  root.replaceChildren(...children.flat().filter(c => c !== null && c !== undefined && c !== false));
}

function route() {
  const hash = location.hash.replace(/^#\/?/, "");
  const [page, ...rest] = hash.split("/");
  return { page: page || (state.manifest ? state.manifest.pages[0] : ""), arg: decodeURIComponent(rest.join("/")) };
}

function query(params) {
  const parts = [];
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== "") parts.push(k + "=" + encodeURIComponent(v));
  return parts.join("&");
}

// ---- pages --------------------------------------------------------------------------------

// What a branch is where this console runs: a database (db serve) or a shard (the coordinator).
function branchLabel() {
  return (state.manifest && state.manifest.branch_label) || "Database";
}

// Whether this service lets an operator resolve an in-doubt branch (db serve does; a node
// cluster's shards are only ever finished by the protocol).
function canResolve() {
  return !state.manifest || state.manifest.resolve !== false;
}

const TITLES = { transactions: "Transactions", "in-doubt": "In doubt", sagas: "Sagas", cluster: "Cluster", charts: "Charts" };

function filtersFromHash() {
  const params = new URLSearchParams(location.hash.split("?")[1] || "");
  return { state: params.get("state") || "", database: params.get("database") || "", q: params.get("q") || "" };
}

async function transactionsPage() {
  const filters = filtersFromHash();
  const cursor = state.cursors[state.cursors.length - 1];
  const data = await api("/v1/transactions?" + query({ recent: "true", limit: PAGE_SIZE, before: cursor, state: filters.state, database: filters.database, q: filters.q }));
  const stateSelect = el("select", { id: "filter-state" },
    ["", "in-flight", "running", "committing", "aborting", "committed", "aborted", "heuristic", "unknown"].map(s => el("option", { value: s, selected: s === filters.state }, s || "any state")));
  const databaseInput = el("input", { id: "filter-database", placeholder: branchLabel().toLowerCase(), value: filters.database, size: 12 });
  const textInput = el("input", { id: "filter-q", placeholder: "transaction id contains", value: filters.q, size: 22 });
  const apply = () => {
    state.cursors = [];
    location.hash = "#/transactions?" + query({ state: stateSelect.value, database: databaseInput.value.trim(), q: textInput.value.trim() });
  };
  const form = el("form", { class: "filters", onsubmit: e => { e.preventDefault(); apply(); } },
    stateSelect, databaseInput, textInput, el("button", { type: "submit", id: "apply-filters" }, "Filter"));
  const rows = data.transactions.map(t => el("tr", { class: "link" + (t.state === "heuristic" ? " heuristic-row" : ""), "data-txn": t.txn, onclick: () => { location.hash = "#/txn/" + encodeURIComponent(t.txn); } },
    el("td", { class: "mono" }, t.txn),
    el("td", {}, badge(t.state)),
    el("td", {}, t.protocol),
    el("td", {}, t.branches.map(b => el("div", {}, b.database + ": ", badge(b.state)))),
    el("td", {}, when(t.started_unix_ms)),
    el("td", {}, t.duration_ms === null || t.duration_ms === undefined ? "—" : t.duration_ms + " ms"),
    el("td", {}, t.reason || (t.recovered ? "recovered after a restart" : ""))));
  const pager = el("div", { class: "pager" },
    el("button", { class: "plain", id: "newest", disabled: state.cursors.length === 0, onclick: () => { state.cursors = []; render(); } }, "Newest"),
    el("button", { class: "plain", id: "older", disabled: !data.next, onclick: () => { state.cursors.push(data.next); render(); } }, "Older →"),
    el("span", { class: "note" }, `page ${state.cursors.length + 1} · ${data.kept} recent transactions kept (at most ${data.capacity}; ${data.traced_since_start} since this coordinator started)`));
  main(el("h1", {}, "Transactions"), form,
    el("table", { id: "transactions" },
      el("thead", {}, el("tr", {}, ["Transaction", "State", "Protocol", "Branches", "Started", "Took", "Reason"].map(h => el("th", {}, h)))),
      el("tbody", {}, rows.length ? rows : el("tr", {}, el("td", { colspan: 7 }, "No transaction matches.")))),
    pager);
}

async function txnPage(id) {
  const t = await api("/v1/transactions/" + encodeURIComponent(id));
  const head = el("table", { class: "kv" }, el("tbody", {},
    el("tr", {}, el("th", {}, "State"), el("td", { id: "txn-state" }, badge(t.state))),
    el("tr", {}, el("th", {}, "Protocol"), el("td", {}, t.protocol || "— (not among the recent transactions of this run)")),
    el("tr", {}, el("th", {}, "Decided by"), el("td", {}, t.decided_by || "—")),
    el("tr", {}, el("th", {}, "Started"), el("td", {}, when(t.started_unix_ms))),
    el("tr", {}, el("th", {}, "Reason"), el("td", {}, t.reason || "—"))));
  const live = new Map((t.branches || []).map(b => [b.database, b]));
  const steps = t.branch_steps || [];
  const milestones = el("table", { id: "branch-steps" },
    el("thead", {}, el("tr", {}, [branchLabel(), "Now", "Prepare sent", "Vote", "Prepared (durable where it lives)", "Decision logged (durable)", "Decision sent", "Applied", "Acknowledged"].map(h => el("th", {}, h)))),
    el("tbody", {}, steps.map(b => el("tr", { class: b.heuristic ? "heuristic-row" : "", "data-database": b.database },
      el("td", {}, b.database),
      el("td", {}, badge((live.get(b.database) || {}).state || b.state)),
      el("td", {}, offset(b.prepare_sent_ms)),
      el("td", {}, b.vote ? badge(b.vote) : el("span", { class: "not-yet" }, "not yet")),
      el("td", {}, offset(b.prepared_ms)),
      el("td", {}, b.vote === "yes" ? offset(b.decision_logged_ms) : el("span", { class: "not-yet" }, t.protocol === "one-phase" ? "one phase: none" : "—")),
      el("td", {}, offset(b.decision_sent_ms)),
      el("td", {}, b.heuristic ? badge("heuristic") : offset(b.applied_ms)),
      el("td", {}, offset(b.acknowledged_ms))))));
  const branches = el("table", { id: "branches" },
    el("thead", {}, el("tr", {}, [branchLabel(), "Global id", "State now", "Age", "Detail"].map(h => el("th", {}, h)))),
    el("tbody", {}, (t.branches || []).map(b => el("tr", {}, el("td", {}, b.database), el("td", { class: "mono" }, b.gid), el("td", {}, badge(b.state)), el("td", {}, ago(b.age_ms)),
      el("td", {}, b.detail || "", b.locks && b.locks.length ? el("div", { class: "note locks" }, "holds " + b.locks.join(", ")) : null)))));
  const heuristics = (t.heuristics || []).map(h => el("li", { class: "heuristic-row" }, `${h.database}: logged ${h.logged}, found ${h.actual}${h.forced_by_operator ? " (forced by an operator)" : ""}`));
  const timeline = el("ol", { class: "timeline", id: "timeline" }, (t.timeline || []).map(e => el("li", {},
    el("span", { class: "at" }, "+" + e.at_ms + " ms"), (e.database ? e.database + ": " : ""), e.step, e.detail ? " — " + e.detail : "")));
  main(el("h1", {}, "Transaction ", el("span", { class: "mono" }, t.txn)), head,
    steps.length ? [el("h2", {}, "Each branch, step by step"), el("p", { class: "note" }, "“All voted yes” is the Vote column; “all committed” is the Applied column. Times are from the transaction's start."), milestones] : [],
    el("h2", {}, "Branches now"), branches,
    heuristics.length ? [el("h2", {}, "Heuristic outcomes"), el("ul", {}, heuristics)] : [],
    t.timeline ? [el("h2", {}, "Timeline"), timeline, t.timeline_events_lost ? el("p", { class: "note" }, t.timeline_events_lost + " later events replaced the last") : null] : el("p", { class: "note" }, "No timeline: this transaction is not among the recent ones of this run."));
}

async function inDoubtPage() {
  const data = await api("/v1/transactions?in_doubt=true&heuristic=true");
  const rows = [];
  for (const t of data.transactions) {
    const heuristic = t.state.startsWith("heuristic") || (t.heuristics || []).length > 0;
    const undecided = t.state === "undecided";
    const force = el("input", { type: "checkbox", class: "force" });
    const resolve = decision => async () => {
      const forced = force.checked;
      const question = `Resolve ${t.txn} as ${decision.toUpperCase()}${forced ? " — FORCED: contradicting the log makes a heuristic outcome" : ""}?`;
      if (!window.confirm(question)) return;
      try {
        const answer = await api("/v1/transactions/" + encodeURIComponent(t.txn) + "/resolve", { method: "POST", body: JSON.stringify({ decision, force: forced }) });
        show(`Resolved ${t.txn} as ${decision}: ` + answer.actions.map(a => `${a.action} — ${a.result}`).join("; "));
      } catch (e) {
        show(`Resolve ${t.txn} as ${decision} refused: ${e.message}`, true);
      }
      render();
    };
    const actions = el("div", { class: "resolve" },
      el("button", { class: "plain resolve-commit", onclick: resolve("commit") }, "Commit"), " ",
      el("button", { class: "danger resolve-abort", onclick: resolve("abort") }, "Abort"), " ",
      el("label", {}, force, " force"));
    rows.push(el("tr", { class: heuristic ? "heuristic-row" : "", "data-txn": t.txn },
      el("td", { class: "mono" }, el("a", { href: "#/txn/" + encodeURIComponent(t.txn) }, t.txn)),
      el("td", {}, badge(t.state), undecided ? el("div", { class: "note" }, "no decision logged: presumed abort") : null),
      el("td", { class: "age" }, ago(t.age_ms)),
      el("td", {}, (t.branches || []).map(b => el("div", { class: "branch" }, b.database + " ", el("span", { class: "mono" }, b.gid), " ", badge(b.state), " ", ago(b.age_ms), b.detail ? " — " + b.detail : "",
        b.locks && b.locks.length ? el("div", { class: "note locks" }, "holds " + b.locks.join(", ")) : null))),
      el("td", {}, (t.heuristics || []).map(h => el("div", {}, `${h.database}: logged ${h.logged}, found ${h.actual}`))),
      canResolve() ? el("td", {}, actions) : null));
  }
  const headings = ["Transaction", "State", "Age", `Branches (${branchLabel().toLowerCase()}, gid, state, age)`, "Heuristic"].concat(canResolve() ? ["Resolve"] : []);
  const explanation = canResolve()
    ? "Every prepared branch the databases list for this coordinator, and every decision not yet applied everywhere; heuristic outcomes in red. Resolving needs an operator's token and is refused where it would contradict the log, unless forced."
    : "Every transaction with a branch prepared at its shard (voted YES) that has not acknowledged the outcome: waiting for the other votes, for the decision, or for the decision to arrive. Nobody resolves these by hand: the protocol finishes each (a shard asks until it hears). Each shard's own count is on the Cluster page.";
  main(el("h1", {}, "In doubt"),
    el("p", { class: "note" }, explanation),
    data.errors && data.errors.length ? el("div", { class: "message error" }, "Not listed: " + data.errors.join("; ")) : null,
    el("table", { id: "in-doubt" },
      el("thead", {}, el("tr", {}, headings.map(h => el("th", {}, h)))),
      el("tbody", {}, rows.length ? rows : el("tr", {}, el("td", { colspan: headings.length, id: "nothing-in-doubt" }, "Nothing in doubt.")))));
}

async function sagasPage() {
  const params = new URLSearchParams(location.hash.split("?")[1] || "");
  const wanted = params.get("state") || "";
  const cursor = state.sagaCursors[state.sagaCursors.length - 1];
  const data = await api("/v1/sagas?" + query({ limit: PAGE_SIZE, state: wanted, after: cursor }));
  const select = el("select", { id: "filter-saga-state", onchange: () => { state.sagaCursors = []; location.hash = "#/sagas?" + query({ state: select.value }); } },
    ["", "unfinished", "finished", "running", "compensating", "confirming", "completed", "compensated", "failed-to-drive"].map(s => el("option", { value: s, selected: s === wanted }, s || "any state")));
  const rows = data.sagas.map(s => el("tr", { class: "link", "data-saga": s.id, onclick: () => { location.hash = "#/saga/" + encodeURIComponent(s.id); } },
    el("td", { class: "mono" }, s.id), el("td", {}, s.name), el("td", {}, s.kind), el("td", {}, badge(s.state)),
    el("td", {}, s.current ? `${s.current.step} (${s.current.phase}, attempt ${s.current.attempt})` : "—"),
    el("td", {}, when(s.started_unix_ms)), el("td", {}, s.reason || "")));
  main(el("h1", {}, "Sagas"), el("div", { class: "filters" }, select),
    el("table", { id: "sagas" },
      el("thead", {}, el("tr", {}, ["Saga", "Name", "Kind", "State", "Now", "Started", "Reason"].map(h => el("th", {}, h)))),
      el("tbody", {}, rows.length ? rows : el("tr", {}, el("td", { colspan: 7 }, "No saga matches.")))),
    el("div", { class: "pager" },
      el("button", { class: "plain", disabled: state.sagaCursors.length === 0, onclick: () => { state.sagaCursors = []; render(); } }, "First"),
      el("button", { class: "plain", disabled: !data.next, onclick: () => { state.sagaCursors.push(data.next); render(); } }, "Next →")));
}

async function sagaPage(id) {
  const s = await api("/v1/sagas/" + encodeURIComponent(id));
  const calls = s.timeline || [];
  const entries = calls.map(c => el("li", { class: "call " + c.phase },
    el("span", { class: "at" }, "+" + c.at_ms + " ms"),
    `${c.step} — ${c.phase}${c.attempt > 1 ? " (retry " + (c.attempt - 1) + ")" : ""}: `, badge(/^2\d\d/.test(c.result) ? "applied" : c.result.startsWith("(") ? "waiting" : "no"), " ", c.result,
    c.took_ms !== undefined && c.took_ms !== null ? ` · ${c.took_ms} ms` : "", c.instance ? ` · ${c.instance}` : ""));
  main(el("h1", {}, "Saga ", el("span", { class: "mono" }, s.id)),
    el("table", { class: "kv" }, el("tbody", {},
      el("tr", {}, el("th", {}, "Name"), el("td", {}, s.name + " (" + s.kind + ")")),
      el("tr", {}, el("th", {}, "State"), el("td", { id: "saga-state" }, badge(s.state))),
      el("tr", {}, el("th", {}, "Steps"), el("td", {}, (s.steps || []).join(" → "))),
      el("tr", {}, el("th", {}, "Started"), el("td", {}, when(s.started_unix_ms))),
      el("tr", {}, el("th", {}, "Reason"), el("td", {}, s.reason || "—")),
      el("tr", {}, el("th", {}, "Held by"), el("td", {}, s.instance || "—")))),
    el("h2", {}, "Timeline: calls, retries, compensations"),
    el("ol", { class: "timeline", id: "saga-timeline" }, entries.length ? entries : el("li", {}, "No call yet.")));
}

function kvTable(object, skip) {
  return el("table", { class: "kv" }, el("tbody", {}, Object.entries(object).filter(([k, v]) => !(skip || []).includes(k) && (typeof v !== "object" || v === null)).map(([k, v]) =>
    el("tr", {}, el("th", {}, k.replace(/_/g, " ")), el("td", { class: "mono" }, v === null ? "—" : String(v))))));
}

async function clusterPage() {
  const c = await api("/v1/cluster");
  const parts = [el("h1", {}, "Cluster"), kvTable(c)];
  if (Array.isArray(c.databases)) {
    parts.push(el("h2", {}, "Databases"), el("table", { id: "databases" },
      el("thead", {}, el("tr", {}, ["Name", "Kind", "Branch node", "Up", "Prepared branches", "Oldest prepared"].map(h => el("th", {}, h)))),
      el("tbody", {}, c.databases.map(d => el("tr", {}, el("td", {}, d.name), el("td", {}, d.kind), el("td", {}, d.branch_node),
        el("td", {}, d.up === null || d.up === undefined ? "not listed yet" : badge(d.up ? "up" : "down")),
        el("td", {}, d.prepared_branches), el("td", {}, d.oldest_prepared_s ? d.oldest_prepared_s.toFixed(1) + " s" : "—"))))));
  }
  if (Array.isArray(c.nodes)) {
    const count = v => v === undefined || v === null ? "—" : v;
    parts.push(el("h2", {}, "Nodes"), el("table", { id: "nodes" },
      el("thead", {}, el("tr", {}, ["Name", "Role", "Id", "Address", "Up", "In flight", "Prepared branches (in doubt)", "Log records", "Detail"].map(h => el("th", {}, h)))),
      el("tbody", {}, c.nodes.map(n => el("tr", { "data-node": n.name }, el("td", {}, n.name), el("td", {}, n.role), el("td", {}, n.id), el("td", { class: "mono" }, n.address),
        el("td", { class: "up" }, n.up === null || n.up === undefined ? "no metrics address" : badge(n.up ? "up" : "down")),
        el("td", {}, count(n.in_flight)), el("td", {}, count(n.in_doubt_branches)), el("td", {}, count(n.log_records)),
        el("td", {}, (n.error || "") + (n.data_loss_accepted ? " data loss accepted" : "")))))));
  }
  if (Array.isArray(c.log_files)) {
    parts.push(el("h2", {}, "Log"), el("table", {}, el("tbody", {}, c.log_files.map(f => el("tr", {}, el("td", { class: "mono" }, f.name), el("td", {}, f.bytes + " bytes"))))));
  }
  parts.push(el("h2", {}, "Replication"));
  const r = c.replication;
  if (!r) {
    parts.push(el("p", { id: "replication" }, "None: this coordinator is the only one (no replica, no leader election)."));
  } else {
    const ack = r.quorum_ack_ms === null || r.quorum_ack_ms === undefined ? "—" : r.quorum_ack_ms + " ms ago";
    parts.push(el("p", { id: "replication" },
      `Leader: ${r.leader || "none known (an election is under way)"} · term ${r.term} · this replica ${r.this_replica_leads ? "leads" : "follows"} · log ${r.last_log_index}, applied ${r.applied_index} · leader changes seen ${r.leader_changes} · a majority acknowledged the leader ${ack}`));
    const dash = v => v === null || v === undefined ? "—" : v;
    parts.push(el("table", { id: "replicas" },
      el("thead", {}, el("tr", {}, ["Replica", "Id", "Address", "Role", "Match index", "Lag (entries)", "Last contact"].map(h => el("th", {}, h)))),
      el("tbody", {}, r.replicas.map(p => el("tr", { "data-replica": p.name }, el("td", {}, p.name), el("td", {}, p.id), el("td", { class: "mono" }, p.address),
        el("td", {}, p.leader ? badge("leader") : "follower"), el("td", {}, dash(p.match_index)), el("td", {}, dash(p.lag_entries)),
        el("td", {}, p.leader || p.last_contact_ms === null || p.last_contact_ms === undefined ? "—" : p.last_contact_ms + " ms ago"))))));
    if (!r.this_replica_leads) parts.push(el("p", {}, "Match indexes are known to the leader: open the leader's console for them."));
  }
  main(parts);
}

const COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2"];

function chart(spec, samples) {
  const names = new Set(spec.series);
  if (spec.prefix) for (const s of samples) for (const k of Object.keys(s.values)) if (k.startsWith(spec.prefix)) names.add(k);
  const series = [...names];
  const width = 400, height = 150, pad = 34;
  const t0 = samples.length ? samples[0].at_ms : 0, t1 = samples.length ? samples[samples.length - 1].at_ms : 1;
  let max = 0;
  for (const s of samples) for (const n of series) if (s.values[n] !== undefined) max = Math.max(max, s.values[n]);
  max = max > 0 ? max * 1.1 : 1;
  const x = t => pad + (t1 > t0 ? (t - t0) / (t1 - t0) : 1) * (width - pad - 6);
  const y = v => height - 18 - (v / max) * (height - 28);
  const plot = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img" });
  plot.append(svg("line", { x1: pad, y1: height - 18, x2: width - 6, y2: height - 18, stroke: "#999" }));
  plot.append(svg("line", { x1: pad, y1: 8, x2: pad, y2: height - 18, stroke: "#999" }));
  const label = (text, lx, ly, anchor) => { const t = svg("text", { x: lx, y: ly, "font-size": 10, "text-anchor": anchor || "end", fill: "#555" }); t.textContent = text; plot.append(t); };
  label(max >= 10 ? Math.round(max) : max.toFixed(2), pad - 3, 14);
  label("0", pad - 3, height - 18);
  label(samples.length ? new Date(t0).toISOString().slice(11, 16) : "", pad, height - 4, "start");
  label(samples.length ? new Date(t1).toISOString().slice(11, 19) + " UTC" : "", width - 6, height - 4);
  series.forEach((name, i) => {
    const points = samples.filter(s => s.values[name] !== undefined).map(s => `${x(s.at_ms).toFixed(1)},${y(s.values[name]).toFixed(1)}`);
    if (points.length) plot.append(svg("polyline", { points: points.join(" "), fill: "none", stroke: COLOURS[i % COLOURS.length], "stroke-width": 1.6 }));
  });
  const last = samples.length ? samples[samples.length - 1].values : {};
  const legend = el("div", { class: "legend" }, series.map((name, i) => {
    const swatch = el("span", {}, "■ ");
    swatch.style.color = COLOURS[i % COLOURS.length];
    const value = last[name];
    return el("span", {}, swatch, name.replace(spec.prefix || "\u0000", ""), value === undefined ? "" : ": " + (Math.round(value * 100) / 100));
  }));
  return el("div", { class: "chart", "data-chart": spec.title }, el("h3", {}, `${spec.title} (${spec.unit})`), plot, legend,
    series.length ? null : el("p", { class: "note" }, "nothing yet"));
}

async function chartsPage() {
  const h = await api("/v1/history");
  main(el("h1", {}, "Charts"),
    el("p", { class: "note" }, `The last hour of this node's own metrics, sampled every ${h.interval_ms / 1000} s in the process (${h.samples.length} samples; a restart starts afresh — Prometheus keeps the long history).`),
    el("div", { class: "charts", id: "charts" }, h.charts.map(spec => chart(spec, h.samples))));
}

// ---- frame --------------------------------------------------------------------------------

async function render() {
  clearTimeout(state.timer);
  const { page, arg } = route();
  for (const link of document.querySelectorAll("nav a")) link.classList.toggle("current", link.dataset.page === page);
  try {
    if (page === "transactions") await transactionsPage();
    else if (page === "txn") await txnPage(arg);
    else if (page === "in-doubt") await inDoubtPage();
    else if (page === "sagas") await sagasPage();
    else if (page === "saga") await sagaPage(arg);
    else if (page === "cluster") await clusterPage();
    else if (page === "charts") await chartsPage();
    else main(el("p", {}, "No such page."));
    document.body.dataset.loaded = page;
  } catch (e) {
    const hint = e.status === 401 ? " — type a token above" : e.status === 403 ? " — this token's role may not see this page" : "";
    main(el("h1", {}, TITLES[page] || "Console"), el("p", { class: "message error", id: "page-error" }, e.message + hint));
    document.body.dataset.loaded = page + ":error";
  }
  if (document.getElementById("live").checked) state.timer = setTimeout(render, REFRESH_MS);
}

function init() {
  document.getElementById("token").value = token();
  document.getElementById("login").addEventListener("submit", e => {
    e.preventDefault();
    sessionStorage.setItem("concord-token", document.getElementById("token").value.trim());
    show("");
    connect();
  });
  document.getElementById("live").addEventListener("change", render);
  connect();
}

// Asks the service what its console offers and who the token belongs to, then draws the page.
async function connect() {
  clearTimeout(state.timer);
  try {
    state.manifest = await api("/v1/console");
  } catch (e) {
    state.manifest = null;
    main(el("p", { class: "message error", id: "page-error" }, e.message + (e.status === 401 ? " — type a token above" : "")));
    document.body.dataset.loaded = "login";
    return;
  }
  const m = state.manifest;
  document.getElementById("service").textContent = m.name + " · " + m.version;
  document.getElementById("who").textContent = m.who && m.who.role ? `${m.who.name} (${m.who.role})` : "no tokens configured";
  document.getElementById("nav").replaceChildren(...m.pages.map(p => {
    const link = el("a", { href: "#/" + p }, TITLES[p] || p);
    link.dataset.page = p;
    return link;
  }));
  render();
}

window.addEventListener("hashchange", () => { state.cursors = location.hash.startsWith("#/transactions") ? state.cursors : []; render(); });
window.addEventListener("DOMContentLoaded", init);
