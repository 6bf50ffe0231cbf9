// AutoencoderKL (diffusers layout) on NHWC activations: the decoder (latents -> image) and the encoder (image ->
// posterior moments), built from the shared blocks of vae_blocks.h.
#pragma once
#include <vector>

#include "vae_blocks.h"

namespace fq {

class VaeDecoder : public VaeBlocks {
 public:
  VaeDecoder(const VaeConfig& cfg, WeightLoader& L);
  // Packed latents [B, (h/2)(w/2), 64] for an image of H x W = 8h x 8w -> float CHW [B, 3, H, W] in [0, 1]
  // (chw, device, may be null) and/or RGB8 HWC (rgb, device, may be null).
  void decode(Ctx& c, const float* packed, int B, int H, int W, float* chw, uint8_t* rgb);

 private:
  struct Up {
    std::vector<Resnet> res;
    Conv up;  // absent: no upsampler
  };
  Conv conv_in_, conv_out_;
  Mid mid_;
  float *out_nw_, *out_nb_;
  std::vector<Up> ups_;
};

// The encoder: conv_in, down blocks (layers_per_block resnets, then a stride-2 conv with padding (0, 1, 0, 1) except
// in the last block), mid block, GroupNorm + SiLU, conv_out to 2 * latent moment channels, quant_conv when the config
// uses it (FLUX does not). Runs in the type of its loader (Engine: fp32 when the config says force_upcast), with a
// context of that type (Engine::encoder_ctx); its scratch buffers share the decoder's names, sized in that type.
class VaeEncoder : public VaeBlocks {
 public:
  VaeEncoder(const VaeConfig& cfg, WeightLoader& L);
  // Pixels float CHW [B, 3, H, W] in [-1, 1] (device; H, W multiples of 8) -> fp32 NCHW mean and logvar
  // [B, latent, H/8, W/8] (device; logvar clamped to [-30, 20] as diffusers' DiagonalGaussianDistribution).
  void encode(Ctx& c, const float* pixels, int B, int H, int W, float* mean, float* logvar);

 private:
  struct Down {
    std::vector<Resnet> res;
    Conv down;  // absent: no downsampler (the last block)
  };
  Conv conv_in_, conv_out_, quant_;
  Mid mid_;
  float *out_nw_, *out_nb_;
  std::vector<Down> downs_;
};

}  // namespace fq
