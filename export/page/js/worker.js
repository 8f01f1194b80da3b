// The model loop of the web player: a module Web Worker that owns the World (world.js) and steps it on its own
// clock, so a slow model lowers the frame rate and never the page's response (the page's main.js is the UI).
//
// Like play/worker.py: commands from the page (reset, knobs, a rollout) run between steps, so the world is only
// ever used by one task at a time; the page's newest action is used by the next step; steps start on a fixed grid
// at the pace asked for (a late step moves the grid instead of bursting); every frame is handed over (its buffer
// transferred) only once the page has drawn the one before, while the next is computed, so a model faster than
// the screen is paced by the screen. After a frame is posted the world's deferred backbone pass (finish) runs.
//
// page -> worker: {type: "init", threads, fps, start, seed, steps, guidance}   fps 0: as fast as it goes
//                 {type: "action", action: Float32Array}                       newest wins
//                 {type: "shown"}                                              one per frame received
//                 {type: "pause", paused, id} | {type: "single"} | {type: "reset", id, start?, seed?}
//                 {type: "steps", steps, id} | {type: "guidance", guidance, id}
//                 {type: "rollout", id, start, seed, actions: [Float32Array], steps, guidance}
// worker -> page: {type: "progress", message} | {type: "error", message}
//                 {type: "ready", model, backend, threads, fps, steps, guidance}   fps 0: unpaced
//                 {type: "frame", rgb: ArrayBuffer, stepped, step_ms, index, id?}
//                 {type: "state", steps, guidance, paused, start, seed, id?, notice?}
//                 {type: "rollout", id, first: ArrayBuffer, frames: [ArrayBuffer]} | {type: "rollout", id, error}

let world = null;
let period = 0;                 // ms between steps (0: as fast as the model goes)
let action = null;              // the newest action from the page
let paused = false;
let single = false;             // one step allowed while paused
let live = { start: 0, seed: 0 };
let index = 0;                  // steps since the last reset
let unshown = 0;                // frames posted that the page has not drawn (or dropped) yet
let held = null;                // a stepped frame waiting for the page to draw the one before
let finishMs = 0;               // the last deferred backbone pass, counted into the next frame's time
let nextDue = 0;
const commands = [];
let wakeUp = null;

const now = () => performance.now();

/** Sleep until `ms` have passed or a message arrives (Infinity: until a message). */
function sleep(ms) {
  return new Promise((resolve) => {
    const timer = Number.isFinite(ms) ? setTimeout(() => done(), ms) : null;
    const done = () => { clearTimeout(timer); if (wakeUp === done) wakeUp = null; resolve(); };
    wakeUp = done;
  });
}

function wake() { if (wakeUp) wakeUp(); }

function fail(error) {
  const message = error && error.message ? error.message : String(error);
  self.postMessage({ type: "error", message });
}

function state(extra = {}) {
  self.postMessage({ type: "state", steps: world.steps, guidance: world.guidance, paused, start: live.start,
                     seed: live.seed, ...extra });
}

/** Hand a frame to the page; its copy's buffer is transferred. */
function post(rgb, stepped, stepMs, id) {
  const copy = rgb.slice();               // the world keeps its own buffer; the page gets this one
  unshown += 1;
  self.postMessage({ type: "frame", rgb: copy.buffer, stepped, step_ms: stepMs, index, id }, [copy.buffer]);
}

self.onmessage = (event) => {
  const msg = event.data;
  if (msg.type === "action") action = msg.action;
  else if (msg.type === "shown") unshown = Math.max(0, unshown - 1);
  else if (msg.type === "init") init(msg);
  else commands.push(msg);
  wake();
};

async function init(msg) {
  try {
    let World;
    try {
      ({ World } = await import("./world.js"));
    } catch (e) {
      throw new Error(await whichModuleFailed(e));
    }
    world = await World.load(new URL("../model/", import.meta.url), {
      threads: msg.threads, onProgress: (message) => self.postMessage({ type: "progress", message: String(message) }),
    });
    const model = world.model;
    action = new Float32Array(model.action_dim);
    const starts = Math.max(1, model.starts || 1);
    if (msg.start >= starts) {
      throw new Error(`?start=${msg.start}: this model has ${starts} start state${starts > 1 ? "s" : ""} (0-${starts - 1})`);
    }
    if (msg.steps != null) {
      if (!model.step_choices.includes(msg.steps)) {
        throw new Error(`?steps=${msg.steps}: this model offers ${model.step_choices.join(", ")} sampling steps`);
      }
      world.steps = msg.steps;
    }
    if (msg.guidance != null) world.guidance = msg.guidance;
    const fps = msg.fps ?? model.fps;
    period = fps > 0 ? 1000 / fps : 0;
    live = { start: msg.start, seed: msg.seed };
    self.postMessage({ type: "ready", model, backend: world.backend, threads: msg.threads, fps: fps > 0 ? fps : 0,
                       steps: world.steps, guidance: world.guidance });
    self.postMessage({ type: "progress", message: `starting the world (start ${live.start}, seed ${live.seed})` });
    index = 0;
    const first = await world.reset(live);
    state();
    post(first, false, 0);
  } catch (e) {
    fail(e);
    return;
  }
  loop().catch(fail);
}

/** The file a failed import of world.js is missing (the browser's message names only world.js), or its message. */
async function whichModuleFailed(error) {
  for (const file of ["js/world.js", "js/noise.js", "ort/ort.wasm.min.mjs"]) {
    try {
      const response = await fetch(new URL(`../${file}`, import.meta.url), { method: "HEAD" });
      if (!response.ok) return `${file}: missing (HTTP ${response.status}); export the page again`;
    } catch {
      break;                               // the server cannot be asked: say what the browser said
    }
  }
  return `cannot load js/world.js or a module it imports: ${error.message}`;
}

/** Step the world at the pace asked for; run the page's commands between steps. */
async function loop() {
  for (;;) {
    while (commands.length) await command(commands.shift());
    if (held && unshown === 0) {
      post(held.rgb, true, held.stepMs);
      held = null;
      continue;
    }
    if (held || (paused && !single)) {
      await sleep(Infinity);
      continue;
    }
    const start = now();
    if (period && !single) {
      const wait = nextDue - start;
      if (wait > 0) {
        await sleep(wait);
        continue;                          // a command may have come in meanwhile
      }
      const base = nextDue && start - nextDue < period ? nextDue : start;
      nextDue = base + period;             // steps start on a fixed grid; a late step moves the grid
    }
    single = false;
    const frame = await world.step(action);
    index += 1;
    const stepMs = now() - start + finishMs;   // this step's head and decode, plus the previous backbone pass
    if (unshown === 0) post(frame, true, stepMs);
    else held = { rgb: frame.slice(), stepMs };
    const t = now();
    await world.finish();
    finishMs = now() - t;
  }
}

/** Run one command from the page (between steps: no step or finish is pending). */
async function command(msg) {
  switch (msg.type) {
    case "pause":
      paused = Boolean(msg.paused);
      single = false;
      nextDue = 0;
      state({ id: msg.id });
      break;
    case "single":
      if (paused) single = true;
      break;
    case "reset": {
      held = null;
      const starts = Math.max(1, world.model.starts || 1);   // Enter: the next start state and a new noise seed
      live = { start: msg.start ?? (live.start + 1) % starts, seed: msg.seed ?? live.seed + 1 };
      await resetLive(msg.id);
      state({ notice: `reset: start ${live.start}, seed ${live.seed}` });
      break;
    }
    case "steps":
      if (world.model.step_choices.includes(msg.steps)) {
        world.steps = msg.steps;
        state({ id: msg.id, notice: `sampling steps ${world.steps}` });
      } else {
        state({ id: msg.id, notice: `${msg.steps} sampling steps: this model offers ${world.model.step_choices.join(", ")}` });
      }
      break;
    case "guidance":
      world.guidance = msg.guidance;
      state({ id: msg.id, notice: `guidance ${world.guidance.toFixed(2)}${world.guidance === 1 ? " (off)" : ""}` });
      break;
    case "rollout":
      await rollout(msg);
      break;
    default:
      throw new Error(`the model worker got an unknown message type ${JSON.stringify(msg.type)}`);
  }
}

async function resetLive(id) {
  index = 0;
  finishMs = 0;
  nextDue = 0;
  post(await world.reset(live), false, 0, id);
}

/** A fresh deterministic rollout (reset, then one step and finish per action), then the live world reset again. */
async function rollout(msg) {
  held = null;
  const knobs = { steps: world.steps, guidance: world.guidance };
  let reply;
  try {
    if (msg.steps != null) world.steps = msg.steps;
    if (msg.guidance != null) world.guidance = msg.guidance;
    const first = (await world.reset({ start: msg.start, seed: msg.seed })).slice().buffer;
    const frames = [];
    for (const row of msg.actions) {
      frames.push((await world.step(row)).slice().buffer);
      await world.finish();
    }
    reply = { message: { type: "rollout", id: msg.id, first, frames }, transfer: [first, ...frames] };
  } catch (e) {
    reply = { message: { type: "rollout", id: msg.id, error: e && e.message ? e.message : String(e) }, transfer: [] };
  }
  world.steps = knobs.steps;
  world.guidance = knobs.guidance;
  self.postMessage(reply.message, reply.transfer);
  await resetLive();                       // the live world starts again from its own start and seed
  state();
}
