"""Deterministic judge of a grammar image: background color, object color, shape, position, size.

- background: nearest palette color to the median of the border pixels;
- object: pixels farther than a threshold from the background color; its color is the nearest palette color to
  their median (excluding the background color);
- shape: fill ratio of the object's bounding box (circle pi/4 ~ 0.785, square ~1, triangle ~0.5), with the
  triangle's top-vs-bottom width as a tie-breaker;
- position: centroid of the bounding box (center vs the four quadrants); size: bounding box side / image side.
"""
import numpy as np

import grammar as gr

PALETTE = np.array(gr.RGB, dtype=np.float32)


def _nearest(rgb, exclude=None):
    d = ((PALETTE - rgb[None, :]) ** 2).sum(-1)
    if exclude is not None:
        d[exclude] = np.inf
    return int(np.argmin(d))


def detect(img):
    """img: uint8 [H, W, 3]. Returns dict with bg, obj (palette indices), shape, position, size (names) or None."""
    x = img.astype(np.float32)
    h, w, _ = x.shape
    b = max(1, min(h, w) // 32)
    border = np.concatenate([x[:b].reshape(-1, 3), x[-b:].reshape(-1, 3), x[:, :b].reshape(-1, 3),
                             x[:, -b:].reshape(-1, 3)])
    bg_rgb = np.median(border, axis=0)
    bg = _nearest(bg_rgb)
    dist = np.sqrt(((x - bg_rgb[None, None]) ** 2).sum(-1))
    mask = dist > 40.0
    out = {"bg": gr.COLORS[bg], "obj": None, "shape": None, "position": None, "size": None, "fill": None}
    if mask.sum() < 0.01 * h * w:
        return out
    # Largest object pixels only: keep rows/cols with enough object pixels to resist stray noise.
    ys, xs = np.nonzero(mask)
    obj = _nearest(np.median(x[ys, xs], axis=0), exclude=bg)
    out["obj"] = gr.COLORS[obj]
    y0, y1 = np.percentile(ys, [0.5, 99.5])
    x0, x1 = np.percentile(xs, [0.5, 99.5])
    bw, bh = max(x1 - x0 + 1, 1), max(y1 - y0 + 1, 1)
    box = mask[int(y0): int(y1) + 1, int(x0): int(x1) + 1]
    fill = float(box.mean())
    out["fill"] = fill
    # Triangle: the top quarter of the box is much narrower than the bottom quarter.
    q = max(1, box.shape[0] // 4)
    top, bottom = box[:q].mean(), box[-q:].mean()
    if fill > 0.9:
        shape = "square"
    elif fill < 0.64 or top < 0.6 * bottom:
        shape = "triangle"
    else:
        shape = "circle"
    out["shape"] = shape
    cx, cy = (x0 + x1 + 1) / 2 / w, (y0 + y1 + 1) / 2 / h
    if abs(cx - 0.5) < 0.1 and abs(cy - 0.5) < 0.1:
        pos = "center"
    else:
        pos = ("top" if cy < 0.5 else "bottom") + " " + ("left" if cx < 0.5 else "right")
    out["position"] = pos
    side = max(bw / w, bh / h)
    out["size"] = "small" if side < 0.45 else "large"
    out["side"] = float(side)
    return out


def judge(img, attrs):
    """attrs = (obj, bg, shape, pos, size) indices -> dict of attribute -> bool (None when not asked)."""
    d = detect(img)
    o, b, s, p, z = attrs
    return {
        "bg": d["bg"] == gr.COLORS[b],
        "obj": d["obj"] == gr.COLORS[o],
        "shape": d["shape"] == gr.SHAPES[s],
        "position": None if gr.POSITIONS[p] is None else d["position"] == gr.POSITIONS[p],
        "size": None if gr.SIZES[z] is None else d["size"] == gr.SIZES[z],
    }


def accuracy(images, attr_list):
    """Per-attribute accuracy over uint8 images [N, H, W, 3]."""
    tot, ok = {}, {}
    for img, a in zip(images, attr_list):
        for k, v in judge(img, a).items():
            if v is None:
                continue
            tot[k] = tot.get(k, 0) + 1
            ok[k] = ok.get(k, 0) + int(v)
    return {k: ok[k] / tot[k] for k in tot}
