#include "vae.h"

#include <algorithm>
#include <cmath>

#include "kernels/kernels.h"

namespace fq {

namespace {
constexpr size_t kIm2colBytes = 256ull << 20;    // im2col chunk budget
constexpr size_t kScoreBytes = 128ull << 20;     // attention score chunk budget
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
  if (j["use_post_quant_conv"].kind == Json::Bool && j["use_post_quant_conv"].b)
    throw std::runtime_error("VAE post_quant_conv not supported (FLUX has none)");
  return c;
}

VaeDecoder::Conv VaeDecoder::load_conv(WeightLoader& L, const std::string& name, int cout, int cin, int k) {
  Conv cv;
  cv.cin = cin;
  cv.cout = cout;
  cv.k = k;
  void* w = L.conv(name + ".weight", cout, cin, k, L.dt());
  cv.lin = L.wrap("vae/" + name, w, L.vec({name + ".bias"}, cout, Init::Bias), cout, k * k * cin);
  return cv;
}

VaeDecoder::Resnet VaeDecoder::load_res(WeightLoader& L, const std::string& p, int cin, int cout) {
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

VaeDecoder::VaeDecoder(const VaeConfig& cfg_, WeightLoader& L) : cfg(cfg_) {
  const DType dt = L.dt();
  DeviceArena& arena = L.arena();
  std::vector<int> rev(cfg.channels.rbegin(), cfg.channels.rend());
  const std::string d = "decoder.";
  int C = rev[0];
  conv_in_ = load_conv(L, d + "conv_in", C, cfg.latent, 3);
  mid0_ = load_res(L, d + "mid_block.resnets.0.", C, C);
  std::string a = d + "mid_block.attentions.0.";
  attn_nw_ = L.vec({a + "group_norm.weight"}, C, Init::NormWeight);
  attn_nb_ = L.vec({a + "group_norm.bias"}, C, Init::NormBias);
  attn_qkv_ = L.linear({a + "to_q", a + "to_k", a + "to_v"}, 3 * C, C);
  attn_out_ = L.linear({a + "to_out.0"}, C, C);
  mid1_ = load_res(L, d + "mid_block.resnets.1.", C, C);
  int prev = C;
  for (size_t k = 0; k < rev.size(); k++) {
    Up up;
    int out = rev[k];
    std::string p = d + "up_blocks." + std::to_string(k) + ".";
    for (int j = 0; j <= cfg.layers_per_block; j++) {
      up.res.push_back(load_res(L, p + "resnets." + std::to_string(j) + ".", j == 0 ? prev : out, out));
    }
    // The last up block has no upsampler; files say so by omitting the key.
    bool has_up = L.synthetic() ? k + 1 < rev.size() : L.has(p + "upsamplers.0.conv.weight");
    if (has_up) up.up = load_conv(L, p + "upsamplers.0.conv", out, out, 3);
    ups_.push_back(std::move(up));
    prev = out;
  }
  out_nw_ = L.vec({d + "conv_norm_out.weight"}, prev, Init::NormWeight);
  out_nb_ = L.vec({d + "conv_norm_out.bias"}, prev, Init::NormBias);
  conv_out_ = load_conv(L, d + "conv_out", 3, prev, 3);
  // Pad the 3 output channels to 8 with zero rows: an output row stride of 3 elements is not 16-byte aligned,
  // which cuBLASLt's tensor-core kernels need. image_out reads the first 3 of every 8.
  const size_t es = dsize(dt), row = size_t(9) * prev * es;
  void* w8 = arena.alloc(8 * row);
  float* b8 = static_cast<float*>(arena.alloc(8 * sizeof(float)));
  cudaStream_t st = L.stream();
  CUDA_CHECK(cudaMemsetAsync(w8, 0, 8 * row, st));
  CUDA_CHECK(cudaMemsetAsync(b8, 0, 8 * sizeof(float), st));
  CUDA_CHECK(cudaMemcpyAsync(w8, conv_out_.lin.w, 3 * row, cudaMemcpyDeviceToDevice, st));
  CUDA_CHECK(cudaMemcpyAsync(b8, conv_out_.lin.b, 3 * sizeof(float), cudaMemcpyDeviceToDevice, st));
  conv_out_.lin = L.wrap("vae/" + d + "conv_out (padded to 8)", w8, b8, 8, 9 * prev);
  conv_out_.cout = 8;
}

// y[B, Ho, Wo, cout] = conv(x[B, H, W, cin]) (+ resid, same shape as y). Ho = 2H when up2.
void VaeDecoder::conv(Ctx& c, const Conv& cv, const void* x, int B, int H, int W, bool up2, void* y,
                      const void* resid) {
  const size_t es = dsize(c.dt);
  const int Ho = up2 ? 2 * H : H, Wo = up2 ? 2 * W : W;
  const int64_t P = int64_t(Ho) * Wo;
  if (cv.k == 1) {
    linear(c, cv.lin, int(B * P), In{x, c.dt, cv.cin}, Out{y, c.dt, cv.cout}, Epi::Bias, resid);
    return;
  }
  if (c.conv) {
    // cuDNN: the upsampled input is materialised (4x the input, far less than an im2col matrix), then bias and
    // residual in one pass over the output.
    const void* src = x;
    if (up2) {
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
      im2col3x3(xb, c.dt, H, W, cv.cin, up2, p0, np, col, c.st);
      size_t off = (size_t(b) * P + p0) * cv.cout * es;
      linear(c, cv.lin, int(np), In{col, c.dt, int(K)}, Out{static_cast<char*>(y) + off, c.dt, cv.cout}, Epi::Bias,
             resid ? static_cast<const char*>(resid) + off : nullptr);
    }
  }
}

void VaeDecoder::resnet(Ctx& c, const Resnet& r, const void* x, int B, int H, int W, void* out) {
  const int64_t P = int64_t(B) * H * W;
  double* ws = c.scratch.getT<double>("vae.gn", 3 * size_t(B) * cfg.groups);
  void* t = c.buf("vae.t", size_t(P) * std::max(r.c1.cin, r.c1.cout));
  void* h = c.buf("vae.h", size_t(P) * r.c1.cout);
  groupnorm(x, c.dt, B, int64_t(H) * W, r.c1.cin, cfg.groups, r.n1w, r.n1b, 1e-6f, true, t, ws, c.st);
  conv(c, r.c1, t, B, H, W, false, h, nullptr);
  groupnorm(h, c.dt, B, int64_t(H) * W, r.c1.cout, cfg.groups, r.n2w, r.n2b, 1e-6f, true, t, ws, c.st);
  const void* resid = x;
  if (r.sc.present()) {
    void* s = c.buf("vae.sc", size_t(P) * r.c1.cout);
    conv(c, r.sc, x, B, H, W, false, s, nullptr);
    resid = s;
  }
  conv(c, r.c2, t, B, H, W, false, out, resid);  // out = conv2(t) + shortcut(x)
}

void VaeDecoder::attention(Ctx& c, const void* x, int B, int H, int W, void* out) {
  const int C = attn_out_.out;
  const int64_t HW = int64_t(H) * W;
  const size_t es = dsize(c.dt);
  double* ws = c.scratch.getT<double>("vae.gn", 3 * size_t(B) * cfg.groups);
  void* t = c.buf("vae.t", size_t(B * HW) * C);
  void* qkv = c.buf("vae.qkv", size_t(B * HW) * 3 * C);
  void* o = c.buf("vae.ao", size_t(B * HW) * C);
  groupnorm(x, c.dt, B, HW, C, cfg.groups, attn_nw_, attn_nb_, 1e-6f, false, t, ws, c.st);
  linear(c, attn_qkv_, int(B * HW), In{t, c.dt, C}, Out{qkv, c.dt, 3 * C});
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
  linear(c, attn_out_, int(B * HW), In{o, c.dt, C}, Out{out, c.dt, C}, Epi::Bias, x);  // + residual
}

void VaeDecoder::decode(Ctx& c, const float* packed, int B, int H, int W, float* chw, uint8_t* rgb) {
  int h = H / 8, w = W / 8;
  // Largest activation: every up block's output at its resolution (after the upsample that follows it).
  size_t maxe = size_t(B) * h * w * std::max(conv_in_.cout, cfg.latent);
  {
    int hh = h, ww = w, prev = conv_in_.cout;
    for (auto& u : ups_) {
      int out = u.res.back().c2.cout;
      maxe = std::max(maxe, size_t(B) * hh * ww * std::max(prev, out));
      if (u.up.present()) {
        hh *= 2;
        ww *= 2;
        maxe = std::max(maxe, size_t(B) * hh * ww * out);
      }
      prev = out;
    }
  }
  void* a = c.buf("vae.a", maxe);
  void* b = c.buf("vae.b", maxe);
  void* z = c.buf("vae.z", size_t(B) * h * w * cfg.latent);
  latents_to_vae(packed, B, h, w, cfg.scaling, cfg.shift, z, c.dt, c.st);
  conv(c, conv_in_, z, B, h, w, false, a, nullptr);
  resnet(c, mid0_, a, B, h, w, b);
  attention(c, b, B, h, w, a);
  resnet(c, mid1_, a, B, h, w, b);
  std::swap(a, b);  // current activation in a
  for (auto& u : ups_) {
    for (auto& r : u.res) {
      resnet(c, r, a, B, h, w, b);
      std::swap(a, b);
    }
    if (u.up.present()) {
      conv(c, u.up, a, B, h, w, true, b, nullptr);
      std::swap(a, b);
      h *= 2;
      w *= 2;
    }
  }
  double* ws = c.scratch.getT<double>("vae.gn", 3 * size_t(B) * cfg.groups);
  int C = conv_out_.cin;
  groupnorm(a, c.dt, B, int64_t(h) * w, C, cfg.groups, out_nw_, out_nb_, 1e-6f, true, b, ws, c.st);
  void* img = c.buf("vae.img", size_t(B) * h * w * conv_out_.cout);
  conv(c, conv_out_, b, B, h, w, false, img, nullptr);
  image_out(img, c.dt, conv_out_.cout, B, h, w, chw, rgb, c.st);
}

}  // namespace fq
