#include "cudnn_attention.h"

#include <vector>

#ifdef FQ_HAVE_CUDNN
#include <cudnn.h>
#endif

namespace fq {

#ifndef FQ_HAVE_CUDNN

struct CudnnAttention::Plan {};
CudnnAttention::CudnnAttention() : why_(dnn_.why()) {}
CudnnAttention::~CudnnAttention() = default;
bool CudnnAttention::run(const void*, const void*, const void*, void*, int, int, int, int, int, float,
                         cudaStream_t, int) {
  return false;
}

#else

namespace {

std::string status_str(cudnnStatus_t s) { return std::to_string(int(s)) + " (" + cudnnGetErrorString(s) + ")"; }

void check_dnn(cudnnStatus_t s, const char* expr, const char* file, int line) {
  if (s == CUDNN_STATUS_SUCCESS) return;
  raise_library_fault("cuDNN", status_str(s), expr, file, line, s == CUDNN_STATUS_EXECUTION_FAILED);
}
#define DNN(x) check_dnn((x), #x, __FILE__, __LINE__)

// Owning wrapper of one backend descriptor.
struct Desc {
  cudnnBackendDescriptor_t d = nullptr;
  explicit Desc(cudnnBackendDescriptorType_t t) { DNN(cudnnBackendCreateDescriptor(t, &d)); }
  Desc(const Desc&) = delete;
  ~Desc() {
    if (d) cudnnBackendDestroyDescriptor(d);
  }
  void set(cudnnBackendAttributeName_t n, cudnnBackendAttributeType_t t, int64_t count, const void* v) {
    DNN(cudnnBackendSetAttribute(d, n, t, count, v));
  }
  void set_desc(cudnnBackendAttributeName_t n, const Desc& o) { set(n, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &o.d); }
};

std::unique_ptr<Desc> tensor(int64_t uid, cudnnDataType_t dt, std::vector<int64_t> dims, std::vector<int64_t> strides,
                             bool by_value = false) {
  auto t = std::make_unique<Desc>(CUDNN_BACKEND_TENSOR_DESCRIPTOR);
  int64_t align = 16;
  t->set(CUDNN_ATTR_TENSOR_DATA_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &dt);
  t->set(CUDNN_ATTR_TENSOR_DIMENSIONS, CUDNN_TYPE_INT64, int64_t(dims.size()), dims.data());
  t->set(CUDNN_ATTR_TENSOR_STRIDES, CUDNN_TYPE_INT64, int64_t(strides.size()), strides.data());
  t->set(CUDNN_ATTR_TENSOR_UNIQUE_ID, CUDNN_TYPE_INT64, 1, &uid);
  t->set(CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT, CUDNN_TYPE_INT64, 1, &align);
  if (by_value) {
    bool bv = true;
    t->set(CUDNN_ATTR_TENSOR_IS_BY_VALUE, CUDNN_TYPE_BOOLEAN, 1, &bv);
  }
  DNN(cudnnBackendFinalize(t->d));
  return t;
}

enum Uid : int64_t { kQ = 1, kK, kV, kO, kScale };

}  // namespace

struct CudnnAttention::Plan {
  std::vector<std::unique_ptr<Desc>> keep;  // tensors, op, graph, configs: alive as long as the plan
  std::unique_ptr<Desc> plan;
  int64_t ws = 0;
};

CudnnAttention::CudnnAttention() {
  if (!dnn_.ok()) {
    why_ = dnn_.why();
    return;
  }
  if (cudnnGetVersion() < 91300) {
    why_ = "cuDNN " + std::to_string(cudnnGetVersion()) + " has no SDPA forward operation (needs 9.13)";
    return;
  }
  ok_ = true;
}

CudnnAttention::~CudnnAttention() = default;

bool CudnnAttention::run(const void* q, const void* k, const void* v, void* o, int B, int S, int H, int D, int ldo,
                         float scale, cudaStream_t st, int ldi) {
  if (!ok_) return false;
  if (ldi == 0) ldi = H * D;
  auto h = static_cast<cudnnHandle_t>(dnn_.get());
  auto key = std::make_tuple(B, S, H, D, ldo, ldi);
  auto it = plans_.find(key);
  if (it == plans_.end()) {
    auto p = std::make_shared<Plan>();
    try {
      // Logical dims (B, H, S, D) over the [B, S, H, D] memory layout (input rows of ldi elements).
      std::vector<int64_t> dims{B, H, S, D}, in_str{int64_t(S) * ldi, D, ldi, 1},
          out_str{int64_t(S) * ldo, D, ldo, 1}, one{1, 1, 1, 1};
      p->keep.push_back(tensor(kQ, CUDNN_DATA_BFLOAT16, dims, in_str));
      p->keep.push_back(tensor(kK, CUDNN_DATA_BFLOAT16, dims, in_str));
      p->keep.push_back(tensor(kV, CUDNN_DATA_BFLOAT16, dims, in_str));
      p->keep.push_back(tensor(kO, CUDNN_DATA_BFLOAT16, dims, out_str));
      p->keep.push_back(tensor(kScale, CUDNN_DATA_FLOAT, one, one, true));
      auto op = std::make_unique<Desc>(CUDNN_BACKEND_OPERATION_SDPA_FWD_DESCRIPTOR);
      op->set_desc(CUDNN_ATTR_OPERATION_SDPA_FWD_QDESC, *p->keep[0]);
      op->set_desc(CUDNN_ATTR_OPERATION_SDPA_FWD_KDESC, *p->keep[1]);
      op->set_desc(CUDNN_ATTR_OPERATION_SDPA_FWD_VDESC, *p->keep[2]);
      op->set_desc(CUDNN_ATTR_OPERATION_SDPA_FWD_ODESC, *p->keep[3]);
      op->set_desc(CUDNN_ATTR_OPERATION_SDPA_FWD_SCALEDESC, *p->keep[4]);
      DNN(cudnnBackendFinalize(op->d));
      auto graph = std::make_unique<Desc>(CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR);
      graph->set(CUDNN_ATTR_OPERATIONGRAPH_HANDLE, CUDNN_TYPE_HANDLE, 1, &h);
      graph->set(CUDNN_ATTR_OPERATIONGRAPH_OPS, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &op->d);
      DNN(cudnnBackendFinalize(graph->d));
      auto heur = std::make_unique<Desc>(CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR);
      heur->set_desc(CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH, *graph);
      cudnnBackendHeurMode_t mode = CUDNN_HEUR_MODE_A;
      heur->set(CUDNN_ATTR_ENGINEHEUR_MODE, CUDNN_TYPE_HEUR_MODE, 1, &mode);
      DNN(cudnnBackendFinalize(heur->d));
      int64_t n = 0;
      DNN(cudnnBackendGetAttribute(heur->d, CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR, 0, &n,
                                   nullptr));
      std::vector<std::unique_ptr<Desc>> cfgs;
      std::vector<cudnnBackendDescriptor_t> raw;
      for (int64_t i = 0; i < n; i++) {
        cfgs.push_back(std::make_unique<Desc>(CUDNN_BACKEND_ENGINECFG_DESCRIPTOR));
        raw.push_back(cfgs.back()->d);
      }
      int64_t got = 0;
      if (n) DNN(cudnnBackendGetAttribute(heur->d, CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR, n,
                                          &got, raw.data()));
      std::string last = "no engine configurations";
      for (int64_t i = 0; i < got && !p->plan; i++) {
        auto plan = std::make_unique<Desc>(CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR);
        plan->set(CUDNN_ATTR_EXECUTION_PLAN_HANDLE, CUDNN_TYPE_HANDLE, 1, &h);
        plan->set_desc(CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG, *cfgs[i]);
        cudnnStatus_t s = cudnnBackendFinalize(plan->d);
        if (s == CUDNN_STATUS_SUCCESS) p->plan = std::move(plan);
        else last = "plan finalize " + status_str(s);
      }
      if (!p->plan) throw std::runtime_error(last);
      int64_t cnt = 0;
      DNN(cudnnBackendGetAttribute(p->plan->d, CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE, CUDNN_TYPE_INT64, 1, &cnt,
                                   &p->ws));
      p->keep.push_back(std::move(op));
      p->keep.push_back(std::move(graph));
      p->keep.push_back(std::move(heur));
      for (auto& c : cfgs) p->keep.push_back(std::move(c));
    } catch (const std::exception& e) {
      why_ = e.what();
      p.reset();
    }
    it = plans_.emplace(key, p).first;
  }
  Plan* p = it->second.get();
  if (!p) return false;
  DNN(cudnnSetStream(h, st));
  void* ws = dnn_.workspace(size_t(p->ws));
  float sc = scale;  // by-value tensor: read from host memory during the call
  int64_t uids[5] = {kQ, kK, kV, kO, kScale};
  void* ptrs[5] = {const_cast<void*>(q), const_cast<void*>(k), const_cast<void*>(v), o, &sc};
  Desc vp(CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR);
  vp.set(CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS, CUDNN_TYPE_INT64, 5, uids);
  vp.set(CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS, CUDNN_TYPE_VOID_PTR, 5, ptrs);
  vp.set(CUDNN_ATTR_VARIANT_PACK_WORKSPACE, CUDNN_TYPE_VOID_PTR, 1, &ws);
  DNN(cudnnBackendFinalize(vp.d));
  DNN(cudnnBackendExecute(h, p->plan->d, vp.d));
  after_call("cudnnBackendExecute", __FILE__, __LINE__);
  return true;
}

#endif

}  // namespace fq
