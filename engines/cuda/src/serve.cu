// `fluxql-engine --serve` (the default): the framed stdin/stdout protocol of PROTOCOL.md. One request at a time;
// every response carries the request's id. Logs go to stderr only: stdout carries frames.
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>

#include "calibrate.h"
#include "engine.h"
#include "kernels/kernels.h"
#include "lora_protocol.h"
#include "selftest.h"

namespace fq {
namespace {

bool read_exact(void* p, size_t n) {
  auto* c = static_cast<char*>(p);
  while (n) {
    ssize_t r = read(0, c, n);
    if (r <= 0) return false;
    c += r;
    n -= size_t(r);
  }
  return true;
}

void write_exact(const void* p, size_t n) {
  auto* c = static_cast<const char*>(p);
  while (n) {
    ssize_t w = write(1, c, n);
    if (w <= 0) throw std::runtime_error("stdout closed");
    c += w;
    n -= size_t(w);
  }
}

// Frame: u32 LE header length, u32 LE payload length, UTF-8 JSON header, payload bytes.
void send(const std::string& header, const void* payload = nullptr, size_t n = 0) {
  uint32_t h[2] = {uint32_t(header.size()), uint32_t(n)};
  write_exact(h, 8);
  write_exact(header.data(), header.size());
  if (n) write_exact(payload, n);
}

std::string idf(const Json& req) {
  const Json& id = req["id"];
  if (id.kind == Json::Num) return std::to_string(int64_t(id.n));
  if (id.kind == Json::Str) return json_escape(id.s);
  return "null";
}

// A job's step-cache counters as answer fields (empty without step caching); `cached`: whether its last step was.
std::string cache_fields(const Job& j, bool last) {
  if (!j.cache) return "";
  return ",\"full_steps\":" + std::to_string(j.cache->full) + ",\"cached_steps\":" + std::to_string(j.cache->cached) +
         (last ? std::string(",\"cached\":") + (j.cache->last_cached ? "true" : "false") : std::string());
}

std::vector<float> floats(const Json& a) {
  std::vector<float> v;
  for (auto& x : a.a) v.push_back(float(x.n));
  return v;
}

// `,"plans":[{"name","layers","bytes"}]` of a loaded engine: each named precision plan (load's `plans`), the
// transformer Linears it changes and the GPU bytes of their alternate weights.
std::string plan_fields(const Engine& e) {
  if (!e.plans) return "";
  std::string s = ",\"plans\":[";
  for (size_t i = 0; i < e.plans->all().size(); i++) {
    const PlanVariant& v = *e.plans->all()[i];
    s += std::string(i ? "," : "") + "{\"name\":" + json_escape(v.name) + ",\"layers\":" +
         std::to_string(v.layers.size()) + ",\"bytes\":" + std::to_string(v.bytes()) + "}";
  }
  return s + "]";
}

// One `plans` entry of `load`: a preset name or rules "glob=type;...", or rules as [[glob, type], ...].
std::string plan_spec_of(const std::string& name, const Json& v) {
  if (v.kind == Json::Str) return v.s;
  if (v.kind != Json::Arr) throw std::runtime_error("plans." + name + " must be a preset name, \"glob=type;...\" or [[glob, type], ...]");
  std::string rules;
  for (auto& r : v.a) {
    if (r.a.size() != 2) throw std::runtime_error("plans." + name + ": entries are [glob, type]");
    rules += r[0].s + "=" + r[1].s + ";";
  }
  return rules;
}

// A prepare / join request's samples: header fields and payload (PROTOCOL.md `prepare`; `join` takes the same).
Request request_of(const Json& req, const std::vector<uint8_t>& payload, const Engine& eng, const std::string& op) {
  Request r;
  r.batch = int(req.num("batch", 1));
  r.height = int(req.num("height", 1024));
  r.width = int(req.num("width", 1024));
  r.t5_len = int(req.num("t5_len", 512));
  r.sigmas = floats(req["sigmas"]);
  r.guidance = floats(req["guidance"]);
  r.seed = uint64_t(req.num("seed", 0));
  if (req.has("true_cfg")) r.cfg_scale = floats(req["true_cfg"]);
  r.loras = lora_set_of(req["loras"]);
  // The job's precision plan: a name from load's `plans`; absent, null or "" is the base plan.
  if (req.has("plan") && !req["plan"].is_null()) {
    if (req["plan"].kind != Json::Str) throw std::runtime_error("plan must be a plan name given at load");
    r.plan = req["plan"].s;
  }
  // Mode XL's step: branch outputs in bf16 (Request::branch_bf16); absent: false.
  if (req.has("branch_bf16")) {
    if (req["branch_bf16"].kind != Json::Bool) throw std::runtime_error("branch_bf16 must be a boolean");
    r.branch_bf16 = req["branch_bf16"].b;
  }
  // Step caching: {threshold, warmup_steps (default 1), max_consecutive (default 1)}; absent or null: off.
  if (req.has("step_cache") && !req["step_cache"].is_null()) {
    const Json& sc = req["step_cache"];
    if (sc.kind != Json::Obj || !sc.has("threshold") || sc["threshold"].kind != Json::Num)
      throw std::runtime_error("step_cache must be {threshold, warmup_steps?, max_consecutive?}");
    r.step_cache = true;
    r.cache_threshold = float(sc.num("threshold", 0));
    r.cache_warmup = int(sc.num("warmup_steps", 1));
    r.cache_max_consecutive = int(sc.num("max_consecutive", 1));
  }
  // True CFG: the ids hold 2B rows (the prompts, then the negative prompts).
  const size_t tb = size_t(r.text_batch());
  size_t nclip = tb * eng.cfg.clip.maxpos, nt5 = tb * r.t5_len;
  size_t nlat = size_t(r.batch) * (r.height / 16) * (r.width / 16) * 64;
  bool explicit_lat = req.str("latents", "seed") == "payload";
  // Inpainting: image latents, noise and mask (each [B, L, 64] f32) after the latents.
  bool inpaint = req["inpaint"].kind == Json::Bool && req["inpaint"].b;
  // BFL Control: the packed control latents [B, L, 64] f32 last.
  bool control = req["control"].kind == Json::Bool && req["control"].b;
  size_t need = (nclip + nt5) * 4 + (explicit_lat ? nlat * 4 : 0) + (inpaint ? 3 * nlat * 4 : 0) +
                (control ? nlat * 4 : 0);
  if (payload.size() != need)
    throw std::runtime_error(op + " payload must be " + std::to_string(need) + " bytes, got " +
                             std::to_string(payload.size()));
  r.clip_ids.resize(nclip);
  r.t5_ids.resize(nt5);
  const uint8_t* at = payload.data();
  auto take = [&](void* dst, size_t bytes) {
    memcpy(dst, at, bytes);
    at += bytes;
  };
  take(r.clip_ids.data(), nclip * 4);
  take(r.t5_ids.data(), nt5 * 4);
  if (explicit_lat) {
    r.latents.resize(nlat);
    take(r.latents.data(), nlat * 4);
  }
  if (inpaint) {
    for (auto* v : {&r.image_latents, &r.noise, &r.mask}) {
      v->resize(nlat);
      take(v->data(), nlat * 4);
    }
  }
  if (control) {
    r.control.resize(nlat);
    take(r.control.data(), nlat * 4);
  }
  return r;
}

// Positions of the samples a request names (`samples`: ids, in that order); all samples in batch order when absent.
std::vector<int> positions_of(const Job& j, const Json& req) {
  std::vector<int> pos;
  if (!req.has("samples") || req["samples"].is_null()) {
    for (int b = 0; b < int(j.samples.size()); b++) pos.push_back(b);
    return pos;
  }
  if (req["samples"].kind != Json::Arr || req["samples"].a.empty())
    throw std::runtime_error("samples must be a non-empty array of sample ids");
  for (auto& x : req["samples"].a) {
    int p = -1;
    for (int b = 0; b < int(j.samples.size()); b++)
      if (x.kind == Json::Num && j.samples[b].id == int(x.n)) p = b;
    if (p < 0) throw std::runtime_error("unknown sample " + (x.kind == Json::Num ? std::to_string(int64_t(x.n)) : "id"));
    if (std::find(pos.begin(), pos.end(), p) != pos.end()) throw std::runtime_error("samples names a sample twice");
    pos.push_back(p);
  }
  return pos;
}

std::string int_list(const std::vector<int>& v) {
  std::string s = "[";
  for (size_t i = 0; i < v.size(); i++) s += (i ? "," : "") + std::to_string(v[i]);
  return s + "]";
}

// Per-sample progress (ids, steps done, schedule lengths, in batch order): `samples`, `sample_step`, `sample_steps`.
std::string sample_fields(const Job& j) {
  std::vector<int> id, step, steps;
  for (auto& s : j.samples) {
    id.push_back(s.id);
    step.push_back(s.step);
    steps.push_back(s.steps);
  }
  return ",\"samples\":" + int_list(id) + ",\"sample_step\":" + int_list(step) + ",\"sample_steps\":" +
         int_list(steps);
}

// A double as JSON: %.9g, null when not finite (JSON has no NaN or Infinity).
std::string jnum(double v) {
  if (!std::isfinite(v)) return "null";
  char b[32];
  snprintf(b, sizeof b, "%.9g", v);
  return b;
}

// `calibrated`'s fields (PROTOCOL.md `calibrate`): one entry per transformer Linear, in the engine's order.
std::string calibration_fields(const Calibration& cal) {
  std::string s = ",\"layers\":[";
  for (size_t i = 0; i < cal.layers.size(); i++) {
    const LayerCalibration& l = cal.layers[i];
    s += std::string(i ? "," : "") + "{\"name\":" + json_escape(l.name) + ",\"in\":" + std::to_string(l.in) +
         ",\"out\":" + std::to_string(l.out) + ",\"base\":\"" + dname(l.base) + "\",\"fp8\":" +
         (l.fp8 ? "true" : "false") + ",\"rel_err_fp8\":" + (l.fp8 ? jnum(l.rel_err) : "null") +
         ",\"ms_bf16\":" + jnum(l.ms_base) + ",\"ms_fp8\":" + (l.fp8 ? jnum(l.ms_fp8) : "null") +
         (l.skip.empty() ? "" : ",\"skip\":" + json_escape(l.skip)) + ",\"fp8row\":" +
         (l.fp8row ? "true" : "false") + ",\"rel_err_fp8row\":" + (l.fp8row ? jnum(l.rel_err_fp8row) : "null") +
         ",\"ms_fp8row\":" + (l.fp8row ? jnum(l.ms_fp8row) : "null") +
         (l.skip_fp8row.empty() ? "" : ",\"skip_fp8row\":" + json_escape(l.skip_fp8row)) + "}";
  }
  s += "],\"verified\":[";
  for (size_t i = 0; i < cal.checks.size(); i++) {
    const PlanCheck& p = cal.checks[i];
    s += std::string(i ? "," : "") + "{\"name\":" + json_escape(p.name) + ",\"layers\":" + std::to_string(p.layers) +
         ",\"rel_err\":" + jnum(p.rel_err) + "}";
  }
  return s + "],\"base_ms\":" + jnum(cal.base_ms) + ",\"steps\":" + std::to_string(cal.steps);
}

using clk = std::chrono::steady_clock;
double ms_since(clk::time_point t) { return std::chrono::duration<double, std::milli>(clk::now() - t).count(); }

}  // namespace

int run_serve() {
  std::unique_ptr<Engine> eng;
  std::map<int64_t, std::unique_ptr<Job>> jobs;
  int64_t next_job = 1;
  LoraStaging lora_staging;
  for (;;) {
    uint32_t h[2];
    if (!read_exact(h, 8)) return 0;  // stdin closed: the client is gone
    std::string hdr(h[0], '\0');
    std::vector<uint8_t> payload(h[1]);
    if (!read_exact(hdr.data(), h[0]) || (h[1] && !read_exact(payload.data(), h[1]))) return 1;
    Json req;
    std::string id = "null";
    try {
      req = Json::parse(hdr);
      id = idf(req);
      std::string op = req.str("op", "");
      auto t0 = clk::now();
      if (op == "quit") {
        send("{\"op\":\"bye\",\"id\":" + id + "}");
        return 0;
      } else if (op == "info") {
        // The card and the engine's state; answers before any model is loaded (clients ask it first).
        int dev = 0, rt = 0;
        CUDA_CHECK(cudaGetDevice(&dev));
        cudaDeviceProp p;
        CUDA_CHECK(cudaGetDeviceProperties(&p, dev));
        CUDA_CHECK(cudaRuntimeGetVersion(&rt));
        size_t free_b = 0, total_b = 0;
        CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
        send("{\"op\":\"info\",\"id\":" + id + ",\"protocol\":1,\"device\":" + json_escape(p.name) +
             ",\"compute_capability\":\"" + std::to_string(p.major) + "." + std::to_string(p.minor) +
             "\",\"memory_total_bytes\":" + std::to_string(total_b) + ",\"memory_free_bytes\":" +
             std::to_string(free_b) + ",\"cuda_runtime\":" + std::to_string(rt) + ",\"loaded\":" +
             (eng ? "true" : "false") + ",\"precision\":" + (eng ? "\"" + eng->precision() + "\"" : "null") +
             ",\"attention\":" + (!eng ? "null" : eng->use_cudnn ? "\"cudnn\"" : eng->dt == DType::F32 ? "\"f32-rows\"" : "\"own-flash\"") +
             ",\"jobs\":" + std::to_string(jobs.size()) +
             (eng ? lora_state_fields(*eng) + plan_fields(*eng) : std::string()) + "}");
      } else if (op == "load") {
        std::string prec = req.str("precision", "bf16");
        // Per-layer precision: the named plan, plus rules from the request ("plan": [[glob, type], ...]) and from
        // FQ_PRECISION_PLAN ("glob=type;..."), request rules first.
        std::string rules;
        for (auto& r : req["plan"].a) {
          if (r.a.size() != 2) throw std::runtime_error("plan entries are [glob, type]");
          rules += r[0].s + "=" + r[1].s + ";";
        }
        if (const char* env = getenv("FQ_PRECISION_PLAN")) rules += env;
        PrecisionPlan plan = PrecisionPlan::named(prec, rules);
        // Named precision plans served per job (`prepare`'s `plan`): {name: preset | rules}, in name order.
        const Json& named = req["plans"];
        if (!named.is_null() && named.kind != Json::Obj) throw std::runtime_error("plans must be {name: plan}");
        jobs.clear();
        lora_staging.pending.clear();
        eng.reset();
        eng = std::make_unique<Engine>(plan);
        // GPU memory for LoRA adapters (factors + built sets): the request's bound, else FQ_LORA_MAX_MB's.
        if (req.has("lora_max_mb")) eng->lora_max_bytes = size_t(std::max(0.0, req.num("lora_max_mb", 0))) << 20;
        try {
          if (req.has("synthetic")) eng->load_synthetic(uint64_t(req.num("seed", 42)));
          else if (req.has("spec")) eng->load_spec(req["spec"], "");
          else eng->load_dir(req.str("model", ""));
          for (auto& [name, v] : named.o) eng->add_plan(name, plan_of_spec(plan_spec_of(name, v), eng->plan));
        } catch (...) {
          eng.reset();  // a failed load leaves no half-loaded engine behind: later requests answer "no model loaded"
          throw;
        }
        send("{\"op\":\"loaded\",\"id\":" + id + ",\"device\":" + json_escape(device_name()) +
             ",\"precision\":\"" + eng->precision() + "\",\"weights_bytes\":" + std::to_string(eng->weights.bytes()) +
             ",\"ms\":" + std::to_string(ms_since(t0)) + lora_state_fields(*eng) + plan_fields(*eng) + "}");
      } else if (!eng) {
        throw std::runtime_error("no model loaded");
      } else if (op == "lora_load") {
        std::string rop;
        std::string fields = lora_load_request(*eng, lora_staging, req, payload, rop);
        send("{\"op\":\"" + rop + "\",\"id\":" + id + fields + ",\"ms\":" + std::to_string(ms_since(t0)) + "}");
      } else if (op == "lora_unload") {
        // Jobs prepared with the LoRA keep their own built set until released.
        const std::string name = req.str("name", "");
        lora_staging.pending.erase(name);
        const bool was = eng->loras->unload(name);
        send("{\"op\":\"lora_unloaded\",\"id\":" + id + ",\"name\":" + json_escape(name) +
             ",\"unloaded\":" + (was ? "true" : "false") + lora_state_fields(*eng) + "}");
      } else if (op == "prepare") {
        Request r = request_of(req, payload, *eng, "prepare");
        auto job = eng->prepare(r);
        CUDA_CHECK(cudaStreamSynchronize(eng->st));
        int64_t jid = next_job++;
        int steps = job->steps;
        jobs[jid] = std::move(job);
        send("{\"op\":\"prepared\",\"id\":" + id + ",\"job\":" + std::to_string(jid) +
             ",\"steps\":" + std::to_string(steps) + sample_fields(*jobs[jid]) +
             ",\"ms\":" + std::to_string(ms_since(t0)) + "}");
      } else if (op == "calibrate") {
        // Per-layer fp8 error and GEMM times on the request's inputs (calibrate.h); the job it runs is dropped.
        Request r = request_of(req, payload, *eng, "calibrate");
        const int reps = int(req.num("reps", 5));
        const Json& vj = req["verify"];
        if (!vj.is_null() && vj.kind != Json::Obj) throw std::runtime_error("verify must be {name: plan}");
        std::vector<std::pair<std::string, std::string>> verify;
        for (auto& [name, v] : vj.o) verify.emplace_back(name, plan_spec_of(name, v));
        const bool per_layer = req["per_layer"].kind != Json::Bool || req["per_layer"].b;
        const bool fp8row = req["fp8row"].kind == Json::Bool && req["fp8row"].b;
        const Calibration cal = calibrate(*eng, r, reps, verify, per_layer, fp8row);
        send("{\"op\":\"calibrated\",\"id\":" + id + calibration_fields(cal) + ",\"ms\":" +
             std::to_string(ms_since(t0)) + "}");
      } else if (op == "encode") {
        // The VAE encoder: pixels [B, 3, H, W] f32 in [-1, 1], optional noise [B, 16, H/8, W/8] f32 ->
        // packed scaled latents [B, L, 64] (output "latents"), or mean and logvar (output "moments").
        const int B = int(req.num("batch", 1)), H = int(req.num("height", 0)), W = int(req.num("width", 0));
        if (B < 1 || H < 16 || W < 16 || H % 16 || W % 16)
          throw std::runtime_error("encode: batch >= 1 and height, width multiples of 16 are required");
        const std::string output = req.str("output", "latents");
        if (output != "latents" && output != "moments") throw std::runtime_error("encode: output is latents or moments");
        const bool with_noise = req.str("noise", "none") == "payload";
        const int C = eng->cfg.vae.latent, h = H / 8, w = W / 8;
        if (C != 16) throw std::runtime_error("encode: only 16 latent channels are packed");
        const size_t npix = size_t(B) * 3 * H * W, nmom = size_t(B) * C * h * w;
        const size_t need = (npix + (with_noise ? nmom : 0)) * 4;
        if (payload.size() != need)
          throw std::runtime_error("encode payload must be " + std::to_string(need) + " bytes, got " +
                                   std::to_string(payload.size()));
        float* pix = eng->scratch.getT<float>("serve.pixels", npix);
        float* mom = eng->scratch.getT<float>("serve.moments", 2 * nmom);
        float* eps = with_noise ? eng->scratch.getT<float>("serve.eps", nmom) : nullptr;
        float* lat = eng->scratch.getT<float>("serve.enc_latents", nmom);
        CUDA_CHECK(cudaMemcpyAsync(pix, payload.data(), npix * 4, cudaMemcpyHostToDevice, eng->st));
        if (eps)
          CUDA_CHECK(cudaMemcpyAsync(eps, payload.data() + npix * 4, nmom * 4, cudaMemcpyHostToDevice, eng->st));
        eng->encode(pix, B, H, W, mom, mom + nmom);
        std::vector<float> out(output == "moments" ? 2 * nmom : nmom);
        if (output == "moments") {
          CUDA_CHECK(cudaMemcpyAsync(out.data(), mom, out.size() * 4, cudaMemcpyDeviceToHost, eng->st));
        } else {
          sample_latents_packed(mom, mom + nmom, eps, B, h, w, eng->cfg.vae.scaling, eng->cfg.vae.shift, lat, eng->st);
          CUDA_CHECK(cudaMemcpyAsync(out.data(), lat, out.size() * 4, cudaMemcpyDeviceToHost, eng->st));
        }
        CUDA_CHECK(cudaStreamSynchronize(eng->st));
        const std::string shape = output == "moments"
                                      ? "[" + std::to_string(B) + "," + std::to_string(C) + "," + std::to_string(h) +
                                            "," + std::to_string(w) + "]"
                                      : "[" + std::to_string(B) + "," + std::to_string((h / 2) * (w / 2)) + ",64]";
        send("{\"op\":\"encoded\",\"id\":" + id + ",\"output\":\"" + output + "\",\"format\":\"f32\",\"shape\":" +
                 shape + ",\"ms\":" + std::to_string(ms_since(t0)) + "}",
             out.data(), out.size() * 4);
      } else {
        int64_t jid = int64_t(req.num("job", -1));
        auto it = jobs.find(jid);
        if (it == jobs.end()) throw std::runtime_error("unknown job " + std::to_string(jid));
        Job& j = *it->second;
        std::string js = std::to_string(jid);
        if (op == "step") {
          // One engine step advances every sample not done by one of its own steps (done ones stay frozen).
          int count = int(req.num("count", j.steps - j.step));
          for (int i = 0; i < count && j.step < j.steps; i++) {
            auto ts = clk::now();
            eng->step(j);
            CUDA_CHECK(cudaStreamSynchronize(eng->st));
            send("{\"op\":\"progress\",\"id\":" + id + ",\"job\":" + js + ",\"step\":" + std::to_string(j.step) +
                 ",\"steps\":" + std::to_string(j.steps) + ",\"ms\":" + std::to_string(ms_since(ts)) +
                 cache_fields(j, true) + sample_fields(j) + "}");
          }
          send("{\"op\":\"stepped\",\"id\":" + id + ",\"job\":" + js + ",\"step\":" + std::to_string(j.step) +
               ",\"steps\":" + std::to_string(j.steps) + ",\"ms\":" + std::to_string(ms_since(t0)) +
               cache_fields(j, false) + sample_fields(j) + "}");
        } else if (op == "join") {
          // New samples into this job's batch at a step boundary (Engine::regroup): the job id stays, its buffers,
          // geometry and captured step are new. Refusals leave the job as it was.
          Request r = request_of(req, payload, *eng, "join");
          std::vector<int> all;
          for (int b = 0; b < int(j.samples.size()); b++) all.push_back(b);
          auto grown = eng->regroup(j, all, &r, "join");
          std::vector<int> added;
          for (size_t b = all.size(); b < grown->samples.size(); b++) added.push_back(grown->samples[b].id);
          const int steps = grown->samples.back().steps;
          it->second = std::move(grown);
          Job& g = *it->second;
          send("{\"op\":\"joined\",\"id\":" + id + ",\"job\":" + js + ",\"added\":" + int_list(added) +
               ",\"batch\":" + std::to_string(g.req.batch) + ",\"steps\":" + std::to_string(steps) +
               ",\"step\":" + std::to_string(g.step) + ",\"job_steps\":" + std::to_string(g.steps) +
               sample_fields(g) + ",\"ms\":" + std::to_string(ms_since(t0)) + "}");
        } else if (op == "latents") {
          const std::vector<int> pos = positions_of(j, req);
          const size_t per = size_t(j.L) * 64;
          std::vector<float> lat(pos.size() * per);
          for (size_t i = 0; i < pos.size(); i++)
            CUDA_CHECK(cudaMemcpyAsync(lat.data() + i * per, j.lat + pos[i] * per, per * 4, cudaMemcpyDeviceToHost,
                                       eng->st));
          CUDA_CHECK(cudaStreamSynchronize(eng->st));
          std::vector<int> ids;
          for (int p : pos) ids.push_back(j.samples[p].id);
          send("{\"op\":\"latents\",\"id\":" + id + ",\"job\":" + js + ",\"format\":\"f32\",\"shape\":[" +
                   std::to_string(pos.size()) + "," + std::to_string(j.L) + ",64],\"samples\":" + int_list(ids) + "}",
               lat.data(), lat.size() * 4);
        } else if (op == "decode") {
          const std::vector<int> pos = positions_of(j, req);
          size_t n = pos.size() * j.req.height * j.req.width * 3;
          std::vector<uint8_t> img(n);
          uint8_t* d = static_cast<uint8_t*>(eng->scratch.get("serve.rgb", n));
          eng->decode(j, pos, nullptr, d);
          CUDA_CHECK(cudaMemcpyAsync(img.data(), d, n, cudaMemcpyDeviceToHost, eng->st));
          CUDA_CHECK(cudaStreamSynchronize(eng->st));
          std::vector<int> ids;
          for (int p : pos) ids.push_back(j.samples[p].id);
          send("{\"op\":\"image\",\"id\":" + id + ",\"job\":" + js + ",\"format\":\"rgb8\",\"batch\":" +
                   std::to_string(pos.size()) + ",\"height\":" + std::to_string(j.req.height) +
                   ",\"width\":" + std::to_string(j.req.width) + ",\"samples\":" + int_list(ids) +
                   ",\"ms\":" + std::to_string(ms_since(t0)) + "}",
               img.data(), n);
        } else if (op == "release") {
          // All samples (no `samples`, or all named): the job goes. A subset: the job compacts to the others
          // (Engine::regroup: new buffers and geometry, the others' ids and progress unchanged).
          const std::vector<int> pos = positions_of(j, req);
          std::vector<int> gone, keep, left;
          for (int p : pos) gone.push_back(j.samples[p].id);
          for (int b = 0; b < int(j.samples.size()); b++)
            if (std::find(pos.begin(), pos.end(), b) == pos.end()) {
              keep.push_back(b);
              left.push_back(j.samples[b].id);
            }
          const std::string fields = cache_fields(j, false);
          if (keep.empty()) jobs.erase(it);
          else it->second = eng->regroup(j, keep, nullptr, "release");
          send("{\"op\":\"released\",\"id\":" + id + ",\"job\":" + js + fields + ",\"samples\":" +
               int_list(gone) + ",\"remaining\":" + int_list(left) + "}");
        } else {
          throw std::runtime_error("unknown op " + op);
        }
      }
    } catch (const std::exception& ex) {
      // A device fault (sticky: raised by any CUDA/cuBLAS/cuDNN check, fault.h) can leave the context unusable:
      // the answer says fatal, the process exits, and the client restarts it. Anything else keeps serving.
      const bool fatal = fault_sticky();
      send("{\"op\":\"error\",\"id\":" + id + ",\"message\":" + json_escape(ex.what()) +
           ",\"fatal\":" + (fatal ? "true" : "false") + lora_error_fields(ex) + "}");
      if (fatal) return 2;
    }
  }
}

}  // namespace fq
