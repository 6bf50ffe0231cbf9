/**
 * flux-mini draws what the prompt asks (issue 14): four grammar prompts (not in the benchmark's set, whose prompt
 * seed is 14) through the real pipeline at the native 256x256 with 12 steps, judged by the deterministic detector.
 * Needs the trained weights in models/flux-mini (installed from a GPU run by tools/train-mini/install-parts.sh);
 * without them the test is skipped with a message, so a fresh clone without the model stays green.
 */
import { describe, expect, it } from 'vitest';
import { engineCompiler } from '../../engines/compiler/port.ts';
import { FLUX_MINI_DIR, HAS_FLUX_MINI } from '../../src/config.ts';
import { FluxPipeline } from '../../src/pipeline/flux/pipeline.ts';
import { detect, judgeDetection } from '../../src/shared/caption-grammar/detector.ts';
import { type CaptionAttributes, caption } from '../../src/shared/caption-grammar/grammar.ts';

const PROMPTS: CaptionAttributes[] = [
  { color: 'red', background: 'blue', shape: 'circle', position: null, size: null },
  { color: 'yellow', background: 'purple', shape: 'square', position: 'top right', size: null },
  { color: 'white', background: 'green', shape: 'triangle', position: null, size: 'large' },
  { color: 'orange', background: 'black', shape: 'circle', position: 'bottom left', size: 'small' },
];

if (!HAS_FLUX_MINI) {
  console.warn(`flux-mini test skipped: ${FLUX_MINI_DIR} is not installed (tools/train-mini/install-parts.sh)`);
}

describe.skipIf(!HAS_FLUX_MINI)('flux-mini follows grammar prompts', () => {
  it('draws the asked background and object colors at 256x256, 12 steps', { timeout: 120_000 }, async () => {
    const pipe = await FluxPipeline.fromPretrained(FLUX_MINI_DIR, { compiler: engineCompiler });
    try {
      const r = await pipe.generate({
        prompts: PROMPTS.map(caption),
        width: 256,
        height: 256,
        steps: 12,
        seed: PROMPTS.map((_, i) => 77 + i),
      });
      const seen = r.images.map((img, i) => {
        const d = detect(img);
        return { prompt: caption(PROMPTS[i]!), detected: d, judged: judgeDetection(d, PROMPTS[i]!) };
      });
      const colorsRight = seen.flatMap((s) => [s.judged.background, s.judged.color]).filter(Boolean).length;
      // 8 color judgements; the acceptance allows one miss in twelve, so one miss in eight here.
      const report = seen
        .map((x) => `${x.prompt} -> ${x.detected.color} ${x.detected.shape} on ${x.detected.background}`)
        .join('; ');
      expect(colorsRight, report).toBeGreaterThanOrEqual(7);
    } finally {
      await pipe.close();
    }
  });
});
