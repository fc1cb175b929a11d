// What the server's and the client's dashboards share: the login, API calls, polling, and
// small helpers to build tables and the traffic chart. No library; the end's own script
// (/ui/page.js) defines `start()`, which builds its sections and returns the function that
// refreshes them.
"use strict";

const TOKEN_KEY = "wmproxy-token";
const POLL_MS = 2000;
const SVG = "http://www.w3.org/2000/svg";
const COLORS = ["#0969da", "#cf222e", "#1a7f37", "#9a6700", "#8250df", "#bf3989", "#1b7c83", "#6e7781"];

const $ = (selector) => document.querySelector(selector);

// An element: el("td", { class: "ok", "data-x": "y", onclick: f }, "text", child, …).
function el(tag, attrs, ...children) {
  const node = tag.startsWith("svg:") ? document.createElementNS(SVG, tag.slice(4)) : document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (value !== undefined && value !== null && value !== false) node.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat(Infinity)) {
    if (child !== undefined && child !== null) node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

// A table: headers, and rows of cells (a cell is text, a node, or an array of them).
function table(headers, rows, rowAttrs = () => ({})) {
  return el("table", {},
    el("thead", {}, el("tr", {}, headers.map((h) => el("th", {}, h)))),
    el("tbody", {}, rows.map((cells, i) => el("tr", rowAttrs(i), cells.map((c) => el("td", {}, c))))));
}

function bytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  for (; n >= 1024 && i < units.length - 1; i++) n /= 1024;
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

const rate = (bytesPerSecond) => `${bytes(bytesPerSecond)}/s`;

function duration(seconds) {
  const parts = [[86400, "d"], [3600, "h"], [60, "m"]].filter(([s]) => seconds >= s);
  if (!parts.length) return `${Math.floor(seconds)}s`;
  const [[s, unit], next] = parts;
  const rest = next ? ` ${Math.floor((seconds % s) / next[0])}${next[1]}` : "";
  return `${Math.floor(seconds / s)}${unit}${rest}`;
}

const since = (unixSeconds) => duration(Date.now() / 1000 - unixSeconds);

// Replaces the children of `selector` with `nodes`.
function fill(selector, ...nodes) {
  $(selector).replaceChildren(...nodes.flat());
}

// A line chart of `series` ([{ name, points: [[unixMs, value], …] }]) over the last `spanMs`.
// The container's data-latest is the newest value of the first series (tests read it).
function chart(selector, series, spanMs, format) {
  const [width, height, left, bottom] = [800, 220, 70, 20];
  const now = Date.now();
  // At least 1 KiB/s high, so that an idle chart's scale reads sensibly.
  const max = Math.max(1024, ...series.flatMap((s) => s.points.map(([, v]) => v)));
  const x = (t) => left + ((t - (now - spanMs)) / spanMs) * (width - left);
  const y = (v) => height - bottom - (v / max) * (height - bottom - 10);
  const svg = el("svg:svg", { viewBox: `0 0 ${width} ${height}`, role: "img" },
    [0, 0.5, 1].map((f) => [
      el("svg:line", { class: "grid", x1: left, x2: width, y1: y(max * f), y2: y(max * f) }),
      el("svg:text", { class: "axis", x: 2, y: y(max * f) + 4 }, format(max * f)),
    ]),
    el("svg:text", { class: "axis", x: left, y: height - 4 }, `-${Math.round(spanMs / 60000)} min`),
    el("svg:text", { class: "axis", x: width - 30, y: height - 4 }, "now"),
    series.map((s, i) => el("svg:polyline", {
      fill: "none", stroke: COLORS[i % COLORS.length], "stroke-width": 2, "data-series": s.name,
      points: s.points.map(([t, v]) => `${x(t).toFixed(1)},${y(v).toFixed(1)}`).join(" "),
    })));
  const legend = el("div", { class: "legend" }, series.map((s, i) => el("span", {},
    el("svg:svg", { width: 10, height: 10 }, el("svg:rect", { width: 10, height: 10, fill: COLORS[i % COLORS.length] })),
    ` ${s.name}`)));
  const latest = series[0]?.points.at(-1)?.[1] ?? 0;
  $(selector).dataset.latest = String(latest);
  fill(selector, svg, legend);
}

class Unauthorized extends Error {}

// One control API call with the token; a refused token ends the session.
async function api(path, method = "GET") {
  const token = sessionStorage.getItem(TOKEN_KEY) || "";
  const response = await fetch(path, { method, headers: { Authorization: `Bearer ${token}` }, cache: "no-store" });
  if (response.status === 401) throw new Unauthorized();
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
  return body;
}

let session = 0;

function showLogin(message) {
  session += 1;
  sessionStorage.removeItem(TOKEN_KEY);
  $("#main").hidden = true;
  $("#logout").hidden = true;
  $("#login").hidden = false;
  $("#login-error").textContent = message || "";
  $("#token").focus();
}

// Builds the page and refreshes it every POLL_MS until the token is refused or the user logs out.
async function run() {
  const mine = ++session;
  $("#login").hidden = true;
  $("#main").hidden = false;
  $("#logout").hidden = false;
  const refresh = start();
  while (mine === session) {
    try {
      await refresh();
      $("#updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
      $("#updated").classList.remove("error");
    } catch (e) {
      if (e instanceof Unauthorized) return showLogin("The token was refused.");
      $("#updated").textContent = `cannot reach the API: ${e.message}`;
      $("#updated").classList.add("error");
    }
    await new Promise((resolve) => setTimeout(resolve, POLL_MS));
  }
}

window.addEventListener("DOMContentLoaded", () => {
  $("#login").addEventListener("submit", async (event) => {
    event.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("#token").value);
    $("#token").value = "";
    try {
      await api("/status");
    } catch (e) {
      return showLogin(e instanceof Unauthorized ? "Wrong token." : `Cannot reach the API: ${e.message}`);
    }
    run();
  });
  $("#logout").addEventListener("click", () => showLogin(""));
  if (sessionStorage.getItem(TOKEN_KEY)) run(); else showLogin("");
});
