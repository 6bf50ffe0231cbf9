#include "fault.h"

#include <atomic>
#include <cstdlib>

namespace fq {
namespace {
std::atomic<bool> g_sticky{false};
bool g_capturing = false;
// Errors of a stream capture (an operation that cannot be captured): the capture fails, the context is fine.
bool capture_error(cudaError_t e) {
  switch (e) {
    case cudaErrorStreamCaptureUnsupported:
    case cudaErrorStreamCaptureInvalidated:
    case cudaErrorStreamCaptureMerge:
    case cudaErrorStreamCaptureUnmatched:
    case cudaErrorStreamCaptureUnjoined:
    case cudaErrorStreamCaptureIsolation:
    case cudaErrorStreamCaptureImplicit:
    case cudaErrorCapturedEvent:
    case cudaErrorStreamCaptureWrongThread:
      return true;
    default:
      return false;
  }
}
}  // namespace

bool fault_sticky() { return g_sticky.load(); }

void raise_fault(const char* lib, const std::string& what, const char* expr, const char* file, int line,
                 bool device_fault) {
  if (device_fault) g_sticky = true;
  // Device faults keep the "CUDA error" prefix older clients test for; the frame also says "fatal": true.
  std::string head = device_fault ? std::string("CUDA error (") + lib + ") " : std::string(lib) + " error ";
  throw EngineError(head + what + " at " + file + ":" + std::to_string(line) + " [" + expr + "]", device_fault);
}

void raise_library_fault(const char* lib, const std::string& what, const char* expr, const char* file, int line,
                         bool known_device_fault) {
  // During a stream capture a library refusing to be captured is not a device fault: the capture is abandoned and
  // the step runs eagerly, where a real fault would show again.
  bool fault = known_device_fault && !g_capturing;
  if (!fault && !g_capturing) {
    cudaError_t e = cudaDeviceSynchronize();
    if (e != cudaSuccess) {
      fault = true;
      raise_fault(lib, what + "; device: " + cudaGetErrorString(e), expr, file, line, true);
    }
  }
  raise_fault(lib, what, expr, file, line, fault);
}

void check(cudaError_t e, const char* expr, const char* file, int line) {
  if (e == cudaSuccess) return;
  // Out of memory leaves the context usable (the request fails, the engine serves on); every other CUDA error is
  // treated as a device fault, as before.
  bool fault = e != cudaErrorMemoryAllocation && !capture_error(e);
  cudaGetLastError();  // clear a non-sticky error so that the next call does not report it again
  raise_fault("CUDA", cudaGetErrorString(e), expr, file, line, fault);
}

bool debug_sync() {
  static const bool on = [] {
    const char* v = getenv("FQ_DEBUG_SYNC");
    return v && std::string(v) != "0";
  }();
  return on;
}

void set_capturing(bool on) { g_capturing = on; }
bool capturing() { return g_capturing; }

void after_call(const char* what, const char* file, int line) {
  check(cudaGetLastError(), what, file, line);
  if (debug_sync() && !g_capturing) check(cudaDeviceSynchronize(), what, file, line);
}

}  // namespace fq
