// MessagePack for the web player's server backend (js/remote.js): the types the `reverie serve` protocol uses
// (docs/SERVE.md): nil, bool, integers, float64, str, bin, array and map, written in the smallest form as Python's
// msgpack writes them, so the bytes are Python's. No run-time download and no bundler: a page file of its own.
//
//   encode({ t: "step", world: 0, action: new Float32Array([0, 1]), seq: 7 }) -> Uint8Array
//   decode(bytes, { maxBinLen: 1 << 20 }) -> { t: "frame", data: Uint8Array, ... }
//
// Encoding: a JS number that is an integer within 2^53 is a msgpack int, any other number a float64; a Float32Array or
// Float64Array (or a number wrapped in float()) is written as float64s, whole values included (the protocol's
// action is a list of floats); a Uint8Array is bin; an array is an array; a plain object is a map of its own keys.
// Decoding reads one whole value, refusing anything past the limits (the protocol's by default), nesting deeper than
// `maxDepth`, invalid UTF-8, map keys that are not strings, integers past 2^53, ext types and trailing bytes; float32
// values are read too. Strings and bins are copies: a decoded bin does not keep the message's buffer alive.

export const LIMITS = Object.freeze({ maxStrLen: 256, maxBinLen: 64 * 1024, maxArrayLen: 64, maxMapLen: 16,
                                      maxDepth: 2 });   // a map of lists: the deepest a request nests

export class MsgpackError extends Error {
  constructor(message) {
    super(message);
    this.name = "MsgpackError";
  }
}

/** A number to be written as a float64 even when it is whole. */
export class Float {
  constructor(value) { this.value = Number(value); }
}
export const float = (value) => new Float(value);

const utf8 = new TextEncoder();
const utf8Strict = new TextDecoder("utf-8", { fatal: true });

// ---- encoding ------------------------------------------------------------------------------------------------------

class Writer {
  constructor() { this.bytes = new Uint8Array(256); this.view = new DataView(this.bytes.buffer); this.length = 0; }

  room(n) {
    if (this.length + n <= this.bytes.length) return;
    const bigger = new Uint8Array(Math.max(this.bytes.length * 2, this.length + n));
    bigger.set(this.bytes.subarray(0, this.length));
    this.bytes = bigger;
    this.view = new DataView(bigger.buffer);
  }

  u8(v) { this.room(1); this.view.setUint8(this.length, v); this.length += 1; }
  u16(v) { this.room(2); this.view.setUint16(this.length, v); this.length += 2; }
  u32(v) { this.room(4); this.view.setUint32(this.length, v); this.length += 4; }
  u64(v) { this.room(8); this.view.setBigUint64(this.length, BigInt(v)); this.length += 8; }
  i64(v) { this.room(8); this.view.setBigInt64(this.length, BigInt(v)); this.length += 8; }
  f64(v) { this.u8(0xcb); this.room(8); this.view.setFloat64(this.length, v); this.length += 8; }
  raw(b) { this.room(b.length); this.bytes.set(b, this.length); this.length += b.length; }

  /** A length-prefixed header: the fixed form below `fixed`, else the 8-, 16- or 32-bit form (0 code: none). */
  header(n, fixBase, fixed, c8, c16, c32, what) {
    if (n < fixed) this.u8(fixBase | n);
    else if (c8 && n < 0x100) { this.u8(c8); this.u8(n); }
    else if (n < 0x10000) { this.u8(c16); this.u16(n); }
    else if (n < 0x100000000) { this.u8(c32); this.u32(n); }
    else throw new MsgpackError(`msgpack: ${what} of ${n} items is too long to write`);
  }

  int(v) {
    if (!Number.isSafeInteger(v)) throw new MsgpackError(`msgpack: integer ${v} is past 2^53 and cannot be written exactly`);
    if (v >= 0) {
      if (v < 0x80) this.u8(v);
      else if (v < 0x100) { this.u8(0xcc); this.u8(v); }
      else if (v < 0x10000) { this.u8(0xcd); this.u16(v); }
      else if (v < 0x100000000) { this.u8(0xce); this.u32(v); }
      else { this.u8(0xcf); this.u64(v); }
    } else if (v >= -32) this.u8(v & 0xff);
    else if (v >= -0x80) { this.u8(0xd0); this.u8(v & 0xff); }
    else if (v >= -0x8000) { this.u8(0xd1); this.u16(v & 0xffff); }
    else if (v >= -0x80000000) { this.u8(0xd2); this.u32(v >>> 0); }
    else { this.u8(0xd3); this.i64(v); }
  }

  value(v, path) {
    if (v === null || v === undefined) this.u8(0xc0);
    else if (v === false) this.u8(0xc2);
    else if (v === true) this.u8(0xc3);
    else if (typeof v === "number") { if (Number.isSafeInteger(v) && !Object.is(v, -0)) this.int(v); else this.f64(v); }
    else if (v instanceof Float) this.f64(v.value);
    else if (typeof v === "string") {
      const b = utf8.encode(v);
      this.header(b.length, 0xa0, 32, 0xd9, 0xda, 0xdb, "a string");
      this.raw(b);
    } else if (v instanceof Uint8Array) {
      this.header(v.length, 0, 0, 0xc4, 0xc5, 0xc6, "a bin");
      this.raw(v);
    } else if (v instanceof Float32Array || v instanceof Float64Array) {
      this.header(v.length, 0x90, 16, 0, 0xdc, 0xdd, "an array");
      for (const x of v) this.f64(x);
    } else if (Array.isArray(v)) {
      this.header(v.length, 0x90, 16, 0, 0xdc, 0xdd, "an array");
      v.forEach((x, i) => this.value(x, `${path}[${i}]`));
    } else if (typeof v === "object" && (Object.getPrototypeOf(v) === Object.prototype || Object.getPrototypeOf(v) === null)) {
      const entries = Object.entries(v).filter(([, x]) => x !== undefined);   // as JSON: an undefined field is absent
      this.header(entries.length, 0x80, 16, 0, 0xde, 0xdf, "a map");
      for (const [k, x] of entries) { this.value(k, path); this.value(x, `${path}.${k}`); }
    } else {
      throw new MsgpackError(`msgpack: ${path || "the value"} is a ${v?.constructor?.name ?? typeof v}, which the protocol does not carry`);
    }
  }
}

/** The msgpack bytes of `value`. */
export function encode(value) {
  const w = new Writer();
  w.value(value, "");
  return w.bytes.slice(0, w.length);
}

// ---- decoding ------------------------------------------------------------------------------------------------------

/** One msgpack value from `bytes` (Uint8Array or ArrayBuffer), within `limits` (LIMITS where not given). */
export function decode(bytes, limits = {}) {
  const lim = { ...LIMITS, ...limits };
  const b = bytes instanceof Uint8Array ? bytes : new Uint8Array(bytes);
  const view = new DataView(b.buffer, b.byteOffset, b.byteLength);
  let at = 0;

  const fail = (what) => { throw new MsgpackError(`msgpack: ${what} (at byte ${at} of ${b.length})`); };
  const need = (n) => { if (at + n > b.length) fail(`truncated: ${n} more bytes needed`); };
  const u8 = () => { need(1); return view.getUint8(at++); };
  const u16 = () => { need(2); const v = view.getUint16(at); at += 2; return v; };
  const u32 = () => { need(4); const v = view.getUint32(at); at += 4; return v; };
  const big = (v) => {
    if (v > BigInt(Number.MAX_SAFE_INTEGER) || v < BigInt(Number.MIN_SAFE_INTEGER)) fail(`integer ${v} is past 2^53`);
    return Number(v);
  };
  const take = (n, max, what) => {
    if (n > max) fail(`${what} of ${n} bytes is over the limit of ${max}`);
    need(n);
    const out = b.slice(at, at + n);
    at += n;
    return out;
  };
  const str = (n) => {
    const raw = take(n, lim.maxStrLen, "a string");
    try { return utf8Strict.decode(raw); } catch { return fail("a string is not valid UTF-8"); }
  };
  const count = (n, max, what, depth) => {
    if (n > max) fail(`${what} of ${n} items is over the limit of ${max}`);
    if (depth >= lim.maxDepth) fail(`${what} nested deeper than ${lim.maxDepth} levels`);
    return n;
  };
  const array = (n, depth) => {
    const out = new Array(count(n, lim.maxArrayLen, "an array", depth));
    for (let i = 0; i < n; i++) out[i] = value(depth + 1);
    return out;
  };
  const map = (n, depth) => {
    const out = {};
    count(n, lim.maxMapLen, "a map", depth);
    for (let i = 0; i < n; i++) {
      const key = value(depth + 1);
      if (typeof key !== "string") fail(`a map key is a ${typeof key}, not a string`);
      Object.defineProperty(out, key, { value: value(depth + 1), enumerable: true, writable: true, configurable: true });
    }
    return out;
  };

  function value(depth) {
    const c = u8();
    if (c < 0x80) return c;
    if (c >= 0xe0) return c - 0x100;
    if (c >= 0xa0 && c <= 0xbf) return str(c & 0x1f);
    if (c >= 0x90 && c <= 0x9f) return array(c & 0x0f, depth);
    if (c >= 0x80 && c <= 0x8f) return map(c & 0x0f, depth);
    switch (c) {
      case 0xc0: return null;
      case 0xc2: return false;
      case 0xc3: return true;
      case 0xc4: return take(u8(), lim.maxBinLen, "a bin");
      case 0xc5: return take(u16(), lim.maxBinLen, "a bin");
      case 0xc6: return take(u32(), lim.maxBinLen, "a bin");
      case 0xca: { need(4); const v = view.getFloat32(at); at += 4; return v; }
      case 0xcb: { need(8); const v = view.getFloat64(at); at += 8; return v; }
      case 0xcc: return u8();
      case 0xcd: return u16();
      case 0xce: return u32();
      case 0xcf: { need(8); const v = view.getBigUint64(at); at += 8; return big(v); }
      case 0xd0: { need(1); const v = view.getInt8(at); at += 1; return v; }
      case 0xd1: { need(2); const v = view.getInt16(at); at += 2; return v; }
      case 0xd2: { need(4); const v = view.getInt32(at); at += 4; return v; }
      case 0xd3: { need(8); const v = view.getBigInt64(at); at += 8; return big(v); }
      case 0xd9: return str(u8());
      case 0xda: return str(u16());
      case 0xdb: return str(u32());
      case 0xdc: return array(u16(), depth);
      case 0xdd: return array(u32(), depth);
      case 0xde: return map(u16(), depth);
      case 0xdf: return map(u32(), depth);
      default:
        at -= 1;
        return fail(`type byte 0x${c.toString(16)} (${c === 0xc1 ? "never used" : "an ext type"}) is not one the protocol uses`);
    }
  }

  const out = value(0);
  if (at !== b.length) fail(`${b.length - at} bytes after the value`);
  return out;
}
