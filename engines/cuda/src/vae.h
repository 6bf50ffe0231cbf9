// AutoencoderKL decoder (diffusers layout) on NHWC activations: 3x3 convolutions as im2col + GEMM, GroupNorm,
// nearest x2 upsampling folded into the next convolution's im2col, and a mid-block attention computed in query
// chunks (scores never exceed [chunk, h*w]).
#pragma once
#include <vector>

#include "json.h"
#include "weights.h"

namespace fq {

struct VaeConfig {
  std::vector<int> channels = {128, 256, 512, 512};
  int layers_per_block = 2, groups = 32, latent = 16;
  float scaling = 0.3611f, shift = 0.1159f;
  static VaeConfig from_json(const Json& j);
};

class VaeDecoder {
 public:
  VaeDecoder(const VaeConfig& cfg, WeightLoader& L);
  // Packed latents [B, (h/2)(w/2), 64] for an image of H x W = 8h x 8w -> float CHW [B, 3, H, W] in [0, 1]
  // (chw, device, may be null) and/or RGB8 HWC (rgb, device, may be null).
  void decode(Ctx& c, const float* packed, int B, int H, int W, float* chw, uint8_t* rgb);
  const VaeConfig cfg;

 private:
  struct Conv {
    Linear lin;  // weight [cout, 3, 3, cin] (3x3: in = 9 cin, the im2col row) or [cout, cin] (1x1)
    int cin = 0, cout = 0, k = 3;
    bool present() const { return lin.w != nullptr; }
  };
  struct Resnet {
    float *n1w, *n1b, *n2w, *n2b;
    Conv c1, c2, sc;  // sc absent: identity shortcut
  };
  struct Up {
    std::vector<Resnet> res;
    Conv up;  // absent: no upsampler
  };
  Conv load_conv(WeightLoader& L, const std::string& name, int cout, int cin, int k);
  Resnet load_res(WeightLoader& L, const std::string& p, int cin, int cout);
  void conv(Ctx& c, const Conv& cv, const void* x, int B, int H, int W, bool up2, void* y, const void* resid);
  void resnet(Ctx& c, const Resnet& r, const void* x, int B, int H, int W, void* out);
  void attention(Ctx& c, const void* x, int B, int H, int W, void* out);
  Conv conv_in_, conv_out_;
  Resnet mid0_, mid1_;
  float *attn_nw_, *attn_nb_, *out_nw_, *out_nb_;
  Linear attn_qkv_, attn_out_;
  std::vector<Up> ups_;
};

}  // namespace fq
