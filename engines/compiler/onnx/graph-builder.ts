/**
 * @file A small, typed builder for ONNX graphs, serialised with the `onnx-proto` package (protobuf.js bindings of
 * onnx.proto). The model compilers (`engines/compiler/flux/*`) describe each network with it.
 *
 * Why our own builder and not an exporter: there is no PyTorch here, and the graphs are built straight from
 * safetensors weights in TypeScript. The builder keeps names unique, records value shapes we declare, and hands large
 * initializers to an {@link ExternalDataWriter} as soon as they are added, so a 12B-parameter model is never held in
 * memory at once (protobuf itself is limited to 2 GB).
 */
import onnxProto from 'onnx-proto';
import type { ExternalDataWriter } from './external-data.ts';

const { onnx } = onnxProto;

/** Element types the compilers use. */
export type DType = 'float32' | 'float16' | 'bfloat16' | 'int64' | 'int32' | 'uint8' | 'int8' | 'bool';

/** ONNX TensorProto.DataType code of each {@link DType}. */
export const ONNX_DTYPE: Record<DType, number> = {
  float32: onnx.TensorProto.DataType.FLOAT,
  float16: onnx.TensorProto.DataType.FLOAT16,
  bfloat16: onnx.TensorProto.DataType.BFLOAT16,
  int64: onnx.TensorProto.DataType.INT64,
  int32: onnx.TensorProto.DataType.INT32,
  uint8: onnx.TensorProto.DataType.UINT8,
  int8: onnx.TensorProto.DataType.INT8,
  bool: onnx.TensorProto.DataType.BOOL,
};

/** A dimension: a fixed size or a symbolic name (dynamic axis). */
export type Dim = number | string;

/** Attribute values. Integral numbers become INT; wrap a float that happens to be integral in `{ float }`. */
export type AttrValue =
  | number
  | string
  | number[]
  | string[]
  | { float: number }
  | { floats: number[] }
  | { ints: number[] };

/** Raw tensor bytes with their type and shape. */
export interface TensorData {
  dtype: DType;
  dims: number[];
  /** Little-endian element bytes. */
  bytes: Uint8Array;
}

/** Initializers at most this large stay inside the protobuf; larger ones go to external data when a writer is set. */
const INLINE_LIMIT_BYTES = 1024;

/** Options of a {@link GraphBuilder}. */
export interface GraphBuilderOptions {
  /** Graph name (also the prefix of generated value names). */
  name: string;
  /** Default-domain opset. @default 21 */
  opset?: number;
  /** Where large initializers are written; without it every initializer is inlined (tests, tiny graphs). */
  externalData?: ExternalDataWriter;
}

/** Builds one ONNX graph; see the file header. */
export class GraphBuilder {
  readonly name: string;
  readonly opset: number;
  private readonly externalData: ExternalDataWriter | undefined;
  private readonly nodes: InstanceType<typeof onnx.NodeProto>[] = [];
  private readonly initializers: InstanceType<typeof onnx.TensorProto>[] = [];
  private readonly inputs: InstanceType<typeof onnx.ValueInfoProto>[] = [];
  private readonly outputs: InstanceType<typeof onnx.ValueInfoProto>[] = [];
  private readonly usedNames = new Set<string>();
  private readonly scopes: string[] = [];
  private readonly domains = new Map<string, number>();
  private readonly constCache = new Map<string, string>();
  private counter = 0;

  constructor(options: GraphBuilderOptions) {
    this.name = options.name;
    this.opset = options.opset ?? 21;
    this.externalData = options.externalData;
  }

  /** Runs `fn` with `name` appended to the node-name scope (names read like `transformer_blocks.0/attn/MatMul_3`). */
  scope<T>(name: string, fn: () => T): T {
    this.scopes.push(name);
    try {
      return fn();
    } finally {
      this.scopes.pop();
    }
  }

  /** A fresh value name derived from `hint`. */
  fresh(hint: string): string {
    const base = [...this.scopes, hint].join('/');
    let name = base;
    while (this.usedNames.has(name)) name = `${base}_${++this.counter}`;
    this.usedNames.add(name);
    return name;
  }

  /** Declares a graph input. */
  input(name: string, dtype: DType, dims: Dim[]): string {
    if (this.usedNames.has(name)) throw new Error(`graph ${this.name}: duplicate input name ${name}`);
    this.usedNames.add(name);
    this.inputs.push(valueInfo(name, dtype, dims));
    return name;
  }

  /** Declares `value` as a graph output named `name` (through an Identity when the names differ). */
  output(value: string, name: string, dtype: DType, dims: Dim[]): void {
    if (value !== name) {
      this.usedNames.add(name);
      this.nodes.push(
        onnx.NodeProto.create({ opType: 'Identity', input: [value], output: [name], name: `${name}/Identity` }),
      );
    }
    this.outputs.push(valueInfo(name, dtype, dims));
  }

  /** Adds an initializer from raw bytes; returns its value name. */
  initializer(hint: string, data: TensorData): string {
    const name = this.fresh(hint);
    const tensor = onnx.TensorProto.create({ name, dataType: ONNX_DTYPE[data.dtype], dims: data.dims });
    if (this.externalData && data.bytes.byteLength > INLINE_LIMIT_BYTES) {
      const { location, offset, length } = this.externalData.append(data.bytes);
      tensor.dataLocation = onnx.TensorProto.DataLocation.EXTERNAL;
      tensor.externalData = [
        onnx.StringStringEntryProto.create({ key: 'location', value: location }),
        onnx.StringStringEntryProto.create({ key: 'offset', value: String(offset) }),
        onnx.StringStringEntryProto.create({ key: 'length', value: String(length) }),
      ];
    } else {
      tensor.rawData = data.bytes;
    }
    this.initializers.push(tensor);
    return name;
  }

  /** Float32 initializer. */
  f32(hint: string, values: Float32Array | number[], dims: number[]): string {
    const arr = values instanceof Float32Array ? values : Float32Array.from(values);
    assertSize(hint, arr.length, dims);
    return this.initializer(hint, { dtype: 'float32', dims, bytes: bytesOf(arr) });
  }

  /** Int64 initializer (shapes, axes, indices). */
  i64(hint: string, values: number[] | BigInt64Array, dims?: number[]): string {
    const arr = values instanceof BigInt64Array ? values : BigInt64Array.from(values.map((v) => BigInt(v)));
    const shape = dims ?? [arr.length];
    assertSize(hint, arr.length, shape);
    return this.initializer(hint, { dtype: 'int64', dims: shape, bytes: bytesOf(arr) });
  }

  /** A cached scalar or 1-D float32 constant (`[]` dims for a scalar). */
  constF32(value: number | number[], dims?: number[]): string {
    const vals = typeof value === 'number' ? [value] : value;
    const shape = dims ?? (typeof value === 'number' ? [] : [vals.length]);
    const key = `f32:${shape.join('x')}:${vals.join(',')}`;
    let name = this.constCache.get(key);
    if (!name) {
      name = this.f32('const_f32', vals, shape);
      this.constCache.set(key, name);
    }
    return name;
  }

  /** A cached 1-D int64 constant (shapes, axes, split sizes). */
  constI64(values: number[]): string {
    const key = `i64:${values.join(',')}`;
    let name = this.constCache.get(key);
    if (!name) {
      name = this.i64('const_i64', values);
      this.constCache.set(key, name);
    }
    return name;
  }

  /**
   * Adds a node; returns its output names. `outputs` is a count (names generated) or explicit names.
   * Empty-string inputs mark optional inputs that are left out, as ONNX specifies.
   */
  node(
    opType: string,
    inputs: string[],
    attrs: Record<string, AttrValue> = {},
    opts: { outputs?: number | string[]; domain?: string; hint?: string } = {},
  ): string[] {
    const outNames =
      typeof opts.outputs === 'object'
        ? opts.outputs
        : Array.from({ length: opts.outputs ?? 1 }, (_, i) =>
            this.fresh(`${opts.hint ?? opType}${i ? `_out${i}` : ''}`),
          );
    for (const n of outNames) this.usedNames.add(n);
    if (opts.domain && !this.domains.has(opts.domain)) this.domains.set(opts.domain, 1);
    this.nodes.push(
      onnx.NodeProto.create({
        opType,
        domain: opts.domain ?? '',
        input: inputs,
        output: outNames,
        name: outNames[0],
        attribute: Object.entries(attrs).map(([k, v]) => attribute(k, v)),
      }),
    );
    return outNames;
  }

  /** Single-output convenience over {@link node}. */
  op(opType: string, inputs: string[], attrs: Record<string, AttrValue> = {}, domain?: string): string {
    return this.node(opType, inputs, attrs, { domain })[0]!;
  }

  /** Declares an extra operator-set domain (e.g. `com.microsoft`) and its version. */
  useDomain(domain: string, version: number): void {
    this.domains.set(domain, version);
  }

  /** Number of nodes so far (for tests and reports). */
  get nodeCount(): number {
    return this.nodes.length;
  }

  /** Serialises the model. */
  encode(metadata: Record<string, string> = {}): Uint8Array {
    const model = onnx.ModelProto.create({
      irVersion: 10,
      producerName: 'fluxql-compiler',
      producerVersion: '0.1.0',
      opsetImport: [
        onnx.OperatorSetIdProto.create({ domain: '', version: this.opset }),
        ...[...this.domains].map(([domain, version]) => onnx.OperatorSetIdProto.create({ domain, version })),
      ],
      metadataProps: Object.entries(metadata).map(([key, value]) => onnx.StringStringEntryProto.create({ key, value })),
      graph: onnx.GraphProto.create({
        name: this.name,
        node: this.nodes,
        initializer: this.initializers,
        input: this.inputs,
        output: this.outputs,
      }),
    });
    return onnx.ModelProto.encode(model).finish();
  }
}

function valueInfo(name: string, dtype: DType, dims: Dim[]) {
  return onnx.ValueInfoProto.create({
    name,
    type: onnx.TypeProto.create({
      tensorType: onnx.TypeProto.Tensor.create({
        elemType: ONNX_DTYPE[dtype],
        shape: onnx.TensorShapeProto.create({
          dim: dims.map((d) =>
            typeof d === 'number'
              ? onnx.TensorShapeProto.Dimension.create({ dimValue: d })
              : onnx.TensorShapeProto.Dimension.create({ dimParam: d }),
          ),
        }),
      }),
    }),
  });
}

function attribute(name: string, value: AttrValue) {
  const A = onnx.AttributeProto.AttributeType;
  if (typeof value === 'string')
    return onnx.AttributeProto.create({ name, type: A.STRING, s: new TextEncoder().encode(value) });
  if (typeof value === 'number') {
    return Number.isInteger(value)
      ? onnx.AttributeProto.create({ name, type: A.INT, i: value })
      : onnx.AttributeProto.create({ name, type: A.FLOAT, f: value });
  }
  if (Array.isArray(value)) {
    if (value.every((v) => typeof v === 'string')) {
      return onnx.AttributeProto.create({
        name,
        type: A.STRINGS,
        strings: (value as string[]).map((s) => new TextEncoder().encode(s)),
      });
    }
    const nums = value as number[];
    return nums.every(Number.isInteger)
      ? onnx.AttributeProto.create({ name, type: A.INTS, ints: nums })
      : onnx.AttributeProto.create({ name, type: A.FLOATS, floats: nums });
  }
  if ('float' in value) return onnx.AttributeProto.create({ name, type: A.FLOAT, f: value.float });
  if ('floats' in value) return onnx.AttributeProto.create({ name, type: A.FLOATS, floats: value.floats });
  return onnx.AttributeProto.create({ name, type: A.INTS, ints: value.ints });
}

/** The little-endian bytes of a typed array, without copying. */
export function bytesOf(arr: ArrayBufferView): Uint8Array {
  return new Uint8Array(arr.buffer, arr.byteOffset, arr.byteLength);
}

function assertSize(hint: string, length: number, dims: number[]): void {
  const expected = dims.reduce((a, b) => a * b, 1);
  if (expected !== length) throw new Error(`initializer ${hint}: ${length} values for shape [${dims.join(',')}]`);
}
