"""Issue 14's acceptance check of the default model, end to end through the CLI, judged by this folder's detector
(independent of the server's TypeScript one): 12 held-out grammar prompts (a seed no test or benchmark uses), each
generated with `npx fluxql generate --prompt ... --size 256x256 --seed i` on the default model (flux-mini when
installed), then judged. Passes when both colors are right for at least 11 of 12 prompts and the shape for 9 of 12.

  python3 tools/train-mini/acceptance.py [--out DIR] [--model DIR]     (numpy only; from the repository root)
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import detector  # noqa: E402
import grammar as gr  # noqa: E402
import pngio  # noqa: E402

HELD_OUT_SEED = 20261206
N = 12


def held_out_prompts():
    """N caption indices into grammar.ALL from a seed of their own."""
    return [int(i) for i in np.random.default_rng(HELD_OUT_SEED).choice(len(gr.ALL), size=N, replace=False)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None, help="folder for the images and acceptance.json (default: a temp folder)")
    ap.add_argument("--model", default=None, help="model folder or id (default: the CLI's default model)")
    a = ap.parse_args()
    out = a.out or tempfile.mkdtemp(prefix="flux-mini-acceptance-")
    os.makedirs(out, exist_ok=True)
    rows, colors_ok, shapes_ok = [], 0, 0
    for k, idx in enumerate(held_out_prompts()):
        prompt = gr.CAPTIONS[idx]
        path = os.path.join(out, f"{k:02d}.png")
        cmd = ["npx", "fluxql", "generate", "--prompt", prompt, "--size", "256x256", "--seed", str(k), "--out", path]
        if a.model:
            cmd += ["--model", a.model]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        judged = detector.judge(pngio.read_png(path), gr.ALL[idx])
        det = detector.detect(pngio.read_png(path))
        colors = bool(judged["bg"] and judged["obj"])
        colors_ok += colors
        shapes_ok += bool(judged["shape"])
        rows.append({"prompt": prompt, "seed": k, "colors": colors, "shape": bool(judged["shape"]),
                     "detected": {x: det[x] for x in ("bg", "obj", "shape")}})
        print(f"{'ok ' if colors and judged['shape'] else 'MISS'} {prompt}  ->  {det['obj']} {det['shape']} on "
              f"{det['bg']}", flush=True)
    passed = colors_ok >= 11 and shapes_ok >= 9
    summary = {"colors_right": colors_ok, "shapes_right": shapes_ok, "of": N, "passed": passed, "prompts": rows}
    with open(os.path.join(out, "acceptance.json"), "w") as f:
        json.dump(summary, f, indent=1)
    print(f"colors right for {colors_ok}/{N} prompts (need 11), shapes {shapes_ok}/{N} (need 9): "
          f"{'PASS' if passed else 'FAIL'}; images in {out}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
