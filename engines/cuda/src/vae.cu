#include "vae.h"

#include <algorithm>

#include "kernels/kernels.h"

namespace fq {

namespace {
// The image side's channel count inside the engine: 3 padded to 8 (an im2col row of 9 * 3 bf16 values, or an output
// row of 3, is not 16-byte aligned, which cuBLASLt's tensor-core kernels need).
constexpr int kImageChannels = 8;
}  // namespace

VaeDecoder::VaeDecoder(const VaeConfig& cfg_, WeightLoader& L) : VaeBlocks(cfg_, L.dt()) {
  std::vector<int> rev(cfg.channels.rbegin(), cfg.channels.rend());
  const std::string d = "decoder.";
  int C = rev[0];
  conv_in_ = load_conv(L, d + "conv_in", C, cfg.latent, 3);
  mid_ = load_mid(L, d + "mid_block.", C);
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
  // 3 output channels padded to 8 with zero rows; image_out reads the first 3 of every 8.
  conv_out_ = pad_conv(L, load_conv(L, d + "conv_out", 3, prev, 3), "vae/" + d + "conv_out (padded to 8)",
                       kImageChannels, prev);
}

void VaeDecoder::decode(Ctx& c, const float* packed, int B, int H, int W, float* chw, uint8_t* rgb) {
  check_ctx(c, "VAE decoder");
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
  conv(c, conv_in_, z, B, h, w, Resample::Same, a, nullptr);
  mid(c, mid_, a, b, B, h, w);
  for (auto& u : ups_) {
    for (auto& r : u.res) {
      resnet(c, r, a, B, h, w, b);
      std::swap(a, b);
    }
    if (u.up.present()) {
      conv(c, u.up, a, B, h, w, Resample::Up2, b, nullptr);
      std::swap(a, b);
      h *= 2;
      w *= 2;
    }
  }
  double* ws = c.scratch.getT<double>("vae.gn", 3 * size_t(B) * cfg.groups);
  int C = conv_out_.cin;
  groupnorm(a, c.dt, B, int64_t(h) * w, C, cfg.groups, out_nw_, out_nb_, 1e-6f, true, b, ws, c.st);
  void* img = c.buf("vae.img", size_t(B) * h * w * conv_out_.cout);
  conv(c, conv_out_, b, B, h, w, Resample::Same, img, nullptr);
  image_out(img, c.dt, conv_out_.cout, B, h, w, chw, rgb, c.st);
}

VaeEncoder::VaeEncoder(const VaeConfig& cfg_, WeightLoader& L) : VaeBlocks(cfg_, L.dt()) {
  const std::string e = "encoder.";
  int prev = cfg.channels[0];
  // 3 input channels padded to 8 with zero weights; image_in writes zeros into the extra input channels.
  conv_in_ = pad_conv(L, load_conv(L, e + "conv_in", prev, 3, 3), "vae/" + e + "conv_in (padded to 8)", prev,
                      kImageChannels);
  for (size_t k = 0; k < cfg.channels.size(); k++) {
    Down dn;
    const int out = cfg.channels[k];
    const std::string p = e + "down_blocks." + std::to_string(k) + ".";
    for (int j = 0; j < cfg.layers_per_block; j++)
      dn.res.push_back(load_res(L, p + "resnets." + std::to_string(j) + ".", j == 0 ? prev : out, out));
    bool has_down = L.synthetic() ? k + 1 < cfg.channels.size() : L.has(p + "downsamplers.0.conv.weight");
    if (has_down) dn.down = load_conv(L, p + "downsamplers.0.conv", out, out, 3);
    downs_.push_back(std::move(dn));
    prev = out;
  }
  mid_ = load_mid(L, e + "mid_block.", prev);
  out_nw_ = L.vec({e + "conv_norm_out.weight"}, prev, Init::NormWeight);
  out_nb_ = L.vec({e + "conv_norm_out.bias"}, prev, Init::NormBias);
  conv_out_ = load_conv(L, e + "conv_out", 2 * cfg.latent, prev, 3);
  if (cfg.quant_conv) quant_ = load_conv(L, "quant_conv", 2 * cfg.latent, 2 * cfg.latent, 1);
}

void VaeEncoder::encode(Ctx& c, const float* pixels, int B, int H, int W, float* mean, float* logvar) {
  if (H % 8 || W % 8) throw std::runtime_error("VAE encoder: height and width must be multiples of 8");
  check_ctx(c, "VAE encoder");
  // Largest activation: each block's widest resnet input/output at its resolution.
  size_t maxe = size_t(B) * H * W * kImageChannels;
  {
    int hh = H, ww = W, prev = conv_in_.cout;
    maxe = std::max(maxe, size_t(B) * hh * ww * prev);
    for (auto& d : downs_) {
      int out = d.res.empty() ? prev : d.res.back().c2.cout;
      maxe = std::max(maxe, size_t(B) * hh * ww * std::max(prev, out));
      if (d.down.present()) {
        hh /= 2;
        ww /= 2;
      }
      prev = out;
    }
    maxe = std::max(maxe, size_t(B) * hh * ww * size_t(2 * cfg.latent));
  }
  void* a = c.buf("vae.a", maxe);
  void* b = c.buf("vae.b", maxe);
  int h = H, w = W;
  image_in(pixels, B, H, W, kImageChannels, b, c.dt, c.st);  // NHWC [B, H, W, 8]
  conv(c, conv_in_, b, B, h, w, Resample::Same, a, nullptr);
  for (auto& d : downs_) {
    for (auto& r : d.res) {
      resnet(c, r, a, B, h, w, b);
      std::swap(a, b);
    }
    if (d.down.present()) {
      conv(c, d.down, a, B, h, w, Resample::Down2, b, nullptr);
      std::swap(a, b);
      h /= 2;
      w /= 2;
    }
  }
  mid(c, mid_, a, b, B, h, w);
  double* ws = c.scratch.getT<double>("vae.gn", 3 * size_t(B) * cfg.groups);
  groupnorm(a, c.dt, B, int64_t(h) * w, conv_out_.cin, cfg.groups, out_nw_, out_nb_, 1e-6f, true, b, ws, c.st);
  conv(c, conv_out_, b, B, h, w, Resample::Same, a, nullptr);  // moments NHWC [B, h, w, 2 latent]
  if (quant_.present()) {
    conv(c, quant_, a, B, h, w, Resample::Same, b, nullptr);
    std::swap(a, b);
  }
  vae_moments(a, c.dt, B, h, w, cfg.latent, mean, logvar, c.st);
}

}  // namespace fq
