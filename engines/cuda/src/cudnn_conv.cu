#include "cudnn_conv.h"

#include "profile.h"

#ifdef FQ_HAVE_CUDNN
#include <cudnn.h>
#endif

namespace fq {

#ifndef FQ_HAVE_CUDNN

struct CudnnConv::Plan {};
CudnnConv::CudnnConv() : why_(dnn_.why()) {}
CudnnConv::~CudnnConv() = default;
bool CudnnConv::run(const void*, const void*, void*, int, int, int, int, int, int, cudaStream_t) { return false; }

#else

namespace {
#define DNN_OK(x) ((x) == CUDNN_STATUS_SUCCESS)
}  // namespace

// Descriptors of one shape and the algorithm cudnnFind chose for it (legacy convolution API: it takes NHWC bf16
// tensors and KRSC filters directly, which is the VAE's layout).
struct CudnnConv::Plan {
  cudnnTensorDescriptor_t x = nullptr, y = nullptr;
  cudnnFilterDescriptor_t w = nullptr;
  cudnnConvolutionDescriptor_t conv = nullptr;
  cudnnConvolutionFwdAlgo_t algo{};
  size_t ws = 0;
  bool ok = false;
  ~Plan() {
    if (x) cudnnDestroyTensorDescriptor(x);
    if (y) cudnnDestroyTensorDescriptor(y);
    if (w) cudnnDestroyFilterDescriptor(w);
    if (conv) cudnnDestroyConvolutionDescriptor(conv);
  }
};

CudnnConv::CudnnConv() : ok_(dnn_.ok()), why_(dnn_.why()) {}

CudnnConv::~CudnnConv() {
  for (auto& [k, p] : plans_) delete p;
}

bool CudnnConv::run(const void* x, const void* w, void* y, int B, int H, int W, int cin, int cout, int k,
                    cudaStream_t st) {
  if (!ok_) return false;
  auto h = static_cast<cudnnHandle_t>(dnn_.get());
  auto key = std::make_tuple(B, H, W, cin, cout, k);
  auto it = plans_.find(key);
  if (it == plans_.end()) {
    Plan* p = new Plan;
    it = plans_.emplace(key, p).first;
    const int pad = k / 2;
    bool ok = DNN_OK(cudnnCreateTensorDescriptor(&p->x)) && DNN_OK(cudnnCreateTensorDescriptor(&p->y)) &&
              DNN_OK(cudnnCreateFilterDescriptor(&p->w)) && DNN_OK(cudnnCreateConvolutionDescriptor(&p->conv)) &&
              DNN_OK(cudnnSetTensor4dDescriptor(p->x, CUDNN_TENSOR_NHWC, CUDNN_DATA_BFLOAT16, B, cin, H, W)) &&
              DNN_OK(cudnnSetTensor4dDescriptor(p->y, CUDNN_TENSOR_NHWC, CUDNN_DATA_BFLOAT16, B, cout, H, W)) &&
              DNN_OK(cudnnSetFilter4dDescriptor(p->w, CUDNN_DATA_BFLOAT16, CUDNN_TENSOR_NHWC, cout, cin, k, k)) &&
              DNN_OK(cudnnSetConvolution2dDescriptor(p->conv, pad, pad, 1, 1, 1, 1, CUDNN_CROSS_CORRELATION,
                                                     CUDNN_DATA_FLOAT)) &&
              DNN_OK(cudnnSetConvolutionMathType(p->conv, CUDNN_TENSOR_OP_MATH));
    // cudnnFind times every algorithm on scratch buffers of its own and returns them fastest first.
    cudnnConvolutionFwdAlgoPerf_t perf[CUDNN_CONVOLUTION_FWD_ALGO_COUNT];
    int n = 0;
    if (ok) {
      CUDA_CHECK(cudaStreamSynchronize(st));
      ok = DNN_OK(cudnnFindConvolutionForwardAlgorithm(h, p->x, p->w, p->conv, p->y, CUDNN_CONVOLUTION_FWD_ALGO_COUNT,
                                                       &n, perf));
    }
    for (int i = 0; ok && i < n && !p->ok; i++) {
      if (perf[i].status != CUDNN_STATUS_SUCCESS) continue;
      p->algo = perf[i].algo;
      p->ws = perf[i].memory;
      p->ok = true;
    }
    if (!p->ok) why_ = "no cuDNN convolution algorithm for this shape";
  }
  Plan* p = it->second;
  if (!p->ok) return false;
  if (!DNN_OK(cudnnSetStream(h, st))) return false;
  void* ws = dnn_.workspace(p->ws);
  const float alpha = 1.f, beta = 0.f;
  prof_begin(kProfGemm, st);
  cudnnStatus_t s = cudnnConvolutionForward(h, &alpha, p->x, x, p->w, w, p->conv, p->algo, ws, p->ws, &beta,
                                            p->y, y);
  prof_end(kProfGemm, st, 2.0 * B * H * W * double(cout) * cin * k * k);
  if (!DNN_OK(s))
    raise_library_fault("cuDNN", cudnnGetErrorString(s), "cudnnConvolutionForward", __FILE__, __LINE__,
                        s == CUDNN_STATUS_EXECUTION_FAILED);
  after_call("cudnnConvolutionForward", __FILE__, __LINE__);
  return true;
}

#endif

}  // namespace fq
