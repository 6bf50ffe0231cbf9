#include "kernel_tests.h"

#include <cuda_fp8.h>

#include <cfloat>
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "device_buffer.h"
#include "engine.h"
#include "kernels/kernels.h"

namespace fq {
namespace {

using Vec = std::vector<float>;

Vec randn(size_t n, std::mt19937& rng, float sd = 1.f, float mean = 0.f) {
  std::normal_distribution<float> nd(mean, sd);
  Vec v(n);
  for (auto& x : v) x = nd(rng);
  return v;
}
Vec round_to(Vec v, DType dt) {
  if (dt == DType::BF16)
    for (auto& x : v) x = bf16_to_f32(f32_to_bf16(x));
  return v;
}
DeviceBuffer up(const Vec& h, DType dt, cudaStream_t st) {
  DeviceBuffer d(h.size() * dsize(dt));
  upload_as(d.get(), h, dt, st);
  return d;
}
DeviceBuffer poisoned(size_t bytes, cudaStream_t st) {
  DeviceBuffer d(bytes);
  CUDA_CHECK(cudaMemsetAsync(d.get(), 0xff, bytes, st));  // NaN in f32 and bf16, NaN in e4m3: unwritten shows
  return d;
}
float e4m3_to_f32(uint8_t v) {
  int s = v >> 7, e = (v >> 3) & 15, m = v & 7;
  if (e == 15 && m == 7) return NAN;
  float f = e == 0 ? std::ldexp(float(m) / 8.f, -6) : std::ldexp(1.f + float(m) / 8.f, e - 7);
  return s ? -f : f;
}
Vec down(const void* d, DType dt, size_t n, cudaStream_t st) {
  CUDA_CHECK(cudaStreamSynchronize(st));
  Vec h(n);
  std::vector<uint8_t> raw(n * dsize(dt));
  CUDA_CHECK(cudaMemcpy(raw.data(), d, raw.size(), cudaMemcpyDeviceToHost));
  for (size_t i = 0; i < n; i++) {
    if (dt == DType::F32) memcpy(&h[i], raw.data() + 4 * i, 4);
    else if (dt == DType::BF16) h[i] = bf16_to_f32(uint16_t(raw[2 * i] | raw[2 * i + 1] << 8));
    else h[i] = e4m3_to_f32(raw[i]);
  }
  return h;
}
float down1(const float* d, cudaStream_t st) { return down(d, DType::F32, 1, st)[0]; }
double rel(const Vec& a, const std::vector<double>& ref) {
  if (a.size() != ref.size()) return INFINITY;
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); i++) {
    double d = double(a[i]) - ref[i];
    num += d * d;
    den += ref[i] * ref[i];
  }
  return std::isfinite(num) ? std::sqrt(num / den) : INFINITY;
}
// Bound of a quantity stored in dt (rounding of the output alone): f32 ~1e-6, bf16 ~4e-3.
double tol(DType dt) { return dt == DType::F32 ? 1e-5 : 1e-2; }

// LayerNorm + adaLN of one row: (x - mean) * rstd * (1 + scale) + shift, in float64.
void ln_ref(const double* x, int D, const float* shift, const float* scale, double eps, double* out) {
  double m = 0, q = 0;
  for (int i = 0; i < D; i++) m += x[i];
  m /= D;
  for (int i = 0; i < D; i++) q += (x[i] - m) * (x[i] - m);
  double r = 1.0 / std::sqrt(q / D + eps);
  for (int i = 0; i < D; i++) out[i] = (x[i] - m) * r * (1.0 + scale[i]) + shift[i];
}

void test_residual_layernorm(Engine& e, ReportFn report, std::mt19937& rng) {
  // Two geometries: a narrow one (one 4-column group a thread in the vectorised kernel, the default) and a wide
  // one (three groups, as FLUX's 3072) written with a LoRA reserve (row stride D + 8) whose columns must stay as they
  // were. Rows of two batches, blocks of 4 rows straddling them.
  for (const auto [D, pad] : {std::pair{300, 0}, std::pair{2100, 8}})
  for (DType ot : {DType::F32, DType::BF16, DType::FP8}) {
    if (ot != DType::F32 && e.dt == DType::F32) continue;
    const int B = 2, rpb = 5, rows = B * rpb, W = 3 * D;  // modulation rows [B, W]: gate, shift, scale
    const int ldo = ot == DType::FP8 ? D : D + pad;
    const std::string geo = pad ? "_d" + std::to_string(D) + "_ld" + std::to_string(ldo) : "";
    Vec x = randn(size_t(rows) * D, rng, 1.f, 0.3f), y = randn(size_t(rows) * D, rng), mod = randn(size_t(B) * W, rng, 0.5f);
    DeviceBuffer dx = up(x, DType::F32, e.st), dy = up(y, DType::F32, e.st), dm = up(mod, DType::F32, e.st);
    DeviceBuffer out = poisoned(size_t(rows) * ldo * dsize(ot), e.st), ws(sizeof(float) * (1 + 2 * rows)),
                 sc(sizeof(float));
    const float *g = dm.as<float>(), *sh = g + D, *scl = g + 2 * D;
    if (ot == DType::FP8) {
      CUDA_CHECK(cudaMemsetAsync(ws.get(), 0, 4, e.st));
      residual_layernorm(dx.as<float>(), dy.get(), DType::F32, D, g, W, rows, D, rpb, sh, scl, W, 1e-6f, nullptr, ot,
                         ws.as<float>() + 1, ws.as<float>(), e.st);
      layernorm_mod_fp8_apply(dx.as<float>(), rows, D, rpb, sh, scl, W, out.get(), sc.as<float>(), ws.as<float>(), e.st);
    } else {
      residual_layernorm(dx.as<float>(), dy.get(), DType::F32, D, g, W, rows, D, rpb, sh, scl, W, 1e-6f, out.get(), ot,
                         nullptr, nullptr, e.st, ldo);
    }
    std::vector<double> xr(size_t(rows) * D), ref(size_t(rows) * D);
    for (int r = 0; r < rows; r++) {
      const float* m = mod.data() + size_t(r / rpb) * W;
      for (int i = 0; i < D; i++) xr[size_t(r) * D + i] = double(x[size_t(r) * D + i]) + double(m[i]) * y[size_t(r) * D + i];
      ln_ref(&xr[size_t(r) * D], D, m + D, m + 2 * D, 1e-6, &ref[size_t(r) * D]);
    }
    Vec all = down(out.get(), ot, size_t(rows) * ldo, e.st), got;
    bool reserve_kept = true;
    for (int r = 0; r < rows; r++) {
      got.insert(got.end(), all.begin() + size_t(r) * ldo, all.begin() + size_t(r) * ldo + D);
      for (int i = D; i < ldo; i++) reserve_kept &= std::isnan(all[size_t(r) * ldo + i]);
    }
    if (ot == DType::FP8) {
      const float s = down1(sc.as<float>(), e.st);
      for (auto& v : got) v *= s;
    }
    report(std::string("unit.residual_layernorm_") + dname(ot) + geo, e.precision(), "rel_err", rel(got, ref),
           ot == DType::FP8 ? 5e-2 : tol(ot), true);
    report("unit.residual_layernorm_stream" + geo, e.precision(), "rel_err",
           rel(down(dx.get(), DType::F32, xr.size(), e.st), xr), 1e-6, true);
    if (pad && ot != DType::FP8)
      report("unit.residual_layernorm_reserve_kept" + geo, e.precision(), "ok", reserve_kept ? 0.0 : 1.0, 0.5, true);
  }
}

void test_fp8_quantizers(Engine& e, ReportFn report, std::mt19937& rng) {
  if (e.dt == DType::F32) return;
  // quantize_fp8: per-tensor scale amax / 448, values within e4m3's relative step.
  for (DType it : {DType::F32, DType::BF16}) {
    Vec x = round_to(randn(5000, rng, 3.f), it);
    DeviceBuffer dx = up(x, it, e.st), q = poisoned(x.size(), e.st), sc(4), ws(4);
    quantize_fp8(dx.get(), it, int64_t(x.size()), q.get(), sc.as<float>(), ws.as<float>(), e.st);
    double amax = 0;
    for (float v : x) amax = std::max(amax, double(std::fabs(v)));
    const float s = down1(sc.as<float>(), e.st);
    Vec got = down(q.get(), DType::FP8, x.size(), e.st);
    std::vector<double> ref(x.begin(), x.end());
    for (auto& v : got) v *= s;
    report(std::string("unit.quantize_fp8_") + dname(it), e.precision(), "rel_err", rel(got, ref), 5e-2, true);
    report(std::string("unit.quantize_fp8_scale_") + dname(it), e.precision(), "rel_err",
           std::fabs(s - amax / 448.0) / (amax / 448.0), 1e-6, true);
  }
  // layernorm_mod_fp8: the two-pass LayerNorm writing fp8.
  const int B = 2, rpb = 4, rows = B * rpb, D = 200, W = 2 * D;
  Vec x = randn(size_t(rows) * D, rng), mod = randn(size_t(B) * W, rng, 0.5f);
  DeviceBuffer dx = up(x, DType::F32, e.st), dm = up(mod, DType::F32, e.st), out = poisoned(size_t(rows) * D, e.st),
               sc(4), ws(sizeof(float) * (1 + 2 * rows));
  layernorm_mod_fp8(dx.as<float>(), rows, D, rpb, dm.as<float>(), dm.as<float>() + D, W, 1e-6f, out.get(),
                    sc.as<float>(), ws.as<float>(), e.st);
  std::vector<double> ref(size_t(rows) * D), xr(x.begin(), x.end());
  for (int r = 0; r < rows; r++) {
    const float* m = mod.data() + size_t(r / rpb) * W;
    ln_ref(&xr[size_t(r) * D], D, m, m + D, 1e-6, &ref[size_t(r) * D]);
  }
  Vec got = down(out.get(), DType::FP8, ref.size(), e.st);
  const float s = down1(sc.as<float>(), e.st);
  for (auto& v : got) v *= s;
  report("unit.layernorm_mod_fp8", e.precision(), "rel_err", rel(got, ref), 5e-2, true);
}

// Host mirror of quantize_fp8_rows on values v (already dequantised: fp8 code * per-tensor scale, or bf16 / fp32),
// rows of `cols` at stride ld: the scale amax / 448 (1 for an all-zero row) and each value's E4M3 code (as its float
// value), computed with the kernel's own float operations (v * (1 / s), then cuda_fp8.h's satfinite rounding, which
// is host code too), so codes and scales must match bit for bit.
void host_row_quant(const Vec& v, int rows, int cols, int ld, Vec& q, Vec& scales) {
  q.assign(size_t(rows) * cols, 0.f);
  scales.assign(rows, 0.f);
  for (int r = 0; r < rows; r++) {
    float m = 0.f;
    for (int c = 0; c < cols; c++) m = std::fmax(m, std::fabs(v[size_t(r) * ld + c]));
    float s = m / 448.f;
    if (!(s >= FLT_MIN)) s = 1.f;
    const float inv = 1.f / s;
    scales[r] = s;
    for (int c = 0; c < cols; c++) q[size_t(r) * cols + c] = float(__nv_fp8_e4m3(v[size_t(r) * ld + c] * inv));
  }
}

double mismatches(const Vec& a, const Vec& b) {
  if (a.size() != b.size()) return INFINITY;
  double n = 0;
  for (size_t i = 0; i < a.size(); i++) n += !(a[i] == b[i]);
  return n;
}

// quantize_fp8_rows (the fp8row quantiser of activations per token and weights per output channel): codes and
// scales against host_row_quant bit for bit, dequantised values against the input (E4M3 keeps 3 mantissa bits:
// a relative step of 2^-3, so |error| <= 2^-4 of each value's binade; L2 over a normal row ~2-3 %), and an all-zero
// row (scale 1, codes 0). Inputs: fp32, bf16 with a row stride wider than the row, fp8 with a per-tensor scale (a
// norm's output shared with an fp8 layer); widths 600 (register path) and 17000 (> 64 x 256: the two-read path).
void test_fp8row_quantizer(Engine& e, ReportFn report, std::mt19937& rng) {
  if (e.dt == DType::F32) return;
  for (int cols : {600, 17000})
    for (DType it : {DType::F32, DType::BF16, DType::FP8}) {
      const int rows = cols > 1000 ? 3 : 9, ld = it == DType::BF16 ? cols + 24 : cols, zero = 1;
      Vec x = randn(size_t(rows) * ld, rng, 2.f);
      for (int r = 0; r < rows; r++)  // rows of different magnitudes: what per-row scales are for
        for (int c = 0; c < ld; c++) x[size_t(r) * ld + c] *= r == zero ? 0.f : std::ldexp(1.f, (r % 5) * 3 - 6);
      DeviceBuffer dx, q8, sc(16), ws(16);
      const float* in_scale = nullptr;
      Vec v;  // the values the quantiser sees
      if (it == DType::FP8) {
        DeviceBuffer src = up(x, DType::F32, e.st);
        q8 = DeviceBuffer(x.size());
        quantize_fp8(src.get(), DType::F32, int64_t(x.size()), q8.get(), sc.as<float>(), ws.as<float>(), e.st);
        const float ts = down1(sc.as<float>(), e.st);
        v = down(q8.get(), DType::FP8, x.size(), e.st);
        for (auto& a : v) a *= ts;  // tof(code) * scale, as the kernel forms it
        in_scale = sc.as<float>();
      } else {
        v = round_to(x, it);
        dx = up(v, it, e.st);
      }
      DeviceBuffer out = poisoned(size_t(rows) * cols, e.st), scales = poisoned(size_t(rows) * 4, e.st);
      quantize_fp8_rows(it == DType::FP8 ? q8.get() : dx.get(), it, ld, in_scale, rows, cols, out.get(),
                        scales.as<float>(), e.st);
      Vec hq, hs;
      host_row_quant(v, rows, cols, ld, hq, hs);
      const Vec gq = down(out.get(), DType::FP8, hq.size(), e.st), gs = down(scales.get(), DType::F32, rows, e.st);
      const std::string tag = std::string(dname(it)) + "_w" + std::to_string(cols);
      report("unit.fp8row_quant_codes_" + tag, e.precision(), "mismatches", mismatches(gq, hq), 0, true);
      report("unit.fp8row_quant_scales_" + tag, e.precision(), "mismatches", mismatches(gs, hs), 0, true);
      std::vector<double> ref;
      Vec deq;
      for (int r = 0; r < rows; r++)
        for (int c = 0; c < cols; c++) {
          ref.push_back(v[size_t(r) * ld + c]);
          deq.push_back(gq[size_t(r) * cols + c] * gs[r]);
        }
      report("unit.fp8row_quant_values_" + tag, e.precision(), "rel_err", rel(deq, ref), 5e-2, true);
      double zbad = gs[zero] == 1.f ? 0 : 1;
      for (int c = 0; c < cols; c++) zbad += gq[size_t(zero) * cols + c] != 0.f;
      report("unit.fp8row_quant_zero_row_" + tag, e.precision(), "bad", zbad, 0, true);
    }
}

// linear() on an fp8row layer (weights quantised per output channel by the loader's call, the input per token
// inside linear()) against a float64 host product of the dequantised operands: y = (qx qw^T) s_x s_w + b, GELU,
// + residual, for every epilogue (None, Bias, BiasGelu, Bias + residual aliasing y) and output type (f32, bf16);
// plus an fp8 per-tensor input (dequantised and requantised per row) and a strided bf16 input, with an all-zero row.
// Tolerance: the operands are the host's exactly (the quantiser matches bit for bit, test above), so what remains is
// the GEMM's accumulation (cuBLASLt fp8 fast accumulation: the tensor cores' reduced-precision fp32 sums, ~2^-14
// relative per addition on Hopper, K = 96 terms: ~1e-4 relative) and the epilogue's fp32 products: 2e-3 for f32
// outputs; bf16 outputs add their rounding (2^-9 relative at most, ~1e-3 in L2): 1e-2, as tol(bf16).
void test_fp8row_linear(Engine& e, ReportFn report, std::mt19937& rng) {
  if (e.dt == DType::F32) return;
  const int M = 33, N = 80, K = 96, zero = 4;
  Vec W = round_to(randn(size_t(N) * K, rng, 0.1f), DType::BF16), bias = randn(N, rng, 0.5f);
  for (int o = 0; o < N; o++)  // output channels of different magnitudes: what per-channel scales are for
    for (int k = 0; k < K; k++) W[size_t(o) * K + k] = bf16_to_f32(f32_to_bf16(W[size_t(o) * K + k] * float(1 + o % 7)));
  DeviceBuffer dW = up(W, DType::BF16, e.st), dB = up(bias, DType::F32, e.st), w8(size_t(N) * K), ws(size_t(N) * 4);
  quantize_fp8_rows(dW.get(), DType::BF16, K, nullptr, N, K, w8.get(), ws.as<float>(), e.st);
  const Vec qw = down(w8.get(), DType::FP8, size_t(N) * K, e.st), sw = down(ws.get(), DType::F32, N, e.st);
  Linear l;
  l.name = "test/fp8row";
  l.out = N;
  l.in = K;
  l.wt = DType::FP8ROW;
  l.w = w8.get();
  l.w_scale = ws.as<float>();
  l.b = dB.as<float>();
  Ctx c = e.ctx();
  struct Case {
    const char* name;
    DType it, ot;
    Epi epi;
    bool resid;
  };
  const Case cases[] = {
      {"bias_f32", DType::BF16, DType::F32, Epi::Bias, false},
      {"bias_bf16", DType::BF16, DType::BF16, Epi::Bias, false},
      {"gelu_f32", DType::BF16, DType::F32, Epi::BiasGelu, false},
      {"gelu_bf16", DType::BF16, DType::BF16, Epi::BiasGelu, false},
      {"resid_f32", DType::BF16, DType::F32, Epi::Bias, true},
      {"resid_bf16", DType::BF16, DType::BF16, Epi::Bias, true},
      {"none_f32", DType::BF16, DType::F32, Epi::None, false},
      {"fp8_in_bias_bf16", DType::FP8, DType::BF16, Epi::Bias, false},
      {"f32_in_gelu_f32", DType::F32, DType::F32, Epi::BiasGelu, false},
  };
  for (const Case& k : cases) {
    const int ld = k.it == DType::BF16 ? K + 16 : K;  // bf16 inputs strided, as a slice of a wider buffer
    Vec x = randn(size_t(M) * ld, rng, 1.f);
    for (int j = 0; j < ld; j++) x[size_t(zero) * ld + j] = 0.f;
    for (int r = 0; r < M; r++)
      for (int j = 0; j < ld; j++) x[size_t(r) * ld + j] *= float(1 + r % 4);
    DeviceBuffer dx, sc(16), tws(16);
    In in{nullptr, k.it, ld};
    Vec v;
    if (k.it == DType::FP8) {
      DeviceBuffer src = up(x, DType::F32, e.st);
      dx = DeviceBuffer(x.size());
      quantize_fp8(src.get(), DType::F32, int64_t(x.size()), dx.get(), sc.as<float>(), tws.as<float>(), e.st);
      const float ts = down1(sc.as<float>(), e.st);
      v = down(dx.get(), DType::FP8, x.size(), e.st);
      for (auto& a : v) a *= ts;
      in = In{dx.get(), DType::FP8, ld, sc.as<float>()};
    } else {
      v = round_to(x, k.it);
      dx = up(v, k.it, e.st);
      in.p = dx.get();
    }
    Vec R = round_to(randn(size_t(M) * N, rng), k.ot);
    DeviceBuffer dy = k.resid ? up(R, k.ot, e.st) : poisoned(size_t(M) * N * dsize(k.ot), e.st);
    linear(c, l, M, in, Out{dy.get(), k.ot, N}, k.epi, k.resid ? dy.get() : nullptr);
    Vec qx, sx;
    host_row_quant(v, M, K, ld, qx, sx);
    std::vector<double> ref(size_t(M) * N);
    for (int r = 0; r < M; r++)
      for (int o = 0; o < N; o++) {
        double s = 0;
        for (int j = 0; j < K; j++) s += double(qx[size_t(r) * K + j]) * qw[size_t(o) * K + j];
        s *= double(sx[r]) * sw[o];
        if (k.epi != Epi::None) s += bias[o];
        if (k.epi == Epi::BiasGelu) s = 0.5 * s * (1 + std::tanh(0.7978845608028654 * (s + 0.044715 * s * s * s)));
        if (k.resid) s += R[size_t(r) * N + o];
        ref[size_t(r) * N + o] = s;
      }
    report(std::string("unit.fp8row_linear_") + k.name, e.precision(), "rel_err",
           rel(down(dy.get(), k.ot, ref.size(), e.st), ref), k.ot == DType::F32 ? 2e-3 : 1e-2, true);
  }
  CUDA_CHECK(cudaStreamSynchronize(e.st));  // the scratch the layer used stays; the test buffers go
}

// RoPE's (cos, sin) table [S, D/2, 2] for positions 0 .. S-1 (theta 10000), as the engine's kernels read it.
Vec rope_table(int S, int D) {
  const int half = D / 2;
  Vec cs(size_t(S) * half * 2);
  for (int p = 0; p < S; p++)
    for (int j = 0; j < half; j++) {
      double a = p * std::pow(10000.0, -2.0 * j / D);
      cs[(size_t(p) * half + j) * 2] = float(std::cos(a));
      cs[(size_t(p) * half + j) * 2 + 1] = float(std::sin(a));
    }
  return cs;
}

// Host reference of one head: RMS norm (eps 1e-6) with weight w, then RoPE on pairs (2j, 2j+1) with the position's
// row `cs` of rope_table; D values appended to `ref`.
void qk_norm_rope_ref(const float* src, const float* w, const float* cs, int D, std::vector<double>& ref) {
  double ss = 0;
  for (int d = 0; d < D; d++) ss += double(src[d]) * src[d];
  const double r = 1.0 / std::sqrt(ss / D + 1e-6);
  for (int j = 0; j < D / 2; j++) {
    double a = src[2 * j] * r * w[2 * j], c = src[2 * j + 1] * r * w[2 * j + 1];
    ref.push_back(a * cs[2 * j] - c * cs[2 * j + 1]);
    ref.push_back(c * cs[2 * j] + a * cs[2 * j + 1]);
  }
}

void test_qk_norm_rope(Engine& e, ReportFn report, std::mt19937& rng) {
  for (int D : {16, 128}) {
    const int B = 2, n = 7, off = 3, S = 12, H = 3, ld = 3 * H * D + 8, half = D / 2;
    Vec qkv = round_to(randn(size_t(B) * n * ld, rng), e.dt), wq = randn(D, rng, 0.1f, 1.f), wk = randn(D, rng, 0.1f, 1.f);
    Vec cs = rope_table(S, D);
    const size_t nout = size_t(B) * S * H * D;
    DeviceBuffer dqkv = up(qkv, e.dt, e.st), dwq = up(wq, DType::F32, e.st), dwk = up(wk, DType::F32, e.st),
                 dcs = up(cs, DType::F32, e.st);
    DeviceBuffer Q = poisoned(nout * dsize(e.dt), e.st), K = poisoned(nout * dsize(e.dt), e.st),
                 V = poisoned(nout * dsize(e.dt), e.st);
    qk_norm_rope(dqkv.get(), e.dt, ld, B, n, off, S, H, D, dwq.as<float>(), dwk.as<float>(), dcs.as<float>(), Q.get(),
                 K.get(), V.get(), e.dt, e.st);
    Vec q = down(Q.get(), e.dt, nout, e.st), k = down(K.get(), e.dt, nout, e.st), v = down(V.get(), e.dt, nout, e.st);
    Vec got;
    std::vector<double> ref;
    for (int b = 0; b < B; b++)
      for (int i = 0; i < n; i++)
        for (int h = 0; h < H; h++) {
          const int p = off + i;
          const float* row = qkv.data() + (size_t(b) * n + i) * ld + size_t(h) * D;
          const size_t dst = ((size_t(b) * S + p) * H + h) * D;
          for (int which = 0; which < 2; which++) {
            const float* src = row + size_t(which) * H * D;
            const Vec& w = which ? wk : wq;
            qk_norm_rope_ref(src, w.data(), cs.data() + size_t(p) * half * 2, D, ref);
            const Vec& o = which ? k : q;
            got.insert(got.end(), o.begin() + dst, o.begin() + dst + D);
          }
          for (int d = 0; d < D; d++) {
            ref.push_back(row[2 * H * D + d]);
            got.push_back(v[dst + d]);
          }
        }
    report("unit.qk_norm_rope_d" + std::to_string(D), e.precision(), "rel_err", rel(got, ref), tol(e.dt), true);
  }
}

// The in-place variant (flux.cu with FQ_QKV_INPLACE=1): a joint [B*S, ld] projection, rows i < split with the first
// weight pair and positions p = i; q and k rewritten in place, v and the padding columns left bit for bit.
void test_qk_norm_rope_inplace(Engine& e, ReportFn report, std::mt19937& rng) {
  for (int D : {16, 128}) {
    const int B = 2, S = 12, split = 5, H = 3, ld = 3 * H * D + 8, half = D / 2;
    Vec qkv = round_to(randn(size_t(B) * S * ld, rng), e.dt);
    Vec w[4];
    for (auto& x : w) x = randn(D, rng, 0.1f, 1.f);
    Vec cs = rope_table(S, D);
    DeviceBuffer dqkv = up(qkv, e.dt, e.st), dcs = up(cs, DType::F32, e.st);
    DeviceBuffer dw[4] = {up(w[0], DType::F32, e.st), up(w[1], DType::F32, e.st), up(w[2], DType::F32, e.st),
                          up(w[3], DType::F32, e.st)};
    qk_norm_rope_inplace(dqkv.get(), e.dt, ld, B, S, split, H, D, dw[0].as<float>(), dw[1].as<float>(),
                         dw[2].as<float>(), dw[3].as<float>(), dcs.as<float>(), e.st);
    Vec out = down(dqkv.get(), e.dt, qkv.size(), e.st);
    Vec got;
    std::vector<double> ref;
    size_t kept_changed = 0;
    for (int b = 0; b < B; b++)
      for (int p = 0; p < S; p++) {
        const size_t r0 = (size_t(b) * S + p) * ld;
        for (int h = 0; h < H; h++)
          for (int which = 0; which < 2; which++) {
            const float* src = qkv.data() + r0 + size_t(which) * H * D + size_t(h) * D;
            const float* o = out.data() + r0 + size_t(which) * H * D + size_t(h) * D;
            const Vec& wt = w[(p < split ? 0 : 2) + which];
            qk_norm_rope_ref(src, wt.data(), cs.data() + size_t(p) * half * 2, D, ref);
            got.insert(got.end(), o, o + D);
          }
        for (int col = 2 * H * D; col < ld; col++) kept_changed += out[r0 + col] != qkv[r0 + col];  // v, padding
      }
    const std::string d = std::to_string(D);
    report("unit.qk_norm_rope_inplace_d" + d, e.precision(), "rel_err", rel(got, ref), tol(e.dt), true);
    report("unit.qk_norm_rope_inplace_d" + d + "_v_changed", e.precision(), "count", double(kept_changed), 0, true);
  }
}

// lora_fold_fp8 (the fp8 LoRA along K): h [rows, r] and B [out, r] in bf16 -> e4m3 codes in the reserve columns of
// x rows (stride ldx) and W rows (stride ldw) with the factors m / amax(h) and m / amax(B), m = min(sqrt(amax(h)
// amax(B) / s_w), 448). Codes against the host's conversion of the same float products (cuda_fp8.h, satfinite),
// bytes outside the reserve columns untouched, and an all-zero h writing zeros.
void test_lora_fold_fp8(Engine& e, ReportFn report, std::mt19937& rng) {
  const int rows = 37, out = 29, r = 32, off = 48, ldx = off + 64, ldw = off + 80;
  for (bool zero_h : {false, true}) {
    Vec h = round_to(randn(size_t(rows) * r, rng, 3.f), DType::BF16);
    Vec b = round_to(randn(size_t(out) * r, rng, 0.02f), DType::BF16);
    if (zero_h) std::fill(h.begin(), h.end(), 0.f);
    float ah = 0, ab = 0;
    for (float v : h) ah = std::max(ah, std::fabs(v));
    for (float v : b) ab = std::max(ab, std::fabs(v));
    const float sw = 1e-4f;
    DeviceBuffer dh = up(h, DType::BF16, e.st), db = up(b, DType::BF16, e.st), sc = up({ah, ab, sw}, DType::F32, e.st);
    DeviceBuffer xres = poisoned(size_t(rows) * ldx, e.st), wres = poisoned(size_t(out) * ldw, e.st);
    lora_fold_fp8(dh.get(), rows, r, db.get(), out, sc.as<float>(), sc.as<float>() + 1, sc.as<float>() + 2,
                  static_cast<char*>(xres.get()) + off, ldx, static_cast<char*>(wres.get()) + off, ldw, e.st);
    CUDA_CHECK(cudaStreamSynchronize(e.st));
    std::vector<uint8_t> gx(size_t(rows) * ldx), gw(size_t(out) * ldw);
    CUDA_CHECK(cudaMemcpy(gx.data(), xres.get(), gx.size(), cudaMemcpyDeviceToHost));
    CUDA_CHECK(cudaMemcpy(gw.data(), wres.get(), gw.size(), cudaMemcpyDeviceToHost));
    // The kernel's own float operations: m, the two factors, then one product per element.
    const bool z = !(ah > 0.f) || !(ab > 0.f);
    const float m = z ? 0.f : std::fmin(std::sqrt(ah * ab / sw), 448.f), fh = z ? 0.f : m / ah, fb = z ? 0.f : m / ab;
    int bad = 0, touched = 0;
    auto check = [&](const std::vector<uint8_t>& got, const Vec& src, int n, int ld, float f) {
      for (int i = 0; i < n; i++)
        for (int c = 0; c < ld; c++) {
          const uint8_t g = got[size_t(i) * ld + c];
          if (c < off || c >= off + r) touched += g != 0xff;
          else bad += g != __nv_fp8_e4m3(src[size_t(i) * r + (c - off)] * f).__x;
        }
    };
    check(gx, h, rows, ldx, fh);
    check(gw, b, out, ldw, fb);
    const std::string tag = zero_h ? "_zero_h" : "";
    report("unit.lora_fold_fp8_codes" + tag, e.precision(), "mismatches", bad, 0, true);
    report("unit.lora_fold_fp8_outside_reserve" + tag, e.precision(), "changed", touched, 0, true);
  }
}

void test_groupnorm(Engine& e, ReportFn report, std::mt19937& rng) {
  struct Cfg {
    int B, HW, C, G;
    bool silu;
  };
  for (Cfg g : {Cfg{2, 37, 64, 8, true}, Cfg{1, 50, 24, 8, false}}) {
    const size_t n = size_t(g.B) * g.HW * g.C;
    Vec x = round_to(randn(n, rng, 2.f, 0.5f), e.dt), gam = randn(g.C, rng, 0.2f, 1.f), bet = randn(g.C, rng, 0.2f);
    DeviceBuffer dx = up(x, e.dt, e.st), dg = up(gam, DType::F32, e.st), db = up(bet, DType::F32, e.st),
                 out = poisoned(n * dsize(e.dt), e.st), ws(sizeof(double) * 3 * g.B * g.G);
    groupnorm(dx.get(), e.dt, g.B, g.HW, g.C, g.G, dg.as<float>(), db.as<float>(), 1e-6f, g.silu, out.get(),
              ws.as<double>(), e.st);
    std::vector<double> ref(n);
    const int cg = g.C / g.G;
    for (int b = 0; b < g.B; b++)
      for (int gr = 0; gr < g.G; gr++) {
        double m = 0, q = 0, cnt = double(g.HW) * cg;
        for (int p = 0; p < g.HW; p++)
          for (int c = gr * cg; c < (gr + 1) * cg; c++) m += x[(size_t(b) * g.HW + p) * g.C + c];
        m /= cnt;
        for (int p = 0; p < g.HW; p++)
          for (int c = gr * cg; c < (gr + 1) * cg; c++) {
            double d = x[(size_t(b) * g.HW + p) * g.C + c] - m;
            q += d * d;
          }
        const double r = 1.0 / std::sqrt(q / cnt + 1e-6);
        for (int p = 0; p < g.HW; p++)
          for (int c = gr * cg; c < (gr + 1) * cg; c++) {
            const size_t at = (size_t(b) * g.HW + p) * g.C + c;
            double v = (x[at] - m) * r * gam[c] + bet[c];
            ref[at] = g.silu ? v / (1.0 + std::exp(-v)) : v;
          }
      }
    report("unit.groupnorm_c" + std::to_string(g.C) + (g.silu ? "_silu" : ""), e.precision(), "rel_err",
           rel(down(out.get(), e.dt, n, e.st), ref), tol(e.dt), true);
  }
}

// The wrapper's path for type/epilogue mixes without a cuBLASLt kernel: plain GEMM, then bias (+ GELU) kernels.
void test_gemm_fallback(Engine& e, ReportFn report, std::mt19937& rng) {
  const int M = 45, N = 72, K = 40;
  for (Epi epi : {Epi::Bias, Epi::BiasGelu}) {
    Vec X = round_to(randn(size_t(M) * K, rng), e.dt), W = round_to(randn(size_t(N) * K, rng, 0.2f), e.dt),
        bias = randn(N, rng);
    DeviceBuffer dX = up(X, e.dt, e.st), dW = up(W, e.dt, e.st), dB = up(bias, DType::F32, e.st),
                 dY = poisoned(size_t(M) * N * 4, e.st);
    const int before = e.gemm.fallbacks();
    e.gemm.force_fallback(true);
    e.gemm.linear(e.st, M, N, K, dX.get(), e.dt, K, dW.get(), e.dt, dB.as<float>(), epi, dY.get(), DType::F32, N);
    e.gemm.force_fallback(false);
    std::vector<double> ref(size_t(M) * N);
    for (int m = 0; m < M; m++)
      for (int nn = 0; nn < N; nn++) {
        double s = bias[nn];
        for (int k = 0; k < K; k++) s += double(X[size_t(m) * K + k]) * W[size_t(nn) * K + k];
        if (epi == Epi::BiasGelu) s = 0.5 * s * (1 + std::tanh(0.7978845608028654 * (s + 0.044715 * s * s * s)));
        ref[size_t(m) * N + nn] = s;
      }
    const bool took = e.gemm.fallbacks() > before;
    report(std::string("unit.gemm_fallback_") + (epi == Epi::Bias ? "bias" : "bias_gelu"), e.precision(), "rel_err",
           took ? rel(down(dY.get(), DType::F32, ref.size(), e.st), ref) : INFINITY, e.dt == DType::F32 ? 1e-6 : 1e-3,
           true);
  }
}

// softmax(scale q k^T) v per (batch, head) in float64; q/k/v [B, S, H, D].
std::vector<double> attention_ref(const Vec& q, const Vec& k, const Vec& v, int B, int S, int H, int D, bool causal) {
  std::vector<double> o(size_t(B) * S * H * D), p(S);
  const double scale = 1.0 / std::sqrt(double(D));
  for (int b = 0; b < B; b++)
    for (int h = 0; h < H; h++)
      for (int i = 0; i < S; i++) {
        const float* qi = q.data() + ((size_t(b) * S + i) * H + h) * D;
        double mx = -1e300, sum = 0;
        for (int j = 0; j < S; j++) {
          double s = -1e300;
          if (!causal || j <= i) {
            s = 0;
            const float* kj = k.data() + ((size_t(b) * S + j) * H + h) * D;
            for (int d = 0; d < D; d++) s += double(qi[d]) * kj[d];
            s *= scale;
          }
          p[j] = s;
          mx = std::max(mx, s);
        }
        for (int j = 0; j < S; j++) sum += p[j] = (!causal || j <= i) ? std::exp(p[j] - mx) : 0.0;
        double* oi = o.data() + ((size_t(b) * S + i) * H + h) * D;
        for (int j = 0; j < S; j++) {
          const float* vj = v.data() + ((size_t(b) * S + j) * H + h) * D;
          for (int d = 0; d < D; d++) oi[d] += p[j] / sum * vj[d];
        }
      }
  return o;
}

void test_attention(Engine& e, ReportFn report, std::mt19937& rng) {
  const int B = 2, S = 133, H = 3;
  for (int D : {16, 64, 128}) {
    const size_t n = size_t(B) * S * H * D;
    Vec q = round_to(randn(n, rng), e.dt), k = round_to(randn(n, rng), e.dt), v = round_to(randn(n, rng), e.dt);
    DeviceBuffer dq = up(q, e.dt, e.st), dk = up(k, e.dt, e.st), dv = up(v, e.dt, e.st);
    const float scale = 1.f / std::sqrt(float(D));
    for (bool causal : {false, true}) {
      if (causal && D != 64) continue;
      auto ref = attention_ref(q, k, v, B, S, H, D, causal);
      DeviceBuffer o = poisoned(n * dsize(e.dt), e.st);
      attention_rows(dq.get(), dk.get(), dv.get(), e.dt, H * D, H * D, H * D, int64_t(S) * H * D, int64_t(S) * H * D, B,
                     S, S, H, D, scale, causal, nullptr, OutMap{nullptr, o.get(), 0, H * D}, e.st);
      report(std::string("unit.attention_rows_d") + std::to_string(D) + (causal ? "_causal" : "") + "_vs_host",
             e.precision(), "rel_err", rel(down(o.get(), e.dt, n, e.st), ref), tol(e.dt), true);
      if (causal || e.dt != DType::BF16) continue;
      DeviceBuffer o2 = poisoned(n * 2, e.st);
      bool ran = flash_attention(dq.get(), dk.get(), dv.get(), B, S, H, D, scale, OutMap{nullptr, o2.get(), 0, H * D}, e.st);
      report("unit.flash_attention_d" + std::to_string(D) + "_vs_host", e.precision(), "rel_err",
             ran ? rel(down(o2.get(), DType::BF16, n, e.st), ref) : INFINITY, 1e-2, true);
      if (!e.cudnn.available()) continue;
      DeviceBuffer o3 = poisoned(n * 2, e.st);
      ran = e.cudnn.run(dq.get(), dk.get(), dv.get(), o3.get(), B, S, H, D, H * D, scale, e.st);
      report("unit.cudnn_attention_d" + std::to_string(D) + "_vs_host", e.precision(), "rel_err",
             ran ? rel(down(o3.get(), DType::BF16, n, e.st), ref) : INFINITY, 1e-2, true);
    }
    // q, k, v read in place from one packed [B, S, 3, H, D] projection (row stride 3HD, FQ_QKV_INPLACE=1).
    const int ldi = 3 * H * D;
    Vec packed(size_t(B) * S * ldi);
    for (size_t t = 0; t < size_t(B) * S; t++)
      for (int c = 0; c < H * D; c++) {
        packed[t * ldi + c] = q[t * H * D + c];
        packed[t * ldi + H * D + c] = k[t * H * D + c];
        packed[t * ldi + 2 * H * D + c] = v[t * H * D + c];
      }
    DeviceBuffer dp = up(packed, e.dt, e.st);
    const char* pq = static_cast<const char*>(dp.get());
    const size_t hd_bytes = size_t(H) * D * dsize(e.dt);
    auto ref = attention_ref(q, k, v, B, S, H, D, false);
    const std::string d = std::to_string(D);
    DeviceBuffer o4 = poisoned(n * dsize(e.dt), e.st);
    attention_rows(pq, pq + hd_bytes, pq + 2 * hd_bytes, e.dt, ldi, ldi, ldi, int64_t(S) * ldi, int64_t(S) * ldi, B, S,
                   S, H, D, scale, false, nullptr, OutMap{nullptr, o4.get(), 0, H * D}, e.st);
    report("unit.attention_rows_d" + d + "_packed_qkv_vs_host", e.precision(), "rel_err",
           rel(down(o4.get(), e.dt, n, e.st), ref), tol(e.dt), true);
    if (e.dt != DType::BF16) continue;
    DeviceBuffer o5 = poisoned(n * 2, e.st);
    bool ran = flash_attention(pq, pq + hd_bytes, pq + 2 * hd_bytes, B, S, H, D, scale,
                               OutMap{nullptr, o5.get(), 0, H * D}, e.st, ldi);
    report("unit.flash_attention_d" + d + "_packed_qkv_vs_host", e.precision(), "rel_err",
           ran ? rel(down(o5.get(), DType::BF16, n, e.st), ref) : INFINITY, 1e-2, true);
    if (!e.cudnn.available()) continue;
    DeviceBuffer o6 = poisoned(n * 2, e.st);
    ran = e.cudnn.run(pq, pq + hd_bytes, pq + 2 * hd_bytes, o6.get(), B, S, H, D, H * D, scale, e.st, ldi);
    report("unit.cudnn_attention_d" + d + "_packed_qkv_vs_host", e.precision(), "rel_err",
           ran ? rel(down(o6.get(), DType::BF16, n, e.st), ref) : INFINITY, 1e-2, true);
  }
}

}  // namespace

void run_kernel_units(Engine& e, ReportFn report) {
  std::mt19937 rng(20261206);
  test_residual_layernorm(e, report, rng);
  test_fp8_quantizers(e, report, rng);
  if (e.dt != DType::F32) test_lora_fold_fp8(e, report, rng);
  test_fp8row_quantizer(e, report, rng);
  test_fp8row_linear(e, report, rng);
  test_qk_norm_rope(e, report, rng);
  test_qk_norm_rope_inplace(e, report, rng);
  test_groupnorm(e, report, rng);
  test_gemm_fallback(e, report, rng);
  test_attention(e, report, rng);
  CUDA_CHECK(cudaStreamSynchronize(e.st));
}

}  // namespace fq
