// The client's dashboard: its tunnel(s) with their services, its forwards and proxies, its
// visitors (and other clients' direct visitors of its private services), and its health checks. `common.js` logs in and calls `start()`, then the function it returns every
// two seconds.
"use strict";

function start() {
  const section = (id, title) => el("section", { id }, el("h2", {}, title), el("div", { class: "body" }));
  fill("#main", section("tunnels", "Tunnels"), section("listeners", "Forwards and proxies"),
    section("visitors", "Visitors"), section("checks", "Health checks"));
  return async () => {
    const status = await api("/status");
    tunnels(status.servers);
    listeners(status.listeners);
    visitors(status.visitors, status.direct_visitors);
    checks(status.health_checks);
  };
}

function reachedBy(s) {
  const names = [...(s.domains || []), ...(s.subdomain ? [`${s.subdomain}.*`] : [])];
  if (names.length) return `${names.join(" ")} ${(s.locations || []).join(" ")}`.trim();
  return s.port ? `port ${s.port}` : "";
}

function tunnels(list) {
  fill("#tunnels .body", list.map((t) => el("div", { class: "tunnel", "data-server": t.server || "" },
    el("h3", {}, t.server || "(failover list)", " · ", el("span", { class: t.state }, t.state)),
    el("p", { class: "muted" },
      [t.transport, t.rtt_ms == null ? null : `RTT ${t.rtt_ms.toFixed(1)} ms`, t.last_error].filter(Boolean).join(" · ")),
    t.services.length ? table(["Service", "Outcome", "Reached by"], t.services.map((s) => [s.name,
      el("span", { class: ["ok", "joined", "private"].includes(s.outcome) ? "ok" : "refused" }, s.outcome), reachedBy(s)]),
    (i) => ({ "data-service": t.services[i].name })) : null)));
}

function listeners(list) {
  if (!list.length) return fill("#listeners .body", el("p", { class: "muted" }, "None configured."));
  fill("#listeners .body", table(["Role", "Kind", "Listens on", "To", "Connections", "Open", "In / out", "Refused"],
    list.map((l) => [l.role, l.kind, l.listen, l.to, l.connections, l.active, `${bytes(l.bytes_in)} / ${bytes(l.bytes_out)}`,
      Object.entries(l.refused).map(([why, n]) => `${why}: ${n}`).join(", ") || "–"])));
}

function visitors(mine, theirs) {
  const rtt = (ms) => (ms == null ? "–" : `${ms.toFixed(1)} ms`);
  const parts = [];
  if (mine.length) {
    parts.push(table(["Visitor", "To", "Mode", "Path", "RTT", "Connections", "In / out", "Last direct attempt"],
      mine.map((v) => [v.name, v.to, v.mode, el("span", { class: v.path === "none" ? "error" : "ok" }, v.path), rtt(v.rtt_ms),
        v.connections, `${bytes(v.bytes_in)} / ${bytes(v.bytes_out)}`, v.last_error || "–"]),
      (i) => ({ "data-visitor": mine[i].name })));
  }
  if (theirs.length) {
    parts.push(el("h3", {}, "Direct visitors of this client's private services"),
      table(["Visitor", "Service", "From", "RTT"], theirs.map((v) => [v.visitor, v.service, v.peer, rtt(v.rtt_ms)])));
  }
  if (!parts.length) parts.push(el("p", { class: "muted" }, "None configured."));
  fill("#visitors .body", ...parts);
}

function checks(list) {
  if (!list.length) return fill("#checks .body", el("p", { class: "muted" }, "No grouped service has a health check."));
  fill("#checks .body", table(["Service", "Checks", "Last result", "Took", "Checks run"],
    list.map((c) => [c.service, c.addr, el("span", { class: c.ok ? "ok" : "error" }, c.ok ? "passed" : `failed: ${c.error}`),
      `${c.latency_ms.toFixed(1)} ms`, c.checks])));
}
