// `fluxql-engine --bench-lora`: what LoRA adapters cost at FLUX.1-dev size (synthetic weights). Per rank, a LoRA on
// every transformer Linear (the worst case; real LoRAs usually target fewer layers) with random factors: load time
// (host checks + upload), set build time (first use of a set: concatenation and strength folding on the GPU), a
// cached set's lookup, the first prepare with the set (it plans the set's GEMM shapes), and the step time replayed
// from a CUDA graph against the same geometry without LoRA (overhead %). Writes one JSON object per line to stdout
// and <out>.json.
#include <chrono>
#include <cstdio>
#include <fstream>
#include <random>
#include <sstream>

#include "engine.h"
#include "selftest.h"

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

int run_bench_lora(int side, int steps, const std::string& ranks, const std::string& precisions,
                   const std::string& out_prefix) {
  std::ostringstream all;
  for (std::stringstream ps(precisions); ps.good();) {
    std::string prec;
    std::getline(ps, prec, ',');
    Engine e(PrecisionPlan::named(prec));
    e.lora_max_bytes = size_t(64) << 30;
    e.load_synthetic(42);
    const Request base = request(e.cfg, side, steps);
    step_ms(e, base, nullptr);  // plans the geometry, tunes the GEMMs
    const double base_ms = step_ms(e, base, nullptr);
    fprintf(stderr, "[bench-lora] %s %dx%d: base step %.2f ms\n", prec.c_str(), side, side, base_ms);
    std::vector<Linear*> linears = e.flux->linears();
    std::mt19937 rng(1);
    std::normal_distribution<float> nd(0.f, 0.02f);
    for (std::stringstream rs(ranks); rs.good();) {
      std::string rk;
      std::getline(rs, rk, ',');
      const int rank = std::stoi(rk);
      // One random buffer shared by every layer's factors (the registry copies them).
      int widest = 0;
      for (Linear* l : linears) widest = std::max(widest, std::max(l->in, l->out));
      std::vector<float> buf(size_t(rank) * widest);
      for (auto& v : buf) v = nd(rng);
      std::vector<LoraLayerIn> layers;
      for (Linear* l : linears)
        layers.push_back(LoraLayerIn{l->name.substr(l->name.find('/') + 1), rank, l->in, l->out, buf.data(),
                                     buf.data(), nullptr});
      auto t0 = clk::now();
      const size_t bytes = e.loras->load("bench", layers);
      const double load_ms = ms_since(t0);
      t0 = clk::now();
      auto set = e.loras->select({{"bench", 0.8f}});
      const double build_ms = ms_since(t0);
      t0 = clk::now();
      auto again = e.loras->select({{"bench", 0.8f}});
      const double cached_us = ms_since(t0) * 1e3;
      Request r = base;
      r.loras = {{"bench", 0.8f}};
      double first_prepare = 0, prepare = 0, base_prepare = 0;
      step_ms(e, r, &first_prepare);  // plans the set's shapes
      const double lora_ms = step_ms(e, r, &prepare);
      const double base_again = step_ms(e, base, &base_prepare);
      std::ostringstream o;
      o << "{\"precision\":\"" << prec << "\",\"size\":" << side << ",\"rank\":" << rank
        << ",\"layers\":" << layers.size() << ",\"lora_mib\":" << bytes / 1048576.0
        << ",\"set_mib\":" << set->bytes / 1048576.0 << ",\"load_ms\":" << load_ms << ",\"set_build_ms\":" << build_ms
        << ",\"cached_set_us\":" << cached_us << ",\"first_prepare_ms\":" << first_prepare
        << ",\"prepare_ms\":" << prepare << ",\"base_prepare_ms\":" << base_prepare << ",\"base_step_ms\":" << base_ms
        << ",\"base_step_after_ms\":" << base_again << ",\"lora_step_ms\":" << lora_ms
        << ",\"overhead_pct\":" << 100.0 * (lora_ms / base_ms - 1.0) << "}";
      printf("%s\n", o.str().c_str());
      fflush(stdout);
      all << o.str() << "\n";
      set.reset();
      again.reset();
      e.loras->unload("bench");
    }
  }
  std::ofstream(out_prefix + ".json") << all.str();
  return 0;
}

}  // namespace fq
