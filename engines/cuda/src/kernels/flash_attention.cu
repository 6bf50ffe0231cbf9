// Flash attention (FlashAttention-2 scheme) for bf16 on Hopper/Ampere tensor cores with mma.sync m16n8k16.
// Block: NW warps, each owning 16 query rows (BR = 16*NW); keys/values stream through shared memory in tiles of
// BC = 64 rows, double-buffered with cp.async. Scores, softmax statistics and the output accumulate in fp32
// registers; only P (the probabilities) is rounded to bf16 for the P*V product. Never materialises S x S.
#include "../common.h"
#include "device_util.cuh"
#include "kernels.h"

namespace fq {
namespace {

using bf16 = __nv_bfloat16;

__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
__device__ __forceinline__ void cp_async16(void* s, const void* g, int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_u32(s)), "l"(g), "r"(src_bytes));
}
__device__ __forceinline__ void cp_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}
__device__ __forceinline__ void ldsm_x4(uint32_t& r0, uint32_t& r1, uint32_t& r2, uint32_t& r3, const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
               : "r"(smem_u32(p)));
}
__device__ __forceinline__ void ldsm_x4_t(uint32_t& r0, uint32_t& r1, uint32_t& r2, uint32_t& r3, const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
               : "r"(smem_u32(p)));
}
__device__ __forceinline__ void mma16816(float* c, const uint32_t* a, uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
}

template <int D, int NW>
__global__ void __launch_bounds__(NW * 32) flash_kernel(const bf16* __restrict__ Q, const bf16* __restrict__ K,
                                                        const bf16* __restrict__ V, int S, int H, float scale_log2,
                                                        OutMap out, int ldi) {
  constexpr int BR = 16 * NW, BC = 64, CPR = D / 8, SWM = (CPR < 8 ? CPR : 8) - 1, NT = NW * 32;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  bf16* sQ = reinterpret_cast<bf16*>(smem_raw);
  bf16* sK = sQ + BR * D;      // 2 buffers of [BC, D]
  bf16* sV = sK + 2 * BC * D;  // 2 buffers of [BC, D]
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int b = blockIdx.z, h = blockIdx.y, q0 = blockIdx.x * BR;
  const int64_t ld = ldi;  // elements between token rows of q / k / v
  const int64_t base = int64_t(b) * S * ld + int64_t(h) * D;

  // Logical (row, 8-column chunk) -> swizzled element offset: rows that ldmatrix reads together hit distinct banks.
  auto sw = [](int row, int chunk) { return row * D + ((chunk ^ (row & SWM)) << 3); };
  auto load_tile = [&](bf16* dst, const bf16* src, int row0, int nrows) {
    for (int c = tid; c < nrows * CPR; c += NT) {
      int r = c / CPR, ch = c % CPR, gr = row0 + r;
      bool ok = gr < S;  // rows past the end are zero-filled (src-size 0), from a valid address
      cp_async16(dst + sw(r, ch), src + (ok ? int64_t(gr) * ld : 0) + ch * 8, ok ? 16 : 0);
    }
  };

  load_tile(sQ, Q + base, q0, BR);
  load_tile(sK, K + base, 0, BC);
  load_tile(sV, V + base, 0, BC);
  cp_commit();

  const int ntiles = (S + BC - 1) / BC;
  uint32_t qf[D / 16][4];
  float o[D / 8][4];
#pragma unroll
  for (int i = 0; i < D / 8; i++) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f;
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};
  const int mat = lane >> 3, mrow = lane & 7;

  for (int j = 0; j < ntiles; j++) {
    if (j + 1 < ntiles) {
      load_tile(sK + ((j + 1) & 1) * BC * D, K + base, (j + 1) * BC, BC);
      load_tile(sV + ((j + 1) & 1) * BC * D, V + base, (j + 1) * BC, BC);
      cp_commit();
      cp_wait<1>();
    } else {
      cp_wait<0>();
    }
    __syncthreads();
    if (j == 0) {
#pragma unroll
      for (int ks = 0; ks < D / 16; ks++) {
        int row = warp * 16 + mrow + (mat & 1) * 8;
        ldsm_x4(qf[ks][0], qf[ks][1], qf[ks][2], qf[ks][3], sQ + sw(row, ks * 2 + (mat >> 1)));
      }
    }
    const bf16* kt = sK + (j & 1) * BC * D;
    const bf16* vt = sV + (j & 1) * BC * D;

    // S = Q K^T for this warp's 16 rows x 64 keys: 8 n-tiles of 8 keys.
    float s[8][4];
#pragma unroll
    for (int i = 0; i < 8; i++) s[i][0] = s[i][1] = s[i][2] = s[i][3] = 0.f;
#pragma unroll
    for (int ks = 0; ks < D / 16; ks++) {
#pragma unroll
      for (int np = 0; np < 4; np++) {
        uint32_t r0, r1, r2, r3;
        int row = np * 16 + mrow + (mat >> 1) * 8;
        ldsm_x4(r0, r1, r2, r3, kt + sw(row, ks * 2 + (mat & 1)));
        mma16816(s[2 * np], qf[ks], r0, r1);
        mma16816(s[2 * np + 1], qf[ks], r2, r3);
      }
    }

    // Online softmax in the log2 domain. Thread holds rows g (s[.][0..1]) and g+8 (s[.][2..3]).
    const int kbase = j * BC;
    float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int i = 0; i < 8; i++) {
#pragma unroll
      for (int e = 0; e < 4; e++) {
        int col = kbase + i * 8 + 2 * (lane & 3) + (e & 1);
        float v = col < S ? s[i][e] * scale_log2 : -INFINITY;
        s[i][e] = v;
        mx[e >> 1] = fmaxf(mx[e >> 1], v);
      }
    }
    float corr[2];
#pragma unroll
    for (int r = 0; r < 2; r++) {
      mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
      mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
      float mn = fmaxf(m[r], mx[r]);
      corr[r] = exp2f(m[r] - mn);
      m[r] = mn;
      l[r] *= corr[r];
    }
#pragma unroll
    for (int i = 0; i < 8; i++) {
#pragma unroll
      for (int e = 0; e < 4; e++) {
        float p = exp2f(s[i][e] - m[e >> 1]);
        s[i][e] = p;
        l[e >> 1] += p;
      }
    }
#pragma unroll
    for (int i = 0; i < D / 8; i++) {
      o[i][0] *= corr[0];
      o[i][1] *= corr[0];
      o[i][2] *= corr[1];
      o[i][3] *= corr[1];
    }

    // O += P V: P from the score registers (C layout == A layout pairs), V fragments via ldmatrix.trans.
#pragma unroll
    for (int kk = 0; kk < 4; kk++) {
      uint32_t a[4] = {pack_bf16(s[2 * kk][0], s[2 * kk][1]), pack_bf16(s[2 * kk][2], s[2 * kk][3]),
                       pack_bf16(s[2 * kk + 1][0], s[2 * kk + 1][1]), pack_bf16(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
      for (int dp = 0; dp < D / 16; dp++) {
        uint32_t r0, r1, r2, r3;
        int row = kk * 16 + mrow + (mat & 1) * 8;
        ldsm_x4_t(r0, r1, r2, r3, vt + sw(row, dp * 2 + (mat >> 1)));
        mma16816(o[2 * dp], a, r0, r1);
        mma16816(o[2 * dp + 1], a, r2, r3);
      }
    }
    __syncthreads();  // the next iteration's prefetch overwrites the buffer just read
  }

#pragma unroll
  for (int r = 0; r < 2; r++) {
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
  }
#pragma unroll
  for (int r = 0; r < 2; r++) {
    int s_idx = q0 + warp * 16 + (lane >> 2) + r * 8;
    if (s_idx >= S) continue;
    bf16* orow;
    if (s_idx < out.T) orow = static_cast<bf16*>(out.txt) + (int64_t(b) * out.T + s_idx) * out.ld;
    else orow = static_cast<bf16*>(out.img) + (int64_t(b) * (S - out.T) + s_idx - out.T) * out.ld;
    orow += h * D + 2 * (lane & 3);
    float inv = 1.f / l[r];
#pragma unroll
    for (int i = 0; i < D / 8; i++)
      *reinterpret_cast<__nv_bfloat162*>(orow + i * 8) =
          __floats2bfloat162_rn(o[i][2 * r] * inv, o[i][2 * r + 1] * inv);
  }
}

template <int D, int NW>
void launch(const void* q, const void* k, const void* v, int B, int S, int H, float scale, OutMap out,
            cudaStream_t st, int ldi) {
  constexpr int BR = 16 * NW, BC = 64;
  size_t smem = size_t(BR + 4 * BC) * D * sizeof(bf16);
  static bool configured = false;
  if (!configured) {
    CUDA_CHECK(cudaFuncSetAttribute(flash_kernel<D, NW>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
    configured = true;
  }
  dim3 grid(ceil_div(S, BR), unsigned(H), unsigned(B));
  flash_kernel<D, NW><<<grid, NW * 32, smem, st>>>(static_cast<const bf16*>(q), static_cast<const bf16*>(k),
                                                   static_cast<const bf16*>(v), S, H, scale * 1.4426950408889634f,
                                                   out, ldi);
  LAUNCH_CHECK();
}

}  // namespace

bool flash_attention(const void* q, const void* k, const void* v, int B, int S, int H, int D, float scale,
                     OutMap out, cudaStream_t st, int ldi) {
  if (ldi == 0) ldi = H * D;
  if (ldi % 8) return false;  // 16-byte cp.async rows
  switch (D) {
    case 16: launch<16, 4>(q, k, v, B, S, H, scale, out, st, ldi); return true;
    case 32: launch<32, 4>(q, k, v, B, S, H, scale, out, st, ldi); return true;
    case 64: launch<64, 4>(q, k, v, B, S, H, scale, out, st, ldi); return true;
    case 128: launch<128, 4>(q, k, v, B, S, H, scale, out, st, ldi); return true;
    default: return false;
  }
}

}  // namespace fq
