// Shared by the benchmarks (bench.cu defines these; bench_modes.cu and bench_lora.cu use them): synthetic FLUX.1-dev
// requests, one timed end-to-end generation, the measured GEMM + attention floor, the LoRA overhead rows.
#pragma once
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "engine.h"

namespace fq {

// FLUX.1-dev's schedule (host side in production; here so the benchmarks are self-contained): shifted linspace,
// [steps + 1] with a final 0, for L image tokens.
std::vector<float> flux_sigmas(int steps, int L);
// B random 20-token prompts (CLIP and T5 ids), guidance 3.5, seed 7, FLUX.1-dev sigmas.
Request make_bench_request(const ModelConfig& cfg, int B, int width, int height, int steps, std::mt19937& rng);
// cudaMemGetInfo's used bytes (whole device).
size_t gpu_used();

struct RunTimes {
  double total = 0, prepare = 0, steps = 0, decode = 0, capture = 0;  // ms
  int replays = 0;
  int full_steps = 0, cached_steps = 0;  // a step-cached job's counters (no step cache: every step is full)
  size_t mem = 0;
};
// One end-to-end generation (prepare, every step, decode to RGB8 copied to host_img); host clock around each
// synchronised phase.
RunTimes run_once(Engine& e, const Request& r, std::vector<uint8_t>& host_img, uint8_t* dev_img);

// bench_floor.cu: the step's GEMM + attention sequence alone, sustained and one op at a time (JSON object). Under
// the job's precision plan when the caller holds its PlanScope across the call.
std::string gemm_attention_floor(Engine& e, Job& job, int steps, bool bf16_out);

// bench_lora.cu: a LoRA on every transformer Linear at each rank, against `base` (its plan and geometry).
struct LoraOverhead {
  int rank = 0, layers = 0;
  double lora_mib = 0, set_mib = 0, load_ms = 0, set_build_ms = 0, cached_set_us = 0, first_prepare_ms = 0,
         prepare_ms = 0, base_prepare_ms = 0, base_step_ms = 0, base_step_after_ms = 0, lora_step_ms = 0,
         overhead_pct = 0;
};
std::vector<LoraOverhead> lora_overhead(Engine& e, const Request& base, const std::vector<int>& ranks);

}  // namespace fq
