"""Procedural caption -> image set of issue 14, rendered on the fly (GPU or CPU), reproducible from a seed.

`a {color} {shape} on a {color} background[ in the {position}][, {size}]`. Anti-aliasing is analytic: each pixel's
coverage is clamp(0.5 - d / pixel, 0, 1) with d the signed distance of the pixel centre to the shape's edge (exact for
straight edges and circles up to second order). Object side (circle diameter, square side, triangle base = height) is
30-60 % of the image (small 30-40 %, large 50-60 %); colors and positions get a small uniform jitter.
"""
import json
import math
import os

import torch

import grammar as gr

HERE = os.path.dirname(os.path.abspath(__file__))
# T5 sequence length of flux-mini (tokenizer_2 model_max_length, which the pipeline takes as its default
# max_sequence_length; FLUX.1-dev uses 512, schnell 256). The longest grammar caption is 16 T5 tokens with </s>, so 32
# loses nothing, and 256 image + 32 text tokens cost ~2.7x less per step than 256 + 512, in training and on the CPU.
T5_LEN = 32
_ALL = torch.tensor(gr.ALL, dtype=torch.long)


def load_tokens():
    """Caption ids padded as the pipeline pads: CLIP [N, 77] (pad 49407), T5 [N, T5_LEN] (pad 0)."""
    d = json.load(open(os.path.join(HERE, "caption_tokens.json")))
    if d["captions"] != gr.CAPTIONS:
        raise RuntimeError("caption_tokens.json does not match grammar.json: rerun tokenize-captions.ts")
    n = len(d["captions"])
    clip = torch.full((n, 77), 49407, dtype=torch.long)
    t5 = torch.zeros((n, T5_LEN), dtype=torch.long)
    for i, (c, t) in enumerate(zip(d["clip"], d["t5"])):
        clip[i, : len(c)] = torch.tensor(c[:77])
        t5[i, : len(t)] = torch.tensor(t[:T5_LEN])
    return clip, t5


def sample_attributes(n, gen, caption_subset=None):
    """n caption indices (into gr.ALL), uniformly over the grammar (or over caption_subset)."""
    pool = len(gr.ALL) if caption_subset is None else len(caption_subset)
    idx = torch.randint(0, pool, (n,), generator=gen)
    if caption_subset is not None:
        idx = torch.as_tensor(caption_subset)[idx]
    return idx


def render(cap_idx, size, gen, device="cpu", width=None):
    """Images [B, 3, H, W] in [-1, 1] for caption indices, random jitter drawn from `gen` (a CPU generator)."""
    h = size
    w = width or size
    b = len(cap_idx)
    attrs = _ALL[torch.as_tensor(cap_idx).cpu().long()]  # [B, 5]
    rgb = torch.tensor(gr.RGB, dtype=torch.float32)
    cj = gr.G["color_jitter"]
    obj = (rgb[attrs[:, 0]] + (torch.rand(b, 3, generator=gen) * 2 - 1) * cj).clamp(0, 255) / 255.0
    bg = (rgb[attrs[:, 1]] + (torch.rand(b, 3, generator=gen) * 2 - 1) * cj).clamp(0, 255) / 255.0
    sr = gr.G["side_range"]
    lo = torch.tensor([sr["any"][0], sr["small"][0], sr["large"][0]])[attrs[:, 4]]
    hi = torch.tensor([sr["any"][1], sr["small"][1], sr["large"][1]])[attrs[:, 4]]
    side = lo + (hi - lo) * torch.rand(b, generator=gen)  # fraction of min(H, W)
    # Centers (fractions of W, H): given positions + jitter; no position: anywhere the object fits.
    pj = gr.G["position_jitter"]
    u = torch.rand(b, 2, generator=gen)
    jit = (torch.rand(b, 2, generator=gen) * 2 - 1) * pj
    table = torch.tensor([[0.5, 0.5]] + [gr.G["position_centers"][p] for p in gr.POSITIONS[1:]])
    half = (side / 2)[:, None]
    anywhere = half + u * (1 - 2 * half)  # no position asked: anywhere the object fits
    given = torch.minimum(torch.maximum(table[attrs[:, 3]] + jit, half), 1 - half)
    cen = torch.where((attrs[:, 3] == 0)[:, None], anywhere, given)
    m = min(h, w)
    # Pixel centres in pixels; shapes defined in pixels of the shorter side.
    ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5)[None, :, None]
    xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5)[None, None, :]
    cx = (cen[:, 0] * w).to(device)[:, None, None]
    cy = (cen[:, 1] * h).to(device)[:, None, None]
    r = (side * m / 2).to(device)[:, None, None]
    dx, dy = xs - cx, ys - cy
    d_circle = torch.sqrt(dx * dx + dy * dy) - r
    d_square = torch.maximum(dx.abs(), dy.abs()) - r
    # Upright isosceles triangle: apex (0, -r), base corners (+-r, r): three half-planes, max of signed distances.
    # Outward normals of the slanted sides (y down): (2, -1)/sqrt5 and (-2, -1)/sqrt5; both lines pass the apex.
    n1 = 1.0 / math.sqrt(5.0)
    d_base = dy - r
    d_right = (2 * dx - dy - r) * n1
    d_left = (-2 * dx - dy - r) * n1
    d_tri = torch.maximum(d_base, torch.maximum(d_right, d_left))
    shape = attrs[:, 2].to(device)[:, None, None]
    d = torch.where(shape == 0, d_circle, torch.where(shape == 1, d_square, d_tri))
    cov = (0.5 - d).clamp(0, 1)[:, None]  # [B, 1, H, W], 1 pixel wide ramp
    img = bg.to(device)[:, :, None, None] * (1 - cov) + obj.to(device)[:, :, None, None] * cov
    return img * 2 - 1


def to_uint8(img):
    """[-1, 1] [B, 3, H, W] -> uint8 [B, H, W, 3] numpy (as the pipeline postprocesses)."""
    x = ((img.float().clamp(-1, 1) * 0.5 + 0.5) * 255).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()
