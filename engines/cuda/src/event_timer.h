// Milliseconds of GPU work enqueued on a stream, between two CUDA events (benchmarks and GEMM autotuning: it
// synchronises).
#pragma once
#include "common.h"

namespace fq {

class EventTimer {
 public:
  EventTimer() {
    CUDA_CHECK(cudaEventCreate(&a_));
    CUDA_CHECK(cudaEventCreate(&b_));
  }
  ~EventTimer() {
    cudaEventDestroy(a_);
    cudaEventDestroy(b_);
  }
  EventTimer(const EventTimer&) = delete;
  EventTimer& operator=(const EventTimer&) = delete;
  template <typename F>
  float ms(cudaStream_t st, F&& fn) {
    CUDA_CHECK(cudaEventRecord(a_, st));
    fn();
    CUDA_CHECK(cudaEventRecord(b_, st));
    CUDA_CHECK(cudaEventSynchronize(b_));
    float t = 0;
    CUDA_CHECK(cudaEventElapsedTime(&t, a_, b_));
    return t;
  }

 private:
  cudaEvent_t a_ = nullptr, b_ = nullptr;
};

}  // namespace fq
