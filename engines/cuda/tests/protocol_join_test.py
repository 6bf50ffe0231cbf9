#!/usr/bin/env python3
"""Joining a running engine batch (`join`, PROTOCOL.md) over the framed protocol, with flux-tiny and the batch-2
pipeline fixture (96x128): sample A is prepared alone and runs 2 steps, sample B joins the same job (one job on the
engine, per-sample progress), both run on; A finishes first and stays frozen for one more step (B's), A is read and
decoded alone (`samples`) and released alone (the job compacts to B), B runs to its end. A's and B's final latents
must match each sample run alone from the start (f32: bit-identical or within 1e-6 rel; bf16: 2e-2, a batch of 2
may pick other GEMM kernels than a batch of 1), A's decoded image A's solo image. Refusals (a joiner of another
size, a joiner into a true-CFG job, unknown sample ids) answer non-fatal `error` frames and the engine keeps serving.

usage: protocol_join_test.py <engine> <fixtures dir> <model dir> [f32|bf16]
"""
import json
import os
import struct
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from protocol_test import Checks, Engine, pipeline_case  # noqa: E402
from protocol_test import step_all as step  # noqa: E402


def rel(a, b):
    return float(np.linalg.norm(a.astype(np.float64) - b) / max(np.linalg.norm(b.astype(np.float64)), 1e-30))


def recv_raw(eng):
    """One frame, error frames included (Engine.recv raises on them)."""
    hl, pl = struct.unpack("<II", eng.p.stdout.read(8))
    header = json.loads(eng.p.stdout.read(hl))
    return header, eng.p.stdout.read(pl) if pl else b""


def expect_refusal(eng, header, payload=b""):
    """The request answers a non-fatal error; returns its message."""
    eng.send(header, payload)
    h, _ = recv_raw(eng)
    assert h["op"] == "error", f"{header['op']} did not fail: {h}"
    assert h["fatal"] is False, h
    return h["message"]


def sample_header(op, case, t5_len, sigmas, guidance, **extra):
    return dict({"op": op, "batch": 1, "height": case["height"], "width": case["width"], "t5_len": t5_len,
                 "sigmas": [float(s) for s in sigmas], "guidance": [guidance], "latents": "payload"}, **extra)


def latents(eng, job, samples=None):
    eng.send({"op": "latents", "job": job} if samples is None else {"op": "latents", "job": job, "samples": samples})
    h, payload = eng.recv()
    return h, np.frombuffer(payload, dtype=np.float32).reshape(h["shape"])


def decode(eng, job, samples=None):
    eng.send({"op": "decode", "job": job} if samples is None else {"op": "decode", "job": job, "samples": samples})
    h, payload = eng.recv()
    return h, np.frombuffer(payload, dtype=np.uint8).reshape(h["batch"], h["height"], h["width"], 3)


def main():
    exe, fx, model = sys.argv[1:4]
    precision = sys.argv[4] if len(sys.argv) > 4 else "f32"
    case, toks, ref = pipeline_case(fx)  # batch 2, 96x128, 6 steps
    sigmas, start = ref["sigmas"], ref["initial_latents_packed"].astype(np.float32)
    steps = len(sigmas) - 1
    assert steps >= 4, steps
    clip = [np.array([toks[p]["clip"]], dtype=np.int32) for p in case["prompts"]]
    t5 = [np.array([toks[p]["t5"]], dtype=np.int32) for p in case["prompts"]]
    T = t5[0].shape[1]

    def payload(i):
        return clip[i].tobytes() + t5[i].tobytes() + start[i : i + 1].tobytes()

    eng = Engine(exe)
    eng.send({"op": "load", "model": model, "precision": precision})
    assert eng.recv()[0]["op"] == "loaded"
    check = Checks("join", precision)

    # Each sample alone from the start: the references.
    solo_lat, solo_img = [], []
    for i in range(2):
        eng.send(sample_header("prepare", case, T, sigmas, case["guidance"]), payload(i))
        job = eng.recv()[0]["job"]
        step(eng, job)
        solo_lat.append(latents(eng, job)[1])
        solo_img.append(decode(eng, job)[1])
        eng.send({"op": "release", "job": job})
        assert eng.recv()[0]["op"] == "released"

    lat_tol = 1e-6 if precision == "f32" else 2e-2
    eng.send(sample_header("prepare", case, T, sigmas, case["guidance"]), payload(0))
    prepared = eng.recv()[0]
    job = prepared["job"]
    check("prepared reports sample ids [0] (0 = yes)", 0 if prepared.get("samples") == [0] else 1, 0)
    step(eng, job, 2)
    eng.send(sample_header("join", case, T, sigmas, case["guidance"], job=job), payload(1))
    joined = eng.recv()[0]
    check("joined answers op joined, batch 2, added [1] (0 = yes)",
          0 if (joined["op"], joined["batch"], joined["added"]) == ("joined", 2, [1]) else 1, 0)
    check("joined: per-sample steps [2, 0] (0 = yes)", 0 if joined["sample_step"] == [2, 0] else 1, 0)
    eng.send({"op": "info"})
    check("engine jobs after the join (one job)", abs(eng.recv()[0]["jobs"] - 1), 0)

    # A has steps - 2 left, B steps: A ends first.
    progress, stepped = step(eng, job, steps - 2)
    want = [[2 + n, n] for n in range(1, steps - 1)]
    check("progress sample_step while both run (0 = as expected)",
          0 if [p["sample_step"] for p in progress] == want else 1, 0)
    check("progress samples / sample_steps (0 = [0, 1] / [N, N])",
          0 if all(p["samples"] == [0, 1] and p["sample_steps"] == [steps, steps] for p in progress) else 1, 0)
    _, a_done = latents(eng, job, [0])
    check("A joined vs A alone: final latents (rel)", rel(a_done[0], solo_lat[0][0]), lat_tol)
    check("A joined vs A alone: latents differing (count, informational limit)",
          int((a_done[0] != solo_lat[0][0]).sum()), a_done.size)
    # One more step: B advances, A (done) stays frozen.
    progress, stepped = step(eng, job, 1)
    check("frozen step: sample_step [N, N - 1] (0 = yes)",
          0 if stepped["sample_step"] == [steps, steps - 1] else 1, 0)
    _, a_after = latents(eng, job, [0])
    check("A frozen while B steps: latents changed (count)", int((a_after != a_done).sum()), 0)
    h, a_img = decode(eng, job, [0])
    check("decode samples [0]: batch 1 (0 = yes)", 0 if (h["batch"], h["samples"]) == (1, [0]) else 1, 0)
    check("A joined vs A alone: image (max abs of 255)",
          int(np.abs(a_img.astype(np.int32) - solo_img[0].astype(np.int32)).max()), 1 if precision == "f32" else 2)
    eng.send({"op": "release", "job": job, "samples": [0]})
    released = eng.recv()[0]
    check("release samples [0]: remaining [1] (0 = yes)",
          0 if (released["samples"], released["remaining"]) == ([0], [1]) else 1, 0)
    msg = expect_refusal(eng, {"op": "latents", "job": job, "samples": [0]})
    check(f"released sample refused (0 = refused: {msg[:50]})", 0, 0)
    progress, stepped = step(eng, job)
    check("B's last step after the release: steps run", len(progress), 1)
    check("B finished (sample_step [N]) (0 = yes)", 0 if stepped["sample_step"] == [steps] else 1, 0)
    h, b_lat = latents(eng, job)
    check("B joined vs B alone: final latents (rel)", rel(b_lat[0], solo_lat[1][0]), lat_tol)
    check("B: latents answer names sample [1] (0 = yes)", 0 if h["samples"] == [1] else 1, 0)
    _, b_img = decode(eng, job)
    check("B joined vs B alone: image (max abs of 255)",
          int(np.abs(b_img.astype(np.int32) - solo_img[1].astype(np.int32)).max()), 1 if precision == "f32" else 2)
    eng.send({"op": "release", "job": job})
    assert eng.recv()[0]["op"] == "released"

    # Refusals: non-fatal, the job unchanged.
    eng.send(sample_header("prepare", case, T, sigmas, case["guidance"]), payload(0))
    job = eng.recv()[0]["job"]
    small = dict(sample_header("join", case, T, sigmas, case["guidance"], job=job), height=64, width=64)
    small_lat = np.zeros((1, 16, 64), dtype=np.float32)
    msg = expect_refusal(eng, small, clip[1].tobytes() + t5[1].tobytes() + small_lat.tobytes())
    check(f"join of another size refused with 'join:' (0 = yes: {msg[:60]})", 0 if msg.startswith("join:") else 1, 0)
    msg = expect_refusal(eng, {"op": "latents", "job": job, "samples": [7]})
    check(f"unknown sample id refused (0 = refused: {msg[:40]})", 0, 0)
    progress, _ = step(eng, job)
    check("job still runs after the refusals: steps", len(progress), steps)
    eng.send({"op": "release", "job": job})
    assert eng.recv()[0]["op"] == "released"
    cfg = sample_header("prepare", case, T, sigmas, case["guidance"], true_cfg=[2.0])
    eng.send(cfg, clip[0].tobytes() + clip[1].tobytes() + t5[0].tobytes() + t5[1].tobytes() + start[0:1].tobytes())
    job = eng.recv()[0]["job"]
    msg = expect_refusal(eng, sample_header("join", case, T, sigmas, case["guidance"], job=job), payload(1))
    check(f"join into a true-CFG job refused with 'join:' (0 = yes: {msg[:60]})", 0 if msg.startswith("join:") else 1,
          0)
    eng.send({"op": "release", "job": job})
    assert eng.recv()[0]["op"] == "released"
    eng.send({"op": "info"})
    check("engine jobs at the end", eng.recv()[0]["jobs"], 0)

    eng.quit()
    check.finish(precision)


if __name__ == "__main__":
    main()
