// LoRA adapter helpers: packing one adapter's up factor into a set's rank-concatenated B (strength folded in), the
// set's summed up-bias, the [latents; control] input of a BFL Control x_embedder, and the bf16 view of an fp8 activation an adapter on an fp8 layer reads.
#include <cuda_fp8.h>

#include "../common.h"
#include "device_util.cuh"
#include "dispatch.cuh"
#include "kernels.h"

namespace fq {
namespace {

// dst[o, off + j] = s * src[o, j] for o < out, j < r; dst rows have ld elements.
template <typename T>
__global__ void pack_up_kernel(const T* src, int out, int r, float s, T* dst, int ld, int off) {
  GRID_LOOP(i, int64_t(out) * r) {
    const int64_t o = i / r, j = i % r;
    dst[o * ld + off + j] = fromf<T>(s * tof(src[i]));
  }
}

__global__ void axpy_kernel(float* y, const float* x, float s, int n) {
  GRID_LOOP(i, n) y[i] += s * x[i];
}

// out[r, c] = q[r, c] * scale (fp8 E4M3 -> bf16), q rows of ld elements, out contiguous.
__global__ void dequant_kernel(const __nv_fp8_e4m3* q, int ld, const float* scale, int rows, int cols,
                               __nv_bfloat16* out) {
  const float s = *scale;
  GRID_LOOP(i, int64_t(rows) * cols) {
    const int64_t r = i / cols, c = i % cols;
    out[i] = __float2bfloat16_rn(float(q[r * ld + c]) * s);
  }
}

template <typename T>
__global__ void concat_kernel(const float* a, int ca, const float* b, int cb, int64_t rows, T* out) {
  const int w = ca + cb;
  GRID_LOOP(i, rows * w) {
    const int64_t r = i / w;
    const int c = int(i % w);
    out[i] = fromf<T>(c < ca ? a[r * ca + c] : b[r * cb + (c - ca)]);
  }
}

}  // namespace

void concat_features(const float* a, int ca, const float* b, int cb, int64_t rows, void* out, DType t,
                     cudaStream_t st) {
  FQ_DISPATCH(t, T,
              concat_kernel<T><<<grid_for(rows * (ca + cb)), kThreads, 0, st>>>(a, ca, b, cb, rows,
                                                                              static_cast<T*>(out)));
  LAUNCH_CHECK();
}

void lora_pack_up(const void* src, DType dt, int out, int r, float s, void* dst, int ld, int off, cudaStream_t st) {
  FQ_DISPATCH(dt, T,
              pack_up_kernel<T><<<grid_for(int64_t(out) * r), kThreads, 0, st>>>(static_cast<const T*>(src), out, r, s,
                                                                                 static_cast<T*>(dst), ld, off));
  LAUNCH_CHECK();
}

void axpy_f32(float* y, const float* x, float s, int n, cudaStream_t st) {
  axpy_kernel<<<grid_for(n), kThreads, 0, st>>>(y, x, s, n);
  LAUNCH_CHECK();
}

void dequantize_fp8(const void* q, int ld, const float* scale, int rows, int cols, void* out, cudaStream_t st) {
  dequant_kernel<<<grid_for(int64_t(rows) * cols), kThreads, 0, st>>>(static_cast<const __nv_fp8_e4m3*>(q), ld, scale,
                                                                      rows, cols, static_cast<__nv_bfloat16*>(out));
  LAUNCH_CHECK();
}

}  // namespace fq
