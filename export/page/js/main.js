// The web player's UI, the page's counterpart of play/window.py and play/hud.py: it starts the model worker
// (worker.js), turns keys and touches into the action the worker steps with, draws the newest frame on
// requestAnimationFrame scaled up crisply, and shows the HUD strip, the F1 controls overlay, the model card, the
// loading line and any error. `window.reverie` is the same player for scripts, tests and benchmarks.
//
// Address options: ?fps=max (as fast as the model goes) or ?fps=N (default: the game's own speed, model.fps),
// ?start=N, ?seed=N, ?steps=N, ?guidance=X, ?threads=N. ?server=ws://HOST:PORT[&token=T]: play a world on a
// `reverie serve` server instead (js/remote.js stands in for the worker; the server's settings are its own).

import { keyMap, keyName, comboParts } from "./keymap.js";

const STATS_WINDOW = 120;       // recent frames the HUD's numbers are computed over
const HUD_REFRESH_MS = 100;     // the HUD's text changes at most this often (readable, and cheaper)
const TOAST_MS = 2500;
const GUIDANCE_STEP = 0.25;
const GUIDANCE_RANGE = [1.0, 10.0];
const MAX_THREADS = 4;
const DPAD_DEAD_ZONE = 0.25;    // share of the D-pad's radius around its centre that presses nothing
const STEPS_CODES = { Digit1: 1, Digit2: 2, Digit3: 3, Digit4: 4 };
const CONTROLS = [["Enter", "reset the world (next start state, new noise seed)"], ["P", "pause / resume"],
  [".", "one step while paused"], ["1-4", "sampling steps"], ["[ ]", "guidance down / up"],
  ["H", "HUD on / off"], ["F1", "this overlay"], ["Esc", "close it"]];
// D-pad sectors, clockwise from the right (screen y grows downwards), as arrow keys held
const SECTORS = [["ArrowRight"], ["ArrowDown", "ArrowRight"], ["ArrowDown"], ["ArrowDown", "ArrowLeft"],
  ["ArrowLeft"], ["ArrowUp", "ArrowLeft"], ["ArrowUp"], ["ArrowUp", "ArrowRight"]];

const $ = (id) => document.getElementById(id);
const ui = {
  title: $("title"), stage: $("stage"), player: $("player"), screen: $("screen"), canvas: $("frame"),
  status: $("status"), error: $("error"), errorMessage: $("error-message"), hud: $("hud"),
  hudLines: $("hud-lines"), toast: $("toast"), overlay: $("overlay"), controls: $("controls-table"),
  gameKeys: $("game-keys"), card: $("card"), touch: $("touch"), dpad: $("dpad"), buttons: $("touch-buttons"),
};
const context = ui.canvas.getContext("2d");
const pauseButton = document.querySelector("[data-control=pause]");

// ---- state ---------------------------------------------------------------------------------------------------
let worker = null;
let isolated = false;           // cross-origin isolated: WASM threads are allowed
let model = null;               // the parsed model.json, from the worker
let keys = null;                // keyMap(model)
let backend = "";
let remote = null;              // the server's address in server mode (?server=), else null
let knobs = { steps: null, guidance: null, paused: false, start: 0, seed: 0 };
let onScreen = null;            // the frame on the canvas: {rgb: Uint8Array, index}
let pending = null;             // the newest frame received and not drawn yet
let drawScheduled = false;
let errorText = null;
let hudVisible = true;
let hudDrawnAt = -Infinity;
let toast = null;               // {text, until}
let nextId = 1;
const replies = new Map();      // request id -> {resolve, reject}
const stats = { frames: 0, shownAt: [], stepMs: [], rtt: null };   // rtt: {p50, p99} in server mode
// what is held: key code -> button; D-pad pointer -> arrow codes; button pointer -> button; press() names
const held = { keys: new Map(), dpad: new Map(), buttons: new Map(), script: new Set() };
let dpadArrows = {};            // arrow key code -> the button it presses (what the D-pad's directions press)
let lastAction = null;
let image = null;               // the canvas's ImageData, reused for every frame

let resolveReady, rejectReady;
const ready = new Promise((resolve, reject) => { resolveReady = resolve; rejectReady = reject; });
ready.catch(() => {});          // the error box says it; a script awaiting `ready` still gets the rejection

// ---- statistics --------------------------------------------------------------------------------------------------
function percentile(values, q) {
  if (!values.length) return 0;
  const sorted = [...values].sort((a, b) => a - b);
  const at = (sorted.length - 1) * q / 100, lo = Math.floor(at), hi = Math.ceil(at);
  return sorted[lo] + (sorted[hi] - sorted[lo]) * (at - lo);
}

function keepLast(list, value) { list.push(value); if (list.length > STATS_WINDOW) list.shift(); }

/** Do not count the time until the next frame as a frame interval (a pause, a reset). */
function gap() { stats.shownAt.length = 0; }

function summary() {
  const t = stats.shownAt, n = t.length;
  const rtt = stats.rtt ? { rtt_p50_ms: stats.rtt.p50, rtt_p99_ms: stats.rtt.p99 } : {};
  return { frames: stats.frames, fps: n >= 2 ? 1000 * (n - 1) / (t[n - 1] - t[0]) : 0,
           p50_ms: percentile(stats.stepMs, 50), p99_ms: percentile(stats.stepMs, 99), ...rtt };
}

// ---- the worker ----------------------------------------------------------------------------------------------------
function readOptions(search) {
  const params = new URLSearchParams(search);
  const integer = (name, lo, hi) => {
    const text = params.get(name);
    if (text === null) return null;
    const value = Number(text);
    if (!/^\d+$/.test(text.trim()) || value < lo || value > hi) {
      throw new Error(`?${name}=${text} in the address: expected a whole number from ${lo} to ${hi}`);
    }
    return value;
  };
  const fpsText = params.get("fps");
  let fps = null;
  if (fpsText === "max") fps = 0;
  else if (fpsText !== null) {
    fps = Number(fpsText);
    if (!(fps > 0 && fps <= 1000)) throw new Error(`?fps=${fpsText} in the address: expected 'max' or frames per second from 1 to 1000`);
  }
  let guidance = null;
  if (params.get("guidance") !== null) {
    guidance = Number(params.get("guidance"));
    if (!(guidance >= GUIDANCE_RANGE[0] && guidance <= GUIDANCE_RANGE[1])) {
      throw new Error(`?guidance=${params.get("guidance")} in the address: expected a number from ${GUIDANCE_RANGE[0]} to ${GUIDANCE_RANGE[1]}`);
    }
  }
  const server = params.get("server");
  if (server !== null) {
    for (const name of ["fps", "steps", "guidance", "threads"]) {
      if (params.get(name) !== null) throw new Error(`?${name}= in the address: a server world runs with the server's settings; drop ?${name}= or ?server=`);
    }
  }
  const isolated = self.crossOriginIsolated === true;
  const threads = integer("threads", 1, 64) ?? (isolated ? Math.min(MAX_THREADS, navigator.hardwareConcurrency || 1) : 1);
  return { fps, guidance, threads: isolated ? threads : 1, isolated, start: integer("start", 0, 2 ** 31) ?? 0,
           seed: integer("seed", 0, 2 ** 32 - 1) ?? 0, steps: integer("steps", 1, 64), server,
           token: params.get("token") };
}

/** Server mode: js/remote.js in the worker's place, connected to the server named in the address. */
async function startRemote(options) {
  let module;
  try {
    module = await import("./remote.js");
  } catch (e) {
    throw new Error(`js/remote.js could not be loaded (${e.message}); export the page again`);
  }
  remote = module.serverAddress(options.server);
  document.querySelector("#error .hint").textContent = `Reload the page to try again once the server is running, or open the page without ?server= ` +
    "to play the model in this browser.";
  return new module.RemoteWorld(remote, options.token);
}

async function start() {
  let options;
  try {
    options = readOptions(location.search);
    if (options.server !== null) worker = await startRemote(options);
    else if (typeof WebAssembly !== "object" || typeof WebAssembly.instantiate !== "function") {
      throw new Error("this browser has no WebAssembly (or it is turned off), so the model cannot run here");
    }
    else {
      try {
        worker = new Worker(new URL("./worker.js", import.meta.url), { type: "module" });
      } catch (e) {
        throw new Error(`this browser cannot start a module worker (${e.message}); use a current Chrome, Edge, Firefox or Safari`);
      }
    }
  } catch (e) {
    fail(e);
    return;
  }
  worker.onmessage = (event) => {
    try { receive(event.data); } catch (e) { fail(e); }
  };
  worker.onerror = (event) => {
    event.preventDefault();
    if (event.message) fail(new Error(`the model worker stopped: ${event.message}`));
    else workerMissing().then(fail);
  };
  worker.onmessageerror = () => fail(new Error("a message from the model worker could not be read"));
  isolated = options.isolated;
  status(remote ? `connecting to ${remote}` : "starting the model worker");
  worker.postMessage({ type: "init", threads: options.threads, fps: options.fps, start: options.start,
                       seed: options.seed, steps: options.steps, guidance: options.guidance });
  knobs.start = options.start;
  knobs.seed = options.seed;
}

/** Why a worker failed to start without a message: js/worker.js missing, or (more rarely) unreadable. */
async function workerMissing() {
  try {
    const response = await fetch(new URL("./worker.js", import.meta.url), { method: "HEAD" });
    if (!response.ok) return new Error(`js/worker.js: missing (HTTP ${response.status}); export the page again`);
  } catch { /* the server cannot be asked: the general message */ }
  return new Error("the model worker could not start: js/worker.js could not be loaded or run");
}

function receive(msg) {
  switch (msg.type) {
    case "progress": status(msg.message); break;
    case "error": fail(new Error(msg.message)); break;
    case "ready": onReady(msg); break;
    case "frame": onFrame(msg); break;
    case "state": onState(msg); break;
    case "rollout": onRollout(msg); break;
    case "failed": onFailed(msg); break;
    default: throw new Error(`unknown message from the model worker: ${JSON.stringify(msg.type)}`);
  }
}

function send(message) { if (worker && errorText === null) worker.postMessage(message); }

/** Send a command that the worker answers (a state, or for a reset the frame it makes, with the same id). */
function request(message) {
  if (errorText !== null) return Promise.reject(new Error(errorText));
  const id = nextId++;
  return new Promise((resolve, reject) => {
    replies.set(id, { resolve, reject });
    send({ ...message, id });
  });
}

function answer(id, value) {
  const reply = replies.get(id);
  if (reply) { replies.delete(id); reply.resolve(value); }
}

/** A request that the server refused (server mode): its promise rejects, the page says why. */
function onFailed(msg) {
  say(msg.message);
  const reply = replies.get(msg.id);
  if (reply) { replies.delete(msg.id); reply.reject(new Error(msg.message)); }
}

function onReady(msg) {
  model = msg.model;
  keys = keyMap(model);
  knobs.steps = msg.steps;
  knobs.guidance = msg.guidance;
  backend = msg.backend + (isolated || remote ? "" : " (not cross-origin isolated: 1 thread)");
  const [height, width] = model.frame;
  ui.canvas.width = width;
  ui.canvas.height = height;
  image = context.createImageData(width, height);
  const name = (model.card && model.card.name) || model.name || "model";
  ui.title.textContent = `${name} · ${model.game}`;
  document.title = `${name} · Reverie`;
  buildHelp();
  buildCard();
  buildTouch();
  layout();
}

function onState(msg) {
  // the page owns pause and guidance (its presses may be ahead of the worker's answers); the rest is the worker's
  knobs = { ...knobs, steps: msg.steps, start: msg.start, seed: msg.seed,
            guidance: knobs.guidance === null ? msg.guidance : knobs.guidance };
  if (msg.notice) say(msg.notice);
  if (msg.id) answer(msg.id, snapshot());
  hud(true);
}

function onFrame(msg) {
  const frame = { rgb: new Uint8Array(msg.rgb), stepped: msg.stepped, stepMs: msg.step_ms, index: msg.index,
                  waiters: msg.id ? [msg.id] : [] };
  if (remote) stats.rtt = { p50: msg.rtt_p50_ms, p99: msg.rtt_p99_ms };
  if (pending) {                           // never drawn: the newer frame replaces it
    frame.waiters.unshift(...pending.waiters);
    send({ type: "shown" });
  }
  pending = frame;
  if (!drawScheduled) { drawScheduled = true; requestAnimationFrame(draw); }
}

// ---- drawing ---------------------------------------------------------------------------------------------------------
function draw() {
  drawScheduled = false;
  if (!pending || errorText !== null) return;
  const frame = pending;
  pending = null;
  for (let i = 0, j = 0; i < frame.rgb.length; i += 3, j += 4) {   // RGB -> RGBA
    image.data[j] = frame.rgb[i]; image.data[j + 1] = frame.rgb[i + 1]; image.data[j + 2] = frame.rgb[i + 2];
    image.data[j + 3] = 255;
  }
  context.putImageData(image, 0, 0);
  onScreen = frame;
  send({ type: "shown" });
  stats.frames += 1;
  if (frame.stepped) {
    keepLast(stats.shownAt, performance.now());
    keepLast(stats.stepMs, frame.stepMs);
  } else {
    gap();
  }
  for (const id of frame.waiters) answer(id, snapshot());
  if (stats.frames === 1) {
    ui.status.hidden = true;
    ui.screen.classList.add("playing");
    layout();
    resolveReady(snapshot());
  }
  hud(false);
}

/** Size the canvas to the largest whole number of device pixels per frame pixel that fits the stage. */
function layout() {
  if (!model) return;
  const [height, width] = model.frame;
  const ratio = window.devicePixelRatio || 1;
  const style = getComputedStyle(ui.stage);
  const room = (size, a, b) => size - parseFloat(style[a]) - parseFloat(style[b]);
  for (let pass = 0; pass < 2; pass++) {   // the HUD's height depends on its width: settle in two passes
    const hudHeight = ui.hud.hidden ? 0 : ui.hud.getBoundingClientRect().height;
    const w = room(ui.stage.clientWidth, "paddingLeft", "paddingRight");
    const h = room(ui.stage.clientHeight, "paddingTop", "paddingBottom") - hudHeight;
    const scale = Math.max(1, Math.floor(Math.min(w * ratio / width, h * ratio / height)));
    ui.canvas.style.width = `${scale * width / ratio}px`;
    ui.canvas.style.height = `${scale * height / ratio}px`;
    ui.player.style.setProperty("--frame-width", `${scale * width / ratio}px`);
  }
}

// ---- HUD, messages, errors ---------------------------------------------------------------------------------------------
function hud(force) {
  const now = performance.now();
  if (toast && now > toast.until) toast = null;
  ui.toast.textContent = toast ? toast.text : "";
  if (!force && now - hudDrawnAt < HUD_REFRESH_MS) return;
  hudDrawnAt = now;
  const s = summary();
  const lines = [`${s.fps.toFixed(1)} frames/s   frame ${onScreen ? onScreen.index : 0}`,
    `${remote ? "server tick" : "frame time"} p50 ${s.p50_ms.toFixed(1)} ms  p99 ${s.p99_ms.toFixed(1)} ms`,
    `steps ${knobs.steps}   guidance ${Number(knobs.guidance).toFixed(2)}   start ${knobs.start}  seed ${knobs.seed}`,
    backend];
  if (remote) {
    lines.splice(2, 0, `round trip p50 ${(s.rtt_p50_ms ?? 0).toFixed(1)} ms  p99 ${(s.rtt_p99_ms ?? 0).toFixed(1)} ms`);
    lines.splice(4, 0, "1-4 [ ] .: local play only");
  }
  if (knobs.paused) lines.push("PAUSED");
  pauseButton.textContent = knobs.paused ? "resume" : "pause";
  ui.hudLines.replaceChildren(...lines.map((text) => {
    const line = document.createElement("span");
    line.textContent = text;
    if (text === "PAUSED") line.className = "flag";
    return line;
  }));
}

function say(text) {
  toast = { text, until: performance.now() + TOAST_MS };
  hud(true);
  setTimeout(() => hud(true), TOAST_MS + 50);
}

function status(text) { ui.status.querySelector(".text").textContent = text; }

/** Show an error in the page (never a blank canvas) and keep it for window.reverie.error(). */
function fail(error) {
  const message = error && error.message ? error.message : String(error);
  if (errorText !== null) return;          // the first error is the cause; later ones follow from it
  errorText = message;
  ui.errorMessage.textContent = message;
  ui.error.hidden = false;
  ui.status.hidden = true;
  ui.screen.classList.add("failed");
  if (!model) ui.title.textContent = "not loaded";
  rejectReady(new Error(message));
  for (const { reject } of replies.values()) reject(new Error(message));
  replies.clear();
  if (worker) worker.terminate();
  console.error(`reverie: ${message}`);
}

// ---- the controls overlay and the model card -------------------------------------------------------------------------
function buildHelp() {
  const choices = remote ? "local play only" : model.step_choices.join(", ");
  ui.controls.replaceChildren(...CONTROLS.map(([key, what]) => {
    const row = document.createElement("tr");
    const k = document.createElement("th"), w = document.createElement("td");
    k.textContent = key;
    w.textContent = key === "1-4" ? `${what} (${choices})` : remote && ["[ ]", "."].includes(key) ? `${what} (local play only)`
      : remote && key === "Enter" ? "reset the world (new noise seed)" : what;
    row.append(k, w);
    return row;
  }));
  ui.gameKeys.replaceChildren(...keys.describe().map((line) => {
    const item = document.createElement("li");
    item.textContent = line;
    return item;
  }));
}

function formatValue(value) {
  if (typeof value === "number") return Number.isInteger(value) ? value.toLocaleString("en-US") : String(Number(value.toPrecision(4)));
  if (Array.isArray(value)) return value.map(formatValue).join(", ");
  if (value !== null && typeof value === "object") {
    return Object.entries(value).map(([k, v]) => `${k.replaceAll("_", " ")} ${formatValue(v)}`).join(", ");
  }
  return String(value);
}

function buildCard() {
  const card = model.card || {};
  const rows = [["name", card.name ?? model.name], ["game", card.game ?? model.game]];
  for (const [k, v] of Object.entries(card.metrics || {})) rows.push([k, v]);
  for (const [k, v] of Object.entries(card)) if (!["name", "game", "metrics"].includes(k)) rows.push([k, v]);
  rows.push(["frame", `${model.frame[1]}x${model.frame[0]} at ${model.fps} frames/s`],
            ["sampling steps", remote ? `${model.defaults?.steps ?? "?"} (the server's)` : model.step_choices.join(", ")]);
  if (remote) rows.push(["server", remote]);
  ui.card.replaceChildren(...rows.filter(([, v]) => v !== undefined && v !== null).map(([k, v]) => {
    const row = document.createElement("tr");
    const key = document.createElement("th"), value = document.createElement("td");
    key.textContent = k.replaceAll("_", " ");
    value.textContent = formatValue(v);
    row.append(key, value);
    return row;
  }));
}

function toggleOverlay(show = ui.overlay.hidden, tab = "controls") {
  ui.overlay.hidden = !show;
  if (show) showTab(tab);
}

function showTab(tab) {
  for (const button of ui.overlay.querySelectorAll("[data-tab]")) {
    const on = button.dataset.tab === tab;
    button.classList.toggle("on", on);
    $(`tab-${button.dataset.tab}`).hidden = !on;
  }
}

function toggleHud() {
  hudVisible = !hudVisible;
  ui.hud.hidden = !hudVisible;
  layout();
}

// ---- input: keyboard, touch, scripts ---------------------------------------------------------------------------------
function pressedButtons() {
  const names = new Set([...held.script, ...held.keys.values(), ...held.buttons.values()]);
  for (const codes of held.dpad.values()) for (const code of codes) names.add(dpadArrows[code]);
  return names;
}

/** Post the action to the worker when it changed (the newest input wins). */
function updateAction() {
  if (!keys) return;
  const action = keys.action(pressedButtons());
  if (lastAction && action.every((v, i) => v === lastAction[i])) return;
  lastAction = action;
  send({ type: "action", action });
}

function releaseAll() {
  held.keys.clear();
  held.dpad.clear();
  held.buttons.clear();
  for (const el of document.querySelectorAll(".pressed")) el.classList.remove("pressed");
  updateAction();
}

function onKeyDown(event) {
  if (event.code === "Escape" && !ui.overlay.hidden) { toggleOverlay(false); return; }
  const button = keys && keys.codeToButton[event.code];
  if (button && !event.metaKey && !event.altKey) {   // with Ctrl too: Ctrl may be a game key (attack)
    event.preventDefault();                // arrows and Space would scroll the page
    held.keys.set(event.code, button);
    updateAction();
    return;
  }
  if (event.repeat || event.ctrlKey || event.metaKey || event.altKey) return;   // browser shortcuts stay theirs
  if (control(event.code)) event.preventDefault();
}

function onKeyUp(event) {
  if (held.keys.delete(event.code)) updateAction();
}

/** Run the player control bound to a key code (on its press); false if it is none. */
function control(code) {
  if (code === "F1") toggleOverlay();
  else if (code === "KeyH") toggleHud();
  else if (!model || errorText !== null) return false;    // the world's controls wait for the world
  else if (code === "Enter" || code === "NumpadEnter") reset().catch(() => {});   // errors show in the page
  else if (code === "KeyP") pause(!knobs.paused).catch(() => {});
  else if (remote && (code === "Period" || code in STEPS_CODES || code === "BracketLeft" || code === "BracketRight")) {
    say(`${code === "Period" ? "one step" : code in STEPS_CODES ? "sampling steps" : "guidance"}: local play only (the server's here)`);
  } else if (code === "Period") { if (knobs.paused) { gap(); send({ type: "single" }); } }
  else if (code in STEPS_CODES) setSteps(STEPS_CODES[code]).catch(() => {});
  else if (code === "BracketLeft" || code === "BracketRight") {
    const current = Number.isFinite(knobs.guidance) ? knobs.guidance : 1.0;
    const next = Math.round((current + (code === "BracketRight" ? GUIDANCE_STEP : -GUIDANCE_STEP)) * 1e4) / 1e4;
    knobs.guidance = Math.min(GUIDANCE_RANGE[1], Math.max(GUIDANCE_RANGE[0], next));
    request({ type: "guidance", guidance: knobs.guidance }).catch(() => {});
  } else return false;
  return true;
}

function setSteps(steps) {
  if (!model.step_choices.includes(steps)) {
    say(`${steps} sampling steps: this model offers ${model.step_choices.join(", ")}`);
    return Promise.resolve(snapshot());
  }
  return request({ type: "steps", steps });
}

function reset(where = {}) {
  gap();
  return request({ type: "reset", ...where });
}

function pause(paused) {
  knobs.paused = Boolean(paused);
  gap();
  hud(true);
  return request({ type: "pause", paused: knobs.paused });
}

/** Touch controls: a D-pad for the buttons the arrow keys press, a button for each other one; multi-touch. */
function buildTouch() {
  dpadArrows = Object.fromEntries(["ArrowUp", "ArrowDown", "ArrowLeft", "ArrowRight"]
    .map((code) => [code, keys.codeToButton[code]]).filter(([, b]) => b));
  const onPad = new Set(Object.values(dpadArrows));
  ui.dpad.hidden = onPad.size === 0;
  for (const code of Object.keys(dpadArrows)) ui.dpad.querySelector(`[data-code=${code}]`).classList.add("live");
  const showDpad = () => {
    const codes = new Set([...held.dpad.values()].flat());
    for (const arrow of ui.dpad.querySelectorAll("[data-code]")) arrow.classList.toggle("pressed", codes.has(arrow.dataset.code));
  };
  const dpadMove = (event) => {               // the direction from the pad's centre: 8 ways, a dead zone inside
    if (!held.dpad.has(event.pointerId)) return;
    const box = ui.dpad.getBoundingClientRect();
    const dx = (event.clientX - box.left) / box.width * 2 - 1, dy = (event.clientY - box.top) / box.height * 2 - 1;
    const sector = (Math.round(Math.atan2(dy, dx) / (Math.PI / 4)) + 8) % 8;
    const codes = Math.hypot(dx, dy) < DPAD_DEAD_ZONE ? [] : SECTORS[sector].filter((code) => code in dpadArrows);
    held.dpad.set(event.pointerId, codes);
    showDpad();
    updateAction();
  };
  const dpadUp = (event) => { if (held.dpad.delete(event.pointerId)) { showDpad(); updateAction(); } };
  ui.dpad.addEventListener("pointerdown", (event) => {
    event.preventDefault();
    ui.dpad.setPointerCapture(event.pointerId);     // a finger sliding off the pad keeps steering
    held.dpad.set(event.pointerId, []);
    dpadMove(event);
  });
  ui.dpad.addEventListener("pointermove", dpadMove);
  for (const type of ["pointerup", "pointercancel", "lostpointercapture"]) ui.dpad.addEventListener(type, dpadUp);

  const rest = model.buttons.filter((b) => !onPad.has(b) && !(keys.combos && comboParts(b).length));
  ui.buttons.replaceChildren(...rest.map((name) => {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "game-button";
    button.textContent = name.replaceAll("_", " ");
    const code = Object.keys(keys.codeToButton).find((c) => keys.codeToButton[c] === name);
    if (code) button.title = `${name} (${keyName(code)})`;
    button.addEventListener("pointerdown", (event) => {
      event.preventDefault();
      button.setPointerCapture(event.pointerId);
      held.buttons.set(event.pointerId, name);
      button.classList.add("pressed");
      updateAction();
    });
    const up = (event) => {
      if (!held.buttons.delete(event.pointerId)) return;
      button.classList.toggle("pressed", [...held.buttons.values()].includes(name));
      updateAction();
    };
    for (const type of ["pointerup", "pointercancel", "lostpointercapture"]) button.addEventListener(type, up);
    return button;
  }));
}

// ---- window.reverie: the player for scripts, tests and benchmarks ----------------------------------------------------
function snapshot() {
  return { ...summary(), backend, steps: knobs.steps, guidance: knobs.guidance, paused: knobs.paused,
           start: knobs.start, seed: knobs.seed };
}

function base64(bytes) {
  let text = "";
  for (let i = 0; i < bytes.length; i += 0x8000) text += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  return btoa(text);
}

function onRollout(msg) {
  const reply = replies.get(msg.id);
  if (!reply) return;
  replies.delete(msg.id);
  if (msg.error) reply.reject(new Error(`rollout: ${msg.error}`));
  else reply.resolve({ first: base64(new Uint8Array(msg.first)), frames: msg.frames.map((b) => base64(new Uint8Array(b))) });
}

/** Check a rollout's arguments here, so a mistake rejects with a message naming it. */
function rolloutRequest({ start = 0, seed = 0, actions, steps = model.defaults.steps,
                          guidance = model.defaults.guidance } = {}) {
  const starts = Math.max(1, model.starts || 1);
  if (!Number.isInteger(start) || start < 0 || start >= starts) throw new Error(`rollout: start ${start} is not one of this model's ${starts} start states (0-${starts - 1})`);
  if (!Number.isInteger(seed) || seed < 0 || seed >= 2 ** 32) throw new Error(`rollout: seed ${seed} is not a whole number from 0 to 2^32-1`);
  if (!model.step_choices.includes(steps)) throw new Error(`rollout: steps ${steps} is not one of ${model.step_choices.join(", ")}`);
  if (!Number.isFinite(guidance)) throw new Error(`rollout: guidance ${guidance} is not a number`);
  if (!Array.isArray(actions)) throw new Error("rollout: actions must be an array of action rows");
  const rows = actions.map((row, i) => {
    if (!Array.isArray(row) && !ArrayBuffer.isView(row)) throw new Error(`rollout: actions[${i}] is not an array`);
    if (row.length && [...row].every((v) => typeof v === "string")) return keys.action(row);   // button names
    if (row.length !== model.action_dim || ![...row].every(Number.isFinite)) {
      throw new Error(`rollout: actions[${i}] must hold ${model.action_dim} numbers (${[...model.buttons, ...(model.axes || [])].join(", ")}) or button names`);
    }
    return Float32Array.from(row);
  });
  return { type: "rollout", start, seed, steps, guidance, actions: rows };
}

async function whenLoaded() {
  await ready;
  if (errorText !== null) throw new Error(errorText);
}

window.reverie = {
  ready,
  error: () => errorText,
  model: () => model,
  stats: () => snapshot(),
  async reset() { await whenLoaded(); return reset(); },
  async pause(paused = true) { await whenLoaded(); return pause(paused); },
  async frame({ array = false } = {}) {
    await whenLoaded();
    const [height, width] = model.frame;
    return { width, height, rgb: array ? Array.from(onScreen.rgb) : base64(onScreen.rgb) };
  },
  press(button, down = true) {
    if (!model) throw new Error("press: the model is not loaded yet (await window.reverie.ready)");
    if (!model.buttons.includes(button)) throw new Error(`press: ${JSON.stringify(button)} is not a button of ${model.game} (${model.buttons.join(", ")})`);
    if (down) held.script.add(button); else held.script.delete(button);
    updateAction();
  },
  async rollout(options) {
    await whenLoaded();
    if (remote) throw new Error(`rollout: local play only; this page plays a world on the server ${remote} (open it without ?server= for rollout())`);
    return request(rolloutRequest(options));
  },
};

// ---- wiring ------------------------------------------------------------------------------------------------------------
window.addEventListener("keydown", onKeyDown);
window.addEventListener("keyup", onKeyUp);
window.addEventListener("blur", releaseAll);                 // keys released elsewhere are never seen
document.addEventListener("visibilitychange", () => { if (document.hidden) releaseAll(); });
new ResizeObserver(layout).observe(ui.stage);
window.addEventListener("resize", layout);
ui.touch.addEventListener("contextmenu", (event) => event.preventDefault());
$("help-button").addEventListener("click", () => toggleOverlay());
$("hud-button").addEventListener("click", toggleHud);
$("overlay-close").addEventListener("click", () => toggleOverlay(false));
ui.overlay.addEventListener("click", (event) => { if (event.target === ui.overlay) toggleOverlay(false); });
for (const button of ui.overlay.querySelectorAll("[data-tab]")) button.addEventListener("click", () => showTab(button.dataset.tab));
document.addEventListener("click", (event) => {   // a clicked button keeps no focus: Space and Enter are the game's
  const button = event.target.closest("button");
  if (button) button.blur();
});
for (const button of document.querySelectorAll("[data-control]")) {
  button.addEventListener("click", () => control({ reset: "Enter", pause: "KeyP", step: "Period" }[button.dataset.control]));
}
start();
