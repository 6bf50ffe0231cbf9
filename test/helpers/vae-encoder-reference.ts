/**
 * @file An independent float64 reference of the AutoencoderKL encoder (diffusers `Encoder`), written as plain loops
 * from the module definitions, to check the ONNX encoder graph (no diffusers fixture exists for the encoder).
 *
 * Every activation is a {@link T4} `[B, C, H, W]` in float64; weights are read by diffusers name and widened to
 * float64. Slow on purpose (no tricks): use small images.
 */
import type { WeightReader } from '../../engines/compiler/onnx/nn.ts';

/** A float64 NCHW tensor. */
export interface T4 {
  data: Float64Array;
  b: number;
  c: number;
  h: number;
  w: number;
}

const EPS = 1e-6;

function weights(w: WeightReader, name: string): Float64Array {
  return Float64Array.from(w.readF32(name));
}

/** Conv2d with square kernel `k`, `stride`, and zero padding `[top, left, bottom, right]`. */
export function conv(
  x: T4,
  w: WeightReader,
  prefix: string,
  k: number,
  stride: number,
  pads: [number, number, number, number],
): T4 {
  const wt = weights(w, `${prefix}.weight`); // [Cout, Cin, k, k]
  const bias = weights(w, `${prefix}.bias`);
  const cout = bias.length;
  const [pt, pl, pb, pr] = pads;
  const ho = Math.floor((x.h + pt + pb - k) / stride) + 1;
  const wo = Math.floor((x.w + pl + pr - k) / stride) + 1;
  const out = new Float64Array(x.b * cout * ho * wo);
  for (let n = 0; n < x.b; n++) {
    for (let o = 0; o < cout; o++) {
      for (let y = 0; y < ho; y++) {
        for (let xx = 0; xx < wo; xx++) {
          let acc = bias[o]!;
          for (let i = 0; i < x.c; i++) {
            for (let dy = 0; dy < k; dy++) {
              const sy = y * stride + dy - pt;
              if (sy < 0 || sy >= x.h) continue;
              for (let dx = 0; dx < k; dx++) {
                const sx = xx * stride + dx - pl;
                if (sx < 0 || sx >= x.w) continue;
                acc += wt[((o * x.c + i) * k + dy) * k + dx]! * x.data[((n * x.c + i) * x.h + sy) * x.w + sx]!;
              }
            }
          }
          out[((n * cout + o) * ho + y) * wo + xx] = acc;
        }
      }
    }
  }
  return { data: out, b: x.b, c: cout, h: ho, w: wo };
}

/** torch.nn.GroupNorm(groups, C, eps 1e-6): biased variance per (sample, group), then the channel affine. */
export function groupNorm(x: T4, w: WeightReader, prefix: string, groups: number): T4 {
  const gamma = weights(w, `${prefix}.weight`);
  const beta = weights(w, `${prefix}.bias`);
  const per = x.c / groups;
  const plane = x.h * x.w;
  const out = new Float64Array(x.data.length);
  for (let n = 0; n < x.b; n++) {
    for (let g = 0; g < groups; g++) {
      const start = (n * x.c + g * per) * plane;
      const count = per * plane;
      let mean = 0;
      for (let i = 0; i < count; i++) mean += x.data[start + i]!;
      mean /= count;
      let variance = 0;
      for (let i = 0; i < count; i++) variance += (x.data[start + i]! - mean) ** 2;
      variance /= count;
      const inv = 1 / Math.sqrt(variance + EPS);
      for (let i = 0; i < count; i++) {
        const ch = g * per + Math.floor(i / plane);
        out[start + i] = (x.data[start + i]! - mean) * inv * gamma[ch]! + beta[ch]!;
      }
    }
  }
  return { ...x, data: out };
}

/** SiLU `x·σ(x)`. */
export function silu(x: T4): T4 {
  return { ...x, data: x.data.map((v) => v / (1 + Math.exp(-v))) };
}

function add(a: T4, b: T4): T4 {
  return { ...a, data: a.data.map((v, i) => v + b.data[i]!) };
}

const SAME3: [number, number, number, number] = [1, 1, 1, 1];

/** ResnetBlock2D without time embedding, output scale 1. */
export function resnet(x: T4, w: WeightReader, prefix: string, groups: number): T4 {
  let h = conv(silu(groupNorm(x, w, `${prefix}.norm1`, groups)), w, `${prefix}.conv1`, 3, 1, SAME3);
  h = conv(silu(groupNorm(h, w, `${prefix}.norm2`, groups)), w, `${prefix}.conv2`, 3, 1, SAME3);
  const shortcut = w.has(`${prefix}.conv_shortcut.weight`)
    ? conv(x, w, `${prefix}.conv_shortcut`, 1, 1, [0, 0, 0, 0])
    : x;
  return add(shortcut, h);
}

/** The mid block's single-head attention over the H·W positions, with its residual. */
export function attention(x: T4, w: WeightReader, prefix: string, groups: number): T4 {
  const normed = groupNorm(x, w, `${prefix}.group_norm`, groups);
  const c = x.c;
  const s = x.h * x.w;
  const proj = (name: string, tokens: Float64Array[]): Float64Array[] => {
    const wt = weights(w, `${prefix}.${name}.weight`); // [C, C]
    const bias = weights(w, `${prefix}.${name}.bias`);
    return tokens.map((t) => {
      const o = new Float64Array(c);
      for (let i = 0; i < c; i++) {
        let acc = bias[i]!;
        for (let j = 0; j < c; j++) acc += wt[i * c + j]! * t[j]!;
        o[i] = acc;
      }
      return o;
    });
  };
  const out = new Float64Array(x.data.length);
  for (let n = 0; n < x.b; n++) {
    // tokens[p] = the C features at position p of sample n
    const tokens = Array.from({ length: s }, (_, p) => {
      const t = new Float64Array(c);
      for (let ch = 0; ch < c; ch++) t[ch] = normed.data[(n * c + ch) * s + p]!;
      return t;
    });
    const q = proj('to_q', tokens);
    const k = proj('to_k', tokens);
    const v = proj('to_v', tokens);
    const scale = 1 / Math.sqrt(c);
    const attended = q.map((qi) => {
      const scores = k.map((kj) => qi.reduce((acc, val, d) => acc + val * kj[d]!, 0) * scale);
      const max = Math.max(...scores);
      const e = scores.map((sc) => Math.exp(sc - max));
      const sum = e.reduce((a, b) => a + b, 0);
      const o = new Float64Array(c);
      for (let j = 0; j < s; j++) for (let d = 0; d < c; d++) o[d] = o[d]! + (e[j]! / sum) * v[j]![d]!;
      return o;
    });
    const projected = proj('to_out.0', attended);
    for (let p = 0; p < s; p++) {
      for (let ch = 0; ch < c; ch++) {
        const idx = (n * c + ch) * s + p;
        out[idx] = projected[p]![ch]! + x.data[idx]!;
      }
    }
  }
  return { ...x, data: out };
}

/** Encoder config fields the reference needs. */
export interface ReferenceEncoderConfig {
  blockOutChannels: readonly number[];
  layersPerBlock: number;
  normNumGroups: number;
  latentChannels: number;
}

/**
 * The encoder forward: conv_in → down blocks (resnets, then Downsample2D: pad right/bottom by one, 3×3 stride-2
 * conv) → mid (resnet, attention, resnet) → GroupNorm → SiLU → conv_out, split into mean and clamped log-variance.
 */
export function encodeReference(image: T4, w: WeightReader, cfg: ReferenceEncoderConfig): { mean: T4; logvar: T4 } {
  const g = cfg.normNumGroups;
  let h = conv(image, w, 'encoder.conv_in', 3, 1, SAME3);
  const n = cfg.blockOutChannels.length;
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < cfg.layersPerBlock; j++) h = resnet(h, w, `encoder.down_blocks.${i}.resnets.${j}`, g);
    if (i < n - 1) h = conv(h, w, `encoder.down_blocks.${i}.downsamplers.0.conv`, 3, 2, [0, 0, 1, 1]);
  }
  h = resnet(h, w, 'encoder.mid_block.resnets.0', g);
  h = attention(h, w, 'encoder.mid_block.attentions.0', g);
  h = resnet(h, w, 'encoder.mid_block.resnets.1', g);
  const moments = conv(silu(groupNorm(h, w, 'encoder.conv_norm_out', g)), w, 'encoder.conv_out', 3, 1, SAME3);
  const l = cfg.latentChannels;
  const plane = moments.h * moments.w;
  const mean = new Float64Array(moments.b * l * plane);
  const logvar = new Float64Array(moments.b * l * plane);
  for (let b = 0; b < moments.b; b++) {
    for (let i = 0; i < l * plane; i++) {
      mean[b * l * plane + i] = moments.data[b * 2 * l * plane + i]!;
      logvar[b * l * plane + i] = Math.min(20, Math.max(-30, moments.data[(b * 2 + 1) * l * plane + i]!));
    }
  }
  const shape = { b: moments.b, c: l, h: moments.h, w: moments.w };
  return { mean: { data: mean, ...shape }, logvar: { data: logvar, ...shape } };
}
