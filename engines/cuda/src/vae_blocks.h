// Building blocks shared by the VAE decoder and encoder (diffusers AutoencoderKL) on NHWC activations: 3x3
// convolutions (cuDNN, or im2col + GEMM; the upsampling x2 and the encoder's stride-2 downsampling folded into the
// im2col read), 1x1 convolutions as plain linears, ResnetBlock2D (GroupNorm + SiLU, conv, GroupNorm + SiLU, conv,
// shortcut), and the mid block's single-head attention computed in query chunks (scores never exceed [chunk, h*w]).
#pragma once
#include <string>
#include <vector>

#include "json.h"
#include "kernels/kernels.h"
#include "weights.h"

namespace fq {

struct VaeConfig {
  std::vector<int> channels = {128, 256, 512, 512};
  int layers_per_block = 2, groups = 32, latent = 16;
  float scaling = 0.3611f, shift = 0.1159f;
  bool quant_conv = false;  // use_quant_conv (FLUX: false); the encoder applies it when set
  // force_upcast (diffusers' default, set in FLUX's config): diffusers runs the VAE in fp32 whatever the pipeline's
  // dtype. The engine runs the encoder in fp32 then (its bf16 error shows directly in inpainting's unmasked pixels,
  // which are the decoded encoder latents); the decoder keeps the engine's type (its bf16 images pass).
  bool force_upcast = true;
  static VaeConfig from_json(const Json& j);
};

class VaeBlocks {
 public:
  // compute: the weight loader's base type, which the activations (Ctx::dt) must match.
  VaeBlocks(const VaeConfig& cfg, DType compute) : cfg(cfg), compute(compute) {}
  const VaeConfig cfg;
  const DType compute;

 protected:
  struct Conv {
    Linear lin;  // weight [cout, 3, 3, cin] (3x3: in = 9 cin, the im2col row) or [cout, cin] (1x1)
    int cin = 0, cout = 0, k = 3;
    bool present() const { return lin.w != nullptr; }
  };
  struct Resnet {
    float *n1w = nullptr, *n1b = nullptr, *n2w = nullptr, *n2b = nullptr;
    Conv c1, c2, sc;  // sc absent: identity shortcut
  };
  struct Attention {
    float *nw = nullptr, *nb = nullptr;
    Linear qkv, out;
  };
  // UNetMidBlock2D of the VAE: resnet, attention, resnet at one width.
  struct Mid {
    Resnet r0, r1;
    Attention attn;
  };
  Conv load_conv(WeightLoader& L, const std::string& name, int cout, int cin, int k);
  // A zero-padded copy of a 3x3 convolution with cout_p >= cout output and cin_p >= cin input channels (16-byte
  // aligned rows for cuBLASLt: the decoder's 3 output channels, the encoder's 3 input channels, padded to 8).
  Conv pad_conv(WeightLoader& L, const Conv& cv, const std::string& name, int cout_p, int cin_p);
  Resnet load_res(WeightLoader& L, const std::string& p, int cin, int cout);
  Mid load_mid(WeightLoader& L, const std::string& p, int C);
  // y[B, Ho, Wo, cout] = conv(x[B, H, W, cin]) (+ resid, same shape as y); Ho = 2H (Up2), H/2 (Down2) or H.
  void conv(Ctx& c, const Conv& cv, const void* x, int B, int H, int W, Resample rs, void* y, const void* resid);
  void resnet(Ctx& c, const Resnet& r, const void* x, int B, int H, int W, void* out);
  void attention(Ctx& c, const Attention& a, const void* x, int B, int H, int W, void* out);
  // The mid block on a (input and result) with b as the other buffer; both hold B*H*W*C.
  void mid(Ctx& c, const Mid& m, void*& a, void*& b, int B, int H, int W);
  // Throws unless c.dt is the type the weights were loaded in (a context made for another component).
  void check_ctx(const Ctx& c, const char* who) const;
};

}  // namespace fq
