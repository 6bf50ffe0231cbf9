// One owner per device allocation: DeviceBuffer (a single cudaMalloc, move-only) and DeviceArena (many, freed
// together). Neither can be copied, so no allocation is freed twice.
#pragma once
#include <utility>
#include <vector>

#include "common.h"

namespace fq {

class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t bytes) : bytes_(bytes) { CUDA_CHECK(cudaMalloc(&p_, bytes < 256 ? 256 : bytes)); }
  ~DeviceBuffer() {
    if (p_) cudaFree(p_);
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  DeviceBuffer(DeviceBuffer&& o) noexcept : p_(std::exchange(o.p_, nullptr)), bytes_(std::exchange(o.bytes_, 0)) {}
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    if (this != &o) {
      if (p_) cudaFree(p_);
      p_ = std::exchange(o.p_, nullptr);
      bytes_ = std::exchange(o.bytes_, 0);
    }
    return *this;
  }
  void* get() const { return p_; }
  template <typename T>
  T* as() const {
    return static_cast<T*>(p_);
  }
  size_t bytes() const { return bytes_; }

 private:
  void* p_ = nullptr;
  size_t bytes_ = 0;
};

// Owns device allocations; frees them all at destruction. Tracks bytes for the memory report.
class DeviceArena {
 public:
  DeviceArena() = default;
  DeviceArena(const DeviceArena&) = delete;
  DeviceArena& operator=(const DeviceArena&) = delete;
  void* alloc(size_t bytes) {
    bufs_.emplace_back(bytes);
    bytes_ += bytes;
    return bufs_.back().get();
  }
  template <typename T>
  T* allocT(size_t count) {
    return static_cast<T*>(alloc(count * sizeof(T)));
  }
  size_t bytes() const { return bytes_; }

 private:
  std::vector<DeviceBuffer> bufs_;
  size_t bytes_ = 0;
};

}  // namespace fq
