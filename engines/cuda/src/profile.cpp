#include "profile.h"

#include <vector>

#include "common.h"

namespace fq {
namespace {
struct Mark {
  ProfCat cat;
  cudaEvent_t a, b;
  double flop;
};
bool g_on = false;
int g_depth = 0;  // marks opened and not closed: a nested mark (a GEMM inside a timed region) is not counted twice
std::vector<Mark> g_marks;
std::vector<cudaEvent_t> g_pool;
cudaEvent_t take() {
  if (g_pool.empty()) {
    cudaEvent_t e;
    CUDA_CHECK(cudaEventCreate(&e));
    return e;
  }
  cudaEvent_t e = g_pool.back();
  g_pool.pop_back();
  return e;
}
}  // namespace

const char* const kProfNames[kProfCats] = {"gemm", "attention", "residual_norm", "norm", "qk_norm_rope", "copy",
                                           "step_ops"};

void prof_enable(bool on) { g_on = on; }
bool prof_on() { return g_on; }

void prof_begin(ProfCat c, cudaStream_t st) {
  if (!g_on) return;
  if (g_depth++ > 0) return;
  Mark m{c, take(), take(), 0};
  CUDA_CHECK(cudaEventRecord(m.a, st));
  g_marks.push_back(m);
}

void prof_end(ProfCat c, cudaStream_t st, double flop) {
  if (!g_on || g_depth == 0) return;
  if (--g_depth > 0 || g_marks.empty()) return;
  Mark& m = g_marks.back();
  m.flop = flop;
  (void)c;  // the outermost mark's category (set at begin) is the one counted
  CUDA_CHECK(cudaEventRecord(m.b, st));
}

ProfTotals prof_collect() {
  ProfTotals t;
  CUDA_CHECK(cudaDeviceSynchronize());
  for (auto& m : g_marks) {
    float ms = 0;
    CUDA_CHECK(cudaEventElapsedTime(&ms, m.a, m.b));
    t.ms[m.cat] += ms;
    t.flop[m.cat] += m.flop;
    g_pool.push_back(m.a);
    g_pool.push_back(m.b);
  }
  g_marks.clear();
  g_depth = 0;
  return t;
}

}  // namespace fq
