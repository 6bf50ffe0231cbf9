// The LoRA requests of the serve protocol (PROTOCOL.md): `lora_load` (factors per engine layer, possibly over several
// frames), `lora_unload`, the `loras` set of `prepare`, and the typed fields of a refused LoRA's `error` frame.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "engine.h"
#include "json.h"

namespace fq {

// Layers of a LoRA sent over several `lora_load` frames (`more`: true), kept on the host until the last one.
struct LoraStaging {
  struct Part {
    std::vector<float> data;  // the frame's payload
    std::vector<LoraLayerIn> layers;
    std::vector<LoraNormIn> norms;
  };
  std::map<std::string, std::vector<Part>> pending;
};

// Handles one `lora_load` frame; returns the response header's fields after op and id (`lora_staged` or
// `lora_loaded`, see PROTOCOL.md) and sets `op` to the response op. @throws LoraFail, std::runtime_error
std::string lora_load_request(Engine& e, LoraStaging& staging, const Json& req, const std::vector<uint8_t>& payload,
                              std::string& op);
// `prepare`'s `loras`: [{"name", "strength"}] (strength defaults to 1).
std::vector<std::pair<std::string, float>> lora_set_of(const Json& loras);
// `,"lora_code":...,"keys":[...]` for a LoraFail, else "".
std::string lora_error_fields(const std::exception& e);
// `,"lora_bytes":...,"lora_max_bytes":...,"loras":[...]` of a loaded engine.
std::string lora_state_fields(const Engine& e);

}  // namespace fq
