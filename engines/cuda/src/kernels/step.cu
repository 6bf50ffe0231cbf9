// Per-step scalars in device memory, so that one captured step replays for every step of a job: the step index
// selects the modulation rows and the Euler step size.
#include <algorithm>

#include "../common.h"
#include "kernels.h"

namespace fq {
namespace {

// Block k (blockIdx.y) copies its B rows of step *step: src + off[k]*R + (step*B + b)*w[k] -> dst + off[k]*B + b*w[k].
__global__ void gather_rows_kernel(const float* src, int64_t R, int B, const int* step, const int64_t* off,
                                   const int* w, float* dst) {
  const int k = blockIdx.y;
  const int64_t n = int64_t(B) * w[k];
  const float* s = src + off[k] * R + int64_t(*step) * n;
  float* d = dst + off[k] * B;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    d[i] = s[i];
}

__global__ void euler_sched_kernel(float* lat, const float* vel, int64_t n, const float* sigmas, const int* step) {
  const int s = *step;
  const float dt = sigmas[s + 1] - sigmas[s];
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    lat[i] += dt * vel[i];
}

__global__ void advance_kernel(int* step) { *step += 1; }

__global__ void cfg_kernel(float* vel, int B, int64_t per, const float* scale) {
  const int64_t n = int64_t(B) * per;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const float pos = vel[i], neg = vel[n + i];
    vel[i] = __fadd_rn(neg, __fmul_rn(scale[i / per], __fsub_rn(pos, neg)));
  }
}

__global__ void inpaint_kernel(float* lat, const float* x0, const float* noise, const float* mask, int64_t n,
                               const float* sigmas, const int* step) {
  const float s = sigmas[*step], keep = __fsub_rn(1.f, s);
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const float proper = __fadd_rn(__fmul_rn(s, noise[i]), __fmul_rn(keep, x0[i]));
    const float m = mask[i];
    lat[i] = __fadd_rn(__fmul_rn(__fsub_rn(1.f, m), proper), __fmul_rn(m, lat[i]));
  }
}

}  // namespace

void gather_step_rows(const float* src, int64_t R, int B, const int* step, const int64_t* off, const int* w, int nblk,
                      float* dst, cudaStream_t st) {
  if (nblk == 0) return;
  gather_rows_kernel<<<dim3(16, unsigned(nblk)), 256, 0, st>>>(src, R, B, step, off, w, dst);
  LAUNCH_CHECK();
}

void euler_step_sched(float* lat, const float* vel, int64_t n, const float* sigmas, int* step, cudaStream_t st) {
  unsigned grid = unsigned(std::min<int64_t>((n + 255) / 256, 1024));
  euler_sched_kernel<<<grid, 256, 0, st>>>(lat, vel, n, sigmas, step);
  LAUNCH_CHECK();
  advance_kernel<<<1, 1, 0, st>>>(step);
  LAUNCH_CHECK();
}

void true_cfg_combine(float* vel, int B, int64_t per, const float* scale, cudaStream_t st) {
  const int64_t n = int64_t(B) * per;
  cfg_kernel<<<unsigned(std::min<int64_t>((n + 255) / 256, 1024)), 256, 0, st>>>(vel, B, per, scale);
  LAUNCH_CHECK();
}

void inpaint_blend(float* lat, const float* x0, const float* noise, const float* mask, int64_t n, const float* sigmas,
                   const int* step, cudaStream_t st) {
  inpaint_kernel<<<unsigned(std::min<int64_t>((n + 255) / 256, 1024)), 256, 0, st>>>(lat, x0, noise, mask, n, sigmas,
                                                                                      step);
  LAUNCH_CHECK();
}

}  // namespace fq
