// taskmesh dashboard: fills each page from its /api/... JSON endpoint and keeps it live by
// polling it every second. Data reaches the page only as text (textContent, text nodes,
// attributes set one by one): never as HTML.
"use strict";

(function () {
  const POLL_MS = 1000;
  const SVG = "http://www.w3.org/2000/svg";
  const body = document.body;

  // An element with attributes (`class`, `href`, `title`, data-*) and children: strings
  // become text nodes.
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value !== null && value !== undefined && value !== false) node.setAttribute(key, String(value));
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function svg(tag, attrs, text) {
    const node = document.createElementNS(SVG, tag);
    for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, String(value));
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function setLive(ok, text) {
    const live = document.getElementById("live");
    if (!live) return;
    live.className = "live " + (ok ? "ok" : "bad");
    live.textContent = text;
  }

  // Fetch url() every POLL_MS and hand each answer's text to handle(text, url).
  function every(url, handle, what) {
    async function tick() {
      const target = url();
      try {
        const response = await fetch(target, {credentials: "same-origin", cache: "no-store"});
        if (response.ok) {
          handle(await response.text(), target);
          setLive(true, what + " · " + new Date().toLocaleTimeString());
        } else {
          setLive(false, "HTTP " + response.status);
        }
      } catch (e) {
        setLive(false, "cannot reach the dashboard");
      }
      setTimeout(tick, POLL_MS);
    }
    tick();
  }

  // Call render(data) with url()'s answer each time it changed.
  function poll(url, render) {
    let last = null;
    let lastUrl = null;
    every(url, (text, target) => {
      if (text === last && target === lastUrl) return;
      last = text;
      lastUrl = target;
      render(JSON.parse(text));
    }, "live");
  }

  // ---- formatting ------------------------------------------------------------------------

  function bytes(n) {
    n = Number(n || 0);
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return (i ? n.toFixed(1) : String(n)) + " " + units[i];
  }

  function amount(name, value) {
    return name === "memory" ? bytes(value) : String(Math.round(value * 100) / 100);
  }

  function when(ms) {
    if (!ms) return "";
    return new Date(Number(ms)).toLocaleString();
  }

  function duration(startMs, endMs) {
    if (!startMs) return "";
    const ms = (endMs ? Number(endMs) : Date.now()) - Number(startMs);
    if (ms < 1000) return ms + " ms";
    if (ms < 120000) return (ms / 1000).toFixed(1) + " s";
    return Math.round(ms / 60000) + " min";
  }

  function state(value) {
    return el("span", {class: "state " + String(value || "").replace(/[^A-Z_]/g, "")}, value || "");
  }

  function meter(name, used, total, format) {
    const show = format || ((v) => amount(name, v));
    const share = total > 0 ? Math.min(used / total, 1) : 0;
    const fill = el("div", {class: "fill"});
    fill.style.width = (share * 100).toFixed(1) + "%";
    return el("div", {class: "meter"}, el("span", {class: "name"}, name),
              el("div", {class: "track"}, fill),
              el("span", {class: "text"}, show(used) + " / " + show(total)));
  }

  function short(id) {
    return el("span", {class: "mono", title: id}, String(id || "").slice(0, 24));
  }

  // ---- tables --------------------------------------------------------------------------------

  // columns: [[header, row => text or Node, "num"?], ...]; after(row) may add rows below one.
  function fill(id, columns, rows, empty, after) {
    const table = document.getElementById(id);
    const head = table.tHead;
    if (!head.rows.length) {
      head.append(el("tr", {}, ...columns.map(([title, , kind]) => el("th", {class: kind || null}, title))));
    }
    const tbody = el("tbody");
    for (const row of rows) {
      tbody.append(el("tr", {}, ...columns.map(([, cell, kind]) => el("td", {class: kind || null}, cell(row)))));
      if (after) for (const extra of after(row)) tbody.append(extra);
    }
    if (!rows.length) tbody.append(el("tr", {}, el("td", {class: "empty", colspan: columns.length}, empty || "none")));
    table.tBodies[0].replaceWith(tbody);
  }

  // ---- pages -----------------------------------------------------------------------------

  function clusterPage() {
    poll(() => "/api/cluster", (data) => {
      const alive = data.nodes.filter((n) => n.state === "ALIVE").length;
      document.getElementById("nodes-alive").textContent = alive + " / " + data.nodes.length;
      const queued = data.queues.reduce((s, q) => s + q.queued, 0) + data.pinned_queues.reduce((s, q) => s + q.queued, 0);
      const running = data.queues.reduce((s, q) => s + q.running, 0) + data.pinned_queues.reduce((s, q) => s + q.running, 0);
      document.getElementById("tasks-queued").textContent = queued;
      document.getElementById("tasks-running").textContent = running;
      document.getElementById("dead-letters").textContent = data.dead_letters;
      document.getElementById("resources").replaceChildren(...data.resources.map((r) => meter(r.name, r.used, r.total)));
      fill("nodes", [
        ["Node", (n) => short(n.node_id)],
        ["State", (n) => state(n.state)],
        ["IP", (n) => n.ip],
        ["Host", (n) => n.hostname],
        ["Heartbeat", (n) => n.heartbeat_age_s === null ? "–" : n.heartbeat_age_s + " s ago"],
        ["Resources used / total", (n) => el("div", {}, ...n.resources.map((r) => meter(r.name, r.used, r.total)))],
        ["Object store", (n) => meter("used", n.store_used, n.store_capacity, bytes)],
        ["Objects", (n) => n.store_objects, "num"],
        ["Spilled", (n) => bytes(n.store_spilled) + " (" + n.store_spilled_objects + ")", "num"],
      ], data.nodes, "no node has registered");
      const queueColumns = [["Queue", (q) => q.queue], ["Queued", (q) => q.queued, "num"], ["Running", (q) => q.running, "num"]];
      fill("queues", queueColumns, data.queues, "no task has been submitted yet");
      fill("pinned", queueColumns, data.pinned_queues, "no node or bundle queue");
    });
  }

  function counts(tasks) {
    const parts = Object.entries(tasks || {}).sort().map(([s, n]) => s.replace("PENDING_NODE_ASSIGNMENT", "PENDING") + " " + n);
    return parts.join(", ") || "–";
  }

  function jobsPage() {
    poll(() => "/api/jobs", (data) => {
      fill("jobs", [
        ["Job", (j) => el("a", {href: "/jobs/" + encodeURIComponent(j.job_id), class: "mono"}, j.job_id)],
        ["State", (j) => state(j.state)],
        ["Namespace", (j) => j.namespace],
        ["Driver", (j) => (j.host || "") + (j.driver_pid ? " pid " + j.driver_pid : "")],
        ["Started", (j) => when(j.start_ms)],
        ["Duration", (j) => duration(j.start_ms, j.end_ms)],
        ["Tasks", (j) => counts(j.tasks)],
        ["", (j) => el("span", {}, el("a", {href: "/logs?job=" + encodeURIComponent(j.job_id)}, "logs"), " · ",
                       el("a", {href: "/jobs/" + encodeURIComponent(j.job_id) + "/timeline"}, "timeline"))],
      ], data.jobs, "no job yet");
      fill("submitted", [
        ["Submission", (s) => s.submission_id],
        ["Status", (s) => state(s.status)],
        ["Entrypoint", (s) => el("span", {class: "mono"}, s.entrypoint || "")],
        ["Job", (s) => s.job_id ? el("a", {href: "/jobs/" + encodeURIComponent(s.job_id)}, s.job_id) : ""],
        ["Started", (s) => when(s.start_time)],
        ["Message", (s) => s.message || ""],
      ], data.submitted, "no job submitted with 'taskmesh job submit'");
    });
  }

  function setOptions(select, values) {
    const chosen = select.value;
    const wanted = ["", ...values];
    const have = Array.from(select.options).map((o) => o.value);
    if (JSON.stringify(have) === JSON.stringify(wanted)) return;
    select.replaceChildren(el("option", {value: ""}, "any"), ...values.map((v) => el("option", {value: v}, v)));
    select.value = chosen;
  }

  function jobPage() {
    const job = body.dataset.job;
    const form = document.getElementById("task-filters");
    const closed = new Set();  // tracebacks the reader folded
    const url = () => {
      const params = new URLSearchParams();
      for (const name of ["state", "name", "node"]) {
        const value = form.elements[name].value;
        if (value) params.set(name, value);
      }
      return "/api/jobs/" + encodeURIComponent(job) + (params.toString() ? "?" + params : "");
    };
    poll(url, (data) => {
      if (data.error) { document.getElementById("job-state").textContent = data.error; return; }
      const info = data.job;
      const state_ = document.getElementById("job-state");
      state_.className = "state " + info.state;
      state_.textContent = info.state;
      const dl = document.getElementById("job-info");
      const facts = [["Namespace", info.namespace], ["Driver", (info.host || "") + " pid " + (info.driver_pid || "?")],
                     ["Started", when(info.start_ms)], ["Ended", when(info.end_ms) || "–"],
                     ["Duration", duration(info.start_ms, info.end_ms)]];
      if (info.entrypoint) facts.push(["Entrypoint", info.entrypoint]);
      dl.replaceChildren(...facts.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
      setOptions(form.elements.name, data.task_names);
      setOptions(form.elements.node, data.task_nodes);
      document.getElementById("task-count").textContent =
        "(" + data.tasks_matching + (data.tasks_matching > data.tasks.length ? ", the newest " + data.tasks.length + " shown" : "") + ")";
      const taskColumns = [
        ["Task", (t) => short(t.task_id)],
        ["Attempt", (t) => t.attempt_number, "num"],
        ["Name", (t) => t.name],
        ["State", (t) => state(t.state)],
        ["Type", (t) => t.type],
        ["Node", (t) => short(t.node_id)],
        ["Worker pid", (t) => t.worker_pid, "num"],
        ["Duration", (t) => t.start_time_ms ? duration(t.start_time_ms, t.end_time_ms) : "", "num"],
        ["Error", (t) => t.error_type],
      ];
      fill("tasks", taskColumns, data.tasks, "no task matches", (t) => {
        if (!t.error_message) return [];
        const key = t.task_id + ":" + t.attempt_number;
        const details = el("details", {open: !closed.has(key)}, el("summary", {}, "traceback"),
                           el("pre", {class: "traceback"}, t.error_message));
        details.addEventListener("toggle", () => details.open ? closed.delete(key) : closed.add(key));
        return [el("tr", {class: "tb"}, el("td", {colspan: taskColumns.length}, details))];
      });
      fill("actors", [
        ["Actor", (a) => short(a.actor_id)],
        ["Class", (a) => a.class_name],
        ["Name", (a) => a.name],
        ["State", (a) => state(a.state)],
        ["Node", (a) => short(a.node_id)],
        ["Pid", (a) => a.pid, "num"],
        ["Restarts", (a) => a.restarts + (a.max_restarts && a.max_restarts !== "0" ? " / " + a.max_restarts : ""), "num"],
        ["Death cause", (a) => a.death_cause],
        ["", (a) => el("a", {href: "/logs?job=" + encodeURIComponent(job) + "&actor=" + encodeURIComponent(a.actor_id)}, "logs")],
      ], data.actors, "no actor");
      fill("pgs", [
        ["Placement group", (g) => short(g.pg_id)],
        ["Name", (g) => g.name],
        ["Strategy", (g) => g.strategy],
        ["State", (g) => state(g.state)],
        ["Bundles (resources → node)", (g) => el("div", {}, ...g.bundles.map((b) => el("div", {class: "mono"},
          "#" + b.index + " " + Object.entries(b.resources).map(([k, v]) => k + "=" + v).join(", ") + " → " + (b.node_id ? b.node_id.slice(0, 12) : "not placed"))))],
      ], data.placement_groups, "no placement group");
      fill("objects", [
        ["Object", (o) => short(o.object_id)],
        ["Kind", (o) => o.kind],
        ["Size", (o) => bytes(o.size), "num"],
        ["Nodes", (o) => o.nodes.map((n) => n.slice(0, 12)).join(", ")],
        ["Holders", (o) => o.holders.join(", ")],
      ], data.objects, "no object held");
    });
  }

  function logsPage() {
    const job = body.dataset.job;
    const actor = body.dataset.actor;
    const pre = document.getElementById("log");
    const follow = document.getElementById("follow");
    const picker = document.getElementById("log-job");
    fetch("/api/jobs", {credentials: "same-origin"}).then((r) => r.json()).then((data) => {
      const ids = data.jobs.map((j) => j.job_id);
      picker.replaceChildren(...(job ? [] : [el("option", {value: ""}, "choose a job")]),
                             ...ids.map((id) => el("option", {value: id}, id)));
      picker.value = job || "";
    }).catch(() => {});
    if (!job) { pre.textContent = "Choose a job to follow its workers' output."; return; }
    let after = "";
    const url = () => {
      const params = new URLSearchParams({job: job});
      if (actor) params.set("actor", actor);
      if (after) params.set("after", after);
      return "/api/logs?" + params;
    };
    every(url, (text) => {
      const data = JSON.parse(text);
      const atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
      for (const l of data.lines) {
        pre.append(el("div", {class: l.stream === "stderr" ? "stderr" : null},
                      el("span", {class: "who"}, "(" + l.name + " pid=" + l.pid + ") "), l.line));
      }
      if (data.after) after = data.after;
      if (data.lines.length && follow.checked && atBottom) pre.scrollTop = pre.scrollHeight;
    }, "following");
  }

  function timelinePage() {
    const job = body.dataset.job;
    const chart = document.getElementById("timeline");
    poll(() => "/api/jobs/" + encodeURIComponent(job) + "/timeline", (data) => {
      const bars = data.bars;
      document.getElementById("timeline-empty").textContent = bars.length ? "" : "No task of this job has run to its end yet.";
      const lanes = [...new Set(bars.map((b) => b.node + " · " + b.worker))].sort();
      const longest = Math.max(0, ...lanes.map((l) => l.length));
      const label = Math.max(120, longest * 6.4 + 20), row = 24, top = 28;
      const width = Math.max(chart.parentNode.clientWidth - 2, 600);
      const start = Math.min(...bars.map((b) => b.start_us));
      const end = Math.max(...bars.map((b) => b.start_us + b.dur_us));
      const span = Math.max(end - start, 1);
      const x = (us) => label + (us - start) / span * (width - label - 16);
      const height = top + lanes.length * row + 8;
      chart.setAttribute("height", String(bars.length ? height : 40));
      chart.setAttribute("width", String(width));
      const parts = [];
      if (bars.length) {
        for (let i = 0; i <= 5; i++) {
          const us = start + span * i / 5;
          parts.push(svg("line", {class: "grid", x1: x(us), x2: x(us), y1: top - 6, y2: height}));
          parts.push(svg("text", {x: x(us) + (i === 5 ? -2 : 2), y: 14, "text-anchor": i === 5 ? "end" : "start"},
                         "+" + ((us - start) / 1e6).toFixed(span > 5e6 ? 1 : 3) + " s"));
        }
      }
      lanes.forEach((lane, i) => parts.push(svg("text", {x: 6, y: top + i * row + 16}, lane)));
      for (const b of bars) {
        const lane = lanes.indexOf(b.node + " · " + b.worker);
        const rect = svg("rect", {class: "bar " + (b.state === "FAILED" ? "FAILED" : "FINISHED"),
                                  x: x(b.start_us), y: top + lane * row + 4,
                                  width: Math.max(x(b.start_us + b.dur_us) - x(b.start_us), 2), height: row - 8, rx: 2});
        rect.append(svg("title", {}, b.name + " (" + (b.dur_us / 1000).toFixed(1) + " ms, " + b.state + ") " + b.task_id));
        parts.push(rect);
      }
      chart.replaceChildren(...parts);
    });
  }

  const pages = {cluster: clusterPage, jobs: jobsPage, job: jobPage, logs: logsPage, timeline: timelinePage};
  const start = pages[body.dataset.page];
  if (start) start();
})();
