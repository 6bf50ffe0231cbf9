/**
 * Host side of `--engine cuda` that needs no GPU: configuration, the benchmark rows `models` shows, and a clear
 * typed failure when the engine binary is absent (as on CI). The engine itself is tested in test/gpu/.
 */
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { FLUX_TINY_DIR, loadConfig } from '../../../src/config.ts';
import { readCudaBenchmarks } from '../../../src/pipeline/cuda-benchmarks.ts';
import { CudaEngineNotFoundError, createCudaExecutor } from '../../../src/pipeline/cuda-executor.ts';
import { readModeResults } from '../../../src/service/mode-results.ts';
import { ModelCatalog } from '../../../src/service/models.ts';
import { REPO_ROOT } from '../../helpers/paths.ts';

const BENCH = join(REPO_ROOT, 'bench/results/cuda-h100.json');

describe('CUDA engine configuration', () => {
  it('defaults to the ONNX engine and the built engine path', () => {
    const c = loadConfig({});
    expect(c.engine).toBe('onnx');
    expect(c.cudaEngineBin).toBe(join(REPO_ROOT, 'engines/cuda/build/fluxql-engine'));
    expect(c.cudaPrecision).toBe('bf16');
    expect(c.cudaBenchResults).toBe(BENCH);
  });

  it('reads ENGINE, CUDA_ENGINE_BIN, CUDA_PRECISION and names a bad value', () => {
    const c = loadConfig({ ENGINE: 'cuda', CUDA_ENGINE_BIN: '/opt/fluxql-engine', CUDA_PRECISION: 'f32' });
    expect(c).toMatchObject({ engine: 'cuda', cudaEngineBin: '/opt/fluxql-engine', cudaPrecision: 'f32' });
    expect(() => loadConfig({ ENGINE: 'tensorrt' })).toThrow(/^ENGINE:/);
    expect(() => loadConfig({ CUDA_PRECISION: 'fp16' })).toThrow(/^CUDA_PRECISION:/);
  });
});

describe('CUDA benchmark rows', () => {
  it('gives one MEASURED row per batch of the loaded precision, with the card name', () => {
    const rows = readCudaBenchmarks(BENCH, 'bf16');
    expect(rows.map((r) => r.batch)).toEqual([1, 2, 4]);
    for (const r of rows) {
      expect(r).toMatchObject({
        mode: 'original',
        hardware: 'NVIDIA H100 80GB HBM3',
        width: 1024,
        height: 1024,
        steps: 28,
      });
      expect(r.latencySeconds).toBeGreaterThan(0);
      expect(r.source).toMatch(/cuda-h100\.json.*bf16, batch \d/);
    }
    expect(readCudaBenchmarks(BENCH, 'fp8')).toHaveLength(3);
    // No f32 benchmark exists: no rows rather than another precision's numbers.
    expect(readCudaBenchmarks(BENCH, 'f32')).toEqual([]);
  });

  it('gives no rows (and says why) for a missing file', () => {
    const logs: string[] = [];
    expect(readCudaBenchmarks('/nonexistent/cuda.json', 'bf16', (m) => logs.push(m))).toEqual([]);
    expect(logs[0]).toMatch(/no CUDA benchmark rows from \/nonexistent\/cuda.json/);
  });

  it('reach the catalogue entry of their mode', () => {
    const benchmarks = readCudaBenchmarks(BENCH, 'bf16');
    const catalog = new ModelCatalog(
      {
        name: 'flux-tiny',
        path: FLUX_TINY_DIR,
        capabilities: { modes: ['original'], lora: false, control: false, maxSide: 2048, maxBatch: 4 },
        device: 'cuda: NVIDIA H100 80GB HBM3 (bf16)',
        engine: 'cuda',
        packedChannels: 64,
        pixelsPerToken: 16,
        benchmarks,
      },
      { batchSize: 4, defaultSize: 'original' },
    );
    expect(catalog.default.benchmarks).toEqual(benchmarks);
    expect(catalog.default.device).toContain('NVIDIA H100');
  });

  it("never show ONNX Runtime's mode results (bench/results/modes.json) for the CUDA engine's modes", () => {
    const modeResults = readModeResults(join(REPO_ROOT, 'bench/results/modes.json'));
    const info = {
      name: 'flux-tiny',
      path: FLUX_TINY_DIR,
      capabilities: { modes: ['original', 'XL', 'S'], lora: false, control: false, maxSide: 2048, maxBatch: 4 },
      device: 'cuda: NVIDIA H100 80GB HBM3 (bf16)',
      packedChannels: 64,
      pixelsPerToken: 16,
    };
    const options = { batchSize: 4, defaultSize: 'original', ...(modeResults ? { modeResults } : {}) };
    const onnx = new ModelCatalog({ ...info, device: 'cpu', engine: 'onnx' }, options);
    const cuda = new ModelCatalog({ ...info, engine: 'cuda' }, options);
    // The file has flux-tiny's ONNX modes: they reach the ONNX catalogue (so the CUDA check below can fail)...
    expect(onnx.entries.find((e) => e.mode === 'S')?.quality).not.toBeNull();
    // ...and not the CUDA one, whose S is another computation (fp8 weights) on another machine.
    for (const e of cuda.entries) {
      expect(e.quality).toBeNull();
      expect(e.plan).toBeNull();
      expect(e.modeBenchmarks).toEqual([]);
    }
  });
});

describe('CUDA executor without an engine binary', () => {
  it('fails to start with CudaEngineNotFoundError naming the binary', async () => {
    const err = await createCudaExecutor({
      modelDir: FLUX_TINY_DIR,
      engineBin: '/nonexistent/fluxql-engine',
    }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(CudaEngineNotFoundError);
    expect((err as Error).message).toContain('no CUDA engine executable at /nonexistent/fluxql-engine');
  });
});
