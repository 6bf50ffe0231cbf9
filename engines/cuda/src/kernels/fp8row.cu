// fp8 (E4M3) with per-row scales (the `fp8row` weight type, linear.h): one quantiser for both operands (weights
// [out, in] per output channel at load, activations [rows, in] per token in linear()), and the epilogue that applies
// the two scale vectors, the bias, GELU and a residual to the fp32 product of a unit-scaled fp8 GEMM. cuBLASLt's
// CUDA 11.8 API scales fp8 operands by one scalar each, so the per-row and per-channel factors are applied here,
// after the product: y[r, o] = (sum_k x8[r, k] w8[o, k]) * s_x[r] * s_w[o] + b[o].
#include <cuda_fp8.h>

#include <cfloat>

#include "../common.h"
#include "device_util.cuh"
#include "dispatch.cuh"
#include "kernels.h"

namespace fq {

// Beside device_util.cuh's tof overloads (in fq itself: an overload in the anonymous namespace would hide them).
__device__ __forceinline__ float tof(__nv_fp8_e4m3 x) { return float(x); }

namespace {

constexpr float kE4M3Max = 448.f;

// The dequantisation scale of a row with absolute maximum m: m / 448, or 1 for an all-zero (or subnormal-only) row,
// whose values then all quantise to 0 (1 / (m / 448) would overflow or divide by zero).
__device__ __forceinline__ float row_scale(float m) {
  const float s = m / kE4M3Max;
  return s >= FLT_MIN ? s : 1.f;
}

// One block per row. kPer > 0: the row (cols <= kPer * blockDim.x) is read once into registers, reduced to its
// amax and quantised from there; kPer == 0: any width, the row read twice (the second read mostly from L2).
// x in T (fp32, bf16, or fp8 with the per-tensor dequantisation scale *in_scale), row stride ld; out contiguous.
template <typename T, int kPer>
__global__ void row_quant_kernel(const T* x, int ld, const float* in_scale, int cols, __nv_fp8_e4m3* out,
                                 float* scales) {
  __shared__ float sh[33];
  const int r = blockIdx.x;
  const T* xr = x + int64_t(r) * ld;
  __nv_fp8_e4m3* o = out + int64_t(r) * cols;
  const float is = in_scale ? *in_scale : 1.f;
  float m = 0.f;
  if constexpr (kPer > 0) {
    float v[kPer];
#pragma unroll
    for (int k = 0; k < kPer; k++) {
      const int i = threadIdx.x + k * blockDim.x;
      v[k] = i < cols ? tof(xr[i]) * is : 0.f;
      m = fmaxf(m, fabsf(v[k]));
    }
    const float s = row_scale(block_max(m, sh)), inv = 1.f / s;
    if (threadIdx.x == 0) scales[r] = s;
#pragma unroll
    for (int k = 0; k < kPer; k++) {
      const int i = threadIdx.x + k * blockDim.x;
      if (i < cols) o[i] = __nv_fp8_e4m3(v[k] * inv);  // saturating (satfinite) conversion
    }
  } else {
    for (int i = threadIdx.x; i < cols; i += blockDim.x) m = fmaxf(m, fabsf(tof(xr[i]) * is));
    const float s = row_scale(block_max(m, sh)), inv = 1.f / s;
    if (threadIdx.x == 0) scales[r] = s;
    for (int i = threadIdx.x; i < cols; i += blockDim.x) o[i] = __nv_fp8_e4m3(tof(xr[i]) * is * inv);
  }
}

template <typename T>
void launch_row_quant(const T* x, int ld, const float* in_scale, int rows, int cols, __nv_fp8_e4m3* out,
                      float* scales, cudaStream_t st) {
  // Registers hold up to 64 values a thread: rows up to 16384 wide (FLUX.1-dev's widest input, the single blocks'
  // proj_out, is 15360) take the one-read path.
  const int per = (cols + kThreads - 1) / kThreads;
  if (per <= 8) row_quant_kernel<T, 8><<<rows, kThreads, 0, st>>>(x, ld, in_scale, cols, out, scales);
  else if (per <= 16) row_quant_kernel<T, 16><<<rows, kThreads, 0, st>>>(x, ld, in_scale, cols, out, scales);
  else if (per <= 32) row_quant_kernel<T, 32><<<rows, kThreads, 0, st>>>(x, ld, in_scale, cols, out, scales);
  else if (per <= 64) row_quant_kernel<T, 64><<<rows, kThreads, 0, st>>>(x, ld, in_scale, cols, out, scales);
  else row_quant_kernel<T, 0><<<rows, kThreads, 0, st>>>(x, ld, in_scale, cols, out, scales);
}

// y[r, o] = act(acc[r, o] * (sx[r] * sw[o]) + bias[o]) + resid[r, o]; acc fp32 [rows, n] contiguous, y / resid in T
// with row stride ldy (resid may alias y: each element is read before it is written, by the same thread).
template <typename T>
__global__ void epi_kernel(const float* acc, int rows, int n, const float* sx, const float* sw, const float* bias,
                           bool gelu, const T* resid, T* y, int ldy) {
  GRID_LOOP(i, int64_t(rows) * n) {
    const int r = int(i / n), o = int(i % n);
    float v = acc[i] * (sx[r] * sw[o]);
    if (bias) v += bias[o];
    if (gelu) v = gelu_tanh(v);
    const int64_t yi = int64_t(r) * ldy + o;
    if (resid) v += tof(resid[yi]);
    y[yi] = fromf<T>(v);
  }
}

__device__ __align__(16) float g_unit_scale = 1.f;

}  // namespace

void quantize_fp8_rows(const void* in, DType it, int ld, const float* in_scale, int rows, int cols, void* out,
                       float* scales, cudaStream_t st) {
  if (rows == 0) return;
  auto* o = static_cast<__nv_fp8_e4m3*>(out);
  if (it == DType::FP8) {
    if (!in_scale) throw EngineError("quantize_fp8_rows: an fp8 input needs its per-tensor scale", false);
    launch_row_quant(static_cast<const __nv_fp8_e4m3*>(in), ld, in_scale, rows, cols, o, scales, st);
  } else if (it == DType::F32) {
    launch_row_quant(static_cast<const float*>(in), ld, nullptr, rows, cols, o, scales, st);
  } else if (it == DType::BF16) {
    launch_row_quant(static_cast<const __nv_bfloat16*>(in), ld, nullptr, rows, cols, o, scales, st);
  } else {
    throw EngineError(std::string("quantize_fp8_rows: no input of type ") + dname(it), false);
  }
  LAUNCH_CHECK();
}

void fp8row_epilogue(const float* acc, int rows, int n, const float* sx, const float* sw, const float* bias, bool gelu,
                     const void* resid, void* y, DType yt, int ldy, cudaStream_t st) {
  if (rows == 0) return;
  if (yt != DType::F32 && yt != DType::BF16)
    throw EngineError(std::string("fp8row epilogue: output type ") + dname(yt) + " (f32 or bf16 only)", false);
  FQ_DISPATCH(yt, T,
              epi_kernel<T><<<grid_for(int64_t(rows) * n), kThreads, 0, st>>>(
                  acc, rows, n, sx, sw, bias, gelu, static_cast<const T*>(resid), static_cast<T*>(y), ldy));
  LAUNCH_CHECK();
}

const float* fp8_unit_scale() {
  // Looked up once (the first fp8row weight quantised at load asks first, so never inside a graph capture).
  static const float* p = [] {
    void* a = nullptr;
    CUDA_CHECK(cudaGetSymbolAddress(&a, g_unit_scale));
    return static_cast<const float*>(a);
  }();
  return p;
}

}  // namespace fq
