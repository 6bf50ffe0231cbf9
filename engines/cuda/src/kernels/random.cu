// Counter-based normal random numbers: weights for the synthetic mode, seeded latents.
#include "../common.h"
#include "device_util.cuh"
#include "dispatch.cuh"
#include "kernels.h"

namespace fq {
namespace {

__device__ __forceinline__ uint64_t mix64(uint64_t z) {  // splitmix64 finaliser
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

template <typename T>
__global__ void normal_kernel(T* p, int64_t n, float mean, float sd, uint64_t seed) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    uint64_t r = mix64(seed ^ mix64(uint64_t(i)));
    // Box-Muller on two 24-bit uniforms in (0, 1].
    float u1 = (float((r >> 40) & 0xffffff) + 1.f) * (1.f / 16777216.f);
    float u2 = float((r >> 8) & 0xffffff) * (1.f / 16777216.f);
    float z = sqrtf(-2.f * logf(u1)) * cospif(2.f * u2);
    p[i] = fromf<T>(mean + sd * z);
  }
}

}  // namespace

void fill_normal(void* p, DType dt, int64_t n, float mean, float sd, uint64_t seed, cudaStream_t st) {
  unsigned blocks = unsigned(std::min<int64_t>((n + 255) / 256, 65536));
  FQ_DISPATCH(dt, T, normal_kernel<T><<<blocks, 256, 0, st>>>(static_cast<T*>(p), n, mean, sd, seed));
  LAUNCH_CHECK();
}

}  // namespace fq
