// Step caching (First-Block-Cache, engine.h StepCache): the elementwise updates of the cached residuals and the
// per-sample relative change of the first block's residual, reduced deterministically (fixed partition, fixed
// order, float64 sums) so that one step's decision never depends on the launch's scheduling.
#include <algorithm>

#include "../common.h"
#include "kernels.h"

namespace fq {
namespace {

constexpr int kThreads = 256;

__global__ void sub_kernel(float* out, const float* a, const float* b, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    out[i] = a[i] - b[i];
}

__global__ void add_kernel(float* y, const float* x, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    y[i] += x[i];
}

// Block (p, b) (p = blockIdx.x < P, b = blockIdx.y) sums |a - r| and |r| over elements p, p + P*256, ... of sample b
// (per values each, strided by thread) into partial[(b * P + p) * 2 + {0, 1}].
__global__ void rel_partial_kernel(const float* a, const float* r, int64_t per, double* partial) {
  const int b = blockIdx.y, P = gridDim.x;
  const float* pa = a + int64_t(b) * per;
  const float* pr = r + int64_t(b) * per;
  double num = 0, den = 0;
  for (int64_t i = blockIdx.x * int64_t(kThreads) + threadIdx.x; i < per; i += int64_t(P) * kThreads) {
    num += fabs(double(pa[i]) - double(pr[i]));
    den += fabs(double(pr[i]));
  }
  __shared__ double sn[kThreads], sd[kThreads];
  sn[threadIdx.x] = num;
  sd[threadIdx.x] = den;
  __syncthreads();
  for (int h = kThreads / 2; h > 0; h >>= 1) {
    if (int(threadIdx.x) < h) {
      sn[threadIdx.x] += sn[threadIdx.x + h];
      sd[threadIdx.x] += sd[threadIdx.x + h];
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    partial[(int64_t(b) * P + blockIdx.x) * 2] = sn[0];
    partial[(int64_t(b) * P + blockIdx.x) * 2 + 1] = sd[0];
  }
}

// One thread per sample: the P partial sums in order -> sums[b * 2 + {0, 1}].
__global__ void rel_final_kernel(const double* partial, int B, int P, double* sums) {
  const int b = blockIdx.x * blockDim.x + threadIdx.x;
  if (b >= B) return;
  double num = 0, den = 0;
  for (int p = 0; p < P; p++) {
    num += partial[(int64_t(b) * P + p) * 2];
    den += partial[(int64_t(b) * P + p) * 2 + 1];
  }
  sums[b * 2] = num;
  sums[b * 2 + 1] = den;
}

unsigned grid_of(int64_t n) { return unsigned(std::min<int64_t>((n + kThreads - 1) / kThreads, 4096)); }

}  // namespace

void sub_f32(float* out, const float* a, const float* b, int64_t n, cudaStream_t st) {
  sub_kernel<<<grid_of(n), kThreads, 0, st>>>(out, a, b, n);
  LAUNCH_CHECK();
}

void add_f32(float* y, const float* x, int64_t n, cudaStream_t st) {
  add_kernel<<<grid_of(n), kThreads, 0, st>>>(y, x, n);
  LAUNCH_CHECK();
}

void relative_change_sums(const float* a, const float* r, int B, int64_t per, double* partial, double* sums,
                          cudaStream_t st) {
  rel_partial_kernel<<<dim3(kRelPartials, unsigned(B)), kThreads, 0, st>>>(a, r, per, partial);
  LAUNCH_CHECK();
  rel_final_kernel<<<unsigned((B + 63) / 64), 64, 0, st>>>(partial, B, kRelPartials, sums);
  LAUNCH_CHECK();
}

}  // namespace fq
