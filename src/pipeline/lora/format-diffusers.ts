/**
 * @file diffusers / PEFT LoRA files (docs/FLUX_SPEC.md §7.1–7.2): `transformer.<module>.lora_A.weight [r, in]`,
 * `…lora_B.weight [out, r]`, optional `…lora_B.bias`, alphas from `<module>.alpha` keys (network alphas) or from
 * the `lora_adapter_metadata` header entry (PEFT `LoraConfig`: `r`, `lora_alpha`, `alpha_pattern`, `use_rslora`).
 * Also XLabs files (§7.5), whose `processor.*_lora*` pairs are PEFT-like without alphas.
 */
import type { FactorCollector } from './collect.ts';
import { LoraError } from './errors.ts';
import { splitBflPair } from './factor-math.ts';

const PREFIXES = ['transformer.', 'base_model.model.'];

/** Strips the component / PEFT wrapper prefixes diffusers and fal write. */
function moduleKey(key: string): string {
  let k = key;
  for (const p of PREFIXES) if (k.startsWith(p)) k = k.slice(p.length);
  return k;
}

/** PEFT adapter config fields that decide the scale. */
interface AdapterConfig {
  loraAlpha?: number;
  alphaPattern: Record<string, number>;
  useRslora: boolean;
}

/** Reads `lora_adapter_metadata` (flat, or with diffusers' `transformer.` key prefix). */
function adapterConfig(c: FactorCollector): AdapterConfig | undefined {
  const raw = c.reader.metadata.lora_adapter_metadata;
  if (!raw) return undefined;
  let json: Record<string, unknown>;
  try {
    json = JSON.parse(raw) as Record<string, unknown>;
  } catch (err) {
    throw new LoraError('invalid_file', `lora_adapter_metadata is not JSON: ${(err as Error).message}`, c.reader.label);
  }
  const field = (name: string): unknown => json[`transformer.${name}`] ?? json[name];
  const alpha = field('lora_alpha');
  const pattern = field('alpha_pattern');
  return {
    loraAlpha: typeof alpha === 'number' ? alpha : undefined,
    alphaPattern: pattern && typeof pattern === 'object' ? (pattern as Record<string, number>) : {},
    useRslora: field('use_rslora') === true,
  };
}

/** PEFT's pattern rule: a pattern key matches a module equal to it or ending in `.<key>` (keys may be regexes). */
function patternValue(patterns: Record<string, number>, module: string): number | undefined {
  for (const [key, value] of Object.entries(patterns)) {
    let hit = module === key || module.endsWith(`.${key}`);
    if (!hit) {
      try {
        hit = new RegExp(`^(.*\\.)?(${key})$`).test(module);
      } catch {
        hit = false;
      }
    }
    if (hit && typeof value === 'number') return value;
  }
  return undefined;
}

/** Parses a diffusers/PEFT file into `c`. Keys that are not `<module>.{lora_A,lora_B,alpha}` stay unmatched. */
export function parseDiffusers(c: FactorCollector): void {
  const config = adapterConfig(c);
  const groups = new Map<string, { a?: string; b?: string; bias?: string; alpha?: string }>();
  for (const key of c.reader.names()) {
    const m = /^(.*)\.(lora_A\.weight|lora_B\.weight|lora_B\.bias|alpha)$/.exec(moduleKey(key));
    if (!m) continue;
    const g = groups.get(m[1]!) ?? {};
    const slot = { 'lora_A.weight': 'a', 'lora_B.weight': 'b', 'lora_B.bias': 'bias', alpha: 'alpha' }[m[2]!] as 'a';
    g[slot] = key;
    groups.set(m[1]!, g);
  }
  for (const [module, g] of groups) {
    // A half pair or an unknown module leaves its keys unused, so the caller names them.
    if (!g.a || !g.b || !c.spec.linears.has(module)) continue;
    const pair = c.pair(g.a, g.b, g.bias);
    let alpha: number | undefined;
    if (g.alpha) {
      alpha = c.scalar(g.alpha);
      c.use(g.alpha);
    } else if (config) {
      alpha = patternValue(config.alphaPattern, module) ?? config.loraAlpha;
    }
    const denom = config?.useRslora ? Math.sqrt(pair.rank) : pair.rank;
    c.add(module, pair, alpha === undefined ? 1 : alpha / denom, [g.a, g.b]);
  }
}

/** Parses an XLabs file into `c`: double-block `qkv_lora{1,2}` / `proj_lora{1,2}`, single-block `qkv_lora` / `proj_lora`. */
export function parseXlabs(c: FactorCollector): void {
  const d = c.spec.linears.get('x_embedder')?.outFeatures ?? 0;
  const names = new Set(c.reader.names());
  for (const key of names) {
    const stripped = key.startsWith('diffusion_model.') ? key.slice('diffusion_model.'.length) : key;
    const m = /^(double|single)_blocks\.(\d+)\.processor\.(qkv|proj)_lora([12]?)\.down\.weight$/.exec(stripped);
    if (!m) continue;
    const [, kind, n, what, stream] = m as unknown as [string, string, string, string, string];
    const upKey = key.replace(/\.down\.weight$/, '.up.weight');
    if (!names.has(upKey)) continue;
    let targets: string[];
    if (kind === 'double') {
      const p = `transformer_blocks.${n}.attn`;
      if (stream === '') continue;
      const img = stream === '1'; // lora1 = image stream, lora2 = text stream
      targets =
        what === 'qkv'
          ? img
            ? [`${p}.to_q`, `${p}.to_k`, `${p}.to_v`]
            : [`${p}.add_q_proj`, `${p}.add_k_proj`, `${p}.add_v_proj`]
          : [img ? `${p}.to_out.0` : `${p}.to_add_out`];
    } else {
      if (stream !== '') continue;
      const p = `single_transformer_blocks.${n}`;
      targets = what === 'qkv' ? [`${p}.attn.to_q`, `${p}.attn.to_k`, `${p}.attn.to_v`] : [`${p}.proj_out`];
    }
    if (!targets.every((t) => c.spec.linears.has(t))) continue;
    const pair = c.pair(key, upKey);
    // qkv: `up` rows split into three equal parts, `down` shared (no alphas in XLabs: scale 1).
    const parts = targets.map((module) => ({ module, outFeatures: targets.length > 1 ? d : pair.outFeatures }));
    if (targets.length > 1 && pair.outFeatures !== 3 * d) {
      throw new LoraError(
        'shape_mismatch',
        `${upKey} has ${pair.outFeatures} rows, expected 3 × ${d}`,
        c.reader.label,
        [upKey],
      );
    }
    for (const s of splitBflPair(pair, { parts })) c.add(s.module, s.pair, 1, [key, upKey]);
  }
}
