// The FLUX transformer (FluxTransformer2DModel): double-stream and single-stream blocks with adaLN modulation.
#pragma once
#include <vector>

#include "json.h"
#include "layers.h"

namespace fq {

struct FluxConfig {
  int in_channels = 64, out_channels = 64, layers = 19, single_layers = 38, heads = 24, head_dim = 128,
      joint_dim = 4096, pooled_dim = 768;
  int axes[3] = {16, 56, 56};
  bool guidance = true;
  int hidden() const { return heads * head_dim; }
  static FluxConfig from_json(const Json& j);
};

// RoPE table for ids [S, 3] (float positions): [S, head_dim/2, 2] = (cos, sin) per pair, computed in float64 and
// rounded to float32 as diffusers does. Axis a covers pairs [sum(axes[<a])/2, ...).
std::vector<float> rope_table(const FluxConfig& cfg, const std::vector<float>& ids, int S, double theta = 10000.0);

class FluxTransformer {
 public:
  // fp8: the GEMMs fed by an adaLN LayerNorm (q/k/v, MLP-in) run in fp8 with per-tensor scales; the others bf16.
  FluxTransformer(const FluxConfig& cfg, WeightLoader& L, DType dt, bool fp8 = false);
  const bool fp8;
  const FluxConfig cfg;

  // Width of all modulation vectors of one conditioning row (all blocks + the output norm).
  int64_t mod_width() const { return mod_width_; }
  // Conditioning for R = nsteps * B rows (row i*B + b): temb = time(t) + guidance(g) + text(pooled[b]), then every
  // block's modulation Linear(SiLU(temb)). t_in/g_in: host [R] model inputs (sigma, guidance scale; x1000 inside).
  // mods: device fp32 [R * mod_width()] (block-major: block k holds [R, W_k]).
  void conditioning(Ctx& c, const std::vector<float>& t_in, const std::vector<float>& g_in, const float* pooled,
                    int B, int nsteps, float* mods);
  // ctx0 = context_embedder(t5) : [B*T, D] fp32 (step-independent).
  void embed_context(Ctx& c, const float* t5, int rows, float* ctx0);
  // Velocity for latents [B, L, in] at conditioning row block `step`: vel [B*L, out] fp32. cs: rope table on device.
  void forward(Ctx& c, int B, int L, int T, const float* latents, const float* ctx0, const float* mods, int R,
               int step, const float* cs, float* vel);

 private:
  struct Double {
    Lin mod_img, mod_txt, qkv_img, qkv_txt, out_img, out_txt, ff1_img, ff2_img, ff1_txt, ff2_txt;
    float *nq, *nk, *naq, *nak;
  };
  struct Single {
    Lin mod, qkv, mlp, out;
    float *nq, *nk;
  };
  void attention(Ctx& c, int B, int S, int T, const void* Q, const void* K, const void* V, OutMap out);
  // LayerNorm + modulation of `rows` rows into the GEMM input buffer `name` (fp8 with its scale, or dt).
  struct NormOut {
    void* p;
    DType t;
    float* scale;
  };
  NormOut norm_in(Ctx& c, const char* name, const float* x, int rows, int rpb, const float* shift,
                  const float* scale, int W);
  void mm(Ctx& c, const Lin& l, int rows, const NormOut& in, void* y, DType yt, int ldy, Epi epi);
  // x += gate * y (fp32 y, rows of D); then, when shift != null, the next LayerNorm + modulation, fused.
  NormOut res_norm(Ctx& c, const char* name, float* x, const float* y, const float* gate, int Wg, int rows, int rpb,
                   const float* shift, const float* scale, int Wn);
  Lin x_emb_, ctx_emb_, t1_, t2_, g1_, g2_, p1_, p2_, norm_out_, proj_out_;
  std::vector<Double> dbl_;
  std::vector<Single> sgl_;
  std::vector<int64_t> mod_off_;  // per block (double, single, then norm_out): offset in units of R
  std::vector<int> mod_w_;
  int64_t mod_width_ = 0;
};

}  // namespace fq
