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

// The fp8 LoRA along K (linear.cu kcat8): h' [rows, r] bf16 (= h / s_x) -> h_q into the input rows' reserve columns,
// B [out, r] bf16 -> B'_q into the weight rows' reserve columns, both E4M3, scaled so that
// s_x s_w (h_q B'_q^T) = h B^T with their largest magnitudes equal: m = sqrt(amax(h') amax(B) / s_w) (at most 448,
// e4m3's largest), h_q = h' m / amax(h'), B'_q = B m / amax(B) (then h_q B'_q = h' B / s_w). A zero h' or B writes
// zeros. Saturating conversions: a product beyond e4m3's range is clipped, not turned into NaN.
__global__ void fold_fp8_kernel(const __nv_bfloat16* h, int rows, int r, const __nv_bfloat16* B, int out,
                                const float* h_amax, const float* b_amax, const float* s_w, __nv_fp8_e4m3* xres,
                                int ldx, __nv_fp8_e4m3* wres, int ldw) {
  const float ah = *h_amax, ab = *b_amax;
  const bool zero = !(ah > 0.f) || !(ab > 0.f);
  const float m = zero ? 0.f : fminf(sqrtf(ah * ab / *s_w), 448.f);
  const float fh = zero ? 0.f : m / ah, fb = zero ? 0.f : m / ab;
  const int64_t nh = int64_t(rows) * r, n = nh + int64_t(out) * r;
  GRID_LOOP(i, n) {
    if (i < nh) {
      const int64_t row = i / r, j = i % r;
      xres[row * ldx + j] = __nv_fp8_e4m3(__bfloat162float(h[i]) * fh);  // the type's conversion saturates (satfinite)
    } else {
      const int64_t k = i - nh, o = k / r, j = k % r;
      wres[o * ldw + j] = __nv_fp8_e4m3(__bfloat162float(B[k]) * fb);
    }
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

void lora_fold_fp8(const void* h, int rows, int r, const void* B, int out, const float* h_amax, const float* b_amax,
                   const float* s_w, void* xres, int ldx, void* wres, int ldw, cudaStream_t st) {
  fold_fp8_kernel<<<grid_for(int64_t(rows + out) * r), kThreads, 0, st>>>(
      static_cast<const __nv_bfloat16*>(h), rows, r, static_cast<const __nv_bfloat16*>(B), out, h_amax, b_amax, s_w,
      static_cast<__nv_fp8_e4m3*>(xres), ldx, static_cast<__nv_fp8_e4m3*>(wres), ldw);
  LAUNCH_CHECK();
}

void dequantize_fp8(const void* q, int ld, const float* scale, int rows, int cols, void* out, cudaStream_t st) {
  dequant_kernel<<<grid_for(int64_t(rows) * cols), kThreads, 0, st>>>(static_cast<const __nv_fp8_e4m3*>(q), ld, scale,
                                                                      rows, cols, static_cast<__nv_bfloat16*>(out));
  LAUNCH_CHECK();
}

}  // namespace fq
