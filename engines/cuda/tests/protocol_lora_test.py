#!/usr/bin/env python3
"""LoRAs over the engine's framed protocol (PROTOCOL.md), the way the server's executor drives them, with the engine
factors prepare-fixtures.ts writes to <fixtures>/lora (the server's own reduction of each fixture LoRA): `lora_load`
(one frame, and over two frames with `more` / `append`), per-job sets in `prepare`'s `loras`, switching sets without
reloading, jobs with different sets interleaved (each replays its own CUDA graph), `lora_unload` while a job that uses
the LoRA is still prepared, unloading restoring the base latents bit for bit, and the typed refusals (`lora_code`).
The numbers against diffusers are the selftest's (transformer case); here the checks are exactness between runs.

usage: protocol_lora_test.py <engine> <fixtures dir> <model dir> [f32|bf16|fp8]
"""
import json
import os
import struct
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from protocol_test import Engine, pipeline_case, read_safetensors  # noqa: E402


def recv_any(eng):
    """The next frame, error frames included (header, payload)."""
    hl, pl = struct.unpack("<II", eng.p.stdout.read(8))
    header = json.loads(eng.p.stdout.read(hl))
    payload = eng.p.stdout.read(pl) if pl else b""
    return header, payload


def call(eng, header, payload=b""):
    eng.send(header, payload)
    h, p = recv_any(eng)
    return h, p


def step_job(eng, job, count=None):
    """Runs `count` steps of a job (default: the rest), reading the progress frames; the `stepped` header."""
    eng.send({"op": "step", "job": job, **({"count": count} if count else {})})
    while True:
        h, _ = recv_any(eng)
        assert h["op"] in ("progress", "stepped"), h
        if h["op"] == "stepped":
            return h


def job_latents(eng, job):
    """A job's current latents, float32."""
    h, p = call(eng, {"op": "latents", "job": job})
    assert h["op"] == "latents", h
    return np.frombuffer(p, dtype=np.float32).copy()


def factors(path):
    """[(layer, a [r, in], b [out, r], bias or None)] of an engine-factor file."""
    t = read_safetensors(path)
    out = []
    for k in sorted(t):
        if k.endswith(".lora_a"):
            layer = k[: -len(".lora_a")]
            out.append((layer, t[k], t[layer + ".lora_b"], t.get(layer + ".lora_bias")))
    return out


def load_frames(name, layers, split=1, norms=None):
    """The lora_load frames of one LoRA, its layers split into `split` frames; a BFL Control LoRA's norm
    replacements (`norms`: [(name, weight)]) go in the last one."""
    chunks = [layers[i::split] for i in range(split)]
    frames = []
    for i, chunk in enumerate(chunks):
        entries, payload = [], b""
        for layer, a, b, bias in chunk:
            e = {"layer": layer, "rank": int(a.shape[0]), "in": int(a.shape[1]), "out": int(b.shape[0])}
            if bias is not None:
                e["bias"] = True
            entries.append(e)
            payload += a.astype(np.float32).tobytes() + b.astype(np.float32).tobytes()
            if bias is not None:
                payload += bias.astype(np.float32).tobytes()
        h = {"op": "lora_load", "name": name, "layers": entries}
        if i == split - 1 and norms:
            h["norms"] = [{"norm": n, "dim": int(w.shape[0])} for n, w in norms]
            for _, w in norms:
                payload += w.astype(np.float32).tobytes()
        if i < split - 1:
            h["more"] = True
        if i > 0:
            h["append"] = True
        frames.append((h, payload))
    return frames


def main():
    exe, fx, model = sys.argv[1:4]
    precision = sys.argv[4] if len(sys.argv) > 4 else "f32"
    lidx = json.load(open(f"{fx}/lora/lora_index.json"))["cases"]
    case, toks, ref = pipeline_case(fx)  # batch 2, 96x128
    B = len(case["prompts"])
    clip = np.array([toks[p]["clip"] for p in case["prompts"]], dtype=np.int32)
    t5 = np.array([toks[p]["t5"] for p in case["prompts"]], dtype=np.int32)
    lat0 = ref["initial_latents_packed"].astype(np.float32)
    results, failed = [], []

    def check(name, ok, value=None):
        results.append({"case": f"protocol lora {name}", "precision": precision, "value": value, "pass": bool(ok)})
        print(json.dumps(results[-1]), flush=True)
        if not ok:
            failed.append(name)

    eng = Engine(exe)
    h, _ = call(eng, {"op": "load", "model": model, "precision": precision, "lora_max_mb": 64})
    assert h["op"] == "loaded", h
    check("load reports the LoRA bound", h.get("lora_max_bytes") == 64 << 20 and h.get("lora_bytes") == 0,
          h.get("lora_max_bytes"))

    def prepare(loras=None):
        hdr = {"op": "prepare", "batch": B, "height": case["height"], "width": case["width"], "t5_len": t5.shape[1],
               "sigmas": ref["sigmas"].tolist(), "guidance": [case["guidance"]] * B, "latents": "payload"}
        if loras is not None:
            hdr["loras"] = loras
        h, _ = call(eng, hdr, clip.tobytes() + t5.tobytes() + lat0.tobytes())
        return h

    def step(job, count=None):
        return step_job(eng, job, count)

    def latents(job):
        return job_latents(eng, job)

    def run(loras=None):
        h = prepare(loras)
        assert h["op"] == "prepared", h
        step(h["job"])
        out = latents(h["job"])
        call(eng, {"op": "release", "job": h["job"]})
        return out, h["ms"]

    def rel(a, b):
        return float(np.linalg.norm(a.astype(np.float64) - b) / np.linalg.norm(b.astype(np.float64)))

    base, _ = run()
    names = [c["name"] for c in lidx]
    fac = {c["name"]: factors(f"{fx}/lora/{c['file']}") for c in lidx}
    # The first LoRA in one frame, the others over two frames each.
    for i, n in enumerate(names):
        frames = load_frames(n, fac[n], 1 if i == 0 else 2)
        for j, (hdr, payload) in enumerate(frames):
            h, _ = call(eng, hdr, payload)
            want = "lora_loaded" if j == len(frames) - 1 else "lora_staged"
            check(f"lora_load {n} frame {j + 1}/{len(frames)} answers {want}", h["op"] == want, h.get("ms"))
    info, _ = call(eng, {"op": "info"})
    check("info lists the loaded LoRAs and their memory", sorted(info.get("loras", [])) == sorted(names)
          and info.get("lora_bytes", 0) > 0, info.get("lora_bytes"))

    a, b = names[0], names[-1]
    la, ms_first = run([{"name": a, "strength": 1.0}])
    check("a LoRA changes the latents", rel(la, base) > 1e-3, rel(la, base))
    la2, ms_cached = run([{"name": a, "strength": 1.0}])
    check("the same set again gives the same latents (bit for bit)", np.array_equal(la, la2), ms_cached)
    lb, _ = run([{"name": b, "strength": 0.7}])
    check("another set gives other latents", rel(lb, la) > 1e-3, rel(lb, la))
    lab, _ = run([{"name": a, "strength": 1.0}, {"name": b, "strength": 0.7}])
    check("a set of two differs from each", rel(lab, la) > 1e-4 and rel(lab, lb) > 1e-4, rel(lab, la))
    half, _ = run([{"name": a, "strength": 0.5}])
    check("strength changes the result", rel(half, la) > 1e-4 and rel(half, base) > 1e-4, rel(half, la))
    print(f"[lora] prepare ms with a new set {ms_first:.1f}, cached set {ms_cached:.1f}", file=sys.stderr)

    # Jobs of different sets interleaved step by step: each replays its own graph with its own adapters.
    x = prepare([{"name": a, "strength": 1.0}])["job"]
    y = prepare()["job"]
    z = prepare([{"name": b, "strength": 0.7}])["job"]
    steps = len(ref["sigmas"]) - 1
    for _ in range(steps):
        for j in (x, y, z):
            step(j, 1)
    check("interleaved jobs: LoRA job as alone (bit for bit)", np.array_equal(latents(x), la))
    check("interleaved jobs: base job as alone (bit for bit)", np.array_equal(latents(y), base))
    check("interleaved jobs: other LoRA job as alone (bit for bit)", np.array_equal(latents(z), lb))
    for j in (x, y, z):
        call(eng, {"op": "release", "job": j})

    # Unloading a LoRA a prepared job uses: the job keeps its set.
    keep = prepare([{"name": a, "strength": 1.0}])["job"]
    h, _ = call(eng, {"op": "lora_unload", "name": a})
    check("lora_unload answers lora_unloaded", h["op"] == "lora_unloaded" and h["unloaded"] is True)
    step(keep)
    check("a job prepared before the unload still runs its set (bit for bit)", np.array_equal(latents(keep), la))
    call(eng, {"op": "release", "job": keep})
    h = prepare([{"name": a, "strength": 1.0}])
    check("prepare naming an unloaded LoRA: not_found", h["op"] == "error" and h.get("lora_code") == "not_found",
          h.get("message"))
    for n in names[1:]:
        call(eng, {"op": "lora_unload", "name": n})
    after, _ = run()
    check("after unloading: base latents bit for bit", np.array_equal(after, base), float(np.abs(after - base).max()))
    info, _ = call(eng, {"op": "info"})
    check("no LoRA memory held after unload and release", info.get("lora_bytes") == 0, info.get("lora_bytes"))

    # Typed refusals: nothing loaded by any of them.
    layer, fa, fb, fbias = fac[a][0]

    def refused(code, layers):
        hdr, payload = load_frames("bad", layers)[0]
        h, _ = call(eng, hdr, payload)
        check(f"refusal {code}", h["op"] == "error" and h.get("lora_code") == code and not h["fatal"], h.get("message"))

    refused("unmatched_keys", [("no_such_layer", fa, fb, None)])
    refused("shape_mismatch", [(layer, np.zeros((fa.shape[0], fa.shape[1] + 1), np.float32), fb, None)])
    refused("bad_rank", [(layer, np.zeros((257, fa.shape[1]), np.float32), np.zeros((fb.shape[0], 257), np.float32),
                          None)])
    nan = fa.copy()
    nan[0, 0] = np.nan
    refused("non_finite", [(layer, nan, fb, None)])
    h, _ = call(eng, {"op": "load", "model": model, "precision": precision, "lora_max_mb": 0})
    refused("unsupported", fac[a])
    info, _ = call(eng, {"op": "info"})
    check("the engine keeps serving, nothing loaded", info["op"] == "info" and info.get("loras") == [])
    call(eng, {"op": "quit"})
    print(f"protocol lora ({precision}): {len(results) - len(failed)} of {len(results)} passed", flush=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
