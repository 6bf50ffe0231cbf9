#!/usr/bin/env python3
"""Per-layer calibration (`calibrate`, issue 15) over the engine's framed protocol, on the fixtures' pipeline case 1
(its geometry, first prompt and start latents, the first two steps of its schedule). One bf16 engine must give:
- `calibrated`: every transformer Linear listed exactly once (the count from the transformer config: 6 embedder
  Linears, 2 guidance ones when the config has guidance, 10 per double block, 4 per single block, norm_out and
  proj_out), each measured in fp8 (no `skip`) with a finite relative error > 0 and GEMM times > 0; base_ms > 0;
- `verify` of a plan holding only the lowest-error layer reproduces that layer's error (the same computation on the
  same trajectory), and the plan of the 3 lowest-error layers has a finite error > 0 within a factor 5 of its
  root-sum-square prediction (the planner's error model);
- that 3-layer rules string (exact names, `name=fp8;...`, what src/pipeline/cuda-planner.ts sends) loads as a
  named plan of exactly 3 layers, and a job under it runs to finite latents;
- refusals, non-fatal: calibrate with a plan, and calibrate on an f32 engine (no fp8 path).
GEMM autotuning is off (FQ_GEMM_TUNE=0), as in protocol_plans_test.py: the verify check compares two calls.

usage: protocol_calibrate_test.py <engine> <fixtures dir> <model dir>
"""
import json
import math
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from protocol_test import Checks, finish_job, pipeline_case, step_all  # noqa: E402
from protocol_test import load_engine as load  # noqa: E402
from protocol_edit_test import expect_error  # noqa: E402


def inputs(case, toks, ref, op, steps=2, **extra):
    """Header and payload of a one-sample request (`calibrate` or `prepare`) on the case's first prompt."""
    prompt = case["prompts"][0]
    clip = np.array([toks[prompt]["clip"]], dtype=np.int32)
    t5 = np.array([toks[prompt]["t5"]], dtype=np.int32)
    sig = [float(s) for s in ref["sigmas"][:steps]] + [0.0]
    lat = ref["initial_latents_packed"][:1].astype(np.float32)
    header = {"op": op, "batch": 1, "height": case["height"], "width": case["width"], "t5_len": t5.shape[1],
              "sigmas": sig, "guidance": [case["guidance"]], "latents": "payload", **extra}
    return header, clip.tobytes() + t5.tobytes() + lat.tobytes()


def main():
    exe, fx, model = sys.argv[1:4]
    os.environ["FQ_GEMM_TUNE"] = "0"  # inherited by every engine started below (see the docstring)
    case, toks, ref = pipeline_case(fx)
    tc = json.load(open(f"{model}/transformer/config.json"))
    check = Checks("calibrate")

    eng, _ = load(exe, model, "bf16")
    eng.send(*inputs(case, toks, ref, "calibrate", reps=3, fp8row=True))
    cal = eng.recv()[0]
    check("answer is calibrated (0 = yes)", 0 if cal["op"] == "calibrated" else 1, 0)
    layers = cal["layers"]
    names = [l["name"] for l in layers]
    want = 6 + (2 if tc.get("guidance_embeds") else 0) + 10 * tc["num_layers"] + 4 * tc["num_single_layers"] + 2
    check(f"layers listed {len(names)} vs {want} (|difference|)", abs(len(names) - want), 0)
    check("layers listed twice (count)", len(names) - len(set(names)), 0)
    check("layers outside the transformer (count)", sum(not n.startswith("transformer/") for n in names), 0)
    skipped = [(l["name"], l.get("skip")) for l in layers if not l["fp8"]]
    check(f"layers not measured in fp8 (count; first: {skipped[:2]})", len(skipped), 0)
    reasons = {}
    for name, why in skipped:
        reasons.setdefault(why, []).append(name)
    for why, who in reasons.items():  # each distinct reason once, with the layers it stopped
        print(f"  not measured ({len(who)}: {who[:4]}{' ...' if len(who) > 4 else ''}): {why}", flush=True)
    fp8 = [l for l in layers if l["fp8"]]
    bad_err = [l["name"] for l in fp8 if not (isinstance(l["rel_err_fp8"], (int, float))
                                              and math.isfinite(l["rel_err_fp8"]) and l["rel_err_fp8"] > 0)]
    check(f"fp8 layers without a finite error > 0 (count; first: {bad_err[:2]})", len(bad_err), 0)
    bad_ms = [l["name"] for l in fp8 if not (l["ms_bf16"] > 0 and l["ms_fp8"] is not None and l["ms_fp8"] > 0)]
    check(f"fp8 layers without GEMM times > 0 (count; first: {bad_ms[:2]})", len(bad_ms), 0)
    check(f"base_ms > 0 ({cal['base_ms']}) and steps 2 ({cal['steps']}) (0 = yes)",
          0 if cal["base_ms"] > 0 and cal["steps"] == 2 else 1, 0)
    errs = sorted(fp8, key=lambda l: l["rel_err_fp8"])
    print("lowest errors:", [(l["name"], l["rel_err_fp8"]) for l in errs[:3]],
          "highest:", [(l["name"], l["rel_err_fp8"]) for l in errs[-3:]], flush=True)
    saved = sum(l["ms_bf16"] - l["ms_fp8"] for l in fp8)
    print(f"base forward {cal['base_ms']:.3f} ms; all-fp8 GEMM time saved {saved:.3f} ms per step", flush=True)
    # fp8row (per-channel weight, per-token activation scales): every layer measured too, finite errors and times.
    row_skipped = [(l["name"], l.get("skip_fp8row")) for l in layers if not l.get("fp8row")]
    check(f"layers not measured in fp8row (count; first: {row_skipped[:2]})", len(row_skipped), 0)
    rows = [l for l in layers if l.get("fp8row")]
    bad_row = [l["name"] for l in rows if not (isinstance(l["rel_err_fp8row"], (int, float))
                                               and math.isfinite(l["rel_err_fp8row"]) and l["rel_err_fp8row"] > 0
                                               and l["ms_fp8row"] is not None and l["ms_fp8row"] > 0)]
    check(f"fp8row layers without a finite error > 0 and a time > 0 (count; first: {bad_row[:2]})", len(bad_row), 0)
    both = [l for l in rows if l["fp8"]]
    if both:  # informational: expected mostly below 1 (finer scales), the times a little above fp8's
        ratios = sorted(l["rel_err_fp8row"] / l["rel_err_fp8"] for l in both if l["rel_err_fp8"] > 0)
        if ratios:
            print(f"fp8row / fp8 error per layer: median {ratios[len(ratios) // 2]:.3f}, "
                  f"max {ratios[-1]:.3f}, below 1 in {sum(r < 1 for r in ratios)} of {len(ratios)}; "
                  f"fp8row GEMM time saved {sum(l['ms_bf16'] - l['ms_fp8row'] for l in both):.3f} ms per step",
                  flush=True)

    if len(errs) < 3:
        check.finish("bf16")  # nothing to verify plans with; the failures above say why
        return
    three = errs[:3]
    rules = ";".join(f"{l['name']}=fp8" for l in three)  # cudaPlanRules' format
    one = f"{errs[0]['name']}=fp8"
    header, payload = inputs(case, toks, ref, "calibrate", reps=1, per_layer=False, verify={"one": one, "three": rules})
    eng.send(header, payload)
    ver = eng.recv()[0]
    got = {v["name"]: v for v in ver.get("verified", [])}
    check("verify answers both plans and no layer table (0 = yes)",
          0 if set(got) == {"one", "three"} and ver["layers"] == [] else 1, 0)
    if set(got) == {"one", "three"}:
        e1, solo = got["one"]["rel_err"], errs[0]["rel_err_fp8"]
        check(f"verify one layer reproduces its error ({e1:.4e} vs {solo:.4e}; relative difference)",
              abs(e1 - solo) / solo, 1e-6)
        e3 = got["three"]["rel_err"]
        pred = math.sqrt(sum(l["rel_err_fp8"] ** 2 for l in three))
        ratio = e3 / pred if pred > 0 and e3 is not None else math.inf
        check(f"3-layer plan: {got['three']['layers']} layers, error {e3} vs predicted {pred:.4e} "
              f"(|log5 ratio| <= 1)", abs(math.log(ratio) / math.log(5)) if 0 < ratio < math.inf else math.inf, 1)
        check("3-layer plan makes 3 layers fp8 (|difference|)", abs(got["three"]["layers"] - 3), 0)

    msg = expect_error(eng, *inputs(case, toks, ref, "calibrate", plan="fp8"))
    check(f"calibrate with a plan refused (0 = refused: {msg[:60]})", 0 if "calibrate" in msg else 1, 0)
    eng.send({"op": "info"})
    check("engine serves after the refusal (0 = yes)", 0 if eng.recv()[0]["op"] == "info" else 1, 0)
    eng.send({"op": "quit"})

    # The planner's rules load as a named plan of exactly those layers, and a job runs under it.
    eng, loaded = load(exe, model, "bf16", {"cal3": rules})
    plans = {p["name"]: p for p in loaded.get("plans", [])}
    n = plans.get("cal3", {}).get("layers", -1)
    check(f"rules of the 3 lowest-error layers load as plan cal3 with {n} fp8 layers (|difference from 3|)",
          abs(n - 3), 0)
    eng.send(*inputs(case, toks, ref, "prepare", plan="cal3"))
    job = eng.recv()[0]["job"]
    step_all(eng, job)
    lat = finish_job(eng, job)[0]
    check("plan cal3 job latents non-finite (count)", int((~np.isfinite(lat)).sum()), 0)
    eng.send({"op": "quit"})

    # An f32 engine has no fp8 path: calibrate is refused, the engine keeps serving.
    eng, _ = load(exe, model, "f32")
    msg = expect_error(eng, *inputs(case, toks, ref, "calibrate"))
    check(f"calibrate on an f32 engine refused (0 = refused: {msg[:60]})", 0 if "bf16 engine" in msg else 1, 0)
    eng.send({"op": "info"})
    check("f32 engine serves after the refusal (0 = yes)", 0 if eng.recv()[0]["op"] == "info" else 1, 0)
    eng.send({"op": "quit"})

    check.finish("bf16")


if __name__ == "__main__":
    main()
