"""End-to-end check: the TS pipeline (`npx fluxql generate`) and sample.py give the same image for an exported model.

  python3 tools/train-mini/check_pipeline.py --model DIR [--size 64 --steps 4 --seed 7]

Both start from torch.randn(generator=manual_seed(seed)) (the TS pipeline ports torch's CPU generator), so the
images must agree up to float rounding (max abs difference reported in 8-bit levels; limit 3).
"""
import argparse
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import grammar as gr  # noqa: E402
import sample  # noqa: E402

REPO = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--prompt", default="a red circle on a blue background")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--seed", type=int, default=7)
    a = ap.parse_args()
    cap = gr.CAPTIONS.index(a.prompt)
    tmp = tempfile.mkdtemp()
    png, raw = os.path.join(tmp, "ts.png"), os.path.join(tmp, "ts.rgb")
    subprocess.run(["npx", "fluxql", "generate", "--model", a.model, "--prompt", a.prompt, "--size",
                    f"{a.size}x{a.size}", "--steps", str(a.steps), "--seed", str(a.seed), "--out", png],
                   cwd=REPO, check=True)
    subprocess.run(["node", "-e", "require('sharp')(process.argv[1]).removeAlpha().raw().toBuffer()"
                    ".then(b=>require('fs').writeFileSync(process.argv[2],b))"
                    ".catch(e=>{console.error(e);process.exit(1)})", png, raw], cwd=REPO, check=True)
    ts = np.fromfile(raw, dtype=np.uint8).reshape(a.size, a.size, 3).astype(np.int32)
    torch.set_grad_enabled(False)
    py = sample.generate(sample.load_model(a.model, "cpu"), [cap], a.size, a.steps, 3.5, a.seed)[0].astype(np.int32)
    diff = int(np.abs(ts - py).max())
    print(f"TS pipeline vs torch sample.py: max abs diff {diff}/255, mean {np.abs(ts - py).mean():.3f}")
    sys.exit(0 if diff <= 3 else 1)


if __name__ == "__main__":
    main()
