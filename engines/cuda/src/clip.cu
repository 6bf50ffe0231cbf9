// CLIP text tower: token + position embeddings, pre-LN causal transformer, final LayerNorm, pooled at argmax(ids).
#include <algorithm>
#include <cmath>

#include "encoders.h"
#include "kernels/kernels.h"

namespace fq {

ClipConfig ClipConfig::from_json(const Json& j) {
  ClipConfig c;
  c.vocab = int(j.num("vocab_size", c.vocab));
  c.hidden = int(j.num("hidden_size", c.hidden));
  c.layers = int(j.num("num_hidden_layers", c.layers));
  c.heads = int(j.num("num_attention_heads", c.heads));
  c.inter = int(j.num("intermediate_size", c.inter));
  c.maxpos = int(j.num("max_position_embeddings", c.maxpos));
  c.eps = float(j.num("layer_norm_eps", c.eps));
  c.quick_gelu = j.str("hidden_act", "quick_gelu") == "quick_gelu";
  if (!c.quick_gelu && j.str("hidden_act", "") != "gelu_new" && j.str("hidden_act", "") != "gelu_pytorch_tanh")
    throw std::runtime_error("CLIP hidden_act not supported: " + j.str("hidden_act", ""));
  return c;
}

ClipText::ClipText(const ClipConfig& cfg_, WeightLoader& L) : cfg(cfg_) {
  int D = cfg.hidden;
  tok_ = L.table("embeddings.token_embedding.weight", cfg.vocab, D, Init::Embedding);
  pos_ = L.table("embeddings.position_embedding.weight", cfg.maxpos, D, Init::Embedding);
  for (int i = 0; i < cfg.layers; i++) {
    std::string p = "encoder.layers." + std::to_string(i) + ".";
    Layer l;
    l.ln1_w = L.vec({p + "layer_norm1.weight"}, D, Init::NormWeight);
    l.ln1_b = L.vec({p + "layer_norm1.bias"}, D, Init::NormBias);
    l.ln2_w = L.vec({p + "layer_norm2.weight"}, D, Init::NormWeight);
    l.ln2_b = L.vec({p + "layer_norm2.bias"}, D, Init::NormBias);
    l.qkv = L.linear({p + "self_attn.q_proj", p + "self_attn.k_proj", p + "self_attn.v_proj"}, 3 * D, D);
    l.out = L.linear({p + "self_attn.out_proj"}, D, D);
    l.fc1 = L.linear({p + "mlp.fc1"}, cfg.inter, D);
    l.fc2 = L.linear({p + "mlp.fc2"}, D, cfg.inter);
    layers_.push_back(l);
  }
  fin_w_ = L.vec({"final_layer_norm.weight"}, D, Init::NormWeight);
  fin_b_ = L.vec({"final_layer_norm.bias"}, D, Init::NormBias);
}

void ClipText::encode(Ctx& c, const std::vector<int>& ids, int B, float* pooled) {
  const int S = cfg.maxpos, D = cfg.hidden, R = B * S, H = cfg.heads, hd = D / H;
  int* d_ids = c.scratch.getT<int>("clip.ids", R);
  CUDA_CHECK(cudaMemcpyAsync(d_ids, ids.data(), R * sizeof(int), cudaMemcpyHostToDevice, c.st));
  float* x = c.f32("clip.x", size_t(R) * D);  // residual stream, fp32
  void* h = c.buf("clip.h", size_t(R) * D);
  void* qkv = c.buf("clip.qkv", size_t(R) * 3 * D);
  void* a = c.buf("clip.a", size_t(R) * D);
  void* f = c.buf("clip.f", size_t(R) * cfg.inter);
  embed_rows(tok_, d_ids, pos_, R, S, D, x, c.st);
  for (auto& l : layers_) {
    layernorm(x, R, D, R, l.ln1_w, l.ln1_b, nullptr, nullptr, 0, cfg.eps, h, c.dt, c.st);
    linear(c, l.qkv, R, In{h, c.dt, D}, Out{qkv, c.dt, 3 * D});
    const char* base = static_cast<const char*>(qkv);
    size_t es = dsize(c.dt);
    attention_rows(base, base + D * es, base + 2 * D * es, c.dt, 3 * D, 3 * D, 3 * D, int64_t(S) * 3 * D,
                   int64_t(S) * 3 * D, B, S, S, H, hd, 1.f / std::sqrt(float(hd)), /*causal=*/true, nullptr,
                   OutMap{nullptr, a, 0, D}, c.st);
    linear(c, l.out, R, In{a, c.dt, D}, Out{x, DType::F32, D}, Epi::Bias, x);  // x += out_proj(a)
    layernorm(x, R, D, R, l.ln2_w, l.ln2_b, nullptr, nullptr, 0, cfg.eps, h, c.dt, c.st);
    linear(c, l.fc1, R, In{h, c.dt, D}, Out{f, c.dt, cfg.inter});
    activation(f, c.dt, R, cfg.inter, cfg.inter, cfg.quick_gelu ? Act::QuickGelu : Act::GeluTanh, c.st);
    linear(c, l.fc2, R, In{f, c.dt, cfg.inter}, Out{x, DType::F32, D}, Epi::Bias, x);  // x += fc2(f)
  }
  float* fin = c.f32("clip.final", size_t(R) * D);
  layernorm(x, R, D, R, fin_w_, fin_b_, nullptr, nullptr, 0, cfg.eps, fin, DType::F32, c.st);
  // Pooling at argmax(ids): the first EOS (the largest id) of each row, as transformers does for legacy configs.
  for (int b = 0; b < B; b++) {
    auto row = ids.begin() + int64_t(b) * S;
    int pos = int(std::max_element(row, row + S) - row);
    CUDA_CHECK(cudaMemcpyAsync(pooled + int64_t(b) * D, fin + (int64_t(b) * S + pos) * D, D * sizeof(float),
                               cudaMemcpyDeviceToDevice, c.st));
  }
}

}  // namespace fq
