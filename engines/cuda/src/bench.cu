// `fluxql-engine --bench`: end-to-end time at FLUX.1-dev size with synthetic bf16 weights (tokens in, image out),
// warm-up then mean of N, per-step breakdown (GEMMs, attention, rest), several batch sizes, peak GPU memory.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <random>
#include <sstream>

#include "bench_util.h"
#include "engine.h"
#include "event_timer.h"
#include "kernels/kernels.h"
#include "profile.h"
#include "selftest.h"

namespace fq {

namespace {

using clk = std::chrono::steady_clock;
std::vector<std::string> notes;  // one line per precision for the Markdown footer
std::ostringstream family_md;    // rows of the own-kernel breakdown table (one per precision and batch)
double ms_since(clk::time_point t) { return std::chrono::duration<double, std::milli>(clk::now() - t).count(); }

// One joint attention at FLUX.1-dev size (S = 512 + 4096, 24 heads x 128): own flash kernel vs cuDNN's SDPA,
// median of 20 event-timed calls each after 3 warm-ups, and the relative difference of their outputs.
std::string attention_micro(Engine& e, int S) {
  const int B = 1, H = 24, D = 128;
  size_t n = size_t(B) * S * H * D;
  void *q, *k, *v, *o1, *o2;
  for (void** p : {&q, &k, &v, &o1, &o2}) CUDA_CHECK(cudaMalloc(p, n * 2));
  fill_normal(q, DType::BF16, int64_t(n), 0.f, 1.f, 11, e.st);
  fill_normal(k, DType::BF16, int64_t(n), 0.f, 1.f, 12, e.st);
  fill_normal(v, DType::BF16, int64_t(n), 0.f, 1.f, 13, e.st);
  float scale = 1.f / std::sqrt(float(D));
  double flop = 4.0 * B * double(S) * S * H * D;
  EventTimer timer;
  auto time_it = [&](auto&& fn) {
    std::vector<float> ts;
    for (int i = 0; i < 23; i++) {
      float ms = timer.ms(e.st, fn);
      if (i >= 3) ts.push_back(ms);
    }
    std::sort(ts.begin(), ts.end());
    return double(ts[ts.size() / 2]);
  };
  double own = time_it([&] { flash_attention(q, k, v, B, S, H, D, scale, OutMap{nullptr, o1, 0, H * D}, e.st); });
  bool have = e.cudnn.available() && e.cudnn.run(q, k, v, o2, B, S, H, D, H * D, scale, e.st);
  double dnn = have ? time_it([&] { e.cudnn.run(q, k, v, o2, B, S, H, D, H * D, scale, e.st); }) : 0;
  // The single-stream blocks write the attention into the first D columns of a [S, 5D] concat buffer.
  double dnn5 = 0;
  if (have) {
    void* wide;
    CUDA_CHECK(cudaMalloc(&wide, n * 2 * 5));
    dnn5 = time_it([&] { e.cudnn.run(q, k, v, wide, B, S, H, D, 5 * H * D, scale, e.st); });
    CUDA_CHECK(cudaFree(wide));
  }
  double rel = 0;
  if (have) {
    std::vector<uint16_t> h1(n), h2(n);
    CUDA_CHECK(cudaMemcpy(h1.data(), o1, n * 2, cudaMemcpyDeviceToHost));
    CUDA_CHECK(cudaMemcpy(h2.data(), o2, n * 2, cudaMemcpyDeviceToHost));
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
      double x = bf16_to_f32(h1[i]), y = bf16_to_f32(h2[i]);
      num += (x - y) * (x - y);
      den += y * y;
    }
    rel = std::sqrt(num / den);
  }
  for (void* p : {q, k, v, o1, o2}) cudaFree(p);
  char buf[768];
  snprintf(buf, sizeof buf,
           "{\"S\": %d, \"heads\": %d, \"head_dim\": %d, \"own_flash_ms\": %.3f, \"own_flash_tflops\": %.0f, "
           "\"cudnn_ms\": %.3f, \"cudnn_tflops\": %.0f, \"cudnn_strided_out_ms\": %.3f, \"cudnn_available\": %s, "
           "\"cudnn_note\": %s, \"rel_diff\": %.2e}",
           S, H, D, own, flop / (own * 1e9), dnn, have ? flop / (dnn * 1e9) : 0.0, dnn5, have ? "true" : "false",
           json_escape(have ? "" : e.cudnn.why_not()).c_str(), rel);
  fprintf(stderr,
          "[bench] attention S=%d: own %.3f ms (%.0f TF/s), cuDNN %.3f ms (%s; output row stride 5D: %.3f ms), rel "
          "diff %.2e\n",
          S, own, flop / (own * 1e9), dnn, have ? "ok" : e.cudnn.why_not().c_str(), dnn5, rel);
  return buf;
}

}  // namespace

std::vector<float> flux_sigmas(int steps, int L) {
  double m = (1.15 - 0.5) / (4096 - 256), b = 0.5 - 256 * m, mu = L * m + b;
  std::vector<float> s;
  for (int i = 0; i < steps; i++) {
    double t = 1.0 - double(i) / steps;  // linspace(1, 1/N, N)
    s.push_back(float(std::exp(mu) / (std::exp(mu) + (1.0 / t - 1.0))));
  }
  s.push_back(0.f);
  return s;
}

Request make_bench_request(const ModelConfig& cfg, int B, int width, int height, int steps, std::mt19937& rng) {
  Request r;
  r.batch = B;
  r.width = width;
  r.height = height;
  r.t5_len = 512;
  std::uniform_int_distribution<int> clip_tok(1, cfg.clip.vocab - 2), t5_tok(2, cfg.t5.vocab - 1);
  for (int b = 0; b < B; b++) {
    // A 20-token prompt: BOS, words, EOS, EOS padding (CLIP); words, </s>, pad (T5).
    for (int i = 0; i < cfg.clip.maxpos; i++)
      r.clip_ids.push_back(i == 0 ? cfg.clip.vocab - 2 : i <= 20 ? clip_tok(rng) : cfg.clip.vocab - 1);
    for (int i = 0; i < r.t5_len; i++) r.t5_ids.push_back(i < 20 ? t5_tok(rng) : i == 20 ? 1 : 0);
    r.guidance.push_back(3.5f);
  }
  r.sigmas = flux_sigmas(steps, (width / 16) * (height / 16));
  r.seed = 7;
  return r;
}

size_t gpu_used() {
  size_t fr, tot;
  CUDA_CHECK(cudaMemGetInfo(&fr, &tot));
  return tot - fr;
}

RunTimes run_once(Engine& e, const Request& r, std::vector<uint8_t>& host_img, uint8_t* dev_img) {
  RunTimes t;
  auto t0 = clk::now();
  auto job = e.prepare(r);
  CUDA_CHECK(cudaStreamSynchronize(e.st));
  t.prepare = ms_since(t0);
  auto t1 = clk::now();
  while (job->step < job->steps) e.step(*job);
  CUDA_CHECK(cudaStreamSynchronize(e.st));
  t.steps = ms_since(t1);
  t.capture = job->graph.capture_ms;
  if (job->cache) t.capture += job->cache->head.capture_ms + job->cache->tail.capture_ms + job->cache->reuse.capture_ms;
  t.replays = job->replays;
  t.full_steps = job->cache ? job->cache->full : job->step;
  t.cached_steps = job->cache ? job->cache->cached : 0;
  auto t2 = clk::now();
  e.decode(*job, nullptr, dev_img);
  CUDA_CHECK(cudaMemcpyAsync(host_img.data(), dev_img, host_img.size(), cudaMemcpyDeviceToHost, e.st));
  CUDA_CHECK(cudaStreamSynchronize(e.st));
  t.decode = ms_since(t2);
  t.total = ms_since(t0);
  t.mem = gpu_used();
  return t;
}

namespace {

// One precision: load synthetic weights, run every batch size; appends JSON to js and table rows to md.
void bench_one(const std::string& precision, int width, int height, int steps, const std::string& batches, int iters,
               const std::string& graphs, std::ostringstream& js, std::ostringstream& md) {
  std::string dev = device_name();
  size_t base_mem = gpu_used();
  Engine e(PrecisionPlan::named(precision));
  auto tl = clk::now();
  e.load_synthetic(42);
  double load_ms = ms_since(tl);
  size_t weights_mem = gpu_used();
  fprintf(stderr, "[bench] %s: synthetic FLUX.1-dev weights: %.2f GB in %.0f ms\n", precision.c_str(),
          e.weights.bytes() / 1e9, load_ms);
  std::string micro = attention_micro(e, 512 + (width / 16) * (height / 16));
  // The floor uses the bf16 GEMMs only; the fp8 engine's LN-fed GEMMs differ.
  std::string floor = "null";
  std::mt19937 rng(5);
  if (precision == "bf16") {
    auto job = e.prepare(make_bench_request(e.cfg, 1, width, height, steps, rng));
    floor = "[" + gemm_attention_floor(e, *job, steps, false) + ", " + gemm_attention_floor(e, *job, steps, true) + "]";
  }
  js << "  {\n  \"precision\": \"" << precision << "\",\n  \"precision_detail\": \""
     << (precision == "fp8" ? "bf16 activations; q/k/v and MLP-in GEMMs in fp8 E4M3 with per-tensor scales (LN "
                              "writes fp8), other GEMMs bf16; fp32 accumulation, fp32 residual streams"
                            : "bf16 weights/activations, fp32 accumulation, fp32 residual streams")
     << "\",\n  \"transformer_attention\": \"" << (e.use_cudnn ? "cuDNN SDPA (backend API)" : "own flash kernel (mma.sync)")
     << "\",\n  \"attention_micro\": " << micro << ",\n  \"gemm_attention_floor_b1\": " << floor << ",\n"
     << "  \"weights_gb\": " << e.weights.bytes() / 1e9 << ", \"load_ms\": " << load_ms << ",\n  \"runs\": [\n";
  std::istringstream bs(batches);
  std::string tok;
  bool first = true;
  while (std::getline(bs, tok, ',')) {
    int B = std::stoi(tok);
    Request r = make_bench_request(e.cfg, B, width, height, steps, rng);
    std::vector<uint8_t> img(size_t(B) * width * height * 3);
    uint8_t* dimg;
    CUDA_CHECK(cudaMalloc(&dimg, img.size()));
    // The VAE encoder alone (img2img and inpainting run it once per request; fp32 under the VAE config's
    // force_upcast), on random pixels of the request's size: one warm-up (GEMM plans and tuning, scratch), then the
    // mean of 3 event-timed runs. Before the generation runs, so their memory peak includes its scratch.
    double enc_ms = -1;
    if (e.vae_enc) {
      const size_t npix = size_t(B) * 3 * height * width;
      const size_t nm = size_t(B) * e.cfg.vae.latent * (height / 8) * (width / 8);
      float* pix = e.scratch.getT<float>("bench.pixels", npix);
      float* mom = e.scratch.getT<float>("bench.moments", 2 * nm);
      fill_normal(pix, DType::F32, int64_t(npix), 0.f, 0.5f, 7, e.st);
      auto enc = [&] { e.encode(pix, B, height, width, mom, mom + nm); };
      enc();
      EventTimer et;
      enc_ms = 0;
      for (int i = 0; i < 3; i++) enc_ms += et.ms(e.st, enc) / 3;
      fprintf(stderr, "[bench] %s batch %d: VAE encoder (%s) %.1f ms\n", precision.c_str(), B, e.enc_plan.name.c_str(),
              enc_ms);
      char note[160];
      snprintf(note, sizeof note, "%s batch %d: VAE encoder (%s) %.1f ms", precision.c_str(), B,
               e.enc_plan.name.c_str(), enc_ms);
      notes.push_back(note);
    }
    // Each graph mode: one warm-up (scratch allocation, cuBLASLt heuristics and tuning, module loading), then the
    // mean of `iters` runs; the last mode's runs fill the table row, every mode's mean goes to the JSON.
    std::vector<RunTimes> runs;
    std::string modes_js;
    for (char m : graphs == "both" ? std::string("01") : graphs == "off" ? std::string("0") : std::string("1")) {
      e.use_graphs = m == '1';
      run_once(e, r, img, dimg);
      runs.clear();
      for (int i = 0; i < iters; i++) runs.push_back(run_once(e, r, img, dimg));
      double mm = 0, ms = 0, cap = 0, mn = 1e30, mx = 0;
      for (auto& t : runs) {
        mm += t.total / iters;
        ms += t.steps / iters / steps;
        cap += t.capture / iters;
        mn = std::min(mn, t.total);
        mx = std::max(mx, t.total);
      }
      fprintf(stderr,
              "[bench] %s batch %d, CUDA graphs %s: mean %.3f s (min %.3f max %.3f), step %.2f ms incl. capture "
              "%.1f ms per request, %d of %d steps replayed (mean of %d)\n",
              precision.c_str(), B, m == '1' ? "on" : "off", mm / 1e3, mn / 1e3, mx / 1e3, ms, cap,
              runs.back().replays, steps, iters);
      char f[256];
      snprintf(f, sizeof f,
               "%s{\"cuda_graph\": %s, \"mean_s\": %.4f, \"min_s\": %.4f, \"max_s\": %.4f, \"step_ms\": %.3f, "
               "\"capture_ms\": %.2f, \"replayed_steps\": %d}",
               modes_js.empty() ? "" : ", ", m == '1' ? "true" : "false", mm / 1e3, mn / 1e3, mx / 1e3, ms, cap,
               runs.back().replays);
      modes_js += f;
      char note[160];
      snprintf(note, sizeof note, "%s batch %d with CUDA graphs %s: %.3f s (step %.2f ms)", precision.c_str(), B,
               m == '1' ? "on" : "off", mm / 1e3, ms);
      notes.push_back(note);
    }
    double mean = 0, mn = 1e30, mx = 0, prep = 0, stp = 0, dec = 0;
    size_t mem = 0;
    for (auto& t : runs) {
      mean += t.total / iters;
      mn = std::min(mn, t.total);
      mx = std::max(mx, t.total);
      prep += t.prepare / iters;
      stp += t.steps / iters / steps;
      dec += t.decode / iters;
      mem = std::max(mem, t.mem);
    }
    // Breakdown run: events around every GEMM / attention; prepare and decode profiled on their own.
    EventTimer timer;
    struct Profiled {
      float ms;
      ProfTotals t;
    };
    auto profiled = [&](auto&& fn) {
      prof_enable(true);
      Profiled r{timer.ms(e.st, fn), prof_collect()};
      prof_enable(false);
      return r;
    };
    std::string phases;  // JSON fields: each profiled phase's total, GEMM, attention and other-kernel ms
    auto phase = [&](const char* name, auto&& fn) {
      auto [ms, t] = profiled(fn);
      fprintf(stderr, "[bench] batch %d %s: %.1f ms (GEMM %.1f, attention %.1f, other kernels %.1f)\n", B, name, ms,
              t.ms[kProfGemm], t.ms[kProfAttn], ms - t.ms[kProfGemm] - t.ms[kProfAttn]);
      char f[256];
      snprintf(f, sizeof f,
               ", \"%s_profile\": {\"ms\": %.2f, \"gemm_ms\": %.2f, \"attention_ms\": %.2f, \"other_ms\": %.2f}", name,
               ms, t.ms[kProfGemm], t.ms[kProfAttn], ms - t.ms[kProfGemm] - t.ms[kProfAttn]);
      phases += f;
    };
    std::unique_ptr<Job> job;
    phase("prepare", [&] { job = e.prepare(r); });
    auto [steps_ms, pt] = profiled([&] {
      while (job->step < job->steps) e.step(*job);
    });
    phase("decode", [&] { e.decode(*job, nullptr, dimg); });
    job.reset();
    double gemm = pt.ms[kProfGemm] / steps, attn = pt.ms[kProfAttn] / steps, step_ev = steps_ms / steps;
    double gemm_tf = pt.flop[kProfGemm] / (pt.ms[kProfGemm] * 1e9), attn_tf = pt.flop[kProfAttn] / (pt.ms[kProfAttn] * 1e9);
    double rest = step_ev - gemm - attn;
    // The engine's own kernel families (profile.h), ms per step; "unmarked" = what no mark covers (launch gaps
    // between kernels, the input conversions inside linear(), anything not yet marked).
    std::string fam_js = "{", fam_err, fam_row;
    double fam_sum = 0;
    for (int k = kProfResNorm; k < kProfCats; k++) {
      const double v = pt.ms[k] / steps;
      fam_sum += v;
      char f[96];
      snprintf(f, sizeof f, "%s\"%s\": %.3f", k == kProfResNorm ? "" : ", ", kProfNames[k], v);
      fam_js += f;
      snprintf(f, sizeof f, "%s %s %.2f", k == kProfResNorm ? "" : ",", kProfNames[k], v);
      fam_err += f;
      snprintf(f, sizeof f, " %.2f |", v);
      fam_row += f;
    }
    char tail[96];
    snprintf(tail, sizeof tail, ", \"unmarked\": %.3f}", rest - fam_sum);
    fam_js += tail;
    fprintf(stderr, "[bench] %s batch %d own kernels ms/step:%s, unmarked %.2f (rest %.2f)\n", precision.c_str(), B,
            fam_err.c_str(), rest - fam_sum, rest);
    {
      char row[128];
      snprintf(row, sizeof row, "| %s | %d | %.1f |", precision.c_str(), B, rest);
      family_md << row << fam_row;
      snprintf(row, sizeof row, " %.2f |\n", rest - fam_sum);
      family_md << row;
    }
    // A sanity check that the image is not blank or constant (synthetic weights still give varied pixels).
    size_t distinct = 0;
    {
      std::vector<int> seen(256, 0);
      for (auto v : img) seen[v] = 1;
      for (int v : seen) distinct += v;
    }
    fprintf(stderr,
            "[bench] batch %d: mean %.3f s (min %.3f max %.3f), prepare %.1f ms, step %.1f ms (profiled %.1f: gemm "
            "%.1f @ %.0f TF/s, attn %.1f @ %.0f TF/s, rest %.1f), decode %.1f ms, mem %.2f GB, %zu distinct "
            "pixel values\n",
            B, mean / 1e3, mn / 1e3, mx / 1e3, prep, stp, step_ev, gemm, gemm_tf, attn, attn_tf, rest, dec,
            mem / 1e9, distinct);
    js << (first ? "" : ",\n") << "    {\"batch\": " << B << ", \"mean_s\": " << mean / 1e3 << ", \"min_s\": " << mn / 1e3
       << ", \"max_s\": " << mx / 1e3 << ", \"s_per_image\": " << mean / 1e3 / B << ", \"prepare_ms\": " << prep
       << ", \"step_ms\": " << stp << ", \"decode_ms\": " << dec << ", \"profiled_step_ms\": " << step_ev
       << ", \"gemm_ms_per_step\": " << gemm << ", \"gemm_tflops\": " << gemm_tf
       << ", \"attention_ms_per_step\": " << attn << ", \"attention_tflops\": " << attn_tf
       << ", \"rest_ms_per_step\": " << rest << ", \"own_kernels_ms_per_step\": " << fam_js
       << ", \"gpu_mem_used_gb\": " << mem / 1e9
       << ", \"encode_ms\": " << enc_ms << ", \"image_distinct_values\": " << distinct
       << ", \"cuda_graph\": " << (e.use_graphs ? "true" : "false")
       << ", \"graph_modes\": [" << modes_js << "]" << phases << "}";
    char row[512];
    snprintf(row, sizeof row,
             "| %s | %d | %.3f | %.3f | %.3f | %.3f | %.0f | %.1f | %.1f (%.0f) | %.1f (%.0f) | %.1f | %.0f | %.1f |\n",
             precision.c_str(), B, mean / 1e3, mn / 1e3, mx / 1e3, mean / 1e3 / B, prep, stp, gemm, gemm_tf, attn,
             attn_tf, rest, dec, mem / 1e9);
    md << row;
    first = false;
    CUDA_CHECK(cudaFree(dimg));
  }
  js << "\n  ],\n  \"gpu_mem_before_load_gb\": " << base_mem / 1e9 << ", \"gpu_mem_after_load_gb\": "
     << weights_mem / 1e9 << ",\n  \"gemm_fallbacks\": " << e.gemm.fallbacks() << ", \"gemm_tuned_plans\": "
     << e.gemm.tuned() << "\n  }";
  fprintf(stderr, "[bench] %s: %d GEMM plans tuned by timing\n", precision.c_str(), e.gemm.tuned());
  notes.push_back(precision + ": weights " + std::to_string(e.weights.bytes() / 1e9).substr(0, 5) + " GB");
}

}  // namespace

int run_bench(const std::string& size, int steps, const std::string& batches, int iters,
              const std::string& precisions, const std::string& graphs, const std::string& out_prefix) {
  // "1024" or "1280x720" (width x height), multiples of 16.
  size_t xpos = size.find('x');
  int width = std::stoi(size.substr(0, xpos));
  int height = xpos == std::string::npos ? width : std::stoi(size.substr(xpos + 1));
  std::string dev = device_name();
  fprintf(stderr, "[bench] device: %s\n", dev.c_str());
  std::ostringstream js, md;
  js << "{\n  \"device\": " << json_escape(dev) << ",\n  \"engine\": \"fluxql-engine (engines/cuda)\",\n"
     << "  \"weights\": \"synthetic FLUX.1-dev sizes (CLIP-L, T5-XXL, 19+38 blocks, VAE 128/256/512/512)\",\n"
     << "  \"width\": " << width << ", \"height\": " << height << ", \"steps\": " << steps << ", \"iters\": " << iters << ",\n  \"results\": [\n";
  md << "# fluxql CUDA engine on " << dev << "\n\n"
     << "Synthetic FLUX.1-dev-sized weights, " << width << "x" << height << ", " << steps
     << " steps, end to end (token ids in, RGB8 image in host memory out). One warm-up run, then the mean of "
     << iters << " runs (host clock around the whole request, stream synchronised). Per-step breakdown from one "
     << "extra run with CUDA events around every GEMM and attention call.\n\n"
     << "| precision | batch | mean s | min s | max s | s/image | prepare ms | step ms | GEMM ms/step (TFLOP/s) | "
        "attention ms/step (TFLOP/s) | rest ms/step | decode ms | GPU mem GB |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|\n";
  std::istringstream ps(precisions);
  std::string p;
  bool first = true;
  while (std::getline(ps, p, ',')) {
    if (!first) js << ",\n";
    first = false;
    bench_one(p, width, height, steps, batches, iters, graphs, js, md);
  }
  js << "\n  ]\n}\n";
  md << "\nOwn kernels per step (same profiled run, CUDA events around each family's launches; ms/step):\n\n"
     << "| precision | batch | rest |";
  for (int k = kProfResNorm; k < kProfCats; k++) md << " " << kProfNames[k] << " |";
  md << " unmarked |\n|---|---|---|";
  for (int k = kProfResNorm; k <= kProfCats; k++) md << "---|";
  md << "\n" << family_md.str();
  md << "\nGPU memory is `cudaMemGetInfo` used (whole device, this process: weights + activations + cuBLAS/cuDNN "
        "workspaces + CUDA context), sampled at the end of each request while its buffers are alive; all engine "
        "buffers are persistent, so this is the peak. ";
  for (auto& n : notes) md << n << ". ";
  md << "\n";
  std::ofstream(out_prefix + ".json") << js.str();
  std::ofstream(out_prefix + ".md") << md.str();
  printf("%s", md.str().c_str());
  return 0;
}

}  // namespace fq
