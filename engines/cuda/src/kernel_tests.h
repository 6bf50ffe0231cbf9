// Per-kernel unit checks against float64 host references (part of --selftest): the fused residual + LayerNorm,
// QK-RMSNorm + RoPE, the fp8 quantisers, GroupNorm, the GEMM wrapper's no-epilogue fallback, and attention (the
// row kernel, the flash kernel and cuDNN) against a host softmax(q k^T) v. Fresh random inputs, poisoned outputs.
#pragma once
#include <string>

namespace fq {
class Engine;
using ReportFn = void (*)(const std::string& name, const std::string& precision, const std::string& metric,
                          double value, double limit, bool required);
void run_kernel_units(Engine& e, ReportFn report);
}  // namespace fq
