#!/usr/bin/env node
/**
 * A stand-in for `fluxql-engine --serve` on machines without a GPU: speaks the framed protocol of
 * engines/cuda/PROTOCOL.md, checks request payload sizes as the engine does (an `error` frame otherwise), and appends
 * every request (header, payload as base64) as one JSON line to the file named by FAKE_ENGINE_LOG. Its numbers are
 * not a model's: `encode` answers `0.5 · eps` (so a test can see which normals were sent), `latents` zeros, `decode`
 * mid-grey. Used by test/unit/pipeline/cuda-edit.test.ts to check what the executor sends for edits.
 * LoRAs (test/unit/pipeline/cuda-lora.test.ts): `lora_load` checks its payload size against the layer list (several
 * frames with `more` / `append` as the engine takes them) and ranks 1..256; `prepare`'s `loras` must name loaded
 * LoRAs (`not_found`). FAKE_ENGINE_LORA_REFUSE=<code> refuses every `lora_load` with that LoRA error code;
 * FAKE_ENGINE_LORA_MAX=<n> refuses (`unsupported`, memory) a load beyond n LoRAs held.
 * BFL Control: `lora_load`'s `norms` ([{norm, dim}], their weights after the layers' data) count in the payload size;
 * a LoRA whose `x_embedder` reads 128 inputs is a control LoRA, and `prepare` needs `control` latents exactly when
 * its set holds one (`bad_argument` otherwise, as the engine answers).
 * Step caching (`prepare`'s `step_cache`): the engine's rule (engine.h StepCache) with the first block's relative
 * change taken as FAKE_CHANGE (0.5) every step, so a threshold above it caches every step the rule allows; counters
 * in `progress` / `stepped` / `released` as the engine reports them. FAKE_ENGINE_CACHE_CHANGES=<c0,c1,...> gives the
 * change per step index instead (the last value for later steps).
 * Image error (test/unit/pipeline/cuda-step-cache-modes.test.ts, the step-cache calibration): a decoded sample's
 * bytes are raised by FAKE_ENGINE_CACHED_STEP_ERR (0) grey levels per cached step of its job plus
 * FAKE_ENGINE_PLAN_ERR (0) when its job's plan makes any layer fp8 or fp8row (rounded, at most 255), so PSNR against the base
 * image falls with caching as a model's would.
 * Per-job precision plans: `load`'s `plans` ({name: preset | rules}) are kept and reported in `loaded` and `info`
 * (`layers`: 1 for a preset name (a stand-in), else the rules' fp8 and fp8row entries; `bytes` = `layers`); `prepare`'s `plan`
 * must name one of them (an `error` frame otherwise, as the engine answers).
 * Calibration (`calibrate`, test/unit/pipeline/cuda-calibration.test.ts): bf16 engines only, `prepare`'s payload.
 * The layer list is the engine's (every transformer Linear of the loaded config, engine names and order); each
 * layer's fp8 error is drawn from a hash of its name and the request's inputs (size, batch, sigmas, payload), spread
 * over 1e-4 .. 1e-2, and its times from its shape and the rows (fp8 0.6x + 0.5 us: tiny layers gain nothing);
 * fp8row (`rel_err_fp8row`, `ms_fp8row`): a third of the fp8 error, 0.7x + 1 us.
 * `verify` plans (presets or rules, first matching glob wins) measure sqrt(sum e^2) of the layers they make fp8 or
 * fp8row (each layer's error under its type),
 * times FAKE_ENGINE_VERIFY_SCALE (1): > 1 stands for errors that add coherently. FAKE_ENGINE_CALIBRATE_FAIL=<msg>
 * answers every `calibrate` with a non-fatal error; `exit` ends the process as a device fault does.
 * Joining (`join`, test/unit/pipeline/cuda-join.test.ts): plain jobs take new samples of the same size, T5 length and
 * LoRA set, each sample with its own step and schedule (`samples` / `sample_step` / `sample_steps` in the answers);
 * `latents` / `decode` / `release` take `samples` (ids). A sample's latents are all its id and its image bytes
 * 10 * (id + 1), so a test sees which sample it got.
 */
import { appendFileSync, existsSync, readFileSync } from 'node:fs';

const log = process.env.FAKE_ENGINE_LOG;
const jobs = new Map();
let nextJob = 1;
let pending = Buffer.alloc(0);
/** LoRA name → { control } (its x_embedder reads [latents; control latents]). */
const loras = new Map();
const staged = new Map();
/** The loaded model's named plans (null before `load`). */
let plans = null;
/** The loaded model's precision and transformer Linears ({name, in, out}, engine order). */
let precision = null;
let linears = [];
/** The first block's relative change per step index, for the step-cache rule (the last value for later steps). */
const FAKE_CHANGES = (process.env.FAKE_ENGINE_CACHE_CHANGES ?? '0.5').split(',').map(Number);
const FAKE_CHANGE = (step) => FAKE_CHANGES[Math.min(step, FAKE_CHANGES.length - 1)];
/** Grey levels a decoded image moves per cached step and under an fp8 plan. */
const CACHED_STEP_ERR = Number(process.env.FAKE_ENGINE_CACHED_STEP_ERR ?? 0);
const PLAN_ERR = Number(process.env.FAKE_ENGINE_PLAN_ERR ?? 0);

function send(header, payload = Buffer.alloc(0)) {
  const json = Buffer.from(JSON.stringify(header), 'utf8');
  const prefix = Buffer.alloc(8);
  prefix.writeUInt32LE(json.length, 0);
  prefix.writeUInt32LE(payload.length, 4);
  process.stdout.write(Buffer.concat([prefix, json, payload]));
}

function handle(h, payload) {
  if (log) appendFileSync(log, `${JSON.stringify({ header: h, payload: payload.toString('base64') })}\n`);
  const id = h.id;
  const fail = (message) => send({ op: 'error', id, message, fatal: false });
  const loraFail = (code, message, keys = []) =>
    send({ op: 'error', id, message, fatal: false, lora_code: code, keys });
  const loraState = () => ({ lora_bytes: 0, lora_max_bytes: 0, loras: [...loras.keys()] });
  switch (h.op) {
    case 'info':
      return send({
        op: 'info',
        id,
        protocol: 1,
        device: 'fake',
        compute_capability: '0.0',
        memory_total_bytes: 0,
        memory_free_bytes: 0,
        cuda_runtime: 0,
        loaded: plans !== null,
        precision: null,
        attention: null,
        jobs: jobs.size,
        ...(plans ? { plans: planList() } : {}),
      });
    case 'load':
      plans = new Map(Object.entries(h.plans ?? {}));
      precision = h.precision ?? 'bf16';
      linears = transformerLinears(h);
      return send({
        op: 'loaded',
        id,
        device: 'fake',
        precision: h.precision ?? 'bf16',
        weights_bytes: 0,
        ms: 0,
        plans: planList(),
      });
    case 'encode': {
      const px = h.batch * 3 * h.height * h.width;
      const ne = h.batch * 16 * (h.height / 8) * (h.width / 8);
      const withNoise = h.noise === 'payload';
      if (payload.length !== 4 * (px + (withNoise ? ne : 0))) return fail('encode payload size');
      const out = new Float32Array(ne);
      if (withNoise) {
        const eps = new Float32Array(
          payload.buffer.slice(payload.byteOffset + 4 * px, payload.byteOffset + payload.length),
        );
        for (let i = 0; i < ne; i++) out[i] = Math.fround(0.5 * eps[i]);
      }
      const L = (h.height / 16) * (h.width / 16);
      return send(
        { op: 'encoded', id, output: 'latents', format: 'f32', shape: [h.batch, L, 64], ms: 0 },
        Buffer.from(out.buffer),
      );
    }
    case 'lora_load': {
      let floats = 0;
      for (const l of h.layers) floats += l.rank * l.in + l.out * l.rank + (l.bias ? l.out : 0);
      for (const n of h.norms ?? []) floats += n.dim;
      if (payload.length !== 4 * floats) return fail(`lora_load payload must be ${4 * floats} bytes`);
      const frames = (h.append ? (staged.get(h.name) ?? []) : []).concat([h.layers]);
      if (h.more) {
        staged.set(h.name, frames);
        return send({ op: 'lora_staged', id, name: h.name, frames: frames.length });
      }
      staged.delete(h.name);
      const layers = frames.flat();
      const bad = layers.filter((l) => l.rank < 1 || l.rank > 256).map((l) => l.layer);
      if (bad.length > 0) return loraFail('bad_rank', `${h.name}: rank outside 1..256`, bad);
      const refuse = process.env.FAKE_ENGINE_LORA_REFUSE;
      if (refuse) return loraFail(refuse, `${h.name}: refused (${refuse})`, [layers[0]?.layer ?? '']);
      const max = Number(process.env.FAKE_ENGINE_LORA_MAX ?? Number.POSITIVE_INFINITY);
      if (!loras.has(h.name) && loras.size >= max) return loraFail('unsupported', `${h.name}: LoRA memory limit`);
      const control = layers.some((l) => l.layer === 'x_embedder' && l.in === 128);
      loras.set(h.name, { control });
      return send({
        op: 'lora_loaded',
        id,
        name: h.name,
        layers: layers.length,
        norms: (h.norms ?? []).length,
        bytes: 4 * floats,
        ...loraState(),
      });
    }
    case 'lora_unload': {
      const was = loras.delete(h.name);
      return send({ op: 'lora_unloaded', id, name: h.name, unloaded: was, ...loraState() });
    }
    case 'prepare': {
      if (h.plan !== undefined && h.plan !== null && h.plan !== '' && !plans?.has(h.plan))
        return fail(
          `unknown plan '${h.plan}' (plans given at load: ${[...(plans?.keys() ?? [])].join(', ') || 'none'})`,
        );
      for (const l of h.loras ?? []) {
        if (!loras.has(l.name)) return loraFail('not_found', `${l.name}: LoRA not loaded on the engine`, [l.name]);
      }
      if (h.branch_bf16 !== undefined && typeof h.branch_bf16 !== 'boolean')
        return fail('branch_bf16 must be a boolean');
      const rows = h.true_cfg ? 2 * h.batch : h.batch;
      if (h.true_cfg && h.true_cfg.length !== h.batch) return fail('true_cfg must hold one scale per sample');
      const L = (h.height / 16) * (h.width / 16);
      const lat = h.batch * L * 64;
      const need =
        4 *
        (rows * (77 + h.t5_len) +
          (h.latents === 'payload' ? lat : 0) +
          (h.inpaint ? 3 * lat : 0) +
          (h.control ? lat : 0));
      if (payload.length !== need) return fail(`prepare payload must be ${need} bytes, got ${payload.length}`);
      const controlSet = (h.loras ?? []).some((l) => loras.get(l.name)?.control);
      if (controlSet && !h.control)
        return loraFail('bad_argument', 'the LoRA set holds a BFL Control LoRA: prepare needs control latents');
      if (!controlSet && h.control)
        return loraFail('bad_argument', "control latents need a BFL Control LoRA in the job's LoRA set");
      const sc = h.step_cache;
      if (sc !== undefined && sc !== null && (typeof sc !== 'object' || typeof sc.threshold !== 'number'))
        return fail('step_cache must be {threshold, warmup_steps?, max_consecutive?}');
      if (sc && !(sc.threshold >= 0)) return fail('step_cache: threshold must be finite and >= 0');
      const cache = sc
        ? {
            threshold: sc.threshold,
            warmup: sc.warmup_steps ?? 1,
            maxConsecutive: sc.max_consecutive ?? 1,
            have: false,
            skipped: 0,
            full: 0,
            cached: 0,
            last: false,
          }
        : undefined;
      const job = nextJob++;
      const steps = h.sigmas.length - 1;
      const j = {
        plan: h.plan ?? null,
        branchBf16: h.branch_bf16 === true,
        L,
        height: h.height,
        width: h.width,
        t5Len: h.t5_len,
        loras: JSON.stringify(h.loras ?? []),
        plain: !h.true_cfg && !h.inpaint && !h.control && !cache,
        steps,
        step: 0,
        cache,
        samples: Array.from({ length: h.batch }, (_, i) => ({ id: i, step: 0, steps })),
        nextSample: h.batch,
      };
      jobs.set(job, j);
      return send({ op: 'prepared', id, job, steps, ms: 0, ...sampleFields(j) });
    }
    case 'calibrate':
      return calibrate(h, payload, fail);
    case 'join': {
      const j = jobs.get(h.job);
      if (!j) return fail(`unknown job ${h.job}`);
      if (!j.plain) return fail('join: the job has true CFG, inpainting, control latents or step caching');
      if (h.true_cfg || h.inpaint || h.control || h.step_cache) return fail('join: plain samples only');
      if (h.height !== j.height || h.width !== j.width) return fail("join: size differs from the job's");
      if (h.t5_len !== j.t5Len) return fail("join: t5_len differs from the job's");
      if (JSON.stringify(h.loras ?? []) !== j.loras) return fail("join: the LoRA set differs from the job's");
      if ((h.plan ?? null) !== j.plan) return fail("join: the precision plan differs from the job's");
      if ((h.branch_bf16 === true) !== j.branchBf16) return fail("join: branch_bf16 differs from the job's");
      const need = 4 * (h.batch * (77 + h.t5_len) + (h.latents === 'payload' ? h.batch * j.L * 64 : 0));
      if (payload.length !== need) return fail(`join payload must be ${need} bytes, got ${payload.length}`);
      const steps = h.sigmas.length - 1;
      const added = [];
      for (let b = 0; b < h.batch; b++) {
        added.push(j.nextSample);
        j.samples.push({ id: j.nextSample++, step: 0, steps });
      }
      j.steps = Math.max(j.steps, j.step + steps);
      return send({
        op: 'joined',
        id,
        job: h.job,
        added,
        batch: j.samples.length,
        steps,
        step: j.step,
        job_steps: j.steps,
        ms: 0,
        ...sampleFields(j),
      });
    }
    case 'quit':
      send({ op: 'bye', id });
      return process.exit(0);
    default: {
      const j = jobs.get(h.job);
      if (!j) return fail(`unknown job ${h.job}`);
      if (h.op === 'step') {
        const count = h.count ?? j.steps - j.step;
        for (let i = 0; i < count && j.step < j.steps; i++) {
          if (j.cache) stepCached(j);
          j.step++;
          for (const x of j.samples) if (x.step < x.steps) x.step++;
          send({
            op: 'progress',
            id,
            job: h.job,
            step: j.step,
            steps: j.steps,
            ms: 0,
            ...cacheFields(j, true),
            ...sampleFields(j),
          });
        }
        return send({
          op: 'stepped',
          id,
          job: h.job,
          step: j.step,
          steps: j.steps,
          ms: 0,
          ...cacheFields(j),
          ...sampleFields(j),
        });
      }
      const picked = h.samples ? h.samples.map((sid) => j.samples.find((x) => x.id === sid)) : j.samples;
      if (picked.some((x) => !x)) return fail('unknown sample');
      const ids = picked.map((x) => x.id);
      if (h.op === 'latents') {
        const per = j.L * 64;
        const out = new Float32Array(ids.length * per);
        for (const [i, sid] of ids.entries()) out.fill(sid, i * per, (i + 1) * per);
        return send(
          { op: 'latents', id, job: h.job, format: 'f32', shape: [ids.length, j.L, 64], samples: ids },
          Buffer.from(out.buffer),
        );
      }
      if (h.op === 'decode') {
        const per = j.height * j.width * 3;
        const out = Buffer.alloc(ids.length * per);
        const fp8Plan = j.plan !== null && j.plan !== '' && quantLayersOf(plans.get(j.plan)).length > 0;
        const err = (j.cache ? CACHED_STEP_ERR * j.cache.cached : 0) + (fp8Plan ? PLAN_ERR : 0);
        for (const [i, sid] of ids.entries())
          out.fill(Math.min(255, ((10 * (sid + 1)) % 256) + Math.round(err)), i * per, (i + 1) * per);
        return send(
          {
            op: 'image',
            id,
            job: h.job,
            format: 'rgb8',
            batch: ids.length,
            height: j.height,
            width: j.width,
            samples: ids,
            ms: 0,
          },
          out,
        );
      }
      if (h.op === 'release') {
        if (h.samples && picked.length < j.samples.length && !j.plain)
          return fail('release: only plain text-to-image jobs release a subset of their samples');
        j.samples = j.samples.filter((x) => !ids.includes(x.id));
        if (j.samples.length === 0) jobs.delete(h.job);
        else j.steps = j.step + Math.max(...j.samples.map((x) => x.steps - x.step));
        const remaining = j.samples.map((x) => x.id);
        return send({ op: 'released', id, job: h.job, ...cacheFields(j), samples: ids, remaining });
      }
      return fail(`unknown op ${h.op}`);
    }
  }
}

function planList() {
  return [...(plans?.keys() ?? [])].sort().map((name) => {
    const spec = plans.get(name);
    const layers = /[=;]/.test(spec)
      ? spec.split(';').filter((r) => r.endsWith('=fp8') || r.endsWith('=fp8row')).length
      : 1;
    return { name, layers, bytes: layers };
  });
}

/** The fp8 preset's globs (engines/cuda/src/precision_plan.cpp). */
const FP8_PRESET = [
  'transformer/transformer_blocks.*.attn.to_q+*',
  'transformer/transformer_blocks.*.attn.add_q_proj+*',
  'transformer/transformer_blocks.*.ff.net.0.proj',
  'transformer/transformer_blocks.*.ff_context.net.0.proj',
  'transformer/single_transformer_blocks.*.attn.to_q+*',
  'transformer/single_transformer_blocks.*.proj_mlp',
];

/** The transformer's Linears as the engine lists them, from the load spec's (or folder's) transformer config. */
function transformerLinears(h) {
  let c = h.spec?.components?.transformer?.config;
  if (!c && typeof h.model === 'string' && existsSync(`${h.model}/transformer/config.json`))
    c = JSON.parse(readFileSync(`${h.model}/transformer/config.json`, 'utf8'));
  if (!c) return [];
  const d = c.num_attention_heads * c.attention_head_dim;
  const out = [];
  const add = (name, i, o) => out.push({ name: `transformer/${name}`, in: i, out: o });
  const stacked = (p, parts) => parts.map((x) => `${p}.${x}`).join('+');
  add('x_embedder', c.in_channels, d);
  add('context_embedder', c.joint_attention_dim, d);
  add('time_text_embed.timestep_embedder.linear_1', 256, d);
  add('time_text_embed.timestep_embedder.linear_2', d, d);
  if (c.guidance_embeds) {
    add('time_text_embed.guidance_embedder.linear_1', 256, d);
    add('time_text_embed.guidance_embedder.linear_2', d, d);
  }
  add('time_text_embed.text_embedder.linear_1', c.pooled_projection_dim, d);
  add('time_text_embed.text_embedder.linear_2', d, d);
  for (let i = 0; i < c.num_layers; i++) {
    const b = `transformer_blocks.${i}`;
    add(`${b}.norm1.linear`, d, 6 * d);
    add(`${b}.norm1_context.linear`, d, 6 * d);
    add(stacked(b, ['attn.to_q', 'attn.to_k', 'attn.to_v']), d, 3 * d);
    add(stacked(b, ['attn.add_q_proj', 'attn.add_k_proj', 'attn.add_v_proj']), d, 3 * d);
    add(`${b}.attn.to_out.0`, d, d);
    add(`${b}.attn.to_add_out`, d, d);
    add(`${b}.ff.net.0.proj`, d, 4 * d);
    add(`${b}.ff.net.2`, 4 * d, d);
    add(`${b}.ff_context.net.0.proj`, d, 4 * d);
    add(`${b}.ff_context.net.2`, 4 * d, d);
  }
  for (let i = 0; i < c.num_single_layers; i++) {
    const b = `single_transformer_blocks.${i}`;
    add(`${b}.norm.linear`, d, 3 * d);
    add(stacked(b, ['attn.to_q', 'attn.to_k', 'attn.to_v']), d, 3 * d);
    add(`${b}.proj_mlp`, d, 4 * d);
    add(`${b}.proj_out`, 5 * d, d);
  }
  add('norm_out.linear', d, 2 * d);
  add('proj_out', d, c.out_channels ?? c.in_channels);
  return out;
}

/** The engine's glob (`*`: any text), whole name. */
function globMatch(pattern, name) {
  const re = pattern
    .split('*')
    .map((p) => p.replace(/[.+?^${}()|[\]\\]/g, '\\$&'))
    .join('.*');
  return new RegExp(`^${re}$`).test(name);
}

/** The fp8all preset's rules (engines/cuda/src/plan_variants.cu kFp8AllRules). */
const FP8ALL_RULES =
  'transformer/transformer_blocks.*.norm1*=bf16;transformer/single_transformer_blocks.*.norm*=bf16;' +
  'transformer/transformer_blocks.*=fp8;transformer/single_transformer_blocks.*=fp8';

/**
 * The layers a plan (preset or rules) makes fp8 or fp8row, each with its type; throws on a malformed rule, as the
 * engine refuses it. The `fp8row` / `fp8rowall` presets: the `fp8` / `fp8all` layers in fp8row.
 */
function quantLayersOf(spec) {
  if (spec === 'bf16') return [];
  if (spec === 'fp8' || spec === 'fp8row') {
    const type = spec;
    return linears.filter((l) => FP8_PRESET.some((g) => globMatch(g, l.name))).map((l) => ({ ...l, type }));
  }
  if (spec === 'fp8rowall') return quantLayersOf('fp8all').map((l) => ({ ...l, type: 'fp8row' }));
  const rules = (spec === 'fp8all' ? FP8ALL_RULES : spec)
    .split(';')
    .filter(Boolean)
    .map((r) => {
      const eq = r.lastIndexOf('=');
      const type = r.slice(eq + 1);
      if (eq < 0 || !['bf16', 'fp8', 'fp8row', 'f32'].includes(type))
        throw new Error(`precision plan rule needs glob=type: ${r}`);
      return [r.slice(0, eq), type];
    });
  return linears
    .map((l) => ({ ...l, type: rules.find(([g]) => globMatch(g, l.name))?.[1] }))
    .filter((l) => l.type === 'fp8' || l.type === 'fp8row');
}

/** 32-bit FNV-1a of a string, in [0, 1). */
function unit(text) {
  let x = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) x = Math.imul(x ^ text.charCodeAt(i), 0x01000193) >>> 0;
  return x / 2 ** 32;
}

/** `calibrate` (see the file header). */
function calibrate(h, payload, fail) {
  const id = h.id;
  if (precision === null) return fail('no model loaded');
  const why = process.env.FAKE_ENGINE_CALIBRATE_FAIL;
  if (why === 'exit') {
    send({ op: 'error', id, message: 'CUDA error: an illegal memory access was encountered', fatal: true });
    return process.exit(2);
  }
  if (why) return fail(`calibrate: ${why}`);
  if (precision !== 'bf16') return fail('calibrate: needs a bf16 engine (an f32 engine has no fp8 path)');
  for (const k of ['plan', 'loras', 'true_cfg', 'inpaint', 'control', 'step_cache'])
    if (h[k] !== undefined && h[k] !== null) return fail(`calibrate: ${k} is not taken (plain text-to-image inputs)`);
  const L = (h.height / 16) * (h.width / 16);
  const need = 4 * (h.batch * (77 + h.t5_len) + (h.latents === 'payload' ? h.batch * L * 64 : 0));
  if (payload.length !== need) return fail(`calibrate payload must be ${need} bytes, got ${payload.length}`);
  const steps = h.sigmas.length - 1;
  let sum = 0;
  for (let i = 0; i < payload.length; i += 4) sum = (sum + payload[i] * 31 + payload[i + 3]) % 1_000_003;
  const inputs = `${h.batch}|${h.height}x${h.width}|${h.t5_len}|${h.sigmas.join(',')}|${sum}`;
  const rows = h.batch * L;
  // A layer's solo error: fp8's drawn from its name and the inputs, fp8row's a third of it.
  const soloErr = (name, type) => 10 ** (-4 + 2 * unit(`${name}|${inputs}`)) / (type === 'fp8row' ? 3 : 1);
  const table = linears.map((l) => {
    const ms = (2 * rows * l.in * l.out) / 1e9 + 0.001;
    return {
      name: l.name,
      in: l.in,
      out: l.out,
      base: 'bf16',
      fp8: true,
      rel_err_fp8: soloErr(l.name, 'fp8'),
      ms_bf16: ms,
      ms_fp8: 0.6 * ms + 0.0005,
      // fp8row (per-channel weight, per-token activation scales), when asked (`fp8row: true`, PROTOCOL.md
      // `calibrate`): a third of the fp8 error, its own quantiser and epilogue passes (0.7x + 1 us).
      ...(h.fp8row === true
        ? {
            fp8row: true,
            rel_err_fp8row: soloErr(l.name, 'fp8row'),
            ms_fp8row: 0.7 * ms + 0.001,
          }
        : {
            fp8row: false,
            rel_err_fp8row: null,
            ms_fp8row: null,
            skip_fp8row: "not asked (calibrate's fp8row: true)",
          }),
    };
  });
  const scale = Number(process.env.FAKE_ENGINE_VERIFY_SCALE ?? 1);
  const verified = [];
  try {
    for (const [name, spec] of Object.entries(h.verify ?? {}).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))) {
      const quant = quantLayersOf(spec);
      // Each layer under its plan's type (fp8row's error too when the table did not list it: verify measures whole
      // plans whatever was asked).
      const e = Math.sqrt(quant.reduce((a, l) => a + soloErr(l.name, l.type) ** 2, 0)) * scale;
      verified.push({ name, layers: quant.length, rel_err: e });
    }
  } catch (err) {
    return fail(err.message);
  }
  const perLayer = h.per_layer !== false;
  return send({
    op: 'calibrated',
    id,
    layers: perLayer ? table : [],
    verified,
    base_ms: 1.5 * table.reduce((a, l) => a + l.ms_bf16, 0),
    steps,
    ms: 0,
  });
}

/** Per-sample progress fields of a job's answers (the engine's serve.cu sample_fields). */
function sampleFields(j) {
  return {
    samples: j.samples.map((x) => x.id),
    sample_step: j.samples.map((x) => x.step),
    sample_steps: j.samples.map((x) => x.steps),
  };
}

/** One step's decision (the engine's rule, engine.cu step_cached) before the step index advances. */
function stepCached(j) {
  const c = j.cache;
  const skip = c.have && j.step >= c.warmup && c.skipped < c.maxConsecutive && FAKE_CHANGE(j.step) < c.threshold;
  if (skip) {
    c.skipped++;
    c.cached++;
  } else {
    c.have = true;
    c.skipped = 0;
    c.full++;
  }
  c.last = skip;
}

function cacheFields(j, last = false) {
  if (!j.cache) return {};
  return { full_steps: j.cache.full, cached_steps: j.cache.cached, ...(last ? { cached: j.cache.last } : {}) };
}

process.stdin.on('data', (chunk) => {
  pending = Buffer.concat([pending, chunk]);
  for (;;) {
    if (pending.length < 8) return;
    const hl = pending.readUInt32LE(0);
    const pl = pending.readUInt32LE(4);
    if (pending.length < 8 + hl + pl) return;
    const header = JSON.parse(pending.subarray(8, 8 + hl).toString('utf8'));
    const payload = Buffer.from(pending.subarray(8 + hl, 8 + hl + pl));
    pending = pending.subarray(8 + hl + pl);
    handle(header, payload);
  }
});
process.stdin.on('end', () => process.exit(0));
