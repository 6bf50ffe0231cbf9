/**
 * @file ONNX Runtime sessions: created once per compiled component and reused for every run. ORT errors are rewrapped
 * with the component and the input shapes, since ORT's own messages name neither.
 */
import type Ort from 'onnxruntime-node';
import { assertProviderInstalled, type ExecutionProvider } from './device.ts';
import { ort } from './ort.ts';

/** A float32 / int64 tensor crossing the runtime boundary: plain typed array plus shape. */
export interface HostTensor {
  data: Float32Array | BigInt64Array | Int32Array | Uint8Array;
  dims: readonly number[];
}

/** Options for {@link createSession}. */
export interface SessionOptions {
  /** @default 'cpu' */
  provider?: ExecutionProvider;
  /** Intra-op threads; ORT's default (all cores) when absent. */
  threads?: number;
  /** ORT graph optimisation level. @default 'all' */
  graphOptimization?: 'disabled' | 'basic' | 'extended' | 'all';
  /** Let intra-op threads spin-wait between runs (ORT's own default; FLUXQL_ORT_SPIN). @default false */
  spin?: boolean;
}

/** Thrown when a component fails to load or run. */
export class RuntimeError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'RuntimeError';
  }
}

/** One loaded component graph. */
export class Session {
  private constructor(
    readonly component: string,
    readonly modelPath: string,
    private readonly session: Ort.InferenceSession,
  ) {}

  /** Loads `modelPath` (its external data is resolved beside it). */
  static async create(component: string, modelPath: string, options: SessionOptions = {}): Promise<Session> {
    const provider = options.provider ?? 'cpu';
    assertProviderInstalled(provider);
    try {
      const session = await ort().InferenceSession.create(modelPath, {
        executionProviders: [provider],
        graphOptimizationLevel: options.graphOptimization ?? 'all',
        // ORT's arena keeps the largest buffers a run needed for the next runs (no page faults). Kept on: measured on
        // the embedded model at 1024² `n: 4` (bench/results/memory.md), turning it off for the text encoders and the
        // VAE left 0.68 instead of 1.0-1.2 GiB after the request but cost 80% more CPU time. What bounds memory is the
        // graphs' query-chunked attention and the per-sample VAE decode.
        enableCpuMemArena: true,
        enableMemPattern: true,
        ...(options.threads ? { intraOpNumThreads: options.threads, interOpNumThreads: 1 } : {}),
        // Every session owns an intra-op thread pool. With spinning on (ORT's default), a pool that just finished
        // keeps its threads busy-waiting while the next session (text encoders → transformer → VAE, or the step
        // cache's head → tail) runs, so the two fight for the same cores: measured 2× slower steps in mode S.
        extra: { session: { intra_op: { allow_spinning: options.spin ? '1' : '0' } } },
      });
      return new Session(component, modelPath, session);
    } catch (err) {
      throw new RuntimeError(`cannot load ${component} engine from ${modelPath}: ${(err as Error).message}`, {
        cause: err,
      });
    }
  }

  get inputNames(): readonly string[] {
    return this.session.inputNames;
  }

  get outputNames(): readonly string[] {
    return this.session.outputNames;
  }

  /** Runs the graph; returns every output as a host tensor. */
  async run(feeds: Record<string, HostTensor>): Promise<Record<string, HostTensor>> {
    const ortFeeds: Record<string, Ort.Tensor> = {};
    for (const [name, t] of Object.entries(feeds)) ortFeeds[name] = toOrt(t);
    let result: Ort.InferenceSession.ReturnType;
    try {
      result = await this.session.run(ortFeeds);
    } catch (err) {
      const shapes = Object.entries(feeds)
        .map(([n, t]) => `${n}[${t.dims.join(',')}]`)
        .join(' ');
      throw new RuntimeError(`${this.component} run failed (inputs ${shapes}): ${(err as Error).message}`, {
        cause: err,
      });
    }
    const out: Record<string, HostTensor> = {};
    for (const [name, t] of Object.entries(result)) {
      out[name] = { data: t.data as HostTensor['data'], dims: t.dims };
      t.dispose?.();
    }
    return out;
  }

  async release(): Promise<void> {
    await this.session.release();
  }
}

function toOrt(t: HostTensor): Ort.Tensor {
  const d = t.data;
  const type =
    d instanceof Float32Array
      ? 'float32'
      : d instanceof BigInt64Array
        ? 'int64'
        : d instanceof Int32Array
          ? 'int32'
          : 'uint8';
  return new (ort().Tensor)(type, d, t.dims as number[]);
}
