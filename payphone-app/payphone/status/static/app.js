// The payphone's status page: one snapshot per server-sent event, rendered without a reload.
// Everything is built with textContent (never innerHTML): transcripts are strangers' words.
"use strict";

const token = new URLSearchParams(location.search).get("token");
const withToken = (path) => (token ? `${path}?token=${encodeURIComponent(token)}` : path);
const $ = (id) => document.getElementById(id);

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

function ms(value) {
  return value === null || value === undefined ? "–" : `${Math.round(value)} ms`;
}

function clock(unix) {
  return unix ? new Date(unix * 1000).toLocaleTimeString() : "";
}

let since = 0;
function tickSince() {
  if (!since) return;
  const seconds = Math.max(0, Math.round(Date.now() / 1000 - since));
  $("since").textContent = `for ${seconds} s`;
}
setInterval(tickSince, 1000);

function renderNow(now) {
  const state = $("state");
  state.dataset.state = now.state;
  state.textContent = now.words;
  $("persona").textContent = now.persona ? `Persona: ${now.persona}` : "";
  since = now.since;
  tickSince();
}

function renderHealth(health) {
  const box = $("health");
  if (!health) return;
  box.textContent = health.line;
  box.className = `health ${health.ok ? "ok" : "bad"}`;
  box.dataset.ok = health.ok ? "yes" : "no";
  for (const check of health.checks) {
    if (check.name === "llm") continue;
    const card = $(`card-${check.name}`);
    if (!card) continue;
    card.classList.toggle("bad", !check.ok);
    const body = card.querySelector(".body");
    body.replaceChildren(el("div", check.ok ? "working" : "NOT WORKING", check.ok ? "ok" : "bad"),
      el("div", check.detail));
  }
}

function renderLlm(llm) {
  if (!llm) return;
  const card = $("card-llm");
  card.classList.toggle("bad", !llm.ok);
  const body = card.querySelector(".body");
  body.replaceChildren(
    el("div", llm.words, llm.ok ? "ok" : "bad"),
    el("div", llm.where),
    el("div", `model: ${llm.model}`),
  );
  if (llm.version) body.append(el("div", `version: ${llm.version}`));
  if (llm.digest) body.append(el("div", `digest: ${llm.digest}`, "muted"));
}

function renderTotals(totals) {
  const box = $("totals");
  box.replaceChildren();
  for (const [name, value] of Object.entries(totals)) {
    const item = el("div");
    item.append(el("b", value), el("span", name, "muted"));
    box.append(item);
  }
}

function renderFallbacks(fallbacks) {
  const body = $("fallbacks").querySelector("tbody");
  body.replaceChildren();
  const entries = Object.entries(fallbacks);
  if (!entries.length) {
    const row = el("tr");
    row.append(el("td", "none so far", "muted"));
    body.append(row);
  }
  for (const [cause, count] of entries) {
    const row = el("tr");
    row.append(el("td", cause), el("td", count, "num"));
    body.append(row);
  }
}

function turnRow(turn, shown) {
  const row = el("tr");
  let note = "";
  if (turn.fallback) note = `fallback: ${turn.fallback}`;
  else if (turn.interrupted) note = "cut off";
  else if (turn.filler) note = "filler played";
  row.append(el("td", turn.n), el("td", turn.persona));
  if (shown) row.append(el("td", turn.heard), el("td", turn.reply));
  row.append(
    el("td", ms(turn.voice_to_voice_ms), "num"),
    el("td", ms(turn.first_audio_ms), "num"),
    el("td", ms(turn.first_token_ms), "num"),
    el("td", note, turn.fallback ? "note-fallback" : turn.interrupted ? "note-cut" : ""),
  );
  return row;
}

function renderCalls(calls, shown) {
  $("privacy").textContent = shown
    ? "Transcripts are kept in memory for these calls only (setting status.transcripts)."
    : "Transcripts are off (setting status.transcripts = \"off\").";
  const box = $("calls");
  box.replaceChildren();
  if (!calls.length) box.append(el("p", "No calls yet.", "muted"));
  for (const call of calls) {
    const details = el("details");
    details.open = true;
    details.dataset.callId = call.call_id;
    const ended = call.ended ? `–${clock(call.ended)}` : " (on the line)";
    details.append(el("summary",
      `${clock(call.started)}${ended} · ${call.personas.join(" → ")} · ${call.turns.length} turn(s)`));
    const table = el("table");
    const head = el("tr");
    const names = ["#", "persona", ...(shown ? ["caller said", "persona replied"] : []),
      "voice to voice", "first audio", "first token", "note"];
    for (const name of names) head.append(el("th", name));
    table.append(head);
    for (const turn of call.turns) table.append(turnRow(turn, shown));
    details.append(table);
    box.append(details);
  }
}

const charts = {};
function chart(id, label, p50, p95, data) {
  const columns = [data.t, data[p50], data[p95]];
  if (!charts[id]) {
    const target = $(id);
    charts[id] = new uPlot({
      width: Math.max(280, (target.clientWidth || 400) - 16),
      height: 200,
      // a single point would stretch the time axis over years: show a minute around it
      scales: { x: { time: true, range: (u, min, max) => (min === max ? [min - 60, max + 60] : [min, max]) } },
      series: [
        {},
        { label: `${label} p50`, stroke: "#2a6fb0", spanGaps: true },
        { label: `${label} p95`, stroke: "#c0504d", spanGaps: true },
      ],
      axes: [{}, { label: "ms" }],
    }, columns, target);
  } else {
    charts[id].setData(columns);
  }
}

function render(snapshot) {
  renderNow(snapshot.now);
  if (!snapshot.calls) return; // a state change only: the rest is as it was
  renderHealth(snapshot.health);
  renderLlm(snapshot.llm);
  $("version").textContent = `version ${snapshot.phone.version}`;
  renderTotals(snapshot.totals);
  renderFallbacks(snapshot.fallbacks);
  renderCalls(snapshot.calls, snapshot.transcripts_shown);
  if (window.uPlot) {
    chart("chart-v2v", "voice to voice", "v2v_p50", "v2v_p95", snapshot.chart);
    chart("chart-first", "first audio", "first_p50", "first_p95", snapshot.chart);
  }
}

function connect() {
  const source = new EventSource(withToken("/events"));
  source.onopen = () => {
    $("link").textContent = "live";
    $("link").className = "link up";
  };
  source.onmessage = (event) => render(JSON.parse(event.data));
  source.onerror = () => {
    $("link").textContent = "connection lost: retrying";
    $("link").className = "link down";
  };
}
connect();
