#include "linear.h"

#include "kernels/kernels.h"

namespace fq {

namespace {

// y += (x A^T) B^T (+ bias) for a layer's adapter; x in the adapter type with row stride ldx.
void apply_adapter(Ctx& c, const Linear& l, const Adapter& a, int rows, const void* x, DType t, int ldx, Out y) {
  void* h = c.scratch.get("linear.adapter_h", size_t(rows) * a.rank * dsize(t));
  c.gemm.linear(c.st, rows, a.rank, a.in > 0 ? a.in : l.in, x, t, ldx, a.a, t, nullptr, Epi::None, h, t, a.rank);
  c.gemm.linear(c.st, rows, l.out, a.rank, h, t, a.rank, a.b, t, nullptr, Epi::None, y.p, y.t, y.ld, y.p, 1.f);
  if (a.bias) add_bias(y.p, y.t, a.bias, rows, l.out, y.ld, c.st);
}

}  // namespace

void linear(Ctx& c, const Linear& l, int rows, In x, Out y, Epi epi, const void* resid) {
  if (rows == 0) return;
  if (c.tap) c.tap->on_linear(l, rows, x, y, epi, resid != nullptr);
  const In x0 = x;  // as given: an adapter on an fp8 layer reads this (bf16) rather than the quantised copy
  // The input in the layer's type: fp8 layers take fp8 activations with a scale (the norms that feed them write
  // those directly); anything else is converted here.
  if (l.wt == DType::FP8 && x.t != DType::FP8) {
    void* q = c.scratch.get("linear.fp8_in", size_t(rows) * l.in);
    // The scale first, 16-byte aligned: cuBLASLt refuses an fp8 product (status 15, not supported) whose scale
    // pointer is only 4-byte aligned (session 13 on the H100: every calibration trial and the S mode's floor, which
    // put it at ws + 1). The quantiser's amax scratch goes 16 bytes after it.
    float* sc = c.scratch.getT<float>("linear.fp8_ws", 8);
    if (x.ld != l.in) throw EngineError("fp8 layer " + l.name + ": strided non-fp8 input", false);
    quantize_fp8(x.p, x.t, int64_t(rows) * l.in, q, sc, sc + 4, c.st);
    x = In{q, DType::FP8, l.in, sc};
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
    c.gemm.linear(c.st, rows, l.out, l.in, x.p, x.t, x.ld, l.w, l.wt, l.b, epi, y.p, y.t, y.ld, resid,
                  resid ? 1.f : 0.f, x.scale, l.w_scale, l.b_act);
    return;
  }
  // LoRA: GELU layers run bias-only first so that the low-rank delta lands before the GELU, as in the model
  // (GELU(W x + b + B A x)); the GELU is then its own pass.
  const bool gelu = epi == Epi::BiasGelu;
  c.gemm.linear(c.st, rows, l.out, l.in, x.p, x.t, x.ld, l.w, l.wt, l.b, gelu ? Epi::Bias : epi, y.p, y.t, y.ld,
                resid, resid ? 1.f : 0.f, x.scale, l.w_scale, l.b_act);
  const Adapter& a = *l.adapter;
  const DType t = adapter_type(l);
  if (a.in > l.in) {
    // BFL Control x_embedder: [latents; control] rows, already in the layer's type (flux.cu writes them so).
    if (x.p != x0.p || x.t == DType::FP8 || x.ld < a.in)
      throw EngineError("layer " + l.name + ": a widened adapter needs its input in the layer's type", false);
    apply_adapter(c, l, a, rows, x.p, t, x.ld, y);
  } else if (x.t != DType::FP8) {
    apply_adapter(c, l, a, rows, x.p, t, x.ld, y);
  } else if (x0.t == DType::BF16 && x0.ld == l.in) {
    apply_adapter(c, l, a, rows, x0.p, t, l.in, y);
  } else {
    // A bf16 view of the input: dequantised fp8 (the norm wrote fp8 directly), or a cast of another type.
    void* xb = c.scratch.get("linear.adapter_x", size_t(rows) * l.in * 2);
    if (x0.t == DType::FP8) {
      dequantize_fp8(x0.p, x0.ld, x0.scale, rows, l.in, xb, c.st);
    } else {
      if (x0.ld != l.in) throw EngineError("layer " + l.name + ": strided adapter input of another type", false);
      cast(x0.p, x0.t, xb, DType::BF16, int64_t(rows) * l.in, c.st);
    }
    apply_adapter(c, l, a, rows, xb, t, l.in, y);
  }
  if (gelu) activation(y.p, y.t, rows, l.out, y.ld, Act::GeluTanh, c.st);
}

}  // namespace fq
