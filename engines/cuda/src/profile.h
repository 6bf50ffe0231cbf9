// Optional per-category GPU timing with CUDA events, for the benchmark's per-step breakdown: the library products
// (GEMMs, attention) and the engine's own kernel families around them. Off by default: when off, a mark costs one
// branch. A mark opened inside another counts toward the outer one only (the families never enclose a GEMM).
#pragma once
#include <cuda_runtime.h>

namespace fq {

enum ProfCat {
  kProfGemm = 0,     // cuBLASLt / cuBLAS products (gemm.cu)
  kProfAttn = 1,     // joint attention (cuDNN SDPA or the own kernels)
  kProfResNorm = 2,  // gated residual add (+ the next LayerNorm + modulation, fused), fp8 second pass included
  kProfNorm = 3,     // LayerNorm + modulation alone (a stream's first norm, the output norm)
  kProfQkRope = 4,   // QK-RMSNorm + RoPE (+ the q/k/v scatter on the copying path)
  kProfCopy = 5,     // stream copies and casts: ctx0 -> ctx, [ctx; x] -> z, z -> x, latents -> x_embedder input
  kProfStepOps = 6,  // per-step scalars and the scheduler: modulation row gather, Euler update, index advance, CFG
  kProfCats = 7
};
// Short names for reports (JSON keys), in ProfCat order.
extern const char* const kProfNames[kProfCats];

struct ProfTotals {
  double ms[kProfCats] = {};
  double flop[kProfCats] = {};
};

void prof_enable(bool on);
bool prof_on();
void prof_begin(ProfCat c, cudaStream_t st);
void prof_end(ProfCat c, cudaStream_t st, double flop);
ProfTotals prof_collect();  // synchronises, sums and clears

// A mark over a scope (no FLOP count): the engine's own kernel families.
struct ProfScope {
  ProfCat c;
  cudaStream_t st;
  ProfScope(ProfCat c_, cudaStream_t st_) : c(c_), st(st_) { prof_begin(c, st); }
  ~ProfScope() { prof_end(c, st, 0); }
  ProfScope(const ProfScope&) = delete;
  ProfScope& operator=(const ProfScope&) = delete;
};

}  // namespace fq
