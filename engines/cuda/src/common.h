// Shared definitions of the engine: error checks, element types, small host helpers.
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "fault.h"

namespace fq {

// Element type of a device buffer. Activations and matrix weights use the engine's compute type; biases and
// norm weights are always F32 (they are small, and keeping them exact costs nothing).
// FP8 (E4M3) is a storage type for GEMM operands only (weights and LayerNorm outputs, with per-tensor scales).
// FP8ROW is a weight type only (precision plans, Linear::wt): E4M3 weights with one scale per output channel, whose
// layer reads compute-type (bf16) activations and quantises them per row itself (linear.h). No activation buffer is
// ever FP8ROW: the model code's `wt == FP8` tests (norms writing fp8) are false for it, so its norms write bf16.
enum class DType { F32, BF16, FP8, FP8ROW };
inline size_t dsize(DType t) { return t == DType::F32 ? 4 : t == DType::BF16 ? 2 : 1; }
inline const char* dname(DType t) {
  return t == DType::F32 ? "f32" : t == DType::BF16 ? "bf16" : t == DType::FP8 ? "fp8" : "fp8row";
}

inline float bf16_to_f32(uint16_t h) {
  uint32_t u = uint32_t(h) << 16;
  float f;
  memcpy(&f, &u, 4);
  return f;
}
inline uint16_t f32_to_bf16(float f) {  // round to nearest even, NaN kept quiet
  uint32_t u;
  memcpy(&u, &f, 4);
  if ((u & 0x7fffffff) > 0x7f800000) return uint16_t((u >> 16) | 0x40);
  u += 0x7fff + ((u >> 16) & 1);
  return uint16_t(u >> 16);
}

inline int64_t numel(const std::vector<int64_t>& s) {
  int64_t n = 1;
  for (auto d : s) n *= d;
  return n;
}

inline unsigned ceil_div(int64_t a, int64_t b) { return unsigned((a + b - 1) / b); }

// Where an attention kernel writes query row s of batch b: rows s < T go to `txt` (row b*T+s), the rest to `img`
// (row b*(S-T)+s-T). With T = 0 and img = out this is the plain [B, S, ld] layout. Lets the double-stream block
// read the text and image halves of the joint attention as two contiguous matrices without a copy.
struct OutMap {
  void* txt;
  void* img;
  int T;
  int ld;  // elements between rows
};

}  // namespace fq
