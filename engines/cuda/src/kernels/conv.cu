// im2col for 3x3 convolutions over NHWC images: pad 1 (the VAE's nearest x2 upsampling optionally folded into the read),
// or stride 2 with padding (0, 1, 0, 1) (the VAE encoder's downsampler).
#include "../common.h"
#include "device_util.cuh"
#include "dispatch.cuh"
#include "kernels.h"

namespace fq {
namespace {

// One thread per (pixel, tap, 8-channel group) when C % 8 == 0 (16-byte moves), else per channel.
// Output pixel (yo, xo), tap (ky, kx) reads input (yo + ky - 1, xo + kx - 1) (Same; Up2: of the 2x-upsampled image,
// i.e. input pixel / 2), or (2yo + ky, 2xo + kx) (Down2: zero padding only below and right, as diffusers' Downsample2D
// pads (0, 1, 0, 1) before its unpadded stride-2 convolution).
template <typename T, int VEC>
__global__ void im2col_kernel(const T* x, int H, int W, int C, Resample rs, int64_t p0, int64_t np, T* col) {
  const int Ho = rs == Resample::Up2 ? 2 * H : rs == Resample::Down2 ? H / 2 : H;
  const int Wo = rs == Resample::Up2 ? 2 * W : rs == Resample::Down2 ? W / 2 : W;
  const int Hi = rs == Resample::Up2 ? Ho : H, Wi = rs == Resample::Up2 ? Wo : W;  // bounds of the sampled grid
  int cg = C / VEC;
  int64_t n = np * 9 * cg;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    int c = int(i % cg) * VEC;
    int tap = int((i / cg) % 9);
    int64_t pl = i / (int64_t(cg) * 9), p = p0 + pl;
    int y, xx;
    if (rs == Resample::Down2) {
      y = 2 * int(p / Wo) + tap / 3;
      xx = 2 * int(p % Wo) + tap % 3;
    } else {
      y = int(p / Wo) + tap / 3 - 1;
      xx = int(p % Wo) + tap % 3 - 1;
    }
    T* dst = col + pl * 9 * C + tap * C + c;
    if (y < 0 || y >= Hi || xx < 0 || xx >= Wi) {
#pragma unroll
      for (int e = 0; e < VEC; e++) dst[e] = fromf<T>(0.f);
      continue;
    }
    if (rs == Resample::Up2) {
      y >>= 1;
      xx >>= 1;
    }
    const T* src = x + (int64_t(y) * W + xx) * C + c;
    if constexpr (VEC * sizeof(T) == 16) {
      *reinterpret_cast<uint4*>(dst) = *reinterpret_cast<const uint4*>(src);
    } else {
#pragma unroll
      for (int e = 0; e < VEC; e++) dst[e] = src[e];
    }
  }
}

// One thread per output pixel and 16-byte channel group (VEC elements), or per channel when C % VEC != 0.
template <typename T, int VEC>
__global__ void upsample2x_kernel(const T* x, int B, int H, int W, int C, T* y) {
  const int cg = C / VEC, Wo = 2 * W;
  const int64_t n = int64_t(B) * 2 * H * Wo * cg;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    int c = int(i % cg) * VEC;
    int64_t p = i / cg;  // output pixel (b, yo, xo)
    int xo = int(p % Wo), yo = int((p / Wo) % (2 * H));
    int64_t b = p / (int64_t(Wo) * 2 * H);
    const T* src = x + ((b * H + yo / 2) * W + xo / 2) * C + c;
    T* dst = y + p * C + c;
    if constexpr (VEC * sizeof(T) == 16) {
      *reinterpret_cast<uint4*>(dst) = *reinterpret_cast<const uint4*>(src);
    } else {
#pragma unroll
      for (int e = 0; e < VEC; e++) dst[e] = src[e];
    }
  }
}

}  // namespace

void im2col3x3(const void* x, DType dt, int H, int W, int C, Resample rs, int64_t p0, int64_t np, void* col,
               cudaStream_t st) {
  FQ_DISPATCH(dt, T, {
    constexpr int V = 16 / sizeof(T);
    bool vec = C % V == 0;
    int64_t n = np * 9 * (vec ? C / V : C);
    unsigned grid = unsigned(std::min<int64_t>((n + 255) / 256, 1 << 20));
    if (vec)
      im2col_kernel<T, V><<<grid, 256, 0, st>>>(static_cast<const T*>(x), H, W, C, rs, p0, np,
                                                static_cast<T*>(col));
    else
      im2col_kernel<T, 1><<<grid, 256, 0, st>>>(static_cast<const T*>(x), H, W, C, rs, p0, np,
                                                static_cast<T*>(col));
  });
  LAUNCH_CHECK();
}

void upsample_nearest2x(const void* x, DType dt, int B, int H, int W, int C, void* y, cudaStream_t st) {
  const int64_t px = int64_t(B) * 4 * H * W;
  if (dt == DType::BF16 && C % 8 == 0) {
    upsample2x_kernel<__nv_bfloat16, 8><<<grid_for(px * (C / 8)), kThreads, 0, st>>>(
        static_cast<const __nv_bfloat16*>(x), B, H, W, C, static_cast<__nv_bfloat16*>(y));
  } else {
    FQ_DISPATCH(dt, T,
                upsample2x_kernel<T, 1><<<grid_for(px * C), kThreads, 0, st>>>(static_cast<const T*>(x), B, H, W, C,
                                                                               static_cast<T*>(y)));
  }
  LAUNCH_CHECK();
}

}  // namespace fq
