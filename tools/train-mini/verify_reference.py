"""Checks the torch modules of flux_model.py against the diffusers reference outputs of flux-tiny.

  /usr/bin/python3 tools/train-mini/verify_reference.py [--fixtures /work/shared/fixtures/flux-tiny-reference]

Proves that weights trained with these modules mean the same thing in our TS pipeline: CLIP pooled + T5 embeddings
of the tokenizer cases, one transformer forward (max rel err <= 1e-4), and the VAE decode of every pipeline case's
final latents vs its `image` (max abs diff <= 2/255).
"""
import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import flux_model as fm  # noqa: E402
import st  # noqa: E402


def rel(a, b):
    return float((a - b).norm() / b.norm())


def load_component(model_dir, sub, cls, weight_file):
    cfg = json.load(open(os.path.join(model_dir, sub, "config.json")))
    m = cls(cfg).eval()
    fm.load_into(m, load_weights(os.path.join(model_dir, sub), weight_file))
    return m


def load_weights(folder, stem):
    """Single `<stem>.safetensors` or sharded `<stem>.safetensors.index.json`."""
    single = os.path.join(folder, stem + ".safetensors")
    if os.path.exists(single):
        return st.load(single)
    index = json.load(open(single + ".index.json"))
    out = {}
    for shard in sorted(set(index["weight_map"].values())):
        out.update(st.load(os.path.join(folder, shard)))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--fixtures", default="/work/shared/fixtures/flux-tiny-reference")
    ap.add_argument("--model", default=None, help="model dir (default: <fixtures>/flux-tiny)")
    args = ap.parse_args()
    fx = args.fixtures
    md = args.model or os.path.join(fx, "flux-tiny")
    torch.set_grad_enabled(False)
    ok = True

    def check(name, value, limit):
        nonlocal ok
        good = value <= limit
        ok &= good
        print(f"{'PASS' if good else 'FAIL'} {name}: {value:.3g} (limit {limit:g})")

    clip = load_component(md, "text_encoder", fm.CLIPTextModel, "model")
    t5 = load_component(md, "text_encoder_2", fm.T5EncoderModel, "model")
    cases = json.load(open(os.path.join(fx, "tokenizer_cases.json")))
    if isinstance(cases, dict):
        cases = cases.get("cases", cases)
    ref = st.load(os.path.join(fx, "text_encoders.safetensors"))
    cids = torch.tensor([c["clip_input_ids"] for c in cases], dtype=torch.long)
    tids = torch.tensor([c["t5_input_ids"] for c in cases], dtype=torch.long)
    check("CLIP pooled (rel)", rel(clip(cids), ref["pooled_prompt_embeds"]), 1e-4)
    t5out = t5(tids)
    worst = max(rel(t5out[i], ref["prompt_embeds"][i]) for i in range(len(cases)))
    check(f"T5 embeds, worst of {len(cases)} (rel)", worst, 1e-4)

    tr = load_component(md, "transformer", fm.FluxTransformer2DModel, "diffusion_pytorch_model")
    c = st.load(os.path.join(fx, "transformer_case.safetensors"))
    out = tr(c["hidden_states"], c["encoder_hidden_states"], c["pooled_projections"], c["timestep"].reshape(-1),
             c["guidance"].reshape(-1), c["img_ids"], c["txt_ids"])
    check("transformer output (rel)", rel(out, c["output"]), 1e-4)

    vae = load_component(md, "vae", fm.AutoencoderKL, "diffusion_pytorch_model")
    vcfg = vae.config
    index = json.load(open(os.path.join(fx, "index.json")))
    for case in index["pipeline_cases"]:
        p = st.load(os.path.join(fx, case["file"]))
        h, w = case["height"] // 8, case["width"] // 8
        steps = case["steps"]
        lat = p[f"latents_after_step_{steps - 1}"]
        z = fm.unpack(lat, h, w) / vcfg["scaling_factor"] + vcfg["shift_factor"]
        img = (vae.decode(z) * 0.5 + 0.5).clamp(0, 1)
        check(f"VAE decode {case['file']} (max abs)", float((img - p["image"]).abs().max()), 2 / 255)
        sig, _ = fm.flux_sigmas(steps, (h // 2) * (w // 2))
        check(f"sigmas {case['file']} (max abs)", float((sig - p["sigmas"].reshape(-1)).abs().max()), 1e-6)
    # The encoder has no reference output; check that it at least maps image -> moments of the right shape.
    mean, logvar = vae.encode_moments(torch.zeros(1, 3, 64, 64))
    assert mean.shape == (1, vcfg["latent_channels"], 8, 8), mean.shape
    print("ALL PASS" if ok else "SOME CHECKS FAILED")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
