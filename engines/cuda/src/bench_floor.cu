// The GEMM + attention floor of one FLUX.1-dev step, measured: the transformer's GEMM sequence and its joint
// attentions, recorded from one real step of the model (a StepTap on linear() and attention: the list is derived,
// not copied) and replayed through the same linear() / cuDNN calls on random inputs, with nothing else (no norms,
// RoPE, residual adds). Timed two ways: back to back for N steps (sustained: the card runs at its power limit, as in
// a real generation) and one op at a time with a sync between (each op alone, the way per-kernel microbenchmarks
// measure). The engine's step minus the sustained floor is what its own kernels cost. Also with every output in
// bf16 (PyTorch's bf16 linears), for comparison.
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "engine.h"
#include "event_timer.h"
#include "kernels/kernels.h"
#include "selftest.h"

namespace fq {
namespace {

struct Recorder : StepTap {
  struct Op {
    const Linear* l;  // null: an attention
    int rows;
    DType xt, yt;
    int ldx, ldy;
    Epi epi;
    int B, S, H, D, ldo;
  };
  std::vector<Op> ops;
  void on_linear(const Linear& l, int rows, const In& x, const Out& y, Epi epi, bool) override {
    ops.push_back(Op{&l, rows, x.t, y.t, x.ld, y.ld, epi, 0, 0, 0, 0, 0});
  }
  void on_attention(int B, int S, int H, int D, int ldo) override {
    ops.push_back(Op{nullptr, 0, DType::F32, DType::F32, 0, 0, Epi::None, B, S, H, D, ldo});
  }
};

}  // namespace

// One step of `job` recorded (run eagerly once), for the floor and for the GEMM list in the benchmark JSON.
std::string gemm_attention_floor(Engine& e, Job& job, int steps, bool bf16_out) {
  Recorder rec;
  Ctx c = e.ctx();
  c.tap = &rec;
  {
    // A recording pass over a scratch copy of the job's state: the job itself is not advanced.
    DeviceArena mem;
    FluxStep s = e.flux->alloc_step(mem, job.req.batch, job.L, job.req.t5_len, e.st, 0, job.req.branch_bf16);
    e.flux->forward(c, s, job.lat, job.ctx0, job.mods, job.R, job.cs, job.vel);
    CUDA_CHECK(cudaStreamSynchronize(e.st));
  }
  c.tap = nullptr;
  size_t x_bytes = 0, y_bytes = 0, o_bytes = 0, qkv = 0;
  int n_lin = 0, n_attn = 0;
  for (auto& op : rec.ops) {
    if (op.l) {
      x_bytes = std::max(x_bytes, size_t(op.rows) * op.ldx * 2);
      y_bytes = std::max(y_bytes, size_t(op.rows) * op.ldy * 4);
      n_lin++;
    } else {
      qkv = std::max(qkv, size_t(op.B) * op.S * op.H * op.D * 2);
      o_bytes = std::max(o_bytes, size_t(op.B) * op.S * op.ldo * 2);
      n_attn++;
    }
  }
  // sc: the fp8 scale at offset 0 (cuBLASLt wants it 16-byte aligned, see linear.cu), the quantiser's amax at +16 B.
  DeviceBuffer X(x_bytes), X8(x_bytes / 2 + 256), Y(y_bytes), q(qkv), k(qkv), v(qkv), o(o_bytes), sc(8 * sizeof(float));
  fill_normal(X.get(), DType::BF16, int64_t(x_bytes / 2), 0.f, 1.f, 101, e.st);
  quantize_fp8(X.get(), DType::BF16, int64_t(x_bytes / 2), X8.get(), sc.as<float>(), sc.as<float>() + 4, e.st);
  for (auto* p : {&q, &k, &v}) fill_normal(p->get(), DType::BF16, int64_t(qkv / 2), 0.f, 1.f, 102, e.st);
  const bool dnn = e.use_cudnn;
  EventTimer timer;
  auto run_op = [&](const Recorder::Op& op) {
    if (op.l) {
      DType yt = bf16_out ? DType::BF16 : op.yt;
      In x = op.xt == DType::FP8 ? In{X8.get(), DType::FP8, op.ldx, sc.as<float>()} : In{X.get(), op.xt, op.ldx};
      linear(c, *op.l, op.rows, x, Out{Y.get(), yt, op.ldy}, op.epi);
    } else {
      float scale = 1.f / std::sqrt(float(op.D));
      if (dnn) e.cudnn.run(q.get(), k.get(), v.get(), o.get(), op.B, op.S, op.H, op.D, op.ldo, scale, e.st);
      else flash_attention(q.get(), k.get(), v.get(), op.B, op.S, op.H, op.D, scale, OutMap{nullptr, o.get(), 0, op.ldo}, e.st);
    }
  };
  double g1 = 0, a1 = 0;
  for (auto& op : rec.ops) run_op(op);  // warm-up: plans, autotune
  CUDA_CHECK(cudaStreamSynchronize(e.st));
  const float sustained = timer.ms(e.st, [&] {
    for (int s = 0; s < steps; s++)
      for (auto& op : rec.ops) run_op(op);
  });
  for (auto& op : rec.ops) (op.l ? g1 : a1) += timer.ms(e.st, [&] { run_op(op); });
  const double per_step = sustained / steps;
  fprintf(stderr,
          "[bench] GEMM+attention floor (%d linears + %d attentions recorded from the model, %s outputs): sustained "
          "%.1f ms/step (x%d steps = %.3f s); one op at a time %.1f ms/step (GEMM %.1f + attention %.1f)\n",
          n_lin, n_attn, bf16_out ? "bf16" : "engine's fp32/bf16", per_step, steps, per_step * steps / 1e3, g1 + a1,
          g1, a1);
  char buf[512];
  snprintf(buf, sizeof buf,
           "{\"linears\": %d, \"attentions\": %d, \"outputs\": \"%s\", \"sustained_ms_per_step\": %.2f, "
           "\"sustained_s_for_steps\": %.3f, \"one_at_a_time_ms_per_step\": %.2f, \"one_at_a_time_gemm_ms\": %.2f, "
           "\"one_at_a_time_attention_ms\": %.2f}",
           n_lin, n_attn, bf16_out ? "bf16" : "engine", per_step, per_step * steps / 1e3, g1 + a1, g1, a1);
  return buf;
}

}  // namespace fq
