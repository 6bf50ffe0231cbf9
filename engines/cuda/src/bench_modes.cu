// `fluxql-engine --bench-modes`: the CUDA modes (issue 15) timed end to end on ONE engine at FLUX.1-dev size
// (synthetic weights), loaded as the server loads it: bf16 base + per-job plan "fp8" (plan_variants.h). Rows:
//   original  base plan
//   XL        base plan, branch outputs in bf16 (Request::branch_bf16; its floor records those GEMMs)
//   S         plan fp8 (the server's S mode on CUDA)
//   S+cache   plan fp8 with step caching under a FORCED cached-step pattern (Request::cache_pattern): random
//             weights do not cache like trained ones, so the schedule comes from a trained model's plan (flux-mini)
//   NAME=PLAN[/PATTERN]  any other row: PLAN base or fp8, optionally with its own forced pattern, e.g. the planned
//             L, M and S configurations measured on flux-mini (`--modes L=base/FFFFFFCFCF...,M=fp8/...`)
// per batch: one warm-up, then the mean of N requests (prepare + steps + decode to RGB8 in host memory), and the
// GEMM + attention floor of each plan and batch measured in the same run (bench_floor.cu). Optionally LoRA rows per
// mode and rank (bench_lora.cu's lora_overhead). L and M are listed as unavailable (no GPU planner yet).
// Writes <out>.json and <out>.md.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <map>
#include <random>
#include <sstream>
#include <tuple>

#include "bench_util.h"
#include "engine.h"
#include "json.h"
#include "selftest.h"

namespace fq {
namespace {

using clk = std::chrono::steady_clock;
double ms_since(clk::time_point t) { return std::chrono::duration<double, std::milli>(clk::now() - t).count(); }

struct ModeSpec {
  std::string mode, precision, plan;  // plan: "" = the base
  bool cached;
  std::string pattern = "";  // the row's own forced pattern (NAME=PLAN/PATTERN); empty: --cache-pattern's
  bool branch_bf16 = false;  // XL's step (Request::branch_bf16)
};

const std::vector<ModeSpec> kModes = {
    {"original", "bf16", "", false},
    {"XL", "bf16", "", false, "", true},
    {"S", "fp8", "fp8", false},
    {"S+cache", "fp8", "fp8", true},
};

// NAME=PLAN[/PATTERN] (PLAN: base, fp8 or fp8all; PATTERN: F/C per step, padded with F / cut to `steps`).
ModeSpec custom_mode(const std::string& spec, int steps) {
  const size_t eq = spec.find('='), sl = spec.find('/');
  const std::string name = spec.substr(0, eq);
  const std::string plan = spec.substr(eq + 1, sl == std::string::npos ? std::string::npos : sl - eq - 1);
  if (name.empty() || (plan != "base" && plan != "fp8" && plan != "fp8all"))
    throw std::runtime_error("--modes: " + spec + " must be NAME=base|fp8|fp8all[/PATTERN]");
  ModeSpec m{name, plan == "base" ? "bf16" : "fp8", plan == "base" ? "" : plan, false};
  if (sl != std::string::npos) {
    m.pattern = spec.substr(sl + 1);
    if (m.pattern.empty() || m.pattern.find_first_not_of("FC") != std::string::npos)
      throw std::runtime_error("--modes: " + spec + ": the pattern holds only F and C");
    m.pattern.resize(size_t(steps), 'F');
    m.cached = true;
  }
  return m;
}

std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> v;
  std::stringstream ss(s);
  for (std::string t; std::getline(ss, t, ',');)
    if (!t.empty()) v.push_back(t);
  return v;
}

// Transformer Linears in fp8 under a plan (the base when null): what the plan changes, read off the swapped-in types.
int fp8_layers(Engine& e, const PlanVariant* v) {
  PlanScope scope(e.plans.get(), v);
  int n = 0;
  for (const Linear* l : e.flux->linears()) n += l->wt == DType::FP8;
  return n;
}

struct Floor {
  double ms_per_step = 0, s_for_steps = 0;
  std::string json;
};

// The GEMM + attention floor of one step of a `plan` job at batch B (its plan held across the recording and the
// replay: the recorded Linears are read when the ops run).
Floor measure_floor(Engine& e, const Request& r, int steps) {
  auto job = e.prepare(r);
  PlanScope scope(e.plans.get(), job->plan);
  Floor f;
  f.json = gemm_attention_floor(e, *job, steps, false);
  const Json j = Json::parse(f.json);
  f.ms_per_step = j.num("sustained_ms_per_step", 0);
  f.s_for_steps = j.num("sustained_s_for_steps", 0);
  return f;
}

}  // namespace

int run_bench_modes(const std::string& size, int steps, const std::string& batches, int iters,
                    const std::string& modes, const std::string& cache_pattern, const std::string& lora_ranks,
                    const std::string& card, const std::string& out_prefix) {
  const size_t xpos = size.find('x');
  const int width = std::stoi(size.substr(0, xpos));
  const int height = xpos == std::string::npos ? width : std::stoi(size.substr(xpos + 1));
  // The forced schedule: given, or the S rule's upper bound (warm-up 1, at most 1 cached in a row, every eligible
  // step under the threshold: F C F C ...). Padded with F / cut to `steps`.
  std::string pattern = cache_pattern, pattern_source = "given (--cache-pattern)";
  if (pattern.empty()) {
    for (int i = 0; i < steps; i++) pattern += i % 2 ? 'C' : 'F';
    pattern_source = "S rule upper bound (warm-up 1, max 1 in a row, every eligible step cached): not a trained plan";
  }
  if (pattern.find_first_not_of("FC") != std::string::npos) throw std::runtime_error("--cache-pattern: only F and C");
  pattern.resize(size_t(steps), 'F');
  std::vector<ModeSpec> run;
  for (const std::string& m : split(modes)) {
    if (m.find('=') != std::string::npos) {
      run.push_back(custom_mode(m, steps));
      continue;
    }
    auto it = std::find_if(kModes.begin(), kModes.end(), [&](const ModeSpec& s) { return s.mode == m; });
    if (it == kModes.end())
      throw std::runtime_error("--modes: unknown mode " + m + " (original, XL, S, S+cache, NAME=base|fp8[/PATTERN])");
    run.push_back(*it);
  }
  bool planned_lm = false;  // rows named L or M: the planned configurations, not "unavailable"
  for (const ModeSpec& m : run) planned_lm |= m.mode == "L" || m.mode == "M";
  std::vector<int> ranks;
  for (const std::string& r : split(lora_ranks)) ranks.push_back(std::stoi(r));

  const std::string dev = device_name();
  int drv = 0, rt = 0;
  cudaDriverGetVersion(&drv);
  cudaRuntimeGetVersion(&rt);
  fprintf(stderr, "[bench-modes] device: %s (%s)\n", dev.c_str(), card.c_str());
  Engine e(PrecisionPlan::named("bf16"));
  if (!ranks.empty()) e.lora_max_bytes = size_t(64) << 30;  // rank 256 on every Linear (bench_lora's bound)
  auto tl = clk::now();
  e.load_synthetic(42);
  e.add_plan("fp8", plan_of_spec("fp8", e.plan));  // load's plans {"fp8": "fp8"}, as the server's executor sends
  const double load_ms = ms_since(tl);
  bool want_all = false;
  for (const ModeSpec& m : run) want_all |= m.plan == "fp8all";
  if (want_all) e.add_plan("fp8all", plan_of_spec("fp8all", e.plan));  // plan_variants.cu
  const PlanVariant* fp8 = e.plans->find("fp8");
  const int base_fp8 = fp8_layers(e, nullptr), plan_fp8 = fp8_layers(e, fp8);
  fprintf(stderr, "[bench-modes] weights %.2f GB + plan fp8 %.2f GB (%d fp8 layers) in %.0f ms\n",
          e.weights.bytes() / 1e9, fp8->bytes() / 1e9, plan_fp8, load_ms);

  std::ostringstream rows, md;
  std::mt19937 rng(5);
  // (plan, batch, branch type) -> floor, measured once in this run (XL's GEMMs write bf16 branch outputs).
  std::map<std::tuple<std::string, int, bool>, Floor> floors;
  bool first = true;
  for (const std::string& bt : split(batches)) {
    const int B = std::stoi(bt);
    const Request base = make_bench_request(e.cfg, B, width, height, steps, rng);
    std::vector<uint8_t> img(size_t(B) * width * height * 3);
    uint8_t* dimg;
    CUDA_CHECK(cudaMalloc(&dimg, img.size()));
    for (const ModeSpec& mode : run) {
      const ModeSpec* m = &mode;
      const std::string& row_pattern = m->pattern.empty() ? pattern : m->pattern;
      Request r = base;
      r.plan = m->plan;
      r.branch_bf16 = m->branch_bf16;
      if (m->cached) {
        r.step_cache = true;
        r.cache_pattern = row_pattern;
      }
      auto fk = std::make_tuple(m->plan, B, m->branch_bf16);
      if (!floors.count(fk)) {
        Request fr = base;
        fr.plan = m->plan;
        fr.branch_bf16 = m->branch_bf16;
        floors[fk] = measure_floor(e, fr, steps);
      }
      const Floor& fl = floors[fk];
      run_once(e, r, img, dimg);  // warm-up: the geometry's planning, tuning, scratch, module loading
      std::vector<RunTimes> ts;
      for (int i = 0; i < iters; i++) ts.push_back(run_once(e, r, img, dimg));
      double mean = 0, var = 0, mn = 1e30, mx = 0, stp = 0, prep = 0, dec = 0, cap = 0;
      size_t mem = 0;
      for (auto& t : ts) {
        mean += t.total / iters;
        mn = std::min(mn, t.total);
        mx = std::max(mx, t.total);
        stp += t.steps / iters / steps;
        prep += t.prepare / iters;
        dec += t.decode / iters;
        cap += t.capture / iters;
        mem = std::max(mem, t.mem);
      }
      for (auto& t : ts) var += (t.total - mean) * (t.total - mean) / std::max(1, iters - 1);
      const int full = ts.back().full_steps, cached = ts.back().cached_steps;
      const PlanVariant* pv = m->plan.empty() ? nullptr : e.plans->find(m->plan);
      const int nfp8 = m->plan.empty() ? base_fp8 : m->plan == "fp8" ? plan_fp8 : fp8_layers(e, pv);
      fprintf(stderr,
              "[bench-modes] %s (%s) batch %d: mean %.3f s (std %.3f, min %.3f, max %.3f), step %.2f ms, %d full + "
              "%d cached steps, floor %.3f s (%.1f ms/step)\n",
              m->mode.c_str(), m->precision.c_str(), B, mean / 1e3, std::sqrt(var) / 1e3, mn / 1e3, mx / 1e3, stp,
              full, cached, fl.s_for_steps, fl.ms_per_step);
      char buf[2048];
      snprintf(buf, sizeof buf,
               "    {\"mode\": \"%s\", \"precision\": \"%s\", \"batch\": %d, \"mean_s\": %.4f, \"std_s\": %.4f, "
               "\"min_s\": %.4f, \"max_s\": %.4f, \"s_per_image\": %.4f, \"step_ms\": %.3f, \"prepare_ms\": %.1f, "
               "\"decode_ms\": %.1f, \"capture_ms\": %.2f, \"full_steps\": %d, \"cached_steps\": %d, "
               "\"cache_pattern\": %s, \"plan\": {\"name\": \"%s\", \"fp8_layers\": %d, \"alternate_gb\": %.3f}, "
               "\"floor_s\": %.4f, \"floor_ms_per_step\": %.3f, \"floor_full_steps_s\": %.4f, "
               "\"gpu_mem_used_gb\": %.2f, \"floor\": %s}",
               m->mode.c_str(), m->precision.c_str(), B, mean / 1e3, std::sqrt(var) / 1e3, mn / 1e3, mx / 1e3,
               mean / 1e3 / B, stp, prep, dec, cap, full, cached, m->cached ? json_escape(row_pattern).c_str() : "null",
               m->plan.empty() ? "base" : m->plan.c_str(), nfp8, pv ? pv->bytes() / 1e9 : 0.0,
               fl.s_for_steps, fl.ms_per_step, fl.ms_per_step * full / 1e3, mem / 1e9, fl.json.c_str());
      rows << (first ? "" : ",\n") << buf;
      first = false;
      snprintf(buf, sizeof buf,
               "| %s | %s | %d | %.3f | %.3f | %.3f | %.2f | %d / %d | %s | %s (%d fp8 layers) | %.3f |\n",
               m->mode.c_str(), m->precision.c_str(), B, mean / 1e3, std::sqrt(var) / 1e3, mean / 1e3 / B, stp, full,
               steps, m->cached ? ("`" + row_pattern + "`").c_str() : "-", m->plan.empty() ? "base" : m->plan.c_str(),
               nfp8, fl.s_for_steps);
      md << buf;
    }
    CUDA_CHECK(cudaFree(dimg));
  }

  // LoRA rows: original (base plan) and S (plan fp8); XL computes what original does. Batch 1, 6 steps (the step
  // time is what matters; bench_lora's default).
  std::ostringstream lrows, lmd;
  if (!ranks.empty()) {
    bool lfirst = true;
    for (const ModeSpec* m : {&kModes[0], &kModes[2]}) {
      Request base = make_bench_request(e.cfg, 1, width, height, 6, rng);
      base.plan = m->plan;
      for (const LoraOverhead& o : lora_overhead(e, base, ranks)) {
        char buf[900];
        snprintf(buf, sizeof buf,
                 "    {\"mode\": \"%s\", \"precision\": \"%s\", \"lora_rank\": %d, \"overhead_pct\": %.2f, "
                 "\"switch_ms\": %.2f, \"switch_cached_ms\": %.4f, \"layers\": %d, \"lora_mib\": %.1f, "
                 "\"set_mib\": %.1f, \"load_ms\": %.1f, \"first_prepare_ms\": %.1f, \"prepare_ms\": %.1f, "
                 "\"base_prepare_ms\": %.1f, \"base_step_ms\": %.3f, \"base_step_after_ms\": %.3f, "
                 "\"lora_step_ms\": %.3f}",
                 m->mode.c_str(), m->precision.c_str(), o.rank, o.overhead_pct, o.set_build_ms,
                 o.cached_set_us / 1e3, o.layers, o.lora_mib, o.set_mib, o.load_ms, o.first_prepare_ms, o.prepare_ms,
                 o.base_prepare_ms, o.base_step_ms, o.base_step_after_ms, o.lora_step_ms);
        lrows << (lfirst ? "" : ",\n") << buf;
        lfirst = false;
        snprintf(buf, sizeof buf, "| %s | %d | %.3f | %.3f | %+.1f | %.2f | %.3f | %.0f |\n", m->mode.c_str(), o.rank,
                 o.base_step_ms, o.lora_step_ms, o.overhead_pct, o.set_build_ms, o.cached_set_us / 1e3, o.load_ms);
        lmd << buf;
      }
    }
  }

  const std::string method =
      "One engine, synthetic FLUX.1-dev-sized weights, loaded bf16 with plans {\"fp8\": \"fp8\"} (the server's CUDA "
      "executor load). Per mode and batch: one warm-up request, then the mean of " +
      std::to_string(iters) + " (sample std) end-to-end requests: token ids in, prepare + " + std::to_string(steps) +
      " steps + VAE decode, RGB8 in host memory; host clock around each synchronised phase; CUDA-graph step replay. "
      "Floor: the step's recorded GEMM + attention sequence alone under the row's plan and batch, " +
      std::to_string(steps) + " steps back to back (bench_floor.cu), measured in the same run before the rows. "
      "S+cache forces the cached-step pattern (" + pattern_source + ") through the step cache; the head and the "
      "decision readback still run every step.";
  std::ostringstream js;
  js << "{\n  \"device\": " << json_escape(dev) << ",\n  \"card\": " << json_escape(card)
     << ",\n  \"cuda_driver_api\": " << drv << ", \"cuda_runtime\": " << rt
     << ",\n  \"engine\": \"fluxql-engine --bench-modes (engines/cuda)\",\n"
     << "  \"weights\": \"synthetic FLUX.1-dev sizes (CLIP-L, T5-XXL, 19+38 blocks, VAE)\",\n"
     << "  \"weights_gb\": " << e.weights.bytes() / 1e9 << ", \"plan_fp8_gb\": " << fp8->bytes() / 1e9
     << ", \"load_ms\": " << load_ms << ",\n  \"width\": " << width << ", \"height\": " << height
     << ", \"steps\": " << steps << ", \"iters\": " << iters << ",\n  \"cache_pattern\": " << json_escape(pattern)
     << ", \"cache_pattern_source\": " << json_escape(pattern_source)
     << ",\n  \"method\": " << json_escape(method)
     << ",\n  \"unavailable_modes\": "
     << (planned_lm ? "[]"
                    : "[{\"mode\": \"L\", \"why\": \"no planned L/M rows in this run\"}, "
                      "{\"mode\": \"M\", \"why\": \"no planned L/M rows in this run\"}]")
     << ",\n"
     << "  \"rows\": [\n" << rows.str() << "\n  ],\n  \"lora_rows\": [\n" << lrows.str() << "\n  ]\n}\n";
  std::ostringstream out;
  out << "# fluxql CUDA engine modes on " << dev << "\n\n" << card << "\n\n" << method << "\n\n"
      << "| mode | precision | batch | mean s | std s | s/image | step ms | full / steps | pattern | plan | floor s |\n"
      << "|---|---|---|---|---|---|---|---|---|---|---|\n"
      << md.str() << (planned_lm ? "\nL, M: rows NAME=PLAN/PATTERN (their plan and forced pattern above)."
                                 : "\nL, M: no rows in this run.")
      << " S+cache's forced pattern: `" << pattern << "`.\n";
  if (!ranks.empty())
    out << "\nLoRA on every transformer Linear (random factors, strength 0.8), batch 1, step time replayed after the "
           "first; switch = first use of a set (concatenation + strength folding on the GPU), cached = a later "
           "switch back to it.\n\n"
        << "| mode | rank | base step ms | LoRA step ms | overhead % | switch ms | cached switch ms | load ms |\n"
        << "|---|---|---|---|---|---|---|---|\n"
        << lmd.str();
  std::ofstream(out_prefix + ".json") << js.str();
  std::ofstream(out_prefix + ".md") << out.str();
  printf("%s", out.str().c_str());
  return 0;
}

}  // namespace fq
