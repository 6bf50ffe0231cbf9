// The FLUX transformer (FluxTransformer2DModel): double-stream and single-stream blocks with adaLN modulation.
// The model is written once, as block functions (embed, double block, single block, final layer) over a step
// state that the job owns (FluxStep); the modulation layout and the benchmark's GEMM list come from the same
// definitions, and a hook sees every block boundary (step caching attaches there).
#pragma once
#include <functional>
#include <vector>

#include "json.h"
#include "kernels/kernels.h"
#include "weights.h"

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

// Per-job state of one denoising step, sized for (B, L, T) when the job is prepared and owned by it: residual
// streams, every GEMM input and output, the step's modulation rows and the step index, all in device memory, so
// the step touches no shared scratch and can be captured once and replayed (CUDA graph).
struct FluxStep {
  int B = 0, L = 0, T = 0;
  // Residual streams, fp32: image [BL, D], text [BT, D], joint [BS, D].
  float *x = nullptr, *ctx = nullptr, *z = nullptr;
  // A branch's output [rows, D] before its gated add (attention out-projection, MLP out, single proj_out), in yt:
  // fp32, or bf16 for a job asking for it on a bf16 engine (alloc_step's branch_bf16); sized for fp32.
  void* y = nullptr;
  DType yt = DType::F32;
  void *xn = nullptr, *cn = nullptr;  // LayerNorm outputs [BS, D] in the consumer's type (compute type or fp8)
  float *xn_scale = nullptr, *cn_scale = nullptr, *xn_ws = nullptr, *cn_ws = nullptr;  // fp8 scale; amax + row stats
  void *qkv_i = nullptr, *qkv_t = nullptr, *Q = nullptr, *K = nullptr, *V = nullptr, *a = nullptr, *hid = nullptr,
       *lat_t = nullptr;
  // Row strides of the block Linears' inputs: each is its width plus the engine's LoRA reserve (FluxTransformer::
  // lora_reserve, linear.h): xn / cn (D + r), a (the double blocks' attention output, D + r), hid as the double
  // blocks' MLP hidden (4D + r) and as the single blocks' [attn | mlp] concat (5D + r).
  int ldn = 0, lda = 0, ldf = 0, ldc = 0;
  float* mods = nullptr;  // this step's modulation: block k's rows [B, W_k] at mod_offset(k) * B
  // Per-sample step indices and schedule positions, device [B] each (kernels.h SampleSchedule; one allocation of
  // 5B ints at `sched.step`): select each sample's modulation rows; the engine's Euler update advances them.
  // alloc_step sets prepare's layout (step 0, row0 = b, rstride = B, sig0 = 0, nsteps unbounded).
  SampleSchedule sched;
  // BFL Control: the job's packed control latents [B, L, ctrl_ch] fp32 (fixed for the job), read by every step's
  // x_embedder as lat_t = [latents; control] [B*L, in + ctrl_ch]; null / 0 without a control LoRA set.
  const float* ctrl = nullptr;
  int ctrl_ch = 0;
};

// The largest FQ_LORA_RESERVE (columns per block Linear row; a set's summed rank per layer above the reserve takes
// the two-GEMM paths).
constexpr int kMaxLoraReserve = 512;

enum class BlockKind { Embed, Double, Single, Final };
struct BlockEvent {
  bool after;  // false: before the block runs, true: after
  BlockKind kind;
  int index;   // block index within its kind
  FluxStep& state;
};
using BlockHook = std::function<void(const BlockEvent&)>;

class FluxTransformer {
 public:
  FluxTransformer(const FluxConfig& cfg, WeightLoader& L);
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
  // The step state for (B, L, T) in `mem`; its step index starts at 0. ctrl_ch: control channels (lat_t's width).
  // branch_bf16: FluxStep::y in bf16 on a bf16 engine (Request::branch_bf16).
  FluxStep alloc_step(DeviceArena& mem, int B, int L, int T, cudaStream_t st, int ctrl_ch = 0,
                      bool branch_bf16 = false) const;
  // Velocity for latents [B, L, in] at each sample's conditioning row of its step (s.sched; mods of R rows):
  // vel [B*L, out] fp32.
  // cs: rope table on device. Enqueues only (no host sync, no allocation once plans exist): capturable.
  void forward(Ctx& c, FluxStep& s, const float* latents, const float* ctx0, const float* mods, int R, const float* cs,
               float* vel);
  // forward() in two parts, for step caching (engine.h StepCache): the head (embed, double block 0: s.x is then the
  // image stream after block 0; x_before, when not null, receives the stream before it [B*L, D] fp32) and the tail
  // (the other blocks and the final layer: s.x is then the image stream after the last block). forward() is exactly
  // head + tail.
  void forward_head(Ctx& c, FluxStep& s, const float* latents, const float* ctx0, const float* mods, int R,
                    const float* cs, float* x_before);
  void forward_tail(Ctx& c, FluxStep& s, const float* cs, float* vel);
  // The final layer's norm_out + proj_out of the image stream s.x as it stands (a cached step's output); hooks see
  // it as the Final block.
  void output_from_x(Ctx& c, FluxStep& s, float* vel);
  // Conditioning rows from one layout to another (a regrouped job, Engine::regroup): for every modulation block,
  // dst row dst_row0 + r = src row map[r] (r < count; map on the device). src has Rs rows, dst Rd.
  void copy_rows(Ctx& c, const float* src, int64_t Rs, float* dst, int64_t Rd, int64_t dst_row0, const int* map,
                 int64_t count) const;
  // Every Linear of the transformer (LoRA targets: lora.h keys them by name); the pointers stay valid.
  std::vector<Linear*> linears();
  // Every QK-norm weight slot ("transformer_blocks.<i>.attn.norm_q", ...): BFL Control LoRAs replace them (lora.h).
  std::vector<NormSlot> norm_slots();
  // Called before and after every block of forward() (null: none).
  BlockHook hook;
  // QK-norm + RoPE in place on the joint q|k|v projection, attention reading q, k, v from it with row stride 3D
  // (kernels.h qk_norm_rope_inplace), instead of scattering them into separate Q / K / V buffers. Set from
  // FQ_QKV_INPLACE (default on, 0: off; session 17: 43 ms less per 1024x1024 request); the selftest runs both. Returns what is in effect
  // (off when the head dim does not fit the in-place kernel). Changes the double blocks' q/k/v GEMMs to one per
  // sample and stream when B > 1 (their rows go to the joint layout).
  bool set_qkv_inplace(bool on) { return qkv_inplace_ = on && cfg.head_dim % 4 == 0 && cfg.head_dim <= 128; }
  bool qkv_inplace() const { return qkv_inplace_; }
  // Columns reserved per row for LoRA ranks in the block Linears' bf16 / f32 weights and inputs (linear.h,
  // Linear::ldw): FQ_LORA_RESERVE at load (default 256, the largest rank a LoRA may have), rounded up to 16 (0: none,
  // every adapter takes the two-GEMM paths). An adapter set whose summed rank on a layer fits rides in the layer's own
  // GEMM (session 17 on the H100: +4.9 / +3.7 / +8.7 % at ranks 16 / 64 / 256 on every Linear, bf16).
  int lora_reserve() const { return reserve_; }

  // The model's blocks, exposed for the benchmark and tests.
  void embed(Ctx& c, FluxStep& s, const float* latents, const float* ctx0, const float* mods, int R);
  void double_block(Ctx& c, FluxStep& s, int i, const float* cs);
  void to_joint(Ctx& c, FluxStep& s);
  void single_block(Ctx& c, FluxStep& s, int j, const float* cs);
  void final_layer(Ctx& c, FluxStep& s, float* vel);  // image rows of z -> s.x, then output_layer
  void output_layer(Ctx& c, FluxStep& s, float* vel);  // AdaLayerNormContinuous + proj_out of s.x

 private:
  struct Double {
    Linear mod_img, mod_txt, qkv_img, qkv_txt, out_img, out_txt, ff1_img, ff2_img, ff1_txt, ff2_txt;
    float *nq, *nk, *naq, *nak;
  };
  struct Single {
    Linear mod, qkv, mlp, out;
    float *nq, *nk;
  };
  // ldi: elements between token rows of Q / K / V (H*hd: separate buffers; 3*H*hd: in place in the projection).
  void attention(Ctx& c, int B, int S, int T, const void* Q, const void* K, const void* V, int ldi, OutMap out);
  // A LayerNorm output as its consumer takes it: pointer, type, fp8 scale.
  struct NormOut {
    void* p;
    DType t;
    float* scale;
    In in(int ld) const { return In{p, t, ld, scale}; }
  };
  // LayerNorm + modulation of `rows` rows into o (fp8 with its scale when `consumer` is an fp8 layer).
  // Output rows ldo apart.
  NormOut norm_in(Ctx& c, const Linear& consumer, void* o, int ldo, float* oscale, float* ws, const float* x,
                  int rows, int rpb, const float* shift, const float* scale, int W);
  // x += gate * y (y in yt, rows of D); then, when shift != null, the next LayerNorm + modulation, fused.
  NormOut res_norm(Ctx& c, const Linear* consumer, void* o, int ldo, float* oscale, float* ws, float* x,
                   const void* y, DType yt, const float* gate, int Wg, int rows, int rpb, const float* shift,
                   const float* scale, int Wn);
  // Branch outputs from row `row` on (FluxStep::y).
  Out branch_out(const FluxStep& s, size_t row) const {
    return Out{static_cast<char*>(s.y) + row * cfg.hidden() * dsize(s.yt), s.yt, cfg.hidden()};
  }
  const float* modp(const FluxStep& s, size_t k) const { return s.mods + mod_off_[k] * s.B; }
  void emit(bool after, BlockKind k, int i, FluxStep& s) {
    if (hook) hook(BlockEvent{after, k, i, s});
  }
  DType dt_;
  // FQ_BRANCH_BF16=1: every job's branch outputs in bf16 (alloc_step), as a job's branch_bf16 asks (benchmarks).
  bool branch_bf16_ = false;
  bool qkv_inplace_ = false;
  int reserve_ = 0;
  Linear x_emb_, ctx_emb_, t1_, t2_, g1_, g2_, p1_, p2_, norm_out_, proj_out_;
  std::vector<Double> dbl_;
  std::vector<Single> sgl_;
  // Modulation layout, derived from the blocks: layer k's outputs (width W_k = its `out`) in order.
  std::vector<const Linear*> mod_layers_;
  std::vector<int64_t> mod_off_;  // per modulation layer: offset in units of rows
  std::vector<int> mod_w_;
  int64_t mod_width_ = 0;
  int64_t* mod_off_dev_ = nullptr;  // the same tables on the device (gathering a step's rows)
  int* mod_w_dev_ = nullptr;
};

}  // namespace fq
