// FP8 (E4M3) operands for the fp8 GEMM path: per-tensor scaled quantisation of weights, and the adaLN LayerNorm
// writing its output directly in fp8 (two passes: row statistics + global amax, then scaled conversion).
#include <cuda_fp8.h>

#include "../common.h"
#include "device_util.cuh"
#include "dispatch.cuh"
#include "kernels.h"

namespace fq {
namespace {

constexpr float kE4M3Max = 448.f;

// amax of non-negative floats through their bit patterns (order-preserving for x >= 0).
__device__ __forceinline__ void atomic_max_pos(float* p, float v) {
  atomicMax(reinterpret_cast<unsigned int*>(p), __float_as_uint(v));
}

// Element i of a [n / cols, cols] view whose rows are ld apart (cols = ld: contiguous).
__device__ __forceinline__ int64_t strided(int64_t i, int64_t cols, int64_t ld) {
  return cols == ld ? i : i / cols * ld + i % cols;
}

template <typename T>
__global__ void amax_kernel(const T* x, int64_t n, int64_t cols, int64_t ld, float* amax) {
  __shared__ float sh[33];
  float m = 0.f;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    m = fmaxf(m, fabsf(tof(x[strided(i, cols, ld)])));
  m = block_max(m, sh);
  if (threadIdx.x == 0) atomic_max_pos(amax, m);
}

template <typename T>
__global__ void quant_kernel(const T* x, int64_t n, int64_t cols, int64_t ld, const float* amax, __nv_fp8_e4m3* out,
                             int64_t ldo, float* scale) {
  float s = fmaxf(*amax, 1e-12f) / kE4M3Max;  // dequantisation scale: x ~= fp8 * s
  float inv = 1.f / s;
  if (blockIdx.x == 0 && threadIdx.x == 0 && scale) *scale = s;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    out[strided(i, cols, ldo)] = __nv_fp8_e4m3(tof(x[strided(i, cols, ld)]) * inv);
}

// Pass 1: per-row mean / rstd (kept in stats[2r], stats[2r+1]) and the global amax of the modulated output.
__global__ void ln_stats_kernel(const float* x, int D, int rows_per_batch, const float* shift, const float* scale,
                                int mod_stride, float eps, float* stats, float* amax) {
  __shared__ float sh[33];
  int r = blockIdx.x;
  const float* xr = x + int64_t(r) * D;
  float mean, rstd;
  row_mean_rstd(xr, D, eps, sh, mean, rstd);
  int b = r / rows_per_batch;
  const float* sh_b = shift + int64_t(b) * mod_stride;
  const float* sc_b = scale + int64_t(b) * mod_stride;
  float m = 0.f;
  for (int i = threadIdx.x; i < D; i += blockDim.x) m = fmaxf(m, fabsf((xr[i] - mean) * rstd * (1.f + sc_b[i]) + sh_b[i]));
  m = block_max(m, sh);
  if (threadIdx.x == 0) {
    stats[2 * r] = mean;
    stats[2 * r + 1] = rstd;
    atomic_max_pos(amax, m);
  }
}

__global__ void ln_quant_kernel(const float* x, int D, int rows_per_batch, const float* shift, const float* scale,
                                int mod_stride, const float* stats, const float* amax, __nv_fp8_e4m3* out,
                                float* out_scale, int ldo) {
  int r = blockIdx.x;
  float s = fmaxf(*amax, 1e-12f) / kE4M3Max, inv = 1.f / s;
  if (r == 0 && threadIdx.x == 0) *out_scale = s;
  float mean = stats[2 * r], rstd = stats[2 * r + 1];
  int b = r / rows_per_batch;
  const float* sh_b = shift + int64_t(b) * mod_stride;
  const float* sc_b = scale + int64_t(b) * mod_stride;
  const float* xr = x + int64_t(r) * D;
  __nv_fp8_e4m3* o = out + int64_t(r) * ldo;
  for (int i = threadIdx.x; i < D; i += blockDim.x)
    o[i] = __nv_fp8_e4m3(((xr[i] - mean) * rstd * (1.f + sc_b[i]) + sh_b[i]) * inv);
}

}  // namespace

void layernorm_mod_fp8_apply(const float* x, int rows, int D, int rows_per_batch, const float* shift,
                             const float* scale, int mod_stride, void* out, float* out_scale, const float* ws,
                             cudaStream_t st, int ldo) {
  ln_quant_kernel<<<rows, 256, 0, st>>>(x, D, rows_per_batch, shift, scale, mod_stride, ws + 1, ws,
                                        static_cast<__nv_fp8_e4m3*>(out), out_scale, ldo > 0 ? ldo : D);
  LAUNCH_CHECK();
}

namespace {

unsigned amax_grid(int64_t n) { return unsigned(std::min<int64_t>((n + 255) / 256, 4096)); }

// *amax = max |x| over a [n / cols, cols] view of rows ld apart, zeroed first.
void strided_amax(const void* in, DType it, int64_t n, int64_t cols, int64_t ld, float* amax, cudaStream_t st) {
  CUDA_CHECK(cudaMemsetAsync(amax, 0, sizeof(float), st));
  FQ_DISPATCH(it, T, amax_kernel<T><<<amax_grid(n), 256, 0, st>>>(static_cast<const T*>(in), n, cols, ld, amax));
  LAUNCH_CHECK();
}

}  // namespace

void quantize_fp8(const void* in, DType it, int64_t n, void* out, float* scale, float* ws, cudaStream_t st) {
  quantize_fp8_strided(in, it, 1, n, n, out, scale, ws, st);
}

void amax_abs(const void* in, DType it, int64_t n, float* amax, cudaStream_t st) {
  strided_amax(in, it, n, n, n, amax, st);
}

void quantize_fp8_strided(const void* in, DType it, int64_t rows, int64_t cols, int64_t ld, void* out, float* scale,
                          float* ws, cudaStream_t st, int64_t ldo) {
  if (ldo <= 0) ldo = cols;
  const int64_t n = rows * cols;
  strided_amax(in, it, n, cols, ld, ws, st);
  FQ_DISPATCH(it, T,
              quant_kernel<T><<<amax_grid(n), 256, 0, st>>>(static_cast<const T*>(in), n, cols, ld, ws,
                                                            static_cast<__nv_fp8_e4m3*>(out), ldo, scale));
  LAUNCH_CHECK();
}

void layernorm_mod_fp8(const float* x, int rows, int D, int rows_per_batch, const float* shift, const float* scale,
                       int mod_stride, float eps, void* out, float* out_scale, float* ws, cudaStream_t st, int ldo) {
  // ws: [1 + 2 * rows] floats: amax, then per-row (mean, rstd).
  CUDA_CHECK(cudaMemsetAsync(ws, 0, sizeof(float), st));
  ln_stats_kernel<<<rows, 256, 0, st>>>(x, D, rows_per_batch, shift, scale, mod_stride, eps, ws + 1, ws);
  LAUNCH_CHECK();
  ln_quant_kernel<<<rows, 256, 0, st>>>(x, D, rows_per_batch, shift, scale, mod_stride, ws + 1, ws,
                                        static_cast<__nv_fp8_e4m3*>(out), out_scale, ldo > 0 ? ldo : D);
  LAUNCH_CHECK();
}

}  // namespace fq
