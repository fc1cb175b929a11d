// The server's dashboard: overview, clients, groups (with drain buttons), the traffic chart
// and recent events. `common.js` logs in and calls `start()`, then the function it returns
// every two seconds.
"use strict";

const SPAN_MS = 15 * 60 * 1000;

function start() {
  const section = (id, title, ...body) => el("section", { id }, el("h2", {}, title), ...body);
  fill("#main",
    section("overview", "Overview", el("dl", { class: "overview" })),
    section("clients", "Clients", el("div", { class: "body" })),
    section("groups", "Groups", el("div", { class: "body" })),
    section("traffic", "Traffic, last 15 minutes", el("div", { class: "chart" })),
    section("events", "Events", el("ol", { class: "events" })));
  return async () => {
    const [status, history, events] = await Promise.all([api("/status"), api("/history"), api("/events")]);
    overview(status.overview);
    clients(status.clients, history.samples.at(-1));
    groups(status.groups);
    traffic(history.samples);
    eventList(events.events);
  };
}

function overview(o) {
  const items = [
    ["Version", o.version], ["Uptime", duration(o.uptime_secs)], ["Tunnels", o.tunnels],
    ["Connections", o.streams], ["UDP flows", o.udp_flows], ["Traffic in", bytes(o.bytes_in)],
    ["Traffic out", bytes(o.bytes_out)], ["Reloads", `${o.reloads} (${o.reload_failures} refused)`],
  ];
  fill("#overview dl", items.map(([name, value]) => el("div", { "data-item": name }, el("dt", {}, name), el("dd", {}, value))));
}

// What a service is reached by: its port, or its host names and paths.
function reachedBy(s) {
  const names = [...(s.domains || []), ...(s.subdomain ? [`${s.subdomain}.*`] : [])];
  const paths = (s.locations || []).join(" ");
  if (names.length) return `${names.join(" ")}${paths ? ` ${paths}` : ""}`;
  return s.port ? `port ${s.port}` : "";
}

function clients(list, latest) {
  if (!list.length) return fill("#clients .body", el("p", { class: "muted" }, "No client is connected."));
  const rates = new Map((latest?.services || []).map((r) => [`${r.client}/${r.service}`, r]));
  const services = (c) => table(["Service", "Outcome", "Reached by", "Open", "Rate in / out"],
    c.services.map((s) => {
      const r = rates.get(`${c.name}/${s.name}`);
      return [s.name, el("span", { class: ["ok", "joined", "private"].includes(s.outcome) ? "ok" : "refused" }, s.outcome),
        reachedBy(s), s.active, r ? `${rate(r.in_bps)} / ${rate(r.out_bps)}` : "–"];
    }),
    (i) => ({ "data-service": `${c.name}/${c.services[i].name}` }));
  fill("#clients .body", list.map((c) => el("div", { class: "client", "data-client": c.name },
    el("h3", {}, c.name),
    el("p", { class: "muted" }, `${c.address} · ${c.transport} · connected ${since(c.connected_since)} ago · RTT ${c.rtt_ms.toFixed(1)} ms`),
    services(c))));
}

function lastCheck(h) {
  if (!h.checks) return "none yet";
  const latency = h.last_latency_ms == null ? "" : ` in ${h.last_latency_ms.toFixed(1)} ms`;
  return h.ok_streak > 0 ? `passed${latency}` : `failed${latency}`;
}

async function setDrained(backend, drained) {
  await api(`/backends/${backend}/${drained ? "drain" : "undrain"}`, "POST");
}

function groups(list) {
  if (!list.length) return fill("#groups .body", el("p", { class: "muted" }, "No group is configured."));
  fill("#groups .body", list.map((g) => el("div", { class: "group", "data-group": g.name },
    el("h3", {}, `${g.name} · ${reachedBy(g)}`),
    g.backends.length ? table(["Backend", "Weight", "Health", "Last check", "Open", "Drained", ""],
      g.backends.map((b) => {
        const name = `${b.client}:${b.service}`;
        return [name, b.weight, el("span", { class: `health ${b.health.state}` }, b.health.state.replace("_", " ")),
          lastCheck(b.health), b.active, el("span", { class: b.drained ? "drained" : "" }, b.drained ? "yes" : "no"),
          el("button", { type: "button", class: b.drained ? "undrain" : "drain",
            onclick: (e) => { e.target.disabled = true; setDrained(name, !b.drained).catch((err) => alert(err.message)); } },
          b.drained ? "Undrain" : "Drain")];
      }),
      (i) => ({ "data-backend": `${g.backends[i].client}:${g.backends[i].service}` }))
      : el("p", { class: "muted" }, "No backend has joined."))));
}

function traffic(samples) {
  const total = { name: "all services (in + out)", points: samples.map((s) => [s.at_ms, s.in_bps + s.out_bps]) };
  const names = [...new Set(samples.flatMap((s) => s.services.map((r) => `${r.client}/${r.service}`)))].slice(0, 7);
  const series = names.map((name) => ({
    name,
    points: samples.map((s) => {
      const r = s.services.find((r) => `${r.client}/${r.service}` === name);
      return [s.at_ms, r ? r.in_bps + r.out_bps : 0];
    }),
  }));
  chart("#traffic .chart", [total, ...series], SPAN_MS, rate);
}

function eventList(events) {
  fill("#events ol", events.slice().reverse().map((e) => el("li", { class: e.kind, "data-kind": e.kind },
    el("time", {}, new Date(e.at_ms).toLocaleTimeString()),
    `${e.text}${e.count > 1 ? ` (×${e.count})` : ""}`)));
}
