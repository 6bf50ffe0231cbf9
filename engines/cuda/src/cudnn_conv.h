// Convolutions through cuDNN (implicit-GEMM kernels chosen by cudnnFind, bf16 NHWC, fp32 accumulation), for the VAE
// decoder's 3x3 convolutions: im2col + GEMM writes and reads a 9x larger matrix per convolution, which made the
// decoder memory-bound. Built only with cuDNN (FQ_HAVE_CUDNN); otherwise `run` returns false and the caller keeps
// its im2col path (which the fp32 conformance path always uses).
#pragma once
#include <map>
#include <string>
#include <tuple>

#include "common.h"
#include "cudnn_handle.h"

namespace fq {

class CudnnConv {
 public:
  CudnnConv();
  ~CudnnConv();
  CudnnConv(const CudnnConv&) = delete;
  CudnnConv& operator=(const CudnnConv&) = delete;
  bool available() const { return ok_; }
  const std::string& why_not() const { return why_; }
  // y[B, H, W, cout] = conv(x[B, H, W, cin], w[cout, k, k, cin]), bf16, stride 1, zero padding k/2, no bias.
  // False when cuDNN has no algorithm for the shape (the caller falls back).
  bool run(const void* x, const void* w, void* y, int B, int H, int W, int cin, int cout, int k, cudaStream_t st);

 private:
  CudnnHandle dnn_;  // declared first: destroyed after the plans
  struct Plan;
  std::map<std::tuple<int, int, int, int, int, int>, Plan*> plans_;
  bool ok_ = false;
  std::string why_;
};

}  // namespace fq
