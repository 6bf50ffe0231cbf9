#include "flux.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <string>

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

FluxTransformer::FluxTransformer(const FluxConfig& cfg_, WeightLoader& L) : cfg(cfg_), dt_(L.dt()) {
  const int D = cfg.hidden(), hd = cfg.head_dim;
  // Default: every rank the host accepts (256) rides in the block GEMMs; ~1 GB more weight memory at FLUX.1-dev size
  // (the reserve columns are out x 256 per block Linear). FQ_LORA_RESERVE=0 turns it off.
  reserve_ = 256;
  if (const char* r = getenv("FQ_LORA_RESERVE")) {
    const int v = std::atoi(r);
    if (v < 0 || v > kMaxLoraReserve)
      throw EngineError("FQ_LORA_RESERVE=" + std::string(r) + ": 0.." + std::to_string(kMaxLoraReserve), false);
    reserve_ = (v + 15) / 16 * 16;  // 16-byte aligned rows in fp8 too
  }
  const int r = reserve_;
  x_emb_ = L.linear({"x_embedder"}, D, cfg.in_channels);
  ctx_emb_ = L.linear({"context_embedder"}, D, cfg.joint_dim);
  std::string te = "time_text_embed.";
  t1_ = L.linear({te + "timestep_embedder.linear_1"}, D, 256);
  t2_ = L.linear({te + "timestep_embedder.linear_2"}, D, D);
  if (cfg.guidance) {
    g1_ = L.linear({te + "guidance_embedder.linear_1"}, D, 256);
    g2_ = L.linear({te + "guidance_embedder.linear_2"}, D, D);
  }
  p1_ = L.linear({te + "text_embedder.linear_1"}, D, cfg.pooled_dim);
  p2_ = L.linear({te + "text_embedder.linear_2"}, D, D);
  for (int i = 0; i < cfg.layers; i++) {
    std::string p = "transformer_blocks." + std::to_string(i) + ".", a = p + "attn.";
    Double b;
    b.mod_img = L.linear({p + "norm1.linear"}, 6 * D, D);
    b.mod_txt = L.linear({p + "norm1_context.linear"}, 6 * D, D);
    b.qkv_img = L.linear({a + "to_q", a + "to_k", a + "to_v"}, 3 * D, D, true, r);
    b.qkv_txt = L.linear({a + "add_q_proj", a + "add_k_proj", a + "add_v_proj"}, 3 * D, D, true, r);
    b.out_img = L.linear({a + "to_out.0"}, D, D, true, r);
    b.out_txt = L.linear({a + "to_add_out"}, D, D, true, r);
    b.ff1_img = L.linear({p + "ff.net.0.proj"}, 4 * D, D, true, r);
    b.ff2_img = L.linear({p + "ff.net.2"}, D, 4 * D, true, r);
    b.ff1_txt = L.linear({p + "ff_context.net.0.proj"}, 4 * D, D, true, r);
    b.ff2_txt = L.linear({p + "ff_context.net.2"}, D, 4 * D, true, r);
    b.nq = L.vec({a + "norm_q.weight"}, hd, Init::NormWeight);
    b.nk = L.vec({a + "norm_k.weight"}, hd, Init::NormWeight);
    b.naq = L.vec({a + "norm_added_q.weight"}, hd, Init::NormWeight);
    b.nak = L.vec({a + "norm_added_k.weight"}, hd, Init::NormWeight);
    dbl_.push_back(b);
  }
  for (int i = 0; i < cfg.single_layers; i++) {
    std::string p = "single_transformer_blocks." + std::to_string(i) + ".", a = p + "attn.";
    Single s;
    s.mod = L.linear({p + "norm.linear"}, 3 * D, D);
    s.qkv = L.linear({a + "to_q", a + "to_k", a + "to_v"}, 3 * D, D, true, r);
    s.mlp = L.linear({p + "proj_mlp"}, 4 * D, D, true, r);
    s.out = L.linear({p + "proj_out"}, D, 5 * D, true, r);
    s.nq = L.vec({a + "norm_q.weight"}, hd, Init::NormWeight);
    s.nk = L.vec({a + "norm_k.weight"}, hd, Init::NormWeight);
    sgl_.push_back(s);
  }
  norm_out_ = L.linear({"norm_out.linear"}, 2 * D, D);
  proj_out_ = L.linear({"proj_out"}, cfg.out_channels, D);
  // Modulation layout: every block's modulation layer in block order, then the output norm's; widths from the
  // layers themselves.
  for (auto& b : dbl_) mod_layers_.insert(mod_layers_.end(), {&b.mod_img, &b.mod_txt});
  for (auto& s : sgl_) mod_layers_.push_back(&s.mod);
  mod_layers_.push_back(&norm_out_);
  for (const Linear* l : mod_layers_) {
    mod_w_.push_back(l->out);
    mod_off_.push_back(mod_width_);
    mod_width_ += l->out;
  }
  DeviceArena& ar = L.arena();
  mod_off_dev_ = ar.allocT<int64_t>(mod_off_.size());
  mod_w_dev_ = ar.allocT<int>(mod_w_.size());
  CUDA_CHECK(cudaMemcpyAsync(mod_off_dev_, mod_off_.data(), mod_off_.size() * 8, cudaMemcpyHostToDevice, L.stream()));
  CUDA_CHECK(cudaMemcpyAsync(mod_w_dev_, mod_w_.data(), mod_w_.size() * 4, cudaMemcpyHostToDevice, L.stream()));
  CUDA_CHECK(cudaStreamSynchronize(L.stream()));
  // On unless FQ_QKV_INPLACE=0 (session 17 on the H100: -43 ms per 1024x1024 request, A B A 3.572 / 3.532 / 3.578 s).
  const char* inplace = getenv("FQ_QKV_INPLACE");
  set_qkv_inplace(!(inplace && std::string(inplace) == "0"));
  const char* branch = getenv("FQ_BRANCH_BF16");
  branch_bf16_ = branch && std::string(branch) == "1";
}

std::vector<Linear*> FluxTransformer::linears() {
  std::vector<Linear*> v{&x_emb_, &ctx_emb_, &t1_, &t2_, &p1_, &p2_};
  if (cfg.guidance) v.insert(v.end(), {&g1_, &g2_});
  for (auto& b : dbl_)
    v.insert(v.end(), {&b.mod_img, &b.mod_txt, &b.qkv_img, &b.qkv_txt, &b.out_img, &b.out_txt, &b.ff1_img, &b.ff2_img,
                       &b.ff1_txt, &b.ff2_txt});
  for (auto& s : sgl_) v.insert(v.end(), {&s.mod, &s.qkv, &s.mlp, &s.out});
  v.insert(v.end(), {&norm_out_, &proj_out_});
  return v;
}

std::vector<NormSlot> FluxTransformer::norm_slots() {
  std::vector<NormSlot> v;
  const int hd = cfg.head_dim;
  for (size_t i = 0; i < dbl_.size(); i++) {
    const std::string a = "transformer_blocks." + std::to_string(i) + ".attn.";
    v.push_back({a + "norm_q", &dbl_[i].nq, hd});
    v.push_back({a + "norm_k", &dbl_[i].nk, hd});
    v.push_back({a + "norm_added_q", &dbl_[i].naq, hd});
    v.push_back({a + "norm_added_k", &dbl_[i].nak, hd});
  }
  for (size_t j = 0; j < sgl_.size(); j++) {
    const std::string a = "single_transformer_blocks." + std::to_string(j) + ".attn.";
    v.push_back({a + "norm_q", &sgl_[j].nq, hd});
    v.push_back({a + "norm_k", &sgl_[j].nk, hd});
  }
  return v;
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
  auto embedder = [&](const Linear& l1, const Linear& l2, const float* in, int rows, int in_dim, float* acc, bool add) {
    cast(in, DType::F32, sin_t, c.dt, int64_t(rows) * in_dim, c.st);
    linear(c, l1, rows, In{sin_t, c.dt, in_dim}, Out{h, c.dt, D});
    activation(h, c.dt, rows, D, D, Act::Silu, c.st);
    linear(c, l2, rows, In{h, c.dt, D}, Out{acc, DType::F32, D}, Epi::Bias, add ? acc : nullptr);
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
  for (size_t k = 0; k < mod_layers_.size(); k++)
    linear(c, *mod_layers_[k], R, In{h, c.dt, D}, Out{mods + mod_off_[k] * R, DType::F32, mod_w_[k]});
}

void FluxTransformer::copy_rows(Ctx& c, const float* src, int64_t Rs, float* dst, int64_t Rd, int64_t dst_row0,
                                const int* map, int64_t count) const {
  copy_step_rows(src, Rs, dst, Rd, dst_row0, map, count, mod_off_dev_, mod_w_dev_, int(mod_w_.size()), c.st);
}

void FluxTransformer::embed_context(Ctx& c, const float* t5, int rows, float* ctx0) {
  void* in = c.buf("flux.t5_t", size_t(rows) * cfg.joint_dim);
  cast(t5, DType::F32, in, c.dt, int64_t(rows) * cfg.joint_dim, c.st);
  linear(c, ctx_emb_, rows, In{in, c.dt, cfg.joint_dim}, Out{ctx0, DType::F32, cfg.hidden()});
}

FluxStep FluxTransformer::alloc_step(DeviceArena& mem, int B, int L, int T, cudaStream_t st, int ctrl_ch,
                                     bool branch_bf16) const {
  const int D = cfg.hidden(), S = L + T;
  const size_t RL = size_t(B) * L, RT = size_t(B) * T, RS = size_t(B) * S, es = dsize(dt_);
  FluxStep s;
  s.B = B;
  s.L = L;
  s.T = T;
  const int r = reserve_;
  s.ldn = D + r, s.lda = D + r, s.ldf = 4 * D + r, s.ldc = 5 * D + r;
  s.x = mem.allocT<float>(RL * D);
  s.ctx = mem.allocT<float>(RT * D);
  s.z = mem.allocT<float>(RS * D);
  s.y = mem.allocT<float>(RS * D);
  s.yt = dt_ == DType::BF16 && (branch_bf16 || branch_bf16_) ? DType::BF16 : DType::F32;
  s.xn = mem.alloc(RS * s.ldn * es);  // also holds fp8 outputs (1 byte each)
  s.cn = mem.alloc(RT * s.ldn * es);
  s.xn_scale = mem.allocT<float>(1);
  s.cn_scale = mem.allocT<float>(1);
  s.xn_ws = mem.allocT<float>(1 + 2 * RS);
  s.cn_ws = mem.allocT<float>(1 + 2 * RT);
  s.qkv_i = mem.alloc(RS * 3 * D * es);
  s.qkv_t = mem.alloc(RT * 3 * D * es);
  s.Q = mem.alloc(RS * D * es);
  s.K = mem.alloc(RS * D * es);
  s.V = mem.alloc(RS * D * es);
  s.a = mem.alloc(RS * s.lda * es);
  s.hid = mem.alloc(RS * s.ldc * es);  // MLP hidden (double, RL rows of ldf <= ldc) / [attn | mlp] concat (single)
  s.ctrl_ch = ctrl_ch;
  s.lat_t = mem.alloc(RL * (cfg.in_channels + ctrl_ch) * std::max<size_t>(es, dsize(x_emb_.wt)));
  s.mods = mem.allocT<float>(size_t(B) * mod_width_);
  // The schedule table [5, B]: step 0, nsteps unbounded, row0 = b, rstride = B, sig0 = 0 (prepare's layout).
  int* t = mem.allocT<int>(size_t(5) * B);
  s.sched = SampleSchedule{t, t + B, t + 2 * B, t + 3 * B, t + 4 * B};
  std::vector<int> init(size_t(5) * B, 0);
  for (int b = 0; b < B; b++) {
    init[size_t(B) + b] = 1 << 30;
    init[size_t(2) * B + b] = b;
    init[size_t(3) * B + b] = B;
  }
  CUDA_CHECK(cudaMemcpyAsync(t, init.data(), init.size() * 4, cudaMemcpyHostToDevice, st));
  CUDA_CHECK(cudaStreamSynchronize(st));  // `init` is pageable and goes away
  return s;
}

void FluxTransformer::attention(Ctx& c, int B, int S, int T, const void* Q, const void* K, const void* V, int ldi,
                                OutMap out) {
  const int H = cfg.heads, hd = cfg.head_dim;
  float scale = 1.f / std::sqrt(float(hd));
  if (c.tap) c.tap->on_attention(B, S, H, hd, out.ld);
  prof_begin(kProfAttn, c.st);
  bool done = c.cudnn && out.T == 0 && c.cudnn->run(Q, K, V, out.img, B, S, H, hd, out.ld, scale, c.st, ldi);
  if (!done && (c.dt != DType::BF16 || !flash_attention(Q, K, V, B, S, H, hd, scale, out, c.st, ldi)))
    attention_rows(Q, K, V, c.dt, ldi, ldi, ldi, int64_t(S) * ldi, int64_t(S) * ldi, B, S, S, H, hd, scale, false,
                   nullptr, out, c.st);
  prof_end(kProfAttn, c.st, 4.0 * B * double(S) * S * H * hd);
}

FluxTransformer::NormOut FluxTransformer::norm_in(Ctx& c, const Linear& consumer, void* o, int ldo, float* oscale,
                                                  float* ws, const float* x, int rows, int rpb, const float* shift,
                                                  const float* scale, int W) {
  const int D = cfg.hidden();
  ProfScope mark(kProfNorm, c.st);
  if (consumer.wt == DType::FP8) {
    layernorm_mod_fp8(x, rows, D, rpb, shift, scale, W, 1e-6f, o, oscale, ws, c.st, ldo);
    return {o, DType::FP8, oscale};
  }
  layernorm(x, rows, D, rpb, nullptr, nullptr, shift, scale, W, 1e-6f, o, c.dt, c.st, ldo);
  return {o, c.dt, nullptr};
}

FluxTransformer::NormOut FluxTransformer::res_norm(Ctx& c, const Linear* consumer, void* o, int ldo, float* oscale,
                                                   float* ws, float* x, const void* y, DType yt, const float* gate,
                                                   int Wg, int rows, int rpb, const float* shift, const float* scale,
                                                   int Wn) {
  const int D = cfg.hidden();
  ProfScope mark(kProfResNorm, c.st);  // norm_in's own mark below nests into this one
  if (shift) {
    if (consumer->wt == DType::FP8) {
      CUDA_CHECK(cudaMemsetAsync(ws, 0, sizeof(float), c.st));
      if (residual_layernorm(x, y, yt, D, gate, Wg, rows, D, rpb, shift, scale, Wn, 1e-6f, nullptr,
                             DType::FP8, ws + 1, ws, c.st)) {
        layernorm_mod_fp8_apply(x, rows, D, rpb, shift, scale, Wn, o, oscale, ws, c.st, ldo);
        return {o, DType::FP8, oscale};
      }
    } else if (residual_layernorm(x, y, yt, D, gate, Wg, rows, D, rpb, shift, scale, Wn, 1e-6f, o, c.dt,
                                  nullptr, nullptr, c.st, ldo)) {
      return {o, c.dt, nullptr};
    }
  }
  gate_residual(x, y, yt, D, gate, Wg, rows, D, rpb, c.st);
  if (!shift) return {nullptr, c.dt, nullptr};
  return norm_in(c, *consumer, o, ldo, oscale, ws, x, rows, rpb, shift, scale, Wn);
}

// Every LayerNorm after the first is fused into the gated residual add that precedes it (res_norm); all blocks'
// modulations are at hand, so each block ends by writing the next block's first norm (into s.xn / s.cn).
void FluxTransformer::embed(Ctx& c, FluxStep& s, const float* latents, const float* ctx0, const float* mods, int R) {
  const int D = cfg.hidden(), B = s.B, L = s.L, T = s.T, RL = B * L, RT = B * T;
  // This step's modulation rows, selected per sample by the device step indices (the same launch replays for every
  // step).
  {
    ProfScope mark(kProfStepOps, c.st);
    gather_step_rows(mods, R, B, s.sched, mod_off_dev_, mod_w_dev_, int(mod_w_.size()), s.mods, c.st);
  }
  if (s.ctrl_ch) {
    // BFL Control: x_embedder reads [latents; control] in its own type; the set's adapter (A as wide as the rows)
    // covers every column, the base product the first in_channels (lora.h, linear.h).
    if (!x_emb_.adapter || x_emb_.adapter->in != cfg.in_channels + s.ctrl_ch)
      throw EngineError("control latents need a control LoRA set whose x_embedder reads them", false);
    const int w = cfg.in_channels + s.ctrl_ch;
    {
      ProfScope mark(kProfCopy, c.st);
      concat_features(latents, cfg.in_channels, s.ctrl, s.ctrl_ch, RL, s.lat_t, x_emb_.wt, c.st);
    }
    linear(c, x_emb_, RL, In{s.lat_t, x_emb_.wt, w}, Out{s.x, DType::F32, D});
  } else {
    {
      ProfScope mark(kProfCopy, c.st);
      cast(latents, DType::F32, s.lat_t, dt_, int64_t(RL) * cfg.in_channels, c.st);
    }
    linear(c, x_emb_, RL, In{s.lat_t, dt_, cfg.in_channels}, Out{s.x, DType::F32, D});
  }
  {
    ProfScope mark(kProfCopy, c.st);
    CUDA_CHECK(cudaMemcpyAsync(s.ctx, ctx0, size_t(RT) * D * 4, cudaMemcpyDeviceToDevice, c.st));
  }
  if (!dbl_.empty()) {
    norm_in(c, dbl_[0].qkv_img, s.xn, s.ldn, s.xn_scale, s.xn_ws, s.x, RL, L, modp(s, 0), modp(s, 0) + D, 6 * D);
    norm_in(c, dbl_[0].qkv_txt, s.cn, s.ldn, s.cn_scale, s.cn_ws, s.ctx, RT, T, modp(s, 1), modp(s, 1) + D, 6 * D);
  }
}

void FluxTransformer::double_block(Ctx& c, FluxStep& s, int i, const float* cs) {
  const int D = cfg.hidden(), H = cfg.heads, hd = cfg.head_dim, B = s.B, L = s.L, T = s.T, S = T + L;
  const int RL = B * L, RT = B * T, W = 6 * D;
  const size_t es = dsize(dt_);
  auto& blk = dbl_[i];
  const float* mi = modp(s, 2 * i);  // shift/scale/gate msa at chunks 0-2, mlp at 3-5
  const float* mt = modp(s, 2 * i + 1);
  const bool last = i + 1 == int(dbl_.size());
  const float* nmi = last ? nullptr : modp(s, 2 * i + 2);
  const float* nmt = last ? nullptr : modp(s, 2 * i + 3);
  // The norms written by the previous block (or embed) for this block's q/k/v.
  auto in_of = [&](const Linear& l, void* p, float* sc) {
    return In{p, l.wt == DType::FP8 ? DType::FP8 : dt_, s.ldn, sc};
  };
  char* a = static_cast<char*>(s.a);  // joint attention output [B, S, D]
  if (qkv_inplace_) {
    // Both streams' projections into one joint [B, S, 3D] buffer (sample b: text rows [b*S, b*S + T), image rows
    // after them), normalised and rotated there, read there by the attention: one GEMM per stream and sample.
    char* j = static_cast<char*>(s.qkv_i);
    const In xi = in_of(blk.qkv_img, s.xn, s.xn_scale), xt = in_of(blk.qkv_txt, s.cn, s.cn_scale);
    const size_t ei = dsize(xi.t), et = dsize(xt.t), row = size_t(3) * D * es;
    for (int b = 0; b < B; b++) {
      In xb = xi;
      xb.p = static_cast<const char*>(xi.p) + size_t(b) * L * s.ldn * ei;
      linear(c, blk.qkv_img, L, xb, Out{j + (size_t(b) * S + T) * row, dt_, 3 * D});
    }
    for (int b = 0; b < B; b++) {
      In xb = xt;
      xb.p = static_cast<const char*>(xt.p) + size_t(b) * T * s.ldn * et;
      linear(c, blk.qkv_txt, T, xb, Out{j + size_t(b) * S * row, dt_, 3 * D});
    }
    {
      ProfScope mark(kProfQkRope, c.st);
      qk_norm_rope_inplace(j, dt_, 3 * D, B, S, T, H, hd, blk.naq, blk.nak, blk.nq, blk.nk, cs, c.st);
    }
    attention(c, B, S, 0, j, j + size_t(D) * es, j + size_t(2) * D * es, 3 * D, OutMap{nullptr, a, 0, s.lda});
  } else {
    linear(c, blk.qkv_img, RL, in_of(blk.qkv_img, s.xn, s.xn_scale), Out{s.qkv_i, dt_, 3 * D});
    linear(c, blk.qkv_txt, RT, in_of(blk.qkv_txt, s.cn, s.cn_scale), Out{s.qkv_t, dt_, 3 * D});
    {
      ProfScope mark(kProfQkRope, c.st);
      qk_norm_rope(s.qkv_t, dt_, 3 * D, B, T, 0, S, H, hd, blk.naq, blk.nak, cs, s.Q, s.K, s.V, dt_, c.st);
      qk_norm_rope(s.qkv_i, dt_, 3 * D, B, L, T, S, H, hd, blk.nq, blk.nk, cs, s.Q, s.K, s.V, dt_, c.st);
    }
    attention(c, B, S, 0, s.Q, s.K, s.V, H * hd, OutMap{nullptr, a, 0, s.lda});
  }
  // Batch b's text rows are a[b*S, b*S+T), its image rows a[b*S+T, (b+1)*S): one GEMM per stream and sample.
  for (int b = 0; b < B; b++)
    linear(c, blk.out_img, L, In{a + (size_t(b) * S + T) * s.lda * es, dt_, s.lda},
           branch_out(s, size_t(b) * L));
  NormOut ni = res_norm(c, &blk.ff1_img, s.xn, s.ldn, s.xn_scale, s.xn_ws, s.x, s.y, s.yt, mi + 2 * D, W, RL, L,
                        mi + 3 * D, mi + 4 * D, W);
  for (int b = 0; b < B; b++)
    linear(c, blk.out_txt, T, In{a + size_t(b) * S * s.lda * es, dt_, s.lda},
           branch_out(s, size_t(b) * T));
  NormOut nt = res_norm(c, &blk.ff1_txt, s.cn, s.ldn, s.cn_scale, s.cn_ws, s.ctx, s.y, s.yt, mt + 2 * D, W, RT, T,
                        mt + 3 * D, mt + 4 * D, W);
  linear(c, blk.ff1_img, RL, ni.in(s.ldn), Out{s.hid, dt_, s.ldf}, Epi::BiasGelu);
  linear(c, blk.ff2_img, RL, In{s.hid, dt_, s.ldf}, branch_out(s, 0));
  const Linear* next_i = last ? nullptr : &dbl_[i + 1].qkv_img;
  const Linear* next_t = last ? nullptr : &dbl_[i + 1].qkv_txt;
  res_norm(c, next_i, s.xn, s.ldn, s.xn_scale, s.xn_ws, s.x, s.y, s.yt, mi + 5 * D, W, RL, L, nmi,
           nmi ? nmi + D : nullptr, W);
  linear(c, blk.ff1_txt, RT, nt.in(s.ldn), Out{s.hid, dt_, s.ldf}, Epi::BiasGelu);
  linear(c, blk.ff2_txt, RT, In{s.hid, dt_, s.ldf}, branch_out(s, 0));
  res_norm(c, next_t, s.cn, s.ldn, s.cn_scale, s.cn_ws, s.ctx, s.y, s.yt, mt + 5 * D, W, RT, T, nmt,
           nmt ? nmt + D : nullptr, W);
}

// Single-stream blocks run on z = [ctx ; x] per batch (text first); the first one's norm is written here.
void FluxTransformer::to_joint(Ctx& c, FluxStep& s) {
  const int D = cfg.hidden(), B = s.B, L = s.L, T = s.T, S = T + L;
  {
    ProfScope mark(kProfCopy, c.st);
    for (int b = 0; b < B; b++) {
      CUDA_CHECK(cudaMemcpyAsync(s.z + int64_t(b) * S * D, s.ctx + int64_t(b) * T * D, size_t(T) * D * 4,
                                 cudaMemcpyDeviceToDevice, c.st));
      CUDA_CHECK(cudaMemcpyAsync(s.z + (int64_t(b) * S + T) * D, s.x + int64_t(b) * L * D, size_t(L) * D * 4,
                                 cudaMemcpyDeviceToDevice, c.st));
    }
  }
  const size_t k = 2 * dbl_.size();
  if (!sgl_.empty())
    norm_in(c, sgl_[0].qkv, s.xn, s.ldn, s.xn_scale, s.xn_ws, s.z, B * S, S, modp(s, k), modp(s, k) + D, 3 * D);
}

void FluxTransformer::single_block(Ctx& c, FluxStep& s, int j, const float* cs) {
  const int D = cfg.hidden(), H = cfg.heads, hd = cfg.head_dim, B = s.B, S = s.T + s.L, RS = B * S, Ws = 3 * D;
  const size_t es = dsize(dt_);
  const int nd = int(dbl_.size()), ns = int(sgl_.size());
  auto& blk = sgl_[j];
  const float* ms = modp(s, 2 * nd + j);  // shift, scale, gate
  const float* nms = j + 1 < ns ? modp(s, 2 * nd + j + 1) : nullptr;
  char* cat = static_cast<char*>(s.hid);  // [RS, ldc]: attention output in columns [0, D), GELU(mlp) in [D, 5D)
  // One norm feeds both q/k/v and MLP-in: it was written in q/k/v's type; linear() converts for the MLP if the plan
  // gave the two layers different types.
  In nz{s.xn, blk.qkv.wt == DType::FP8 ? DType::FP8 : dt_, s.ldn, s.xn_scale};
  linear(c, blk.qkv, RS, nz, Out{s.qkv_i, dt_, 3 * D});
  linear(c, blk.mlp, RS, nz, Out{cat + D * es, dt_, s.ldc}, Epi::BiasGelu);
  if (qkv_inplace_) {
    char* j = static_cast<char*>(s.qkv_i);
    {
      ProfScope mark(kProfQkRope, c.st);
      qk_norm_rope_inplace(j, dt_, 3 * D, B, S, 0, H, hd, blk.nq, blk.nk, blk.nq, blk.nk, cs, c.st);
    }
    attention(c, B, S, 0, j, j + size_t(D) * es, j + size_t(2) * D * es, 3 * D, OutMap{nullptr, cat, 0, s.ldc});
  } else {
    {
      ProfScope mark(kProfQkRope, c.st);
      qk_norm_rope(s.qkv_i, dt_, 3 * D, B, S, 0, S, H, hd, blk.nq, blk.nk, cs, s.Q, s.K, s.V, dt_, c.st);
    }
    attention(c, B, S, 0, s.Q, s.K, s.V, H * hd, OutMap{nullptr, cat, 0, s.ldc});
  }
  linear(c, blk.out, RS, In{cat, dt_, s.ldc}, branch_out(s, 0));
  res_norm(c, j + 1 < ns ? &sgl_[j + 1].qkv : nullptr, s.xn, s.ldn, s.xn_scale, s.xn_ws, s.z, s.y, s.yt,
           ms + 2 * D, Ws, RS, S, nms, nms ? nms + D : nullptr, Ws);
}

// Output: image tokens, AdaLayerNormContinuous (scale first, then shift), proj_out.
void FluxTransformer::final_layer(Ctx& c, FluxStep& s, float* vel) {
  const int D = cfg.hidden(), B = s.B, L = s.L, T = s.T, S = T + L;
  {
    ProfScope mark(kProfCopy, c.st);
    for (int b = 0; b < B; b++)
      CUDA_CHECK(cudaMemcpyAsync(s.x + int64_t(b) * L * D, s.z + (int64_t(b) * S + T) * D, size_t(L) * D * 4,
                                 cudaMemcpyDeviceToDevice, c.st));
  }
  output_layer(c, s, vel);
}

void FluxTransformer::output_layer(Ctx& c, FluxStep& s, float* vel) {
  const int D = cfg.hidden(), L = s.L, RL = s.B * L;
  const float* mo = modp(s, mod_layers_.size() - 1);
  NormOut n = norm_in(c, proj_out_, s.xn, s.ldn, s.xn_scale, s.xn_ws, s.x, RL, L, mo + D, mo, 2 * D);
  linear(c, proj_out_, RL, n.in(s.ldn), Out{vel, DType::F32, cfg.out_channels});
}

void FluxTransformer::forward(Ctx& c, FluxStep& s, const float* latents, const float* ctx0, const float* mods, int R,
                              const float* cs, float* vel) {
  forward_head(c, s, latents, ctx0, mods, R, cs, nullptr);
  forward_tail(c, s, cs, vel);
}

void FluxTransformer::forward_head(Ctx& c, FluxStep& s, const float* latents, const float* ctx0, const float* mods,
                                   int R, const float* cs, float* x_before) {
  emit(false, BlockKind::Embed, 0, s);
  embed(c, s, latents, ctx0, mods, R);
  emit(true, BlockKind::Embed, 0, s);
  if (x_before)
    CUDA_CHECK(cudaMemcpyAsync(x_before, s.x, size_t(s.B) * s.L * cfg.hidden() * 4, cudaMemcpyDeviceToDevice, c.st));
  if (!dbl_.empty()) {
    emit(false, BlockKind::Double, 0, s);
    double_block(c, s, 0, cs);
    emit(true, BlockKind::Double, 0, s);
  }
}

void FluxTransformer::forward_tail(Ctx& c, FluxStep& s, const float* cs, float* vel) {
  for (int i = 1; i < int(dbl_.size()); i++) {
    emit(false, BlockKind::Double, i, s);
    double_block(c, s, i, cs);
    emit(true, BlockKind::Double, i, s);
  }
  to_joint(c, s);
  for (int j = 0; j < int(sgl_.size()); j++) {
    emit(false, BlockKind::Single, j, s);
    single_block(c, s, j, cs);
    emit(true, BlockKind::Single, j, s);
  }
  emit(false, BlockKind::Final, 0, s);
  final_layer(c, s, vel);
  emit(true, BlockKind::Final, 0, s);
}

void FluxTransformer::output_from_x(Ctx& c, FluxStep& s, float* vel) {
  emit(false, BlockKind::Final, 0, s);
  output_layer(c, s, vel);
  emit(true, BlockKind::Final, 0, s);
}

}  // namespace fq
