// Reference-grade attention on CUDA cores (fp32 path, encoders) and the row softmax of the chunked VAE attention.
#include "../common.h"
#include "device_util.cuh"
#include "dispatch.cuh"
#include "kernels.h"

namespace fq {
namespace {

// One warp per (b, h, query). Lane l owns dims d = l + 32u (u < DU), D <= 32*DU. Online softmax over the keys.
template <typename T, int DU>
__global__ void attention_rows_kernel(const T* q, const T* k, const T* v, int ldq, int ldk, int ldv, int64_t bsq,
                                      int64_t bskv, int B, int Sq, int Sk, int H, int D, float scale, bool causal,
                                      const float* bias, OutMap out) {
  int warp = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5), lane = threadIdx.x & 31;
  if (warp >= B * H * Sq) return;
  int s = warp % Sq, h = (warp / Sq) % H, b = warp / (Sq * H);
  const T* qr = q + b * bsq + int64_t(s) * ldq + h * D;
  const T* kb = k + b * bskv + h * D;
  const T* vb = v + b * bskv + h * D;
  float qv[DU], acc[DU];
#pragma unroll
  for (int u = 0; u < DU; u++) {
    int d = lane + 32 * u;
    qv[u] = d < D ? tof(qr[d]) : 0.f;
    acc[u] = 0.f;
  }
  const float* brow = bias ? bias + (int64_t(h) * Sq + s) * Sk : nullptr;
  float m = -INFINITY, l = 0.f;
  int kend = causal ? min(Sk, s + 1) : Sk;
  for (int j = 0; j < kend; j++) {
    const T* kr = kb + int64_t(j) * ldk;
    float dot = 0.f;
#pragma unroll
    for (int u = 0; u < DU; u++) {
      int d = lane + 32 * u;
      if (d < D) dot += qv[u] * tof(kr[d]);
    }
    float sc = warp_sum(dot) * scale + (brow ? brow[j] : 0.f);
    float mn = fmaxf(m, sc);
    float corr = expf(m - mn), p = expf(sc - mn);
    l = l * corr + p;
    const T* vr = vb + int64_t(j) * ldv;
#pragma unroll
    for (int u = 0; u < DU; u++) {
      int d = lane + 32 * u;
      acc[u] = acc[u] * corr + (d < D ? p * tof(vr[d]) : 0.f);
    }
    m = mn;
  }
  T* o;
  if (s < out.T) o = static_cast<T*>(out.txt) + (int64_t(b) * out.T + s) * out.ld;
  else o = static_cast<T*>(out.img) + (int64_t(b) * (Sq - out.T) + s - out.T) * out.ld;
  o += h * D;
  float inv = 1.f / l;
#pragma unroll
  for (int u = 0; u < DU; u++) {
    int d = lane + 32 * u;
    if (d < D) o[d] = fromf<T>(acc[u] * inv);
  }
}

template <typename T>
__global__ void softmax_rows_kernel(const float* s, int cols, float scale, T* p) {
  __shared__ float sh[33];
  const float* r = s + int64_t(blockIdx.x) * cols;
  float m = -INFINITY;
  for (int i = threadIdx.x; i < cols; i += blockDim.x) m = fmaxf(m, r[i] * scale);
  m = block_max(m, sh);
  float z = 0.f;
  for (int i = threadIdx.x; i < cols; i += blockDim.x) z += expf(r[i] * scale - m);
  float inv = 1.f / block_sum(z, sh);
  T* o = p + int64_t(blockIdx.x) * cols;
  for (int i = threadIdx.x; i < cols; i += blockDim.x) o[i] = fromf<T>(expf(r[i] * scale - m) * inv);
}

}  // namespace

void attention_rows(const void* q, const void* k, const void* v, DType dt, int ldq, int ldk, int ldv,
                    int64_t bstride_q, int64_t bstride_kv, int B, int Sq, int Sk, int H, int D, float scale,
                    bool causal, const float* bias, OutMap out, cudaStream_t st) {
  int warps = B * H * Sq;
  unsigned grid = ceil_div(warps, 4);
#define FQ_ATT(DU)                                                                                        \
  FQ_DISPATCH(dt, T,                                                                                      \
              attention_rows_kernel<T, DU><<<grid, 128, 0, st>>>(                                         \
                  static_cast<const T*>(q), static_cast<const T*>(k), static_cast<const T*>(v), ldq, ldk, \
                  ldv, bstride_q, bstride_kv, B, Sq, Sk, H, D, scale, causal, bias, out))
  if (D <= 32) FQ_ATT(1);
  else if (D <= 64) FQ_ATT(2);
  else if (D <= 128) FQ_ATT(4);
  else if (D <= 512) FQ_ATT(16);
  else throw std::runtime_error("attention_rows: head dim > 512");
#undef FQ_ATT
  LAUNCH_CHECK();
}

void softmax_rows(const float* s, int rows, int cols, float scale, void* p, DType dt, cudaStream_t st) {
  FQ_DISPATCH(dt, T, softmax_rows_kernel<T><<<rows, 256, 0, st>>>(s, cols, scale, static_cast<T*>(p)));
  LAUNCH_CHECK();
}

}  // namespace fq
