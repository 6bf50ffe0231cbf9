// The engine: all four components resident on one GPU, and a request's life cycle (prepare, steps, decode).
#pragma once
#include <array>
#include <functional>
#include <map>
#include <set>
#include <memory>
#include <tuple>
#include <string>
#include <vector>

#include "encoders.h"
#include "flux.h"
#include "lora.h"
#include "plan_variants.h"
#include "precision_plan.h"
#include "vae.h"

namespace fq {

struct ModelConfig {
  ClipConfig clip;
  T5Config t5;
  FluxConfig flux;
  VaeConfig vae;
};

// One generation request. Token ids come from the host tokenizers; sigmas ([steps + 1], last 0) from the host
// scheduler. Latents: explicit packed [B, (H/16)(W/16), 64] fp32, or drawn on the GPU from `seed` when empty
// (the engine's own generator, not PyTorch's).
// Edits (PROTOCOL.md): img2img is plain explicit latents and a cut schedule (host side). True CFG (`cfg_scale` [B]):
// the ids hold 2B rows, the B prompts then the B negative prompts; each step runs the transformer on 2B rows (both
// halves read the same latents) and combines v = neg + scale * (pos - neg). Inpainting (`image_latents`, `noise`,
// `mask`, each packed [B, L, 64]): after every step, lat = (1 - m) * (s * noise + (1 - s) * x0) + m * lat with s the
// next sigma.
struct Request {
  int batch = 1, height = 1024, width = 1024, t5_len = 512;
  std::vector<int> clip_ids, t5_ids;  // [B or 2B, clip.maxpos], [B or 2B, t5_len]
  std::vector<float> sigmas, guidance;  // [steps + 1], [B]
  std::vector<float> latents;
  uint64_t seed = 0;
  std::vector<float> cfg_scale;                    // [B] or empty
  std::vector<float> image_latents, noise, mask;  // [B, L, 64] each, or all empty
  std::vector<std::pair<std::string, float>> loras;  // the job's LoRA set (loaded names, strengths), or empty
  // BFL Control: packed control latents [B, L, 64] (the host's encode of the control image), required exactly when
  // the set holds a control LoRA; uploaded once, concatenated to the latents at every step's x_embedder.
  std::vector<float> control;
  // Step caching (StepCache): on when `step_cache` is set (PROTOCOL.md `prepare` `step_cache`).
  bool step_cache = false;
  float cache_threshold = 0;  // relative L1 change below which a step reuses the cached residual
  int cache_warmup = 1, cache_max_consecutive = 1;  // first steps always full; cached steps in a row at most
  // Benchmark only (not in the protocol): a forced decision per step, 'F' full / 'C' cached, instead of the threshold
  // rule (StepCache::forced). Lets synthetic weights run the cached-step schedule a trained model's plan yields.
  std::string cache_pattern;
  // The job's precision plan: a name given at load (`plans`), or empty for the base plan.
  std::string plan;
  // Branch outputs in bf16 (FluxStep::y; mode XL, PROTOCOL.md `prepare` `branch_bf16`): a bf16 engine's attention
  // out-projections, MLP-outs and single proj_outs write bf16, as diffusers' bf16 Linears do, before the fp32 gated
  // residual add. Ignored by an f32 engine.
  bool branch_bf16 = false;
  int text_batch() const { return cfg_scale.empty() ? batch : 2 * batch; }
};

// A captured denoising step (one per job: it bakes in the job's buffers). Owns the graph and its executable.
class StepGraph {
 public:
  StepGraph() = default;
  StepGraph(const StepGraph&) = delete;
  StepGraph& operator=(const StepGraph&) = delete;
  ~StepGraph();
  cudaGraphExec_t exec = nullptr;
  int epoch = -1;      // the engine's workspace epoch at capture: a change (a moved buffer) makes it stale
  bool failed = false;  // capture failed once for this job: the job runs eagerly
  double capture_ms = 0;
};

// Step caching of one job (First-Block-Cache, the ONNX engine's src/pipeline/flux/step-cache.ts, same rule): every
// step runs the head (embed + double block 0) and measures, per sample, how much block 0's residual r (image stream
// after it minus before it) moved since the last full step: sum|r - r_full| / sum|r_full| (float64 sums). The step
// reuses the cached residual (image stream after the last block minus after block 0, from the last full step) instead
// of running the other blocks when a full step exists, the step index is >= warmup, fewer than max_consecutive steps
// in a row were cached and every sample of the job (all TB rows) is under the threshold. The decision is made on the
// host from the TB sums read back after the head (NOTES.md session 9): the step is three captured graphs, head, then
// tail or reuse, each replayed as the decision says.
struct StepCache {
  float threshold = 0;
  int warmup = 1, max_consecutive = 1;
  float *delta = nullptr;       // [TB, L, D]: the stream before block 0, then this step's block-0 residual r
  float *first_full = nullptr;  // [TB, L, D]: r of the last full step
  float *residual = nullptr;    // [TB, L, D]: the tail's residual of the last full step (after a tail: its input first)
  double *partial = nullptr, *sums = nullptr;  // relative_change_sums scratch, and its [TB, 2] result
  std::vector<double> host;     // the sums read back each step
  bool have = false;            // a full step has run (first_full and residual hold values)
  int skipped = 0;              // cached steps since the last full one
  int full = 0, cached = 0;     // steps run each way (answers report them)
  bool last_cached = false;
  // Request::cache_pattern: when set, step i is cached iff forced[i] == 'C' and a full step exists (steps past its
  // end run full); the head and the sums readback still run, so a forced step costs what a rule-decided one does.
  std::string forced;
  StepGraph head, tail, reuse;
};

// One sample of a job, as the host mirrors it (the device holds the same in the step's SampleSchedule). Every sample
// has its own schedule and step: a joined job's samples started at different steps (PROTOCOL.md `join`). `id` names
// the sample in the protocol (`samples`): prepare's samples are 0..B-1, each join continues the count; ids stay
// with their sample when other samples are released (the job compacts, positions move).
struct JobSample {
  int id = 0, step = 0, steps = 0;
  std::vector<float> sigmas;  // [steps + 1]
  float guidance = 0;
  int row0 = 0, rstride = 1;  // conditioning row of step i: row0 + i * rstride (in the job's mods)
  int sig0 = 0;               // where its sigmas start in the job's sigma buffer
  bool done() const { return step >= steps; }
};

struct Job {
  Request req;
  // TB: the transformer's batch (2B with true CFG, else B); R conditioning rows (TB * steps after prepare).
  // step: engine steps run on the job; steps: step + the most steps any sample has left (both as before for a job
  // never joined: every sample shares the schedule).
  int L = 0, S = 0, R = 0, TB = 0, steps = 0, step = 0;
  std::vector<JobSample> samples;  // [B], in batch order
  int next_sample = 0;             // the id the next joined sample gets
  DeviceArena mem;
  // lat and vel hold TB samples (with true CFG the second half of lat is the first half's copy, made each step).
  float *pooled = nullptr, *t5 = nullptr, *ctx0 = nullptr, *mods = nullptr, *cs = nullptr, *lat = nullptr,
        *vel = nullptr, *sigmas = nullptr;
  float* cfg = nullptr;                                        // [B] true-CFG scales, or null
  float *x0 = nullptr, *noise = nullptr, *mask = nullptr;  // inpainting, [B, L, 64] each, or null
  float* ctrl = nullptr;  // BFL Control latents [TB, L, 64] (a true-CFG negative half is a copy), or null
  FluxStep state;  // the step's buffers and device step index, sized for this job's geometry
  // The job's LoRA set (null: none). Active while the job's work is enqueued (prepare, eager or captured steps), so
  // its captured step bakes the set's pointers in; held here so they stay valid until the job is released.
  std::shared_ptr<const AdapterSet> adapters;
  // The job's precision plan (null: the base): swapped into the Linears while the job's work is enqueued, like the
  // adapters (plan_variants.h); the registry owns it for the engine's life.
  const PlanVariant* plan = nullptr;
  StepGraph graph;
  int replays = 0;  // steps run by graph replay
  std::unique_ptr<StepCache> cache;  // step caching, or null (off: the step is one graph, as before)
};

class Engine {
 public:
  // The plan gives the compute type (F32 conformance or BF16) and each linear layer's weight type.
  explicit Engine(const PrecisionPlan& plan);
  const PrecisionPlan plan;
  std::string precision() const { return plan.name; }
  // CUDA graphs for steps after the first (FQ_GRAPH=0 turns them off): set at construction, may be changed.
  bool use_graphs = true;
  ~Engine();
  struct Component {
    Json config;
    std::unique_ptr<ComponentFiles> files;
  };
  void load_dir(const std::string& dir);  // diffusers layout: text_encoder/, text_encoder_2/, transformer/, vae/
  // A load spec (PROTOCOL.md): per component its files, config and diffusers-name map, as the host resolved them
  // (BFL single files, sharded or prefixed checkpoints). Relative file paths are taken from `base`.
  void load_spec(const Json& spec, const std::string& base);
  void load_model(const std::string& path);  // a diffusers folder, or a load-spec .json file
  void load_synthetic(uint64_t seed);     // FLUX.1-dev sizes, random weights generated on the GPU
  std::unique_ptr<Job> prepare(const Request& r);
  // The job that continues `old` with its samples at positions `keep` (in that order), then the new samples of
  // `add` (null: none), each with its own schedule: `join` (keep all, add) and a partial `release` (keep the rest).
  // New buffers sized for the new batch (the geometry is planned here, as prepare plans one, so the step can be
  // captured without allocating); `old` is left as it was, and the caller drops it. Only plain text-to-image jobs
  // (no true CFG, inpainting, control latents or step caching); `add` must match the job's size, T5 length and
  // LoRA set. Refusals throw messages that begin with `what` ("join" / "release").
  std::unique_ptr<Job> regroup(Job& old, const std::vector<int>& keep, const Request* add, const std::string& what);
  void step(Job& j);
  // Workspace epoch: changes when a buffer a captured step may read moves (scratch growth, cuDNN workspace).
  int epoch() const;
  void decode(Job& j, float* chw, uint8_t* rgb);  // device outputs, either may be null
  // The samples at positions `pos` of the job (in that order), batch |pos| (device outputs, either may be null).
  void decode(Job& j, const std::vector<int>& pos, float* chw, uint8_t* rgb);
  // The VAE encoder: pixels float CHW [B, 3, H, W] in [-1, 1] (device) -> fp32 NCHW mean, logvar [B, 16, H/8, W/8]
  // (device). Throws when the checkpoint has no encoder.
  void encode(const float* pixels, int B, int H, int W, float* mean, float* logvar);
  Ctx ctx() {
    return Ctx{gemm, scratch, st, dt, use_cudnn ? &cudnn : nullptr, use_cudnn_conv ? &cudnn_conv : nullptr, nullptr};
  }
  // The encoder's context: its own compute type (fp32 under force_upcast: im2col + fp32 GEMMs, no cuDNN).
  Ctx encoder_ctx();

  void load_components(std::array<Component, 4>& parts);
  void make_loras();
  void make_plans();
  // Per-job precision plans (load's `plans`): the named plans' alternate weights, made once from the loaded ones.
  // @throws std::runtime_error for a plan that is not supported (plan_variants.h)
  void add_plan(const std::string& name, const PrecisionPlan& p) { plans->add(name, p); }
  void step_eager(Job& j);
  bool capture_step(Job& j);
  // Records `enqueue` into g (false, with g.failed set, when capture fails: the caller runs it eagerly).
  bool capture_into(StepGraph& g, const std::function<void()>& enqueue);
  // A step with step caching: head, host decision, then tail or reuse; each part replayed from its own graph.
  void step_cached(Job& j);
  void cache_head(Job& j);   // embed + block 0, r = stream after - before, the relative change sums
  void cache_tail(Job& j);   // the other blocks and final layer, store r_full and the residual, scheduler update
  void cache_reuse(Job& j);  // stream += cached residual, output layer, scheduler update
  void finish_step(Job& j);  // true-CFG combine, Euler update, inpainting blend (after the velocity)
  // Writes the job's samples (host mirror) to its step's device schedule table; TB rows (a true-CFG negative row
  // B + b mirrors sample b, rows + B: prepare's layout; such jobs are never regrouped).
  void upload_schedule(Job& j);
  // Runs one part of a step: replays g (capturing it first when stale and worth it; true) or enqueues eagerly.
  bool run_part(Job& j, StepGraph& g, void (Engine::*part)(Job&));
  const DType dt;
  ModelConfig cfg;
  DeviceArena weights;
  Gemm gemm;
  Scratch scratch;
  CudnnAttention cudnn;
  bool use_cudnn = false;
  CudnnConv cudnn_conv;
  bool use_cudnn_conv = false;  // bf16 and cuDNN available, unless FQ_CONV=im2col
  std::map<std::tuple<int, int, int>, std::vector<float>> rope_cache_;
  // LoRA adapters of the transformer (lora.h); made at load, bounded by lora_max_bytes.
  std::unique_ptr<LoraRegistry> loras;
  size_t lora_max_bytes = 0;  // set before load: FQ_LORA_MAX_MB (default 4096) or the load request's lora_max_mb
  // The named precision plans (plan_variants.h); made at load, empty until `plans` are added.
  std::unique_ptr<PlanRegistry> plans;
  // Every Linear outside the transformer (name, loaded type): per-job plans must leave their types alone.
  std::vector<std::pair<std::string, DType>> fixed_layers;
  // (B, L, T, LoRA set signature, precision plan id) whose GEMM plans, tuning, scratch and cuDNN plans exist
  std::set<std::tuple<int, int, int, size_t, int, DType>> planned_;
  cudaStream_t st = nullptr;
  std::unique_ptr<ClipText> clip;
  std::unique_ptr<T5Encoder> t5;
  std::unique_ptr<FluxTransformer> flux;
  std::unique_ptr<VaeDecoder> vae;
  std::unique_ptr<VaeEncoder> vae_enc;  // null when the checkpoint has no encoder
  // The encoder's plan (encoder_plan()): its loader reads the VAE file a second time, for encoder.* only.
  PrecisionPlan enc_plan;
};

ModelConfig flux_dev_config();
// The VAE encoder's precision plan: plain fp32 (no rules: weights and activations) when the VAE config says
// force_upcast (FLUX's does, as diffusers' default; it runs once per request), else the engine's own plan.
PrecisionPlan encoder_plan(const PrecisionPlan& engine_plan, const VaeConfig& vae);
std::string device_name();

}  // namespace fq
