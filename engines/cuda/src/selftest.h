#pragma once
#include <string>

namespace fq {
// Conformance against the flux-tiny reference fixtures; prints a JSON table of cases. Returns the exit code.
int run_selftest(const std::string& fixtures, const std::string& model, const std::string& precisions);
// Synthetic FLUX.1-dev-sized benchmark; writes JSON + Markdown to out_prefix.{json,md}. Returns the exit code.
// graphs: "on", "off" or "both" (CUDA-graph replay of steps 2.., each mode timed on the same loaded engine).
int run_bench(const std::string& size, int steps, const std::string& batches, int iters,
              const std::string& precisions, const std::string& graphs, const std::string& out_prefix);
// LoRA overhead at FLUX.1-dev size (bench_lora.cu): per rank, load / set build / prepare times and the replayed step
// time against no LoRA; precisions comma-separated; writes JSON lines to stdout and out_prefix.json.
int run_bench_lora(int side, int steps, const std::string& ranks, const std::string& precisions,
                   const std::string& out_prefix);
// The CUDA modes on one engine loaded bf16 + plan fp8 (bench_modes.cu): modes comma-separated from original, XL, S,
// S+cache; cache_pattern F/C per step for S+cache (empty: the S rule's upper bound); lora_ranks comma-separated or
// empty; card: free text recorded with the results (the script passes nvidia-smi's name, driver, clocks). Writes
// out_prefix.{json,md}.
int run_bench_modes(const std::string& size, int steps, const std::string& batches, int iters,
                    const std::string& modes, const std::string& cache_pattern, const std::string& lora_ranks,
                    const std::string& card, const std::string& out_prefix);
// Framed stdin/stdout protocol (PROTOCOL.md). Returns the exit code.
int run_serve();
}  // namespace fq
