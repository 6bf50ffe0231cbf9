// `fluxql-engine --bench-lora`: what LoRA adapters cost at FLUX.1-dev size (synthetic weights). Per rank, a LoRA on
// every transformer Linear (the worst case; real LoRAs usually target fewer layers) with random factors: load time
// (host checks + upload), set build time (first use of a set: concatenation and strength folding on the GPU), a
// cached set's lookup, the first prepare with the set (it plans the set's GEMM shapes), and the step time replayed
// from a CUDA graph against the same geometry without LoRA timed just before and just after (overhead % against their
// mean). Writes one JSON object per line to stdout
// and <out>.json.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <random>
#include <sstream>

#include "bench_util.h"
#include "engine.h"
#include "selftest.h"
#include "selftest_lora.h"

namespace fq {
namespace {

using clk = std::chrono::steady_clock;
double ms_since(clk::time_point t) { return std::chrono::duration<double, std::milli>(clk::now() - t).count(); }

std::vector<float> sigmas_of(int steps) {
  std::vector<float> s;
  for (int i = 0; i < steps; i++) s.push_back(1.f - float(i) / steps);
  s.push_back(0.f);
  return s;
}

Request request(const ModelConfig& cfg, int side, int steps) {
  Request r;
  r.width = r.height = side;
  r.t5_len = 512;
  for (int i = 0; i < cfg.clip.maxpos; i++) r.clip_ids.push_back(i == 0 ? cfg.clip.vocab - 2 : cfg.clip.vocab - 1);
  for (int i = 0; i < r.t5_len; i++) r.t5_ids.push_back(i < 20 ? 100 + i : i == 20 ? 1 : 0);
  r.guidance = {3.5f};
  r.sigmas = sigmas_of(steps);
  r.seed = 7;
  return r;
}

// Mean ms of the steps after the first (which captures the graph), one request's job.
double step_ms(Engine& e, const Request& r, double* prepare_ms) {
  auto t0 = clk::now();
  auto job = e.prepare(r);
  CUDA_CHECK(cudaStreamSynchronize(e.st));
  if (prepare_ms) *prepare_ms = ms_since(t0);
  e.step(*job);
  CUDA_CHECK(cudaStreamSynchronize(e.st));
  auto t1 = clk::now();
  while (job->step < job->steps) e.step(*job);
  CUDA_CHECK(cudaStreamSynchronize(e.st));
  return ms_since(t1) / (job->steps - 1);
}

}  // namespace

std::vector<LoraOverhead> lora_overhead(Engine& e, const Request& base, const std::vector<int>& ranks) {
  step_ms(e, base, nullptr);  // plans the geometry, tunes the GEMMs
  double base_ms = step_ms(e, base, nullptr);
  fprintf(stderr, "[bench-lora] %s plan '%s' %dx%d: base step %.2f ms\n", e.precision().c_str(), base.plan.c_str(),
          base.width, base.height, base_ms);
  std::vector<Linear*> linears = e.flux->linears();
  std::mt19937 rng(1);
  std::normal_distribution<float> nd(0.f, 0.02f);
  std::vector<LoraOverhead> rows;
  for (const int rank : ranks) {
    // One random buffer shared by every layer's factors (the registry copies them).
    int widest = 0;
    for (Linear* l : linears) widest = std::max(widest, std::max(l->in, l->out));
    std::vector<float> buf(size_t(rank) * widest);
    for (auto& v : buf) v = nd(rng);
    const std::vector<LoraLayerIn> layers = uniform_lora_layers(linears, rank, buf);
    LoraOverhead o;
    o.rank = rank;
    o.layers = int(layers.size());
    o.base_step_ms = base_ms;  // the base step just before this rank's LoRA steps
    auto t0 = clk::now();
    o.lora_mib = e.loras->load("bench", layers) / 1048576.0;
    o.load_ms = ms_since(t0);
    t0 = clk::now();
    auto set = e.loras->select({{"bench", 0.8f}});
    o.set_build_ms = ms_since(t0);
    o.set_mib = set->bytes / 1048576.0;
    t0 = clk::now();
    auto again = e.loras->select({{"bench", 0.8f}});
    o.cached_set_us = ms_since(t0) * 1e3;
    Request r = base;
    r.loras = {{"bench", 0.8f}};
    step_ms(e, r, &o.first_prepare_ms);  // plans the set's shapes
    o.lora_step_ms = step_ms(e, r, &o.prepare_ms);
    o.base_step_after_ms = step_ms(e, base, &o.base_prepare_ms);
    // Against the base steps on either side of the LoRA steps: the card drifts under its power cap by about 1 % over
    // a rank's runs (session 17: a base-first comparison gave 4.1-6.6 % for one configuration over three calls).
    o.overhead_pct = 100.0 * (o.lora_step_ms / (0.5 * (base_ms + o.base_step_after_ms)) - 1.0);
    base_ms = o.base_step_after_ms;
    rows.push_back(o);
    set.reset();
    again.reset();
    e.loras->unload("bench");
  }
  return rows;
}

int run_bench_lora(int side, int steps, const std::string& ranks, const std::string& precisions,
                   const std::string& out_prefix) {
  std::vector<int> rank_list;
  for (std::stringstream rs(ranks); rs.good();) {
    std::string rk;
    std::getline(rs, rk, ',');
    rank_list.push_back(std::stoi(rk));
  }
  std::ostringstream all;
  for (std::stringstream ps(precisions); ps.good();) {
    std::string prec;
    std::getline(ps, prec, ',');
    Engine e(PrecisionPlan::named(prec));
    e.lora_max_bytes = size_t(64) << 30;
    e.load_synthetic(42);
    for (const LoraOverhead& x : lora_overhead(e, request(e.cfg, side, steps), rank_list)) {
      std::ostringstream o;
      o << "{\"precision\":\"" << prec << "\",\"size\":" << side << ",\"rank\":" << x.rank
        << ",\"layers\":" << x.layers << ",\"lora_mib\":" << x.lora_mib << ",\"set_mib\":" << x.set_mib
        << ",\"load_ms\":" << x.load_ms << ",\"set_build_ms\":" << x.set_build_ms
        << ",\"cached_set_us\":" << x.cached_set_us << ",\"first_prepare_ms\":" << x.first_prepare_ms
        << ",\"prepare_ms\":" << x.prepare_ms << ",\"base_prepare_ms\":" << x.base_prepare_ms
        << ",\"base_step_ms\":" << x.base_step_ms << ",\"base_step_after_ms\":" << x.base_step_after_ms
        << ",\"lora_step_ms\":" << x.lora_step_ms << ",\"overhead_pct\":" << x.overhead_pct << "}";
      printf("%s\n", o.str().c_str());
      fflush(stdout);
      all << o.str() << "\n";
    }
  }
  std::ofstream(out_prefix + ".json") << all.str();
  return 0;
}

}  // namespace fq
