// Fused attention through cuDNN's backend API (the SDPA forward operation, cuDNN >= 9.13): O = softmax(Q K^T *
// scale) V for bf16 [B, S, H, D] tensors, output rows with a caller-given stride. Built only when cuDNN is found
// (FQ_HAVE_CUDNN); otherwise every call reports "unavailable" and the engine uses its own flash kernel.
#pragma once
#include <map>
#include <memory>
#include <string>
#include <tuple>

#include "common.h"
#include "cudnn_handle.h"

namespace fq {

class CudnnAttention {
 public:
  CudnnAttention();
  ~CudnnAttention();
  bool available() const { return ok_; }
  const std::string& why_not() const { return why_; }
  // q, k, v: [B, S, H, D] bf16, rows of `ldi` elements (0: H*D, contiguous; 3*H*D: q/k/v read in place from a packed
  // [B, S, 3, H, D] projection); o: rows of `ldo` elements, head h at column h*D. False when cuDNN has no engine for
  // this shape (the caller falls back).
  int workspace_generation() const { return dnn_.generation(); }
  bool run(const void* q, const void* k, const void* v, void* o, int B, int S, int H, int D, int ldo, float scale,
           cudaStream_t st, int ldi = 0);

 private:
  CudnnHandle dnn_;  // declared first: destroyed after the plans
  struct Plan;
  std::map<std::tuple<int, int, int, int, int, int>, std::shared_ptr<Plan>> plans_;
  bool ok_ = false;
  std::string why_;
};

}  // namespace fq
