#include "linear.h"

#include "kernels/kernels.h"

namespace fq {

void linear(Ctx& c, const Linear& l, int rows, In x, Out y, Epi epi, const void* resid) {
  if (rows == 0) return;
  if (c.tap) c.tap->on_linear(l, rows, x, y, epi, resid != nullptr);
  // The input in the layer's type: fp8 layers take fp8 activations with a scale (the norms that feed them write
  // those directly); anything else is converted here.
  if (l.wt == DType::FP8 && x.t != DType::FP8) {
    void* q = c.scratch.get("linear.fp8_in", size_t(rows) * l.in);
    float* ws = c.scratch.getT<float>("linear.fp8_ws", 2);
    if (x.ld != l.in) throw EngineError("fp8 layer " + l.name + ": strided non-fp8 input", false);
    quantize_fp8(x.p, x.t, int64_t(rows) * l.in, q, ws + 1, ws, c.st);
    x = In{q, DType::FP8, l.in, ws + 1};
  } else if (l.wt != DType::FP8 && x.t != l.wt) {
    if (x.t == DType::FP8) throw EngineError("layer " + l.name + " got an fp8 input but is " + dname(l.wt), false);
    void* cv = c.scratch.get("linear.cast_in", size_t(rows) * l.in * dsize(l.wt));
    if (x.ld != l.in) throw EngineError("layer " + l.name + ": strided input of another type", false);
    cast(x.p, x.t, cv, l.wt, int64_t(rows) * l.in, c.st);
    x = In{cv, l.wt, l.in};
  }
  if (l.adapter && epi == Epi::BiasGelu)
    throw EngineError("layer " + l.name + ": adapters on GELU-epilogue layers are not supported yet", false);
  c.gemm.linear(c.st, rows, l.out, l.in, x.p, x.t, x.ld, l.w, l.wt, l.b, epi, y.p, y.t, y.ld, resid,
                resid ? 1.f : 0.f, x.scale, l.w_scale, l.b_act);
  if (l.adapter) {
    // y += (x A^T) B^T; the adapter's scale is folded into B when it is loaded.
    const Adapter& a = *l.adapter;
    if (x.t == DType::FP8) throw EngineError("layer " + l.name + ": adapters on fp8 layers are not supported yet", false);
    void* h = c.scratch.get("linear.adapter_h", size_t(rows) * a.rank * dsize(x.t));
    c.gemm.linear(c.st, rows, a.rank, l.in, x.p, x.t, x.ld, a.a, x.t, nullptr, Epi::None, h, x.t, a.rank);
    c.gemm.linear(c.st, rows, l.out, a.rank, h, x.t, a.rank, a.b, x.t, nullptr, Epi::None, y.p, y.t, y.ld, y.p, 1.f);
  }
}

}  // namespace fq
