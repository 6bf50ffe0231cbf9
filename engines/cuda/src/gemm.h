// Matrix products through cuBLASLt (linear layers) and cuBLAS (attention products of the chunked VAE attention).
// Precision is chosen per call from the weight's type, so a layer can move to another precision (fp8 next) without
// touching the model code: F32 weights run fp32 GEMMs with fp32 compute and no TF32 (the conformance path); BF16
// weights run bf16 tensor-core GEMMs with fp32 accumulation.
#pragma once
#include <cublasLt.h>
#include <cublas_v2.h>

#include <map>
#include <tuple>
#include <vector>

#include "common.h"

namespace fq {

enum class Epi { None, Bias, BiasGelu };

class Gemm {
 public:
  Gemm();
  ~Gemm();
  Gemm(const Gemm&) = delete;
  Gemm& operator=(const Gemm&) = delete;

  // Y[M, N] = epi(X[M, K] W[N, K]^T + bias) + beta * C, row-major with row strides ldx / ldy; C has Y's type and
  // stride and may alias Y (residual adds). BiasGelu is the tanh GELU; on the fp32 path it runs as a separate
  // kernel so that the conformance path uses only the engine's own, exactly specified GELU.
  // bias is fp32; bias_y, when given, is the same bias already in Y's type (made at load: see Linear). Without it
  // a bf16 copy is made on first use (counted by lazy_bias_copies(); never during a graph capture).
  // FP8 operands (xt == wt == FP8) carry per-tensor dequantisation scales x_scale / w_scale (device floats):
  // Y = epi(x_scale * w_scale * X W^T + bias), fp32 accumulation (cuBLASLt fast-accumulation mode).
  // ldw: W's row stride (0: K; a LoRA-reserving engine's block weights are wider, linear.h).
  // alpha scales the product (a LoRA's strength on its up factor, linear.cu): Y = epi(alpha X W^T + beta C + bias);
  // cuBLASLt applies the epilogue (bias, GELU) to the sum with beta C, and so does the fallback below.
  void linear(cudaStream_t st, int M, int N, int K, const void* X, DType xt, int ldx, const void* W, DType wt,
              const float* bias, Epi epi, void* Y, DType yt, int ldy, const void* C = nullptr, float beta = 0.f,
              const float* x_scale = nullptr, const float* w_scale = nullptr, const void* bias_y = nullptr,
              float alpha = 1.f, int ldw = 0);

  // Row-major C[M, N] = alpha * op(A) op(B) + beta * C with fp32 compute; op(A) = A^T when ta (A stored [K, M]).
  void matmul(cudaStream_t st, bool ta, bool tb, int M, int N, int K, float alpha, const void* A, DType at, int lda,
              const void* B, DType bt, int ldb, float beta, void* C, DType ct, int ldc);

  // The same for `batch` independent products, operand i at A + i*sa, B + i*sb, C + i*sc (elements).
  void matmul_batched(cudaStream_t st, bool ta, bool tb, int M, int N, int K, float alpha, const void* A, DType at,
                      int lda, int64_t sa, const void* B, DType bt, int ldb, int64_t sb, float beta, void* C,
                      DType ct, int ldc, int64_t sc, int batch);

  size_t workspace_bytes() const { return ws_bytes_; }
  int fallbacks() const { return fallbacks_; }  // calls that needed the no-epilogue fallback
  int tuned() const { return tuned_; }          // plans whose algorithm was chosen by timing (autotune)
  // Tests: take the no-epilogue fallback (plain GEMM, then bias / GELU kernels) even where an epilogue exists.
  void force_fallback(bool on) { force_fallback_ = on; }
  int lazy_bias_copies() const { return int(bias_bf16_.size()); }

 private:
  struct Plan {
    cublasLtMatmulDesc_t op = nullptr;
    cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
    cublasLtMatmulAlgo_t algo;
    bool ok = false;
    // Autotune: the heuristic's candidates, timed once on the first call with real operands (see tune()).
    std::vector<cublasLtMatmulHeuristicResult_t> cands;
    bool tuned = false;
  };
  using Key = std::tuple<int, int, int, int, int, int, int, int, int, int, int, int>;
  Plan& plan(int M, int N, int K, DType xt, int ldx, DType wt, DType yt, int ldy, int epi, int align,
             const float* bias, int ldw);
  // cuBLASLt adds a bias of D's type: bf16 copies of the fp32 biases, made on first use and kept.
  const void* bias_for(const float* bias, int n, DType yt, cudaStream_t st);
  // Times every candidate algorithm of p on the caller's X and W with a scratch D (and C), keeps the fastest.
  void tune(Plan& p, cudaStream_t st, int M, int ldy, DType yt, const void* X, const void* W, float beta);
  bool tune_on_ = true;
  int tuned_ = 0;
  std::map<const float*, void*> bias_bf16_;
  cublasLtHandle_t lt_ = nullptr;
  cublasHandle_t blas_ = nullptr;
  // One workspace for cuBLASLt and cuBLAS: the engine enqueues all its products on one stream, so they never overlap.
  void* ws_ = nullptr;
  size_t ws_bytes_ = 64ull << 20;
  std::map<Key, Plan> plans_;
  int fallbacks_ = 0;
  bool force_fallback_ = false;
};

}  // namespace fq
