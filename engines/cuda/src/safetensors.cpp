#include "safetensors.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <stdexcept>

#include "common.h"
#include "json.h"

namespace fq {

SafetensorsFile::SafetensorsFile(const std::string& path) : path_(path) {
  int fd = open(path.c_str(), O_RDONLY);
  if (fd < 0) throw std::runtime_error("cannot open " + path);
  struct stat st;
  fstat(fd, &st);
  size_ = size_t(st.st_size);
  map_ = mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
  close(fd);
  if (map_ == MAP_FAILED) throw std::runtime_error("mmap failed: " + path);
  const uint8_t* base = static_cast<const uint8_t*>(map_);
  if (size_ < 8) throw std::runtime_error("not a safetensors file: " + path);
  uint64_t hlen;
  memcpy(&hlen, base, 8);
  if (8 + hlen > size_) throw std::runtime_error("bad safetensors header length: " + path);
  Json h = Json::parse(std::string(reinterpret_cast<const char*>(base + 8), hlen));
  const uint8_t* data = base + 8 + hlen;
  for (auto& [name, v] : h.o) {
    if (name == "__metadata__") continue;
    StTensor t;
    t.dtype = v["dtype"].s;
    for (auto& d : v["shape"].a) t.shape.push_back(int64_t(d.n));
    size_t a = size_t(v["data_offsets"][0].n), b = size_t(v["data_offsets"][1].n);
    if (8 + hlen + b > size_) throw std::runtime_error("tensor past end of file: " + name + " in " + path);
    t.data = data + a;
    t.bytes = b - a;
    tensors_[name] = t;
  }
}

SafetensorsFile::~SafetensorsFile() {
  if (map_ && map_ != MAP_FAILED) munmap(map_, size_);
}

const StTensor* SafetensorsFile::find(const std::string& name) const {
  auto it = tensors_.find(name);
  return it == tensors_.end() ? nullptr : &it->second;
}

std::vector<float> st_to_f32(const StTensor& t) {
  size_t n = size_t(numel(t.shape));
  std::vector<float> out(n);
  if (t.dtype == "F32") {
    if (t.bytes != n * 4) throw std::runtime_error("size mismatch");
    memcpy(out.data(), t.data, n * 4);
  } else if (t.dtype == "BF16") {
    const uint16_t* p = reinterpret_cast<const uint16_t*>(t.data);
    for (size_t i = 0; i < n; i++) out[i] = bf16_to_f32(p[i]);
  } else if (t.dtype == "F16") {
    const uint16_t* p = reinterpret_cast<const uint16_t*>(t.data);
    for (size_t i = 0; i < n; i++) {
      uint16_t h = p[i];
      uint32_t sign = uint32_t(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff, u;
      if (exp == 0) {
        float f = float(man) * (1.0f / 16777216.0f);  // subnormal: man * 2^-24
        memcpy(&u, &f, 4);
        u |= sign;
      } else if (exp == 31) {
        u = sign | 0x7f800000 | (man << 13);
      } else {
        u = sign | ((exp + 112) << 23) | (man << 13);
      }
      memcpy(&out[i], &u, 4);
    }
  } else {
    throw std::runtime_error("unsupported safetensors dtype " + t.dtype);
  }
  return out;
}

std::vector<float> SafetensorsFile::to_f32(const std::string& name) const {
  const StTensor* t = find(name);
  if (!t) throw std::runtime_error("tensor not found: " + name + " in " + path_);
  return st_to_f32(*t);
}

ComponentFiles::ComponentFiles(const std::string& d, std::vector<std::string> prefixes)
    : dir(d), prefixes_(std::move(prefixes)) {
  DIR* dp = opendir(dir.c_str());
  if (!dp) throw std::runtime_error("cannot open folder " + dir);
  std::vector<std::string> names;
  while (dirent* e = readdir(dp)) {
    std::string n = e->d_name;
    if (n.size() > 12 && n.compare(n.size() - 12, 12, ".safetensors") == 0) names.push_back(n);
  }
  closedir(dp);
  std::sort(names.begin(), names.end());
  if (names.empty()) throw std::runtime_error("no .safetensors files in " + dir);
  // A sharded checkpoint lists its shards in *.safetensors.index.json; every shard in the folder is opened, so the
  // index itself is not needed for lookup.
  for (auto& n : names) files_.push_back(std::make_unique<SafetensorsFile>(dir + "/" + n));
}

ComponentFiles::ComponentFiles(const std::vector<std::string>& files, std::map<std::string, MappedName> map)
    : dir(files.empty() ? "" : files[0]), prefixes_{""}, map_(std::move(map)) {
  if (files.empty()) throw std::runtime_error("a component needs at least one weight file");
  for (auto& f : files) files_.push_back(std::make_unique<SafetensorsFile>(f));
}

const StTensor* ComponentFiles::find(const std::string& name) const {
  if (map_.empty()) return find_stored(name);
  auto done = mapped_.find(name);
  if (done != mapped_.end()) return &done->second;
  auto m = map_.find(name);
  if (m == map_.end()) return nullptr;
  const StTensor* src = find_stored(m->second.source);
  if (!src) throw std::runtime_error("mapped tensor " + name + ": stored tensor " + m->second.source + " not in " + dir);
  if (m->second.rows.empty()) return &(mapped_[name] = *src);
  int64_t R = src->shape.empty() ? 0 : src->shape[0];
  if (R <= 0 || src->bytes % size_t(R)) throw std::runtime_error("cannot take rows of " + m->second.source);
  const size_t row = src->bytes / size_t(R);
  StTensor t = *src;
  t.shape[0] = 0;
  for (auto [r0, r1] : m->second.rows) {
    if (r0 < 0 || r1 > R || r0 >= r1)
      throw std::runtime_error("rows [" + std::to_string(r0) + ", " + std::to_string(r1) + ") out of range for " +
                               m->second.source);
    t.shape[0] += r1 - r0;
  }
  t.bytes = size_t(t.shape[0]) * row;
  if (m->second.rows.size() == 1) {
    t.data = src->data + size_t(m->second.rows[0].first) * row;
  } else {
    auto& buf = copies_[name];
    buf.resize(t.bytes);
    size_t at = 0;
    for (auto [r0, r1] : m->second.rows) {
      memcpy(buf.data() + at, src->data + size_t(r0) * row, size_t(r1 - r0) * row);
      at += size_t(r1 - r0) * row;
    }
    t.data = buf.data();
  }
  return &(mapped_[name] = t);
}

const StTensor* ComponentFiles::find_stored(const std::string& name) const {
  for (auto& p : prefixes_)
    for (auto& f : files_)
      if (const StTensor* t = f->find(p + name)) return t;
  return nullptr;
}

const StTensor& ComponentFiles::get(const std::string& name) const {
  const StTensor* t = find(name);
  if (!t) throw std::runtime_error("weight not found: " + name + " in " + dir);
  used_.insert(name);
  return *t;
}

std::vector<std::string> ComponentFiles::unused() const {
  std::vector<std::string> out;
  if (!map_.empty()) {
    for (auto& [name, m] : map_)
      if (!used_.count(name)) out.push_back(name);
    return out;
  }
  for (auto& f : files_)
    for (auto& [stored, t] : f->tensors()) {
      bool used = false;
      for (auto& p : prefixes_)
        if (stored.compare(0, p.size(), p) == 0 && used_.count(stored.substr(p.size()))) used = true;
      if (!used) out.push_back(stored);
    }
  return out;
}

}  // namespace fq
