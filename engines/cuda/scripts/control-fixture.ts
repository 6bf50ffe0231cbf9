/**
 * The BFL Control case of the CUDA engine's GPU checks (issue 16), written by prepare-fixtures.ts into `lora/control/`:
 *
 * - `control.cuda.safetensors`: a constructed BFL Control LoRA (every Linear with `lora_B.bias`, `img_in` reading 128
 *   channels, every QK-norm replaced; `makeBflControlLora`, the ONNX path's integration fixture) reduced by the
 *   server's own code (`cuda-lora.ts`) to what `lora_load` sends: `<layer>.lora_a` [r, in], `<layer>.lora_b` [out, r],
 *   `<layer>.lora_bias` [out], and `<norm module>.norm` [head_dim] (the replacement weights);
 * - `control_case.safetensors` / `control_case.json`: one control request (prompt ids, sigmas, guidance, strength),
 *   the encoder inputs the server sends (`pixels` [1, 3, H, W], `eps` [1, 16, H/8, W/8], the request generator's first
 *   normals), the starting latents (its next normals, packed) and the reference: the ONNX pipeline's control latents
 *   and final latents for the same request (`FluxPipeline` with the same LoRA, which matches diffusers'
 *   `FluxControlPipeline`, test/integration/control.test.ts).
 */
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { makeBflControlLora } from '../../../src/cli/conformance/lora-reference.ts';
import { cudaLoraLayers, cudaLoraLayout, cudaLoraNorms } from '../../../src/pipeline/cuda-lora.ts';
import { controlPixels } from '../../../src/pipeline/flux/control.ts';
import { TorchCpuGenerator } from '../../../src/pipeline/flux/noise.ts';
import { FluxPipeline } from '../../../src/pipeline/flux/pipeline.ts';
import type { FluxTokenizers } from '../../../src/pipeline/flux/tokenize.ts';
import { loraModelSpec } from '../../../src/pipeline/lora/model-layers.ts';
import { parseLoraFile } from '../../../src/pipeline/lora/parse.ts';
import type { FluxTransformerConfig } from '../../../src/shared/vocabulary/transformer-config.ts';
import { type TensorInput, writeSafetensors } from '../../../src/shared/weights/index.ts';
import { engineCompiler } from '../../compiler/port.ts';

const HEIGHT = 64;
const WIDTH = 96; // latent grid 4x6: 24 tokens
const STEPS = 3;
const SEED = 7;
const T5_LEN = 32;
const STRENGTH = 0.9;
const PROMPT = 'a red fox';

/** A smooth RGB test pattern `[h, w, 3]` (the control image). */
function patternImage(width: number, height: number): { width: number; height: number; data: Uint8Array } {
  const data = new Uint8Array(width * height * 3);
  for (let y = 0; y < height; y++)
    for (let x = 0; x < width; x++)
      for (let c = 0; c < 3; c++)
        data[(y * width + x) * 3 + c] = Math.round(127.5 + 127.5 * Math.sin(0.3 * x + 0.2 * y + 2 * c));
  return { width, height, data };
}

/** Writes `<out>/control/`; returns a one-line summary. */
export async function writeControlFixture(
  out: string,
  modelDir: string,
  config: FluxTransformerConfig,
  tok: FluxTokenizers,
): Promise<string> {
  const dir = join(out, 'control');
  mkdirSync(dir, { recursive: true });
  const tmp = mkdtempSync(join(tmpdir(), 'fluxql-control-fixture-'));
  try {
    const loraDir = join(tmp, 'loras');
    mkdirSync(loraDir);
    writeSafetensors(
      join(loraDir, 'canny.safetensors'),
      makeBflControlLora(config, { rank: 4, seed: 5, imgInChannels: 128 }),
    );
    // What the server sends with lora_load.
    const lora = parseLoraFile(join(loraDir, 'canny.safetensors'), loraModelSpec(config), 'canny.safetensors');
    const tensors: Record<string, TensorInput> = {};
    for (const l of cudaLoraLayers(cudaLoraLayout(config), 'canny', lora)) {
      tensors[`${l.layer}.lora_a`] = { dtype: 'F32', shape: [l.rank, l.inFeatures], data: l.a };
      tensors[`${l.layer}.lora_b`] = { dtype: 'F32', shape: [l.outFeatures, l.rank], data: l.b };
      if (l.bias) tensors[`${l.layer}.lora_bias`] = { dtype: 'F32', shape: [l.outFeatures], data: l.bias };
    }
    const norms = cudaLoraNorms(lora);
    for (const n of norms) tensors[`${n.norm}.norm`] = { dtype: 'F32', shape: [n.weight.length], data: n.weight };
    writeSafetensors(join(dir, 'control.cuda.safetensors'), tensors);

    // The reference: the ONNX pipeline on the same request.
    const image = patternImage(WIDTH, HEIGHT);
    const pipe = await FluxPipeline.fromPretrained(modelDir, {
      compiler: engineCompiler,
      cacheDir: join(tmp, 'cache'),
      loraDir,
      modes: ['original'],
      threads: 1,
    });
    let start: Float32Array;
    let control: Float32Array;
    let expected: Float32Array;
    let sigmas: Float32Array;
    try {
      const [s] = await pipe.prepare([
        {
          prompt: PROMPT,
          height: HEIGHT,
          width: WIDTH,
          steps: STEPS,
          guidanceScale: 3.5,
          seed: SEED,
          maxSequenceLength: T5_LEN,
          loras: [{ name: 'canny', strength: STRENGTH }],
          controlImage: image,
        },
      ]);
      start = Float32Array.from(s!.latents);
      control = Float32Array.from(s!.control!);
      sigmas = Float32Array.from(s!.sigmas);
      while (s!.step < s!.sigmas.length - 1) await pipe.step([s!]);
      expected = Float32Array.from(s!.latents);
    } finally {
      await pipe.close();
    }
    const [h, w] = [HEIGHT / 8, WIDTH / 8];
    const L = (HEIGHT / 16) * (WIDTH / 16);
    const eps = new TorchCpuGenerator(SEED).randn(16 * h * w); // the server's encode normals (cuda-control.ts)
    const pixels = await controlPixels(image, HEIGHT, WIDTH);
    writeSafetensors(join(dir, 'control_case.safetensors'), {
      pixels: { dtype: 'F32', shape: [1, 3, HEIGHT, WIDTH], data: pixels },
      eps: { dtype: 'F32', shape: [1, 16, h, w], data: eps },
      latents: { dtype: 'F32', shape: [1, L, 64], data: start },
      control_latents: { dtype: 'F32', shape: [1, L, 64], data: control },
      expected: { dtype: 'F32', shape: [1, L, 64], data: expected },
      sigmas: { dtype: 'F32', shape: [sigmas.length], data: sigmas },
    });
    await writeFile(
      join(dir, 'control_case.json'),
      JSON.stringify({
        lora: 'control.cuda.safetensors',
        strength: STRENGTH,
        height: HEIGHT,
        width: WIDTH,
        guidance: 3.5,
        t5_len: T5_LEN,
        clip_ids: Array.from(tok.encodeClip([PROMPT]), Number),
        t5_ids: Array.from(tok.encodeT5([PROMPT], T5_LEN), Number),
      }),
    );
    return `lora/control/ (BFL Control LoRA, ${norms.length} norms, ONNX reference ${HEIGHT}x${WIDTH}, ${STEPS} steps)`;
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
}
