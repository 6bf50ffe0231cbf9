// Device memory for weights: read from a component's safetensors files (converted to the engine's types), or drawn
// at random on the GPU for the synthetic FLUX.1-dev-sized mode (same shapes, same compute, no files).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "common.h"
#include "safetensors.h"

namespace fq {

// Copies fp32 host values to device memory `d` as `dt` (F32, or BF16 rounded to nearest even).
void upload_as(void* d, const std::vector<float>& h, DType dt);

// Owns device allocations; frees them all at destruction. Tracks bytes for the memory report.
class DeviceArena {
 public:
  ~DeviceArena();
  void* alloc(size_t bytes);
  size_t bytes() const { return bytes_; }

 private:
  std::vector<void*> ptrs_;
  size_t bytes_ = 0;
};

// How a synthetic tensor is drawn (ignored when reading files).
enum class Init { Linear, Bias, NormWeight, NormBias, Embedding };

class WeightLoader {
 public:
  // files == nullptr: synthetic mode (random weights from `seed`).
  WeightLoader(const ComponentFiles* files, DeviceArena& arena, uint64_t seed);
  bool synthetic() const { return files_ == nullptr; }
  DeviceArena& arena() { return arena_; }
  bool has(const std::string& name) const { return files_ ? files_->find(name) != nullptr : true; }
  // Matrix [rows, cols] in `dt`; the rows are the named tensors stacked in order (fuses q/k/v into one GEMM).
  void* matrix(const std::vector<std::string>& parts, int64_t rows, int64_t cols, DType dt, Init init = Init::Linear);
  // Vector (or small table) in fp32; parts stacked.
  float* vec(const std::vector<std::string>& parts, int64_t n, Init init);
  // 3x3 / 1x1 convolution weight [cout, cin, k, k] reordered to [cout, k, k, cin] for NHWC im2col GEMMs.
  void* conv(const std::string& name, int64_t cout, int64_t cin, int k, DType dt);

 private:
  std::vector<float> host_stack(const std::vector<std::string>& parts, int64_t n);
  void* upload(const std::vector<float>& h, DType dt);
  void* random(int64_t n, DType dt, float mean, float stddev);
  const ComponentFiles* files_;
  DeviceArena& arena_;
  uint64_t seed_;
  uint64_t counter_ = 0;
};

}  // namespace fq
