#include "gemm.h"

#include <cstdlib>
#include <string>

#include "device_buffer.h"
#include "event_timer.h"
#include "kernels/kernels.h"
#include "profile.h"

namespace fq {
namespace {

void check_blas(cublasStatus_t s, const char* expr, const char* file, int line) {
  if (s == CUBLAS_STATUS_SUCCESS) return;
  raise_library_fault("cuBLAS", std::to_string(int(s)) + " (" + cublasGetStatusString(s) + ")", expr, file, line,
                      s == CUBLAS_STATUS_EXECUTION_FAILED);
}
#define BLAS_CHECK(x) check_blas((x), #x, __FILE__, __LINE__)

cudaDataType_t cuda_type(DType t) {
  return t == DType::F32 ? CUDA_R_32F : t == DType::BF16 ? CUDA_R_16BF : CUDA_R_8F_E4M3;
}

// Largest power of two (<= 256) dividing the address: the alignment cuBLASLt may assume for this operand.
int align_of(const void* p) {
  uintptr_t u = reinterpret_cast<uintptr_t>(p);
  int a = 256;
  while (a > 1 && (u % a)) a >>= 1;
  return a;
}

}  // namespace

Gemm::Gemm() {
  BLAS_CHECK(cublasLtCreate(&lt_));
  BLAS_CHECK(cublasCreate(&blas_));
  // Default math: fp32 GEMMs stay fp32 (no TF32) unless a caller opts in; conformance depends on it.
  BLAS_CHECK(cublasSetMathMode(blas_, CUBLAS_DEFAULT_MATH));
  const char* tune = getenv("FQ_GEMM_TUNE");
  tune_on_ = !(tune && std::string(tune) == "0");
  CUDA_CHECK(cudaMalloc(&ws_, ws_bytes_));
  BLAS_CHECK(cublasSetWorkspace(blas_, ws_, ws_bytes_));
}

Gemm::~Gemm() {
  for (auto& [k, b] : bias_bf16_) cudaFree(b);
  for (auto& [k, p] : plans_) {
    if (p.op) cublasLtMatmulDescDestroy(p.op);
    if (p.a) cublasLtMatrixLayoutDestroy(p.a);
    if (p.b) cublasLtMatrixLayoutDestroy(p.b);
    if (p.c) cublasLtMatrixLayoutDestroy(p.c);
  }
  if (ws_) cudaFree(ws_);
  if (blas_) cublasDestroy(blas_);
  if (lt_) cublasLtDestroy(lt_);
}

Gemm::Plan& Gemm::plan(int M, int N, int K, DType xt, int ldx, DType wt, DType yt, int ldy, int epi, int align,
                       const float* bias, int ldw) {
  Key key{M, N, K, int(xt), ldx, int(wt), int(yt), ldy, epi, align, bias != nullptr, ldw};
  auto it = plans_.find(key);
  if (it != plans_.end()) return it->second;
  Plan& p = plans_[key];
  // Column-major view: D^T[N, M] = W[N, K] (stored as K x N, op T) * X^T (stored K x M, op N).
  BLAS_CHECK(cublasLtMatmulDescCreate(&p.op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
  BLAS_CHECK(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta));
  BLAS_CHECK(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb));
  cublasLtEpilogue_t e = epi == int(Epi::BiasGelu) ? CUBLASLT_EPILOGUE_GELU_BIAS
                         : epi == int(Epi::Bias)   ? CUBLASLT_EPILOGUE_BIAS
                                                   : CUBLASLT_EPILOGUE_DEFAULT;
  BLAS_CHECK(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_EPILOGUE, &e, sizeof e));
  // The bias has D's type (cuBLASLt's default; an fp32 bias with a bf16 D has no kernel): see bias_for().
  if (e != CUBLASLT_EPILOGUE_DEFAULT) {
    BLAS_CHECK(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof bias));
    // fp8 products with an fp32 D take a bf16 bias (cuBLASLt's fp8 type table). Only the calibration's fp8 trials of
    // fp32-output layers (x_embedder, output projections) make such products; they ran once this and the scale
    // alignment (linear.cu) were both fixed, so which of the two the matmul refused is not known.
    if (wt == DType::FP8 && yt == DType::F32) {
      int32_t bt = CUDA_R_16BF;
      BLAS_CHECK(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bt, sizeof bt));
    }
  }
  if (wt == DType::FP8) {
    int8_t fast = 1;
    BLAS_CHECK(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_FAST_ACCUM, &fast, sizeof fast));
    // Placeholder scale pointers (any device float) so the heuristic sees a scaled fp8 product; set per call.
    const float* s = bias;
    BLAS_CHECK(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &s, sizeof s));
    BLAS_CHECK(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &s, sizeof s));
  }
  BLAS_CHECK(cublasLtMatrixLayoutCreate(&p.a, cuda_type(wt), K, N, ldw));
  BLAS_CHECK(cublasLtMatrixLayoutCreate(&p.b, cuda_type(xt), K, M, ldx));
  BLAS_CHECK(cublasLtMatrixLayoutCreate(&p.c, cuda_type(yt), N, M, ldy));
  cublasLtMatmulPreference_t pref;
  BLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
  BLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws_bytes_,
                                                  sizeof ws_bytes_));
  uint32_t al = uint32_t(align);
  for (auto attr : {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                    CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES})
    BLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, attr, &al, sizeof al));
  // Up to 16 candidates, best first by cuBLASLt's own estimate; tune() may pick another by timing.
  cublasLtMatmulHeuristicResult_t res[16];
  int n = 0;
  cublasStatus_t s = cublasLtMatmulAlgoGetHeuristic(lt_, p.op, p.a, p.b, p.c, p.c, pref, 16, res, &n);
  cublasLtMatmulPreferenceDestroy(pref);
  p.ok = s == CUBLAS_STATUS_SUCCESS && n > 0;
  if (p.ok) p.algo = res[0].algo;
  for (int i = 0; i < n; i++)
    if (res[i].state == CUBLAS_STATUS_SUCCESS) p.cands.push_back(res[i]);
  return p;
}

const void* Gemm::bias_for(const float* bias, int n, DType yt, cudaStream_t st) {
  if (!bias || yt == DType::F32) return bias;
  auto it = bias_bf16_.find(bias);
  if (it != bias_bf16_.end()) return it->second;
  if (capturing()) throw EngineError("GEMM bias copy made during a graph capture", false);
  void* b;
  CUDA_CHECK(cudaMalloc(&b, size_t(n) * 2));
  cast(bias, DType::F32, b, DType::BF16, n, st);
  bias_bf16_[bias] = b;
  return b;
}

void Gemm::linear(cudaStream_t st, int M, int N, int K, const void* X, DType xt, int ldx, const void* W, DType wt,
                  const float* bias, Epi epi, void* Y, DType yt, int ldy, const void* C, float beta,
                  const float* x_scale, const float* w_scale, const void* bias_y, float alpha, int ldw) {
  if (M == 0) return;
  if (ldw <= 0) ldw = K;
  if ((xt == DType::FP8) != (wt == DType::FP8) || (wt == DType::FP8 && (!x_scale || !w_scale)))
    throw std::runtime_error("fp8 GEMM needs fp8 X and W with both scales");
  // fp32 path: GELU by our own kernel after a bias-only GEMM (see header).
  bool gelu_after = epi == Epi::BiasGelu && wt == DType::F32;
  Epi use = gelu_after ? Epi::Bias : epi;
  if (use != Epi::None && !bias) use = Epi::None;
  int align = std::min(std::min(align_of(X), align_of(W)), std::min(align_of(Y), C ? align_of(C) : 256));
  // The epilogue's bias type: D's, except bf16 for fp8 products into fp32 (see plan()).
  const DType bt = wt == DType::FP8 ? DType::BF16 : yt;
  const void* ebias =
      use == Epi::None ? nullptr : (bias_y && bt != DType::F32 ? bias_y : bias_for(bias, N, bt, st));
  Plan* p = &plan(M, N, K, xt, ldx, wt, yt, ldy, int(use), align, static_cast<const float*>(ebias), ldw);
  bool bias_after = false;
  if ((!p->ok || force_fallback_) && use != Epi::None) {
    // No kernel for this epilogue/type mix: plain GEMM, then bias (and GELU) as separate kernels.
    fallbacks_++;
    bias_after = true;
    gelu_after = epi == Epi::BiasGelu;
    use = Epi::None;
    p = &plan(M, N, K, xt, ldx, wt, yt, ldy, int(use), align, nullptr, ldw);
  }
  if (!p->ok)
    throw std::runtime_error("cuBLASLt has no algorithm for M=" + std::to_string(M) + " N=" + std::to_string(N) +
                             " K=" + std::to_string(K) + " " + dname(xt) + "/" + dname(wt) + "->" + dname(yt));
  if (use != Epi::None)
    BLAS_CHECK(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &ebias, sizeof ebias));
  if (wt == DType::FP8) {  // A is W, B is X in the column-major view
    BLAS_CHECK(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &w_scale, sizeof w_scale));
    BLAS_CHECK(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &x_scale, sizeof x_scale));
  }
  // Large reduced-precision products: time the candidates once (the fp32 conformance path keeps the heuristic's
  // first choice, and small products are not worth the timing). Large by FLOPs, or by the input read: a LoRA's down
  // product (N = its rank, e.g. 4608 x 16 x 15360) is memory-bound, and the heuristic's first choice for such a
  // skinny shape need not read at the card's bandwidth.
  // Never inside a graph capture (tuning synchronises): a step is captured only after an eager one tuned its plans.
  if (tune_on_ && !p->tuned && !capturing() && wt != DType::F32 && (2.0 * M * N * K >= 2e9 || double(M) * K >= 8e6))
    tune(*p, st, M, ldy, yt, X, W, beta);
  if (!capturing()) p->tuned = true;
  prof_begin(kProfGemm, st);
  // Fallback order: Y = XW^T + beta*C first, then + bias (then GELU, which only runs without a residual).
  cublasStatus_t s = cublasLtMatmul(lt_, p->op, &alpha, W, p->a, X, p->b, &beta, C ? C : Y, p->c, Y, p->c,
                                    &p->algo, ws_, ws_bytes_, st);
  if (s == CUBLAS_STATUS_NOT_SUPPORTED && use != Epi::None && !capturing()) {
    // The heuristic offered an algorithm the matmul then refuses for this epilogue/type mix: this shape takes the
    // plain GEMM + bias path from now on (p->ok false sends later calls there before any matmul).
    p->ok = false;
    linear(st, M, N, K, X, xt, ldx, W, wt, bias, epi, Y, yt, ldy, C, beta, x_scale, w_scale, bias_y, alpha,
           ldw);  // nested mark
    prof_end(kProfGemm, st, 2.0 * M * N * K);
    return;
  }
  BLAS_CHECK(s);
  if (bias_after && bias) add_bias(Y, yt, bias, M, N, ldy, st);
  if (gelu_after) activation(Y, yt, M, N, ldy, Act::GeluTanh, st);
  after_call("cublasLtMatmul", __FILE__, __LINE__);
  prof_end(kProfGemm, st, 2.0 * M * N * K);
}

void Gemm::tune(Plan& p, cudaStream_t st, int M, int ldy, DType yt, const void* X, const void* W, float beta) {
  if (p.cands.size() < 2) return;
  // D (and C when beta != 0) go to a scratch buffer: the caller's Y may be a residual stream updated in place.
  DeviceBuffer scratch(size_t(M) * ldy * dsize(yt));
  void* d = scratch.get();
  CUDA_CHECK(cudaMemsetAsync(d, 0, size_t(M) * ldy * dsize(yt), st));
  EventTimer timer;
  const float alpha = 1.f;
  float best = 1e30f;
  for (auto& cand : p.cands) {
    auto run = [&] {
      return cublasLtMatmul(lt_, p.op, &alpha, W, p.a, X, p.b, &beta, d, p.c, d, p.c, &cand.algo, ws_, ws_bytes_,
                            st);
    };
    if (run() != CUBLAS_STATUS_SUCCESS) continue;  // a candidate that cannot run here is skipped
    const float ms = timer.ms(st, [&] {
      for (int i = 0; i < 5; i++) BLAS_CHECK(run());
    });
    if (ms < best) {
      best = ms;
      p.algo = cand.algo;
    }
  }
  CUDA_CHECK(cudaStreamSynchronize(st));  // the scratch D is freed on return
  tuned_++;
}

void Gemm::matmul(cudaStream_t st, bool ta, bool tb, int M, int N, int K, float alpha, const void* A, DType at,
                  int lda, const void* B, DType bt, int ldb, float beta, void* C, DType ct, int ldc) {
  BLAS_CHECK(cublasSetStream(blas_, st));
  prof_begin(kProfGemm, st);
  // Row-major C = op(A) op(B)  <=>  column-major C^T = op(B)^T op(A)^T.
  BLAS_CHECK(cublasGemmEx(blas_, tb ? CUBLAS_OP_T : CUBLAS_OP_N, ta ? CUBLAS_OP_T : CUBLAS_OP_N, N, M, K, &alpha, B,
                          cuda_type(bt), ldb, A, cuda_type(at), lda, &beta, C, cuda_type(ct), ldc,
                          CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  after_call("cublasGemmEx", __FILE__, __LINE__);
  prof_end(kProfGemm, st, 2.0 * M * N * K);
}

}  // namespace fq

namespace fq {

void Gemm::matmul_batched(cudaStream_t st, bool ta, bool tb, int M, int N, int K, float alpha, const void* A,
                          DType at, int lda, int64_t sa, const void* B, DType bt, int ldb, int64_t sb, float beta,
                          void* C, DType ct, int ldc, int64_t sc, int batch) {
  BLAS_CHECK(cublasSetStream(blas_, st));
  prof_begin(kProfGemm, st);
  // Row-major C_i = op(A_i) op(B_i)  <=>  column-major C_i^T = op(B_i)^T op(A_i)^T, as in matmul().
  BLAS_CHECK(cublasGemmStridedBatchedEx(blas_, tb ? CUBLAS_OP_T : CUBLAS_OP_N, ta ? CUBLAS_OP_T : CUBLAS_OP_N, N, M,
                                        K, &alpha, B, cuda_type(bt), ldb, sb, A, cuda_type(at), lda, sa, &beta, C,
                                        cuda_type(ct), ldc, sc, batch, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  after_call("cublasGemmStridedBatchedEx", __FILE__, __LINE__);
  prof_end(kProfGemm, st, 2.0 * M * N * K * batch);
}

}  // namespace fq
