// The web player's server backend: with ?server=ws://HOST:PORT in the page's address, the world runs on a `reverie
// serve` server (docs/SERVE.md: msgpack over a binary WebSocket) instead of in the page's model worker.
//
// A RemoteWorld stands where main.js keeps its Worker: main.js posts it the worker's messages (js/worker.js's header
// lists them) and it answers with the worker's, so the page, its keys, touch controls and HUD are those of local play:
//
//   page -> here: init (start, seed) -> hello, create    action -> step (seq += 1)    pause -> pause    reset -> reset
//                 steps, guidance, single, rollout: local play only; answered with a notice (a rollout with an error)
//   here -> page: progress, error, ready (after `created`), state, frame {rgb, stepped, step_ms (the server's tick),
//                 index, id?, rtt_p50_ms, rtt_p99_ms}, failed {id, message} (a request the server answered with error)
//
// The newest action goes out as a `step` whenever the pressed set changes and again on every frame received (the
// server applies the newest). Round trip: from sending the step with seq s to receiving the first frame whose ack >= s.
// Every way the connection can fail (no server there, the token refused, the connection dropped) is one `error`
// message naming the server's address.

import { decode, encode } from "./msgpack.js";

const PROTOCOL_VERSION = 1;
const CONNECT_TIMEOUT_MS = 15_000;     // from opening the socket to the server's welcome
const RTT_WINDOW = 120;                // round trips the p50 / p99 are computed over
const MAX_UNACKED = 256;               // steps remembered while waiting for their frame (the oldest are dropped)
// what this page accepts from a server: a raw frame up to 4096x4096, a welcome of a spec with many buttons
const SERVER_LIMITS = { maxStrLen: 64 * 1024, maxBinLen: 4096 * 4096 * 3, maxArrayLen: 4096, maxMapLen: 256,
                        maxDepth: 4 };
const CLOSE_CODES = { 1001: "the server is going away", 1008: "the server refused a message (policy)",
                      1009: "a message was too big for the server", 1011: "the server had an internal error" };
const LOCAL_ONLY = "local play only: a server world is stepped by the server with its own settings";

function percentile(values, q) {
  if (!values.length) return 0;
  const sorted = [...values].sort((a, b) => a - b);
  const at = (sorted.length - 1) * q / 100, lo = Math.floor(at), hi = Math.ceil(at);
  return sorted[lo] + (sorted[hi] - sorted[lo]) * (at - lo);
}

/** Check the server's address from the page's ?server=: a ws:// or wss:// URL; returns its text. */
export function serverAddress(text) {
  let url;
  try {
    url = new URL(text);
  } catch {
    throw new Error(`?server=${text} in the address: expected a WebSocket address such as ws://127.0.0.1:8765`);
  }
  if (url.protocol !== "ws:" && url.protocol !== "wss:") {
    throw new Error(`?server=${text} in the address: expected ws:// or wss://, not ${url.protocol}//`);
  }
  if (location.protocol === "https:" && url.protocol === "ws:") {
    throw new Error(`?server=${text}: a page served over https may only connect to a wss:// server`);
  }
  return url.href;
}

export class RemoteWorld {
  /** A world on the server at `address` (checked by serverAddress), with `token` where the server asks for one. */
  constructor(address, token = null) {
    this.address = address;
    this.token = token;
    this.onmessage = null;
    this.socket = null;
    this.welcome = null;
    this.world = null;             // this connection's handle of the world (from `created`)
    this.seed = 0;
    this.start = 0;
    this.action = null;
    this.seq = 0;
    this.unacked = new Map();      // seq -> time sent
    this.rtt = [];
    this.requests = new Map();     // protocol request id -> {kind, pageId, ...}
    this.nextId = 1;
    this.paused = false;
    this.afterReset = null;        // the page's request id that the next frame answers (a reset's start frame)
    this.finished = false;         // failed or terminated: nothing more goes out or comes in
    this.timer = null;
  }

  // ---- the worker's side of main.js ------------------------------------------------------------------------------
  postMessage(msg) {
    if (this.finished) return;
    switch (msg.type) {
      case "init": this.connect(msg); break;
      case "action": this.action = msg.action; this.step(); break;
      case "shown": break;                                     // the server paces itself and drops stale frames
      case "pause": {
        this.unacked.clear();                                  // a pause is not a round trip
        this.paused = Boolean(msg.paused);                     // as the server will see it, in the order sent
        this.ask({ t: "pause", world: this.world, paused: this.paused }, { kind: "pause", pageId: msg.id });
        break;
      }
      case "reset": {
        if (this.paused) {                                     // the server resets only a world in its batch
          this.post({ type: "failed", id: msg.id, message: "resume (P) before a reset: a paused server world cannot reset" });
          break;
        }
        const seed = msg.seed ?? this.seed + 1;               // Enter: a new noise seed (the start is the server's)
        this.ask({ t: "reset", world: this.world, seed }, { kind: "reset", pageId: msg.id, seed });
        break;
      }
      case "steps": this.state({ id: msg.id, notice: `sampling steps: ${LOCAL_ONLY}` }); break;
      case "guidance": this.state({ id: msg.id, notice: `guidance: ${LOCAL_ONLY}` }); break;
      case "single": this.state({ notice: `one step at a time: ${LOCAL_ONLY}` }); break;
      case "rollout": this.post({ type: "rollout", id: msg.id, error: LOCAL_ONLY }); break;
      default: throw new Error(`the server backend got an unknown message type ${JSON.stringify(msg.type)}`);
    }
  }

  terminate() {
    this.finished = true;
    clearTimeout(this.timer);
    if (this.socket && this.socket.readyState <= WebSocket.OPEN) this.socket.close(1000, "page closed");
  }

  /** A message to main.js, delivered after the current task as a worker's would be (never inside its own call). */
  post(msg) { queueMicrotask(() => { if (this.onmessage) this.onmessage({ data: msg }); }); }

  state(extra = {}) {
    const defaults = this.welcome ? this.welcome.model.defaults || {} : {};
    this.post({ type: "state", steps: defaults.steps ?? null, guidance: defaults.guidance ?? null, start: this.start,
                seed: this.seed, ...extra });
  }

  fail(message) {
    if (this.finished) return;
    this.post({ type: "error", message });
    this.terminate();
  }

  // ---- the protocol ----------------------------------------------------------------------------------------------
  connect({ start = 0, seed = 0 }) {
    this.start = start;
    this.seed = seed;
    this.post({ type: "progress", message: `connecting to ${this.address}` });
    try {
      this.socket = new WebSocket(this.address);
    } catch (e) {
      this.fail(`cannot connect to the world server ${this.address}: ${e.message}`);
      return;
    }
    this.socket.binaryType = "arraybuffer";
    this.timer = setTimeout(() => this.fail(`no welcome from the world server ${this.address} in ` +
                                            `${CONNECT_TIMEOUT_MS / 1000} s; is \`reverie serve\` running there?`),
                            CONNECT_TIMEOUT_MS);
    this.socket.onopen = () => {
      this.post({ type: "progress", message: `waiting for ${this.address}` });
      this.send({ t: "hello", v: PROTOCOL_VERSION, token: this.token ?? undefined, format: "raw" });
    };
    this.socket.onmessage = (event) => {
      if (this.finished) return;
      try {
        this.receive(event.data);
      } catch (e) {
        this.fail(`the world server ${this.address} sent what this page cannot read: ${e.message}`);
      }
    };
    this.socket.onclose = (event) => this.closed(event);
    this.socket.onerror = () => {};                            // the close event that follows says it
  }

  closed(event) {
    if (this.finished) return;
    const why = [CLOSE_CODES[event.code], event.reason].filter(Boolean).join(": ");
    if (!this.welcome) {
      this.fail(`cannot connect to the world server ${this.address}` +
                (why ? ` (${why})` : `; is \`reverie serve\` running there, on that port?`));
    } else {
      this.fail(`the connection to the world server ${this.address} was lost (close code ${event.code}` +
                `${why ? `, ${why}` : ""}); reload the page to play again`);
    }
  }

  send(message) {
    if (!this.finished && this.socket && this.socket.readyState === WebSocket.OPEN) this.socket.send(encode(message));
  }

  /** Send a request with a fresh protocol id, remembering what the page asked (`what`). */
  ask(message, what) {
    const id = this.nextId++;
    this.requests.set(id, what);
    this.send({ ...message, id });
  }

  /** The newest action as a `step`; its seq is timed until a frame acknowledges it. */
  step() {
    if (this.world === null || !this.action) return;
    this.seq += 1;
    this.unacked.set(this.seq, performance.now());
    if (this.unacked.size > MAX_UNACKED) this.unacked.delete(this.unacked.keys().next().value);
    this.send({ t: "step", world: this.world, action: this.action, seq: this.seq });
  }

  receive(data) {
    if (!(data instanceof ArrayBuffer)) throw new Error("a text message (the protocol's messages are binary)");
    const msg = decode(data, SERVER_LIMITS);
    if (msg === null || typeof msg !== "object" || Array.isArray(msg) || typeof msg.t !== "string") {
      throw new Error("a message that is not a map with a string field t");
    }
    if (!this.welcome && msg.t !== "welcome" && msg.t !== "error") throw new Error(`'${msg.t}' before its welcome`);
    switch (msg.t) {
      case "welcome": this.onWelcome(msg); break;
      case "created": this.onCreated(msg); break;
      case "frame": this.onFrame(msg); break;
      case "ok": this.onOk(msg); break;
      case "error": this.onError(msg); break;
      case "saved": break;                                     // this page never asks for one
      default: throw new Error(`unknown message type '${msg.t}'`);
    }
  }

  onWelcome(msg) {
    const model = msg.model;
    if (msg.v !== PROTOCOL_VERSION) throw new Error(`protocol version ${msg.v}; this page speaks ${PROTOCOL_VERSION}`);
    const frame = model && model.frame;
    if (!Array.isArray(frame) || frame.length !== 3 || frame[2] !== 3 || !frame.every((v) => Number.isInteger(v) && v > 0)) {
      throw new Error(`a welcome whose model.frame is ${JSON.stringify(frame)}, not [height, width, 3]`);
    }
    if (!Array.isArray(model.buttons) || !model.buttons.every((b) => typeof b === "string")) {
      throw new Error("a welcome whose model.buttons is not a list of names");
    }
    this.welcome = msg;
    this.frameBytes = frame[0] * frame[1] * 3;
    this.post({ type: "progress", message: "starting a world on the server" });
    this.ask({ t: "create", seed: this.seed, start: this.start }, { kind: "create" });
  }

  onCreated(msg) {
    const what = this.requests.get(msg.id);
    if (!what || what.kind !== "create" || !Number.isInteger(msg.world)) throw new Error("a 'created' this page did not ask for");
    this.requests.delete(msg.id);
    clearTimeout(this.timer);
    this.world = msg.world;
    const model = this.welcome.model, defaults = model.defaults || {};
    this.action = new Float32Array(model.action_dim ?? model.buttons.length + (model.axes || []).length);
    this.post({ type: "ready", model: { ...model }, backend: `server ${this.address}`, fps: this.welcome.fps,
                steps: defaults.steps ?? null, guidance: defaults.guidance ?? null });
    this.state();
  }

  onFrame(msg) {
    if (msg.world !== this.world) return;                      // a world of this connection that the page no longer plays
    if (msg.format !== "raw") throw new Error(`a frame in format '${msg.format}' (this page asked for raw)`);
    if (!(msg.data instanceof Uint8Array) || msg.data.length !== this.frameBytes) {
      throw new Error(`a frame of ${msg.data?.length} bytes, not the ${this.frameBytes} of a ${this.welcome.model.frame.join("x")} frame`);
    }
    const now = performance.now();
    for (const [seq, sentAt] of this.unacked) {                // in the order sent: stop at the first not acknowledged
      if (seq > msg.ack) break;
      this.rtt.push(now - sentAt);
      if (this.rtt.length > RTT_WINDOW) this.rtt.shift();
      this.unacked.delete(seq);
    }
    const id = this.afterReset ?? undefined;
    this.afterReset = null;
    this.post({ type: "frame", rgb: msg.data.buffer, stepped: msg.n > 0, step_ms: Number(msg.tick_ms) || 0,
                index: msg.n, id, rtt_p50_ms: percentile(this.rtt, 50), rtt_p99_ms: percentile(this.rtt, 99) });
    this.step();                                               // the newest action again, for the next tick
  }

  onOk(msg) {
    const what = this.requests.get(msg.id);
    if (!what) throw new Error(`an 'ok' for request ${msg.id}, which this page did not send`);
    this.requests.delete(msg.id);
    if (what.kind === "pause") {
      this.state({ id: what.pageId, paused: this.paused });
    } else if (what.kind === "reset") {
      this.seed = what.seed;
      this.unacked.clear();
      this.afterReset = what.pageId;                           // the world's next frame is its start frame
      this.state({ notice: `reset: seed ${this.seed}` });
    }
  }

  onError(msg) {
    const message = String(msg.message ?? "(no message)");
    if (!this.welcome) {
      this.fail(`the world server ${this.address} refused this page: ${message}`);
      return;
    }
    const what = msg.id === undefined ? null : this.requests.get(msg.id);
    if (what) this.requests.delete(msg.id);
    if (what && what.kind === "create") {
      this.fail(`the world server ${this.address} has no world for this page: ${message}`);
    } else if (what) {
      this.post({ type: "failed", id: what.pageId, message: `${what.kind}: the server says ${message}` });
    } else {
      this.state({ notice: `the server says: ${message}` });
      console.warn(`reverie: the world server ${this.address} says: ${message}`);
    }
  }
}
