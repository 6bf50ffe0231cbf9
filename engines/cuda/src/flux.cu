#include "flux.h"

#include <cmath>

#include "kernels/kernels.h"
#include "profile.h"

namespace fq {

FluxConfig FluxConfig::from_json(const Json& j) {
  FluxConfig c;
  c.in_channels = int(j.num("in_channels", c.in_channels));
  c.out_channels = j["out_channels"].is_null() ? c.in_channels : int(j.num("out_channels", c.in_channels));
  c.layers = int(j.num("num_layers", c.layers));
  c.single_layers = int(j.num("num_single_layers", c.single_layers));
  c.heads = int(j.num("num_attention_heads", c.heads));
  c.head_dim = int(j.num("attention_head_dim", c.head_dim));
  c.joint_dim = int(j.num("joint_attention_dim", c.joint_dim));
  c.pooled_dim = int(j.num("pooled_projection_dim", c.pooled_dim));
  c.guidance = j["guidance_embeds"].kind == Json::Bool ? j["guidance_embeds"].b : true;
  if (j["axes_dims_rope"].kind == Json::Arr)
    for (int a = 0; a < 3; a++) c.axes[a] = int(j["axes_dims_rope"][a].n);
  if (j.num("patch_size", 1) != 1) throw std::runtime_error("FLUX patch_size != 1 not supported");
  return c;
}

std::vector<float> rope_table(const FluxConfig& cfg, const std::vector<float>& ids, int S, double theta) {
  int half = cfg.head_dim / 2;
  std::vector<float> t(size_t(S) * half * 2);
  for (int s = 0; s < S; s++) {
    int j0 = 0;
    for (int a = 0; a < 3; a++) {
      int d = cfg.axes[a];
      double pos = double(ids[size_t(s) * 3 + a]);
      for (int j = 0; j < d / 2; j++) {
        double w = 1.0 / std::pow(theta, double(2 * j) / double(d));
        t[(size_t(s) * half + j0 + j) * 2] = float(std::cos(pos * w));
        t[(size_t(s) * half + j0 + j) * 2 + 1] = float(std::sin(pos * w));
      }
      j0 += d / 2;
    }
  }
  return t;
}

FluxTransformer::FluxTransformer(const FluxConfig& cfg_, WeightLoader& L, DType dt, bool fp8_)
    : cfg(cfg_), fp8(fp8_) {
  const int D = cfg.hidden(), hd = cfg.head_dim;
  x_emb_ = load_lin(L, {"x_embedder"}, D, cfg.in_channels, dt);
  ctx_emb_ = load_lin(L, {"context_embedder"}, D, cfg.joint_dim, dt);
  std::string te = "time_text_embed.";
  t1_ = load_lin(L, {te + "timestep_embedder.linear_1"}, D, 256, dt);
  t2_ = load_lin(L, {te + "timestep_embedder.linear_2"}, D, D, dt);
  if (cfg.guidance) {
    g1_ = load_lin(L, {te + "guidance_embedder.linear_1"}, D, 256, dt);
    g2_ = load_lin(L, {te + "guidance_embedder.linear_2"}, D, D, dt);
  }
  p1_ = load_lin(L, {te + "text_embedder.linear_1"}, D, cfg.pooled_dim, dt);
  p2_ = load_lin(L, {te + "text_embedder.linear_2"}, D, D, dt);
  for (int i = 0; i < cfg.layers; i++) {
    std::string p = "transformer_blocks." + std::to_string(i) + ".", a = p + "attn.";
    Double b;
    b.mod_img = load_lin(L, {p + "norm1.linear"}, 6 * D, D, dt);
    b.mod_txt = load_lin(L, {p + "norm1_context.linear"}, 6 * D, D, dt);
    b.qkv_img = load_lin(L, {a + "to_q", a + "to_k", a + "to_v"}, 3 * D, D, dt);
    b.qkv_txt = load_lin(L, {a + "add_q_proj", a + "add_k_proj", a + "add_v_proj"}, 3 * D, D, dt);
    b.out_img = load_lin(L, {a + "to_out.0"}, D, D, dt);
    b.out_txt = load_lin(L, {a + "to_add_out"}, D, D, dt);
    b.ff1_img = load_lin(L, {p + "ff.net.0.proj"}, 4 * D, D, dt);
    b.ff2_img = load_lin(L, {p + "ff.net.2"}, D, 4 * D, dt);
    b.ff1_txt = load_lin(L, {p + "ff_context.net.0.proj"}, 4 * D, D, dt);
    b.ff2_txt = load_lin(L, {p + "ff_context.net.2"}, D, 4 * D, dt);
    b.nq = L.vec({a + "norm_q.weight"}, hd, Init::NormWeight);
    b.nk = L.vec({a + "norm_k.weight"}, hd, Init::NormWeight);
    b.naq = L.vec({a + "norm_added_q.weight"}, hd, Init::NormWeight);
    b.nak = L.vec({a + "norm_added_k.weight"}, hd, Init::NormWeight);
    dbl_.push_back(b);
  }
  for (int i = 0; i < cfg.single_layers; i++) {
    std::string p = "single_transformer_blocks." + std::to_string(i) + ".", a = p + "attn.";
    Single s;
    s.mod = load_lin(L, {p + "norm.linear"}, 3 * D, D, dt);
    s.qkv = load_lin(L, {a + "to_q", a + "to_k", a + "to_v"}, 3 * D, D, dt);
    s.mlp = load_lin(L, {p + "proj_mlp"}, 4 * D, D, dt);
    s.out = load_lin(L, {p + "proj_out"}, D, 5 * D, dt);
    s.nq = L.vec({a + "norm_q.weight"}, hd, Init::NormWeight);
    s.nk = L.vec({a + "norm_k.weight"}, hd, Init::NormWeight);
    sgl_.push_back(s);
  }
  norm_out_ = load_lin(L, {"norm_out.linear"}, 2 * D, D, dt);
  proj_out_ = load_lin(L, {"proj_out"}, cfg.out_channels, D, dt);
  if (fp8) {
    // Per-tensor scaled fp8 copies of the LN-fed layers (the bf16 originals stay for the other paths).
    DeviceArena& ar = L.arena();
    float* ws = static_cast<float*>(ar.alloc(sizeof(float)));
    auto q8 = [&](Lin& l) {
      int64_t n = int64_t(l.out) * l.in;
      l.w8 = ar.alloc(size_t(n));
      l.s8 = static_cast<float*>(ar.alloc(sizeof(float)));
      quantize_fp8(l.w, dt, n, l.w8, l.s8, ws, nullptr);
    };
    for (auto& b : dbl_) {
      q8(b.qkv_img);
      q8(b.qkv_txt);
      q8(b.ff1_img);
      q8(b.ff1_txt);
    }
    for (auto& s : sgl_) {
      q8(s.qkv);
      q8(s.mlp);
    }
    CUDA_CHECK(cudaDeviceSynchronize());
  }
  for (int i = 0; i < cfg.layers; i++) mod_w_.insert(mod_w_.end(), {6 * D, 6 * D});
  for (int i = 0; i < cfg.single_layers; i++) mod_w_.push_back(3 * D);
  mod_w_.push_back(2 * D);
  for (int w : mod_w_) {
    mod_off_.push_back(mod_width_);
    mod_width_ += w;
  }
}

void FluxTransformer::conditioning(Ctx& c, const std::vector<float>& t_in, const std::vector<float>& g_in,
                                   const float* pooled, int B, int nsteps, float* mods) {
  const int D = cfg.hidden(), R = B * nsteps;
  float* tv = c.f32("flux.tv", 2 * R);
  CUDA_CHECK(cudaMemcpyAsync(tv, t_in.data(), R * 4, cudaMemcpyHostToDevice, c.st));
  CUDA_CHECK(cudaMemcpyAsync(tv + R, g_in.data(), R * 4, cudaMemcpyHostToDevice, c.st));
  float* sin = c.f32("flux.sinus", size_t(R) * 256);
  void* sin_t = c.buf("flux.sinus_t", size_t(R) * 256);
  void* h = c.buf("flux.cond_h", size_t(R) * D);
  float* temb = c.f32("flux.temb", size_t(R) * D);
  float* text = c.f32("flux.text_emb", size_t(B) * D);
  // Each embedder: Linear -> SiLU -> Linear; the second Linear accumulates into temb (fp32).
  auto embedder = [&](const Lin& l1, const Lin& l2, const float* in, int rows, int in_dim, float* acc, bool add) {
    cast(in, DType::F32, sin_t, c.dt, int64_t(rows) * in_dim, c.st);
    run_lin(c, l1, rows, sin_t, c.dt, h, c.dt);
    activation(h, c.dt, rows, D, D, Act::Silu, c.st);
    run_lin(c, l2, rows, h, c.dt, acc, DType::F32, Epi::Bias, add ? acc : nullptr);
  };
  timestep_sinus(tv, R, 1000.f, 256, sin, c.st);
  embedder(t1_, t2_, sin, R, 256, temb, false);
  if (cfg.guidance) {
    timestep_sinus(tv + R, R, 1000.f, 256, sin, c.st);
    embedder(g1_, g2_, sin, R, 256, temb, true);
  }
  // sin_t must hold the pooled input too: rows B <= R, width pooled_dim may exceed 256.
  sin_t = c.buf("flux.pooled_t", size_t(B) * cfg.pooled_dim);
  embedder(p1_, p2_, pooled, B, cfg.pooled_dim, text, false);
  for (int i = 0; i < nsteps; i++)
    gate_residual(temb + int64_t(i) * B * D, text, DType::F32, D, nullptr, 0, B, D, 1, c.st);
  // SiLU(temb) once, then every block's modulation GEMM over all R rows: each weight is read once per request.
  cast(temb, DType::F32, h, c.dt, int64_t(R) * D, c.st);
  activation(h, c.dt, R, D, D, Act::Silu, c.st);
  auto mod = [&](const Lin& l, size_t k) {
    run_lin(c, l, R, h, c.dt, mods + mod_off_[k] * R, DType::F32);
  };
  size_t k = 0;
  for (auto& b : dbl_) {
    mod(b.mod_img, k++);
    mod(b.mod_txt, k++);
  }
  for (auto& s : sgl_) mod(s.mod, k++);
  mod(norm_out_, k++);
}

void FluxTransformer::embed_context(Ctx& c, const float* t5, int rows, float* ctx0) {
  void* in = c.buf("flux.t5_t", size_t(rows) * cfg.joint_dim);
  cast(t5, DType::F32, in, c.dt, int64_t(rows) * cfg.joint_dim, c.st);
  run_lin(c, ctx_emb_, rows, in, c.dt, ctx0, DType::F32);
}

void FluxTransformer::attention(Ctx& c, int B, int S, int T, const void* Q, const void* K, const void* V,
                                OutMap out) {
  const int H = cfg.heads, hd = cfg.head_dim;
  float scale = 1.f / std::sqrt(float(hd));
  prof_begin(kProfAttn, c.st);
  bool done = c.cudnn && out.T == 0 && c.cudnn->run(Q, K, V, out.img, B, S, H, hd, out.ld, scale, c.st);
  if (!done && (c.dt != DType::BF16 || !flash_attention(Q, K, V, B, S, H, hd, scale, out, c.st)))
    attention_rows(Q, K, V, c.dt, H * hd, H * hd, H * hd, int64_t(S) * H * hd, int64_t(S) * H * hd, B, S, S, H, hd,
                   scale, false, nullptr, out, c.st);
  prof_end(kProfAttn, c.st, 4.0 * B * double(S) * S * H * hd);
}

FluxTransformer::NormOut FluxTransformer::norm_in(Ctx& c, const char* name, const float* x, int rows, int rpb,
                                                  const float* shift, const float* scale, int W) {
  const int D = cfg.hidden();
  if (fp8) {
    void* o = c.scratch.get(name, size_t(rows) * D);
    float* sc = c.f32(std::string(name) + ".scale", 1);
    float* ws = c.f32(std::string(name) + ".ws", 1 + 2 * size_t(rows));
    layernorm_mod_fp8(x, rows, D, rpb, shift, scale, W, 1e-6f, o, sc, ws, c.st);
    return {o, DType::FP8, sc};
  }
  void* o = c.buf(name, size_t(rows) * D);
  layernorm(x, rows, D, rpb, nullptr, nullptr, shift, scale, W, 1e-6f, o, c.dt, c.st);
  return {o, c.dt, nullptr};
}

void FluxTransformer::mm(Ctx& c, const Lin& l, int rows, const NormOut& in, void* y, DType yt, int ldy, Epi epi) {
  if (in.t == DType::FP8)
    c.gemm.linear(c.st, rows, l.out, l.in, in.p, DType::FP8, l.in, l.w8, DType::FP8, l.b, epi, y, yt, ldy, nullptr,
                  0.f, in.scale, l.s8);
  else
    c.gemm.linear(c.st, rows, l.out, l.in, in.p, in.t, l.in, l.w, c.dt, l.b, epi, y, yt, ldy);
}

FluxTransformer::NormOut FluxTransformer::res_norm(Ctx& c, const char* name, float* x, const float* y,
                                                   const float* gate, int Wg, int rows, int rpb, const float* shift,
                                                   const float* scale, int Wn) {
  const int D = cfg.hidden();
  if (shift) {
    if (fp8) {
      void* o = c.scratch.get(name, size_t(rows) * D);
      float* sc = c.f32(std::string(name) + ".scale", 1);
      float* ws = c.f32(std::string(name) + ".ws", 1 + 2 * size_t(rows));
      CUDA_CHECK(cudaMemsetAsync(ws, 0, sizeof(float), c.st));
      if (residual_layernorm(x, y, DType::F32, D, gate, Wg, rows, D, rpb, shift, scale, Wn, 1e-6f, nullptr,
                             DType::FP8, ws + 1, ws, c.st)) {
        layernorm_mod_fp8_apply(x, rows, D, rpb, shift, scale, Wn, o, sc, ws, c.st);
        return {o, DType::FP8, sc};
      }
    } else {
      void* o = c.buf(name, size_t(rows) * D);
      if (residual_layernorm(x, y, DType::F32, D, gate, Wg, rows, D, rpb, shift, scale, Wn, 1e-6f, o, c.dt,
                             nullptr, nullptr, c.st))
        return {o, c.dt, nullptr};
    }
  }
  gate_residual(x, y, DType::F32, D, gate, Wg, rows, D, rpb, c.st);
  if (!shift) return {nullptr, c.dt, nullptr};
  return norm_in(c, name, x, rows, rpb, shift, scale, Wn);
}

void FluxTransformer::forward(Ctx& c, int B, int L, int T, const float* latents, const float* ctx0,
                              const float* mods, int R, int step, const float* cs, float* vel) {
  const int D = cfg.hidden(), H = cfg.heads, hd = cfg.head_dim, S = T + L;
  const int RL = B * L, RT = B * T, RS = B * S;
  const DType dt = c.dt;
  const size_t es = dsize(dt);
  float* x = c.f32("f.x", size_t(RL) * D);
  float* ctx = c.f32("f.ctx", size_t(RT) * D);
  float* y = c.f32("f.y", size_t(RS) * D);
  void* xn = c.buf("f.xn", size_t(RS) * D);  // bf16/f32 LN output (fp8 mode: norm_in allocates its own)
  void* qkv_i = c.buf("f.qkv_i", size_t(RS) * 3 * D);
  void* qkv_t = c.buf("f.qkv_t", size_t(RT) * 3 * D);
  void* Q = c.buf("f.Q", size_t(RS) * D);
  void* K = c.buf("f.K", size_t(RS) * D);
  void* V = c.buf("f.V", size_t(RS) * D);
  char* a = static_cast<char*>(c.buf("f.a", size_t(RS) * D));  // joint attention output [B, S, D]
  void* hid = c.buf("f.h", size_t(RS) * 5 * D);  // MLP hidden (double) / [attn | mlp] concat (single)
  void* lat_t = c.buf("f.lat_t", size_t(RL) * cfg.in_channels);

  cast(latents, DType::F32, lat_t, dt, int64_t(RL) * cfg.in_channels, c.st);
  run_lin(c, x_emb_, RL, lat_t, dt, x, DType::F32);
  CUDA_CHECK(cudaMemcpyAsync(ctx, ctx0, size_t(RT) * D * 4, cudaMemcpyDeviceToDevice, c.st));

  // Modulation rows of this step: block k, batch b at mods + off_k*R + (step*B + b)*W_k; batch stride W_k.
  auto modp = [&](size_t k) { return mods + mod_off_[k] * R + int64_t(step) * B * mod_w_[k]; };
  const int nd = int(dbl_.size()), ns = int(sgl_.size());
  const int W = 6 * D, Ws = 3 * D;
  // Every LayerNorm after the first is fused into the gated residual add that precedes it (res_norm); all blocks'
  // modulations are precomputed, so the next block's shift/scale are at hand.
  NormOut ni{}, nt{};
  if (nd) {
    ni = norm_in(c, "f.xn", x, RL, L, modp(0), modp(0) + D, W);
    nt = norm_in(c, "f.cn", ctx, RT, T, modp(1), modp(1) + D, W);
  }
  for (int i = 0; i < nd; i++) {
    auto& blk = dbl_[i];
    const float* mi = modp(2 * i);  // shift/scale/gate msa at chunks 0-2, mlp at 3-5
    const float* mt = modp(2 * i + 1);
    const bool last = i + 1 == nd;
    const float* nmi = last ? nullptr : modp(2 * i + 2);
    const float* nmt = last ? nullptr : modp(2 * i + 3);
    mm(c, blk.qkv_img, RL, ni, qkv_i, dt, 3 * D, Epi::Bias);
    mm(c, blk.qkv_txt, RT, nt, qkv_t, dt, 3 * D, Epi::Bias);
    qk_norm_rope(qkv_t, dt, 3 * D, B, T, 0, S, H, hd, blk.naq, blk.nak, cs, Q, K, V, dt, c.st);
    qk_norm_rope(qkv_i, dt, 3 * D, B, L, T, S, H, hd, blk.nq, blk.nk, cs, Q, K, V, dt, c.st);
    attention(c, B, S, 0, Q, K, V, OutMap{nullptr, a, 0, D});
    // Batch b's text rows are a[b*S, b*S+T), its image rows a[b*S+T, (b+1)*S): one GEMM per stream and sample.
    for (int b = 0; b < B; b++)
      run_lin(c, blk.out_img, L, a + (size_t(b) * S + T) * D * es, dt, y + size_t(b) * L * D, DType::F32);
    ni = res_norm(c, "f.xn", x, y, mi + 2 * D, W, RL, L, mi + 3 * D, mi + 4 * D, W);
    for (int b = 0; b < B; b++)
      run_lin(c, blk.out_txt, T, a + size_t(b) * S * D * es, dt, y + size_t(b) * T * D, DType::F32);
    nt = res_norm(c, "f.cn", ctx, y, mt + 2 * D, W, RT, T, mt + 3 * D, mt + 4 * D, W);
    mm(c, blk.ff1_img, RL, ni, hid, dt, 4 * D, Epi::BiasGelu);
    run_lin(c, blk.ff2_img, RL, hid, dt, y, DType::F32);
    ni = res_norm(c, "f.xn", x, y, mi + 5 * D, W, RL, L, nmi, nmi ? nmi + D : nullptr, W);
    mm(c, blk.ff1_txt, RT, nt, hid, dt, 4 * D, Epi::BiasGelu);
    run_lin(c, blk.ff2_txt, RT, hid, dt, y, DType::F32);
    nt = res_norm(c, "f.cn", ctx, y, mt + 5 * D, W, RT, T, nmt, nmt ? nmt + D : nullptr, W);
  }

  // Single-stream blocks on z = [ctx ; x] per batch (text first).
  float* z = c.f32("f.z", size_t(RS) * D);
  for (int b = 0; b < B; b++) {
    CUDA_CHECK(cudaMemcpyAsync(z + int64_t(b) * S * D, ctx + int64_t(b) * T * D, size_t(T) * D * 4,
                               cudaMemcpyDeviceToDevice, c.st));
    CUDA_CHECK(cudaMemcpyAsync(z + (int64_t(b) * S + T) * D, x + int64_t(b) * L * D, size_t(L) * D * 4,
                               cudaMemcpyDeviceToDevice, c.st));
  }
  char* cat = static_cast<char*>(hid);  // [RS, 5D]: attention output in columns [0, D), GELU(mlp) in [D, 5D)
  NormOut nz{};
  if (ns) nz = norm_in(c, "f.xn", z, RS, S, modp(2 * nd), modp(2 * nd) + D, Ws);
  for (int j = 0; j < ns; j++) {
    auto& blk = sgl_[j];
    const float* ms = modp(2 * nd + j);  // shift, scale, gate
    const float* nms = j + 1 < ns ? modp(2 * nd + j + 1) : nullptr;
    mm(c, blk.qkv, RS, nz, qkv_i, dt, 3 * D, Epi::Bias);
    mm(c, blk.mlp, RS, nz, cat + D * es, dt, 5 * D, Epi::BiasGelu);
    qk_norm_rope(qkv_i, dt, 3 * D, B, S, 0, S, H, hd, blk.nq, blk.nk, cs, Q, K, V, dt, c.st);
    attention(c, B, S, 0, Q, K, V, OutMap{nullptr, cat, 0, 5 * D});
    run_lin(c, blk.out, RS, cat, dt, y, DType::F32);
    nz = res_norm(c, "f.xn", z, y, ms + 2 * D, Ws, RS, S, nms, nms ? nms + D : nullptr, Ws);
  }
  const size_t k = size_t(2 * nd + ns);

  // Output: image tokens, AdaLayerNormContinuous (scale first, then shift), proj_out.
  for (int b = 0; b < B; b++)
    CUDA_CHECK(cudaMemcpyAsync(x + int64_t(b) * L * D, z + (int64_t(b) * S + T) * D, size_t(L) * D * 4,
                               cudaMemcpyDeviceToDevice, c.st));
  const float* mo = modp(k);
  layernorm(x, RL, D, L, nullptr, nullptr, mo + D, mo, 2 * D, 1e-6f, xn, dt, c.st);
  run_lin(c, proj_out_, RL, xn, dt, vel, DType::F32);
}

}  // namespace fq
