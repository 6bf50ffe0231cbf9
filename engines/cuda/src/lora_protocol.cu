#include "lora_protocol.h"

#include <cstring>

namespace fq {
namespace {

std::string str_list(const std::vector<std::string>& v) {
  std::string s = "[";
  for (size_t i = 0; i < v.size(); i++) s += (i ? "," : "") + json_escape(v[i]);
  return s + "]";
}

}  // namespace

std::string lora_load_request(Engine& e, LoraStaging& staging, const Json& req, const std::vector<uint8_t>& payload,
                              std::string& op) {
  if (!e.loras) throw std::runtime_error("no model loaded");
  const std::string name = req.str("name", "");
  if (name.empty()) throw LoraFail("bad_argument", "lora_load needs a name");
  const bool more = req["more"].kind == Json::Bool && req["more"].b;
  const bool append = req["append"].kind == Json::Bool && req["append"].b;
  auto& parts = staging.pending[name];
  if (!append) parts.clear();  // a new load of this name starts over
  try {
    // layers: [{"layer", "rank", "in", "out", "bias"}], payload per layer: A f32 [rank, in], B f32 [out, rank], then
    // (bias: true) the up-bias f32 [out].
    LoraStaging::Part part;
    size_t floats = 0;
    for (auto& l : req["layers"].a) {
      LoraLayerIn in;
      in.layer = l.str("layer", "");
      in.rank = int(l.num("rank", 0));
      in.in = int(l.num("in", 0));
      in.out = int(l.num("out", 0));
      if (in.rank < 0 || in.in <= 0 || in.out <= 0) throw LoraFail("shape_mismatch", name + ": bad layer entry " + in.layer, {in.layer});
      const bool bias = l["bias"].kind == Json::Bool && l["bias"].b;
      in.a = reinterpret_cast<const float*>(floats);  // offsets for now; pointers once the payload is copied
      floats += size_t(in.rank) * in.in;
      in.b = reinterpret_cast<const float*>(floats);
      floats += size_t(in.out) * in.rank;
      if (bias) {
        in.bias = reinterpret_cast<const float*>(floats);
        floats += size_t(in.out);
      }
      part.layers.push_back(in);
    }
    // norms (BFL Control): [{"norm", "dim"}], payload after the layers: the replacement weight f32 [dim] each.
    for (auto& n : req["norms"].a) {
      LoraNormIn in;
      in.norm = n.str("norm", "");
      in.dim = int(n.num("dim", 0));
      if (in.dim <= 0) throw LoraFail("shape_mismatch", name + ": bad norm entry " + in.norm, {in.norm});
      in.w = reinterpret_cast<const float*>(floats);
      floats += size_t(in.dim);
      part.norms.push_back(in);
    }
    if (payload.size() != floats * 4)
      throw std::runtime_error("lora_load payload must be " + std::to_string(floats * 4) + " bytes, got " +
                               std::to_string(payload.size()));
    part.data.resize(floats);
    if (floats) memcpy(part.data.data(), payload.data(), floats * 4);
    for (auto& in : part.layers) {
      in.a = part.data.data() + reinterpret_cast<size_t>(in.a);
      in.b = part.data.data() + reinterpret_cast<size_t>(in.b);
      if (in.bias) in.bias = part.data.data() + reinterpret_cast<size_t>(in.bias);
    }
    for (auto& in : part.norms) in.w = part.data.data() + reinterpret_cast<size_t>(in.w);
    parts.push_back(std::move(part));
    if (more) {
      op = "lora_staged";
      return ",\"name\":" + json_escape(name) + ",\"frames\":" + std::to_string(parts.size());
    }
    std::vector<LoraLayerIn> all;
    std::vector<LoraNormIn> norms;
    for (auto& p : parts) {
      all.insert(all.end(), p.layers.begin(), p.layers.end());
      norms.insert(norms.end(), p.norms.begin(), p.norms.end());
    }
    const size_t bytes = e.loras->load(name, all, norms);
    staging.pending.erase(name);
    op = "lora_loaded";
    return ",\"name\":" + json_escape(name) + ",\"layers\":" + std::to_string(all.size()) +
           ",\"norms\":" + std::to_string(norms.size()) +
           ",\"bytes\":" + std::to_string(bytes) + lora_state_fields(e);
  } catch (...) {
    staging.pending.erase(name);
    throw;
  }
}

std::vector<std::pair<std::string, float>> lora_set_of(const Json& loras) {
  std::vector<std::pair<std::string, float>> set;
  if (loras.is_null()) return set;
  if (loras.kind != Json::Arr) throw LoraFail("bad_argument", "loras must be [{name, strength}]");
  for (auto& m : loras.a) {
    const std::string n = m.str("name", "");
    if (n.empty()) throw LoraFail("bad_argument", "a loras entry needs a name");
    set.emplace_back(n, float(m.num("strength", 1.0)));
  }
  return set;
}

std::string lora_error_fields(const std::exception& ex) {
  const auto* f = dynamic_cast<const LoraFail*>(&ex);
  if (!f) return "";
  return ",\"lora_code\":" + json_escape(f->code) + ",\"keys\":" + str_list(f->keys);
}

std::string lora_state_fields(const Engine& e) {
  if (!e.loras) return "";
  return ",\"lora_bytes\":" + std::to_string(e.loras->bytes()) + ",\"lora_max_bytes\":" +
         std::to_string(e.loras->max_bytes()) + ",\"loras\":" + str_list(e.loras->names());
}

}  // namespace fq
