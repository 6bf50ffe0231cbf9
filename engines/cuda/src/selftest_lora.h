// LoRA cases of --selftest (selftest_lora.cu).
#pragma once
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "engine.h"
#include "kernel_tests.h"

namespace fq {

// One engine-factor file of prepare-fixtures.ts (`<layer>.lora_a` [r, in], `.lora_b` [out, r], `.lora_bias` [out]).
struct LoraFactorsFile {
  std::vector<std::vector<float>> store;
  std::vector<LoraLayerIn> layers;  // pointers into store
};
LoraFactorsFile read_lora_factors(const std::string& path);

// A LoRA of one rank on every given Linear, all layers reading one shared buffer of values (`buf`, at least
// rank x max(in, out) floats): the benchmark's and the selftest's synthetic LoRA.
std::vector<LoraLayerIn> uniform_lora_layers(const std::vector<Linear*>& linears, int rank, const std::vector<float>& buf);

// Whole generations, one job per LoRA set (members: name, strength; empty: none), prepared together and stepped in
// turn (job 0's step, job 1's, ...): per job, its final latents and the steps replayed from a CUDA graph.
using LoraMembers = std::vector<std::pair<std::string, float>>;
using LoraPipelineFn =
    std::function<std::vector<std::pair<std::vector<float>, int>>(const std::vector<LoraMembers>& jobs)>;

// dir: <fixtures>/lora (lora_index.json). forward: the transformer case's output with the adapters active now.
void run_lora_cases(Engine& e, const std::string& dir, const std::function<std::vector<float>()>& forward,
                    const LoraPipelineFn& pipeline, double tol, bool req, ReportFn report);

}  // namespace fq
