// The session's step in JavaScript: one world of an exported model run by onnxruntime-web (engine/session.py,
// engine/step.py and engine/kv_cache.py for one world on the onnxruntime runner, whose graphs these are).
//
//   const world = await World.load(new URL("../model/", import.meta.url), { threads: 2 });
//   let frame = await world.reset({ start: 0, seed: 0 });   // Uint8Array H*W*3: the start's last real frame
//   frame = await world.step(action);                      // the next frame; its backbone pass is deferred
//   await world.finish();                                  // that pass (step() runs it first if still pending)
//
// Per frame, as the Python session: the head samples the next latent from counter-based noise (js/noise.js) in S
// Euler steps, with classifier-free guidance as one batch of 2 when the scale is not 1; the latent is unpatchified and
// denormalised here in float32 and decoded to a frame; one backbone pass then appends it to a ring KV cache of W
// frames (slot t mod W, the slot being replaced masked out, the new keys written in by the host).

import * as ort from "../ort/ort.wasm.min.mjs";
import { counterNormal, seed32 } from "./noise.js";

const FORMAT = 1;
const GRAPHS = ["backbone", "head", "head_cfg", "decode"];
const f32 = Math.fround;

export class WorldError extends Error {
  constructor(message) {
    super(message);
    this.name = "WorldError";
  }
}

async function fetchBytes(url, what) {
  let response;
  try {
    response = await fetch(url);
  } catch (e) {
    throw new WorldError(`${what}: cannot be fetched (${e.message}); is the page served over http(s)?`);
  }
  if (!response.ok) {
    throw new WorldError(`${what}: missing (HTTP ${response.status}); export the page again with reverie export --format web`);
  }
  return new Uint8Array(await response.arrayBuffer());
}

async function sha256Hex(bytes) {
  if (!globalThis.crypto?.subtle) return null;   // outside a secure context: the size check alone
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
  return Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** A read-only view of one array of tables.bin as model.json names it. */
function table(bytes, entry, name) {
  if (!entry) throw new WorldError(`model/model.json: no table ${name}; export the page again`);
  const count = entry.shape.reduce((a, b) => a * b, 1);
  const size = count * (entry.dtype === "uint8" ? 1 : 4);
  if (entry.offset + size > bytes.length) {
    throw new WorldError(`model/tables.bin: too short for ${name} (damaged or truncated); export the page again`);
  }
  return entry.dtype === "uint8"
    ? new Uint8Array(bytes.buffer, bytes.byteOffset + entry.offset, count)
    : new Float32Array(bytes.buffer.slice(bytes.byteOffset + entry.offset, bytes.byteOffset + entry.offset + size));
}

export class World {
  /** Load model.json, tables.bin and the four graphs from `baseUrl` (the model/ folder) into onnxruntime-web. */
  static async load(baseUrl, { threads = 1, onProgress = () => {} } = {}) {
    ort.env.wasm.numThreads = threads;
    ort.env.wasm.wasmPaths = new URL("../ort/", import.meta.url).href;
    ort.env.logLevel = "error";
    onProgress("model.json");
    const jsonBytes = await fetchBytes(new URL("model.json", baseUrl), "model/model.json");
    let model;
    try {
      model = JSON.parse(new TextDecoder().decode(jsonBytes));
    } catch (e) {
      throw new WorldError(`model/model.json: not valid JSON (${e.message}); export the page again`);
    }
    if (model.format !== FORMAT) {
      throw new WorldError(`model/model.json: format ${model.format}, this page reads ${FORMAT}; export the page again`);
    }
    onProgress("tables.bin");
    const tables = await fetchBytes(new URL("tables.bin", baseUrl), "model/tables.bin");
    const sessions = {};
    for (const [i, name] of GRAPHS.entries()) {
      const entry = model.graphs?.[name];
      if (!entry) throw new WorldError(`model/model.json: no graph ${name}; export the page again`);
      onProgress(`${entry.file} (${i + 1} of ${GRAPHS.length})`);
      const bytes = await fetchBytes(new URL(entry.file, baseUrl), `model/${entry.file}`);
      const digest = bytes.length === entry.bytes ? await sha256Hex(bytes) : "size";
      if (digest !== null && digest !== entry.sha256) {
        throw new WorldError(`model/${entry.file}: damaged (${bytes.length} bytes, checksum differs from model.json); ` +
          "export the page again");
      }
      try {
        sessions[name] = await ort.InferenceSession.create(bytes, {
          executionProviders: ["wasm"], graphOptimizationLevel: "all",
        });
      } catch (e) {
        throw new WorldError(`model/${entry.file}: onnxruntime-web cannot load this graph (${e.message}); export the page again`);
      }
    }
    return new World(model, tables, sessions, threads);
  }

  constructor(model, tables, sessions, threads) {
    const m = (this.model = model);
    this.sessions = sessions;
    this.backend = `wasm SIMD, ${threads} thread${threads === 1 ? "" : "s"}`;
    const t = m.tables;
    this.tCos = table(tables, t.t_cos, "t_cos");
    this.tSin = table(tables, t.t_sin, "t_sin");
    this.sCos = table(tables, t.s_cos, "s_cos");
    this.sSin = table(tables, t.s_sin, "s_sin");
    this.startLatents = table(tables, t.start_latents, "start_latents");
    this.startActions = table(tables, t.start_actions, "start_actions");
    this.startFrames = table(tables, t.start_frames, "start_frames");
    this.startShape = t.start_latents.shape;   // (S, T, C, h, w)

    const [C, h, w] = m.latent;
    const [H, W] = m.frame;
    this.latentSize = C * h * w;
    this.frameSize = H * W * 3;
    this.tokenSize = m.tokens * m.token_dim;
    this.columns = m.context_frames * m.tokens;                  // W*N key columns of the ring
    this.cacheShape = [m.layers, 1, m.heads, this.columns, m.head_dim];
    this.k = new Float32Array(m.layers * m.heads * this.columns * m.head_dim);
    this.v = new Float32Array(this.k.length);
    this.valid = new Uint8Array(m.context_frames);
    this.hLast = new Float32Array(m.tokens * m.d_model);
    this.z = new Float32Array(this.latentSize);
    this.action = new Float32Array(m.action_dim);
    this.count = 0;            // frames appended since reset (the ring's counter and the noise counter)
    this.seed = 0;             // the world's 32-bit noise seed
    this.pending = false;      // a deferred backbone pass
    this.queue = Promise.resolve();
    this.steps = m.defaults.steps;
    this.guidance = m.defaults.guidance;
    this.contextNoise = m.defaults.context_noise;
    this.frame = new Uint8Array(this.frameSize);
  }

  get steps() {
    return this._steps;
  }

  set steps(value) {
    if (!this.model.step_choices.includes(value)) {
      throw new WorldError(`steps ${value}: this model samples in ${this.model.step_choices.join(", ")} steps`);
    }
    this._steps = value;
  }

  get guidance() {
    return this._guidance;
  }

  set guidance(value) {
    if (!(Number.isFinite(value) && value >= 0 && value <= 20)) {
      throw new WorldError(`guidance ${value}: give a number from 0 to 20 (1 turns it off)`);
    }
    this._guidance = value;
  }

  /** One call after another: a step never runs beside a reset or another step. */
  serial(fn) {
    const next = this.queue.then(fn);
    this.queue = next.catch(() => {});
    return next;
  }

  /** Prime the world from start state `start` with noise seed `seed` (world 0 of a session seeded `seed`). */
  reset({ start = 0, seed = 0 } = {}) {
    return this.serial(async () => {
      const [S, T] = this.startShape;
      if (!(Number.isInteger(start) && start >= 0 && start < S)) {
        throw new WorldError(`start ${start}: this model has ${S} start state${S === 1 ? "" : "s"} (0..${S - 1})`);
      }
      this.seed = seed32(BigInt(seed) * BigInt(this.model.seed_stride));
      this.k.fill(0);
      this.v.fill(0);
      this.valid.fill(0);
      this.count = 0;
      this.pending = false;
      const A = this.model.action_dim;
      for (let t = 0; t < T; t++) {
        const zi = (start * T + t) * this.latentSize;
        const ai = (start * T + t) * A;
        await this.backbone(this.startLatents.subarray(zi, zi + this.latentSize), this.startActions.subarray(ai, ai + A));
      }
      this.frame = this.startFrames.slice(start * this.frameSize, (start + 1) * this.frameSize);
      return this.frame.slice();
    });
  }

  /** The next frame under `action` (Float32Array of action_dim); the pass that appends it runs in finish(). */
  step(action) {
    return this.serial(async () => {
      if (this.pending) await this.runPending();
      if (action.length !== this.model.action_dim) {
        throw new WorldError(`action of ${action.length} values; this model takes ${this.model.action_dim}`);
      }
      this.action.set(action);
      await this.head(this.steps, this.guidance !== 1.0);
      const out = await this.sessions.decode.run({ z: this.tensor(this.z, [1, ...this.model.latent]) });
      this.frame = new Uint8Array(out.frames.data);
      this.pending = true;
      return this.frame.slice();
    });
  }

  /** The backbone pass the last step deferred (nothing if none is pending). */
  finish() {
    return this.serial(() => this.runPending());
  }

  async runPending() {
    if (!this.pending) return;
    this.pending = false;
    await this.backbone(this.z, this.action);
  }

  tensor(data, dims) {
    return new ort.Tensor("float32", data, dims);
  }

  /** Sample the next latent into this.z: Euler steps of the head from the world's noise (StepParts.head). */
  async head(steps, guided) {
    const m = this.model;
    let x = counterNormal(this.seed, this.count, this.tokenSize, m.noise_streams.head);
    const session = guided ? this.sessions.head_cfg : this.sessions.head;
    const feeds = {
      h: this.tensor(this.hLast, [1, m.tokens, m.d_model]),
      actions: this.tensor(this.action, [1, m.action_dim]),
    };
    if (guided) feeds.guidance = this.tensor(new Float32Array([this.guidance]), [1]);
    for (const [tau, level, d] of m.schedules[String(steps)]) {
      feeds.x = this.tensor(x, [1, m.tokens, m.token_dim]);
      feeds.tau = this.tensor(new Float32Array([tau]), [1]);
      feeds.level = new ort.Tensor("int64", new BigInt64Array([BigInt(level)]), [1]);
      feeds.d = this.tensor(new Float32Array([d]), [1]);
      const out = await session.run(pick(feeds, session.inputNames));
      x = new Float32Array(out.x_next.data);
    }
    this.denormalize(this.unpatchify(x, this.z));
  }

  /** Tokens (N, C*p*p) -> latent (C, h, w): WorldModel.unpatchify. */
  unpatchify(x, z) {
    const m = this.model;
    const [C, h, w] = m.latent;
    const p = m.patch;
    const hp = h / p;
    const wp = w / p;
    for (let i = 0; i < hp; i++) {
      for (let j = 0; j < wp; j++) {
        const token = (i * wp + j) * C * p * p;
        for (let c = 0; c < C; c++) {
          for (let a = 0; a < p; a++) {
            for (let b = 0; b < p; b++) {
              z[(c * h + i * p + a) * w + j * p + b] = x[token + (c * p + a) * p + b];
            }
          }
        }
      }
    }
    return z;
  }

  /** z * std + mean per channel, each operation rounded to float32 (WorldModel.denormalize). */
  denormalize(z) {
    const m = this.model;
    const plane = m.latent[1] * m.latent[2];
    for (let c = 0; c < m.latent[0]; c++) {
      const std = f32(m.latent_std[c]);
      const mean = f32(m.latent_mean[c]);
      for (let i = c * plane; i < (c + 1) * plane; i++) z[i] = f32(f32(z[i] * std) + mean);
    }
    return z;
  }

  /** Append latent z, led to by `action`, to the ring (StepParts.backbone with a read-only cache). */
  async backbone(z, action) {
    const m = this.model;
    const N = m.tokens;
    const W = m.context_frames;
    const half = m.head_dim / 2;
    const noise = counterNormal(this.seed, this.count, this.latentSize, m.noise_streams.context);
    // RoPE: the time angles of this frame (periodic in rope_period frames) beside each token's spatial angles
    const pos = this.count % m.rope_period;
    const pt = m.tables.t_cos.shape[1];
    const ps = half - pt;
    const cos = new Float32Array(N * half);
    const sin = new Float32Array(N * half);
    for (let n = 0; n < N; n++) {
      cos.set(this.tCos.subarray(pos * pt, (pos + 1) * pt), n * half);
      sin.set(this.tSin.subarray(pos * pt, (pos + 1) * pt), n * half);
      cos.set(this.sCos.subarray(n * ps, (n + 1) * ps), n * half + pt);
      sin.set(this.sSin.subarray(n * ps, (n + 1) * ps), n * half + pt);
    }
    // attend the valid slots except the one this frame replaces; the new frame's own columns the graph adds
    const slot = this.count % W;
    const mask = new Float32Array(this.columns);
    for (let s = 0; s < W; s++) {
      if (!this.valid[s] || s === slot) mask.fill(-Infinity, s * N, (s + 1) * N);
    }
    const feeds = {
      z: this.tensor(z, [1, ...m.latent]), noise: this.tensor(noise, [1, ...m.latent]),
      actions: this.tensor(action, [1, m.action_dim]),
      level: this.tensor(new Float32Array([this.contextNoise]), [1]),
      cos: this.tensor(cos, [N, half]), sin: this.tensor(sin, [N, half]),
      k_cache: this.tensor(this.k, this.cacheShape), v_cache: this.tensor(this.v, this.cacheShape),
      mask: this.tensor(mask, [1, 1, 1, this.columns]),
    };
    const session = this.sessions.backbone;
    const out = await session.run(pick(feeds, session.inputNames));
    this.hLast.set(out.h.data);
    // the new keys and values (L, 1, H, N, hd) into the slot's N columns of every layer and head
    const hd = m.head_dim;
    const kNew = out.k_new.data;
    const vNew = out.v_new.data;
    for (let lh = 0; lh < m.layers * m.heads; lh++) {
      const from = lh * N * hd;
      const to = (lh * this.columns + slot * N) * hd;
      this.k.set(kNew.subarray(from, from + N * hd), to);
      this.v.set(vNew.subarray(from, from + N * hd), to);
    }
    this.valid[slot] = 1;
    this.count += 1;
  }
}

function pick(feeds, names) {
  const out = {};
  for (const name of names) {
    if (!(name in feeds)) throw new WorldError(`a graph asks for input ${name}, which this page does not feed; export again`);
    out[name] = feeds[name];
  }
  return out;
}
