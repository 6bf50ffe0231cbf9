#include "weights.h"

#include <cmath>
#include <cstring>

#include "kernels/kernels.h"

namespace fq {

DeviceArena::~DeviceArena() {
  for (void* p : ptrs_) cudaFree(p);
}

void* DeviceArena::alloc(size_t bytes) {
  void* p = nullptr;
  CUDA_CHECK(cudaMalloc(&p, bytes < 256 ? 256 : bytes));
  ptrs_.push_back(p);
  bytes_ += bytes;
  return p;
}

WeightLoader::WeightLoader(const ComponentFiles* files, DeviceArena& arena, uint64_t seed)
    : files_(files), arena_(arena), seed_(seed) {}

std::vector<float> WeightLoader::host_stack(const std::vector<std::string>& parts, int64_t n) {
  std::vector<float> h;
  h.reserve(size_t(n));
  for (auto& p : parts) {
    std::vector<float> t = st_to_f32(files_->get(p));
    h.insert(h.end(), t.begin(), t.end());
  }
  if (int64_t(h.size()) != n)
    throw std::runtime_error("weight size mismatch for " + parts[0] + ": got " + std::to_string(h.size()) +
                             ", expected " + std::to_string(n));
  return h;
}

void upload_as(void* d, const std::vector<float>& h, DType dt) {
  if (dt == DType::F32) {
    CUDA_CHECK(cudaMemcpy(d, h.data(), h.size() * 4, cudaMemcpyHostToDevice));
  } else {
    std::vector<uint16_t> b(h.size());
    for (size_t i = 0; i < h.size(); i++) b[i] = f32_to_bf16(h[i]);
    CUDA_CHECK(cudaMemcpy(d, b.data(), b.size() * 2, cudaMemcpyHostToDevice));
  }
}

void* WeightLoader::upload(const std::vector<float>& h, DType dt) {
  void* d = arena_.alloc(h.size() * dsize(dt));
  upload_as(d, h, dt);
  return d;
}

void* WeightLoader::random(int64_t n, DType dt, float mean, float stddev) {
  void* d = arena_.alloc(size_t(n) * dsize(dt));
  fill_normal(d, dt, n, mean, stddev, seed_ * 1000003ull + (++counter_), nullptr);
  return d;
}

void* WeightLoader::matrix(const std::vector<std::string>& parts, int64_t rows, int64_t cols, DType dt, Init init) {
  if (synthetic()) {
    // Linear: unit-variance outputs for unit-variance inputs; embeddings: unit entries.
    float sd = init == Init::Embedding ? 1.0f : 1.0f / std::sqrt(float(cols));
    return random(rows * cols, dt, 0.f, sd);
  }
  // Fast path for the real checkpoints: one bf16 tensor kept in bf16 goes straight from the mapping to the GPU.
  if (parts.size() == 1 && dt == DType::BF16) {
    const StTensor& t = files_->get(parts[0]);
    if (t.dtype == "BF16" && int64_t(t.bytes) == rows * cols * 2) {
      void* d = arena_.alloc(t.bytes);
      CUDA_CHECK(cudaMemcpy(d, t.data, t.bytes, cudaMemcpyHostToDevice));
      return d;
    }
  }
  return upload(host_stack(parts, rows * cols), dt);
}

float* WeightLoader::vec(const std::vector<std::string>& parts, int64_t n, Init init) {
  if (synthetic()) {
    switch (init) {
      case Init::NormWeight: return static_cast<float*>(random(n, DType::F32, 1.f, 0.05f));
      case Init::Embedding: return static_cast<float*>(random(n, DType::F32, 0.f, 1.f));
      default: return static_cast<float*>(random(n, DType::F32, 0.f, 0.02f));
    }
  }
  return static_cast<float*>(upload(host_stack(parts, n), DType::F32));
}

void* WeightLoader::conv(const std::string& name, int64_t cout, int64_t cin, int k, DType dt) {
  if (synthetic()) return random(cout * cin * k * k, dt, 0.f, 1.0f / std::sqrt(float(cin * k * k)));
  std::vector<float> h = host_stack({name}, cout * cin * k * k), r(h.size());
  // [cout, cin, ky, kx] -> [cout, ky, kx, cin]: the im2col row of a pixel is (ky, kx, cin)-ordered.
  for (int64_t o = 0; o < cout; o++)
    for (int64_t c = 0; c < cin; c++)
      for (int y = 0; y < k; y++)
        for (int x = 0; x < k; x++) r[((o * k + y) * k + x) * cin + c] = h[((o * cin + c) * k + y) * k + x];
  return upload(r, dt);
}

}  // namespace fq
