#include "precision_plan.h"

#include <stdexcept>

namespace fq {

bool glob_match(const char* p, const char* s) {
  for (; *p; p++, s++) {
    if (*p == '*') {
      for (const char* t = s;; t++) {
        if (glob_match(p + 1, t)) return true;
        if (!*t) return false;
      }
    }
    if (*p != *s) return false;
  }
  return *s == 0;
}

DType PrecisionPlan::weight_type(const std::string& layer) const {
  for (auto& [g, t] : rules)
    if (glob_match(g.c_str(), layer.c_str())) return t;
  return base;
}

bool PrecisionPlan::any(DType t) const {
  for (auto& r : rules)
    if (r.second == t) return true;
  return false;
}

namespace {
DType parse_type(const std::string& s) {
  if (s == "f32") return DType::F32;
  if (s == "bf16") return DType::BF16;
  if (s == "fp8") return DType::FP8;
  if (s == "fp8row") return DType::FP8ROW;
  throw std::runtime_error("precision plan: unknown type '" + s + "' (f32, bf16, fp8, fp8row)");
}
}  // namespace

const std::vector<std::string>& fp8_preset_globs() {
  static const std::vector<std::string> g{
      "transformer/transformer_blocks.*.attn.to_q+*", "transformer/transformer_blocks.*.attn.add_q_proj+*",
      "transformer/transformer_blocks.*.ff.net.0.proj", "transformer/transformer_blocks.*.ff_context.net.0.proj",
      "transformer/single_transformer_blocks.*.attn.to_q+*", "transformer/single_transformer_blocks.*.proj_mlp"};
  return g;
}

PrecisionPlan PrecisionPlan::named(const std::string& precision, const std::string& extra) {
  PrecisionPlan p;
  p.name = precision;
  if (precision == "f32") p.base = DType::F32;
  else if (precision == "bf16" || precision == "fp8") p.base = DType::BF16;
  else throw std::runtime_error("precision must be f32, bf16 or fp8");
  size_t at = 0;
  while (at < extra.size()) {
    size_t end = extra.find(';', at);
    std::string r = extra.substr(at, end == std::string::npos ? std::string::npos : end - at);
    at = end == std::string::npos ? extra.size() : end + 1;
    if (r.empty()) continue;
    size_t eq = r.find('=');
    if (eq == std::string::npos) throw std::runtime_error("precision plan rule needs glob=type: " + r);
    p.rules.emplace_back(r.substr(0, eq), parse_type(r.substr(eq + 1)));
  }
  if (!extra.empty()) p.name = precision + "+plan";
  if (precision == "fp8")
    for (const std::string& g : fp8_preset_globs()) p.rules.emplace_back(g, DType::FP8);
  if (p.base == DType::F32)
    for (auto& r : p.rules)
      if (r.second == DType::FP8 || r.second == DType::FP8ROW)
        throw std::runtime_error(std::string(dname(r.second)) + " layers need the bf16 base precision");
  return p;
}

}  // namespace fq
