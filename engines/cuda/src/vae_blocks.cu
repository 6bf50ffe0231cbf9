#include "vae_blocks.h"

#include <algorithm>
#include <cmath>

namespace fq {

namespace {
constexpr size_t kIm2colBytes = 256ull << 20;  // im2col chunk budget
constexpr size_t kScoreBytes = 128ull << 20;   // attention score chunk budget
}  // namespace

VaeConfig VaeConfig::from_json(const Json& j) {
  VaeConfig c;
  if (j["block_out_channels"].kind == Json::Arr) {
    c.channels.clear();
    for (auto& v : j["block_out_channels"].a) c.channels.push_back(int(v.n));
  }
  c.layers_per_block = int(j.num("layers_per_block", c.layers_per_block));
  c.groups = int(j.num("norm_num_groups", c.groups));
  c.latent = int(j.num("latent_channels", c.latent));
  c.scaling = float(j.num("scaling_factor", c.scaling));
  c.shift = float(j.num("shift_factor", c.shift));
  c.quant_conv = j["use_quant_conv"].kind == Json::Bool && j["use_quant_conv"].b;
  if (j["force_upcast"].kind == Json::Bool) c.force_upcast = j["force_upcast"].b;  // absent: true, as diffusers
  if (j["use_post_quant_conv"].kind == Json::Bool && j["use_post_quant_conv"].b)
    throw std::runtime_error("VAE post_quant_conv not supported (FLUX has none)");
  return c;
}

VaeBlocks::Conv VaeBlocks::load_conv(WeightLoader& L, const std::string& name, int cout, int cin, int k) {
  Conv cv;
  cv.cin = cin;
  cv.cout = cout;
  cv.k = k;
  void* w = L.conv(name + ".weight", cout, cin, k, L.dt());
  cv.lin = L.wrap("vae/" + name, w, L.vec({name + ".bias"}, cout, Init::Bias), cout, k * k * cin);
  return cv;
}

VaeBlocks::Conv VaeBlocks::pad_conv(WeightLoader& L, const Conv& cv, const std::string& name, int cout_p, int cin_p) {
  const size_t es = dsize(L.dt());
  const size_t taps = size_t(cv.k) * cv.k;
  DeviceArena& arena = L.arena();
  cudaStream_t st = L.stream();
  void* w = arena.alloc(size_t(cout_p) * taps * cin_p * es);
  float* b = static_cast<float*>(arena.alloc(size_t(cout_p) * sizeof(float)));
  CUDA_CHECK(cudaMemsetAsync(w, 0, size_t(cout_p) * taps * cin_p * es, st));
  CUDA_CHECK(cudaMemsetAsync(b, 0, size_t(cout_p) * sizeof(float), st));
  // [cout, k, k, cin] rows of cin elements -> rows of cin_p elements; the extra output rows stay zero.
  CUDA_CHECK(cudaMemcpy2DAsync(w, size_t(cin_p) * es, cv.lin.w, size_t(cv.cin) * es, size_t(cv.cin) * es,
                               size_t(cv.cout) * taps, cudaMemcpyDeviceToDevice, st));
  CUDA_CHECK(cudaMemcpyAsync(b, cv.lin.b, size_t(cv.cout) * sizeof(float), cudaMemcpyDeviceToDevice, st));
  Conv p;
  p.cin = cin_p;
  p.cout = cout_p;
  p.k = cv.k;
  p.lin = L.wrap(name, w, b, cout_p, int(taps) * cin_p);
  return p;
}

VaeBlocks::Resnet VaeBlocks::load_res(WeightLoader& L, const std::string& p, int cin, int cout) {
  Resnet r;
  r.n1w = L.vec({p + "norm1.weight"}, cin, Init::NormWeight);
  r.n1b = L.vec({p + "norm1.bias"}, cin, Init::NormBias);
  r.c1 = load_conv(L, p + "conv1", cout, cin, 3);
  r.n2w = L.vec({p + "norm2.weight"}, cout, Init::NormWeight);
  r.n2b = L.vec({p + "norm2.bias"}, cout, Init::NormBias);
  r.c2 = load_conv(L, p + "conv2", cout, cout, 3);
  if (cin != cout) r.sc = load_conv(L, p + "conv_shortcut", cout, cin, 1);
  return r;
}

VaeBlocks::Mid VaeBlocks::load_mid(WeightLoader& L, const std::string& p, int C) {
  Mid m;
  m.r0 = load_res(L, p + "resnets.0.", C, C);
  const std::string a = p + "attentions.0.";
  m.attn.nw = L.vec({a + "group_norm.weight"}, C, Init::NormWeight);
  m.attn.nb = L.vec({a + "group_norm.bias"}, C, Init::NormBias);
  m.attn.qkv = L.linear({a + "to_q", a + "to_k", a + "to_v"}, 3 * C, C);
  m.attn.out = L.linear({a + "to_out.0"}, C, C);
  m.r1 = load_res(L, p + "resnets.1.", C, C);
  return m;
}

void VaeBlocks::conv(Ctx& c, const Conv& cv, const void* x, int B, int H, int W, Resample rs, void* y,
                     const void* resid) {
  const size_t es = dsize(c.dt);
  const int Ho = rs == Resample::Up2 ? 2 * H : rs == Resample::Down2 ? H / 2 : H;
  const int Wo = rs == Resample::Up2 ? 2 * W : rs == Resample::Down2 ? W / 2 : W;
  const int64_t P = int64_t(Ho) * Wo;
  if (cv.k == 1) {
    linear(c, cv.lin, int(B * P), In{x, c.dt, cv.cin}, Out{y, c.dt, cv.cout}, Epi::Bias, resid);
    return;
  }
  if (c.conv && rs != Resample::Down2) {
    // cuDNN: the upsampled input is materialised (4x the input, far less than an im2col matrix), then bias and
    // residual in one pass over the output. (Strided convolutions stay on im2col: three small ones per encode.)
    const void* src = x;
    if (rs == Resample::Up2) {
      void* u = c.buf("vae.up", size_t(B) * P * cv.cin);
      upsample_nearest2x(x, c.dt, B, H, W, cv.cin, u, c.st);
      src = u;
    }
    if (c.conv->run(src, cv.lin.w, y, B, Ho, Wo, cv.cin, cv.cout, cv.k, c.st)) {
      add_bias_residual(y, c.dt, cv.lin.b, resid, B * P, cv.cout, c.st);
      return;
    }
  }
  const int64_t K = 9 * int64_t(cv.cin);
  const int64_t chunk = std::max<int64_t>(1, std::min<int64_t>(P, int64_t(kIm2colBytes / (K * es))));
  void* col = c.buf("vae.col", size_t(chunk * K));
  for (int b = 0; b < B; b++) {
    const char* xb = static_cast<const char*>(x) + size_t(b) * H * W * cv.cin * es;
    for (int64_t p0 = 0; p0 < P; p0 += chunk) {
      int64_t np = std::min(chunk, P - p0);
      im2col3x3(xb, c.dt, H, W, cv.cin, rs, p0, np, col, c.st);
      size_t off = (size_t(b) * P + p0) * cv.cout * es;
      linear(c, cv.lin, int(np), In{col, c.dt, int(K)}, Out{static_cast<char*>(y) + off, c.dt, cv.cout}, Epi::Bias,
             resid ? static_cast<const char*>(resid) + off : nullptr);
    }
  }
}

void VaeBlocks::resnet(Ctx& c, const Resnet& r, const void* x, int B, int H, int W, void* out) {
  const int64_t P = int64_t(B) * H * W;
  double* ws = c.scratch.getT<double>("vae.gn", 3 * size_t(B) * cfg.groups);
  void* t = c.buf("vae.t", size_t(P) * std::max(r.c1.cin, r.c1.cout));
  void* h = c.buf("vae.h", size_t(P) * r.c1.cout);
  groupnorm(x, c.dt, B, int64_t(H) * W, r.c1.cin, cfg.groups, r.n1w, r.n1b, 1e-6f, true, t, ws, c.st);
  conv(c, r.c1, t, B, H, W, Resample::Same, h, nullptr);
  groupnorm(h, c.dt, B, int64_t(H) * W, r.c1.cout, cfg.groups, r.n2w, r.n2b, 1e-6f, true, t, ws, c.st);
  const void* resid = x;
  if (r.sc.present()) {
    void* s = c.buf("vae.sc", size_t(P) * r.c1.cout);
    conv(c, r.sc, x, B, H, W, Resample::Same, s, nullptr);
    resid = s;
  }
  conv(c, r.c2, t, B, H, W, Resample::Same, out, resid);  // out = conv2(t) + shortcut(x)
}

void VaeBlocks::attention(Ctx& c, const Attention& a, const void* x, int B, int H, int W, void* out) {
  const int C = a.out.out;
  const int64_t HW = int64_t(H) * W;
  const size_t es = dsize(c.dt);
  double* ws = c.scratch.getT<double>("vae.gn", 3 * size_t(B) * cfg.groups);
  void* t = c.buf("vae.t", size_t(B * HW) * C);
  void* qkv = c.buf("vae.qkv", size_t(B * HW) * 3 * C);
  void* o = c.buf("vae.ao", size_t(B * HW) * C);
  groupnorm(x, c.dt, B, HW, C, cfg.groups, a.nw, a.nb, 1e-6f, false, t, ws, c.st);
  linear(c, a.qkv, int(B * HW), In{t, c.dt, C}, Out{qkv, c.dt, 3 * C});
  const int64_t chunk = std::max<int64_t>(1, std::min<int64_t>(HW, int64_t(kScoreBytes / (HW * 4))));
  float* s = c.f32("vae.scores", size_t(chunk * HW));
  void* p = c.buf("vae.probs", size_t(chunk * HW));
  const float scale = 1.f / std::sqrt(float(C));
  for (int b = 0; b < B; b++) {
    const char* base = static_cast<const char*>(qkv) + size_t(b) * HW * 3 * C * es;
    for (int64_t q0 = 0; q0 < HW; q0 += chunk) {
      int nq = int(std::min(chunk, HW - q0));
      // scores[nq, HW] = q_chunk k^T (fp32), then softmax, then o_chunk = p v.
      c.gemm.matmul(c.st, false, true, nq, int(HW), C, 1.f, base + size_t(q0) * 3 * C * es, c.dt, 3 * C,
                    base + C * es, c.dt, 3 * C, 0.f, s, DType::F32, int(HW));
      softmax_rows(s, nq, int(HW), scale, p, c.dt, c.st);
      c.gemm.matmul(c.st, false, false, nq, C, int(HW), 1.f, p, c.dt, int(HW), base + 2 * C * es, c.dt, 3 * C, 0.f,
                    static_cast<char*>(o) + (size_t(b) * HW + q0) * C * es, c.dt, C);
    }
  }
  linear(c, a.out, int(B * HW), In{o, c.dt, C}, Out{out, c.dt, C}, Epi::Bias, x);  // + residual
}

void VaeBlocks::check_ctx(const Ctx& c, const char* who) const {
  if (c.dt != compute)
    throw std::runtime_error(std::string(who) + ": activation type " + dname(c.dt) +
                             " differs from the weights' type " + dname(compute));
  if (c.conv && c.dt != DType::BF16) throw std::runtime_error(std::string(who) + ": cuDNN convolutions are bf16 only");
}

void VaeBlocks::mid(Ctx& c, const Mid& m, void*& a, void*& b, int B, int H, int W) {
  resnet(c, m.r0, a, B, H, W, b);
  attention(c, m.attn, b, B, H, W, a);
  resnet(c, m.r1, a, B, H, W, b);
  std::swap(a, b);  // result in a
}

}  // namespace fq
