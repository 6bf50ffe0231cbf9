#include "linear.h"

#include <atomic>

#include "fault.h"
#include "kernels/kernels.h"

namespace fq {

namespace {

bool g_kcat = true;  // set_lora_kcat (linear.h)

// The weight side of kcat_fits: a bf16 / f32 layer with reserve columns for an adapter of its own width, no up-bias.
bool kcat_weight_fits(const Linear& l, const Adapter& a) {
  return (l.wt == DType::BF16 || l.wt == DType::F32) && (a.in == 0 || a.in == l.in) && !a.bias &&
         weight_ld(l) >= l.in + a.rank;
}

// h[rows, rank] = x A^T: the adapter's down product, x in the adapter type with row stride ldx.
void* adapter_down(Ctx& c, const Linear& l, const Adapter& a, int rows, const void* x, DType t, int ldx) {
  void* h = c.scratch.get("linear.adapter_h", size_t(rows) * a.rank * dsize(t));
  c.gemm.linear(c.st, rows, a.rank, a.in > 0 ? a.in : l.in, x, t, ldx, a.a, t, nullptr, Epi::None, h, t, a.rank);
  return h;
}

// y = scale * h B^T (+ its up-bias) (+ resid; resid may alias y, x never does): the adapter's up product into the
// layer's output. Fused adapters run it first, into y itself, and the base product then reads y as its C operand
// (beta 1): the low-rank term costs one write and one read of the output, the read inside the base GEMM's epilogue
// (partly hidden behind its math), and the GELU of a BiasGelu layer stays fused (cuBLASLt applies it to
// alpha X W^T + beta C + bias). The other path runs it after the base product with resid = y (reading and writing y
// once more) and needs a GELU pass of its own: session 16 on the H100, 22 % over the base step at rank 16 on every
// Linear, 29 % in fp8 (still the path of adapters not marked fused, and of fp8row GELU layers).
void adapter_up(Ctx& c, const Linear& l, const Adapter& a, int rows, const void* h, Out y, const void* resid) {
  const DType t = adapter_type(l);
  c.gemm.linear(c.st, rows, l.out, a.rank, h, t, a.rank, a.b, t, nullptr, Epi::None, y.p, y.t, y.ld, resid,
                resid ? 1.f : 0.f, nullptr, nullptr, nullptr, a.scale);
  if (a.bias) add_bias(y.p, y.t, a.bias, rows, l.out, y.ld, c.st);
}

// The fp8row base product (linear.h): per-token activation scales, per-channel weight scales. Scratch: the
// quantised rows [rows, in] (1 byte each), their scales [rows] and the fp32 product [rows, out], named buffers that
// the planning forward sizes before any capture (as every other linear() scratch).
void fp8row_product(Ctx& c, const Linear& l, int rows, const In& x, const Out& y, Epi epi, const void* resid) {
  if (y.t != DType::F32 && y.t != DType::BF16)
    throw EngineError("fp8row layer " + l.name + ": output type " + dname(y.t) + " (f32 or bf16 only)", false);
  void* q = c.scratch.get("linear.fp8row_x", size_t(rows) * l.in);
  float* sx = c.scratch.getT<float>("linear.fp8row_sx", size_t(rows));
  float* acc = c.scratch.getT<float>("linear.fp8row_acc", size_t(rows) * l.out);
  quantize_fp8_rows(x.p, x.t, x.ld, x.scale, rows, l.in, q, sx, c.st);
  // Unit scales: cuBLASLt (CUDA 11.8 API) scales an fp8 operand by one scalar; the vectors are applied after.
  const float* one = fp8_unit_scale();
  c.gemm.linear(c.st, rows, l.out, l.in, q, DType::FP8, l.in, l.w, DType::FP8, nullptr, Epi::None, acc, DType::F32,
                l.out, nullptr, 0.f, one, one);
  fp8row_epilogue(acc, rows, l.out, sx, l.w_scale, epi == Epi::None ? nullptr : l.b, epi == Epi::BiasGelu, resid, y.p,
                  y.t, y.ld, c.st);
}

// The layer's own product (no adapter), x already in the type its weight type takes.
void base_product(Ctx& c, const Linear& l, int rows, const In& x, const Out& y, Epi epi, const void* resid) {
  if (l.wt == DType::FP8ROW) return fp8row_product(c, l, rows, x, y, epi, resid);
  c.gemm.linear(c.st, rows, l.out, l.in, x.p, x.t, x.ld, l.w, l.wt, l.b, epi, y.p, y.t, y.ld, resid,
                resid ? 1.f : 0.f, x.scale, l.w_scale, l.b_act, 1.f, weight_ld(l));
}

// Whether the adapter can ride in the base product along K (linear.h, Linear::ldw): a bf16 / f32 layer with reserve
// columns for its rank, its input as given in the layer's type with as many spare columns per row, and an adapter
// of the layer's own width without an up-bias (BFL Control's x_embedder and bias sets take the other paths).
bool kcat_fits(const Linear& l, const Adapter& a, const In& x) {
  return g_kcat && kcat_weight_fits(l, a) && x.t == l.wt && x.ld >= l.in + a.rank;
}

// y = epi([x | h] [W | B]^T + b) (+ resid) with h = scale x A^T: the down product writes h into the input rows'
// reserve columns [in, in + rank), B [out, rank] goes into the weight's, and one GEMM over K = in + rank does the
// rest. Beyond the base product this reads x once (the down GEMM) and adds rank/in to the product's FLOPs; the
// up product's read and write of the whole output (the other paths' cost) is gone. B is copied only when the layer's
// reserve holds another adapter's (place_reserve): jobs with different sets interleave step by step over the same
// weights, so the engine places a job's set before each captured step's replay (the copies are not in the graph:
// 264 small strided copies a step otherwise, ~0.25 GB at rank 64). The input buffer is the model's (flux.cu writes
// its rows with the reserve), written here although In is const: nothing reads those columns but this layer's
// product, and the next layer reading the same rows writes its own h first.
void kcat_product(Ctx& c, const Linear& l, const Adapter& a, int rows, const In& x, const Out& y, Epi epi,
                  const void* resid) {
  const size_t es = dsize(l.wt);
  const int ldw = weight_ld(l);
  void* h = const_cast<char*>(static_cast<const char*>(x.p)) + size_t(l.in) * es;
  place_reserve(l, a, c.st);
  c.gemm.linear(c.st, rows, a.rank, l.in, x.p, x.t, x.ld, a.a, l.wt, nullptr, Epi::None, h, l.wt, x.ld, nullptr, 0.f,
                nullptr, nullptr, nullptr, a.scale);
  c.gemm.linear(c.st, rows, l.out, l.in + a.rank, x.p, x.t, x.ld, l.w, l.wt, l.b, epi, y.p, y.t, y.ld, resid,
                resid ? 1.f : 0.f, nullptr, nullptr, l.b_act, 1.f, ldw);
}

// The fp8 (per-tensor) layer's version: reserve columns in its e4m3 weight, the adapter's e4m3 A; the input is checked
// after its conversion (kcat8_product), as an fp8 input of another stride keeps the fused path.
bool kcat8_fits(const Linear& l, const Adapter& a) {
  // cuBLASLt's fp8 products want 16-byte multiples along K and the down product's N (the rank).
  // (lora_fold_fp8 also stores four e4m3 at a time: row strides in 16-byte multiples.)
  return g_kcat && l.wt == DType::FP8 && a.a8 && (a.in == 0 || a.in == l.in) && !a.bias && a.rank % 16 == 0 &&
         l.in % 16 == 0 && weight_ld(l) % 16 == 0 && weight_ld(l) >= l.in + a.rank;
}

// The same along K for an fp8 layer: y = epi(s_x s_w [x_q | h_q] [W_q | B'_q]^T + b) (+ resid). The down product
// runs in fp8 on the quantised input, h' = scale (x_q A^T) = h / s_x (bf16 scratch [rows, rank]); then h' and B are
// written into the input's and the weight's reserve columns in e4m3 with the scales that make their product
// h' B^T / s_w, each operand using e4m3's range (kernels.h lora_fold_fp8); one fp8 GEMM over K = in + rank. Beyond
// the base product: the down GEMM's read of x_q (1 byte an element), two small kernels, rank/in more FLOPs.
void kcat8_product(Ctx& c, const Linear& l, const Adapter& a, int rows, const In& x, const Out& y, Epi epi,
                   const void* resid) {
  const int ldw = weight_ld(l);
  void* h = c.scratch.get("linear.lora_h8", size_t(rows) * a.rank * 2);
  float* amax = c.scratch.getT<float>("linear.lora_amax8", 4);
  c.gemm.linear(c.st, rows, a.rank, l.in, x.p, DType::FP8, x.ld, a.a8, DType::FP8, nullptr, Epi::None, h, DType::BF16,
                a.rank, nullptr, 0.f, fp8_unit_scale(), a.a8_scale, nullptr, a.scale);
  amax_abs(h, DType::BF16, int64_t(rows) * a.rank, amax, c.st);
  lora_fold_fp8(h, rows, a.rank, a.b, l.out, amax, a.b_amax, l.w_scale,
                const_cast<char*>(static_cast<const char*>(x.p)) + l.in, x.ld, static_cast<char*>(l.w) + l.in, ldw,
                c.st);
  c.gemm.linear(c.st, rows, l.out, l.in + a.rank, x.p, DType::FP8, x.ld, l.w, DType::FP8, l.b, epi, y.p, y.t, y.ld,
                resid, resid ? 1.f : 0.f, x.scale, l.w_scale, l.b_act, 1.f, ldw);
}

}  // namespace

void set_lora_kcat(bool on) { g_kcat = on; }

uint64_t next_adapter_id() {
  static std::atomic<uint64_t> n{0};
  return ++n;
}

void place_reserve(const Linear& l, const Adapter& a, cudaStream_t st) {
  if (!kcat_weight_fits(l, a)) return;
  if (a.id != 0 && l.reserve_w == l.w && l.reserve_of == a.id) return;
  // A copy inside a captured graph would replay behind this record's back (another job's B placed in between).
  if (capturing())
    throw EngineError("layer " + l.name + ": LoRA factor not placed before the step's capture", false);
  const size_t es = dsize(l.wt);
  CUDA_CHECK(cudaMemcpy2DAsync(static_cast<char*>(l.w) + size_t(l.in) * es, size_t(weight_ld(l)) * es, a.b,
                               size_t(a.rank) * es, size_t(a.rank) * es, l.out, cudaMemcpyDeviceToDevice, st));
  l.reserve_w = l.w;
  l.reserve_of = a.id;
}

void linear(Ctx& c, const Linear& l, int rows, In x, Out y, Epi epi, const void* resid) {
  if (rows == 0) return;
  if (c.tap) c.tap->on_linear(l, rows, x, y, epi, resid != nullptr);
  const In x0 = x;  // as given: an adapter on an fp8 layer reads this (bf16) rather than the quantised copy
  // No buffer holds fp8row activations: the model writes an input "in the layer's type" only for a BFL Control
  // x_embedder (flux.cu embed), whose widened adapter needs a bf16 layer (as for fp8).
  if (x.t == DType::FP8ROW)
    throw EngineError("fp8row layer " + l.name + ": an input in the layer's own type (a BFL Control LoRA's widened "
                      "x_embedder input) needs a bf16 layer", false);
  // The input in the layer's type: fp8 layers take fp8 activations with a scale (the norms that feed them write
  // those directly); fp8row layers quantise whatever they get themselves (fp8row_product); anything else is
  // converted here.
  if (l.wt == DType::FP8ROW) {
    // x as given: bf16 / fp32 rows of any stride, or fp8 with its per-tensor scale.
  } else if (l.wt == DType::FP8 && x.t != DType::FP8) {
    // With an adapter that rides along K, the quantised rows get the weight's reserve columns too.
    const int ldq = l.adapter && kcat8_fits(l, *l.adapter) ? weight_ld(l) : l.in;
    void* q = c.scratch.get("linear.fp8_in", size_t(rows) * ldq);
    // The scale first, 16-byte aligned: cuBLASLt refuses an fp8 product (status 15, not supported) whose scale
    // pointer is only 4-byte aligned (session 13 on the H100: every calibration trial and the S mode's floor, which
    // put it at ws + 1). The quantiser's amax scratch goes 16 bytes after it.
    float* sc = c.scratch.getT<float>("linear.fp8_ws", 8);
    quantize_fp8_strided(x.p, x.t, rows, l.in, x.ld, q, sc, sc + 4, c.st, ldq);
    x = In{q, DType::FP8, ldq, sc};
  } else if (l.wt == DType::BF16 && x.t == DType::FP8) {
    // A bf16 layer sharing an fp8-written norm output with an fp8 one (a single block's MLP-in when a plan makes only
    // its q/k/v fp8): the dequantised input, as the adapters read it.
    void* dq = c.scratch.get("linear.dq_in", size_t(rows) * l.in * 2);
    dequantize_fp8(x.p, x.ld, x.scale, rows, l.in, dq, c.st);
    x = In{dq, DType::BF16, l.in};
  } else if (l.wt != DType::FP8 && x.t != l.wt) {
    if (x.t == DType::FP8) throw EngineError("layer " + l.name + " got an fp8 input but is " + dname(l.wt), false);
    void* cv = c.scratch.get("linear.cast_in", size_t(rows) * l.in * dsize(l.wt));
    if (x.ld != l.in) throw EngineError("layer " + l.name + ": strided input of another type", false);
    cast(x.p, x.t, cv, l.wt, int64_t(rows) * l.in, c.st);
    x = In{cv, l.wt, l.in};
  }
  if (!l.adapter) {
    base_product(c, l, rows, x, y, epi, resid);
    return;
  }
  const Adapter& a = *l.adapter;
  if (kcat_fits(l, a, x)) return kcat_product(c, l, a, rows, x, y, epi, resid);
  if (kcat8_fits(l, a) && x.t == DType::FP8 && x.ld % 16 == 0 && x.ld >= l.in + a.rank)
    return kcat8_product(c, l, a, rows, x, y, epi, resid);
  const DType t = adapter_type(l);
  // The adapter's input: the layer's converted input where it already has the adapter type, else a bf16 view.
  const void* xa = nullptr;
  int lda = l.in;
  if (a.in > l.in) {
    // BFL Control x_embedder: [latents; control] rows, already in the layer's type (flux.cu writes them so).
    if (x.p != x0.p || x.t != t || x.ld < a.in)
      throw EngineError("layer " + l.name + ": a widened adapter needs its input in the layer's type", false);
    xa = x.p, lda = x.ld;
  } else if (x.t == t) {
    // The input in the adapter's type: every bf16 / f32 layer's converted input, an fp8row layer's bf16 input.
    xa = x.p, lda = x.ld;
  } else if (x0.t == DType::BF16) {
    xa = x0.p, lda = x0.ld;
  } else {
    // A bf16 view of the input: dequantised fp8 (the norm wrote fp8 directly), or a cast of another type.
    void* xb = c.scratch.get("linear.adapter_x", size_t(rows) * l.in * 2);
    if (x0.t == DType::FP8) {
      dequantize_fp8(x0.p, x0.ld, x0.scale, rows, l.in, xb, c.st);
    } else {
      if (x0.ld != l.in) throw EngineError("layer " + l.name + ": strided adapter input of another type", false);
      cast(x0.p, x0.t, xb, DType::BF16, int64_t(rows) * l.in, c.st);
    }
    xa = xb;
  }
  const void* h = adapter_down(c, l, a, rows, xa, t, lda);
  const bool gelu = epi == Epi::BiasGelu;
  if (!a.fused || (l.wt == DType::FP8ROW && gelu)) {
    // The delta added into y after the base product: GELU layers run bias-only first so that it lands before the
    // GELU, as in the model (GELU(W x + b + B A x)), the GELU then a pass of its own. (fp8row's own epilogue adds
    // its C after the GELU, so its GELU layers always come here.)
    base_product(c, l, rows, x, y, gelu ? Epi::Bias : epi, resid);
    adapter_up(c, l, a, rows, h, y, y.p);
    if (gelu) activation(y.p, y.t, rows, l.out, y.ld, Act::GeluTanh, c.st);
    return;
  }
  adapter_up(c, l, a, rows, h, y, resid);
  base_product(c, l, rows, x, y, epi, y.p);
}

}  // namespace fq
