// The fleet console's page (daydream/runtime/console_web.py serves it).
// Live snapshots arrive as server-sent events from /api/events; the only commands it can
// send are stop, stop all and reset (with the person's name). Everything a robot reports
// is written with textContent, never as markup.
"use strict";

const cards = new Map(); // robot id -> its <article>
let lastSnapshot = null;

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

function clock(epochSeconds) {
  if (!epochSeconds) return "?";
  return new Date(epochSeconds * 1000).toLocaleTimeString();
}

function ago(epochSeconds, now) {
  const s = Math.max(0, now - epochSeconds);
  return s < 90 ? `${s.toFixed(0)} s ago` : `${(s / 60).toFixed(0)} min ago`;
}

function num(x, digits) {
  return x === null || x === undefined ? "–" : Number(x).toFixed(digits);
}

function say(text, bad) {
  const message = document.getElementById("message");
  message.textContent = text;
  message.className = bad ? "bad" : "";
}

function setFigures(dl, rows) {
  dl.replaceChildren();
  for (const [name, value] of rows) {
    dl.append(el("dt", name), el("dd", value));
  }
}

async function post(path, body) {
  const response = await fetch(path, {
    method: "POST",
    credentials: "same-origin",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body || {}),
  });
  let reply = {};
  try {
    reply = await response.json();
  } catch (e) {
    reply = { error: `HTTP ${response.status}` };
  }
  return { status: response.status, reply };
}

// ------------------------------------------------------------------ commands
async function stopRobot(id, card) {
  card.dataset.stopPressedAt = String(performance.timeOrigin + performance.now());
  const t0 = performance.now();
  const { status, reply } = await post(`/api/robots/${encodeURIComponent(id)}/stop`);
  const ms = (performance.now() - t0).toFixed(0);
  if (status === 200 && reply.status && reply.status.stopped) {
    say(`${id}: stop latched (the robot confirmed ${ms} ms after the press)`);
    card.dataset.stopConfirmedMs = ms;
  } else {
    say(`${id}: stop NOT confirmed: ${reply.error || status}; use the robot's own stop`, true);
  }
}

async function resetRobot(id, form) {
  const input = form.querySelector(".reset-name");
  const name = input.value.trim();
  if (!name) {
    say(`${id}: type your name to release the stop`, true);
    input.focus();
    return;
  }
  const { status, reply } = await post(`/api/robots/${encodeURIComponent(id)}/reset`, { name });
  if (status === 200 && reply.status && !reply.status.stopped) {
    say(`${id}: stop released by ${name}`);
    input.value = "";
  } else {
    say(`${id}: not released: ${reply.error || status}`, true);
  }
}

async function stopAll() {
  const { reply } = await post("/api/stop_all");
  const robots = reply.robots || {};
  const failed = Object.keys(robots).filter((id) => !robots[id].ok);
  const missing = reply.without_console || [];
  if (reply.ok) {
    say(`stop all: ${Object.keys(robots).length} robots latched`);
  } else {
    say(`stop all: NOT confirmed by ${[...failed, ...missing].join(", ") || "?"}`, true);
  }
}

// ------------------------------------------------------------------ robots
function makeCard(id) {
  const card = document.getElementById("robot-card").content.firstElementChild.cloneNode(true);
  card.dataset.robot = id;
  card.querySelector(".robot-id").textContent = id;
  card.querySelector("button.stop").addEventListener("click", () => stopRobot(id, card));
  const form = card.querySelector("form.reset");
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    resetRobot(id, form);
  });
  return card;
}

const STATE_TEXT = {
  acting: "acting",
  stopped: "STOPPED",
  overridden: "person overriding",
  disconnected: "disconnected",
};

function updateCard(card, robot, now) {
  const state = card.querySelector(".state");
  state.textContent = STATE_TEXT[robot.state] || robot.state;
  state.className = `state ${robot.state}`;
  card.classList.toggle("is-stopped", robot.stop !== null);
  card.classList.toggle("is-disconnected", robot.state === "disconnected");

  const stopInfo = card.querySelector(".stop-info");
  const lines = [];
  if (robot.stop) {
    const { source, reason, since } = robot.stop;
    const why = reason && reason !== `stop requested by ${source}` ? `: ${reason}` : "";
    lines.push(`latched ${clock(since)} by ${source}${why}`);
  }
  if (robot.state === "disconnected") {
    lines.push(`disconnected since ${clock(robot.last_seen)} (${ago(robot.last_seen, now)})`);
  }
  stopInfo.textContent = lines.join("\n");
  stopInfo.hidden = lines.length === 0;
  card.querySelector("form.reset").hidden = robot.stop === null;

  const version = robot.policy_version === null ? "–" : `v${robot.policy_version}`;
  const returns = robot.returns.slice(-5).map((r) => r.toFixed(1)).join(", ") || "–";
  setFigures(card.querySelector(".figures"), [
    ["ticks", `${num(robot.tick_rate, 1)}/s, p99 ${num(robot.tick_p99_ms, 1)} ms`],
    ["policy", `${version} (newest v${robot.newest_version})`],
    ["outbox", `${num(robot.outbox, 0)} chunks waiting`],
    ["steps", `${num(robot.steps, 0)} in ${num(robot.episodes, 0)} episodes`],
    ["returns", returns],
    ["last fault", robot.last_fault || "none"],
  ]);

  const thumb = card.querySelector(".thumb");
  if (robot.thumbnail && thumb.getAttribute("src") !== robot.thumbnail) {
    thumb.src = robot.thumbnail;
  }
  thumb.hidden = !robot.thumbnail;

  const c = robot.console;
  const info = card.querySelector(".console-info");
  if (c.problem) {
    info.textContent = `stop button cannot reach it: ${c.problem}`;
    info.className = "console-info bad";
  } else {
    const reach = c.reachable === null ? "not asked yet" : c.reachable ? "answers" : "NOT answering";
    info.textContent = `safety console ${c.endpoint}: ${reach}`;
    info.className = c.reachable === false ? "console-info bad" : "console-info";
  }
  card.querySelector("button.stop").disabled = Boolean(c.problem);
}

function renderRobots(snapshot) {
  const fleet = document.getElementById("fleet");
  const seen = new Set();
  for (const robot of snapshot.robots) {
    seen.add(robot.id);
    let card = cards.get(robot.id);
    if (!card) {
      card = makeCard(robot.id);
      cards.set(robot.id, card);
      fleet.append(card);
    }
    updateCard(card, robot, snapshot.time);
  }
  for (const [id, card] of cards) {
    if (!seen.has(id)) {
      card.remove();
      cards.delete(id);
    }
  }
  document.getElementById("no-robots").hidden = snapshot.robots.length > 0;
}

// ------------------------------------------------------------------ learner
function renderLearner(learner) {
  const spi = learner.spi || {};
  const losses = learner.losses || {};
  const phase = spi.phase === "prefill"
    ? `prefilling (${learner.replay_steps} of ${spi.prefill} steps)`
    : `${num(spi.actual, 1)} (target ${num(spi.target, 0)}), ${spi.behind} steps behind`;
  setFigures(document.getElementById("learner-figures"), [
    ["environment steps", learner.env_steps],
    ["updates", `${learner.updates} (${num(learner.updates_per_s, 2)}/s)`],
    ["replay", `${learner.replay_steps} steps`],
    ["samples per insert", `${phase}; throttled ${spi.throttled}`],
    ["losses", Object.entries(losses).map(([k, v]) => `${k} ${num(v, 3)}`).join(", ")],
    ["return (mean of 100)", num(learner.return_mean, 2)],
    ["weights", `v${learner.weights_version}`],
    ["episodes", learner.episodes],
  ]);
  drawCurve(document.getElementById("curve"), learner.curve || []);
}

function drawCurve(canvas, points) {
  const ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height, pad = 40;
  ctx.clearRect(0, 0, w, h);
  ctx.strokeStyle = "#8a8f98";
  ctx.fillStyle = "#c9ccd1";
  ctx.font = "12px sans-serif";
  ctx.strokeRect(pad, 8, w - pad - 8, h - pad);
  if (points.length === 0) {
    ctx.fillText("no episode finished yet", pad + 10, h / 2);
    return;
  }
  const xs = points.map((p) => p[0]), ys = points.map((p) => p[1]);
  const x0 = Math.min(...xs), x1 = Math.max(...xs, x0 + 1);
  let y0 = Math.min(...ys), y1 = Math.max(...ys);
  if (y1 - y0 < 1e-9) { y0 -= 1; y1 += 1; }
  const X = (x) => pad + ((x - x0) / (x1 - x0)) * (w - pad - 8);
  const Y = (y) => 8 + (1 - (y - y0) / (y1 - y0)) * (h - pad);
  ctx.fillText(y1.toFixed(1), 2, 18);
  ctx.fillText(y0.toFixed(1), 2, h - pad + 8);
  ctx.fillText(`${x0}`, pad, h - pad + 24);
  ctx.fillText(`${x1} steps`, w - 90, h - pad + 24);
  ctx.fillStyle = "#5b9bd5";
  for (const [x, y] of points) ctx.fillRect(X(x) - 1, Y(y) - 1, 3, 3);
  ctx.strokeStyle = "#f0a030"; // mean of the last 10 episodes
  ctx.beginPath();
  points.forEach((p, i) => {
    const recent = ys.slice(Math.max(0, i - 9), i + 1);
    const mean = recent.reduce((a, b) => a + b, 0) / recent.length;
    if (i === 0) ctx.moveTo(X(p[0]), Y(mean)); else ctx.lineTo(X(p[0]), Y(mean));
  });
  ctx.stroke();
}

// ------------------------------------------------------------------ live updates
function connect() {
  const live = document.getElementById("live");
  const events = new EventSource("/api/events");
  events.onopen = () => {
    live.textContent = "live";
    live.className = "live on";
  };
  events.onmessage = (event) => {
    lastSnapshot = JSON.parse(event.data);
    renderRobots(lastSnapshot);
    renderLearner(lastSnapshot.learner);
    document.body.dataset.updated = String(lastSnapshot.time);
  };
  events.onerror = () => {
    live.textContent = "reconnecting";
    live.className = "live off";
  };
}

document.getElementById("stop-all").addEventListener("click", stopAll);
connect();
