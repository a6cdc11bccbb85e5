// Squall dashboard: a campaign list and a live campaign page over the JSON
// API. No framework and no build step: the binary embeds this file.
"use strict";

const app = document.getElementById("app");
let token = localStorage.getItem("squall-token") || "";
let role = null;
let live = null; // AbortController of the open live stream

const fmt = (n) => (n ?? 0).toLocaleString("en-US");
const pct = (r) => ((r ?? 0) * 100).toFixed(1) + "%";
const esc = (s) => String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);

async function api(path, opts = {}) {
  const headers = Object.assign({ "Content-Type": "application/json" }, opts.headers || {});
  if (token) headers.Authorization = "Bearer " + token;
  const r = await fetch(path, Object.assign({}, opts, { headers }));
  if (r.status === 401) { showLogin(); throw new Error("unauthorised"); }
  return r;
}

function showLogin(message) {
  if (live) live.abort();
  app.replaceChildren(document.getElementById("login").content.cloneNode(true));
  document.getElementById("login-error").textContent = message || "";
  document.getElementById("login-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    token = document.getElementById("token").value.trim();
    localStorage.setItem("squall-token", token);
    await start();
  });
}

document.getElementById("signout").addEventListener("click", () => {
  localStorage.removeItem("squall-token");
  token = "";
  showLogin();
});

async function start() {
  const r = await api("/api/me");
  if (!r.ok) return showLogin("That token was not accepted.");
  role = (await r.json()).role;
  document.getElementById("role").textContent = "signed in as " + role;
  document.getElementById("signout").hidden = !token;
  route();
}

window.addEventListener("hashchange", () => route());

function route() {
  if (live) { live.abort(); live = null; }
  const m = location.hash.match(/^#\/c\/(.+)$/);
  if (m) campaignPage(decodeURIComponent(m[1]));
  else listPage();
}

async function listPage() {
  const render = async () => {
    if (location.hash.startsWith("#/c/")) return;
    const r = await api("/api/campaigns");
    const { campaigns } = await r.json();
    const rows = campaigns.map((c) => {
      const state = c.controls.find((x) => x.state === "cancelled" && !x.scope.segment && !x.scope.variant) ? "cancelled"
        : c.controls.find((x) => x.state === "paused" && !x.scope.segment && !x.scope.variant) ? "paused"
        : c.intake_finished ? "sending" : "launching";
      return `<tr><td><a href="#/c/${encodeURIComponent(c.id)}">${esc(c.id)}</a></td><td><span class="state ${state}">${state}</span></td>
        <td>${fmt(c.audience)}</td><td>${fmt(c.sent)}</td><td>${fmt(c.failed)}</td></tr>`;
    }).join("");
    app.innerHTML = `<h1>Campaigns</h1><div class="card"><table id="campaigns"><thead><tr><th>Campaign</th><th>State</th><th>Audience</th><th>Sent</th><th>Failed</th></tr></thead>
      <tbody>${rows || '<tr><td colspan="5" class="muted">No campaigns yet: run or launch one.</td></tr>'}</tbody></table></div>`;
  };
  await render();
  const timer = setInterval(() => (location.hash.startsWith("#/c/") ? clearInterval(timer) : render().catch(() => {})), 2000);
}

function campaignState(s) {
  const whole = (st) => s.status.controls.find((c) => c.state === st && !c.scope.segment && !c.scope.variant);
  if (whole("cancelled")) return "cancelled";
  if (whole("paused")) return "paused";
  if (s.status.complete) return "complete";
  return s.status.intake_finished ? "sending" : "launching";
}

const TILES = [
  // "Delivered" counts the providers' delivery receipts (SES through SNS,
  // the generic hook): a message handed to SMTP or the outbox is "Sent".
  ["sent", "Sent", null], ["deliveries", "Delivery receipts", null], ["failed", "Failed", null],
  ["opens", "Opens", "open_rate"], ["clicks", "Clicks", "click_rate"], ["bounces", "Bounces", "bounce_rate"],
  ["complaints", "Complaints", "complaint_rate"], ["unsubscribes", "Unsubscribes", "unsubscribe_rate"],
  ["conversions", "Conversions", "conversion_rate"],
];

function breakdown(title, rows) {
  const body = Object.entries(rows).map(([k, f]) => `<tr data-key="${esc(k)}"><td>${esc(k)}</td><td>${fmt(f.sent)}</td><td>${fmt(f.failed)}</td>
    <td>${fmt(f.opens)} · ${pct(f.open_rate)}</td><td>${fmt(f.clicks)} · ${pct(f.click_rate)}</td><td>${fmt(f.bounces)}</td>
    <td>${fmt(f.complaints)}</td><td>${fmt(f.unsubscribes)}</td><td>${fmt(f.conversions)} · ${pct(f.conversion_rate)}</td></tr>`).join("");
  return `<div class="card"><h2>${title}</h2><table><thead><tr><th></th><th>Sent</th><th>Failed</th><th>Opens</th><th>Clicks</th><th>Bounces</th><th>Complaints</th><th>Unsubs</th><th>Conversions</th></tr></thead>
    <tbody>${body || '<tr><td colspan="9" class="muted">Nothing yet.</td></tr>'}</tbody></table></div>`;
}

// A line chart of messages per second; a chart library would need a build
// step or a vendored bundle for one line on a canvas.
function drawChart(canvas, s) {
  const dpr = window.devicePixelRatio || 1;
  const w = canvas.clientWidth, h = canvas.clientHeight;
  canvas.width = w * dpr; canvas.height = h * dpr;
  const g = canvas.getContext("2d");
  g.scale(dpr, dpr);
  g.clearRect(0, 0, w, h);
  // From the first send (at least a minute), up to the last 15 minutes.
  const bucket = s.bucket_ms, now = Date.now();
  const first = s.series.length ? s.series[0].t - bucket : now;
  const span = Math.min(15 * 60 * 1000, Math.max(60 * 1000, now - first));
  const byT = new Map(s.series.map((p) => [p.t, p.delivered]));
  const pts = [];
  for (let t = Math.floor((now - span) / bucket) * bucket; t <= now; t += bucket) pts.push([t, (byT.get(t) || 0) / (bucket / 1000)]);
  const max = Math.max(1, ...pts.map((p) => p[1]));
  g.strokeStyle = "#e4e7ec"; g.fillStyle = "#667085"; g.font = "11px system-ui";
  for (let i = 0; i <= 4; i++) { const y = 10 + (h - 30) * i / 4; g.beginPath(); g.moveTo(40, y); g.lineTo(w, y); g.stroke(); g.fillText(Math.round(max * (1 - i / 4)), 2, y + 4); }
  g.fillText("messages/s, last " + Math.round(span / 60000) + " min", 44, h - 4);
  g.strokeStyle = "#1d4ed8"; g.lineWidth = 2; g.beginPath();
  pts.forEach(([t, v], i) => { const x = 40 + (w - 40) * (t - (now - span)) / span, y = 10 + (h - 30) * (1 - v / max); i ? g.lineTo(x, y) : g.moveTo(x, y); });
  g.stroke();
}

function controlButtons(id, s) {
  if (role !== "admin") return "";
  const state = campaignState(s);
  if (state === "cancelled" || state === "complete") return "";
  const btn = (action, label, cls, scope) => `<button class="${cls}" data-action="${action}" data-scope='${esc(JSON.stringify(scope || {}))}'>${label}</button>`;
  const main = state === "paused" ? btn("resume", "Resume campaign", "") : btn("pause", "Pause campaign", "secondary");
  const segs = Object.keys(s.by_segment).map((seg) => {
    const paused = s.status.controls.some((c) => c.state === "paused" && c.scope.segment === seg && !c.scope.variant);
    return paused ? btn("resume", "Resume " + esc(seg), "", { segment: seg }) : btn("pause", "Pause " + esc(seg), "secondary", { segment: seg });
  }).join("");
  return `<div class="actions" id="actions">${main}${segs}${btn("cancel", "Cancel campaign", "danger")}</div>`;
}

function renderCampaign(id, s) {
  const state = campaignState(s);
  const tiles = TILES.map(([k, label, rate]) => `<div class="tile" data-k="${k}"><div class="k">${label}</div><div class="v" id="v-${k}">${fmt(s.totals[k])}</div>
    <div class="r">${rate ? pct(s.totals[rate]) : "&nbsp;"}</div></div>`).join("");
  const providers = s.status.providers.map((p) => `<tr><td>${esc(p.provider)}</td><td>${esc(p.breaker)}</td><td>${fmt(p.attempts)}</td><td>${fmt(p.delivered)}</td><td>${fmt(p.transient)}</td><td>${fmt(p.permanent)}</td></tr>`).join("");
  const controls = s.status.controls.map((c) => `<li><span class="state ${c.state}">${c.state}</span> ${esc(c.scope.segment ? "segment " + c.scope.segment + (c.scope.variant ? "/" + c.scope.variant : "") : c.scope.variant ? "variant " + c.scope.variant : "whole campaign")} <span class="muted">by ${esc(c.reason)}</span></li>`).join("");
  app.innerHTML = `<p><a href="#/">← Campaigns</a></p>
    <h1>${esc(id)} <span class="state ${state}" id="state">${state}</span></h1>
    <p class="muted">Audience ${fmt(s.status.audience)} · rejected ${fmt(s.status.rejected)} · in progress ${fmt(s.status.in_progress)} · cancelled ${fmt(s.totals.cancelled)}${s.goal ? " · goal: " + esc(s.goal) : ""}</p>
    ${controlButtons(id, s)}
    <div class="tiles">${tiles}</div>
    <div class="card"><h2>Throughput</h2><canvas id="chart"></canvas></div>
    <div class="row"><div class="card"><h2>Guardrails and controls</h2>${controls ? "<ul>" + controls + "</ul>" : '<p class="muted">No pause or cancel in force.</p>'}
      ${s.status.parked_batches ? '<p class="muted" id="held">' + fmt(s.status.parked_batches) + " batch(es) held in the store (a pause, or not yet in their send window)</p>" : ""}
      ${s.status.waiting ? '<p class="error">' + esc(s.status.waiting) + "</p>" : ""}</div>
    <div class="card"><h2>Providers</h2><table><thead><tr><th>Provider</th><th>Breaker</th><th>Attempts</th><th>Delivered</th><th>Transient</th><th>Permanent</th></tr></thead><tbody>${providers || '<tr><td colspan="6" class="muted">No provider figures (outbox).</td></tr>'}</tbody></table></div></div>
    ${breakdown("By segment", s.by_segment)}${breakdown("By variant", s.by_variant)}${breakdown("By wave", s.by_wave)}
    <p class="muted" id="updated">Updated ${new Date().toLocaleTimeString()}</p>`;
  drawChart(document.getElementById("chart"), s);
  for (const b of app.querySelectorAll("button[data-action]")) {
    b.addEventListener("click", async () => {
      b.disabled = true;
      const r = await api(`/api/campaigns/${encodeURIComponent(id)}/${b.dataset.action}`, { method: "POST", body: b.dataset.scope });
      if (!r.ok) alert((await r.json()).error);
    });
  }
}

// Server-sent events read through fetch, which (unlike EventSource) can
// send the Authorization header.
async function campaignPage(id) {
  app.innerHTML = `<p class="muted">Connecting to ${esc(id)}…</p>`;
  const controller = new AbortController();
  live = controller;
  while (!controller.signal.aborted) {
    try {
      const r = await api(`/api/campaigns/${encodeURIComponent(id)}/live`, { signal: controller.signal, headers: { Accept: "text/event-stream" } });
      if (!r.ok) { app.innerHTML = `<p class="error">${esc((await r.json()).error)}</p>`; return; }
      const reader = r.body.getReader();
      const decoder = new TextDecoder();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += decoder.decode(value, { stream: true });
        let i;
        while ((i = buf.indexOf("\n\n")) >= 0) {
          const frame = buf.slice(0, i); buf = buf.slice(i + 2);
          const event = (frame.match(/^event: (.*)$/m) || [])[1];
          const data = frame.split("\n").filter((l) => l.startsWith("data: ")).map((l) => l.slice(6)).join("\n");
          if (event === "stats") renderCampaign(id, JSON.parse(data));
        }
      }
    } catch (e) {
      if (controller.signal.aborted) return;
    }
    await new Promise((res) => setTimeout(res, 1000)); // reconnect
  }
}

start().catch(() => {});
