// T5 v1.1 encoder: RMS layer norms, relative-position bias (layer 0's table shared by all layers), unscaled
// attention, gated-GELU FFN. The residual stream and every residual add stay in fp32 (no overflow in bf16 runs).
#include <cmath>

#include "encoders.h"
#include "kernels/kernels.h"

namespace fq {

T5Config T5Config::from_json(const Json& j) {
  T5Config c;
  c.vocab = int(j.num("vocab_size", c.vocab));
  c.d_model = int(j.num("d_model", c.d_model));
  c.d_kv = int(j.num("d_kv", c.d_kv));
  c.heads = int(j.num("num_heads", c.heads));
  c.d_ff = int(j.num("d_ff", c.d_ff));
  c.layers = int(j.num("num_layers", c.layers));
  c.buckets = int(j.num("relative_attention_num_buckets", c.buckets));
  c.max_distance = int(j.num("relative_attention_max_distance", c.max_distance));
  c.eps = float(j.num("layer_norm_epsilon", c.eps));
  std::string ff = j.str("feed_forward_proj", "gated-gelu");
  if (ff != "gated-gelu") throw std::runtime_error("T5 feed_forward_proj not supported: " + ff);
  return c;
}

T5Encoder::T5Encoder(const T5Config& cfg_, WeightLoader& L) : cfg(cfg_) {
  int D = cfg.d_model, I = cfg.heads * cfg.d_kv;
  emb_ = L.table(L.has("shared.weight") ? "shared.weight" : "encoder.embed_tokens.weight", cfg.vocab, D,
                 Init::Embedding);
  std::string rb = "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight";
  rel_bias_w_ = L.table(rb, cfg.buckets, cfg.heads, Init::Bias);
  rel_host_.resize(size_t(cfg.buckets) * cfg.heads);
  CUDA_CHECK(cudaMemcpyAsync(rel_host_.data(), rel_bias_w_, rel_host_.size() * 4, cudaMemcpyDeviceToHost, L.stream()));
  CUDA_CHECK(cudaStreamSynchronize(L.stream()));
  for (int i = 0; i < cfg.layers; i++) {
    std::string p = "encoder.block." + std::to_string(i) + ".layer.";
    Layer l;
    l.ln1 = L.vec({p + "0.layer_norm.weight"}, D, Init::NormWeight);
    l.ln2 = L.vec({p + "1.layer_norm.weight"}, D, Init::NormWeight);
    std::string a = p + "0.SelfAttention.";
    l.qkv = L.linear({a + "q", a + "k", a + "v"}, 3 * I, D, false);
    l.o = L.linear({a + "o"}, D, I, false);
    std::string f = p + "1.DenseReluDense.";
    l.wi = L.linear({f + "wi_0", f + "wi_1"}, 2 * cfg.d_ff, D, false);
    l.wo = L.linear({f + "wo"}, D, cfg.d_ff, false);
    layers_.push_back(l);
  }
  fin_ = L.vec({"encoder.final_layer_norm.weight"}, D, Init::NormWeight);
}

// Bias [H, S, S]: table[bucket(k - q), h], bidirectional buckets as transformers computes them (float32 log).
std::vector<float> T5Encoder::bias_table(int S) const {
  int nb = cfg.buckets / 2, exact = nb / 2;
  float denom = float(std::log(double(cfg.max_distance) / exact));
  std::vector<float> t(size_t(cfg.heads) * S * S);
  for (int q = 0; q < S; q++)
    for (int k = 0; k < S; k++) {
      int rel = k - q, bucket = rel > 0 ? nb : 0, n = std::abs(rel);
      if (n < exact) {
        bucket += n;
      } else {
        float lg = std::log(float(n) / float(exact)) / denom * float(nb - exact);
        bucket += std::min(exact + int(lg), nb - 1);
      }
      for (int h = 0; h < cfg.heads; h++) t[(size_t(h) * S + q) * S + k] = rel_host_[size_t(bucket) * cfg.heads + h];
    }
  return t;
}

void T5Encoder::encode(Ctx& c, const std::vector<int>& ids, int B, int S, float* out) {
  const int D = cfg.d_model, H = cfg.heads, dk = cfg.d_kv, I = H * dk, R = B * S;
  int* d_ids = c.scratch.getT<int>("t5.ids", R);
  CUDA_CHECK(cudaMemcpyAsync(d_ids, ids.data(), R * sizeof(int), cudaMemcpyHostToDevice, c.st));
  // The bias depends only on S: built on the host once per length and kept on the device (64 MB at S = 512).
  // The upload is ordered on the engine stream (a plain cudaMemcpy ran on the legacy stream, unordered with the
  // engine's non-blocking stream: the first request at a new length could read a partly written table). The host
  // table stays alive in bias_host_ until the copy has completed.
  float* d_bias = c.f32("t5.bias." + std::to_string(S), size_t(cfg.heads) * S * S);
  if (!bias_len_.count(S)) {
    std::vector<float>& bias = bias_host_[S] = bias_table(S);
    CUDA_CHECK(cudaMemcpyAsync(d_bias, bias.data(), bias.size() * 4, cudaMemcpyHostToDevice, c.st));
    CUDA_CHECK(cudaStreamSynchronize(c.st));
    bias_host_.erase(S);
    bias_len_.insert(S);
  }
  float* x = c.f32("t5.x", size_t(R) * D);
  void* h = c.buf("t5.h", size_t(R) * D);
  void* qkv = c.buf("t5.qkv", size_t(R) * 3 * I);
  void* a = c.buf("t5.a", size_t(R) * I);
  void* ff = c.buf("t5.ff", size_t(R) * 2 * cfg.d_ff);
  void* g = c.buf("t5.g", size_t(R) * cfg.d_ff);
  // Attention in fp32 (T5's unscaled scores plus bias stay far from any overflow): q/k/v widened once per layer,
  // scores [H, S, S] = bias + q_h k_h^T and out_h = softmax(scores_h) v_h as head-batched cuBLAS products.
  const bool f32 = c.dt == DType::F32;
  float* qkv32 = f32 ? static_cast<float*>(qkv) : c.f32("t5.qkv32", size_t(R) * 3 * I);
  float* a32 = f32 ? static_cast<float*>(a) : c.f32("t5.a32", size_t(R) * I);
  float* scores = c.f32("t5.scores", size_t(H) * S * S);
  embed_rows(emb_, d_ids, nullptr, R, S, D, x, c.st);
  for (auto& l : layers_) {
    rmsnorm(x, R, D, l.ln1, cfg.eps, h, c.dt, c.st);
    linear(c, l.qkv, R, In{h, c.dt, D}, Out{qkv, c.dt, 3 * I}, Epi::None);
    if (!f32) cast(qkv, c.dt, qkv32, DType::F32, int64_t(R) * 3 * I, c.st);
    for (int b = 0; b < B; b++) {
      const float* q = qkv32 + size_t(b) * S * 3 * I;  // head hh: columns [hh*dk, (hh+1)*dk) of q, k (+I), v (+2I)
      CUDA_CHECK(cudaMemcpyAsync(scores, d_bias, size_t(H) * S * S * 4, cudaMemcpyDeviceToDevice, c.st));
      c.gemm.matmul_batched(c.st, false, true, S, S, dk, 1.f, q, DType::F32, 3 * I, dk, q + I, DType::F32, 3 * I, dk,
                            1.f, scores, DType::F32, S, int64_t(S) * S, H);
      softmax_rows(scores, H * S, S, 1.f, scores, DType::F32, c.st);
      c.gemm.matmul_batched(c.st, false, false, S, dk, S, 1.f, scores, DType::F32, S, int64_t(S) * S, q + 2 * I,
                            DType::F32, 3 * I, dk, 0.f, a32 + size_t(b) * S * I, DType::F32, I, dk, H);
    }
    if (!f32) cast(a32, DType::F32, a, c.dt, int64_t(R) * I, c.st);
    linear(c, l.o, R, In{a, c.dt, I}, Out{x, DType::F32, D}, Epi::None, x);  // x += o(a), accumulated in fp32
    rmsnorm(x, R, D, l.ln2, cfg.eps, h, c.dt, c.st);
    linear(c, l.wi, R, In{h, c.dt, D}, Out{ff, c.dt, 2 * cfg.d_ff}, Epi::None);
    gated_gelu(ff, g, c.dt, R, cfg.d_ff, c.st);
    linear(c, l.wo, R, In{g, c.dt, cfg.d_ff}, Out{x, DType::F32, D}, Epi::None, x);  // x += wo(gelu(wi_0 h) * wi_1 h)
  }
  rmsnorm(x, R, D, fin_, cfg.eps, out, DType::F32, c.st);
}

}  // namespace fq
