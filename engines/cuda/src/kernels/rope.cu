// QK RMSNorm + interleaved-pair RoPE, scattering q/k/v of one stream into the joint [B, S, H, D] layout.
#include "../common.h"
#include "device_util.cuh"
#include "dispatch.cuh"
#include "kernels.h"

namespace fq {
namespace {

// One warp per (token, head). Lane l owns the pairs j = l and l + 32 (D/2 <= 64, D <= 128).
template <typename TI, typename TO>
__global__ void qk_norm_rope_kernel(const TI* qkv, int ld, int B, int n, int off, int S, int H, int D,
                                    const float* wq, const float* wk, const float* cs, TO* Q, TO* K, TO* V) {
  int warp = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5), lane = threadIdx.x & 31;
  if (warp >= B * n * H) return;
  int h = warp % H, tok = warp / H, b = tok / n, i = tok % n, p = off + i;
  const TI* row = qkv + int64_t(tok) * ld + h * D;
  int64_t dst = ((int64_t(b) * S + p) * H + h) * D;
  int half = D / 2;
  for (int which = 0; which < 2; which++) {
    const TI* src = row + which * H * D;
    const float* w = which ? wk : wq;
    float x0[2], x1[2], ss = 0.f;
#pragma unroll
    for (int u = 0; u < 2; u++) {
      int j = lane + 32 * u;
      x0[u] = x1[u] = 0.f;
      if (j < half) {
        x0[u] = tof(src[2 * j]);
        x1[u] = tof(src[2 * j + 1]);
        ss += x0[u] * x0[u] + x1[u] * x1[u];
      }
    }
    float r = rsqrtf(warp_sum(ss) / float(D) + 1e-6f);
    TO* out = (which ? K : Q) + dst;
#pragma unroll
    for (int u = 0; u < 2; u++) {
      int j = lane + 32 * u;
      if (j < half) {
        float a = x0[u] * r * w[2 * j], c = x1[u] * r * w[2 * j + 1];
        float co = cs[(int64_t(p) * half + j) * 2], si = cs[(int64_t(p) * half + j) * 2 + 1];
        out[2 * j] = fromf<TO>(a * co - c * si);
        out[2 * j + 1] = fromf<TO>(c * co + a * si);
      }
    }
  }
  const TI* vs = row + 2 * H * D;
  for (int d = lane; d < D; d += 32) V[dst + d] = fromf<TO>(tof(vs[d]));
}

// Four consecutive elements (two RoPE pairs) as floats: one 16-byte (fp32) or 8-byte (bf16) access.
__device__ __forceinline__ void load4(const float* p, float x[4]) {
  const float4 v = *reinterpret_cast<const float4*>(p);
  x[0] = v.x, x[1] = v.y, x[2] = v.z, x[3] = v.w;
}
__device__ __forceinline__ void load4(const __nv_bfloat16* p, float x[4]) {
  const uint2 raw = *reinterpret_cast<const uint2*>(p);
  const float2 a = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&raw.x));
  const float2 b = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&raw.y));
  x[0] = a.x, x[1] = a.y, x[2] = b.x, x[3] = b.y;
}
__device__ __forceinline__ void store4(float* p, const float y[4]) {
  *reinterpret_cast<float4*>(p) = make_float4(y[0], y[1], y[2], y[3]);
}
__device__ __forceinline__ void store4(__nv_bfloat16* p, const float y[4]) {
  __nv_bfloat162 a = __floats2bfloat162_rn(y[0], y[1]), b = __floats2bfloat162_rn(y[2], y[3]);  // as fromf: RN
  uint2 raw;
  raw.x = *reinterpret_cast<uint32_t*>(&a);
  raw.y = *reinterpret_cast<uint32_t*>(&b);
  *reinterpret_cast<uint2*>(p) = raw;
}

// One warp per (row, head), q and k. Lane l owns elements [4l, 4l + 4) = pairs 2l, 2l + 1 (D <= 128). The same
// arithmetic as qk_norm_rope_kernel per element (only the order of the sum of squares differs).
template <typename T>
__global__ void qk_norm_rope_inplace_kernel(T* qkv, int ld, int rows, int S, int split, int H, int D, const float* wq0,
                                            const float* wk0, const float* wq1, const float* wk1, const float* cs) {
  const int warp = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5), lane = threadIdx.x & 31;
  if (warp >= rows * H) return;
  const int h = warp % H, r = warp / H, p = r % S, half = D / 2, j0 = 2 * lane;
  const bool on = 4 * lane < D, first = p < split;
  const float* rot = cs + (int64_t(p) * half + j0) * 2;  // (cos, sin) of pairs j0, j0 + 1
  // Both loads first (q's and k's head), then the two reductions: two 256-byte reads in flight per warp instead of
  // one read, a shuffle reduction and a write before the next (a memory-bound pass: 6.4 GB a 1024x1024 step).
  T* xs[2];
  float v[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
#pragma unroll
  for (int which = 0; which < 2; which++) {
    xs[which] = qkv + int64_t(r) * ld + int64_t(which) * H * D + int64_t(h) * D + 4 * lane;
    if (on) load4(xs[which], v[which]);
  }
  float ss[2];
#pragma unroll
  for (int which = 0; which < 2; which++)
    ss[which] = v[which][0] * v[which][0] + v[which][1] * v[which][1] + v[which][2] * v[which][2] +
                v[which][3] * v[which][3];
  const float rsq = rsqrtf(warp_sum(ss[0]) / float(D) + 1e-6f), rsk = rsqrtf(warp_sum(ss[1]) / float(D) + 1e-6f);
  if (!on) return;
  float co[4];
#pragma unroll
  for (int u = 0; u < 4; u++) co[u] = rot[u];
#pragma unroll
  for (int which = 0; which < 2; which++) {
    const float* w = which ? (first ? wk0 : wk1) : (first ? wq0 : wq1);
    const float rs = which ? rsk : rsq;
    float o[4];
#pragma unroll
    for (int u = 0; u < 2; u++) {
      const float a = v[which][2 * u] * rs * w[4 * lane + 2 * u], c = v[which][2 * u + 1] * rs * w[4 * lane + 2 * u + 1];
      o[2 * u] = a * co[2 * u] - c * co[2 * u + 1];
      o[2 * u + 1] = c * co[2 * u] + a * co[2 * u + 1];
    }
    store4(xs[which], o);
  }
}

}  // namespace

void qk_norm_rope_inplace(void* qkv, DType dt, int ld, int B, int S, int split, int H, int D, const float* wq0,
                          const float* wk0, const float* wq1, const float* wk1, const float* cs, cudaStream_t st) {
  if (D > 128 || D % 4 || ld % 4 || reinterpret_cast<uintptr_t>(qkv) % 16)
    throw std::runtime_error("qk_norm_rope_inplace: head dim must be a multiple of 4 and <= 128, rows 4-aligned");
  const int rows = B * S, warps = rows * H;
  FQ_DISPATCH(dt, T, qk_norm_rope_inplace_kernel<T><<<ceil_div(warps, 8), 256, 0, st>>>(
                         static_cast<T*>(qkv), ld, rows, S, split, H, D, wq0, wk0, wq1, wk1, cs));
  LAUNCH_CHECK();
}

void qk_norm_rope(const void* qkv, DType it, int ld, int B, int n, int off, int S, int H, int D, const float* wq,
                  const float* wk, const float* cs, void* Q, void* K, void* V, DType ot, cudaStream_t st) {
  if (D > 128 || D % 2) throw std::runtime_error("qk_norm_rope: head dim must be even and <= 128");
  int warps = B * n * H;
  FQ_DISPATCH(it, TI, FQ_DISPATCH(ot, TO, qk_norm_rope_kernel<TI, TO><<<ceil_div(warps, 8), 256, 0, st>>>(
                                              static_cast<const TI*>(qkv), ld, B, n, off, S, H, D, wq, wk, cs,
                                              static_cast<TO*>(Q), static_cast<TO*>(K), static_cast<TO*>(V))));
  LAUNCH_CHECK();
}

}  // namespace fq
