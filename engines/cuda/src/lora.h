// LoRA adapters at run time (issue 16). The host parses LoRA files and sends, per engine Linear (keyed by its
// checkpoint name, linear.h), the factors A [r, in] and B [out, r] with alpha/rank already folded into A, and
// optionally an up-bias [out] (BFL Control).
// BFL Control LoRAs (FLUX.1-Canny/Depth-dev-lora) add two things: an x_embedder down factor twice as wide as the
// layer (the step then feeds [latents; control latents], flux.cu), and QK-norm weights that replace the base ones
// while a set holding the LoRA is active (unscaled by the strength, as diffusers loads them; restored by pointer, so
// the base output after a control job is the same to the bit). The registry keeps them on the GPU in the layer's adapter type (bf16, or
// f32 on the f32 path) under a name; a set (names with strengths, one per job) is built from them once and cached:
// per layer A_cat [Rp, in] (members' A stacked on the rank axis), B_cat [out, Rp] (members' B side by side, each
// times its strength), bias_cat = sum strength * bias; Rp = sum of ranks rounded up to 8 (zero rows/columns, exact).
// A set of one LoRA whose rank is already a multiple of 8 copies nothing (unless FQ_LORA_FUSED=0): its layers read the
// loaded factors, with the strength as the down or up product's scale, so switching to it costs no GPU work (session
// 16 on the H100: building a copy of every layer's factors took 9 ms at rank 16 and 20 ms at rank 64 on all 352
// Linears; session 17: 0.3 ms in place). Each bf16 factor of a layer's own width also gets an e4m3 copy of A and
// amax |B| at load, for fp8 layers that take the LoRA along K (linear.h).
// A job holds its set (shared ownership), and a set the LoRAs it reads, so unloading a LoRA never frees memory a
// prepared job or its captured step graph still reads; the memory is returned when the last job using it is
// released (and counted until then).
// Memory is bounded (max_bytes: FQ_LORA_MAX_MB or the load request's `lora_max_mb`): loaded factors plus built sets.
#pragma once
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "active_scope.h"
#include "device_buffer.h"
#include "linear.h"

namespace fq {

// A refused LoRA request, with the host's LoraError code (invalid_file, unmatched_keys, shape_mismatch, bad_rank,
// non_finite, not_found, unsupported, bad_argument) and the offending keys. Never a device fault.
struct LoraFail : std::runtime_error {
  LoraFail(std::string code_, const std::string& msg, std::vector<std::string> keys_ = {})
      : std::runtime_error(msg), code(std::move(code_)), keys(std::move(keys_)) {}
  std::string code;
  std::vector<std::string> keys;
};

// One layer's factors as the host sends them (fp32, alpha/rank folded into a).
struct LoraLayerIn {
  std::string layer;  // the Linear's name without the component: "transformer_blocks.0.attn.to_q+...to_k+...to_v"
  int rank = 0, in = 0, out = 0;
  const float* a = nullptr;     // [rank, in]
  const float* b = nullptr;     // [out, rank]
  const float* bias = nullptr;  // [out] or null
};

// A QK-norm weight a BFL Control LoRA replaces: `norm` is the module, e.g. "transformer_blocks.0.attn.norm_q".
struct LoraNormIn {
  std::string norm;
  int dim = 0;
  const float* w = nullptr;  // [dim]
};

class LoraRegistry;

// A built set: the adapter of every layer any member targets. Immutable once built.
struct AdapterSet {
  ~AdapterSet();
  // Puts every layer's B where the LoRA along K reads it (linear.h place_reserve), outside any capture: before a
  // job's captured step is captured or replayed (another job's set may have been placed since).
  void place(cudaStream_t st) const;
  std::string key;
  size_t signature = 0;  // the set's GEMM shapes (layer, padded rank): same signature, same plans and scratch
  std::vector<std::pair<Linear*, Adapter>> layers;
  // Replaced norms: the slot, the replacement (in mem) and the base pointer to restore.
  struct NormSwap {
    float** slot;
    float* w;
    float* base;
  };
  std::vector<NormSwap> norms;
  int control = 0;  // extra x_embedder input channels a job must supply (control latents), 0: none
  DeviceArena mem;
  size_t bytes = 0;
  std::shared_ptr<size_t> used;  // the registry's byte count (shared: a job may outlive the registry's cache)
  std::vector<std::shared_ptr<const void>> reads;  // the loaded LoRAs whose factors the set reads in place
};

class LoraRegistry {
 public:
  // linears: the transformer's Linears (names "transformer/<checkpoint name>").
  // norms: the QK-norm slots BFL Control LoRAs may replace.
  LoraRegistry(std::vector<Linear*> linears, size_t max_bytes, cudaStream_t st, std::vector<NormSlot> norms = {});
  ~LoraRegistry();
  LoraRegistry(const LoraRegistry&) = delete;
  LoraRegistry& operator=(const LoraRegistry&) = delete;
  // Validates every layer (names, shapes, ranks 1..256, finite values) before changing anything, then uploads; a
  // LoRA of the same name is replaced (cached sets holding it are dropped). Returns its device bytes.
  // A control LoRA's x_embedder factor may be 2x the layer's input (unsupported when the plan made x_embedder fp8);
  // norms are its replacement QK-norm weights.
  size_t load(const std::string& name, const std::vector<LoraLayerIn>& layers,
              const std::vector<LoraNormIn>& norms = {});
  bool unload(const std::string& name);
  // The set of (name, strength) members in order; null for an empty set. @throws LoraFail (not_found, bad_argument,
  // unsupported when over the memory bound or when two members replace a norm with different weights)
  std::shared_ptr<const AdapterSet> select(const std::vector<std::pair<std::string, float>>& members);
  size_t bytes() const { return *used_; }
  size_t max_bytes() const { return max_bytes_; }
  std::vector<std::string> names() const;
  // Sets a set's adapters into its Linears (null: none) for the enqueueing that follows; see AdapterScope.
  void activate(const AdapterSet* s);
  const AdapterSet* active() const { return active_; }

 private:
  struct Factors {
    Linear* target;
    int rank;
    int in;        // A's width: target->in, or 2x for a control x_embedder
    void* a;       // [rank, in] in the adapter type
    void* b;       // [out, rank]
    float* bias;   // [out] or null
    // bf16 adapters of the layer's own width: a in e4m3 with its scale, and amax |b| (Adapter::a8, linear.cu).
    void* a8 = nullptr;
    float* a8_scale = nullptr;
    float* b_amax = nullptr;
  };
  // e4m3 A, its scale and amax |B| for the fp8 LoRA along K, in `mem` (bf16 factors of the layer's width only).
  static void fp8_views(DeviceArena& mem, const void* a, int rank, int in, const void* b, int out, void*& a8,
                        float*& a8_scale, float*& b_amax, cudaStream_t st);
  struct Norm {
    float** slot;
    float* w;                 // [dim] fp32 on the device
    std::vector<float> host;  // the same values (sets compare members' replacements)
  };
  struct Lora {
    ~Lora() {
      if (used) *used -= bytes;
    }
    std::vector<Factors> layers;
    std::vector<Norm> norms;
    int control = 0;
    DeviceArena mem;
    size_t bytes = 0;
    std::shared_ptr<size_t> used;  // counted until freed: a set built on it may outlive its unloading
  };
  // Frees cached sets no job holds until `need` more bytes fit; false when they still do not.
  bool make_room(size_t need);
  void drop_sets_with(const std::string& name);
  std::map<std::string, Linear*> by_name_;
  std::map<std::string, NormSlot> norm_by_name_;
  std::map<float**, float*> norm_base_;  // every slot's base pointer, restored when a set is deactivated
  std::map<std::string, std::shared_ptr<Lora>> loras_;
  std::map<std::string, std::shared_ptr<const AdapterSet>> sets_;
  std::shared_ptr<size_t> used_ = std::make_shared<size_t>(0);  // loaded factors + live sets, device bytes
  size_t max_bytes_;
  cudaStream_t st_;
  bool fused_ = false;  // FQ_LORA_FUSED (constructor): fused deltas and in-place one-LoRA sets
  const AdapterSet* active_ = nullptr;
};

// Activates a set for a scope (a prepare, an eager or captured step) and clears it on exit, so Linears never point
// at a set outside the work of the job that holds it.
using AdapterScope = ActiveScope<LoraRegistry, AdapterSet>;

}  // namespace fq
