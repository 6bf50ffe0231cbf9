// What every model component needs to run: the GEMM engine, the stream, the compute type and scratch memory.
#pragma once
#include <map>
#include <string>

#include "common.h"
#include "cudnn_attention.h"
#include "cudnn_conv.h"
#include "gemm.h"

namespace fq {

// Named, growing device buffers reused across calls (activations of the current forward). A buffer keeps its
// contents until a larger size is asked for under the same name.
class Scratch {
 public:
  Scratch() = default;
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  ~Scratch() {
    for (auto& [k, v] : bufs_) cudaFree(v.first);
  }
  void* get(const std::string& name, size_t bytes) {
    auto& e = bufs_[name];
    if (e.second < bytes) {
      if (capturing()) throw EngineError("scratch buffer " + name + " grows during a graph capture", false);
      if (e.first) {
        CUDA_CHECK(cudaDeviceSynchronize());  // a kernel may still use the old buffer
        CUDA_CHECK(cudaFree(e.first));
      }
      generation_++;
      CUDA_CHECK(cudaMalloc(&e.first, bytes));
      total_ += bytes - e.second;
      e.second = bytes;
    }
    return e.first;
  }
  template <typename T>
  T* getT(const std::string& name, size_t count) {
    return static_cast<T*>(get(name, count * sizeof(T)));
  }
  size_t bytes() const { return total_; }
  // Bumped whenever a buffer moves: a captured graph that read scratch memory is stale after a change.
  int generation() const { return generation_; }

 private:
  int generation_ = 0;
  std::map<std::string, std::pair<void*, size_t>> bufs_;
  size_t total_ = 0;
};

struct StepTap;

struct Ctx {
  Gemm& gemm;
  Scratch& scratch;
  cudaStream_t st;
  DType dt;  // activation / matrix-weight type: F32 (conformance) or BF16 (fast path)
  CudnnAttention* cudnn = nullptr;  // fused bf16 attention when available; null: the engine's own kernels
  CudnnConv* conv = nullptr;        // bf16 VAE convolutions when available; null: im2col + GEMM
  StepTap* tap = nullptr;           // observer of linears/attentions (benchmark GEMM list); null: none
  void* buf(const std::string& name, size_t elems) { return scratch.get(name, elems * dsize(dt)); }
  float* f32(const std::string& name, size_t elems) { return scratch.getT<float>(name, elems); }
};


}  // namespace fq
