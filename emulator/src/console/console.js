// The emulator's console: renders the snapshots that /_console/api/events
// pushes every second, and asks /_emulator/logs and /_console/api/dlq/... on
// demand. Data goes into the page as text only (never as HTML).
"use strict";

// Script errors are kept where a test (or a curious person) can read them.
window.consoleErrors = [];
window.addEventListener("error", (e) => window.consoleErrors.push(String(e.message)));
window.addEventListener("unhandledrejection", (e) => window.consoleErrors.push(String(e.reason)));
document.addEventListener("securitypolicyviolation", (e) =>
  window.consoleErrors.push(`policy: ${e.violatedDirective} ${e.blockedURI}`));

const $ = (selector) => document.querySelector(selector);

function el(tag, text, attrs) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  return node;
}

function row(cells, attrs) {
  const tr = el("tr", null, attrs);
  for (const c of cells) {
    if (c instanceof Node) {
      const td = el("td");
      td.append(c);
      tr.append(td);
    } else {
      tr.append(el("td", c === null || c === undefined ? "-" : c));
    }
  }
  return tr;
}

function fill(tbody, rows) {
  tbody.replaceChildren(...rows);
}

function age(ms) {
  if (ms === null || ms === undefined) return "-";
  const s = Math.floor(ms / 1000);
  if (s < 1) return `${ms} ms`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
  return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
}

// Invocations per second, from the last two snapshots.
let previous = null;
// Total lag of every group, one point per snapshot, the last five minutes.
const lagHistory = [];

function renderFunctions(snapshot) {
  const seconds = previous ? (Date.parse(snapshot.at) - Date.parse(previous.at)) / 1000 : 0;
  const before = new Map((previous ? previous.functions : []).map((f) => [f.id, f.invocations]));
  fill($("#functions tbody"), snapshot.functions.map((f) => {
    const rate = seconds > 0 && before.has(f.id)
      ? ((f.invocations - before.get(f.id)) / seconds).toFixed(1) : "-";
    const tr = row([f.id, f.binary, f.in_flight, f.invocations, rate, f.events, f.errors, f.cold_starts,
      f.p50_ms, f.p99_ms], { class: "clickable", "data-function": f.id });
    tr.addEventListener("click", () => showFunctionLogs(f.id));
    return tr;
  }));
}

async function showFunctionLogs(id) {
  const answer = await getJson(`/_emulator/logs?function=${encodeURIComponent(id)}&limit=20`);
  $("#function-logs-title").textContent = `Last lines of ${id}`;
  $("#function-logs-lines").textContent = answer.lines
    .map((l) => `${l.timestamp} ${l.level} ${l.message}`).join("\n") || "(none kept)";
  $("#function-logs").hidden = false;
}

function renderStreams(snapshot) {
  const rows = [];
  let lag = 0;
  for (const s of snapshot.streams) {
    if (s.groups.length === 0) rows.push(row([s.key, s.length, "-", "-", "-", "-", "-", "-"]));
    for (const g of s.groups) {
      lag += g.lag || 0;
      const consumers = g.consumer_list.map((c) => `${c.name} (${age(c.idle_ms)})`).join(", ");
      rows.push(row([s.key, s.length, g.name, g.lag, g.pending, age(g.oldest_pending_age_ms),
        g.lease_holder, consumers || "-"], { "data-group": g.name }));
    }
  }
  fill($("#streams tbody"), rows);
  lagHistory.push(lag);
  while (lagHistory.length > 300) lagHistory.shift();
  const top = Math.max(1, ...lagHistory);
  $("#lag-line").setAttribute("points", lagHistory
    .map((v, i) => `${300 - (lagHistory.length - 1 - i)},${60 - (v / top) * 58}`).join(" "));
  $("#lag-now").textContent = `now ${lag}, highest shown ${top}`;
}

function renderOutboxes(snapshot) {
  fill($("#outboxes tbody"), snapshot.outboxes.map((o) =>
    row([o.outbox, o.pending, age(o.oldest_pending_age_ms), o.failed], { "data-outbox": o.outbox })));
  const failed = [];
  for (const o of snapshot.outboxes) {
    for (const r of o.failed_rows) {
      failed.push(row([o.outbox, r.id, r.event_id, `${r.aggregate_type} ${r.aggregate_id}`, r.attempts,
        r.last_error, button("Redrive", () => redriveOutbox(o.outbox, [r.id]))], { "data-failed-row": r.id }));
    }
  }
  fill($("#outbox-failed tbody"), failed);
  $("#outbox-failed").hidden = failed.length === 0;
}

async function redriveOutbox(outbox, ids) {
  const out = $("#outbox-result");
  try {
    const response = await fetch(`/_console/api/outbox/${encodeURIComponent(outbox)}/redrive`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ ids }),
    });
    const answer = await response.json();
    out.textContent = response.ok ? answer.text : `refused: ${answer.message}`;
  } catch (e) {
    out.textContent = `failed: ${e}`;
  }
}

function button(label, onClick, danger) {
  const b = el("button", label, { type: "button" });
  if (danger) b.classList.add("danger");
  b.addEventListener("click", onClick);
  return b;
}

// A purge asks twice: the first click arms the button for five seconds.
function purgeButton(label, body, group) {
  const b = button(label, () => {
    if (b.dataset.armed === "yes") {
      act(group, "purge", { ...body, confirm: true });
      b.dataset.armed = "";
      b.textContent = label;
    } else {
      b.dataset.armed = "yes";
      b.textContent = "Confirm purge";
      setTimeout(() => { b.dataset.armed = ""; b.textContent = label; }, 5000);
    }
  }, true);
  return b;
}

function actions(group, body) {
  const span = el("span");
  span.append(
    button("Dry run", () => act(group, "redrive", { ...body, dry_run: true })),
    button("Redrive", () => act(group, "redrive", body)),
    button("Force", () => act(group, "redrive", { ...body, force: true })),
    purgeButton("Purge", body, group),
  );
  return span;
}

function renderDeadLetters(snapshot) {
  $("#max-redrives").textContent = snapshot.max_redrives;
  const groups = snapshot.dead_letters.map((d) => {
    const div = el("div", null, { class: "group", "data-dlq-group": d.group });
    const title = el("h3", `${d.key}: ${d.total} dead letters`);
    div.append(title);
    if (d.total === 0) return div;
    div.append(actions(d.group, { all: true }));
    const kinds = el("table", null, { class: "kinds" });
    kinds.append(el("thead"));
    kinds.tHead.append(row(["count", "hour", "event type", "error", "redriven up to", ""]));
    const kbody = el("tbody");
    for (const k of d.kinds) {
      kbody.append(row([k.count, k.hour, k.event_type, k.error, k.max_redrives,
        actions(d.group, { kind: { error: k.error, event_type: k.event_type, hour: k.hour } })]));
    }
    kinds.append(kbody);
    div.append(el("h3", "By kind"), kinds);
    const letters = el("table", null, { class: "letters" });
    letters.append(el("thead"));
    letters.tHead.append(row(["id", "event type", "from", "error", "attempts", "redriven", ""]));
    const lbody = el("tbody");
    for (const l of d.letters) {
      const buttons = actions(d.group, { ids: [l.id] });
      buttons.prepend(button("Show", () => showLetter(d.group, l.id)));
      lbody.append(row([l.id, l.event_type, l.source_stream, l.error, l.attempts, l.redrives, buttons],
        { "data-letter": l.id }));
    }
    letters.append(lbody);
    div.append(el("h3", "Oldest"), letters);
    return div;
  });
  $("#dlq").replaceChildren(...groups);
}

async function getJson(url) {
  const response = await fetch(url, { headers: { accept: "application/json" } });
  const body = await response.json();
  if (!response.ok) throw new Error(body.message || response.statusText);
  return body;
}

async function act(group, verb, body) {
  const out = $("#dlq-result");
  try {
    const response = await fetch(`/_console/api/dlq/${encodeURIComponent(group)}/${verb}`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(body),
    });
    const answer = await response.json();
    out.textContent = response.ok ? answer.text : `refused: ${answer.message}`;
  } catch (e) {
    out.textContent = `failed: ${e}`;
  }
}

async function showLetter(group, id) {
  const letter = await getJson(`/_console/api/dlq/${encodeURIComponent(group)}/${encodeURIComponent(id)}`);
  $("#letter-title").textContent =
    `${letter.id} from ${letter.source_stream} ${letter.source_id}: ${letter.error} ` +
    `(attempts ${letter.attempts}, redriven ${letter.redrives})`;
  fill($("#letter-fields tbody"), letter.fields.map((f) =>
    row([f.name, f.text === null ? "(not UTF-8)" : f.text, f.hex])));
  $("#letter").hidden = false;
}

async function showTrace(id) {
  const param = /^[0-9a-f]{32}$/.test(id) ? "trace" : "order";
  const answer = await getJson(`/_emulator/logs?${param}=${encodeURIComponent(id)}&limit=2000`);
  const functions = [...new Set(answer.lines.map((l) => l.function_name).filter(Boolean))];
  $("#trace-summary").textContent =
    `${answer.lines.length} lines, traces ${answer.traces.join(", ") || "-"}; functions: ${functions.join(" → ") || "-"}`;
  fill($("#trace-lines tbody"), answer.lines.map((l) =>
    row([l.timestamp, l.function_name, l.level, l.message], { "data-function": l.function_name || "" })));
}

// The services' own tables: columns from the rows' keys.
function renderViews(snapshot) {
  $("#views").replaceChildren(...snapshot.views.map((v) => {
    const div = el("div", null, { class: "view" });
    div.append(el("h2", `${v.title}: ${v.rows.length}`));
    if (v.error) div.append(el("p", `could not read: ${v.error}`, { class: "problems" }));
    if (v.rows.length > 0) {
      const columns = Object.keys(v.rows[0]);
      const table = el("table");
      table.append(el("thead"));
      table.tHead.append(row(columns));
      const body = el("tbody");
      for (const r of v.rows) body.append(row(columns.map((c) => r[c])));
      table.append(body);
      div.append(table);
    }
    return div;
  }));
}

function render(snapshot) {
  const state = $("#state");
  if (snapshot.status) {
    state.textContent = snapshot.status.idle ? "idle" : `busy, ${snapshot.status.in_flight} in flight`;
    state.className = `badge ${snapshot.status.idle ? "idle" : "busy"}`;
  }
  $("#conn").textContent = `live, ${new Date(snapshot.at).toLocaleTimeString()}`;
  fill($("#problems"), snapshot.errors.map((e) => el("li", e)));
  renderFunctions(snapshot);
  renderStreams(snapshot);
  renderOutboxes(snapshot);
  renderDeadLetters(snapshot);
  renderViews(snapshot);
  previous = snapshot;
}

function connect() {
  const source = new EventSource("/_console/api/events");
  source.addEventListener("snapshot", (e) => render(JSON.parse(e.data)));
  source.addEventListener("error", () => {
    $("#state").textContent = "disconnected";
    $("#state").className = "badge down";
    $("#conn").textContent = "reconnecting";
  });
}

document.addEventListener("DOMContentLoaded", () => {
  $("#trace-form").addEventListener("submit", (e) => {
    e.preventDefault();
    showTrace($("#trace-id").value.trim()).catch((err) => {
      $("#trace-summary").textContent = `failed: ${err.message}`;
    });
  });
  connect();
});
