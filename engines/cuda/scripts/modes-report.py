#!/usr/bin/env python3
"""Merges the parts of the CUDA modes benchmark (device-modes.sh a, b: modes-<run>.json + clocks-<run>.csv) into one
result: <prefix>.json + <prefix>.md (bench/results/cuda-modes-h100). Refuses parts from different cards, drivers,
sizes, step counts or forced patterns: rows from two machines are not one table.
  python3 engines/cuda/scripts/modes-report.py <dir with modes-*.json> bench/results/cuda-modes-h100 [quality.json]
Quality columns come from the CUDA engine's flux-mini quality run (default
bench/results/cuda-quality-flux-mini-h100.json, cuda-quality-report.ts): a row gets the quality of the run with the
same engine plan and, for a forced cached-step pattern, the lowest threshold whose most common pattern it is (else,
marked "~", the run of that plan with as many full steps under another pattern).
Optional <dir>/labels.json, {"<run>:<mode>": "<label>"}: the table names of rows whose configuration a later part
made the mode's (e.g. a part's "S2" row becomes "S", the earlier S row "S@0.2"); the row keeps its run's name as
"run_mode". LoRA rows take "lora:<run>:<mode>" labels the same way, and "quality:<run>:<mode>" names the quality row
(by its mode) of a timing row whose step is not its plan's alone (XL's bf16 branch outputs since session 18).
A part of another iteration count than most keeps its rows, its run cell saying how many iterations; a part of fewer
than 3 iterations gives its LoRA rows only (one or two requests are not a mean)."""
import csv
import glob
import json
import os
import statistics
import sys

MODE_ORDER = ["original", "XL", "L", "M", "S", "S+cache"]


def mode_rank(name):
    """Rows in mode order, a label's variants ("S@0.2 ...", "original, ...") after their mode's rows; rows of other
    names after them."""
    base = name.replace(",", " ").replace("@", " ").split()[0]
    if name in MODE_ORDER:
        return 2 * MODE_ORDER.index(name)
    return 2 * MODE_ORDER.index(base) + 1 if base in MODE_ORDER else 2 * len(MODE_ORDER)


def clocks(path):
    """Median / min SM clock (MHz), mean power (W), max temperature over the nvidia-smi samples of one run."""
    sm, power, temp = [], [], []
    if os.path.exists(path):
        with open(path) as f:
            for row in csv.reader(f):
                try:
                    sm.append(float(row[1]))
                    power.append(float(row[3]))
                    temp.append(float(row[4]))
                except (IndexError, ValueError):
                    continue
    if not sm:
        return None
    return {"samples": len(sm), "sm_mhz_median": statistics.median(sm), "sm_mhz_min": min(sm),
            "power_w_mean": round(statistics.mean(power), 1), "temp_c_max": max(temp)}


def qcols(q):
    """The three quality cells of a row (PSNR capped at 100 dB for the reference itself)."""
    if not q:
        return "not measured | - | -"
    return f"{q['psnr_db']:.1f} ({q['source']}) | {q['ssim']:.4f} | {q['worst_attribute_points']:+.1f}"


def matched_quality(row, qrows):
    """The flux-mini quality row matching a timing row (plan, and the forced pattern or none) and whether it matched
    only by its number of full steps; (None, False) when none does."""
    plan = row["plan"]["name"]
    want = None if plan in ("base", "bf16") else plan
    pat = row.get("cache_pattern") or None
    same = [q for q in qrows if q["plan"] == want and (q.get("threshold") is None) == (pat is None)]
    cands = [q for q in same if pat is None or q.get("pattern") == pat]
    near = False
    if not cands and pat:
        # The pattern a quality run of this plan gave with the same number of full steps (the timed pattern came
        # from another plan's run): the quality of that schedule length, marked as such.
        cands = [q for q in same if round(q.get("fullStepsMean") or 0) == pat.count("F")]
        near = True
    cands.sort(key=lambda q: (q.get("threshold") or 0, q.get("maxConsecutive") or 1))
    return (cands[0], near) if cands else (None, False)


def quality_of(row, qrows, named=None):
    """The quality cells of a timing row: its matched quality row (matched_quality), or with `named` the quality row
    of that mode instead (labels.json "quality:<run>:<mode>"); None when there is none."""
    if named:
        q, near = next((x for x in qrows if x["mode"] == named), None), False
    else:
        q, near = matched_quality(row, qrows)
    if not q:
        return None
    orig = next((x for x in qrows if x["mode"] == "original"), None)
    worst = min((q["accuracy"][k] - orig["accuracy"][k]) * 100 for k in q["accuracy"]) if orig else None
    return {"source": ("~" if near else "") + q["mode"], "threshold": q.get("threshold"), "psnr_db": q["psnr"], "ssim": q["ssim"],
            "accuracy": q["accuracy"], "worst_attribute_points": worst, "full_steps_mean": q.get("fullStepsMean")}


def main(src, prefix, quality_path=None):
    parts = sorted(glob.glob(os.path.join(src, "modes-*.json")))
    if not parts:
        sys.exit(f"no modes-*.json under {src}")
    runs, rows, lora = [], [], []
    lpath = os.path.join(src, "labels.json")
    labels = json.load(open(lpath)) if os.path.exists(lpath) else {}
    for p in parts:
        with open(p) as f:
            d = json.load(f)
        run = os.path.basename(p)[len("modes-"):-len(".json")]
        runs.append({"run": run, "device": d["device"], "card": d["card"], "load_ms": d["load_ms"],
                     "clocks": clocks(os.path.join(src, f"clocks-{run}.csv")), "d": d})
        rows += [dict(r, run=run, mode=labels.get(f"{run}:{r['mode']}", r["mode"]), run_mode=r["mode"],
                      iters=d["iters"]) for r in d["rows"]]
        lora += [dict(r, run=run, mode=labels.get(f"lora:{run}:{r['mode']}", r["mode"]), run_mode=r["mode"])
                 for r in d["lora_rows"]]
    # The header (method, iterations) from a part of the most common iteration count.
    ref_iters = statistics.mode(r["d"]["iters"] for r in runs)
    runs.sort(key=lambda r: r["d"]["iters"] != ref_iters)
    first = runs[0]["d"]
    rows = [x for x in rows if x["iters"] >= 3]
    # The S+cache pattern must agree only between parts that ran S+cache rows (a part without them, such as b,
    # records the PATTERN it was given but never used it).
    cached = [r for r in runs if any(x["mode"] == "S+cache" for x in r["d"]["rows"])]
    for r in runs[1:]:
        for k in ("device", "card", "width", "height", "steps"):
            if r["d"][k] != first[k]:
                sys.exit(f"part {r['run']}: {k} {r['d'][k]!r} differs from {runs[0]['run']}'s {first[k]!r}")
    for r in cached[1:]:
        if r["d"]["cache_pattern"] != cached[0]["d"]["cache_pattern"]:
            sys.exit(f"part {r['run']}: cache_pattern {r['d']['cache_pattern']!r} differs from {cached[0]['run']}'s")
    rows.sort(key=lambda r: (mode_rank(r["mode"]), r["mode"], r["batch"], r["run"]))
    quality_path = quality_path or os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..",
                                                "bench", "results", "cuda-quality-flux-mini-h100.json")
    qrun = json.load(open(quality_path)) if os.path.exists(quality_path) else None
    for r in rows:
        r["quality"] = quality_of(r, qrun["rows"], labels.get(f"quality:{r['run']}:{r['run_mode']}")) if qrun else None
    lora.sort(key=lambda r: (mode_rank(r["mode"]), r["mode"], r["lora_rank"], r["run"]))
    out = {k: first[k] for k in ("device", "card", "cuda_driver_api", "cuda_runtime", "engine", "weights",
                                 "weights_gb", "plan_fp8_gb", "width", "height", "steps", "iters", "cache_pattern",
                                 "cache_pattern_source", "method", "unavailable_modes")}
    out["iters"] = ref_iters
    out["runs"] = [{k: r[k] for k in ("run", "load_ms", "clocks")} for r in runs]
    out["rows"] = rows
    out["lora_rows"] = lora
    with open(prefix + ".json", "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")
    md = [f"# fluxql CUDA engine modes on {first['device']}", "", f"Card (nvidia-smi): {first['card']}", "",
          first["method"], "", "| mode | precision | batch | mean s | std s | s/image | step ms | full / cached steps | "
          "pattern | plan (fp8 layers) | floor s (same run) | run | flux-mini PSNR dB | SSIM | worst attribute (points) |",
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    def run_cell(r):
        return r["run"] if r["iters"] == ref_iters else f"{r['run']} ({r['iters']} iters)"

    for r in rows:
        md.append(f"| {r['mode']} | {r['precision']} | {r['batch']} | {r['mean_s']:.3f} | {r['std_s']:.3f} | "
                  f"{r['s_per_image']:.3f} | {r['step_ms']:.2f} | {r['full_steps']} / {r['cached_steps']} | "
                  f"{'`' + r['cache_pattern'] + '`' if r.get('cache_pattern') else '-'} | {r['plan']['name']} ({r['plan']['fp8_layers']}) | {r['floor_s']:.3f} | {run_cell(r)} | {qcols(r['quality'])} |")
    lm = any(r["mode"] in ("L", "M") for r in rows)
    sc = cached[0]["d"] if cached else None
    if qrun:
        md += ["", f"Quality: {qrun['model']} on {qrun['card']} ({os.path.basename(quality_path)}): the CUDA engine's "
               "own original as the reference; a row takes the run with its engine plan and, for a forced pattern, the "
               "lowest step-cache threshold whose most common per-job pattern it is (that run's jobs cache by threshold, "
               "so their full-step counts vary around the pattern's); worst attribute = the largest drop in prompt "
               "accuracy against original, budget 2 points."]
    notes = os.path.join(src, "NOTES.md")
    if os.path.exists(notes):
        md += ["", open(notes).read().strip()]
    md += ["", ("L, M, S: the planned configurations (plan and forced pattern per row). " if lm else
                "L, M: no rows. ") + (f"S+cache pattern `{sc['cache_pattern']}` ({sc['cache_pattern_source']})."
                                      if sc else ""), ""]
    if lora:
        md += ["LoRA on every transformer Linear (random factors, strength 0.8), batch 1; switch = first use of a set "
               "(concatenation + strength folding on the GPU), cached = switching back to it.", "",
               "| mode | rank | base step ms | LoRA step ms | overhead % | switch ms | cached switch ms | run |",
               "|---|---|---|---|---|---|---|---|"]
        for r in lora:
            md.append(f"| {r['mode']} | {r['lora_rank']} | {r['base_step_ms']:.2f} | {r['lora_step_ms']:.2f} | "
                      f"{r['overhead_pct']:+.1f} | {r['switch_ms']:.2f} | {r['switch_cached_ms']:.3f} | {r['run']} |")
        md.append("")
    md.append("Clocks during each run (nvidia-smi every second): " + "; ".join(
        f"{r['run']}: SM median {c['sm_mhz_median']:.0f} MHz (min {c['sm_mhz_min']:.0f}), "
        f"{c['power_w_mean']:.0f} W mean, {c['temp_c_max']:.0f} C max" if (c := r["clocks"]) else f"{r['run']}: none"
        for r in runs) + ".")
    with open(prefix + ".md", "w") as f:
        f.write("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    if len(sys.argv) not in (3, 4):
        sys.exit(__doc__)
    main(*sys.argv[1:])
