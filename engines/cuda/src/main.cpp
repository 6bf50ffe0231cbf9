// fluxql-engine: the native CUDA engine of fluxql.
//   fluxql-engine [--serve]                       framed protocol on stdin/stdout (PROTOCOL.md)
//   fluxql-engine --selftest <fixtures> <model dir or load-spec .json> [f32|bf16|fp8|both|all]
//   fluxql-engine --bench [--size N|WxH] [--steps N] [--batches 1,2,4] [--iters N] [--precisions bf16,fp8]
//                         [--graphs on|off|both] [--out prefix]
//   fluxql-engine --bench-lora [--size N] [--steps N] [--ranks 16,64,256] [--precisions bf16,fp8] [--out prefix]
//   fluxql-engine --bench-modes [--size N|WxH] [--steps N] [--batches 1,4] [--iters N]
//                               [--modes original,XL,S,S+cache,NAME=base|fp8[/FC..]] [--cache-pattern FCFC...]
//                               [--lora-ranks 16,64,256] [--card text] [--out prefix]
#include <cstdio>
#include <cstring>
#include <initializer_list>
#include <map>
#include <string>

#include "selftest.h"

namespace {

// The "--key value" pairs after the mode (a later value of a key wins); false, after saying so, for a key not in
// `known`.
bool parse_options(int argc, char** argv, std::initializer_list<const char*> known,
                   std::map<std::string, std::string>& out) {
  for (int i = 2; i + 1 < argc; i += 2) {
    std::string k = argv[i];
    bool ok = false;
    for (const char* n : known) ok = ok || k == n;
    if (!ok) {
      fprintf(stderr, "unknown option %s\n", k.c_str());
      return false;
    }
    out[k] = argv[i + 1];
  }
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    std::string mode = argc > 1 ? argv[1] : "--serve";
    if (mode == "--selftest") {
      if (argc < 4) {
        fprintf(stderr,
                "usage: fluxql-engine --selftest <fixtures dir> <model dir or load-spec .json> "
                "[f32|bf16|fp8|both|all]\n");
        return 2;
      }
      return fq::run_selftest(argv[2], argv[3], argc > 4 ? argv[4] : "both");
    }
    std::map<std::string, std::string> o;
    auto opt = [&](const char* k, const char* fallback) {
      auto it = o.find(k);
      return it == o.end() ? std::string(fallback) : it->second;
    };
    if (mode == "--bench") {
      if (!parse_options(argc, argv,
                         {"--size", "--steps", "--iters", "--batches", "--out", "--precisions", "--graphs"}, o))
        return 2;
      return fq::run_bench(opt("--size", "1024"), std::stoi(opt("--steps", "28")), opt("--batches", "1,2,4"),
                           std::stoi(opt("--iters", "10")), opt("--precisions", "bf16"), opt("--graphs", "on"),
                           opt("--out", "cuda-bench"));
    }
    if (mode == "--bench-lora") {
      if (!parse_options(argc, argv, {"--size", "--steps", "--ranks", "--precisions", "--out"}, o)) return 2;
      return fq::run_bench_lora(std::stoi(opt("--size", "1024")), std::stoi(opt("--steps", "6")),
                                opt("--ranks", "16,64,256"), opt("--precisions", "bf16"),
                                opt("--out", "cuda-bench-lora"));
    }
    if (mode == "--bench-modes") {
      if (!parse_options(argc, argv,
                         {"--size", "--steps", "--iters", "--batches", "--modes", "--cache-pattern", "--lora-ranks",
                          "--card", "--out"},
                         o))
        return 2;
      return fq::run_bench_modes(opt("--size", "1024"), std::stoi(opt("--steps", "28")), opt("--batches", "1,4"),
                                 std::stoi(opt("--iters", "10")), opt("--modes", "original,XL,S,S+cache"),
                                 opt("--cache-pattern", ""), opt("--lora-ranks", ""), opt("--card", ""),
                                 opt("--out", "cuda-modes"));
    }
    if (mode == "--serve") return fq::run_serve();
    fprintf(stderr, "unknown mode %s (--serve, --selftest, --bench, --bench-lora, --bench-modes)\n", mode.c_str());
    return 2;
  } catch (const std::exception& e) {
    fprintf(stderr, "fluxql-engine: %s\n", e.what());
    return 1;
  }
}
