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
//
// Four elements a thread (the rank is a multiple of 16, the reserve columns 16-byte aligned): one 8-byte bf16 load
// and one packed 4-byte store of four e4m3, 32-bit index math. Row g < rows is h's row g, else B's row g - rows.
// (Session 17's version stored one byte a thread with 64-bit division: at rank 64 on the 152 fp8 layers of S, its
// cost grew with the rank, ~1 M elements a layer.)
__global__ void fold_fp8_kernel(const __nv_bfloat16* h, int rows, int r, const __nv_bfloat16* B, int out,
                                const float* h_amax, const float* b_amax, const float* s_w, __nv_fp8_e4m3* xres,
                                int ldx, __nv_fp8_e4m3* wres, int ldw) {
  const float ah = *h_amax, ab = *b_amax;
  const bool zero = !(ah > 0.f) || !(ab > 0.f);
  const float m = zero ? 0.f : fminf(sqrtf(ah * ab / *s_w), 448.f);
  const float fh = zero ? 0.f : m / ah, fb = zero ? 0.f : m / ab;
  const int q = r / 4, total = (rows + out) * q;
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += gridDim.x * blockDim.x) {
    const int g = i / q, j = (i - g * q) * 4;
    const bool is_h = g < rows;
    const int row = is_h ? g : g - rows;
    const __nv_bfloat16* src = (is_h ? h : B) + int64_t(row) * r + j;
    const float f = is_h ? fh : fb;
    const uint2 raw = *reinterpret_cast<const uint2*>(src);
    const float2 a = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&raw.x));
    const float2 b = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&raw.y));
    // The type's conversion saturates (satfinite): a product beyond e4m3's range is clipped, never NaN.
    const __nv_fp8x4_e4m3 v(make_float4(a.x * f, a.y * f, b.x * f, b.y * f));
    __nv_fp8_e4m3* dst = is_h ? xres + int64_t(row) * ldx + j : wres + int64_t(row) * ldw + j;
    *reinterpret_cast<__nv_fp8x4_storage_t*>(dst) = v.__x;
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
  if (r % 16 || ldx % 16 || ldw % 16 || reinterpret_cast<uintptr_t>(xres) % 4 || reinterpret_cast<uintptr_t>(wres) % 4)
    throw std::runtime_error("lora_fold_fp8: rank and row strides must be multiples of 16, reserves 4-byte aligned");
  fold_fp8_kernel<<<grid_for(int64_t(rows + out) * r / 4), kThreads, 0, st>>>(
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
