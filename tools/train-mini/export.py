"""Exports a train.py run to a diffusers-layout model folder (models/flux-mini).

  python3 tools/train-mini/export.py --run RUN_DIR --out models/flux-mini [--no-ema]

transformer/ (EMA weights) and vae/ get config.json + bf16 safetensors; a file over --shard-mib is split into
diffusers' sharded form (`<stem>-0000i-of-0000n.safetensors` + `<stem>.safetensors.index.json`, which our loader
reads) so every file stays under the 16 MiB a GPU run can send back. model_index.json, scheduler/ (FLUX.1-dev's),
text_encoder*/ and tokenizer*/ are copied from models/flux-tiny (the frozen text encoders the transformer learnt).
"""
import argparse
import json
import os
import shutil
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import st  # noqa: E402
import data  # noqa: E402

REPO = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
TINY_DIR = os.path.join(REPO, "models", "flux-tiny")
COPIED = ["model_index.json", "scheduler", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2"]


def write_weights(tensors, folder, stem, dtype="BF16", shard_bytes=15 * 2**20):
    """One safetensors file, or shards of at most shard_bytes with an index json when larger."""
    itemsize = 2 if dtype in ("BF16", "F16") else 4
    size = {k: v.numel() * itemsize for k, v in tensors.items()}
    total = sum(size.values())
    if total <= shard_bytes:
        st.save(tensors, os.path.join(folder, f"{stem}.safetensors"), dtype=dtype, metadata={"format": "pt"})
        return [f"{stem}.safetensors"]
    groups, cur, cur_size = [], [], 0
    for k in sorted(tensors):
        if cur and cur_size + size[k] > shard_bytes:
            groups.append(cur)
            cur, cur_size = [], 0
        cur.append(k)
        cur_size += size[k]
    groups.append(cur)
    n = len(groups)
    weight_map, files = {}, []
    for i, names in enumerate(groups):
        fname = f"{stem}-{i + 1:05d}-of-{n:05d}.safetensors"
        st.save({k: tensors[k] for k in names}, os.path.join(folder, fname), dtype=dtype, metadata={"format": "pt"})
        weight_map.update({k: fname for k in names})
        files.append(fname)
    with open(os.path.join(folder, f"{stem}.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2, sort_keys=True)
    return files


def copy_static(out_dir):
    """The parts of the model that training does not change, from models/flux-tiny."""
    os.makedirs(out_dir, exist_ok=True)
    for name in COPIED:
        src, dst = os.path.join(TINY_DIR, name), os.path.join(out_dir, name)
        if os.path.isdir(src):
            shutil.rmtree(dst, ignore_errors=True)
            shutil.copytree(src, dst)
        else:
            shutil.copy2(src, dst)
    set_t5_length(out_dir)


def set_t5_length(out_dir):
    """flux-mini reads data.T5_LEN T5 tokens: tokenizer_2's model_max_length says so to the pipeline."""
    path = os.path.join(out_dir, "tokenizer_2", "tokenizer_config.json")
    cfg = json.load(open(path))
    cfg["model_max_length"] = data.T5_LEN
    with open(path, "w") as f:
        json.dump(cfg, f, indent=2, ensure_ascii=False)
        f.write("\n")


def export(run_dir, out_dir, use_ema=True, dtype="BF16"):
    ck = torch.load(os.path.join(run_dir, "state.pt"), map_location="cpu", weights_only=False)
    S = ck["S"]
    if S["stats"] is None:
        raise SystemExit("the run has not finished the VAE stage: no latent statistics yet")
    copy_static(out_dir)
    tdir, vdir = os.path.join(out_dir, "transformer"), os.path.join(out_dir, "vae")
    for d in (tdir, vdir):
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
    tcfg = dict(S["transformer_config"])
    vcfg = dict(S["vae_config"])
    vcfg["scaling_factor"] = round(S["stats"]["scaling_factor"], 6)
    vcfg["shift_factor"] = round(S["stats"]["shift_factor"], 6)
    with open(os.path.join(tdir, "config.json"), "w") as f:
        json.dump(tcfg, f, indent=2, sort_keys=True)
    with open(os.path.join(vdir, "config.json"), "w") as f:
        json.dump(vcfg, f, indent=2, sort_keys=True)
    dit = ck["ema"] if use_ema else ck["dit"]
    files = write_weights({k: v.float() for k, v in dit.items()}, tdir, "diffusion_pytorch_model", dtype)
    files += write_weights({k: v.float() for k, v in ck["vae"].items()}, vdir, "diffusion_pytorch_model", dtype)
    if "ema_t5" in ck:
        # A trained T5 (train.py --train-t5) replaces flux-tiny's: its own weights beside flux-tiny's config.
        t5dir = os.path.join(out_dir, "text_encoder_2")
        shutil.rmtree(t5dir, ignore_errors=True)
        os.makedirs(t5dir)
        shutil.copy2(os.path.join(TINY_DIR, "text_encoder_2", "config.json"), t5dir)
        # float32 like flux-tiny's T5 (4 MB): the trained T5's caption states differ by little (pairwise cosine
        # up to 0.993 over 64 captions on the 2026-12-06 runs), so bf16 rounding of its weights is avoided.
        files += write_weights({k: v.float() for k, v in ck["ema_t5"].items()}, t5dir, "model", "F32")
    total = 0
    for root, _, names in os.walk(out_dir):
        total += sum(os.path.getsize(os.path.join(root, n)) for n in names)
    print(f"[export] {out_dir}: {total / 2**20:.1f} MiB; weights {files}; vae scaling {vcfg['scaling_factor']} "
          f"shift {vcfg['shift_factor']}", flush=True)
    return out_dir


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", help="train.py run directory (state.pt)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--static-only", action="store_true",
                    help="only copy model_index/scheduler/text encoders/tokenizers from flux-tiny into --out")
    ap.add_argument("--no-ema", action="store_true")
    ap.add_argument("--fp32", action="store_true", help="float32 weights instead of bf16")
    a = ap.parse_args()
    if a.static_only:
        copy_static(a.out)
        return
    if not a.run:
        ap.error("--run is required")
    export(a.run, a.out, use_ema=not a.no_ema, dtype="F32" if a.fp32 else "BF16")


if __name__ == "__main__":
    main()
