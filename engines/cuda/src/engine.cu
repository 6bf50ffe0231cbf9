#include "engine.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>

#include "kernels/kernels.h"
#include "profile.h"

namespace fq {

ModelConfig flux_dev_config() { return ModelConfig{}; }  // every config's defaults are FLUX.1-dev's

PrecisionPlan encoder_plan(const PrecisionPlan& engine_plan, const VaeConfig& vae) {
  if (!vae.force_upcast) return engine_plan;
  PrecisionPlan p = PrecisionPlan::named("f32");
  p.name = "f32 (force_upcast)";
  return p;
}

std::string device_name() {
  int dev = 0;
  CUDA_CHECK(cudaGetDevice(&dev));
  cudaDeviceProp p;
  CUDA_CHECK(cudaGetDeviceProperties(&p, dev));
  return p.name;
}

StepGraph::~StepGraph() {
  if (exec) cudaGraphExecDestroy(exec);
}

Engine::Engine(const PrecisionPlan& plan_) : plan(plan_), dt(plan_.base) {
  CUDA_CHECK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
  const char* graphs = getenv("FQ_GRAPH");
  use_graphs = !(graphs && std::string(graphs) == "0");
  const char* pref = getenv("FQ_ATTENTION");
  use_cudnn = dt == DType::BF16 && cudnn.available() && !(pref && std::string(pref) == "own");
  const char* conv = getenv("FQ_CONV");
  use_cudnn_conv = dt == DType::BF16 && cudnn_conv.available() && !(conv && std::string(conv) == "im2col");
  const char* lmb = getenv("FQ_LORA_MAX_MB");
  lora_max_bytes = size_t(lmb ? std::max(0.0, atof(lmb)) : 4096.0) << 20;
}

void Engine::make_loras() {
  loras = std::make_unique<LoraRegistry>(flux->linears(), lora_max_bytes, st, flux->norm_slots());
}

void Engine::make_plans() {
  plans = std::make_unique<PlanRegistry>(plan, flux->linears(), fixed_layers, st);
}

Engine::~Engine() {
  loras.reset();  // before the Linears it points into
  plans.reset();
  clip.reset();
  t5.reset();
  flux.reset();
  vae.reset();
  vae_enc.reset();
  if (st) cudaStreamDestroy(st);
}

void Engine::load_dir(const std::string& dir) {
  std::array<Component, 4> parts;
  const char* sub[4] = {"text_encoder", "text_encoder_2", "transformer", "vae"};
  for (int i = 0; i < 4; i++) {
    parts[i].config = Json::parse(read_text_file(dir + "/" + sub[i] + "/config.json"));
    std::vector<std::string> prefixes{""};
    if (i == 0) prefixes.push_back("text_model.");  // CLIP exports that keep the prefix
    parts[i].files = std::make_unique<ComponentFiles>(dir + "/" + sub[i], prefixes);
  }
  load_components(parts);
}

void Engine::load_spec(const Json& spec, const std::string& base) {
  std::array<Component, 4> parts;
  const char* names[4] = {"text_encoder", "text_encoder_2", "transformer", "vae"};
  for (int i = 0; i < 4; i++) {
    const Json& c = spec["components"][names[i]];
    if (c.kind != Json::Obj) throw std::runtime_error(std::string("load spec: component ") + names[i] + " missing");
    if (c["config"].kind != Json::Obj) throw std::runtime_error(std::string("load spec: ") + names[i] + ".config missing");
    parts[i].config = c["config"];
    std::vector<std::string> files;
    for (auto& f : c["files"].a) files.push_back(!base.empty() && !f.s.empty() && f.s[0] != '/' ? base + "/" + f.s : f.s);
    // map: [[diffusers name, stored name, [[r0, r1], ...]?], ...]
    std::map<std::string, MappedName> map;
    for (auto& e : c["map"].a) {
      if (e.a.size() < 2) throw std::runtime_error(std::string("load spec: bad map entry in ") + names[i]);
      MappedName m{e[1].s, {}};
      if (e.a.size() > 2)
        for (auto& r : e[2].a) m.rows.emplace_back(int64_t(r[0].n), int64_t(r[1].n));
      map[e[0].s] = std::move(m);
    }
    parts[i].files = std::make_unique<ComponentFiles>(files, std::move(map));
  }
  load_components(parts);
}

void Engine::load_model(const std::string& path) {
  const std::string ext = ".json";
  if (path.size() > ext.size() && path.compare(path.size() - ext.size(), ext.size(), ext) == 0) {
    size_t slash = path.find_last_of('/');
    load_spec(Json::parse(read_text_file(path)), slash == std::string::npos ? "." : path.substr(0, slash));
  } else {
    load_dir(path);
  }
}

void Engine::load_components(std::array<Component, 4>& parts) {
  cfg.clip = ClipConfig::from_json(parts[0].config);
  cfg.t5 = T5Config::from_json(parts[1].config);
  cfg.flux = FluxConfig::from_json(parts[2].config);
  cfg.vae = VaeConfig::from_json(parts[3].config);
  // Weight-loader seeds 1-4 only matter in synthetic mode; one loader per component. Strict: each loader ends with
  // finish(), which fails on a checkpoint tensor the model did not read, except those the engine never needs.
  {
    WeightLoader L(parts[0].files.get(), weights, 1, st, plan, "text_encoder");
    L.log = &fixed_layers;
    clip = std::make_unique<ClipText>(cfg.clip, L);
    L.finish({"*position_ids"});  // a buffer some CLIP exports keep
  }
  {
    WeightLoader L(parts[1].files.get(), weights, 2, st, plan, "text_encoder_2");
    L.log = &fixed_layers;
    t5 = std::make_unique<T5Encoder>(cfg.t5, L);
    L.finish({"encoder.embed_tokens.weight"});  // tied to shared.weight, which is read when present
  }
  {
    WeightLoader L(parts[2].files.get(), weights, 3, st, plan, "transformer");
    flux = std::make_unique<FluxTransformer>(cfg.flux, L);
    L.finish({});
  }
  // The VAE: decoder and encoder have one loader each over the same files, because their types may differ (the
  // encoder in fp32 under force_upcast). Each one's finish() skips the other's tensors; the read marks are shared,
  // so a tensor neither reads still fails the load.
  {
    WeightLoader L(parts[3].files.get(), weights, 4, st, plan, "vae");
    L.log = &fixed_layers;
    vae = std::make_unique<VaeDecoder>(cfg.vae, L);
    L.finish({"encoder.*", "quant_conv.*", "post_quant_conv.*"});
  }
  // The encoder (img2img, inpainting) when the checkpoint has one; a decoder-only file still loads.
  vae_enc.reset();
  if (parts[3].files->find("encoder.conv_in.weight")) {
    enc_plan = encoder_plan(plan, cfg.vae);
    WeightLoader L(parts[3].files.get(), weights, 5, st, enc_plan, "vae");
    vae_enc = std::make_unique<VaeEncoder>(cfg.vae, L);
    fprintf(stderr, "[engine] VAE encoder weights and activations: %s\n", enc_plan.name.c_str());
    L.finish(cfg.vae.quant_conv ? std::vector<std::string>{"decoder.*", "post_quant_conv.*"}
                                : std::vector<std::string>{"decoder.*", "quant_conv.*", "post_quant_conv.*"});
  }
  CUDA_CHECK(cudaStreamSynchronize(st));
  make_loras();
  make_plans();
}

void Engine::load_synthetic(uint64_t seed) {
  cfg = flux_dev_config();
  {
    WeightLoader L(nullptr, weights, seed, st, plan, "text_encoder");
    L.log = &fixed_layers;
    clip = std::make_unique<ClipText>(cfg.clip, L);
  }
  {
    WeightLoader L(nullptr, weights, seed + 1, st, plan, "text_encoder_2");
    L.log = &fixed_layers;
    t5 = std::make_unique<T5Encoder>(cfg.t5, L);
  }
  {
    WeightLoader L(nullptr, weights, seed + 2, st, plan, "transformer");
    flux = std::make_unique<FluxTransformer>(cfg.flux, L);
  }
  {
    WeightLoader L(nullptr, weights, seed + 3, st, plan, "vae");
    L.log = &fixed_layers;
    vae = std::make_unique<VaeDecoder>(cfg.vae, L);
  }
  {
    enc_plan = encoder_plan(plan, cfg.vae);  // as for files: fp32 (FLUX's VAE config says force_upcast)
    WeightLoader L(nullptr, weights, seed + 4, st, enc_plan, "vae");
    vae_enc = std::make_unique<VaeEncoder>(cfg.vae, L);
  }
  CUDA_CHECK(cudaStreamSynchronize(st));
  make_loras();
  make_plans();
}

int Engine::epoch() const { return scratch.generation() * 4096 + cudnn.workspace_generation(); }

std::unique_ptr<Job> Engine::prepare(const Request& r) {
  auto j = std::make_unique<Job>();
  j->req = r;
  const int B = r.batch, TB = r.text_batch(), T = r.t5_len, D = cfg.flux.hidden();
  if (r.height % 16 || r.width % 16) throw std::runtime_error("height and width must be multiples of 16");
  if (r.sigmas.size() < 2) throw std::runtime_error("sigmas must hold steps + 1 values");
  if (int(r.guidance.size()) != B) throw std::runtime_error("guidance must hold one value per sample");
  if (!r.cfg_scale.empty() && int(r.cfg_scale.size()) != B)
    throw std::runtime_error("true_cfg must hold one scale per sample");
  if (int(r.clip_ids.size()) != TB * cfg.clip.maxpos)
    throw std::runtime_error(TB == B ? "clip_ids must be [B, 77]" : "clip_ids must be [2B, 77] with true_cfg");
  if (int(r.t5_ids.size()) != TB * T)
    throw std::runtime_error(TB == B ? "t5_ids must be [B, t5_len]" : "t5_ids must be [2B, t5_len] with true_cfg");
  j->L = (r.height / 16) * (r.width / 16);
  j->S = T + j->L;
  j->TB = TB;
  j->steps = int(r.sigmas.size()) - 1;
  j->R = TB * j->steps;
  const int64_t n = int64_t(B) * j->L * 64;  // the samples' latents
  if (!r.latents.empty() && int64_t(r.latents.size()) != n)
    throw std::runtime_error("latents must be [B, (H/16)(W/16), 64]");
  const bool inpaint = !r.image_latents.empty() || !r.noise.empty() || !r.mask.empty();
  if (inpaint && (int64_t(r.image_latents.size()) != n || int64_t(r.noise.size()) != n || int64_t(r.mask.size()) != n))
    throw std::runtime_error("inpainting needs image_latents, noise and mask, each [B, (H/16)(W/16), 64]");
  // The job's precision plan: a name given at load, or the base (unknown names are refused before anything else).
  if (!r.plan.empty() && !plans) throw std::runtime_error("unknown plan '" + r.plan + "' (no model loaded)");
  j->plan = plans ? plans->find(r.plan) : nullptr;
  // The job's LoRA set (built once per distinct set, then cached) and active for everything prepare enqueues: the
  // conditioning GEMMs (time/guidance/text embedders, every block's modulation) are LoRA targets too.
  j->adapters = loras ? loras->select(r.loras) : nullptr;
  // BFL Control: control latents exactly when the set holds a control LoRA (its widened x_embedder reads them).
  const int ctrl_ch = j->adapters ? j->adapters->control : 0;
  if (ctrl_ch && ctrl_ch != cfg.flux.in_channels)
    throw LoraFail("unsupported", "the set's x_embedder reads " + std::to_string(ctrl_ch) + " control channels, the "
                                  "control latents have " + std::to_string(cfg.flux.in_channels));
  if (ctrl_ch && int64_t(r.control.size()) != n)
    throw LoraFail("bad_argument", "the LoRA set holds a BFL Control LoRA: prepare needs control latents [B, L, 64]");
  if (!ctrl_ch && !r.control.empty())
    throw LoraFail("bad_argument", "control latents need a BFL Control LoRA in the job's LoRA set");
  // The job's precision plan, swapped in for everything prepare enqueues, as the LoRA set is: the conditioning
  // GEMMs and the planning forward run in it.
  PlanScope plan_scope(plans.get(), j->plan);
  if (ctrl_ch)
    for (auto& [l, a] : j->adapters->layers)
      if (a.in > l->in && (l->wt == DType::FP8 || l->wt == DType::FP8ROW))
        throw LoraFail("unsupported", "a BFL Control LoRA needs a bf16 x_embedder; plan '" + r.plan + "' makes " +
                                          l->name + " " + dname(l->wt), {l->name});
  AdapterScope lora_scope(loras.get(), j->adapters.get());
  auto f32 = [&](size_t k) { return static_cast<float*>(j->mem.alloc(k * 4)); };
  auto put = [&](const std::vector<float>& h) {
    float* d = f32(h.size());
    CUDA_CHECK(cudaMemcpyAsync(d, h.data(), h.size() * 4, cudaMemcpyHostToDevice, st));
    return d;
  };
  j->pooled = f32(size_t(TB) * cfg.clip.hidden);
  j->t5 = f32(size_t(TB) * T * cfg.t5.d_model);
  j->ctx0 = f32(size_t(TB) * T * D);
  j->mods = f32(size_t(j->R) * flux->mod_width());
  j->cs = f32(size_t(j->S) * cfg.flux.head_dim);
  j->lat = f32(size_t(TB) * j->L * 64);
  j->vel = f32(size_t(TB) * j->L * 64);
  j->sigmas = put(r.sigmas);
  if (!r.cfg_scale.empty()) j->cfg = put(r.cfg_scale);
  if (inpaint) {
    j->x0 = put(r.image_latents);
    j->noise = put(r.noise);
    j->mask = put(r.mask);
  }
  j->state = flux->alloc_step(j->mem, TB, j->L, T, st, ctrl_ch, r.branch_bf16);
  // Every sample at step 0 of the one schedule; conditioning row of step i: i * TB + b (conditioning()'s layout).
  j->samples.resize(B);
  for (int b = 0; b < B; b++) {
    JobSample& s = j->samples[b];
    s.id = b;
    s.steps = j->steps;
    s.sigmas = r.sigmas;
    s.guidance = r.guidance[b];
    s.row0 = b;
    s.rstride = TB;
  }
  j->next_sample = B;
  upload_schedule(*j);
  if (r.step_cache) {
    if (!(r.cache_threshold >= 0) || !std::isfinite(r.cache_threshold) || r.cache_warmup < 0 ||
        r.cache_max_consecutive < 0)
      throw std::runtime_error("step_cache: threshold must be finite and >= 0, warmup_steps and max_consecutive >= 0");
    if (r.cache_pattern.find_first_not_of("FC") != std::string::npos)
      throw std::runtime_error("step_cache: a forced pattern holds only F (full) and C (cached)");
    auto& sc = *(j->cache = std::make_unique<StepCache>());
    sc.forced = r.cache_pattern;
    sc.threshold = r.cache_threshold;
    sc.warmup = r.cache_warmup;
    sc.max_consecutive = r.cache_max_consecutive;
    const size_t m = size_t(TB) * j->L * D;
    sc.delta = f32(m);
    sc.first_full = f32(m);
    sc.residual = f32(m);
    // Read by the head's sums before the first full step (not used then): defined values for the sanitizer.
    CUDA_CHECK(cudaMemsetAsync(sc.first_full, 0, m * 4, st));
    sc.partial = static_cast<double*>(j->mem.alloc(size_t(TB) * kRelPartials * 2 * sizeof(double)));
    sc.sums = static_cast<double*>(j->mem.alloc(size_t(TB) * 2 * sizeof(double)));
    sc.host.assign(size_t(TB) * 2, 0.0);
  }
  if (ctrl_ch) {
    // Fixed for the job's life, so a captured step reads the same buffer every replay.
    j->ctrl = put(r.control);
    if (TB != B) {
      float* both = f32(size_t(2) * n);
      CUDA_CHECK(cudaMemcpyAsync(both, j->ctrl, n * 4, cudaMemcpyDeviceToDevice, st));
      CUDA_CHECK(cudaMemcpyAsync(both + n, j->ctrl, n * 4, cudaMemcpyDeviceToDevice, st));
      j->ctrl = both;
    }
    j->state.ctrl = j->ctrl;
  }
  Ctx c = ctx();
  clip->encode(c, r.clip_ids, TB, j->pooled);
  t5->encode(c, r.t5_ids, TB, T, j->t5);
  flux->embed_context(c, j->t5, TB * T, j->ctx0);
  // Model inputs exactly as the pipeline forms them: timestep = float32(sigma * 1000) / 1000. A negative row has its
  // sample's guidance.
  std::vector<float> tin(j->R), gin(j->R);
  for (int i = 0; i < j->steps; i++)
    for (int b = 0; b < TB; b++) {
      tin[i * TB + b] = (r.sigmas[i] * 1000.f) / 1000.f;
      gin[i * TB + b] = r.guidance[b % B];
    }
  flux->conditioning(c, tin, gin, j->pooled, TB, j->steps, j->mods);
  // Text ids are zeros; image ids (0, row, col) in row-major token order.
  std::vector<float> ids(size_t(j->S) * 3, 0.f);
  for (int y = 0; y < r.height / 16; y++)
    for (int x = 0; x < r.width / 16; x++) {
      size_t t = size_t(T) + size_t(y) * (r.width / 16) + x;
      ids[t * 3 + 1] = float(y);
      ids[t * 3 + 2] = float(x);
    }
  // RoPE tables depend only on (T, H, W): computed on the host (float64) once per geometry, then reused.
  auto key = std::make_tuple(T, r.height, r.width);
  auto it = rope_cache_.find(key);
  if (it == rope_cache_.end()) it = rope_cache_.emplace(key, rope_table(cfg.flux, ids, j->S)).first;
  CUDA_CHECK(cudaMemcpyAsync(j->cs, it->second.data(), it->second.size() * 4, cudaMemcpyHostToDevice, st));
  if (r.latents.empty())
    fill_normal(j->lat, DType::F32, n, 0.f, 1.f, r.seed, st);
  else
    CUDA_CHECK(cudaMemcpyAsync(j->lat, r.latents.data(), r.latents.size() * 4, cudaMemcpyHostToDevice, st));
  if (TB != B) CUDA_CHECK(cudaMemcpyAsync(j->lat + n, j->lat, n * 4, cudaMemcpyDeviceToDevice, st));
  // The first job of a geometry plans the step here: one transformer forward (its outputs are discarded: the latents
  // and the step index are untouched) picks and times the GEMM algorithms and builds the cuDNN plans and workspace,
  // so every step, the first included, can be captured without allocating or synchronising.
  // A LoRA set adds GEMM shapes (its padded ranks) and scratch, a precision plan other GEMM types (fp8 plans and
  // scales) and its quantising scratch: both are part of the planning key.
  auto geo = std::make_tuple(TB, j->L, T, j->adapters ? j->adapters->signature : size_t(0), j->plan ? j->plan->id : 0,
                             j->state.yt);
  if (!planned_.count(geo)) {
    flux->forward(c, j->state, j->lat, j->ctx0, j->mods, j->R, j->cs, j->vel);
    planned_.insert(geo);
  }
  // The host vectors (ids, latents, edit inputs) are copied from pageable memory: wait before `r` may go away.
  CUDA_CHECK(cudaStreamSynchronize(st));
  return j;
}

// One step, enqueued: transformer, then lat += (sigma[i+1] - sigma[i]) * vel and the device step index + 1.
// True CFG: the negative half of the latents is refreshed from the positive half first, and the velocities are
// combined before the update. Inpainting: the blend after the update reads the advanced index (the next sigma).
void Engine::step_eager(Job& j) {
  PlanScope plan_scope(plans.get(), j.plan);
  AdapterScope lora_scope(loras.get(), j.adapters.get());
  Ctx c = ctx();
  const int B = j.req.batch;
  const int64_t per = int64_t(j.L) * 64, n = B * per;
  if (j.cfg) CUDA_CHECK(cudaMemcpyAsync(j.lat + n, j.lat, n * 4, cudaMemcpyDeviceToDevice, st));
  flux->forward(c, j.state, j.lat, j.ctx0, j.mods, j.R, j.cs, j.vel);
  finish_step(j);
}

void Engine::finish_step(Job& j) {
  const int B = j.req.batch;
  const int64_t per = int64_t(j.L) * 64;
  ProfScope mark(kProfStepOps, st);
  if (j.cfg) true_cfg_combine(j.vel, B, per, j.cfg, st);
  euler_step_samples(j.lat, j.vel, B, per, j.sigmas, j.state.sched, st);
  if (j.mask) inpaint_blend(j.lat, j.x0, j.noise, j.mask, B, per, j.sigmas, j.state.sched, st);
  advance_steps(j.state.sched, j.TB, st);
}

void Engine::upload_schedule(Job& j) {
  const int B = int(j.samples.size()), TB = j.TB;
  std::vector<int> t(size_t(5) * TB);
  for (int r = 0; r < TB; r++) {
    const JobSample& s = j.samples[r % B];
    t[r] = s.step;
    t[size_t(TB) + r] = s.steps;
    t[size_t(2) * TB + r] = s.row0 + (r >= B ? B : 0);
    t[size_t(3) * TB + r] = s.rstride;
    t[size_t(4) * TB + r] = s.sig0;
  }
  CUDA_CHECK(cudaMemcpyAsync(j.state.sched.step, t.data(), t.size() * 4, cudaMemcpyHostToDevice, st));
  CUDA_CHECK(cudaStreamSynchronize(st));  // `t` is pageable and goes away
}

std::unique_ptr<Job> Engine::regroup(Job& old, const std::vector<int>& keep, const Request* add,
                                     const std::string& what) {
  auto fail = [&](const std::string& m) { return std::runtime_error(what + ": " + m); };
  if (old.cfg || old.mask || old.ctrl || old.cache)
    throw fail("the job has true CFG, inpainting, control latents or step caching: only plain text-to-image jobs "
               "change their batch");
  const int B = old.req.batch, T = old.req.t5_len, D = cfg.flux.hidden(), L = old.L;
  for (size_t i = 0; i < keep.size(); i++)
    if (keep[i] < 0 || keep[i] >= B || std::count(keep.begin(), keep.end(), keep[i]) > 1)
      throw fail("bad sample position");
  const int k = add ? add->batch : 0;
  int add_steps = 0;
  if (add) {
    const Request& r = *add;
    if (k < 1) throw fail("batch must be >= 1");
    if (r.height != old.req.height || r.width != old.req.width)
      throw fail("size " + std::to_string(r.width) + "x" + std::to_string(r.height) + " differs from the job's " +
                 std::to_string(old.req.width) + "x" + std::to_string(old.req.height));
    if (r.t5_len != T) throw fail("t5_len differs from the job's (" + std::to_string(T) + ")");
    if (!r.cfg_scale.empty()) throw fail("true CFG samples cannot join (a job's rows are 2B with true CFG)");
    if (!r.image_latents.empty() || !r.noise.empty() || !r.mask.empty()) throw fail("inpainting samples cannot join");
    if (!r.control.empty()) throw fail("control latents cannot join");
    if (r.step_cache) throw fail("step caching is per job: joining samples cannot ask for it");
    if (r.sigmas.size() < 2) throw fail("sigmas must hold steps + 1 values");
    if (int(r.guidance.size()) != k) throw fail("guidance must hold one value per sample");
    if (int(r.clip_ids.size()) != k * cfg.clip.maxpos) throw fail("clip_ids must be [B, 77]");
    if (int(r.t5_ids.size()) != k * T) throw fail("t5_ids must be [B, t5_len]");
    if (!r.latents.empty() && int64_t(r.latents.size()) != int64_t(k) * L * 64)
      throw fail("latents must be [B, (H/16)(W/16), 64]");
    // The job's captured step bakes in its LoRA set's pointers: joiners must name the same set (the registry
    // caches a set by its members and strengths, so the same set is the same object).
    auto set = loras ? loras->select(r.loras) : nullptr;
    if (set != old.adapters) throw fail("the LoRA set differs from the job's (LoRA sets never share a job)");
    // Likewise its precision plan's weights (swapped in by pointer while the job is enqueued).
    if (r.plan != old.req.plan) throw fail("the precision plan differs from the job's (plans never share a job)");
    if (r.branch_bf16 != old.req.branch_bf16) throw fail("branch_bf16 differs from the job's (the mode's own step)");
    add_steps = int(r.sigmas.size()) - 1;
  }
  const int B2 = int(keep.size()) + k;
  if (B2 < 1) throw fail("no samples left");
  auto j = std::make_unique<Job>();
  // The job-level request: size, T5 length, LoRA set and seed as before; the batch and guidance of the new batch.
  Request& q = j->req;
  q.batch = B2;
  q.height = old.req.height;
  q.width = old.req.width;
  q.t5_len = T;
  q.loras = old.req.loras;
  q.plan = old.req.plan;
  q.branch_bf16 = old.req.branch_bf16;
  q.seed = old.req.seed;
  j->L = L;
  j->S = old.S;
  j->TB = B2;
  j->adapters = old.adapters;
  j->plan = old.plan;
  j->next_sample = old.next_sample;
  j->step = old.step;
  // Samples: the kept ones as they are, then the new ones at step 0 of their own schedule. Conditioning rows are
  // laid out again, sample after sample (row0 = the sum of the previous samples' steps, rstride 1), so rows of
  // released samples go with them; sigmas likewise (sig0 = the sum of the previous samples' steps + 1).
  for (int p : keep) j->samples.push_back(old.samples[p]);
  for (int b = 0; b < k; b++) {
    JobSample s;
    s.id = j->next_sample++;
    s.steps = add_steps;
    s.sigmas = add->sigmas;
    s.guidance = add->guidance[b];
    j->samples.push_back(std::move(s));
  }
  std::vector<int> old_rows, new_rows;  // source row of each destination row: kept samples from old.mods, new ones
  std::vector<float> sig;               // from the joiners' conditioning (rows i * k + b)
  int rows = 0, remaining = 0;
  for (int b = 0; b < B2; b++) {
    JobSample& s = j->samples[b];
    for (int i = 0; i < s.steps; i++)
      (b < int(keep.size()) ? old_rows : new_rows).push_back(b < int(keep.size()) ? s.row0 + i * s.rstride
                                                                                   : i * k + (b - int(keep.size())));
    s.row0 = rows;
    s.rstride = 1;
    rows += s.steps;
    s.sig0 = int(sig.size());
    sig.insert(sig.end(), s.sigmas.begin(), s.sigmas.end());
    remaining = std::max(remaining, s.steps - s.step);
    q.guidance.push_back(s.guidance);
  }
  q.sigmas = j->samples[0].sigmas;
  j->R = rows;
  j->steps = j->step + remaining;
  PlanScope plan_scope(plans.get(), j->plan);  // the job's precision plan, as prepare has it
  AdapterScope lora_scope(loras.get(), j->adapters.get());
  DeviceArena tmp;  // the joiners' encoder outputs, conditioning and row maps: freed once the job is built
  auto f32 = [&](DeviceArena& a, size_t n) { return static_cast<float*>(a.alloc(n * 4)); };
  const int64_t per = int64_t(L) * 64;
  j->ctx0 = f32(j->mem, size_t(B2) * T * D);
  j->mods = f32(j->mem, size_t(rows) * flux->mod_width());
  j->cs = f32(j->mem, size_t(j->S) * cfg.flux.head_dim);
  j->lat = f32(j->mem, size_t(B2) * per);
  j->vel = f32(j->mem, size_t(B2) * per);
  j->sigmas = f32(j->mem, sig.size());
  CUDA_CHECK(cudaMemcpyAsync(j->sigmas, sig.data(), sig.size() * 4, cudaMemcpyHostToDevice, st));
  CUDA_CHECK(cudaMemcpyAsync(j->cs, old.cs, size_t(j->S) * cfg.flux.head_dim * 4, cudaMemcpyDeviceToDevice, st));
  j->state = flux->alloc_step(j->mem, B2, L, T, st, 0, q.branch_bf16);
  auto put_rows = [&](const std::vector<int>& map) {
    int* d = static_cast<int*>(tmp.alloc(std::max<size_t>(map.size(), 1) * 4));
    CUDA_CHECK(cudaMemcpyAsync(d, map.data(), map.size() * 4, cudaMemcpyHostToDevice, st));
    return d;
  };
  Ctx c = ctx();
  // Kept samples: their text stream, latents and conditioning rows, copied (bit for bit: they go on as they were).
  for (size_t p = 0; p < keep.size(); p++) {
    const size_t t = size_t(T) * D;
    CUDA_CHECK(cudaMemcpyAsync(j->ctx0 + p * t, old.ctx0 + keep[p] * t, t * 4, cudaMemcpyDeviceToDevice, st));
    CUDA_CHECK(cudaMemcpyAsync(j->lat + p * per, old.lat + keep[p] * per, per * 4, cudaMemcpyDeviceToDevice, st));
  }
  flux->copy_rows(c, old.mods, old.R, j->mods, rows, 0, put_rows(old_rows), int64_t(old_rows.size()));
  if (add) {
    // Joiners: prepare's work for k samples (text encoders, context embedder, conditioning of all their steps), into
    // the new buffers after the kept samples. A joiner's numbers are those of the same sample prepared alone.
    const Request& r = *add;
    float* pooled = f32(tmp, size_t(k) * cfg.clip.hidden);
    float* t5o = f32(tmp, size_t(k) * T * cfg.t5.d_model);
    float* mods = f32(tmp, size_t(k) * add_steps * flux->mod_width());
    clip->encode(c, r.clip_ids, k, pooled);
    t5->encode(c, r.t5_ids, k, T, t5o);
    flux->embed_context(c, t5o, k * T, j->ctx0 + keep.size() * size_t(T) * D);
    std::vector<float> tin(size_t(k) * add_steps), gin(tin.size());
    for (int i = 0; i < add_steps; i++)
      for (int b = 0; b < k; b++) {
        tin[size_t(i) * k + b] = (r.sigmas[i] * 1000.f) / 1000.f;
        gin[size_t(i) * k + b] = r.guidance[b];
      }
    flux->conditioning(c, tin, gin, pooled, k, add_steps, mods);
    flux->copy_rows(c, mods, int64_t(k) * add_steps, j->mods, rows, int64_t(old_rows.size()), put_rows(new_rows),
                    int64_t(new_rows.size()));
    float* lat = j->lat + keep.size() * per;
    if (r.latents.empty())
      fill_normal(lat, DType::F32, int64_t(k) * per, 0.f, 1.f, r.seed, st);
    else
      CUDA_CHECK(cudaMemcpyAsync(lat, r.latents.data(), r.latents.size() * 4, cudaMemcpyHostToDevice, st));
  }
  upload_schedule(*j);
  // A new batch size is a new geometry: plan it as prepare does (one forward, outputs discarded; the latents and
  // step indices are untouched), so the job's first step can be captured without allocating.
  auto geo = std::make_tuple(B2, L, T, j->adapters ? j->adapters->signature : size_t(0), j->plan ? j->plan->id : 0,
                             j->state.yt);
  if (!planned_.count(geo)) {
    flux->forward(c, j->state, j->lat, j->ctx0, j->mods, j->R, j->cs, j->vel);
    planned_.insert(geo);
  }
  CUDA_CHECK(cudaStreamSynchronize(st));  // before `tmp` and the host vectors go away
  return j;
}

// Records one step into a CUDA graph. Every input of the step is in device memory (the step index too) and every
// buffer is the job's or fixed, so the same graph replays for each later step. prepare() planned the geometry: GEMM
// plans are tuned, bias copies and cuDNN plans/workspace exist, so nothing allocates or synchronises here.
bool Engine::capture_step(Job& j) { return capture_into(j.graph, [&] { step_eager(j); }); }

bool Engine::capture_into(StepGraph& graph, const std::function<void()>& enqueue) {
  auto t0 = std::chrono::steady_clock::now();
  cudaGraph_t g = nullptr;
  CUDA_CHECK(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
  set_capturing(true);
  std::string why;
  try {
    enqueue();
  } catch (const EngineError& e) {
    if (e.device_fault) {
      set_capturing(false);
      throw;
    }
    why = e.what();
  }
  set_capturing(false);
  cudaError_t e = cudaStreamEndCapture(st, &g);
  if (why.empty() && e != cudaSuccess) why = std::string("end capture: ") + cudaGetErrorString(e);
  if (!why.empty()) {
    cudaGetLastError();
    if (g) cudaGraphDestroy(g);
    fprintf(stderr, "[engine] step capture failed, running eagerly: %s\n", why.c_str());
    graph.failed = true;
    return false;
  }
  if (graph.exec) {
    cudaGraphExecDestroy(graph.exec);
    graph.exec = nullptr;
  }
  cudaError_t ie = cudaGraphInstantiate(&graph.exec, g, 0);
  cudaGraphDestroy(g);
  CUDA_CHECK(ie);
  graph.epoch = epoch();
  graph.capture_ms += std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  return true;
}

void Engine::step(Job& j) {
  if (j.step >= j.steps) throw std::runtime_error("no steps left");
  // The set's B in the weights' reserve (linear.h place_reserve) before any of the step's parts is captured or
  // replayed: outside every graph, once a step, copying only what another job's set replaced.
  if (j.adapters) j.adapters->place(st);
  // The host mirror of the device's advance (advance_steps): every sample not done moves one of its steps.
  auto advanced = [&] {
    j.step++;
    for (JobSample& s : j.samples)
      if (!s.done()) s.step++;
  };
  if (j.cache) {
    step_cached(j);
    advanced();
    return;
  }
  // Steps replay one captured step unless graphs are off, a profiler is timing individual calls, or the capture
  // failed for this job (then it runs eagerly).
  bool replay = false;
  if (use_graphs && !j.graph.failed && !prof_on()) {
    if (j.graph.exec && j.graph.epoch == epoch()) replay = true;
    else if (j.steps - j.step > 1) replay = capture_step(j);  // worth a capture only for two or more replays
  }
  if (replay) {
    CUDA_CHECK(cudaGraphLaunch(j.graph.exec, st));
    after_call("cudaGraphLaunch", __FILE__, __LINE__);
    j.replays++;
  } else {
    step_eager(j);
  }
  advanced();
}

// Step caching (engine.h StepCache). Why three graphs and a host decision rather than one graph with a conditional
// node: NOTES.md session 9.
void Engine::cache_head(Job& j) {
  PlanScope plan_scope(plans.get(), j.plan);
  AdapterScope lora_scope(loras.get(), j.adapters.get());
  Ctx c = ctx();
  StepCache& sc = *j.cache;
  const int64_t n = int64_t(j.req.batch) * j.L * 64, m = int64_t(j.TB) * j.L * cfg.flux.hidden();
  if (j.cfg) CUDA_CHECK(cudaMemcpyAsync(j.lat + n, j.lat, n * 4, cudaMemcpyDeviceToDevice, st));
  flux->forward_head(c, j.state, j.lat, j.ctx0, j.mods, j.R, j.cs, sc.delta);
  ProfScope mark(kProfStepOps, st);
  sub_f32(sc.delta, j.state.x, sc.delta, m, st);  // r = after block 0 - before [TB, L, D]
  // Before the first full step first_full holds garbage: the sums are then computed but not read.
  relative_change_sums(sc.delta, sc.first_full, j.TB, m / j.TB, sc.partial, sc.sums, st);
}

void Engine::cache_tail(Job& j) {
  PlanScope plan_scope(plans.get(), j.plan);
  AdapterScope lora_scope(loras.get(), j.adapters.get());
  Ctx c = ctx();
  StepCache& sc = *j.cache;
  const size_t m = size_t(j.TB) * j.L * cfg.flux.hidden();
  {
    ProfScope mark(kProfStepOps, st);
    CUDA_CHECK(cudaMemcpyAsync(sc.residual, j.state.x, m * 4, cudaMemcpyDeviceToDevice, st));  // the tail's input
  }
  flux->forward_tail(c, j.state, j.cs, j.vel);
  {
    ProfScope mark(kProfStepOps, st);
    sub_f32(sc.residual, j.state.x, sc.residual, int64_t(m), st);  // after the last block - after block 0
    CUDA_CHECK(cudaMemcpyAsync(sc.first_full, sc.delta, m * 4, cudaMemcpyDeviceToDevice, st));
  }
  finish_step(j);
}

void Engine::cache_reuse(Job& j) {
  PlanScope plan_scope(plans.get(), j.plan);
  AdapterScope lora_scope(loras.get(), j.adapters.get());
  Ctx c = ctx();
  StepCache& sc = *j.cache;
  {
    ProfScope mark(kProfStepOps, st);
    add_f32(j.state.x, sc.residual, int64_t(j.TB) * j.L * cfg.flux.hidden(), st);
  }
  flux->output_from_x(c, j.state, j.vel);
  finish_step(j);
}

bool Engine::run_part(Job& j, StepGraph& g, void (Engine::*part)(Job&)) {
  bool replay = false;
  if (use_graphs && !g.failed && !prof_on()) {
    if (g.exec && g.epoch == epoch()) replay = true;
    else if (j.steps - j.step > 1) replay = capture_into(g, [&] { (this->*part)(j); });
  }
  if (replay) {
    CUDA_CHECK(cudaGraphLaunch(g.exec, st));
    after_call("cudaGraphLaunch", __FILE__, __LINE__);
  } else {
    (this->*part)(j);
  }
  return replay;
}

void Engine::step_cached(Job& j) {
  StepCache& sc = *j.cache;
  if (run_part(j, sc.head, &Engine::cache_head)) j.replays++;  // counted once a step, by its head
  // The decision: the same rule as the ONNX engine's StepCache.run (all samples of the job, or none, skip).
  bool skip = sc.have && j.step >= sc.warmup && sc.skipped < sc.max_consecutive;
  // A forced pattern (benchmarks): its own decision, but the sums are read back whenever the rule would read them
  // (or the pattern caches), so a forced step costs what a rule-decided one does.
  const bool forced = !sc.forced.empty();
  const bool forced_skip = forced && sc.have && j.step < int(sc.forced.size()) && sc.forced[j.step] == 'C';
  if (skip || forced_skip) {
    CUDA_CHECK(cudaMemcpyAsync(sc.host.data(), sc.sums, sc.host.size() * sizeof(double), cudaMemcpyDeviceToHost, st));
    CUDA_CHECK(cudaStreamSynchronize(st));
    for (int b = 0; b < j.TB && skip; b++) {
      const double num = sc.host[2 * b], den = sc.host[2 * b + 1];
      const double change = den > 0 ? num / den : INFINITY;
      skip = change < double(sc.threshold);
    }
  }
  if (forced) skip = forced_skip;
  if (skip) {
    run_part(j, sc.reuse, &Engine::cache_reuse);
    sc.skipped++;
    sc.cached++;
  } else {
    run_part(j, sc.tail, &Engine::cache_tail);
    sc.have = true;
    sc.skipped = 0;
    sc.full++;
  }
  sc.last_cached = skip;
}

void Engine::encode(const float* pixels, int B, int H, int W, float* mean, float* logvar) {
  if (!vae_enc) throw std::runtime_error("the loaded VAE has no encoder (encoder.* tensors): edits need one");
  Ctx c = encoder_ctx();
  vae_enc->encode(c, pixels, B, H, W, mean, logvar);
}

// Its buffers share the decoder's scratch names ("vae.*"), sized in the encoder's type by Ctx::buf: in fp32 the
// encoder's widest activation (B*H*W*128 at full resolution) takes as many bytes as the bf16 decoder's (B*H*W*256);
// "vae.h" (+256 MiB) and the mid attention's buffers (+~150 MiB) grow, ~0.4 GB at 1024x1024, batch 1, over a bf16
// encoder. Scratch growth moves the workspace epoch, so captured steps of live jobs are recaptured once after the
// first encode of a larger geometry (as after a decode).
Ctx Engine::encoder_ctx() {
  if (!vae_enc) throw std::runtime_error("the loaded VAE has no encoder (encoder.* tensors): edits need one");
  Ctx c = ctx();
  c.dt = vae_enc->compute;
  if (c.dt != DType::BF16) {
    c.conv = nullptr;   // cuDNN convolutions are bf16 only: the fp32 encoder runs im2col + fp32 GEMMs
    c.cudnn = nullptr;  // (unused by the VAE: its attention is chunked GEMMs)
  }
  return c;
}

void Engine::decode(Job& j, float* chw, uint8_t* rgb) {
  Ctx c = ctx();
  vae->decode(c, j.lat, j.req.batch, j.req.height, j.req.width, chw, rgb);
}

void Engine::decode(Job& j, const std::vector<int>& pos, float* chw, uint8_t* rgb) {
  bool all = int(pos.size()) == j.req.batch;
  for (size_t i = 0; i < pos.size() && all; i++) all = pos[i] == int(i);
  if (all) return decode(j, chw, rgb);
  // The chosen samples' latents gathered into one batch [n, L, 64] (scratch), then one VAE decode of n samples.
  const int64_t per = int64_t(j.L) * 64;
  float* lat = scratch.getT<float>("engine.decode_lat", size_t(pos.size()) * per);
  for (size_t i = 0; i < pos.size(); i++)
    CUDA_CHECK(cudaMemcpyAsync(lat + i * per, j.lat + pos[i] * per, per * 4, cudaMemcpyDeviceToDevice, st));
  Ctx c = ctx();
  vae->decode(c, lat, int(pos.size()), j.req.height, j.req.width, chw, rgb);
}

}  // namespace fq
