// Loading helpers shared by the model components.
#pragma once
#include <string>
#include <vector>

#include "context.h"
#include "weights.h"

namespace fq {

// Linear layer from one or more stacked parts ("<name>.weight" [out_i, in], "<name>.bias" [out_i]).
inline Lin load_lin(WeightLoader& L, const std::vector<std::string>& parts, int out, int in, DType dt,
                    bool bias = true) {
  Lin l;
  l.out = out;
  l.in = in;
  std::vector<std::string> w, b;
  for (auto& p : parts) {
    w.push_back(p + ".weight");
    b.push_back(p + ".bias");
  }
  l.w = L.matrix(w, out, in, dt);
  if (bias) l.b = L.vec(b, out, Init::Bias);
  return l;
}

// y = x W^T + b on `rows` rows (contiguous strides), through the shared GEMM engine.
inline void run_lin(Ctx& c, const Lin& l, int rows, const void* x, DType xt, void* y, DType yt, Epi epi = Epi::Bias,
                    const void* resid = nullptr) {
  c.gemm.linear(c.st, rows, l.out, l.in, x, xt, l.in, l.w, c.dt, l.b, epi, y, yt, l.out, resid, resid ? 1.f : 0.f);
}

}  // namespace fq
