#include "plan_variants.h"

#include <stdexcept>

#include "kernels/kernels.h"
#include "weights.h"

namespace fq {

// The preset "fp8all": every per-step Linear of the blocks in fp8 (per-tensor scales; the inputs no norm writes are
// quantised by linear()), i.e. also the attention out-projections, MLP-out and the single blocks' proj_out, which
// the fp8 preset keeps bf16: the speed and quality bound of fp8 Linears (issue 15). The modulation Linears
// (norm*.linear) stay bf16: they run once per job at prepare, so fp8 there would cost accuracy and save nothing per
// step. Rules: the first match wins.
const char* const kFp8AllRules =
    "transformer/transformer_blocks.*.norm1*=bf16;transformer/single_transformer_blocks.*.norm*=bf16;"
    "transformer/transformer_blocks.*=fp8;transformer/single_transformer_blocks.*=fp8";

// The preset "fp8rowall": fp8all's layers in fp8row (per-channel weight, per-token activation scales).
const char* const kFp8RowAllRules =
    "transformer/transformer_blocks.*.norm1*=bf16;transformer/single_transformer_blocks.*.norm*=bf16;"
    "transformer/transformer_blocks.*=fp8row;transformer/single_transformer_blocks.*=fp8row";

PrecisionPlan plan_of_spec(const std::string& spec, const PrecisionPlan& base) {
  if (spec == "f32" || spec == "bf16" || spec == "fp8") return PrecisionPlan::named(spec);
  if (spec == "fp8all" || spec == "fp8row" || spec == "fp8rowall") {
    if (base.base == DType::F32) throw std::runtime_error("plans: " + spec + " needs the bf16 base precision");
    std::string rules = spec == "fp8all" ? kFp8AllRules : spec == "fp8rowall" ? kFp8RowAllRules : "";
    // fp8row: the fp8 preset's layers (q/k/v and MLP-in of every block) in fp8row.
    if (spec == "fp8row")
      for (const std::string& g : fp8_preset_globs()) rules += (rules.empty() ? "" : ";") + g + "=fp8row";
    PrecisionPlan p = PrecisionPlan::named("bf16", rules);
    p.name = spec;
    return p;
  }
  if (spec.empty())
    throw std::runtime_error("plans: a plan is a preset name (bf16, fp8, fp8all, fp8row, fp8rowall) or rules "
                             "glob=type;...");
  PrecisionPlan p = PrecisionPlan::named(base.base == DType::F32 ? "f32" : "bf16", spec);
  p.name = "custom";
  return p;
}

PlanRegistry::PlanRegistry(const PrecisionPlan& base, std::vector<Linear*> linears,
                           std::vector<std::pair<std::string, DType>> fixed, cudaStream_t st)
    : base_(base), linears_(std::move(linears)), fixed_(std::move(fixed)), st_(st) {}

const PlanVariant& PlanRegistry::add(const std::string& name, const PrecisionPlan& plan) {
  if (name.empty()) throw std::runtime_error("plans: every plan needs a non-empty name");
  for (auto& p : plans_)
    if (p->name == name) throw std::runtime_error("plans: two plans named " + name);
  auto v = make(name, plan);
  v->id = int(plans_.size()) + 1;
  plans_.push_back(std::move(v));
  return *plans_.back();
}

std::unique_ptr<PlanVariant> PlanRegistry::make(const std::string& name, const PrecisionPlan& plan) {
  if (active_) throw std::runtime_error("plans: cannot add a plan while one is active");
  if (plan.base != base_.base)
    throw std::runtime_error("plan " + name + ": compute type " + dname(plan.base) + " differs from the engine's " +
                             dname(base_.base) + " (per-job plans change layer weight types over one compute type)");
  // Check everything before allocating anything.
  for (auto& [layer, t] : fixed_)
    if (plan.weight_type(layer) != t)
      throw std::runtime_error("plan " + name + ": layer " + layer + " would be " + dname(plan.weight_type(layer)) +
                               " but is loaded " + dname(t) + " (per-job plans change transformer layers only)");
  for (Linear* l : linears_) {
    const DType t = plan.weight_type(l->name);
    if (t != l->wt && !(l->wt == DType::BF16 && (t == DType::FP8 || t == DType::FP8ROW)))
      throw std::runtime_error("plan " + name + ": layer " + l->name + " is " + dname(l->wt) + " in the base plan and " +
                               dname(t) + " in this one; only bf16 -> fp8 / fp8row alternates are made (an fp8 or "
                               "fp8row base layer keeps no bf16 copy, f32 layers have no fp8 path)");
  }
  auto v = std::make_unique<PlanVariant>();
  v->name = name;
  v->plan = plan;
  v->id = -1;
  DeviceBuffer ws(sizeof(float));
  for (Linear* l : linears_) {
    if (plan.weight_type(l->name) == l->wt) continue;
    // The loader's own quantisation of a base fp8 layer (fp8_weight, as WeightLoader::linear calls it): the bf16
    // weight as loaded [out, in] -> fp8 E4M3 [out, in] + one per-tensor scale amax / 448. Same input bits, same
    // kernel: the alternate equals what an engine loaded with this plan as its base holds. Bias and its bf16 copy are shared.
    // fp8row: the same bf16 weight quantised per output channel (weights.cpp's fp8row call): scales [out].
    PlanVariant::Swap s{l, LinearWeights::of(*l), LinearWeights::of(*l)};
    const DType t = plan.weight_type(l->name);
    s.alt.wt = t;
    // fp8 copies keep the bf16 weight's LoRA reserve columns (zero; linear.h), fp8row copies are contiguous.
    s.alt.ldw = t == DType::FP8 ? l->ldw : l->in;
    if (t == DType::FP8ROW) {
      s.alt.w = v->mem.alloc(size_t(l->out) * l->in);
      float* scales = v->mem.allocT<float>(size_t(l->out));
      quantize_fp8_rows(l->w, DType::BF16, l->ldw, nullptr, l->out, l->in, s.alt.w, scales, st_);
      fp8_unit_scale();  // looked up at load, never first inside a capture
      s.alt.w_scale = scales;
    } else {
      float* scale = v->mem.allocT<float>(1);
      s.alt.w = fp8_weight(v->mem, l->w, l->ldw, l->out, l->in, s.alt.ldw, scale, ws.as<float>(), st_);
      s.alt.w_scale = scale;
    }
    v->layers.push_back(s);
  }
  CUDA_CHECK(cudaStreamSynchronize(st_));  // ws is freed on return
  return v;
}

const PlanVariant* PlanRegistry::find(const std::string& name) const {
  if (name.empty()) return nullptr;
  for (auto& p : plans_)
    if (p->name == name) return p.get();
  std::string known;
  for (auto& p : plans_) known += (known.empty() ? "" : ", ") + p->name;
  throw std::runtime_error("unknown plan '" + name + "' (plans given at load: " + (known.empty() ? "none" : known) +
                           ")");
}

void PlanRegistry::activate(const PlanVariant* v) {
  if (active_ == v) return;
  if (active_)
    for (auto& s : active_->layers) s.base.set(*s.layer);
  active_ = v;
  if (v)
    for (auto& s : v->layers) s.alt.set(*s.layer);
}

}  // namespace fq
