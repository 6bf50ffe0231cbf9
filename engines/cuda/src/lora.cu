#include "lora.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>

#include "kernels/kernels.h"
#include "weights.h"

namespace fq {
namespace {

constexpr int kMaxRank = 256;
constexpr int kRankAlign = 8;  // padded ranks keep every adapter GEMM operand row 16-byte aligned

std::string mib(size_t b) { return std::to_string((b + (1 << 20) - 1) >> 20) + " MiB"; }

// Whether a layer's factors of input width `in` get fp8_views (bf16 adapters of the layer's own width), and the
// bytes the memory bound checks for them beforehand: e4m3 A plus the scale and amax |B| slots (16 bytes each, 64
// reserved).
bool wants_fp8_views(const Linear& l, int in) { return adapter_type(l) == DType::BF16 && in == l.in; }
size_t fp8_views_bytes(int rank, int in) { return size_t(rank) * in + 64; }

}  // namespace

void LoraRegistry::fp8_views(DeviceArena& mem, const void* a, int rank, int in, const void* b, int out, void*& a8,
                             float*& a8_scale, float*& b_amax, cudaStream_t st) {
  a8 = mem.alloc(size_t(rank) * in);
  a8_scale = mem.allocT<float>(4);  // 16-byte aligned scale (cuBLASLt refuses fp8 scales aligned to 4 bytes only)
  b_amax = mem.allocT<float>(4);
  quantize_fp8(a, DType::BF16, int64_t(rank) * in, a8, a8_scale, b_amax, st);  // b_amax serves as its workspace first
  amax_abs(b, DType::BF16, int64_t(out) * rank, b_amax, st);
  fp8_unit_scale();  // the down product's unit input scale, looked up here so that no capture is the first to ask
}

AdapterSet::~AdapterSet() {
  if (used) *used -= bytes;
}

LoraRegistry::LoraRegistry(std::vector<Linear*> linears, size_t max_bytes, cudaStream_t st, std::vector<NormSlot> norms)
    : max_bytes_(max_bytes), st_(st) {
  // The fused delta (linear.h) and in-place one-LoRA sets, on unless FQ_LORA_FUSED=0 (session 17 on the H100:
  // 10.4 % over the base step at ranks 16 and 64 on every Linear against 22.3 % added after; switching 0.4 ms
  // against 10-22 ms). Layers with LoRA reserve columns take the K-concatenated path first (linear.cu).
  const char* fused = getenv("FQ_LORA_FUSED");
  fused_ = !(fused && std::string(fused) == "0");
  const std::string prefix = "transformer/";
  for (Linear* l : linears) {
    if (l->name.compare(0, prefix.size(), prefix) == 0) by_name_[l->name.substr(prefix.size())] = l;
  }
  for (auto& n : norms) {
    norm_by_name_[n.name] = n;
    norm_base_[n.slot] = *n.slot;
  }
}

LoraRegistry::~LoraRegistry() {
  activate(nullptr);
  sets_.clear();
}

std::vector<std::string> LoraRegistry::names() const {
  std::vector<std::string> n;
  for (auto& [k, v] : loras_) n.push_back(k);
  return n;
}

size_t LoraRegistry::load(const std::string& name, const std::vector<LoraLayerIn>& layers,
                          const std::vector<LoraNormIn>& norms) {
  if (name.empty()) throw LoraFail("bad_argument", "lora_load needs a name");
  if (layers.empty() && norms.empty()) throw LoraFail("unmatched_keys", name + ": no layers");
  // Validate everything first: a refused LoRA changes nothing.
  std::vector<std::string> unknown, shapes, ranks, nonfinite, dup, fp8;
  int control = 0;
  std::map<std::string, int> seen;
  size_t need = 0;
  for (auto& in : layers) {
    auto it = by_name_.find(in.layer);
    if (it == by_name_.end()) {
      unknown.push_back(in.layer);
      continue;
    }
    if (seen[in.layer]++) dup.push_back(in.layer);
    const Linear& l = *it->second;
    // A BFL Control LoRA's x_embedder reads [latents; control latents]: twice the layer's input.
    const bool wide = in.layer == "x_embedder" && in.in == 2 * l.in;
    if (in.rank < 1 || in.rank > kMaxRank) ranks.push_back(in.layer);
    else if ((in.in != l.in && !wide) || in.out != l.out) shapes.push_back(in.layer);
    else if (wide && (l.wt == DType::FP8 || l.wt == DType::FP8ROW)) fp8.push_back(in.layer);
    else {
      if (wide) control = in.in - l.in;
      auto finite = [](const float* p, size_t n) {
        for (size_t i = 0; i < n; i++)
          if (!std::isfinite(p[i])) return false;
        return true;
      };
      if (!finite(in.a, size_t(in.rank) * in.in) || !finite(in.b, size_t(in.out) * in.rank) ||
          (in.bias && !finite(in.bias, size_t(in.out))))
        nonfinite.push_back(in.layer);
      need += size_t(in.rank) * (in.in + in.out) * dsize(adapter_type(l)) + (in.bias ? size_t(in.out) * 4 : 0);
      if (wants_fp8_views(l, in.in)) need += fp8_views_bytes(in.rank, in.in);
    }
  }
  // Replacement norm weights: a known slot, its width, finite values.
  std::map<std::string, int> seen_norm;
  for (auto& n : norms) {
    auto it = norm_by_name_.find(n.norm);
    if (it == norm_by_name_.end()) {
      unknown.push_back(n.norm);
      continue;
    }
    if (seen_norm[n.norm]++) dup.push_back(n.norm);
    if (n.dim != it->second.dim) {
      shapes.push_back(n.norm);
      continue;
    }
    for (int i = 0; i < n.dim; i++)
      if (!std::isfinite(n.w[i])) {
        nonfinite.push_back(n.norm);
        break;
      }
    need += size_t(n.dim) * 4;
  }
  if (!unknown.empty())
    throw LoraFail("unmatched_keys", name + ": " + std::to_string(unknown.size()) + " layer(s) the engine does not have",
                   unknown);
  if (!dup.empty()) throw LoraFail("bad_argument", name + ": a layer appears twice", dup);
  if (!ranks.empty()) throw LoraFail("bad_rank", name + ": rank outside 1.." + std::to_string(kMaxRank), ranks);
  if (!shapes.empty()) throw LoraFail("shape_mismatch", name + ": factor shapes do not fit the layer", shapes);
  if (!nonfinite.empty()) throw LoraFail("non_finite", name + ": NaN or infinite values", nonfinite);
  if (!fp8.empty())
    throw LoraFail("unsupported", name + ": a control LoRA's widened x_embedder needs the layer in bf16 or f32 (the "
                                         "precision plan made it fp8 or fp8row)", fp8);
  // The replaced LoRA's memory counts as free (it goes), and so do cached sets no job holds.
  auto old = loras_.find(name);
  const size_t freed = old != loras_.end() ? old->second->bytes : 0;
  if (*used_ - freed + need > max_bytes_ && !make_room(need - std::min(need, freed)))
    throw LoraFail("unsupported",
                   name + ": LoRA memory limit: needs " + mib(need) + ", " + mib(*used_) + " of " + mib(max_bytes_) +
                       " in use (FQ_LORA_MAX_MB / lora_max_mb; unload LoRAs or release jobs)");
  if (old != loras_.end()) unload(name);
  auto lo = std::make_shared<Lora>();
  for (auto& in : layers) {
    Linear* l = by_name_.at(in.layer);
    const DType t = adapter_type(*l);
    Factors f{l, in.rank, in.in, nullptr, nullptr, nullptr};
    std::vector<float> a(in.a, in.a + size_t(in.rank) * in.in), b(in.b, in.b + size_t(in.out) * in.rank);
    f.a = lo->mem.alloc(a.size() * dsize(t));
    f.b = lo->mem.alloc(b.size() * dsize(t));
    upload_as(f.a, a, t, st_);
    upload_as(f.b, b, t, st_);
    if (in.bias) {
      f.bias = lo->mem.allocT<float>(in.out);
      upload_as(f.bias, std::vector<float>(in.bias, in.bias + in.out), DType::F32, st_);
    }
    if (wants_fp8_views(*l, in.in))
      fp8_views(lo->mem, f.a, in.rank, in.in, f.b, in.out, f.a8, f.a8_scale, f.b_amax, st_);
    lo->layers.push_back(f);
  }
  for (auto& n : norms) {
    Norm m{norm_by_name_.at(n.norm).slot, lo->mem.allocT<float>(n.dim), std::vector<float>(n.w, n.w + n.dim)};
    upload_as(m.w, m.host, DType::F32, st_);
    lo->norms.push_back(std::move(m));
  }
  lo->control = control;
  lo->bytes = lo->mem.bytes();
  lo->used = used_;
  *used_ += lo->bytes;
  const size_t bytes = lo->bytes;
  loras_[name] = std::move(lo);
  return bytes;
}

bool LoraRegistry::unload(const std::string& name) {
  auto it = loras_.find(name);
  if (it == loras_.end()) return false;
  drop_sets_with(name);
  // A job's set (and its captured graph) stays valid after this: a set holds its own copies, or holds the LoRA it
  // reads, whose memory (and count) then goes with the last such job.
  loras_.erase(it);
  return true;
}

void LoraRegistry::drop_sets_with(const std::string& name) {
  for (auto it = sets_.begin(); it != sets_.end();) {
    // Keys are name\x1fstrength\x1e... (see select); a member name matches a whole field.
    const std::string& k = it->first;
    bool has = false;
    for (size_t p = 0; p < k.size();) {
      size_t e = k.find('\x1f', p);
      if (k.compare(p, e - p, name) == 0 && e - p == name.size()) has = true;
      p = k.find('\x1e', e);
      p = p == std::string::npos ? k.size() : p + 1;
    }
    if (has && it->second.get() == active_) activate(nullptr);
    it = has ? sets_.erase(it) : std::next(it);
  }
}

bool LoraRegistry::make_room(size_t need) {
  for (auto it = sets_.begin(); it != sets_.end() && *used_ + need > max_bytes_;) {
    // use_count 1: only the cache holds it (no job, not active).
    if (it->second.use_count() == 1 && it->second.get() != active_) it = sets_.erase(it);
    else ++it;
  }
  return *used_ + need <= max_bytes_;
}

std::shared_ptr<const AdapterSet> LoraRegistry::select(const std::vector<std::pair<std::string, float>>& members) {
  if (members.empty()) return nullptr;
  std::string key;
  std::map<std::string, int> seen;
  for (auto& [n, s] : members) {
    if (!loras_.count(n)) throw LoraFail("not_found", n + ": LoRA not loaded on the engine (lora_load it first)", {n});
    if (!std::isfinite(s)) throw LoraFail("bad_argument", n + ": strength must be finite");
    if (seen[n]++) throw LoraFail("bad_argument", n + ": appears twice in one LoRA set");
    char buf[32];
    snprintf(buf, sizeof buf, "%.9g", double(s));
    key += n + '\x1f' + buf + '\x1e';
  }
  auto hit = sets_.find(key);
  if (hit != sets_.end()) return hit->second;
  // Per target layer, the members' factors in member order.
  std::map<Linear*, std::vector<std::pair<const Factors*, float>>> per;
  std::vector<Linear*> order;
  for (auto& [n, s] : members)
    for (auto& f : loras_.at(n)->layers) {
      if (!per.count(f.target)) order.push_back(f.target);
      per[f.target].push_back({&f, s});
    }
  // A's width per layer: the widest member's (a control x_embedder); narrower members' A are zero-padded on the
  // right, as diffusers pads a plain LoRA for the widened layer.
  auto width = [&](Linear* l) {
    int w = l->in;
    for (auto& [f, s] : per[l]) w = std::max(w, f->in);
    return w;
  };
  // Norm replacements: one per slot; members replacing the same norm must agree (the ONNX path's rule). They are
  // full replacements, not scaled by the strength.
  std::map<float**, const Norm*> norm_of;
  std::map<float**, std::string> norm_from;
  int control = 0;
  for (auto& [n, s] : members) {
    const Lora& lo = *loras_.at(n);
    control = std::max(control, lo.control);
    for (auto& m : lo.norms) {
      auto it = norm_of.find(m.slot);
      if (it != norm_of.end() && it->second->host != m.host) {
        std::string module;
        for (auto& [k, v] : norm_by_name_)
          if (v.slot == m.slot) module = k;
        throw LoraFail("unsupported", norm_from[m.slot] + " and " + n + " both replace " + module +
                                          " with different weights", {module});
      }
      norm_of[m.slot] = &m;
      norm_from[m.slot] = n;
    }
  }
  // A layer reads its one member's factors in place when nothing needs padding (see the header).
  auto in_place = [&](Linear* l) {
    return fused_ && members.size() == 1 && per[l].front().first->rank % kRankAlign == 0;
  };
  size_t need = 0;
  for (Linear* l : order) {
    int R = 0;
    bool bias = false;
    for (auto& [f, s] : per[l]) R += f->rank, bias |= f->bias != nullptr;
    const int Rp = (R + kRankAlign - 1) / kRankAlign * kRankAlign;
    if (!in_place(l)) {
      need += size_t(Rp) * (width(l) + l->out) * dsize(adapter_type(*l));
      if (wants_fp8_views(*l, width(l))) need += fp8_views_bytes(Rp, l->in);
    }
    need += bias ? size_t(l->out) * 4 : 0;
  }
  for (auto& [slot, m] : norm_of) need += m->host.size() * 4;
  if (*used_ + need > max_bytes_ && !make_room(need))
    throw LoraFail("unsupported", "LoRA set needs " + mib(need) + " more GPU memory; " + mib(*used_) + " of " +
                                      mib(max_bytes_) + " in use (FQ_LORA_MAX_MB / lora_max_mb)");
  auto set = std::make_shared<AdapterSet>();
  set->key = key;
  std::string sig;
  for (Linear* l : order) {
    const DType t = adapter_type(*l);
    const size_t es = dsize(t);
    int R = 0;
    bool bias = false;
    for (auto& [f, s] : per[l]) R += f->rank, bias |= f->bias != nullptr;
    const int Rp = (R + kRankAlign - 1) / kRankAlign * kRankAlign;
    const int W = width(l);
    Adapter ad;
    ad.id = next_adapter_id();
    ad.rank = Rp;
    ad.in = W;
    ad.fused = fused_;
    // bias_cat = sum strength * bias, and (copied sets) A_cat / B_cat as the header describes.
    float* bs = bias ? set->mem.allocT<float>(l->out) : nullptr;
    if (bs) CUDA_CHECK(cudaMemsetAsync(bs, 0, size_t(l->out) * 4, st_));
    for (auto& [f, s] : per[l])
      if (f->bias) axpy_f32(bs, f->bias, s, l->out, st_);
    ad.bias = bs;
    if (in_place(l)) {
      const auto& [f, s] = per[l].front();
      ad.a = f->a, ad.b = f->b, ad.scale = s;
      ad.a8 = f->a8, ad.a8_scale = f->a8_scale, ad.b_amax = f->b_amax;
    } else {
      void* a = set->mem.alloc(size_t(Rp) * W * es);
      void* b = set->mem.alloc(size_t(l->out) * Rp * es);
      CUDA_CHECK(cudaMemsetAsync(a, 0, size_t(Rp) * W * es, st_));
      CUDA_CHECK(cudaMemsetAsync(b, 0, size_t(l->out) * Rp * es, st_));
      int off = 0;
      for (auto& [f, s] : per[l]) {
        // A rows [off, off + r) = the member's A; B columns [off, off + r) = strength * the member's B.
        // A rows of f->in values into rows of W (the rest stay zero).
        CUDA_CHECK(cudaMemcpy2DAsync(static_cast<char*>(a) + size_t(off) * W * es, size_t(W) * es, f->a,
                                     size_t(f->in) * es, size_t(f->in) * es, f->rank, cudaMemcpyDeviceToDevice, st_));
        lora_pack_up(f->b, t, l->out, f->rank, s, b, Rp, off, st_);
        off += f->rank;
      }
      ad.a = a, ad.b = b;
      if (wants_fp8_views(*l, W)) {
        void* a8;
        float *a8s, *bm;
        fp8_views(set->mem, a, Rp, W, b, l->out, a8, a8s, bm, st_);
        ad.a8 = a8, ad.a8_scale = a8s, ad.b_amax = bm;
      }
    }
    set->layers.push_back({l, ad});
    sig += l->name + ':' + std::to_string(Rp) + 'x' + std::to_string(W) + ';';
  }
  for (auto& [slot, m] : norm_of) {
    float* w = set->mem.allocT<float>(m->host.size());
    CUDA_CHECK(cudaMemcpyAsync(w, m->w, m->host.size() * 4, cudaMemcpyDeviceToDevice, st_));
    set->norms.push_back({slot, w, norm_base_.at(slot)});
  }
  // In-place layers read the LoRA's own factors: the set keeps it (and its count) alive.
  if (std::any_of(order.begin(), order.end(), in_place)) set->reads.push_back(loras_.at(members.front().first));
  set->control = control;
  if (control) sig += "control:" + std::to_string(control) + ';';
  CUDA_CHECK(cudaStreamSynchronize(st_));
  set->signature = std::hash<std::string>()(sig);
  set->bytes = set->mem.bytes();
  set->used = used_;
  *used_ += set->bytes;
  sets_[key] = set;
  return set;
}

void AdapterSet::place(cudaStream_t st) const {
  for (auto& [l, a] : layers) place_reserve(*l, a, st);
}

void LoraRegistry::activate(const AdapterSet* s) {
  if (s == active_) return;
  if (active_) {
    for (auto& [l, a] : active_->layers) l->adapter = nullptr;
    for (auto& n : active_->norms) *n.slot = n.base;  // the base weight's own pointer: bit-exact base afterwards
  }
  active_ = s;
  if (s) {
    for (auto& [l, a] : s->layers) l->adapter = &a;
    for (auto& n : s->norms) *n.slot = n.w;
  }
}

}  // namespace fq
