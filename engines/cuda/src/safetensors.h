// Read-only, memory-mapped safetensors files and diffusers component folders (one file or a sharded index).
#pragma once
#include <map>
#include <memory>
#include <set>
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

// How one diffusers-named tensor is made from a stored one (BFL checkpoints, text-encoder spellings): the stored
// tensor's rows [r0, r1) along dim 0, concatenated in order; no ranges: the whole tensor. Rows of a row-major
// tensor are contiguous bytes, so one range is a view into the mapping and several are copied once.
struct MappedName {
  std::string source;
  std::vector<std::pair<int64_t, int64_t>> rows;
};

// One component's weights, looked up by diffusers name. Either a diffusers component folder (transformer/, vae/,
// text_encoder/, text_encoder_2/: every *.safetensors shard it holds; `prefixes` are tried in turn in front of a
// name, "text_model." for CLIP exports that keep it), or explicit files with a name map (a load spec: the host
// resolves the layout and sends the map, see PROTOCOL.md), which then answers mapped names only.
class ComponentFiles {
 public:
  ComponentFiles(const std::string& dir, std::vector<std::string> prefixes = {""});
  ComponentFiles(const std::vector<std::string>& files, std::map<std::string, MappedName> map);
  const StTensor* find(const std::string& name) const;
  const StTensor& get(const std::string& name) const;  // throws with the name when absent; marks the name used
  // Names never read through get(): mapped names when a map is given, else stored names (prefixes stripped).
  std::vector<std::string> unused() const;
  std::string dir;  // for messages: the folder, or the first file

 private:
  const StTensor* find_stored(const std::string& name) const;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::vector<std::string> prefixes_;
  std::map<std::string, MappedName> map_;
  // Mapped tensors made so far (views or copies of the stored rows) and the bytes of the copies.
  mutable std::map<std::string, StTensor> mapped_;
  mutable std::map<std::string, std::vector<uint8_t>> copies_;
  mutable std::set<std::string> used_;
};

}  // namespace fq
