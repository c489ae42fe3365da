// Mist's dashboard: reads /metrics once a second, draws the last two
// minutes, and keeps a WebSocket open for the console. No libraries: this
// file is served from the binary as it is written here.
"use strict";

(function () {
  const HISTORY = 120; // samples kept, one a second
  const PERIOD_MS = 1000;
  const LISTENER_COLOURS = ["#4fc3f7", "#81c784", "#ffb74d", "#ba68c8", "#e57373", "#fff176"];

  const meta = (name) => {
    const element = document.querySelector(`meta[name="${name}"]`);
    return element ? element.getAttribute("content") : "";
  };
  const token = meta("mist-token");
  const consoleOn = meta("mist-console") === "on";
  const $ = (id) => document.getElementById(id);

  // What the charts draw, exposed read-only for whoever debugs the page.
  const history = { time: [], in: [], out: [], dropped: [], rss: [], queue: [], subscriptions: [], connections: {} };
  let previous = null;
  window.mist = { history };

  // The Prometheus text format, as much of it as this page reads:
  // `name{label="value",...} number` lines; comments skipped.
  function parseMetrics(text) {
    const samples = [];
    for (const line of text.split("\n")) {
      if (line === "" || line.startsWith("#")) continue;
      const match = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)/.exec(line);
      if (!match) continue;
      const labels = {};
      if (match[3]) {
        const pairs = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g;
        let pair;
        while ((pair = pairs.exec(match[3])) !== null) {
          labels[pair[1]] = pair[2].replace(/\\n/g, "\n").replace(/\\"/g, '"').replace(/\\\\/g, "\\");
        }
      }
      samples.push({ name: match[1], labels, value: Number(match[4]) });
    }
    return samples;
  }

  const one = (samples, name) => {
    const sample = samples.find((s) => s.name === name);
    return sample ? sample.value : 0;
  };

  function bytes(n) {
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return `${n.toFixed(i === 0 ? 0 : 1)} ${units[i]}`;
  }

  function rate(n) {
    return n >= 100 ? Math.round(n).toLocaleString() : n.toFixed(1);
  }

  function push(series, value) {
    series.push(value);
    if (series.length > HISTORY) series.shift();
  }

  function record(samples, now) {
    const counters = {
      in: one(samples, "mist_messages_received_total"),
      out: one(samples, "mist_messages_delivered_total"),
      dropped: one(samples, "mist_messages_dropped_total"),
    };
    const rates = { in: 0, out: 0, dropped: 0 };
    if (previous) {
      const seconds = Math.max((now - previous.time) / 1000, 0.001);
      for (const key of Object.keys(rates)) {
        // A restarted server starts its counters again from zero.
        rates[key] = Math.max(counters[key] - previous.counters[key], 0) / seconds;
      }
    }
    previous = { time: now, counters };

    const connections = {};
    for (const s of samples.filter((s) => s.name === "mist_connections")) {
      connections[s.labels.listener || "?"] = s.value;
    }
    const rss = one(samples, "mist_process_resident_memory_bytes");
    const queue = one(samples, "mist_queue_bytes");
    const subscriptions = one(samples, "mist_subscriptions");

    push(history.time, now);
    push(history.in, rates.in);
    push(history.out, rates.out);
    push(history.dropped, rates.dropped);
    push(history.rss, rss);
    push(history.queue, queue);
    push(history.subscriptions, subscriptions);
    const known = new Set([...Object.keys(history.connections), ...Object.keys(connections)]);
    for (const listener of known) {
      if (!history.connections[listener]) {
        history.connections[listener] = new Array(history.time.length - 1).fill(0);
      }
      push(history.connections[listener], connections[listener] || 0);
    }

    const total = Object.values(connections).reduce((a, b) => a + b, 0);
    $("connections").textContent = total.toLocaleString();
    $("by-listener").textContent = Object.entries(connections).map(([l, n]) => `${l} ${n}`).join(" · ");
    $("subscriptions").textContent = subscriptions.toLocaleString();
    $("rate-in").textContent = rate(rates.in);
    $("rate-out").textContent = rate(rates.out);
    $("rate-dropped").textContent = rate(rates.dropped);
    $("memory").textContent = bytes(rss);
    $("queued").textContent = `${bytes(queue)} queued`;
    const version = samples.find((s) => s.name === "mist_build_info");
    if (version) $("version").textContent = `v${version.labels.version}`;
    $("updated").textContent = `updated ${new Date(now).toLocaleTimeString()}`;
  }

  // A line chart of `lines` ([{values, colour}]) on `canvas`, scaled to the
  // largest value shown, with that value written at the top left.
  function draw(canvas, lines, format) {
    const ratio = window.devicePixelRatio || 1;
    const width = canvas.clientWidth || canvas.width;
    const height = canvas.clientHeight || canvas.height;
    if (canvas.width !== Math.round(width * ratio)) {
      canvas.width = Math.round(width * ratio);
      canvas.height = Math.round(height * ratio);
    }
    const g = canvas.getContext("2d");
    g.setTransform(ratio, 0, 0, ratio, 0, 0);
    g.clearRect(0, 0, width, height);
    const max = Math.max(1, ...lines.flatMap((l) => l.values));
    const top = 16, bottom = height - 4;
    g.strokeStyle = "#2c3440";
    g.lineWidth = 1;
    for (const f of [0, 0.5, 1]) {
      const y = bottom - f * (bottom - top);
      g.beginPath(); g.moveTo(0, y); g.lineTo(width, y); g.stroke();
    }
    g.fillStyle = "#8b95a5";
    g.font = "11px system-ui, sans-serif";
    g.fillText(format(max), 4, 11);
    const step = width / (HISTORY - 1);
    for (const line of lines) {
      const offset = HISTORY - line.values.length;
      g.strokeStyle = line.colour;
      g.lineWidth = 2;
      g.beginPath();
      line.values.forEach((v, i) => {
        const x = (offset + i) * step;
        const y = bottom - (v / max) * (bottom - top);
        if (i === 0) g.moveTo(x, y); else g.lineTo(x, y);
      });
      g.stroke();
    }
  }

  function redraw() {
    draw($("chart-messages"), [
      { values: history.in, colour: "#4fc3f7" },
      { values: history.out, colour: "#81c784" },
      { values: history.dropped, colour: "#e57373" },
    ], rate);
    const listeners = Object.keys(history.connections).sort();
    draw($("chart-connections"), listeners.map((l, i) => ({
      values: history.connections[l], colour: LISTENER_COLOURS[i % LISTENER_COLOURS.length],
    })), (n) => Math.round(n).toString());
    const keys = $("listener-keys");
    keys.replaceChildren(...listeners.map((l, i) => {
      const key = document.createElement("span");
      key.className = "key";
      key.style.color = LISTENER_COLOURS[i % LISTENER_COLOURS.length];
      key.textContent = `${l} `;
      return key;
    }));
    draw($("chart-memory"), [
      { values: history.rss, colour: "#ffb74d" },
      { values: history.queue, colour: "#ba68c8" },
    ], bytes);
    draw($("chart-subscriptions"), [{ values: history.subscriptions, colour: "#4fc3f7" }],
      (n) => Math.round(n).toString());
  }

  const authHeaders = token ? { "X-AUTH-TOKEN": token } : {};
  // Absolute URLs from the origin: a page opened as http://user:token@host/
  // may not fetch URLs resolved against its own (credentials and all).
  const here = (path) => new URL(path, location.origin).toString();

  async function poll() {
    try {
      const response = await fetch(here("/metrics"), { headers: authHeaders, cache: "no-store" });
      if (response.ok) {
        record(parseMetrics(await response.text()), Date.now());
        redraw();
      } else {
        $("updated").textContent = `metrics: HTTP ${response.status}`;
      }
    } catch (e) {
      $("updated").textContent = "the server cannot be reached";
    }
    try {
      const response = await fetch(here("/readyz"), { cache: "no-store" });
      const report = await response.json();
      const badge = $("ready");
      badge.textContent = report.ready ? "ready" : `not ready: ${report.not_ready.join(", ")}`;
      badge.className = `badge ${report.ready ? "ok" : "bad"}`;
    } catch (e) {
      $("ready").textContent = "unknown";
      $("ready").className = "badge bad";
    }
  }

  // The console: one WebSocket on this listener, reopened when it closes.
  let socket = null;
  const subscribed = [];

  function log(text, error) {
    const item = document.createElement("li");
    item.textContent = text;
    if (error) item.className = "error";
    const list = $("log");
    list.prepend(item);
    while (list.children.length > 200) list.lastChild.remove();
  }

  const tagsOf = (text) => text.split(",").map((t) => t.trim()).filter((t) => t !== "");

  function connect() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    // No token in the URL: proxies and access logs keep URLs. It goes in
    // the connection's first message, the protocol's own `auth` command
    // (a browser cannot set a header on a WebSocket).
    socket = new WebSocket(`${scheme}//${location.host}/subscribe/websocket`);
    $("ws-state").textContent = "connecting";
    socket.onopen = () => {
      if (token) socket.send(JSON.stringify({ command: "auth", data: token }));
      $("ws-state").textContent = "open";
      $("ws-state").className = "badge ok";
      for (const tags of subscribed) socket.send(JSON.stringify({ command: "subscribe", tags }));
    };
    socket.onmessage = (event) => {
      let message;
      try { message = JSON.parse(event.data); } catch (e) { return; }
      if (message.error) {
        log(`${message.command || "error"}: ${message.error}`, true);
      } else if (message.command === "publish") {
        log(`[${(message.tags || []).join(",")}] ${message.data}`);
      } else if (message.command === "ping") {
        // The barrier after a subscribe: it is live now.
        $("subscribed").textContent = subscribed.map((t) => `[${t.join(",")}]`).join(" ") || "nothing";
      }
    };
    socket.onclose = () => {
      $("ws-state").textContent = "closed";
      $("ws-state").className = "badge bad";
      setTimeout(connect, 2000);
    };
  }

  function send(request) {
    if (!socket || socket.readyState !== WebSocket.OPEN) {
      log("not connected", true);
      return false;
    }
    socket.send(JSON.stringify(request));
    return true;
  }

  function setUpConsole() {
    if (!consoleOn) {
      $("console-off").hidden = false;
      for (const button of document.querySelectorAll(".console button")) button.disabled = true;
      return;
    }
    $("subscribe-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const tags = tagsOf($("subscribe-tags").value);
      if (tags.length === 0) { log("subscribe: give at least one tag", true); return; }
      if (send({ command: "subscribe", tags }) && send({ command: "ping" })) {
        subscribed.push(tags);
      }
    });
    $("publish-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const tags = tagsOf($("publish-tags").value);
      if (tags.length === 0) { log("publish: give at least one tag", true); return; }
      const data = $("publish-data").value;
      if (send({ command: "publish", tags, data })) log(`published [${tags.join(",")}] ${data}`);
    });
    connect();
  }

  setUpConsole();
  poll();
  setInterval(poll, PERIOD_MS);
})();
