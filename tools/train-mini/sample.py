"""Samples an exported model folder as the FLUX pipeline does and judges the images with detector.py.

  python3 tools/train-mini/sample.py --model models/flux-mini --out-dir DIR [--n 96 --size 256 --steps 28]

Euler flow sampling with FLUX's dynamic-shift schedule (docs/FLUX_SPEC.md §4), starting noise
torch.randn([B, 16, h, w], generator=CPU Generator.manual_seed(seed)) drawn per image (batch 1 semantics: image i
uses seed base_seed + i, like the CLI's --seed), guidance 3.5, T5 padded to data.T5_LEN (32). Reads the weights exactly as
shipped (bf16 files), so the accuracy printed is the accuracy of the exported artifact.
Writes DIR/samples.png (a grid) and DIR/eval.json (per-attribute detector accuracy and the prompts).
"""
import argparse
import contextlib
import json
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import data  # noqa: E402
import detector  # noqa: E402
import flux_model as fm  # noqa: E402
import grammar as gr  # noqa: E402
import pngio  # noqa: E402
from verify_reference import load_weights  # noqa: E402


def load_model(model_dir, device):
    def comp(sub, cls, stem):
        cfg = json.load(open(os.path.join(model_dir, sub, "config.json")))
        m = cls(cfg)
        fm.load_into(m, load_weights(os.path.join(model_dir, sub), stem))
        return m.to(device).eval()

    return (comp("text_encoder", fm.CLIPTextModel, "model"), comp("text_encoder_2", fm.T5EncoderModel, "model"),
            comp("transformer", fm.FluxTransformer2DModel, "diffusion_pytorch_model"),
            comp("vae", fm.AutoencoderKL, "diffusion_pytorch_model"))


def _amp(on):
    return torch.autocast("cuda", dtype=torch.bfloat16) if on else contextlib.nullcontext()


def eval_prompts(n, seed=1234):
    """A fixed, seeded choice of n grammar captions (indices into grammar.ALL)."""
    g = torch.Generator().manual_seed(seed)
    return [int(i) for i in torch.randperm(len(gr.ALL), generator=g)[:n]]


@torch.no_grad()
def generate(models, cap_idx, size, steps=28, guidance=3.5, base_seed=0, device="cpu", batch=16, amp=False):
    """uint8 [N, H, W, 3] for grammar caption indices; image i starts from seed base_seed + i."""
    clip, t5, dit, vae = models
    clip_ids, t5_ids = data.load_tokens()
    h = w = size // 8
    L = (h // 2) * (w // 2)
    sigmas, _ = fm.flux_sigmas(steps, L)
    rope = fm.rope_tables(torch.cat([torch.zeros(data.T5_LEN, 3, device=device), fm.img_ids(h, w, device)], 0), dit.axes)
    vc = vae.config
    out = []
    for s in range(0, len(cap_idx), batch):
        ids = torch.as_tensor(cap_idx[s: s + batch])
        b = len(ids)
        pooled = clip(clip_ids[ids].to(device)).float()
        emb = t5(t5_ids[ids].to(device)).float()
        noise = torch.cat([torch.randn(1, 16, h, w, generator=torch.Generator().manual_seed(base_seed + s + i))
                           for i in range(b)])
        x = fm.pack(noise).to(device)
        g = torch.full((b,), guidance, device=device)
        for i in range(steps):
            t = torch.full((b,), float(sigmas[i]), device=device)
            with _amp(amp):
                v = dit(x, emb, pooled, t, g, None, None, rope=rope)
            x = x + (float(sigmas[i + 1]) - float(sigmas[i])) * v.float()
        z = fm.unpack(x, h, w) / vc["scaling_factor"] + vc["shift_factor"]
        with _amp(amp):
            img = vae.decode(z)
        out.append(data.to_uint8(img.float()))
    return np.concatenate(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--out-dir", required=True)
    ap.add_argument("--n", type=int, default=96)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--steps", type=int, default=28)
    ap.add_argument("--guidance", type=float, default=3.5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default=None)
    ap.add_argument("--extra-sizes", default="", help="comma list of other square sizes to sample (8 images each)")
    a = ap.parse_args()
    dev = torch.device(a.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    os.makedirs(a.out_dir, exist_ok=True)
    models = load_model(a.model, dev)
    caps = eval_prompts(a.n)
    t0 = time.time()
    imgs = generate(models, caps, a.size, a.steps, a.guidance, a.seed, dev)
    secs = time.time() - t0
    acc = detector.accuracy(imgs, [gr.ALL[i] for i in caps])
    pngio.write_png(os.path.join(a.out_dir, "samples.png"), pngio.grid(imgs[:48], 8))
    result = {"model": a.model, "size": a.size, "steps": a.steps, "guidance": a.guidance, "n": len(caps),
              "accuracy": acc, "seconds": round(secs, 2), "device": str(dev),
              "per_prompt": [{"prompt": gr.CAPTIONS[c], "seed": a.seed + i, "detected": detector.detect(imgs[i])}
                             for i, c in enumerate(caps)]}
    for side in [int(x) for x in a.extra_sizes.split(",") if x]:
        more = generate(models, caps[:8], side, a.steps, a.guidance, a.seed, dev)
        result[f"accuracy_{side}"] = detector.accuracy(more, [gr.ALL[i] for i in caps[:8]])
        pngio.write_png(os.path.join(a.out_dir, f"samples_{side}.png"), pngio.grid(more, 8))
    with open(os.path.join(a.out_dir, "eval.json"), "w") as f:
        json.dump(result, f, indent=1)
    print(f"[eval] {len(caps)} prompts at {a.size}x{a.size}, {a.steps} steps, {secs:.1f}s on {dev}: " +
          ", ".join(f"{k} {v:.3f}" for k, v in acc.items()), flush=True)
    for k in result:
        if k.startswith("accuracy_"):
            print(f"[eval] {k}: {result[k]}", flush=True)


if __name__ == "__main__":
    main()
