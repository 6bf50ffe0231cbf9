// Per-job precision plans (issue 15): several named precision plans served by one loaded engine. The base plan
// (load's `precision` + `plan`) decides how every Linear is loaded; each named plan (load's `plans`) gets, for every
// transformer Linear whose type under it differs from its base type, an alternate weight made ONCE at load from the
// loaded weight (bf16 -> fp8 E4M3 with a per-tensor scale, or bf16 -> fp8row (E4M3, one scale per output channel),
// by the same quantiser the loader uses for a base fp8 / fp8row layer, so the alternate is bit for bit what an engine
// loaded with that plan as its base holds). The base weights
// stay intact. While a job of that plan is enqueued (prepare's planning forward, eager steps, graph capture) a
// PlanScope swaps the alternates into the Linear structs by pointer and restores the base fields after, as the LoRA
// sets do for their QK-norm replacements (lora.h): captured graphs bake in the plan's pointers, base jobs and other
// plans' jobs never see them. The norms feeding a layer read its `wt` at enqueue time (flux.cu norm_in / res_norm),
// so they write fp8 + scale for a swapped-in fp8 layer exactly as for a base fp8 one.
// fp8row layers read bf16 (their norms write bf16: flux.cu tests `wt == FP8` only) and quantise per token in linear().
// Supported: bf16 base layers made fp8 or fp8row (the `fp8` / `fp8row` presets over a bf16 base). Anything else (an
// f32 engine, an fp8 or fp8row base layer made bf16 (its bf16 copy is not kept), a plan changing a text-encoder or
// VAE layer) is refused at load.
#pragma once
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "active_scope.h"
#include "device_buffer.h"
#include "linear.h"
#include "precision_plan.h"

namespace fq {

// The fields of a Linear a plan may change.
struct LinearWeights {
  DType wt = DType::F32;
  void* w = nullptr;
  const float* w_scale = nullptr;
  const void* b_act = nullptr;
  int ldw = 0;
  static LinearWeights of(const Linear& l) { return {l.wt, l.w, l.w_scale, l.b_act, l.ldw}; }
  void set(Linear& l) const {
    l.wt = wt;
    l.w = w;
    l.ldw = ldw;
    l.w_scale = w_scale;
    l.b_act = b_act;
  }
};

// One named plan: the transformer Linears it changes, their base and alternate fields, and the alternates' memory.
struct PlanVariant {
  std::string name;
  PrecisionPlan plan;
  int id = 0;  // 1, 2, ... in load order (0 is the base): part of prepare's planning key
  struct Swap {
    Linear* layer;
    LinearWeights base, alt;
  };
  std::vector<Swap> layers;
  DeviceArena mem;
  size_t bytes() const { return mem.bytes(); }
};

class PlanRegistry {
 public:
  // linears: the transformer's Linears (they are what plans change); fixed: every other component's Linear (name
  // and loaded type): a plan giving one of them another type is refused.
  PlanRegistry(const PrecisionPlan& base, std::vector<Linear*> linears,
               std::vector<std::pair<std::string, DType>> fixed, cudaStream_t st);
  PlanRegistry(const PlanRegistry&) = delete;
  PlanRegistry& operator=(const PlanRegistry&) = delete;
  // Makes the named plan's alternates from the loaded weights (synchronous). @throws std::runtime_error when the
  // plan changes a layer in a way that is not supported (see the file comment) or the name is taken.
  const PlanVariant& add(const std::string& name, const PrecisionPlan& plan);
  // The same plan made but not registered (id -1: never part of a planning key, never found by name): the caller
  // owns it and may activate it for a scope like a registered one (the calibration's one-layer fp8 plans, which
  // live only while their layer is measured). Same checks and alternates as add(), without the name checks.
  std::unique_ptr<PlanVariant> make(const std::string& name, const PrecisionPlan& plan);
  // The plan of that name; "" is the base (null). @throws std::runtime_error for a name not given at load.
  const PlanVariant* find(const std::string& name) const;
  const std::vector<std::unique_ptr<PlanVariant>>& all() const { return plans_; }
  // Swaps a plan's alternates in (null: the base) for the enqueueing that follows; see PlanScope.
  void activate(const PlanVariant* v);
  const PlanVariant* active() const { return active_; }

 private:
  const PrecisionPlan& base_;
  std::vector<Linear*> linears_;
  std::vector<std::pair<std::string, DType>> fixed_;
  cudaStream_t st_;
  std::vector<std::unique_ptr<PlanVariant>> plans_;
  const PlanVariant* active_ = nullptr;
};

// Activates a job's plan for a scope (prepare, an eager or captured step) and restores the base on exit.
using PlanScope = ActiveScope<PlanRegistry, PlanVariant>;

// `load`'s `plans` entry: a preset name ("bf16", "fp8", "fp8all", "fp8row", "fp8rowall", "f32") or rules
// "glob=type;..." over the engine's base type (no preset rules; FQ_PRECISION_PLAN and load's `plan` apply to the base
// plan only). fp8row = the fp8 preset's layers in fp8row; fp8rowall = fp8all's layers in fp8row.
PrecisionPlan plan_of_spec(const std::string& spec, const PrecisionPlan& base);

}  // namespace fq
