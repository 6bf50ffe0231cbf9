// One cuDNN handle and a workspace that grows to what its plans need, shared in shape by the engine's cuDNN users
// (fused attention, VAE convolutions). Without cuDNN at build time (no FQ_HAVE_CUDNN) it is never ok().
#pragma once
#include <string>

#include "common.h"

namespace fq {

class CudnnHandle {
 public:
  CudnnHandle();
  ~CudnnHandle();
  CudnnHandle(const CudnnHandle&) = delete;
  CudnnHandle& operator=(const CudnnHandle&) = delete;
  bool ok() const { return h_ != nullptr; }
  const std::string& why() const { return why_; }  // why not ok()
  void* get() const { return h_; }                  // a cudnnHandle_t
  // A workspace of at least `bytes`; a larger one replaces the old after a device sync (kernels may still use it).
  void* workspace(size_t bytes);
  int generation() const { return generation_; }  // bumped when the workspace moves


 private:
  void* h_ = nullptr;
  void* ws_ = nullptr;
  size_t ws_bytes_ = 0;
  int generation_ = 0;
  std::string why_;
};

}  // namespace fq
