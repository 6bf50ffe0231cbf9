// Read-only, memory-mapped safetensors files and diffusers component folders (one file or a sharded index).
#pragma once
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace fq {

struct StTensor {
  std::string dtype;  // "F32", "BF16", "F16", ...
  std::vector<int64_t> shape;
  const uint8_t* data = nullptr;  // points into the mapping
  size_t bytes = 0;
};

class SafetensorsFile {
 public:
  explicit SafetensorsFile(const std::string& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;
  const std::map<std::string, StTensor>& tensors() const { return tensors_; }
  const StTensor* find(const std::string& name) const;
  // Copies a tensor into fp32 host memory (F32, BF16 and F16 sources).
  std::vector<float> to_f32(const std::string& name) const;

 private:
  std::string path_;
  void* map_ = nullptr;
  size_t size_ = 0;
  std::map<std::string, StTensor> tensors_;
};

std::vector<float> st_to_f32(const StTensor& t);

// A diffusers component folder (transformer/, vae/, text_encoder/, text_encoder_2/): every *.safetensors shard it
// holds, looked up by name. `prefixes` are tried in turn in front of a name ("text_model." for CLIP exports that
// keep it), so callers write names without them.
class ComponentFiles {
 public:
  ComponentFiles(const std::string& dir, std::vector<std::string> prefixes = {""});
  const StTensor* find(const std::string& name) const;
  const StTensor& get(const std::string& name) const;  // throws with the name when absent
  std::string dir;

 private:
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::vector<std::string> prefixes_;
};

}  // namespace fq
