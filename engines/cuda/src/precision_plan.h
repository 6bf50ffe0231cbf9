// Per-layer precision, decided at load: a plan maps each linear layer's checkpoint name ("<component>/<name>",
// e.g. "transformer/single_transformer_blocks.7.proj_mlp") to the type its weight is stored and multiplied in.
// Rules are globs ('*' matches any run of characters), first match wins; unmatched layers take the base type
// (F32 for the conformance path, BF16 for the fast one). The norms feeding a layer write what it needs (fp8 with
// a per-tensor scale for an fp8 layer), and linear() converts any other input (see linear.h).
#pragma once
#include <string>
#include <utility>
#include <vector>

#include "common.h"

namespace fq {

struct PrecisionPlan {
  std::string name;  // "f32", "bf16", "fp8" or "custom"
  DType base = DType::BF16;
  std::vector<std::pair<std::string, DType>> rules;
  DType weight_type(const std::string& layer) const;
  bool any(DType t) const;  // does any rule assign t
  // "f32", "bf16", or "fp8" (bf16 base; q/k/v and MLP-in of every transformer block, the LayerNorm-fed GEMMs, in
  // fp8 E4M3). Extra rules ("glob=type;glob=type", types f32|bf16|fp8|fp8row) go before the named plan's own.
  // fp8row: E4M3 weights with per-output-channel scales, activations quantised per token by linear() (linear.h).
  static PrecisionPlan named(const std::string& precision, const std::string& extra_rules = "");
};

// The fp8 preset's layer globs (q/k/v and MLP-in of every block): also the per-job preset "fp8row"'s (plan_variants.h).
const std::vector<std::string>& fp8_preset_globs();

bool glob_match(const char* pattern, const char* s);

}  // namespace fq
