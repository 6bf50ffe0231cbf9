// Optional per-category GPU timing (GEMMs, attention) with CUDA events, for the benchmark's per-step breakdown.
// Off by default: when off, marks cost one branch. A mark opened inside another counts toward the outer one only.
#pragma once
#include <cuda_runtime.h>

namespace fq {

enum ProfCat { kProfGemm = 0, kProfAttn = 1, kProfCats = 2 };

struct ProfTotals {
  double ms[kProfCats] = {0, 0};
  double flop[kProfCats] = {0, 0};
};

void prof_enable(bool on);
bool prof_on();
void prof_begin(ProfCat c, cudaStream_t st);
void prof_end(ProfCat c, cudaStream_t st, double flop);
ProfTotals prof_collect();  // synchronises, sums and clears

}  // namespace fq
