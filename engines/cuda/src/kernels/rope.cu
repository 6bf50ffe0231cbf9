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

}  // namespace

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
