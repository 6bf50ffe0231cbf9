// Text encoders: CLIP ViT-L/14 text tower (pooled output only) and the T5 v1.1 encoder.
#pragma once
#include <map>
#include <set>
#include <vector>

#include "json.h"
#include "weights.h"

namespace fq {

struct ClipConfig {
  int vocab = 49408, hidden = 768, layers = 12, heads = 12, inter = 3072, maxpos = 77;
  float eps = 1e-5f;
  bool quick_gelu = true;
  static ClipConfig from_json(const Json& j);
};

class ClipText {
 public:
  ClipText(const ClipConfig& cfg, WeightLoader& L);
  // ids: host [B, maxpos]. pooled: device fp32 [B, hidden] = final-LN state at argmax(ids) (the EOS position).
  void encode(Ctx& c, const std::vector<int>& ids, int B, float* pooled);
  const ClipConfig cfg;

 private:
  struct Layer {
    float *ln1_w, *ln1_b, *ln2_w, *ln2_b;
    Linear qkv, out, fc1, fc2;
  };
  float *tok_, *pos_, *fin_w_, *fin_b_;
  std::vector<Layer> layers_;
};

struct T5Config {
  int vocab = 32128, d_model = 4096, d_kv = 64, heads = 64, d_ff = 10240, layers = 24, buckets = 32,
      max_distance = 128;
  float eps = 1e-6f;
  static T5Config from_json(const Json& j);
};

class T5Encoder {
 public:
  T5Encoder(const T5Config& cfg, WeightLoader& L);
  // ids: host [B, S]. out: device fp32 [B*S, d_model] (last_hidden_state).
  void encode(Ctx& c, const std::vector<int>& ids, int B, int S, float* out);
  const T5Config cfg;

 private:
  struct Layer {
    float *ln1, *ln2;
    Linear qkv, o, wi, wo;  // wi = [wi_0; wi_1] stacked: one GEMM feeds the gated GELU
  };
  float *emb_, *rel_bias_w_ /* [buckets, heads] */, *fin_;
  std::vector<Layer> layers_;
  std::vector<float> bias_table(int S) const;
  std::vector<float> rel_host_;
  std::set<int> bias_len_;  // lengths whose bias table is already on the device
  std::map<int, std::vector<float>> bias_host_;  // host tables while their upload is in flight
};

}  // namespace fq
