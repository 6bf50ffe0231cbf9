// Per-step scalars in device memory, so that one captured step replays for every step of a job: each sample's step
// index selects its modulation rows and its Euler step size (samples of one job may be at different steps of
// different schedules: a joined job, PROTOCOL.md `join`). A sample whose schedule is done is frozen: its latents are
// left alone and its modulation rows stay at its last step (the transformer still runs its rows, unused).
#include <algorithm>

#include "../common.h"
#include "kernels.h"

namespace fq {
namespace {

// Block k (blockIdx.y) copies, per sample b, the row of its current step (clamped to its last):
// src + off[k]*R + row*w[k] -> dst + off[k]*B + b*w[k], row = row0[b] + min(step[b], nsteps[b] - 1) * rstride[b].
__global__ void gather_rows_kernel(const float* src, int64_t R, int B, const int* step, const int* nsteps,
                                   const int* row0, const int* rstride, const int64_t* off, const int* w, float* dst) {
  const int k = blockIdx.y, wk = w[k];
  const int64_t n = int64_t(B) * wk;
  const float* s = src + off[k] * R;
  float* d = dst + off[k] * B;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const int b = int(i / wk);
    const int64_t row = row0[b] + int64_t(min(step[b], nsteps[b] - 1)) * rstride[b];
    d[i] = s[row * wk + (i - int64_t(b) * wk)];
  }
}

// Block k (blockIdx.y): dst rows [dst_row0, dst_row0 + count) of block k = src rows map[r] of block k.
__global__ void copy_rows_kernel(const float* src, int64_t Rs, float* dst, int64_t Rd, int64_t dst_row0,
                                 const int* map, int64_t count, const int64_t* off, const int* w) {
  const int k = blockIdx.y, wk = w[k];
  const int64_t n = count * wk;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = i / wk, c = i - r * wk;
    dst[off[k] * Rd + (dst_row0 + r) * wk + c] = src[off[k] * Rs + int64_t(map[r]) * wk + c];
  }
}

// Sample b = i / per: lat += (sigmas[sig0[b] + s + 1] - sigmas[sig0[b] + s]) * vel with s = step[b], unless done.
__global__ void euler_sched_kernel(float* lat, const float* vel, int64_t per, int64_t n, const float* sigmas,
                                   const int* sig0, const int* step, const int* nsteps) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const int b = int(i / per), s = step[b];
    if (s >= nsteps[b]) continue;
    const float* sg = sigmas + sig0[b];
    const float dt = sg[s + 1] - sg[s];
    lat[i] += dt * vel[i];
  }
}

__global__ void advance_kernel(int* step, const int* nsteps, int rows) {
  const int b = blockIdx.x * blockDim.x + threadIdx.x;
  if (b < rows && step[b] < nsteps[b]) step[b] += 1;
}

__global__ void cfg_kernel(float* vel, int B, int64_t per, const float* scale) {
  const int64_t n = int64_t(B) * per;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const float pos = vel[i], neg = vel[n + i];
    vel[i] = __fadd_rn(neg, __fmul_rn(scale[i / per], __fsub_rn(pos, neg)));
  }
}

// Before the step index advances: s = the sample's next sigma (0 after its last step); done samples are skipped.
__global__ void inpaint_kernel(float* lat, const float* x0, const float* noise, const float* mask, int64_t per,
                               int64_t n, const float* sigmas, const int* sig0, const int* step, const int* nsteps) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const int b = int(i / per), st = step[b];
    if (st >= nsteps[b]) continue;
    const float s = sigmas[sig0[b] + st + 1], keep = __fsub_rn(1.f, s);
    const float proper = __fadd_rn(__fmul_rn(s, noise[i]), __fmul_rn(keep, x0[i]));
    const float m = mask[i];
    lat[i] = __fadd_rn(__fmul_rn(__fsub_rn(1.f, m), proper), __fmul_rn(m, lat[i]));
  }
}

unsigned grid_of(int64_t n) { return unsigned(std::min<int64_t>((n + 255) / 256, 1024)); }

}  // namespace

void gather_step_rows(const float* src, int64_t R, int B, const SampleSchedule& sc, const int64_t* off, const int* w,
                      int nblk, float* dst, cudaStream_t st) {
  if (nblk == 0) return;
  gather_rows_kernel<<<dim3(16, unsigned(nblk)), 256, 0, st>>>(src, R, B, sc.step, sc.nsteps, sc.row0, sc.rstride,
                                                               off, w, dst);
  LAUNCH_CHECK();
}

void copy_step_rows(const float* src, int64_t Rs, float* dst, int64_t Rd, int64_t dst_row0, const int* map,
                    int64_t count, const int64_t* off, const int* w, int nblk, cudaStream_t st) {
  if (nblk == 0 || count == 0) return;
  copy_rows_kernel<<<dim3(64, unsigned(nblk)), 256, 0, st>>>(src, Rs, dst, Rd, dst_row0, map, count, off, w);
  LAUNCH_CHECK();
}

void euler_step_samples(float* lat, const float* vel, int B, int64_t per, const float* sigmas,
                        const SampleSchedule& sc, cudaStream_t st) {
  const int64_t n = int64_t(B) * per;
  euler_sched_kernel<<<grid_of(n), 256, 0, st>>>(lat, vel, per, n, sigmas, sc.sig0, sc.step, sc.nsteps);
  LAUNCH_CHECK();
}

void advance_steps(const SampleSchedule& sc, int rows, cudaStream_t st) {
  advance_kernel<<<unsigned((rows + 127) / 128), 128, 0, st>>>(sc.step, sc.nsteps, rows);
  LAUNCH_CHECK();
}

void true_cfg_combine(float* vel, int B, int64_t per, const float* scale, cudaStream_t st) {
  const int64_t n = int64_t(B) * per;
  cfg_kernel<<<grid_of(n), 256, 0, st>>>(vel, B, per, scale);
  LAUNCH_CHECK();
}

void inpaint_blend(float* lat, const float* x0, const float* noise, const float* mask, int B, int64_t per,
                   const float* sigmas, const SampleSchedule& sc, cudaStream_t st) {
  const int64_t n = int64_t(B) * per;
  inpaint_kernel<<<grid_of(n), 256, 0, st>>>(lat, x0, noise, mask, per, n, sigmas, sc.sig0, sc.step, sc.nsteps);
  LAUNCH_CHECK();
}

}  // namespace fq
