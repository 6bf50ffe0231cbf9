#include "calibrate.h"

#include <cmath>
#include <map>
#include <stdexcept>

#include "event_timer.h"
#include "fault.h"
#include "kernels/kernels.h"

namespace fq {

namespace {

// The Linear calls of one conditioning (prepare-time) pass and one forward: shapes only (the operands are fresh
// buffers when timed: recorded pointers may be scratch that moves later).
struct CallRecorder : StepTap {
  struct Call {
    int rows;
    DType yt;
    Epi epi;
    bool resid;
    bool at_prepare;  // runs once per job (context embedder, conditioning), not once per step
  };
  std::map<const Linear*, std::vector<Call>> calls;
  bool at_prepare = false;
  void on_linear(const Linear& l, int rows, const In&, const Out& y, Epi epi, bool resid) override {
    calls[&l].push_back(Call{rows, y.t, epi, resid, at_prepare});
  }
  void on_attention(int, int, int, int, int) override {}
};

// ||a - b||_2 / ||b||_2 in float64 (NaN anywhere: NaN).
double rel_l2(const std::vector<float>& a, const std::vector<float>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); i++) {
    const double d = double(a[i]) - double(b[i]);
    num += d * d;
    den += double(b[i]) * double(b[i]);
  }
  return std::sqrt(num) / std::sqrt(den > 0 ? den : 1.0);
}

// Every sample of the job at step i (the device schedule the forward reads its conditioning rows by).
void set_step(Engine& e, Job& j, int i) {
  for (auto& s : j.samples) s.step = i;
  e.upload_schedule(j);
}

}  // namespace

Calibration calibrate(Engine& e, const Request& r, int reps, const std::vector<std::pair<std::string, std::string>>& verify,
                      bool per_layer, bool fp8row) {
  if (e.dt != DType::BF16) throw std::runtime_error("calibrate: needs a bf16 engine (fp8 alternates run over bf16)");
  if (!r.plan.empty() || !r.loras.empty() || !r.cfg_scale.empty() || !r.image_latents.empty() || !r.mask.empty() ||
      !r.control.empty() || r.step_cache)
    throw std::runtime_error("calibrate: plain text-to-image inputs only (no plan, loras, true_cfg, inpaint, control "
                             "or step_cache)");
  if (reps < 1) throw std::runtime_error("calibrate: reps must be >= 1");
  auto job = e.prepare(r);  // base plan: encoders, conditioning, the geometry planned (GEMM algorithms picked)
  Job& j = *job;
  FluxTransformer& fx = *e.flux;
  const int TB = j.TB, T = r.t5_len, steps = j.steps, B = r.batch;
  const int64_t nvel = int64_t(TB) * j.L * 64;  // velocity [TB, L, 64] fp32, as latents
  Ctx c = e.ctx();
  cudaStream_t st = e.st;
  DeviceArena mem;
  float* ctx0 = mem.allocT<float>(size_t(TB) * T * fx.cfg.hidden());  // context / conditioning under a trial plan
  float* mods = mem.allocT<float>(size_t(j.R) * fx.mod_width());
  float* lats = mem.allocT<float>(size_t(steps) * nvel);  // the base trajectory's latents at each step
  // Model inputs as prepare forms them (engine.cu): timestep float32(sigma * 1000) / 1000, each sample's guidance.
  std::vector<float> tin(j.R), gin(j.R);
  for (int i = 0; i < steps; i++)
    for (int b = 0; b < TB; b++) {
      tin[i * TB + b] = (r.sigmas[i] * 1000.f) / 1000.f;
      gin[i * TB + b] = r.guidance[b % B];
    }
  auto condition = [&]() {
    fx.embed_context(c, j.t5, TB * T, ctx0);
    fx.conditioning(c, tin, gin, j.pooled, TB, steps, mods);
  };

  // 1. Which layer runs where, on how many rows: one conditioning pass and one forward, recorded.
  CallRecorder rec;
  c.tap = &rec;
  rec.at_prepare = true;
  condition();
  rec.at_prepare = false;
  fx.forward(c, j.state, j.lat, j.ctx0, j.mods, j.R, j.cs, j.vel);
  c.tap = nullptr;
  CUDA_CHECK(cudaStreamSynchronize(st));

  // 2. The base trajectory: each step's latents and velocity (host), then the Euler update as a step runs it.
  std::vector<std::vector<float>> vref(steps, std::vector<float>(nvel));
  for (int i = 0; i < steps; i++) {
    set_step(e, j, i);
    CUDA_CHECK(cudaMemcpyAsync(lats + i * nvel, j.lat, nvel * 4, cudaMemcpyDeviceToDevice, st));
    fx.forward(c, j.state, j.lat, j.ctx0, j.mods, j.R, j.cs, j.vel);
    CUDA_CHECK(cudaMemcpyAsync(vref[i].data(), j.vel, nvel * 4, cudaMemcpyDeviceToHost, st));
    e.finish_step(j);
  }
  CUDA_CHECK(cudaStreamSynchronize(st));

  Calibration out;
  out.steps = steps;
  EventTimer timer;
  set_step(e, j, 0);
  fx.forward(c, j.state, lats, j.ctx0, j.mods, j.R, j.cs, j.vel);  // warm
  out.base_ms = timer.ms(st, [&] {
    for (int k = 0; k < reps; k++) fx.forward(c, j.state, lats, j.ctx0, j.mods, j.R, j.cs, j.vel);
  }) / reps;

  // Operands for timing one layer's calls alone: random bf16 input rows, outputs of the recorded type.
  size_t xmax = 0, ymax = 0;
  for (auto& [l, calls] : rec.calls)
    for (auto& k : calls) {
      xmax = std::max(xmax, size_t(k.rows) * l->in * 2);
      ymax = std::max(ymax, size_t(k.rows) * l->out * dsize(k.yt));
    }
  void* xb = mem.alloc(std::max<size_t>(xmax, 2));
  void* yb = mem.alloc(std::max<size_t>(ymax, 4));
  fill_normal(xb, DType::BF16, int64_t(xmax / 2), 0.f, 1.f, 1234, st);
  CUDA_CHECK(cudaMemsetAsync(yb, 0, ymax, st));
  // ms per denoising step of the layer as it is now (its base, or a plan's alternate swapped in).
  auto time_layer = [&](const Linear& l, const std::vector<CallRecorder::Call>& calls) {
    double ms = 0;
    for (auto& k : calls) {
      auto run = [&] {
        linear(c, l, k.rows, In{xb, DType::BF16, l.in}, Out{yb, k.yt, l.out}, k.epi, k.resid ? yb : nullptr);
      };
      run();  // warm (an fp8 shape's first call may tune its GEMM)
      const double t = timer.ms(st, [&] {
        for (int n = 0; n < reps; n++) run();
      }) / reps;
      ms += k.at_prepare ? t / steps : t;
    }
    return ms;
  };

  // The mean relative error of the current plan over the base trajectory; `cond`: recompute context and conditioning
  // under it first (a plan changing a prepare-time layer).
  std::vector<float> v(nvel);
  auto trajectory_error = [&](bool cond) {
    if (cond) condition();
    double sum = 0;
    for (int i = 0; i < steps; i++) {
      set_step(e, j, i);
      fx.forward(c, j.state, lats + i * nvel, cond ? ctx0 : j.ctx0, cond ? mods : j.mods, j.R, j.cs, j.vel);
      CUDA_CHECK(cudaMemcpyAsync(v.data(), j.vel, nvel * 4, cudaMemcpyDeviceToHost, st));
      CUDA_CHECK(cudaStreamSynchronize(st));
      sum += rel_l2(v, vref[i]);
    }
    return sum / steps;
  };

  // 3. Whole plans (`verify`): every layer the rules make fp8 swapped in at once. Refusals are the caller's error.
  for (auto& [name, rules] : verify) {
    PlanCheck pc;
    pc.name = name;
    pc.rules = rules;
    auto alt = e.plans->make(name, plan_of_spec(rules, e.plan));
    pc.layers = int(alt->layers.size());
    PlanScope scope(e.plans.get(), alt.get());
    bool cond = false;
    for (auto& sw : alt->layers)
      for (auto& k : rec.calls[sw.layer]) cond |= k.at_prepare;
    pc.rel_err = trajectory_error(cond);
    out.checks.push_back(pc);
  }
  if (!per_layer) return out;

  // 4. Per layer: its fp8 alternate alone, the forward at every step of the base trajectory, then its GEMM times;
  // the same for its fp8row alternate.
  for (Linear* l : fx.linears()) {
    LayerCalibration lc;
    lc.name = l->name;
    lc.in = l->in;
    lc.out = l->out;
    lc.base = l->wt;
    auto it = rec.calls.find(l);
    const std::vector<CallRecorder::Call> none;
    const auto& calls = it == rec.calls.end() ? none : it->second;
    bool at_prepare = false;
    for (auto& k : calls) at_prepare |= k.at_prepare;
    lc.ms_base = time_layer(*l, calls);
    // One alternate type t for this layer alone: its error over the trajectory and its time. False (and `skip` set)
    // when it cannot be measured.
    auto trial = [&](DType t, double& rel_err, double& ms, std::string& skip) {
      if (calls.empty()) {
        skip = "not called at this geometry";
        return false;
      }
      if (l->wt != DType::BF16) {
        skip = std::string("base type ") + dname(l->wt) + " (only bf16 layers get fp8 / fp8row alternates)";
        return false;
      }
      try {
        // The plan-variant machinery's own alternate of this one layer: the base plan with one more rule, its
        // exact name, first (every other layer keeps its base type, whatever the base plan's rules are).
        PrecisionPlan one = e.plan;
        one.name = "custom";
        one.rules.insert(one.rules.begin(), {l->name, t});
        auto alt = e.plans->make("calibrate", one);
        PlanScope scope(e.plans.get(), alt.get());
        // Layers run at prepare change the context or the conditioning rows of every step: recomputed under it.
        rel_err = trajectory_error(at_prepare);
        ms = time_layer(*l, calls);
        return true;
      } catch (const std::exception& ex) {
        // A device fault ends the calibration (and the process); a refusal (e.g. a strided input fp8 cannot take)
        // only marks the layer.
        if (fault_sticky()) throw;
        CUDA_CHECK(cudaStreamSynchronize(st));
        skip = ex.what();
        return false;
      }
    };
    lc.fp8 = trial(DType::FP8, lc.rel_err, lc.ms_fp8, lc.skip);
    if (fp8row)
      lc.fp8row = trial(DType::FP8ROW, lc.rel_err_fp8row, lc.ms_fp8row, lc.skip_fp8row);
    else
      lc.skip_fp8row = "not asked (calibrate's fp8row: true)";
    out.layers.push_back(lc);
  }
  CUDA_CHECK(cudaStreamSynchronize(st));
  return out;
}

}  // namespace fq
