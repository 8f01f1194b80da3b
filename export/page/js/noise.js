// Counter-based Gaussian noise, ported from engine/noise.py: a pure function of (seed, counter, stream, element).
// The integer hash (Wellons' "lowbias32") is the same bit for bit; the float math (Box-Muller) is rounded to float32
// at every operation, as the Python session's float32 arithmetic is. So a seed gives the page the noise the Python
// session draws (to the last bit of its log and cos).

const f32 = Math.fround;
const TWO_PI = f32(2 * Math.PI);
const INV_2_24 = 1 / 16777216;

function mix32(x) {
  x = (x ^ (x >>> 16)) >>> 0;
  x = Math.imul(x, 0x7feb352d) >>> 0;
  x = (x ^ (x >>> 15)) >>> 0;
  x = Math.imul(x, 0x846ca68b) >>> 0;
  return (x ^ (x >>> 16)) >>> 0;
}

/** The low 32 bits of a world's seed (an integer or BigInt, maybe above 2^53), as the hash reads it. */
export function seed32(seed) {
  return Number(BigInt(seed) & 0xffffffffn);
}

/** Uniforms in (0, 1) of one world into `out` (Float32Array): engine.noise._uniform for B = 1. */
function uniform(seed, counter, stream, out) {
  const key = mix32((seed ^ Math.imul(stream, 0x9e3779b9)) >>> 0);
  const ctr = mix32((key ^ (counter >>> 0)) >>> 0);
  for (let e = 0; e < out.length; e++) {
    let h = mix32((ctr + Math.imul(e, 0x632be5ab)) >>> 0);
    h = mix32((h ^ key) >>> 0);
    out[e] = f32(f32((h >>> 8) + 0.5) * INV_2_24);
  }
  return out;
}

/** Standard normal noise of `numel` elements for one world: engine.noise.counter_normal(seed, counter, shape, stream).
 *  `seed` is the world's 32-bit seed (seed32), `counter` its frame counter. */
export function counterNormal(seed, counter, numel, stream, out = new Float32Array(numel)) {
  const u1 = uniform(seed, counter, 2 * stream, new Float32Array(numel));
  const u2 = uniform(seed, counter, 2 * stream + 1, new Float32Array(numel));
  for (let i = 0; i < numel; i++) {
    const r = f32(Math.sqrt(f32(-2 * f32(Math.log(u1[i])))));
    out[i] = f32(r * f32(Math.cos(f32(TWO_PI * u2[i]))));
  }
  return out;
}
