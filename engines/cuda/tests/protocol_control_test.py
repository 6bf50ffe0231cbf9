#!/usr/bin/env python3
"""BFL Control LoRAs over the engine's framed protocol (PROTOCOL.md), as the server's executor drives them, with the
case prepare-fixtures.ts writes to <fixtures>/lora/control (control-fixture.ts): `lora_load` with the widened
x_embedder factor, up-biases and replacement norms (one frame, and over two frames), `encode` of the control image
with the request generator's normals (against the ONNX pipeline's control latents), a control job (`prepare` with
`control` latents) whose final latents are checked against the ONNX pipeline's for the same request (which matches
diffusers' FluxControlPipeline), replay exactness, a control job interleaved with a base job (the norm replacements
and the widened input never leak into the other job's graph), the typed refusals (control latents without a control
set and the reverse: bad_argument; two members replacing a norm differently: unsupported), and unloading restoring
the base latents bit for bit.

usage: protocol_control_test.py <engine> <fixtures dir> <model dir> [f32|bf16]
"""
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from protocol_lora_test import call, factors, job_latents, load_frames, step_job  # noqa: E402
from protocol_test import Engine, read_safetensors  # noqa: E402


def control_frames(name, layers, norms, split=1):
    """The lora_load frames of a control LoRA: layers split over `split` frames, the norms in the last one."""
    return load_frames(name, layers, split, norms)


def main():
    exe, fx, model = sys.argv[1:4]
    precision = sys.argv[4] if len(sys.argv) > 4 else "f32"
    d = f"{fx}/lora/control"
    case = json.load(open(f"{d}/control_case.json"))
    ref = read_safetensors(f"{d}/control_case.safetensors")
    fac = factors(f"{d}/{case['lora']}")
    t = read_safetensors(f"{d}/{case['lora']}")
    norms = [(k[: -len(".norm")], t[k]) for k in sorted(t) if k.endswith(".norm")]
    H, W = case["height"], case["width"]
    clip = np.array(case["clip_ids"], dtype=np.int32)
    t5 = np.array(case["t5_ids"], dtype=np.int32)
    lat0 = ref["latents"].astype(np.float32)
    sigmas = ref["sigmas"].tolist()
    results, failed = [], []
    # f32: ORT's f32 GEMMs against cuBLAS f32 (TF32 off) over 3 steps; bf16: the bf16 path's usual error.
    tol = 1e-3 if precision == "f32" else 5e-2

    def check(name, ok, value=None):
        results.append({"case": f"protocol control {name}", "precision": precision, "value": value, "pass": bool(ok)})
        print(json.dumps(results[-1]), flush=True)
        if not ok:
            failed.append(name)

    def rel(a, b):
        return float(np.linalg.norm(a.astype(np.float64) - b) / np.linalg.norm(b.astype(np.float64)))

    eng = Engine(exe)
    h, _ = call(eng, {"op": "load", "model": model, "precision": precision})
    assert h["op"] == "loaded", h

    def prepare(loras=None, control=None):
        hdr = {"op": "prepare", "batch": 1, "height": H, "width": W, "t5_len": case["t5_len"], "sigmas": sigmas,
               "guidance": [case["guidance"]], "latents": "payload"}
        payload = clip.tobytes() + t5.tobytes() + lat0.tobytes()
        if loras is not None:
            hdr["loras"] = loras
        if control is not None:
            hdr["control"] = True
            payload += control.astype(np.float32).tobytes()
        h, _ = call(eng, hdr, payload)
        return h

    def step(job, count=None):
        return step_job(eng, job, count)

    def latents(job):
        return job_latents(eng, job)

    def run(loras=None, control=None):
        h = prepare(loras, control)
        assert h["op"] == "prepared", h
        step(h["job"])
        out = latents(h["job"])
        call(eng, {"op": "release", "job": h["job"]})
        return out

    base = run()

    # The control image through the engine's encoder with the generator's normals, as the server sends it.
    h, p = call(eng, {"op": "encode", "batch": 1, "height": H, "width": W, "output": "latents", "noise": "payload"},
                ref["pixels"].astype(np.float32).tobytes() + ref["eps"].astype(np.float32).tobytes())
    assert h["op"] == "encoded", h
    ctl = np.frombuffer(p, dtype=np.float32).copy()
    want_ctl = ref["control_latents"].astype(np.float32).reshape(-1)
    check("encode: control latents vs the ONNX pipeline's (rel err)", rel(ctl, want_ctl) <= tol, rel(ctl, want_ctl))

    for j, (hdr, payload) in enumerate(control_frames("canny", fac, norms, 2)):
        h, _ = call(eng, hdr, payload)
        want = "lora_loaded" if j == 1 else "lora_staged"
        check(f"lora_load control frame {j + 1}/2 answers {want}", h["op"] == want, h.get("message"))
    check("lora_loaded counts the norms", h.get("norms") == len(norms) and len(norms) > 0, h.get("norms"))
    canny = [{"name": "canny", "strength": case["strength"]}]

    out = run(canny, ctl)
    want = ref["expected"].astype(np.float32).reshape(-1)
    check("control generation vs the ONNX pipeline (latents rel err)", rel(out, want) <= tol, rel(out, want))
    check("the control image matters (vs base, rel change)", rel(out, base) > 1e-2, rel(out, base))
    again = run(canny, ctl)
    check("the same control job again (bit for bit)", np.array_equal(out, again))
    # With the ONNX pipeline's own control latents (isolates the transformer from the encoder).
    onnx_ctl = run(canny, want_ctl)
    check("control generation with ONNX's control latents (rel err)", rel(onnx_ctl, want) <= tol, rel(onnx_ctl, want))

    # A control job and a base job interleaved step by step: each replays its own graph.
    x = prepare(canny, ctl)["job"]
    y = prepare()["job"]
    for _ in range(len(sigmas) - 1):
        for j in (x, y):
            step(j, 1)
    check("interleaved: control job as alone (bit for bit)", np.array_equal(latents(x), out))
    check("interleaved: base job as alone (bit for bit)", np.array_equal(latents(y), base))
    for j in (x, y):
        call(eng, {"op": "release", "job": j})

    # Refusals, typed; the engine keeps serving.
    h = prepare(canny)
    check("a control set without control latents: bad_argument",
          h["op"] == "error" and h.get("lora_code") == "bad_argument" and not h["fatal"], h.get("message"))
    h = prepare(None, ctl)
    check("control latents without a control set: bad_argument",
          h["op"] == "error" and h.get("lora_code") == "bad_argument" and not h["fatal"], h.get("message"))
    other = [(n, w * 0.5 if i == 0 else w) for i, (n, w) in enumerate(norms)]
    for hdr, payload in control_frames("canny2", fac, other):
        call(eng, hdr, payload)
    h = prepare(canny + [{"name": "canny2", "strength": 1.0}], ctl)
    check("two members replacing a norm differently: unsupported",
          h["op"] == "error" and h.get("lora_code") == "unsupported" and h.get("keys") == [norms[0][0]],
          h.get("message"))
    bad = [(n, np.zeros(w.shape[0] + 1, np.float32)) for n, w in norms[:1]]
    h, _ = call(eng, *control_frames("bad", fac, bad)[0])
    check("a norm of the wrong width: shape_mismatch", h["op"] == "error" and h.get("lora_code") == "shape_mismatch",
          h.get("message"))
    h, _ = call(eng, *control_frames("bad", fac, [("no_such.norm_q", norms[0][1])])[0])
    check("an unknown norm: unmatched_keys", h["op"] == "error" and h.get("lora_code") == "unmatched_keys",
          h.get("message"))

    for n in ("canny", "canny2"):
        call(eng, {"op": "lora_unload", "name": n})
    after = run()
    check("after unloading: base latents bit for bit", np.array_equal(after, base), float(np.abs(after - base).max()))
    info, _ = call(eng, {"op": "info"})
    check("no LoRA memory held after unload and release", info.get("lora_bytes") == 0, info.get("lora_bytes"))
    call(eng, {"op": "quit"})
    print(f"protocol control ({precision}): {len(results) - len(failed)} of {len(results)} passed", flush=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
