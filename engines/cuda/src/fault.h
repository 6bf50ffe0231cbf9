// Typed faults: every CUDA, cuBLAS and cuDNN status goes through one check that throws one exception type,
// EngineError. A device fault (the CUDA context may be unusable: an illegal address, a launch failure, a library
// that failed while executing) also sets a sticky flag; the server answers `error` with "fatal": true and exits, and
// the host restarts it. Other failures (bad input, a shape without a kernel, out of memory) leave the engine serving.
// Debug mode (FQ_DEBUG_SYNC=1) synchronises after every launch and library call, so a fault is reported by the call
// that caused it rather than by a later one.
#pragma once
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

namespace fq {

class EngineError : public std::runtime_error {
 public:
  EngineError(const std::string& msg, bool device_fault) : std::runtime_error(msg), device_fault(device_fault) {}
  const bool device_fault;  // the CUDA context may be broken: the process must end
};

// True once any device fault was raised in this process (sticky: never cleared).
bool fault_sticky();
// Raises EngineError; `device_fault` also sets the sticky flag. `lib` is "CUDA", "cuBLAS" or "cuDNN".
[[noreturn]] void raise_fault(const char* lib, const std::string& what, const char* expr, const char* file, int line,
                              bool device_fault);
// A library call failed with a status that is not itself a device fault: asks the device whether it is healthy
// (a fault first reported by cuBLAS/cuDNN shows here as a failing CUDA call) and raises accordingly.
[[noreturn]] void raise_library_fault(const char* lib, const std::string& what, const char* expr, const char* file,
                                      int line, bool known_device_fault);
void check(cudaError_t e, const char* expr, const char* file, int line);

// Debug mode: FQ_DEBUG_SYNC=1 (read once). Never syncs while a stream capture is under way (see set_capturing).
bool debug_sync();
void set_capturing(bool on);
bool capturing();
// After a launch or library call: the launch error, and in debug mode a device sync.
void after_call(const char* what, const char* file, int line);

}  // namespace fq

#define FQ_CHECK(x) ::fq::check((x), #x, __FILE__, __LINE__)
#define CUDA_CHECK(x) FQ_CHECK(x)
// Every launch is followed by this: a bad configuration shows up at the launch, not at a later sync.
#define LAUNCH_CHECK() ::fq::after_call("kernel launch", __FILE__, __LINE__)
