"""The caption grammar of issue 14 (grammar.json), enumerated in a fixed order shared with tokenize-captions.ts.

Order: object color, background color (!= object), shape, position (none first), size (none first).
"""
import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))
G = json.load(open(os.path.join(HERE, "grammar.json")))
COLORS = list(G["colors"].keys())
RGB = [G["colors"][c] for c in COLORS]
SHAPES = G["shapes"]
POSITIONS = [None] + G["positions"]
SIZES = [None] + G["sizes"]


def caption(obj, bg, shape, pos, size):
    s = f"a {COLORS[obj]} {SHAPES[shape]} on a {COLORS[bg]} background"
    if POSITIONS[pos] is not None:
        s += f" in the {POSITIONS[pos]}"
    if SIZES[size] is not None:
        s += f", {SIZES[size]}"
    return s


def enumerate_all():
    """[(obj, bg, shape, pos, size)] in the canonical order (8*7*3*6*3 = 3024)."""
    out = []
    for o in range(len(COLORS)):
        for b in range(len(COLORS)):
            if b == o:
                continue
            for s in range(len(SHAPES)):
                for p in range(len(POSITIONS)):
                    for z in range(len(SIZES)):
                        out.append((o, b, s, p, z))
    return out


ALL = enumerate_all()
INDEX = {a: i for i, a in enumerate(ALL)}
CAPTIONS = [caption(*a) for a in ALL]

if __name__ == "__main__":
    print(len(CAPTIONS))
    print(CAPTIONS[0])
    print(CAPTIONS[-1])
