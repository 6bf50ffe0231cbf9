// Launchers of the engine's own CUDA kernels. Row-major tensors; "rows" are tokens (batch folded in) unless said.
// Activation buffers are DType (F32 or BF16); statistics and residual streams are always fp32.
#pragma once
#include <cstdint>

#include "../common.h"

namespace fq {

enum class Act { Silu, GeluTanh, QuickGelu };

// random.cu: N(mean, std) from a counter-based hash (same values for the same seed on any GPU).
void fill_normal(void* p, DType dt, int64_t n, float mean, float stddev, uint64_t seed, cudaStream_t st);

// elementwise.cu
void cast(const void* in, DType it, void* out, DType ot, int64_t n, cudaStream_t st);
// x[r, c] = act(x[r, c]) for c < cols, rows of stride ld.
void activation(void* x, DType dt, int rows, int cols, int ld, Act a, cudaStream_t st);
// out[r, f] = gelu_tanh(h[r, f]) * h[r, F + f]  (T5 gated-GELU; h = [wi_0 x ; wi_1 x]).
void gated_gelu(const void* h, void* out, DType dt, int rows, int F, cudaStream_t st);
void add_bias(void* y, DType dt, const float* bias, int rows, int cols, int ld, cudaStream_t st);
// y[r, c] += bias[c] (+ resid[r, c] when resid is not null); y and resid contiguous [rows, cols] of type dt.
void add_bias_residual(void* y, DType dt, const float* bias, const void* resid, int64_t rows, int cols,
                       cudaStream_t st);
// out[b, :] = [cos(mult*v[b]*f_k), sin(mult*v[b]*f_k)], f_k = 10000^(-k/half), k < half = dim/2 (cos first).
void timestep_sinus(const float* v, int B, float mult, int dim, float* out, cudaStream_t st);
// lat += dt * vel  (fp32 Euler step of the flow-matching scheduler).
void euler_step(float* lat, const float* vel, int64_t n, float dt, cudaStream_t st);

// step.cu: per-step scalars read on the device (a captured step replays unchanged), per sample: every sample of a
// job has its own step index and schedule (a joined job's samples are at different steps). Device arrays of `rows`
// ints each: sample b is at step step[b] of its nsteps[b]; its conditioning row of step i is row0[b] + i * rstride[b];
// its sigmas start at sigmas[sig0[b]]. A sample with step[b] == nsteps[b] is done (frozen).
struct SampleSchedule {
  int *step = nullptr, *nsteps = nullptr, *row0 = nullptr, *rstride = nullptr, *sig0 = nullptr;
};
// dst = each sample's row of its current step (its last once done), for every block k: src holds block k's
// [R, w[k]] at off[k] * R, dst block k's [B, w[k]] at off[k] * B.
void gather_step_rows(const float* src, int64_t R, int B, const SampleSchedule& sc, const int64_t* off, const int* w,
                      int nblk, float* dst, cudaStream_t st);
// Moves conditioning rows between layouts: for every block k, dst row dst_row0 + r = src row map[r] (r < count;
// map on the device); src has Rs rows a block, dst Rd.
void copy_step_rows(const float* src, int64_t Rs, float* dst, int64_t Rd, int64_t dst_row0, const int* map,
                    int64_t count, const int64_t* off, const int* w, int nblk, cudaStream_t st);
// For the B samples (per values each) not done: lat += (sigmas[sig0 + s + 1] - sigmas[sig0 + s]) * vel, s = step[b].
void euler_step_samples(float* lat, const float* vel, int B, int64_t per, const float* sigmas,
                        const SampleSchedule& sc, cudaStream_t st);
// step[b] += 1 for the `rows` rows not done (after the Euler update and the inpainting blend).
void advance_steps(const SampleSchedule& sc, int rows, cudaStream_t st);
// True CFG: vel[b] = neg + scale[b] * (pos - neg) for the B positive samples, pos = vel[b], neg = vel[B + b]
// (per = L * 64 values a sample; scale: device [B]).
void true_cfg_combine(float* vel, int B, int64_t per, const float* scale, cudaStream_t st);
// Inpainting after the Euler update, before the index advances: with s = the sample's next sigma (0 after its last
// step), lat = (1 - m) * (s * noise + (1 - s) * x0) + m * lat, fp32 in diffusers' order; done samples untouched.
void inpaint_blend(float* lat, const float* x0, const float* noise, const float* mask, int B, int64_t per,
                   const float* sigmas, const SampleSchedule& sc, cudaStream_t st);
// step_cache.cu: First-Block-Cache (engine.h StepCache). out = a - b (out may alias a or b); y += x; fp32.
void sub_f32(float* out, const float* a, const float* b, int64_t n, cudaStream_t st);
void add_f32(float* y, const float* x, int64_t n, cudaStream_t st);
// Per sample b of B (per values each): sums[2b] = sum|a - r|, sums[2b + 1] = sum|r|, in float64 and a fixed order
// (deterministic). partial: device scratch [B, kRelPartials, 2] float64; sums: device [B, 2] float64.
constexpr int kRelPartials = 256;
void relative_change_sums(const float* a, const float* r, int B, int64_t per, double* partial, double* sums,
                          cudaStream_t st);
// out[i, :] = table[ids[i], :] (+ pos[i % seqlen, :] when pos != nullptr); fp32.
void embed_rows(const float* table, const int* ids, const float* pos, int n, int seqlen, int dim, float* out,
                cudaStream_t st);
// Packed latents [B, (h/2)(w/2), 64] -> VAE input NHWC [B, h, w, 16]: z = x / scaling + shift.
void latents_to_vae(const float* packed, int B, int h, int w, float scaling, float shift, void* z, DType dt,
                    cudaStream_t st);
// Decoder output NHWC [B, H, W, cs] (channels 0..2 used) in [-1, 1] -> clamp(x/2 + 0.5): float CHW [B, 3, H, W]
// and/or RGB8 HWC [B, H, W, 3].
void image_out(const void* x, DType dt, int cs, int B, int H, int W, float* chw, uint8_t* rgb, cudaStream_t st);
// Encoder input: float CHW [B, 3, H, W] (in [-1, 1]) -> NHWC [B, H, W, cs], channels 3..cs-1 zero (cs = 8 keeps the
// im2col row 16-byte aligned).
void image_in(const float* chw, int B, int H, int W, int cs, void* x, DType dt, cudaStream_t st);
// Encoder moments NHWC [B, h, w, 2C] -> fp32 NCHW mean [B, C, h, w] and logvar clamped to [-30, 20] (diffusers'
// DiagonalGaussianDistribution).
void vae_moments(const void* m, DType dt, int B, int h, int w, int C, float* mean, float* logvar, cudaStream_t st);
// Packed latents [B, (h/2)(w/2), 64] of the 16-channel posterior: ((mean + exp(logvar/2) * eps) - shift) * scaling,
// fp32, eps NCHW [B, 16, h, w] (null: the mean).
void sample_latents_packed(const float* mean, const float* logvar, const float* eps, int B, int h, int w,
                           float scaling, float shift, float* packed, cudaStream_t st);

// norm.cu
// out = ((LN(x) * gamma + beta) * (1 + scale[b]) + shift[b]); gamma/beta/shift/scale may be null. Row r belongs to
// batch b = r / rows_per_batch; shift/scale of batch b start at b * mod_stride. Output rows ldo apart (0: D; the LoRA
// reserve columns after D are left as they are, linear.h).
void layernorm(const float* x, int rows, int D, int rows_per_batch, const float* gamma, const float* beta,
               const float* shift, const float* scale, int mod_stride, float eps, void* out, DType ot,
               cudaStream_t st, int ldo = 0);
// x[r, :] += gate[b, :] * y[r, :]  (gate null: plain add). y rows have stride ldy.
void gate_residual(float* x, const void* y, DType yt, int ldy, const float* gate, int mod_stride, int rows, int D,
                   int rows_per_batch, cudaStream_t st);
// Fused: x += gate[b] * y, then out = LN(x) * (1 + scale[b]) + shift[b] (one read of x instead of three).
// ot == FP8: writes per-row (mean, rstd) to stats and the global amax instead of out (quantise with
// layernorm_mod_fp8_apply). Returns false (nothing launched) when D is too wide for the fused kernel.
bool residual_layernorm(float* x, const void* y, DType yt, int ldy, const float* gate, int gstride, int rows, int D,
                        int rpb, const float* shift, const float* scale, int mstride, float eps, void* out, DType ot,
                        float* stats, float* amax, cudaStream_t st, int ldo = 0);
// out = x * rsqrt(mean(x^2) + eps) * w  (T5 layer norm).
void rmsnorm(const float* x, int rows, int D, const float* w, float eps, void* out, DType ot, cudaStream_t st);
// GroupNorm over NHWC [B, HW, C] with G groups, statistics in fp64-accumulated fp32; optional SiLU after.
// `ws` holds 3*B*G doubles (sums, centred squares, then float mean/rstd).
void groupnorm(const void* x, DType dt, int B, int64_t HW, int C, int G, const float* gamma, const float* beta,
               float eps, bool silu, void* out, double* ws, cudaStream_t st);

// fp8.cu: per-tensor fp8 (E4M3) quantisation. scale receives the dequantisation factor amax/448 (device float);
// ws: 1 float. layernorm_mod_fp8 is layernorm() with shift/scale modulation writing fp8; ws: 1 + 2*rows floats.
void quantize_fp8(const void* in, DType it, int64_t n, void* out, float* scale, float* ws, cudaStream_t st);
// The same over a [rows, cols] view of rows ld apart (a LoRA-reserving engine's padded activations and weights,
// linear.h), into rows ldo apart (0: contiguous); the columns between are not written.
void quantize_fp8_strided(const void* in, DType it, int64_t rows, int64_t cols, int64_t ld, void* out, float* scale,
                          float* ws, cudaStream_t st, int64_t ldo = 0);
// *amax = max |in[i]| over n elements (F32 / BF16), zeroed first.
void amax_abs(const void* in, DType it, int64_t n, float* amax, cudaStream_t st);
void layernorm_mod_fp8(const float* x, int rows, int D, int rows_per_batch, const float* shift, const float* scale,
                       int mod_stride, float eps, void* out, float* out_scale, float* ws, cudaStream_t st,
                       int ldo = 0);
// Second pass only: ws holds amax then (mean, rstd) per row, as the first pass (or residual_layernorm) left them.
void layernorm_mod_fp8_apply(const float* x, int rows, int D, int rows_per_batch, const float* shift,
                             const float* scale, int mod_stride, void* out, float* out_scale, const float* ws,
                             cudaStream_t st, int ldo = 0);

// fp8row.cu: fp8 (E4M3) with one scale per row (the fp8row weight type, linear.h). quantize_fp8_rows: x [rows, cols]
// (row stride ld) in `it` (F32, BF16, or FP8 with its per-tensor dequantisation scale in_scale) -> out [rows, cols]
// E4M3 contiguous and scales[r] = amax(x[r, :]) / 448 (1 for an all-zero row), x[r, c] ~= out[r, c] * scales[r];
// one block per row, no workspace. Weights [out, in] get per-output-channel scales, activations per-token ones.
void quantize_fp8_rows(const void* in, DType it, int ld, const float* in_scale, int rows, int cols, void* out,
                       float* scales, cudaStream_t st);
// y[r, o] = act(acc[r, o] * sx[r] * sw[o] + bias[o]) (+ resid[r, o]): acc the fp32 [rows, n] product of the fp8 rows,
// y and resid (may alias y, or null) in yt (F32/BF16) with row stride ldy; bias fp32 or null; gelu: tanh GELU.
void fp8row_epilogue(const float* acc, int rows, int n, const float* sx, const float* sw, const float* bias, bool gelu,
                     const void* resid, void* y, DType yt, int ldy, cudaStream_t st);
// A device float 1.0, 16-byte aligned: the scale cuBLASLt gets for fp8 operands whose scales are applied after.
const float* fp8_unit_scale();

// lora.cu: LoRA adapter sets. lora_pack_up: dst[o, off + j] = s * src[o, j] (src [out, r], dst rows of ld, F32/BF16).
// axpy_f32: y += s * x. dequantize_fp8: out[r, c] = q[r, c] * *scale, q fp8 rows of ld, out bf16 [rows, cols].
void lora_pack_up(const void* src, DType dt, int out, int r, float s, void* dst, int ld, int off, cudaStream_t st);
// The fp8 LoRA along K (linear.cu): h' [rows, r] and B [out, r] (bf16, contiguous) into E4M3 reserve columns of the
// input rows (xres, rows ldx apart) and of the weight rows (wres, ldw apart), scaled by the amaxes so that
// s_x s_w (h_q B'_q^T) = s_x h' B^T with both operands' largest magnitudes equal (lora.cu).
void lora_fold_fp8(const void* h, int rows, int r, const void* B, int out, const float* h_amax, const float* b_amax,
                   const float* s_w, void* xres, int ldx, void* wres, int ldw, cudaStream_t st);
void axpy_f32(float* y, const float* x, float s, int n, cudaStream_t st);
void dequantize_fp8(const void* q, int ld, const float* scale, int rows, int cols, void* out, cudaStream_t st);
// BFL Control input: out[r, :] = [a[r, 0:ca]; b[r, 0:cb]] in type t (F32/BF16), a, b fp32 [rows, ca], [rows, cb].
void concat_features(const float* a, int ca, const float* b, int cb, int64_t rows, void* out, DType t, cudaStream_t st);

// rope.cu: qkv rows [B*n, ld] hold q|k|v (each H*D). For token i of batch b, joint position p = off + i:
// q, k get RMSNorm over D (weights wq, wk, eps 1e-6) then interleaved-pair RoPE with cs[p, j] = (cos, sin);
// q, k, v are written to [B, S, H, D] at position p.
void qk_norm_rope(const void* qkv, DType it, int ld, int B, int n, int off, int S, int H, int D, const float* wq,
                  const float* wk, const float* cs, void* Q, void* K, void* V, DType ot, cudaStream_t st);
// The same normalisation and rotation in place, on a joint projection [B*S, ld] whose row i of sample b holds
// q|k|v of joint position i (text rows first): rows with i < split use (wq0, wk0), the others (wq1, wk1); v is left
// where it is (attention reads q, k, v from this buffer with row stride ld). Half the traffic of the scatter (no v
// copy, no separate Q/K/V). Needs D % 4 == 0, D <= 128, ld % 4 == 0 and a 16-byte-aligned buffer (throws otherwise).
void qk_norm_rope_inplace(void* qkv, DType dt, int ld, int B, int S, int split, int H, int D, const float* wq0,
                          const float* wk0, const float* wq1, const float* wk1, const float* cs, cudaStream_t st);

// attention.cu: softmax(scale * q k^T + bias) v with fp32 accumulation, one warp per query row. Rows of q/k/v have
// strides ldq/ldk/ldv, head h at column h*D, batch b at b*bstride. bias: [H, Sq, Sk] shared across the batch.
void attention_rows(const void* q, const void* k, const void* v, DType dt, int ldq, int ldk, int ldv,
                    int64_t bstride_q, int64_t bstride_kv, int B, int Sq, int Sk, int H, int D, float scale,
                    bool causal, const float* bias, OutMap out, cudaStream_t st);
// Row softmax of scale*s ([rows, cols] fp32) written as p in dt (chunked VAE attention).
void softmax_rows(const float* s, int rows, int cols, float scale, void* p, DType dt, cudaStream_t st);

// flash_attention.cu: bf16 flash attention on tensor cores (mma.sync m16n8k16, fp32 accumulation).
// q, k, v: [B, S, H, D] with rows of ldi elements (0: H*D; 3*H*D reads a packed q|k|v projection in place),
// D in {16, 32, 64, 128}. Returns false when D or ldi is unsupported.
bool flash_attention(const void* q, const void* k, const void* v, int B, int S, int H, int D, float scale,
                     OutMap out, cudaStream_t st, int ldi = 0);

// conv.cu
// Nearest x2 upsampling of NHWC images: y[B, 2H, 2W, C].
void upsample_nearest2x(const void* x, DType dt, int B, int H, int W, int C, void* y, cudaStream_t st);
// The input grid of a 3x3 convolution: Same (pad 1, stride 1), Up2 (nearest-upsampled x2 first, then pad 1), Down2
// (pad (0, 1, 0, 1), stride 2: the VAE encoder's downsampler; output H/2 x W/2 for even H, W).
enum class Resample { Same, Up2, Down2 };
// im2col of a 3x3 convolution over one NHWC image [H, W, C], for output pixels [p0, p0 + np):
// col[p - p0, (ky*3 + kx)*C + c].
void im2col3x3(const void* x, DType dt, int H, int W, int C, Resample rs, int64_t p0, int64_t np, void* col,
               cudaStream_t st);

}  // namespace fq
