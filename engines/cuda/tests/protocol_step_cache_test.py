#!/usr/bin/env python3
"""Step caching (First-Block-Cache, `prepare`'s `step_cache`) over the engine's framed protocol, on the edit fixtures'
true_cfg_1 case run as a plain batch-2 text-to-image job (its prompts, sigmas and start latents): threshold 0 must give
latents and image bit-identical to the job without caching (every step full); a huge threshold caches every step the
rule allows (warm-up step 0 full, then at most one cached step in a row: N // 2 of N) and stays within a loose bound of
the uncached latents; the counters in `progress` / `stepped` / `released` add up; bad `step_cache` answers `error`.

usage: protocol_step_cache_test.py <engine> <fixtures dir> <model dir> [f32|bf16]
"""
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from protocol_test import Checks, Engine, finish_job, read_safetensors, step_all  # noqa: E402
from protocol_edit_test import expect_error, rel  # noqa: E402


def run(eng, case, toks, sigmas, latents, step_cache=None):
    B = len(case["prompts"])
    clip = np.array([toks[p]["clip"] for p in case["prompts"]], dtype=np.int32)
    t5 = np.array([toks[p]["t5"] for p in case["prompts"]], dtype=np.int32)
    header = {"op": "prepare", "batch": B, "height": case["height"], "width": case["width"], "t5_len": t5.shape[1],
              "sigmas": [float(s) for s in sigmas], "guidance": [case["guidance"]] * B, "latents": "payload"}
    if step_cache is not None:
        header["step_cache"] = step_cache
    eng.send(header, clip.tobytes() + t5.tobytes() + latents.astype(np.float32).tobytes())
    job = eng.recv()[0]["job"]
    progress, stepped = step_all(eng, job)
    lat, img, released = finish_job(eng, job)
    return {"progress": progress, "stepped": stepped, "released": released, "lat": lat, "img": img}


def counters_consistent(r, steps):
    """Every progress frame's full + cached is its step; stepped and released repeat the last one's totals."""
    if not has_counters(r):
        return False
    for p in r["progress"]:
        if p["full_steps"] + p["cached_steps"] != p["step"] or not isinstance(p["cached"], bool):
            return False
    last = r["progress"][-1]
    return all(r[k]["full_steps"] == last["full_steps"] and r[k]["cached_steps"] == last["cached_steps"]
               for k in ("stepped", "released")) and last["step"] == steps


def has_counters(r):
    """Whether every answer of the job carries the counters (a job with step caching)."""
    return all("full_steps" in f and "cached_steps" in f for f in r["progress"] + [r["stepped"], r["released"]])


def no_counters(r):
    return not any("full_steps" in f or "cached_steps" in f for f in r["progress"] + [r["stepped"], r["released"]])


def main():
    exe, fx, model = sys.argv[1:4]
    precision = sys.argv[4] if len(sys.argv) > 4 else "f32"
    ed = f"{fx}/edit"
    index = {c["name"]: c for c in json.load(open(f"{ed}/edit_index.json"))["cases"]}
    toks = json.load(open(f"{ed}/edit_tokens.json"))
    case = index["true_cfg_1"]
    ref = read_safetensors(f"{ed}/{case['file']}")
    sigmas, start = ref["sigmas"], ref["initial_latents_packed"]
    steps = len(sigmas) - 1
    eng = Engine(exe)
    eng.send({"op": "load", "model": model, "precision": precision})
    assert eng.recv()[0]["op"] == "loaded"
    check = Checks("step_cache", precision)

    base = run(eng, case, toks, sigmas, start)
    check("off: counters in the answers (0 = none)", 0 if no_counters(base) else 1, 0)

    zero = run(eng, case, toks, sigmas, start, {"threshold": 0})
    check("threshold 0: latents differing from uncached (count)", int((zero["lat"] != base["lat"]).sum()), 0)
    check("threshold 0: image bytes differing from uncached (count)", int((zero["img"] != base["img"]).sum()), 0)
    check("threshold 0: cached steps", zero["stepped"]["cached_steps"], 0)
    check("threshold 0: counters inconsistent (0 = consistent)", 0 if counters_consistent(zero, steps) else 1, 0)

    big = run(eng, case, toks, sigmas, start, {"threshold": 1e30})
    check("huge threshold: |cached steps - N // 2|", abs(big["stepped"]["cached_steps"] - steps // 2), 0)
    check("huge threshold: counters inconsistent (0 = consistent)", 0 if counters_consistent(big, steps) else 1, 0)
    check("huge threshold: non-finite latents (count)", int((~np.isfinite(big["lat"])).sum()), 0)
    # Loose: a cached step reuses the previous full step's residual, so latents move but stay near the uncached run.
    check("huge threshold: final latents vs uncached (rel)", rel(big["lat"], base["lat"]), 0.5)

    many = run(eng, case, toks, sigmas, start, {"threshold": 1e30, "warmup_steps": 2, "max_consecutive": steps})
    check("warm-up 2, no consecutive limit: |cached steps - (N - 2)|",
          abs(many["stepped"]["cached_steps"] - max(0, steps - 2)), 0)

    bad = [{"threshold": -1}, {"threshold": "x"}, {"warmup_steps": 1}, 3]
    clip = np.array([toks[p]["clip"] for p in case["prompts"]], dtype=np.int32)
    t5 = np.array([toks[p]["t5"] for p in case["prompts"]], dtype=np.int32)
    for sc in bad:
        header = {"op": "prepare", "batch": 2, "height": case["height"], "width": case["width"],
                  "t5_len": t5.shape[1], "sigmas": [float(s) for s in sigmas], "guidance": [case["guidance"]] * 2,
                  "latents": "payload", "step_cache": sc}
        msg = expect_error(eng, header, clip.tobytes() + t5.tobytes() + start.astype(np.float32).tobytes())
        check(f"bad step_cache {json.dumps(sc)} refused (0 = refused: {msg[:60]})", 0, 0)
    again = run(eng, case, toks, sigmas, start, {"threshold": 0})
    check("serving after refusals: latents differing (count)", int((again["lat"] != base["lat"]).sum()), 0)

    eng.send({"op": "quit"})
    check.finish(precision)


if __name__ == "__main__":
    main()
