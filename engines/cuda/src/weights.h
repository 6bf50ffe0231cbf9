// Device memory for weights: read from a component's safetensors files (converted to the engine's types), or drawn
// at random on the GPU for the synthetic FLUX.1-dev-sized mode (same shapes, same compute, no files). Loading is
// strict: every tensor's shape is checked against what the model expects, and a checkpoint tensor the model never
// read is an error (finish()). Every upload runs on the engine's stream.
#pragma once
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "device_buffer.h"
#include "linear.h"
#include "precision_plan.h"
#include "safetensors.h"

namespace fq {

// Copies fp32 host values to device memory `d` as `dt` (F32, or BF16 rounded to nearest even) on stream `st`, and
// waits for the copy (the host buffer may go away on return).
void upload_as(void* d, const std::vector<float>& h, DType dt, cudaStream_t st);

// A bf16 weight [out, in] (rows ld_src apart) as e4m3 with one per-tensor scale (written to *scale) in `mem`, rows
// ldw >= in apart with zero columns after `in` (the LoRA reserve, linear.h): the loader's fp8 layers and the plan
// variants' fp8 alternates, the same bits from the same bf16 weight. ws: one device float of workspace.
void* fp8_weight(DeviceArena& mem, const void* bf16, int ld_src, int out, int in, int ldw, float* scale, float* ws,
                 cudaStream_t st);

// How a synthetic tensor is drawn (ignored when reading files).
enum class Init { Linear, Bias, NormWeight, NormBias, Embedding };

class WeightLoader {
 public:
  // files == nullptr: synthetic mode (random weights from `seed`). `component` prefixes layer names for the plan.
  WeightLoader(const ComponentFiles* files, DeviceArena& arena, uint64_t seed, cudaStream_t st,
               const PrecisionPlan& plan, std::string component);
  WeightLoader(const WeightLoader&) = delete;
  WeightLoader& operator=(const WeightLoader&) = delete;
  bool synthetic() const { return files_ == nullptr; }
  DeviceArena& arena() { return arena_; }
  cudaStream_t stream() const { return st_; }
  DType dt() const { return plan_.base; }  // the component's compute type
  bool has(const std::string& name) const { return files_ ? files_->find(name) != nullptr : true; }
  // A linear layer from stacked parts ("<part>.weight" [out_i, in], "<part>.bias" [out_i]), in the type the plan
  // gives "<component>/<parts joined by '+'>"; fp8 layers are quantised once here (per-tensor scale), fp8row layers
  // too (one scale per output channel). reserve > 0: rows of in + reserve, the reserve columns zero (the LoRA
  // reserve, linear.h; fp8row layers are never padded).
  Linear linear(const std::vector<std::string>& parts, int out, int in, bool bias = true, int reserve = 0);
  // A Linear over an already reordered / padded device weight (VAE convolutions): bias copies made here.
  Linear wrap(const std::string& name, void* w, const float* b, int out, int in);
  // Matrix [rows, cols] in `dt`; the rows are the named tensors stacked in order (each [rows_i, cols]).
  void* matrix(const std::vector<std::string>& parts, int64_t rows, int64_t cols, DType dt, Init init = Init::Linear,
               void* dst = nullptr);
  // Vector in fp32 (each part 1-D, stacked), and a 2-D fp32 table [rows, cols].
  float* vec(const std::vector<std::string>& parts, int64_t n, Init init);
  float* table(const std::string& name, int64_t rows, int64_t cols, Init init);
  // 3x3 / 1x1 convolution weight [cout, cin, k, k] reordered to [cout, k, k, cin] for NHWC im2col GEMMs.
  void* conv(const std::string& name, int64_t cout, int64_t cin, int k, DType dt);
  // Strict loading: throws when a checkpoint tensor (or a mapped name) was never read, unless it matches one of
  // `ignore` (globs of tensors the engine does not need, e.g. the VAE's encoder). Also waits for the uploads.
  void finish(const std::vector<std::string>& ignore);
  // When set, every linear() appends its layer name and weight type (the engine's list of the layers per-job
  // precision plans must leave alone: plan_variants.h).
  std::vector<std::pair<std::string, DType>>* log = nullptr;

 private:
  std::vector<float> host_stack(const std::vector<std::string>& parts, const std::vector<int64_t>& part_shape_tail,
                                int64_t n);
  void* upload(const std::vector<float>& h, DType dt);
  void* random(int64_t n, DType dt, float mean, float stddev, void* dst = nullptr);
  const ComponentFiles* files_;
  DeviceArena& arena_;
  uint64_t seed_;
  uint64_t counter_ = 0;
  cudaStream_t st_;
  const PrecisionPlan& plan_;
  std::string component_;
};

}  // namespace fq
