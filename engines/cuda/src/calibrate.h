// Per-layer calibration for the precision planner (issue 15, PROTOCOL.md `calibrate`): for every transformer Linear
// of a loaded bf16 engine, the relative error of the transformer's output (the velocity) when that layer alone runs
// in fp8 E4M3 (the per-job plans' alternate, plan_variants.h), and alone in fp8row, against the all-base forward, on
// the request's inputs at each of its steps, and the layer's GEMM time per step in its base type, in fp8 and in
// fp8row at the request's geometry.
// The host's planner (src/pipeline/cuda-planner.ts) turns the table into per-mode plans.
#pragma once
#include <string>
#include <vector>

#include "engine.h"

namespace fq {

struct LayerCalibration {
  std::string name;  // the engine's layer name ("transformer/<checkpoint name>", '+'-joined when stacked): what
                     // plan rules match
  int in = 0, out = 0;
  DType base = DType::BF16;
  bool fp8 = false;    // an fp8 alternate was measured (false: `skip` says why)
  std::string skip;
  double rel_err = 0;  // mean over the steps of ||v - v_base||_2 / ||v_base||_2 (whole batch per step)
  // GEMM time per denoising step (ms): the layer's calls in one forward, plus its calls at prepare (context
  // embedder, conditioning: run once for all steps) divided by the steps. fp8 includes quantising a bf16 input.
  double ms_base = 0, ms_fp8 = 0;
  // The same for the layer alone in fp8row (E4M3, per-channel weight / per-token activation scales; linear.h);
  // ms_fp8row includes the per-token quantisation and the scaling epilogue.
  bool fp8row = false;  // an fp8row alternate was measured (false: `skip_fp8row` says why)
  std::string skip_fp8row;
  double rel_err_fp8row = 0, ms_fp8row = 0;
};

// A whole plan's measured error (`calibrate`'s `verify`): the planner's check of its prediction.
struct PlanCheck {
  std::string name, rules;
  int layers = 0;       // transformer Linears the plan makes fp8
  double rel_err = 0;   // as LayerCalibration::rel_err, with every layer of the plan swapped in at once
};

struct Calibration {
  std::vector<LayerCalibration> layers;  // flux->linears() order (empty when per-layer measuring was off)
  std::vector<PlanCheck> checks;         // the `verify` plans, in request order
  double base_ms = 0;                    // one base transformer forward (ms, mean of `reps`)
  int steps = 0;
};

// Runs the calibration on `r` (plain text-to-image inputs, base plan, as `prepare` takes them); `reps` timed
// repetitions per measurement. The job it prepares is dropped at the end. @throws std::runtime_error for an f32
// engine (no fp8 path) or inputs with a plan, LoRAs, true CFG, inpainting, control or step caching.
// `verify`: plans (name, rules "glob=fp8;...") whose whole error to measure on the same trajectory; `per_layer` false
// skips the per-layer table (a verify-only call costs steps forwards per plan); `fp8row` adds each layer's fp8row
// trial to the table (off by default: it doubles the table's cost, and the host planner does not route fp8row yet).
Calibration calibrate(Engine& e, const Request& r, int reps,
                      const std::vector<std::pair<std::string, std::string>>& verify = {}, bool per_layer = true,
                      bool fp8row = false);

}  // namespace fq
