// The GEMM + attention floor of one FLUX.1-dev step, measured: the transformer's exact GEMM sequence (shapes,
// epilogues, output types) and its 57 joint attentions through the same cuBLASLt / cuDNN calls as the engine, on
// random bf16 data, with nothing else (no norms, RoPE, residual adds). Timed two ways: back to back for N steps
// (sustained: the card runs at its power limit, as in a real generation) and one op at a time with a sync between
// (each op alone, the way per-kernel microbenchmarks measure). The engine's step minus the sustained floor is what
// its own kernels cost. Also with every output in bf16 (PyTorch's bf16 linears), for comparison.
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "engine.h"
#include "event_timer.h"
#include "kernels/kernels.h"
#include "selftest.h"

namespace fq {

std::string gemm_attention_floor(Engine& e, int L, int T, int steps, bool bf16_out) {
  const FluxConfig& f = e.cfg.flux;
  const int D = f.hidden(), H = f.heads, hd = f.head_dim, S = L + T;
  const int copies = 4;  // weights rotate over 4 copies per shape so that no layer finds its weight in L2
  std::vector<void*> bufs;
  auto dev = [&](size_t bytes, DType dt, bool fill) {
    void* p;
    CUDA_CHECK(cudaMalloc(&p, bytes));
    if (fill) fill_normal(p, dt, int64_t(bytes / dsize(dt)), 0.f, 1.f, 100 + bufs.size(), e.st);
    bufs.push_back(p);
    return p;
  };
  struct Shape {
    int M, N, K;
    Epi epi;
    DType yt;
    int ldy;
    std::vector<void*> w;
    float* b;
  };
  auto shape = [&](int M, int N, int K, Epi epi, DType yt, int ldy) {
    Shape s{M, N, K, epi, yt, ldy, {}, nullptr};
    for (int c = 0; c < copies; c++) s.w.push_back(dev(size_t(N) * K * 2, DType::BF16, true));
    s.b = static_cast<float*>(dev(size_t(N) * 4, DType::F32, true));
    return s;
  };
  // Double block (image rows L, text rows T), then single block (S rows); fp32 outputs where the engine writes
  // the residual branch in fp32.
  // bf16_out: every GEMM writes bf16 (as PyTorch's bf16 linears do) instead of the engine's fp32 residual branches.
  const DType b16 = DType::BF16, f32 = bf16_out ? DType::BF16 : DType::F32;
  std::vector<Shape> dbl_pre{shape(L, 3 * D, D, Epi::Bias, b16, 3 * D), shape(T, 3 * D, D, Epi::Bias, b16, 3 * D)};
  std::vector<Shape> dbl_post{shape(L, D, D, Epi::Bias, f32, D),
                              shape(T, D, D, Epi::Bias, f32, D),
                              shape(L, 4 * D, D, Epi::BiasGelu, b16, 4 * D),
                              shape(L, D, 4 * D, Epi::Bias, f32, D),
                              shape(T, 4 * D, D, Epi::BiasGelu, b16, 4 * D),
                              shape(T, D, 4 * D, Epi::Bias, f32, D)};
  std::vector<Shape> sgl_pre{shape(S, 3 * D, D, Epi::Bias, b16, 3 * D), shape(S, 4 * D, D, Epi::BiasGelu, b16, 5 * D)};
  std::vector<Shape> sgl_post{shape(S, D, 5 * D, Epi::Bias, f32, D)};
  void* X = dev(size_t(S) * 5 * D * 2, DType::BF16, true);  // every GEMM's input (largest: [S, 5D])
  void* Y = dev(size_t(S) * 5 * D * 4, DType::F32, false);  // every GEMM's output
  void* q = dev(size_t(S) * D * 2, DType::BF16, true);
  void* k = dev(size_t(S) * D * 2, DType::BF16, true);
  void* v = dev(size_t(S) * D * 2, DType::BF16, true);
  void* o = dev(size_t(S) * D * 2, DType::BF16, false);
  const float scale = 1.f / std::sqrt(float(hd));
  const bool dnn = e.use_cudnn;
  int turn = 0;
  auto gemm = [&](const Shape& s) {
    e.gemm.linear(e.st, s.M, s.N, s.K, X, DType::BF16, s.K, s.w[turn % copies], DType::BF16, s.b, s.epi, Y, s.yt,
                  s.ldy);
  };
  auto attn = [&] {
    if (dnn) e.cudnn.run(q, k, v, o, 1, S, H, hd, D, scale, e.st);
    else flash_attention(q, k, v, 1, S, H, hd, scale, OutMap{nullptr, o, 0, D}, e.st);
  };
  // One step's ops in order; one_at_a_time: each op timed alone, with a sync after it.
  EventTimer timer;
  auto step = [&](bool one_at_a_time, double& gemm_ms, double& attn_ms) {
    auto timed = [&](auto&& fn, double& acc) {
      if (one_at_a_time) acc += timer.ms(e.st, fn);
      else fn();
    };
    for (int i = 0; i < f.layers; i++, turn++) {
      for (auto& s : dbl_pre) timed([&] { gemm(s); }, gemm_ms);
      timed(attn, attn_ms);
      for (auto& s : dbl_post) timed([&] { gemm(s); }, gemm_ms);
    }
    for (int i = 0; i < f.single_layers; i++, turn++) {
      for (auto& s : sgl_pre) timed([&] { gemm(s); }, gemm_ms);
      timed(attn, attn_ms);
      for (auto& s : sgl_post) timed([&] { gemm(s); }, gemm_ms);
    }
  };
  double g0 = 0, a0 = 0;
  step(false, g0, a0);  // warm-up: plans, autotune
  CUDA_CHECK(cudaStreamSynchronize(e.st));
  const float sustained = timer.ms(e.st, [&] {
    for (int s = 0; s < steps; s++) step(false, g0, a0);
  });
  double g1 = 0, a1 = 0;
  step(true, g1, a1);
  for (void* p : bufs) cudaFree(p);
  const double per_step = sustained / steps;
  fprintf(stderr,
          "[bench] GEMM+attention floor (L %d, T %d, %s outputs): sustained %.1f ms/step (x%d steps = %.3f s); one op at a time "
          "%.1f ms/step (GEMM %.1f + attention %.1f)\n",
          L, T, bf16_out ? "bf16" : "engine's fp32/bf16", per_step, steps, per_step * steps / 1e3, g1 + a1, g1, a1);
  char buf[384];
  snprintf(buf, sizeof buf,
           "{\"tokens_image\": %d, \"tokens_text\": %d, \"outputs\": \"%s\", \"sustained_ms_per_step\": %.2f, "
           "\"sustained_s_for_steps\": %.3f, \"one_at_a_time_ms_per_step\": %.2f, \"one_at_a_time_gemm_ms\": %.2f, "
           "\"one_at_a_time_attention_ms\": %.2f}",
           L, T, bf16_out ? "bf16" : "engine", per_step, per_step * steps / 1e3, g1 + a1, g1, a1);
  return buf;
}

}  // namespace fq
