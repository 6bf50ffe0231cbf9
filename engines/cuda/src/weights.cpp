#include "weights.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "kernels/kernels.h"

namespace fq {

WeightLoader::WeightLoader(const ComponentFiles* files, DeviceArena& arena, uint64_t seed, cudaStream_t st,
                           const PrecisionPlan& plan, std::string component)
    : files_(files), arena_(arena), seed_(seed), st_(st), plan_(plan), component_(std::move(component)) {}

namespace {
std::string shape_str(const std::vector<int64_t>& s) {
  std::string r = "[";
  for (size_t i = 0; i < s.size(); i++) r += (i ? ", " : "") + std::to_string(s[i]);
  return r + "]";
}
}  // namespace

// Stacks the parts along dim 0. part_shape_tail: the shape every part must have after its first dimension
// (e.g. {cols} for matrix rows, {} for vectors, {cin, k, k} for convolutions); the total must be n elements.
std::vector<float> WeightLoader::host_stack(const std::vector<std::string>& parts,
                                            const std::vector<int64_t>& tail, int64_t n) {
  std::vector<float> h;
  h.reserve(size_t(n));
  for (auto& p : parts) {
    const StTensor& t = files_->get(p);
    // Trailing singleton dimensions are accepted: BFL's VAE stores its attention projections as 1x1 convolutions
    // [C, C, 1, 1], which are the [C, C] linears diffusers has.
    bool ok = t.shape.size() >= tail.size() + 1;
    for (size_t i = 0; ok && i < tail.size(); i++) ok = t.shape[i + 1] == tail[i];
    for (size_t i = tail.size() + 1; ok && i < t.shape.size(); i++) ok = t.shape[i] == 1;
    if (!ok) {
      std::vector<int64_t> want{-1};
      want.insert(want.end(), tail.begin(), tail.end());
      throw EngineError("weight " + p + " in " + files_->dir + " has shape " + shape_str(t.shape) + ", expected " +
                            shape_str(want) + " (-1: any)",
                        false);
    }
    std::vector<float> v = st_to_f32(t);
    h.insert(h.end(), v.begin(), v.end());
  }
  if (int64_t(h.size()) != n)
    throw EngineError("weight size mismatch for " + parts[0] + ": got " + std::to_string(h.size()) + " elements, expected " +
                          std::to_string(n),
                      false);
  return h;
}

void upload_as(void* d, const std::vector<float>& h, DType dt, cudaStream_t st) {
  if (dt == DType::F32) {
    CUDA_CHECK(cudaMemcpyAsync(d, h.data(), h.size() * 4, cudaMemcpyHostToDevice, st));
  } else if (dt == DType::BF16) {
    std::vector<uint16_t> b(h.size());
    for (size_t i = 0; i < h.size(); i++) b[i] = f32_to_bf16(h[i]);
    CUDA_CHECK(cudaMemcpyAsync(d, b.data(), b.size() * 2, cudaMemcpyHostToDevice, st));
    CUDA_CHECK(cudaStreamSynchronize(st));
  } else {
    throw EngineError("upload_as: fp8 uploads go through quantisation", false);
  }
  CUDA_CHECK(cudaStreamSynchronize(st));
}

void* fp8_weight(DeviceArena& mem, const void* bf16, int ld_src, int out, int in, int ldw, float* scale, float* ws,
                 cudaStream_t st) {
  void* w = mem.alloc(size_t(out) * ldw);
  if (ldw > in) CUDA_CHECK(cudaMemsetAsync(w, 0, size_t(out) * ldw, st));
  quantize_fp8_strided(bf16, DType::BF16, out, in, ld_src, w, scale, ws, st, ldw);
  return w;
}

void* WeightLoader::upload(const std::vector<float>& h, DType dt) {
  void* d = arena_.alloc(h.size() * dsize(dt));
  upload_as(d, h, dt, st_);
  return d;
}

void* WeightLoader::random(int64_t n, DType dt, float mean, float stddev, void* dst) {
  void* d = dst ? dst : arena_.alloc(size_t(n) * dsize(dt));
  fill_normal(d, dt, n, mean, stddev, seed_ * 1000003ull + (++counter_), st_);
  return d;
}

void* WeightLoader::matrix(const std::vector<std::string>& parts, int64_t rows, int64_t cols, DType dt, Init init,
                           void* dst) {
  if (synthetic()) {
    // Linear: unit-variance outputs for unit-variance inputs; embeddings: unit entries.
    float sd = init == Init::Embedding ? 1.0f : 1.0f / std::sqrt(float(cols));
    return random(rows * cols, dt, 0.f, sd, dst);
  }
  // Fast path for the real checkpoints: one bf16 tensor kept in bf16 goes straight from the mapping to the GPU.
  if (parts.size() == 1 && dt == DType::BF16) {
    const StTensor& t = files_->get(parts[0]);
    if (t.dtype == "BF16" && t.shape.size() == 2 && t.shape[0] == rows && t.shape[1] == cols) {
      void* d = dst ? dst : arena_.alloc(t.bytes);
      CUDA_CHECK(cudaMemcpyAsync(d, t.data, t.bytes, cudaMemcpyHostToDevice, st_));
      CUDA_CHECK(cudaStreamSynchronize(st_));
      return d;
    }
  }
  std::vector<float> h = host_stack(parts, {cols}, rows * cols);
  if (!dst) return upload(h, dt);
  upload_as(dst, h, dt, st_);
  return dst;
}

Linear WeightLoader::linear(const std::vector<std::string>& parts, int out, int in, bool bias, int reserve) {
  Linear l;
  l.name = component_ + "/";
  for (size_t i = 0; i < parts.size(); i++) l.name += (i ? "+" : "") + parts[i];
  l.out = out;
  l.in = in;
  l.ldw = in;
  l.wt = plan_.weight_type(l.name);
  if (log) log->emplace_back(l.name, l.wt);
  std::vector<std::string> w, b;
  for (auto& p : parts) {
    w.push_back(p + ".weight");
    b.push_back(p + ".bias");
  }
  if (l.wt == DType::FP8) {
    // Read in bf16, quantise with one per-tensor scale; the bf16 copy is not kept.
    const int64_t n = int64_t(out) * in;
    DeviceBuffer tmp(size_t(n) * 2), ws(sizeof(float));
    matrix(w, out, in, DType::BF16, Init::Linear, tmp.get());
    // With a LoRA reserve, rows of in + reserve (zero reserve columns), as for bf16 (linear.h).
    l.ldw = in + std::max(reserve, 0);
    float* s = arena_.allocT<float>(1);
    l.w = fp8_weight(arena_, tmp.get(), in, out, in, l.ldw, s, ws.as<float>(), st_);
    CUDA_CHECK(cudaStreamSynchronize(st_));  // tmp and ws are freed on return
    l.w_scale = s;
  } else if (l.wt == DType::FP8ROW) {
    // Read in bf16, quantise each output channel (row of W) with its own scale amax(W[o, :]) / 448; the bf16 copy
    // is not kept. plan_variants.cu makes a per-job alternate with the same call on the same bf16 bits.
    const int64_t n = int64_t(out) * in;
    DeviceBuffer tmp(size_t(n) * 2);
    matrix(w, out, in, DType::BF16, Init::Linear, tmp.get());
    l.w = arena_.alloc(size_t(n));
    float* s = arena_.allocT<float>(size_t(out));
    quantize_fp8_rows(tmp.get(), DType::BF16, in, nullptr, out, in, l.w, s, st_);
    fp8_unit_scale();  // looked up here, at load, so that no step's first fp8row product does it in a capture
    CUDA_CHECK(cudaStreamSynchronize(st_));  // tmp is freed on return
    l.w_scale = s;
  } else if (reserve > 0) {
    // Loaded contiguous, then laid out [out, in + reserve] with zero reserve columns (linear.h).
    const size_t es = dsize(l.wt);
    DeviceBuffer tmp(size_t(out) * in * es);
    matrix(w, out, in, l.wt, Init::Linear, tmp.get());
    l.ldw = in + reserve;
    l.w = arena_.alloc(size_t(out) * l.ldw * es);
    CUDA_CHECK(cudaMemsetAsync(l.w, 0, size_t(out) * l.ldw * es, st_));
    CUDA_CHECK(cudaMemcpy2DAsync(l.w, size_t(l.ldw) * es, tmp.get(), size_t(in) * es, size_t(in) * es, out,
                                 cudaMemcpyDeviceToDevice, st_));
    CUDA_CHECK(cudaStreamSynchronize(st_));  // tmp is freed on return
  } else {
    l.w = matrix(w, out, in, l.wt);
  }
  if (bias) {
    Linear wb = wrap(l.name, l.w, vec(b, out, Init::Bias), out, in);
    l.b = wb.b;
    l.b_act = wb.b_act;
  }
  return l;
}

Linear WeightLoader::wrap(const std::string& name, void* w, const float* b, int out, int in) {
  Linear l;
  l.name = name;
  l.out = out;
  l.in = in;
  l.ldw = in;
  l.wt = plan_.base;
  l.w = w;
  l.b = b;
  if (b && plan_.base != DType::F32) {
    // cuBLASLt's bias epilogue takes the bias in D's type: the bf16 copy is made here, once.
    void* b16 = arena_.alloc(size_t(out) * 2);
    cast(b, DType::F32, b16, DType::BF16, out, st_);
    l.b_act = b16;
  }
  return l;
}

float* WeightLoader::vec(const std::vector<std::string>& parts, int64_t n, Init init) {
  if (synthetic()) {
    switch (init) {
      case Init::NormWeight: return static_cast<float*>(random(n, DType::F32, 1.f, 0.05f));
      case Init::Embedding: return static_cast<float*>(random(n, DType::F32, 0.f, 1.f));
      default: return static_cast<float*>(random(n, DType::F32, 0.f, 0.02f));
    }
  }
  return static_cast<float*>(upload(host_stack(parts, {}, n), DType::F32));
}

float* WeightLoader::table(const std::string& name, int64_t rows, int64_t cols, Init init) {
  if (synthetic()) return vec({name}, rows * cols, init);
  const StTensor& t = files_->get(name);
  if (t.shape.size() != 2 || t.shape[0] != rows || t.shape[1] != cols)
    throw EngineError("weight " + name + " in " + files_->dir + " has shape " + shape_str(t.shape) + ", expected " +
                          shape_str({rows, cols}),
                      false);
  return static_cast<float*>(upload(host_stack({name}, {cols}, rows * cols), DType::F32));
}

void* WeightLoader::conv(const std::string& name, int64_t cout, int64_t cin, int k, DType dt) {
  if (synthetic()) return random(cout * cin * k * k, dt, 0.f, 1.0f / std::sqrt(float(cin * k * k)));
  const StTensor& t = files_->get(name);
  if (t.shape != std::vector<int64_t>{cout, cin, k, k})
    throw EngineError("weight " + name + " in " + files_->dir + " has shape " + shape_str(t.shape) + ", expected " +
                          shape_str({cout, cin, k, k}),
                      false);
  std::vector<float> h = host_stack({name}, {cin, k, k}, cout * cin * k * k), r(h.size());
  // [cout, cin, ky, kx] -> [cout, ky, kx, cin]: the im2col row of a pixel is (ky, kx, cin)-ordered.
  for (int64_t o = 0; o < cout; o++)
    for (int64_t c = 0; c < cin; c++)
      for (int y = 0; y < k; y++)
        for (int x = 0; x < k; x++) r[((o * k + y) * k + x) * cin + c] = h[((o * cin + c) * k + y) * k + x];
  return upload(r, dt);
}

void WeightLoader::finish(const std::vector<std::string>& ignore) {
  CUDA_CHECK(cudaStreamSynchronize(st_));
  if (synthetic()) return;
  std::vector<std::string> left;
  for (auto& n : files_->unused()) {
    bool skip = false;
    for (auto& g : ignore) skip = skip || glob_match(g.c_str(), n.c_str());
    if (!skip) left.push_back(n);
  }
  if (left.empty()) return;
  std::string msg = component_ + ": " + std::to_string(left.size()) + " checkpoint tensor(s) not used by the model:";
  for (size_t i = 0; i < left.size() && i < 8; i++) msg += " " + left[i];
  if (left.size() > 8) msg += " ...";
  throw EngineError(msg + " (in " + files_->dir + ")", false);
}

}  // namespace fq
