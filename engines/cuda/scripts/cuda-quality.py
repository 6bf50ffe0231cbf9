#!/usr/bin/env python3
"""The CUDA engine's modes on flux-mini, for issue 15's quality rows and flux-mini's cached-step pattern: runs
bench:quality's prompts (inputs made here by `flux-mini-reference.ts --prompts N`: token ids, packed starting noise,
sigmas) through one bf16 engine loaded with plans {"fp8": "fp8"} (plus `--plans`' {mode: rules}, e.g. a planner
manifest's L and M), in modes original, S (plan fp8) and S+cache at each `--thresholds` value (plan fp8 with step
caching: warm-up 1, at most 1 cached step in a row, the S rule of the ONNX engine), batch `--batch` (default 1, as
requests are served one by one; the step cache decides per engine job, so a batch caches only when all its samples
agree).

Writes under OUT: `<mode>.rgb.gz` (gzip of RGB8 [N, H, W, 3], prompt order; the mode's name with other characters
than letters, digits, '.', '_', '-' as '-') per mode and `quality-run.json` (the
card, the modes with their plan, threshold, seconds, and per job the `cached` flag of every step, i.e. the F/C
pattern). The metrics (the detector's prompt accuracy, PSNR and SSIM against this engine's original) are computed
back on the lead's machine by `cuda-quality-report.ts` with the same TypeScript code as `npm run bench:quality`.
The engine's GPU time per mode is not a benchmark here (flux-mini is tiny): the synthetic-size timing is
`fluxql-engine --bench-modes --cache-pattern <the pattern found here>`.

usage: cuda-quality.py <engine> <inputs.json> <model dir> <out dir> [--batch 1] [--thresholds 0.1,0.2,0.3]
                       [--max-consecutive 1,2] [--presets fp8all] [--plans plans.json] [--bf16-thresholds 0.1]
"""
import argparse
import base64
import collections
import gzip
import json
import os
import re
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from protocol_test import finish_job, load_engine, step_all  # noqa: E402


def card():
    try:
        return subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,power.limit", "--format=csv,noheader"],
                              capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("engine")
    ap.add_argument("inputs")
    ap.add_argument("model")
    ap.add_argument("out")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--thresholds", default="0.1,0.2,0.3")
    ap.add_argument("--plans", default=None, help="JSON {mode: rules}: more planned modes, e.g. L and M")
    # More than 1 cached step in a row caches more (fewer full steps, faster) at some cost in quality: the sweep
    # tells whether S's speed goal fits inside its quality budget on a trained model (mode names: S+cache@<t>x<k>).
    ap.add_argument("--max-consecutive", default="1", help="comma list of the step cache's max cached in a row")
    # Engine presets beyond fp8 (e.g. fp8all: every per-step block Linear in fp8), each run alone and with the same
    # step-cache sweep as S (mode names <preset>, <preset>+cache@<t>[x<k>]).
    ap.add_argument("--presets", default="", help="comma list of more engine plan presets, e.g. fp8all")
    # L's configuration (the base bf16 plan with step caching; its speed row is device-modes.sh p's L): mode names
    # bf16+cache@<t>, at most 1 cached step in a row.
    ap.add_argument("--bf16-thresholds", default="", help="comma list of step-cache thresholds on the bf16 plan")
    # XL's own step (prepare's branch_bf16: bf16 branch outputs), against original like any mode.
    ap.add_argument("--xl", action="store_true", help="add mode XL (branch_bf16)")
    a = ap.parse_args()
    inp = json.load(open(a.inputs))
    N, H, W, T = len(inp["prompts"]), inp["height"], inp["width"], inp["t5_len"]
    L = (H // 16) * (W // 16)
    clip = np.frombuffer(base64.b64decode(inp["clip"]), dtype=np.int32).reshape(N, 77)
    t5 = np.frombuffer(base64.b64decode(inp["t5"]), dtype=np.int32).reshape(N, T)
    lat = np.frombuffer(base64.b64decode(inp["latents"]), dtype=np.float32).reshape(N, L * 64)
    extra = json.load(open(a.plans)) if a.plans else {}
    # (mode, engine plan, step-cache threshold, max consecutive cached steps): the plan named after its mode for
    # --plans' entries.
    presets = [p for p in a.presets.split(",") if p]
    modes = [("original", None, None, None)]
    if a.xl:
        modes.append(("XL", None, None, None))
    for plan in ["fp8"] + presets:
        label = "S" if plan == "fp8" else plan
        modes.append((label, plan, None, None))
        for k in [int(k) for k in a.max_consecutive.split(",") if k]:
            modes += [(f"{label}+cache@{t}" + (f"x{k}" if k != 1 else ""), plan, float(t), k)
                      for t in a.thresholds.split(",") if t]
    modes += [(f"bf16+cache@{t}", None, float(t), 1) for t in a.bf16_thresholds.split(",") if t]
    modes += [(m, m, None, None) for m in extra]
    os.makedirs(a.out, exist_ok=True)
    eng, loaded = load_engine(a.engine, a.model, "bf16", {"fp8": "fp8", **{p: p for p in presets}, **extra})
    run = {"card": card(), "model": inp["model"], "prompts": inp["prompts"], "seeds": inp["seeds"], "height": H,
           "width": W, "steps": inp["steps"], "guidance": inp["guidance"], "t5_len": T, "batch": a.batch,
           "plans": loaded.get("plans", []), "modes": []}
    for mode, plan, threshold, max_consecutive in modes:
        images, jobs, t0 = [], [], time.time()
        for s in range(0, N, a.batch):
            idx = list(range(s, min(N, s + a.batch)))
            B = len(idx)
            header = {"op": "prepare", "batch": B, "height": H, "width": W, "t5_len": T, "sigmas": inp["sigmas"],
                      "guidance": [inp["guidance"]] * B, "latents": "payload"}
            if plan:
                header["plan"] = plan
            if mode == "XL":
                header["branch_bf16"] = True
            if threshold is not None:
                header["step_cache"] = {"threshold": threshold, "warmup_steps": 1, "max_consecutive": max_consecutive}
            eng.send(header, clip[idx].tobytes() + t5[idx].tobytes() + lat[idx].tobytes())
            prepared = eng.recv()[0]
            if prepared["op"] != "prepared":
                raise SystemExit(f"{mode}: prepare answered {prepared}")
            job = prepared["job"]
            flags = [bool(h.get("cached", False)) for h in step_all(eng, job)[0]]
            _, img, _ = finish_job(eng, job)
            images.append(img.reshape(B, H, W, 3))
            jobs.append({"samples": idx, "pattern": "".join("C" if c else "F" for c in flags)})
        seconds = time.time() - t0
        # File names in letters, digits, '.', '_' and '-' (what the device tool brings back).
        name = re.sub(r"[^A-Za-z0-9._-]", "-", mode) + ".rgb.gz"
        with gzip.open(os.path.join(a.out, name), "wb") as f:
            f.write(np.concatenate(images).tobytes())
        patterns = collections.Counter(j["pattern"] for j in jobs)
        full = [j["pattern"].count("F") for j in jobs]
        run["modes"].append({"mode": mode, "plan": plan, "threshold": threshold, "max_consecutive": max_consecutive,
                             "seconds": seconds,
                             "file": name, "jobs": jobs, "full_steps_mean": float(np.mean(full)),
                             "most_common_pattern": patterns.most_common(1)[0][0]})
        print(f"[cuda-quality] {mode}: {N} images in {seconds:.1f} s, full steps mean {np.mean(full):.1f}, "
              f"most common pattern {patterns.most_common(1)[0][0]}", flush=True)
    eng.send({"op": "quit"})
    with open(os.path.join(a.out, "quality-run.json"), "w") as f:
        json.dump(run, f, indent=1)


if __name__ == "__main__":
    main()
