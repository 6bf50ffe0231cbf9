// fluxql-engine: the native CUDA engine of fluxql.
//   fluxql-engine [--serve]                       framed protocol on stdin/stdout (PROTOCOL.md)
//   fluxql-engine --selftest <fixtures> <model dir or load-spec .json> [f32|bf16|fp8|both|all]
//   fluxql-engine --bench [--size N|WxH] [--steps N] [--batches 1,2,4] [--iters N] [--precisions bf16,fp8]
//                         [--graphs on|off|both] [--out prefix]
//   fluxql-engine --bench-lora [--size N] [--steps N] [--ranks 16,64,256] [--precisions bf16,fp8] [--out prefix]
//   fluxql-engine --bench-modes [--size N|WxH] [--steps N] [--batches 1,4] [--iters N] [--modes original,XL,S,S+cache]
//                               [--cache-pattern FCFC...] [--lora-ranks 16,64,256] [--card text] [--out prefix]
#include <cstdio>
#include <cstring>
#include <string>

#include "selftest.h"

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
    if (mode == "--bench") {
      int steps = 28, iters = 10;
      std::string size = "1024", batches = "1,2,4", out = "cuda-bench", precisions = "bf16", graphs = "on";
      for (int i = 2; i + 1 < argc; i += 2) {
        std::string k = argv[i], v = argv[i + 1];
        if (k == "--size") size = v;
        else if (k == "--steps") steps = std::stoi(v);
        else if (k == "--iters") iters = std::stoi(v);
        else if (k == "--batches") batches = v;
        else if (k == "--out") out = v;
        else if (k == "--precisions") precisions = v;
        else if (k == "--graphs") graphs = v;
        else {
          fprintf(stderr, "unknown option %s\n", k.c_str());
          return 2;
        }
      }
      return fq::run_bench(size, steps, batches, iters, precisions, graphs, out);
    }
    if (mode == "--bench-lora") {
      int side = 1024, steps = 6;
      std::string ranks = "16,64,256", precisions = "bf16", out = "cuda-bench-lora";
      for (int i = 2; i + 1 < argc; i += 2) {
        std::string k = argv[i], v = argv[i + 1];
        if (k == "--size") side = std::stoi(v);
        else if (k == "--steps") steps = std::stoi(v);
        else if (k == "--ranks") ranks = v;
        else if (k == "--precisions") precisions = v;
        else if (k == "--out") out = v;
        else {
          fprintf(stderr, "unknown option %s\n", k.c_str());
          return 2;
        }
      }
      return fq::run_bench_lora(side, steps, ranks, precisions, out);
    }
    if (mode == "--bench-modes") {
      int steps = 28, iters = 10;
      std::string size = "1024", batches = "1,4", modes = "original,XL,S,S+cache", pattern, ranks, card,
                  out = "cuda-modes";
      for (int i = 2; i + 1 < argc; i += 2) {
        std::string k = argv[i], v = argv[i + 1];
        if (k == "--size") size = v;
        else if (k == "--steps") steps = std::stoi(v);
        else if (k == "--iters") iters = std::stoi(v);
        else if (k == "--batches") batches = v;
        else if (k == "--modes") modes = v;
        else if (k == "--cache-pattern") pattern = v;
        else if (k == "--lora-ranks") ranks = v;
        else if (k == "--card") card = v;
        else if (k == "--out") out = v;
        else {
          fprintf(stderr, "unknown option %s\n", k.c_str());
          return 2;
        }
      }
      return fq::run_bench_modes(size, steps, batches, iters, modes, pattern, ranks, card, out);
    }
    if (mode == "--serve") return fq::run_serve();
    fprintf(stderr, "unknown mode %s (--serve, --selftest, --bench, --bench-lora, --bench-modes)\n", mode.c_str());
    return 2;
  } catch (const std::exception& e) {
    fprintf(stderr, "fluxql-engine: %s\n", e.what());
    return 1;
  }
}
