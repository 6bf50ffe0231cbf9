// Every matrix product with a weight goes through one entry point: linear(ctx, layer, rows, in, out, epi, resid).
// A Linear remembers what it was loaded from (checkpoint name), the type the precision plan gave its weight, its
// fp8 scale, its bias (fp32, plus a copy in the compute type made at load for cuBLASLt's epilogue) and an optional
// adapter slot. Adding a precision or an adapter touches linear() and the loader only; the model code only says
// which layer runs on which rows, with input/output descriptors (pointer, type, row stride, fp8 scale).
#pragma once
#include <string>
#include <vector>

#include "context.h"

namespace fq {

// Low-rank adapter (LoRA) slot: y += scale (x A^T) B^T (+ bias), A [rank, in], B [out, rank] in the layer's adapter
// type (its weight type; bf16 for fp8 layers), alpha/rank folded into A by the host; the strengths folded into B
// by a set of several LoRAs, or kept as `scale` by a one-LoRA set that reads the loaded factors as they are (lora.h).
// Filled only while a job whose LoRA set targets the layer is being enqueued; null (no cost) otherwise.
struct Adapter {
  const void* a = nullptr;
  const void* b = nullptr;
  int rank = 0;                 // padded to a multiple of 8 (zero rows / columns)
  float scale = 1.f;            // the up product's factor (a one-LoRA set's strength)
  bool fused = false;           // the delta written first, the base product's C operand (linear.cu); else added after
  const float* bias = nullptr;  // [out] fp32 up-bias sum (BFL Control), or null
  // For fp8 layers with reserve columns (linear.cu, the fp8 LoRA along K): A in e4m3 [rank, in] with its per-tensor
  // scale, and amax |B| (B unscaled by `scale`); null where the adapter type is not bf16.
  const void* a8 = nullptr;
  const float* a8_scale = nullptr;
  const float* b_amax = nullptr;
  // Input width of A: the layer's `in`, or wider for a BFL Control set's x_embedder, whose input rows are
  // [latents (in); control latents] (row stride >= this width): the base product reads the first `in` columns (the
  // base weight zero-padded on the right, as diffusers widens it), the adapter all of them.
  int in = 0;
  // Never reused within the process (next_adapter_id): which adapter's B a bf16 / f32 weight's reserve columns hold
  // (Linear::reserve_of). 0: none, B is copied on every call.
  uint64_t id = 0;
};

// A fresh Adapter::id (process-wide counter, never 0).
uint64_t next_adapter_id();

// A weight vector slot a LoRA set may swap while active (BFL Control's QK-norm replacements, lora.h): the pointer
// the model's blocks read when they enqueue, its width, its module name.
struct NormSlot {
  std::string name;
  float** slot;
  int dim;
};

struct Linear {
  std::string name;                 // "<component>/<checkpoint name>" ('+'-joined when parts are stacked)
  int out = 0, in = 0;
  DType wt = DType::F32;            // as the precision plan decided at load
  void* w = nullptr;                // [out, in] in wt, rows ldw apart
  // Row stride of w: `in`, or in + the engine's LoRA reserve for a bf16 / f32 block Linear of an engine loaded with
  // one (FQ_LORA_RESERVE, flux.h): the reserve columns (zero unless a LoRA is applied) receive the adapter's up
  // factor B, and the layer's input rows carry h = x A^T in theirs, so that one GEMM over K = in + rank gives
  // x W^T + h B^T (linear.cu). fp8 / fp8row weights are never padded.
  int ldw = 0;
  // Dequantisation scale(s), device memory: fp8, one per-tensor float; fp8row, [out] per output channel
  // (W[o, :] ~= w[o, :] * w_scale[o]).
  const float* w_scale = nullptr;
  const float* b = nullptr;         // [out] fp32, or null
  const void* b_act = nullptr;      // [out] in the compute type (bf16 runs), made at load; null on the fp32 path
  const Adapter* adapter = nullptr;
  // Whose B the reserve columns of the buffer `reserve_w` hold (Adapter::id; 0: unknown). Host-side record kept by
  // place_reserve, the only writer of a bf16 / f32 reserve: B is copied when the layer's adapter changes, not on every
  // call (linear.cu kcat_product). Tied to the buffer, as a plan swaps w (plan_variants.h).
  mutable const void* reserve_w = nullptr;
  mutable uint64_t reserve_of = 0;
};

// w's row stride (Linears built outside the loader leave ldw 0: contiguous).
inline int weight_ld(const Linear& l) { return l.ldw > 0 ? l.ldw : l.in; }

// The adapter type of a layer: its weight type, bf16 for fp8 and fp8row layers (their adapters read a bf16 view of
// the input).
inline DType adapter_type(const Linear& l) {
  return l.wt == DType::FP8 || l.wt == DType::FP8ROW ? DType::BF16 : l.wt;
}

// Activation operands: pointer, element type, elements between rows; fp8 inputs carry their scale.
struct In {
  const void* p;
  DType t;
  int ld;
  const float* scale = nullptr;
};
struct Out {
  void* p;
  DType t;
  int ld;
};

// y = epi(x W^T + b) (+ resid, which has y's type and stride and may alias y) on `rows` rows. Runs in the layer's
// weight type; an input of another type is converted first (fp8 layers quantise a bf16 input with a per-tensor
// scale into ctx scratch; bf16 layers dequantise an fp8 input). Reports the call to ctx.tap when one is set (the
// benchmark's GEMM list).
// fp8row layers take bf16 or fp32 inputs (any row stride), or an fp8 per-tensor input (a norm written for an fp8
// sibling: dequantised on the fly), quantise them per row (s_x[r] = amax(x[r, :]) / 448) into ctx scratch, run one
// unit-scaled fp8 GEMM into an fp32 scratch product and apply s_x[r] * w_scale[o], the fp32 bias, the GELU and the
// residual in one epilogue kernel: y = epi((x8 w8^T) * (s_x (x) s_w) + b) (+ resid). Outputs f32 or bf16.
// With an adapter, the first path that fits:
// (1) along K, for a bf16 / f32 layer whose weight and input rows have reserve columns for the adapter's rank
//     (Linear::ldw): h = scale x A^T into the input's reserve columns, B into the weight's, one product over
//     K = in + rank (the input buffer's reserve columns are scratch that this call overwrites);
// (1') along K for an fp8 (per-tensor) layer with reserve columns and an adapter of rank % 16 == 0: the down
//     product in fp8 on the quantised input, h and B folded into e4m3 reserves with matched scales (linear.cu);
// (2) fused (Adapter::fused): y = scale (x A^T) B^T (+ its bias) (+ resid) first, then the base product with y as its
//     C operand, the delta landing before the GELU inside the GEMM's epilogue;
// (3) added after: the base product, then y += scale (x A^T) B^T (+ its bias), before the GELU of a BiasGelu layer
//     (the GELU then runs as its own kernel; fp8row GELU layers always come here).
// Paths 2 and 3 feed an fp8 layer's adapter a bf16 view of its input. A wider adapter (its `in` > the layer's, BFL
// Control's x_embedder) needs x already in the layer's type (not fp8), with the extra columns after the first `in`.
void linear(Ctx& c, const Linear& l, int rows, In x, Out y, Epi epi = Epi::Bias, const void* resid = nullptr);
// Whether adapters may ride along K (path 1 above, bf16 / f32 and fp8 layers); on by default. The selftest turns it
// off to compare the paths in one process; not for use while another thread enqueues.
void set_lora_kcat(bool on);
// Copies the adapter's B into a bf16 / f32 layer's weight reserve unless it is there already (Linear::reserve_of);
// a no-op for any other layer or adapter. Enqueued on st; never while a graph is captured: a captured step that
// needs a copy throws (the engine places its job's set before a capture and before each replay, AdapterSet::place).
void place_reserve(const Linear& l, const Adapter& a, cudaStream_t st);

// What a block-level observer sees of a step: every linear (layer, rows, operands) and every attention.
struct StepTap {
  virtual ~StepTap() = default;
  virtual void on_linear(const Linear& l, int rows, const In& x, const Out& y, Epi epi, bool resid) = 0;
  virtual void on_attention(int B, int S, int H, int D, int ldo) = 0;
};

}  // namespace fq
