// Activates a registry's item (a job's precision plan, its LoRA set) for a scope (a prepare, an eager or a captured
// step) and restores the base on exit, so Linears never point at an item outside the work of the job that holds it.
// A null item leaves the registry alone. R needs activate(const T*), where activate(nullptr) restores the base.
#pragma once

namespace fq {

template <class R, class T>
class ActiveScope {
 public:
  ActiveScope(R* r, const T* item) : r_(item ? r : nullptr) {
    if (r_) r_->activate(item);
  }
  ~ActiveScope() {
    if (r_) r_->activate(nullptr);
  }
  ActiveScope(const ActiveScope&) = delete;
  ActiveScope& operator=(const ActiveScope&) = delete;

 private:
  R* r_;
};

}  // namespace fq
