#include "cudnn_handle.h"

#ifdef FQ_HAVE_CUDNN
#include <cudnn.h>
#endif

namespace fq {

#ifdef FQ_HAVE_CUDNN
CudnnHandle::CudnnHandle() {
  cudnnHandle_t h = nullptr;
  cudnnStatus_t s = cudnnCreate(&h);
  if (s != CUDNN_STATUS_SUCCESS) {
    why_ = std::string("cudnnCreate: ") + cudnnGetErrorString(s);
    return;
  }
  h_ = h;
}

CudnnHandle::~CudnnHandle() {
  if (ws_) cudaFree(ws_);
  if (h_) cudnnDestroy(static_cast<cudnnHandle_t>(h_));
}
#else
CudnnHandle::CudnnHandle() : why_("built without cuDNN") {}
CudnnHandle::~CudnnHandle() = default;
#endif

void* CudnnHandle::workspace(size_t bytes) {
  if (bytes > ws_bytes_) {
    if (capturing()) throw EngineError("cuDNN workspace grows during a graph capture", false);
    generation_++;
    if (ws_) {
      CUDA_CHECK(cudaDeviceSynchronize());
      CUDA_CHECK(cudaFree(ws_));
    }
    CUDA_CHECK(cudaMalloc(&ws_, bytes));
    ws_bytes_ = bytes;
  }
  return ws_;
}

}  // namespace fq
