"""Minimal safetensors reader/writer (json header + raw little-endian data), numpy/torch only.

Why: the `safetensors` package is not installed on every machine we train or test on.
Layout: u64 header length, JSON header {name: {dtype, shape, data_offsets}}, data.
"""
import json
import struct

import numpy as np
import torch

_NP = {"F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32, "I16": np.int16,
       "U8": np.uint8, "I8": np.int8, "F64": np.float64, "BOOL": np.bool_}


def _read_header(f):
    n = struct.unpack("<Q", f.read(8))[0]
    return json.loads(f.read(n).decode("utf-8")), 8 + n


def load(path):
    """Returns {name: torch tensor (float32 for float dtypes incl. BF16)}."""
    with open(path, "rb") as f:
        header, base = _read_header(f)
        data = f.read()
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        a, b = info["data_offsets"]
        raw = data[a:b]
        shape = info["shape"]
        dt = info["dtype"]
        if dt == "BF16":
            u16 = np.frombuffer(raw, dtype=np.uint16).astype(np.uint32) << 16
            arr = u16.view(np.float32)
        else:
            arr = np.frombuffer(raw, dtype=_NP[dt]).copy()
        out[name] = torch.from_numpy(arr.reshape(shape).copy())
    return out


def _to_bytes(t, dtype):
    t = t.detach().cpu().contiguous()
    if dtype == "BF16":
        # bf16 = round-to-nearest-even of the top 16 bits of fp32.
        u = t.float().numpy().view(np.uint32).astype(np.uint64)
        u = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
        return u.tobytes()
    if dtype == "F32":
        return t.float().numpy().astype("<f4").tobytes()
    if dtype == "F16":
        return t.half().numpy().astype("<f2").tobytes()
    if dtype == "I64":
        return t.long().numpy().astype("<i8").tobytes()
    if dtype == "I32":
        return t.int().numpy().astype("<i4").tobytes()
    raise ValueError(dtype)


def save(tensors, path, dtype="F32", metadata=None):
    """Writes {name: tensor}; floating tensors are stored as `dtype` (F32, F16 or BF16), ints as I64/I32."""
    header, chunks, off = {}, [], 0
    for name in sorted(tensors):
        t = tensors[name]
        dt = dtype if t.is_floating_point() else ("I64" if t.dtype == torch.int64 else "I32")
        raw = _to_bytes(t, dt)
        header[name] = {"dtype": dt, "shape": list(t.shape), "data_offsets": [off, off + len(raw)]}
        chunks.append(raw)
        off += len(raw)
    if metadata:
        header["__metadata__"] = metadata
    hb = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hb += b" " * ((8 - len(hb) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hb)))
        f.write(hb)
        for c in chunks:
            f.write(c)
