"""Trains flux-mini: stage 1 the VAE, stage 2 the FLUX transformer (rectified flow), on the procedural grammar.

  python3 tools/train-mini/train.py --out RUN_DIR [--vae-minutes 2.5 --dit-minutes 5.5] [--tiny]

- Text encoders: flux-tiny's CLIP and T5, frozen; their outputs for every caption of the grammar are computed once at
  start (ids from caption_tokens.json, padded as the pipeline pads: CLIP 77, T5 data.T5_LEN = 32).
- VAE: L1 + MSE reconstruction of a posterior sample + a small KL; then latent statistics give
  shift_factor = mean and scaling_factor = 1 / std (the pipeline decodes z = x / scaling + shift).
- Transformer: x_t = (1 - s) x0 + s eps, target eps - x0, s = the pipeline's exponential shift (mu of the image's
  token count) applied to a logit-normal u; packed 2x2 latents, img_ids (0, row, col), txt_ids zeros, guidance
  uniform in [1, 5] (FLUX feeds 3.5 by default); AdamW, EMA, bf16 autocast on CUDA; multi-resolution buckets.
- RUN_DIR/state.pt is written every --ckpt-seconds (atomic); rerunning with the same --out resumes. Data for step k
  is drawn from a generator seeded by (seed, stage, k), so a resumed run sees the same batches.
- RUN_DIR/loss.csv: stage,step,seconds,loss,lr.
"""
import argparse
import copy
import csv
import json
import math
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import data  # noqa: E402
import flux_model as fm  # noqa: E402
import grammar as gr  # noqa: E402
import st  # noqa: E402
from verify_reference import load_weights  # noqa: E402

REPO = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
TINY_DIR = os.path.join(REPO, "models", "flux-tiny")

# (image side, sampling weight): token count L = (side/16)^2; batch scales so L + T5_LEN text tokens stay ~constant.
BUCKETS = [(128, 0.15), (192, 0.10), (256, 0.55), (320, 0.07), (384, 0.07), (512, 0.06)]


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="run directory (checkpoints, loss.csv); resumes if state.pt exists")
    ap.add_argument("--vae-minutes", type=float, default=2.5)
    ap.add_argument("--dit-minutes", type=float, default=5.5)
    ap.add_argument("--seed", type=int, default=14)
    ap.add_argument("--tiny", action="store_true", help="CPU smoke scale: 64x64, tiny nets, a few seconds")
    ap.add_argument("--device", default=None)
    ap.add_argument("--caption-subset", type=int, default=0, help="train on N random captions only (0: all 3024)")
    ap.add_argument("--hidden-heads", type=int, default=4)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--axes", default="8,28,28")
    ap.add_argument("--double", type=int, default=2)
    ap.add_argument("--single", type=int, default=4)
    ap.add_argument("--vae-channels", default="32,64,96,96")
    ap.add_argument("--vae-groups", type=int, default=16)
    ap.add_argument("--vae-batch", type=int, default=32)
    ap.add_argument("--vae-lr", type=float, default=4e-4)
    ap.add_argument("--kl-weight", type=float, default=1e-6)
    ap.add_argument("--batch", type=int, default=128, help="transformer batch at 256x256 (scaled per bucket)")
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--warmup", type=int, default=300)
    ap.add_argument("--cosine", action="store_true",
                    help="decay the transformer's lr along a cosine to 10%% of --lr over the --dit-minutes budget "
                         "(a final low-lr pass: a constant lr left some samples broken)")
    ap.add_argument("--ema", type=float, default=0.999)
    ap.add_argument("--ckpt-seconds", type=float, default=60.0)
    ap.add_argument("--log-every", type=int, default=25)
    ap.add_argument("--max-vae-steps", type=int, default=0, help="stop stage 1 after N steps too (0: time only)")
    ap.add_argument("--max-dit-steps", type=int, default=0)
    ap.add_argument("--init-from", default=None,
                    help="exported model folder (transformer/, vae/): start stage 2 from its weights (EMA too) and its "
                         "VAE and latent statistics, with fresh optimizer state, when RUN_DIR has no state.pt yet")
    ap.add_argument("--train-t5", action="store_true",
                    help="train the T5 encoder (text_encoder_2) with the transformer instead of keeping flux-tiny's "
                         "random one frozen: frozen random T5 states barely tell 'a red X on a blue background' from "
                         "'a blue X on a red background', and a third of the colour errors were such swaps")
    ap.add_argument("--init-steps", type=int, default=0, help="with --init-from: the steps that model was trained")
    ap.add_argument("--pool", type=int, default=0,
                    help="latent pool per image size, in batches (0: render and encode every batch). With N > 0 a "
                         "pool of N batches of VAE posteriors is kept per size and each step renews only "
                         "--pool-refresh of them, so the transformer's batch can grow without the VAE encoder's cost")
    ap.add_argument("--pool-refresh", type=float, default=0.25, help="fraction of a batch renewed per step")
    ap.add_argument("--wall-seconds", type=float, default=0,
                    help="stop this invocation after N wall seconds (0: no limit); a rerun resumes")
    a = ap.parse_args(argv)
    if a.tiny:
        a.hidden_heads, a.head_dim, a.axes = 2, 32, "8,12,12"
        a.double, a.single = 1, 1
        a.vae_channels, a.vae_groups = "8,8,16,16", 4
        a.vae_batch, a.batch, a.warmup, a.log_every = 4, 4, 5, 2
        a.caption_subset = a.caption_subset or 24
    return a


def transformer_config(a):
    axes = [int(x) for x in a.axes.split(",")]
    return {
        "_class_name": "FluxTransformer2DModel",
        "_diffusers_version": "0.32.0",
        "attention_head_dim": a.head_dim,
        "axes_dims_rope": axes,
        "guidance_embeds": True,
        "in_channels": 64,
        "joint_attention_dim": None,  # filled from the T5 config
        "num_attention_heads": a.hidden_heads,
        "num_layers": a.double,
        "num_single_layers": a.single,
        "out_channels": None,
        "patch_size": 1,
        "pooled_projection_dim": None,  # filled from the CLIP config
    }


def vae_config(a):
    ch = [int(x) for x in a.vae_channels.split(",")]
    return {
        "_class_name": "AutoencoderKL",
        "_diffusers_version": "0.32.0",
        "act_fn": "silu",
        "block_out_channels": ch,
        "down_block_types": ["DownEncoderBlock2D"] * len(ch),
        "force_upcast": True,
        "in_channels": 3,
        "latent_channels": 16,
        "latents_mean": None,
        "latents_std": None,
        "layers_per_block": 1,
        "mid_block_add_attention": True,
        "norm_num_groups": a.vae_groups,
        "out_channels": 3,
        "sample_size": 256,
        "scaling_factor": 1.0,  # set from the latent statistics after stage 1
        "shift_factor": 0.0,
        "up_block_types": ["UpDecoderBlock2D"] * len(ch),
        "use_post_quant_conv": False,
        "use_quant_conv": False,
    }


def init_transformer(model):
    """adaLN-zero: modulation and output layers start at zero, so every block starts as the identity."""
    with torch.no_grad():
        for name, mod in model.named_modules():
            if name.endswith("norm1.linear") or name.endswith("norm1_context.linear") or name.endswith("norm.linear") \
                    or name == "norm_out.linear" or name == "proj_out":
                mod.weight.zero_()
                mod.bias.zero_()


def load_t5(device, model_dir=None):
    """flux-tiny's T5 encoder, or model_dir's text_encoder_2 when that holds weights of its own (a trained one)."""
    src = os.path.join(model_dir, "text_encoder_2") if model_dir else None
    if not (src and os.path.isfile(os.path.join(src, "model.safetensors")) and not os.path.islink(src)):
        src = os.path.join(TINY_DIR, "text_encoder_2")
    t5 = fm.T5EncoderModel(json.load(open(os.path.join(src, "config.json"))))
    fm.load_into(t5, {k: v.float() for k, v in st.load(os.path.join(src, "model.safetensors")).items()})
    return t5.to(device), src


def encode_text(device, caption_ids, batch=64):
    """Frozen flux-tiny CLIP pooled [N, Dp] and T5 [N, T5_LEN, Dj] for the given caption indices (float32, on device)."""
    clip_ids, t5_ids = data.load_tokens()
    ccfg = json.load(open(os.path.join(TINY_DIR, "text_encoder", "config.json")))
    tcfg = json.load(open(os.path.join(TINY_DIR, "text_encoder_2", "config.json")))
    clip = fm.CLIPTextModel(ccfg)
    fm.load_into(clip, st.load(os.path.join(TINY_DIR, "text_encoder", "model.safetensors")))
    t5 = fm.T5EncoderModel(tcfg)
    fm.load_into(t5, st.load(os.path.join(TINY_DIR, "text_encoder_2", "model.safetensors")))
    clip.to(device).eval()
    t5.to(device).eval()
    idx = torch.as_tensor(caption_ids)
    pooled, embeds = [], []
    with torch.no_grad():
        for i in range(0, len(idx), batch):
            j = idx[i: i + batch]
            pooled.append(clip(clip_ids[j].to(device)).float())
            embeds.append(t5(t5_ids[j].to(device)).float())
    return torch.cat(pooled), torch.cat(embeds), ccfg["hidden_size"], tcfg["d_model"]


def log_row(path, row):
    new = not os.path.exists(path)
    with open(path, "a", newline="") as f:
        w = csv.writer(f)
        if new:
            w.writerow(["stage", "step", "seconds", "loss", "lr"])
        w.writerow(row)


def save_state(path, state):
    tmp = path + ".tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)


def logit_normal_sigma(u_normal, seq_len):
    """Training sigmas: the pipeline's exponential shift (mu from the token count) of a logit-normal u."""
    _, mu = fm.flux_sigmas(1, seq_len)
    u = torch.sigmoid(u_normal)
    return math.exp(mu) / (math.exp(mu) + (1.0 / u.clamp(1e-5, 1 - 1e-5) - 1.0))


def pick_bucket(gen, tiny):
    if tiny:
        return 64
    r = float(torch.rand(1, generator=gen))
    acc = 0.0
    for side, wgt in BUCKETS:
        acc += wgt
        if r < acc:
            return side
    return BUCKETS[-1][0]


def main(argv=None):
    a = parse_args(argv)
    os.makedirs(a.out, exist_ok=True)
    dev = torch.device(a.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cuda = dev.type == "cuda"
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(a.seed)
    amp = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if cuda else (lambda: torch.autocast("cpu", enabled=False))
    state_path = os.path.join(a.out, "state.pt")
    csv_path = os.path.join(a.out, "loss.csv")
    t_start = time.time()

    # Captions: all of the grammar (tiny: a fixed random subset, to keep CPU text encoding short).
    if a.caption_subset:
        g = torch.Generator().manual_seed(a.seed)
        captions = torch.randperm(len(gr.ALL), generator=g)[: a.caption_subset].sort().values
    else:
        captions = torch.arange(len(gr.ALL))
    pooled, embeds, clip_dim, t5_dim = encode_text(dev, captions)
    print(f"[text] {len(captions)} captions encoded in {time.time() - t_start:.1f}s on {dev}", flush=True)

    tcfg = transformer_config(a)
    tcfg["joint_attention_dim"], tcfg["pooled_projection_dim"] = t5_dim, clip_dim
    vcfg = vae_config(a)
    vae = fm.AutoencoderKL(vcfg).to(dev)
    dit = fm.FluxTransformer2DModel(tcfg).to(dev)
    init_transformer(dit)
    ema = copy.deepcopy(dit).eval()
    for p in ema.parameters():
        p.requires_grad_(False)
    vopt = torch.optim.AdamW(vae.parameters(), lr=a.vae_lr, betas=(0.9, 0.99), weight_decay=0.0)
    dopt = torch.optim.AdamW(dit.parameters(), lr=a.lr, betas=(0.9, 0.99), weight_decay=0.01)
    t5, ema_t5, t5_ids = None, None, None
    if a.train_t5:
        # Trained T5: its states are computed per batch; ids [N captions, T5_LEN] indexed like the text caches.
        t5, t5_src = load_t5(dev, a.init_from)
        t5.train()
        ema_t5 = copy.deepcopy(t5).eval()
        for p in ema_t5.parameters():
            p.requires_grad_(False)
        t5_ids = data.load_tokens()[1][captions].to(dev)
        dopt.add_param_group({"params": list(t5.parameters()), "weight_decay": 0.0})
        print(f"[t5] training the T5 encoder from {t5_src}", flush=True)
    S = {"stage": "vae", "vae_step": 0, "vae_seconds": 0.0, "dit_step": 0, "dit_seconds": 0.0, "stats": None,
         "args": vars(a), "transformer_config": tcfg, "vae_config": vcfg}
    if os.path.exists(state_path):
        ck = torch.load(state_path, map_location=dev, weights_only=False)
        vae.load_state_dict(ck["vae"])
        dit.load_state_dict(ck["dit"])
        ema.load_state_dict(ck["ema"])
        if t5 is not None:
            t5.load_state_dict(ck["t5"])
            ema_t5.load_state_dict(ck["ema_t5"])
        vopt.load_state_dict(ck["vopt"])
        dopt.load_state_dict(ck["dopt"])
        S = ck["S"]
        S.setdefault("warm_from", 0)
        print(f"[resume] {state_path}: stage {S['stage']}, vae step {S['vae_step']}, dit step {S['dit_step']}",
              flush=True)
    elif a.init_from:
        # Continue from an exported model: transformer (into both the trained and the EMA copy), VAE, statistics.
        # Its batches continue the seeded stream after the steps it already saw (--init-steps is its step count).
        fm.load_into(dit, {k: v.float() for k, v in load_weights(os.path.join(a.init_from, "transformer"),
                                                                  "diffusion_pytorch_model").items()})
        ema.load_state_dict(dit.state_dict())
        fm.load_into(vae, {k: v.float() for k, v in load_weights(os.path.join(a.init_from, "vae"),
                                                                  "diffusion_pytorch_model").items()})
        vc = json.load(open(os.path.join(a.init_from, "vae", "config.json")))
        S.update(stage="dit", stats={"shift_factor": vc["shift_factor"], "scaling_factor": vc["scaling_factor"]},
                 dit_step=a.init_steps, warm_from=a.init_steps, init_from=os.path.abspath(a.init_from))
        print(f"[init] {a.init_from}: transformer, VAE and latent statistics; stage 2 continues at step "
              f"{a.init_steps}", flush=True)
    S.setdefault("warm_from", 0)
    n_dit = sum(p.numel() for p in dit.parameters())
    n_vae = sum(p.numel() for p in vae.parameters())
    print(f"[model] transformer {n_dit / 1e6:.2f}M params, VAE {n_vae / 1e6:.2f}M params", flush=True)

    def checkpoint():
        extra = {"t5": t5.state_dict(), "ema_t5": ema_t5.state_dict()} if t5 is not None else {}
        save_state(state_path, {"S": S, "vae": vae.state_dict(), "dit": dit.state_dict(), "ema": ema.state_dict(),
                                "vopt": vopt.state_dict(), "dopt": dopt.state_dict(), **extra})

    def out_of_wall():
        if a.wall_seconds and time.time() - t_start > a.wall_seconds:
            print(f"[wall] {a.wall_seconds:.0f}s wall limit reached: checkpointing; rerun to resume", flush=True)
            return True
        return False

    def subset_idx(gen, n):
        # Caption indices restricted to the encoded set; returns (grammar index, row in the text caches).
        rows = torch.randint(0, len(captions), (n,), generator=gen)
        return captions[rows], rows

    # ---------------- stage 1: VAE ----------------
    vae_budget = a.vae_minutes * 60
    last_ck = time.time()
    if S["stage"] == "vae":
        vae.train()
        acc, nacc = 0.0, 0
        while S["vae_seconds"] < vae_budget and not (a.max_vae_steps and S["vae_step"] >= a.max_vae_steps):
            if out_of_wall():
                checkpoint()
                return 2
            t0 = time.time()
            k = S["vae_step"]
            gen = torch.Generator().manual_seed(a.seed * 1_000_003 + k)
            side = 64 if a.tiny else (256 if k % 3 else 128)
            bs = a.vae_batch if side == 256 or a.tiny else a.vae_batch * 4
            idx, _ = subset_idx(gen, bs)
            x = data.render(idx, side, gen, device=dev)
            lr = a.vae_lr * min(1.0, (k + 1) / max(1, a.warmup))
            for g_ in vopt.param_groups:
                g_["lr"] = lr
            with amp():
                mean, logvar = vae.encode_moments(x)
                z = mean + torch.exp(0.5 * logvar) * torch.randn_like(mean)
                rec = vae.decode(z)
            rec = rec.float()
            mean, logvar = mean.float(), logvar.float()
            kl = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).mean()
            loss = F.l1_loss(rec, x) + F.mse_loss(rec, x) + a.kl_weight * kl
            vopt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
            vopt.step()
            if cuda:
                torch.cuda.synchronize()
            S["vae_step"] += 1
            S["vae_seconds"] += time.time() - t0
            acc += float(loss)
            nacc += 1
            if S["vae_step"] % a.log_every == 0:
                log_row(csv_path, ["vae", S["vae_step"], round(S["vae_seconds"], 2), acc / nacc, lr])
                print(f"[vae] step {S['vae_step']} {S['vae_seconds']:.0f}s loss {acc / nacc:.5f} "
                      f"kl {float(kl):.2f}", flush=True)
                acc, nacc = 0.0, 0
            if time.time() - last_ck > a.ckpt_seconds:
                checkpoint()
                last_ck = time.time()
        # Latent statistics of posterior samples at the native size -> scaling/shift of vae/config.json.
        vae.eval()
        zs = []
        with torch.no_grad():
            for k in range(4 if a.tiny else 16):
                gen = torch.Generator().manual_seed(a.seed * 7 + k)
                idx, _ = subset_idx(gen, 8 if a.tiny else 64)
                with amp():
                    mean, logvar = vae.encode_moments(data.render(idx, 64 if a.tiny else 256, gen, device=dev))
                zs.append((mean.float() + torch.exp(0.5 * logvar.float()) * torch.randn_like(mean.float())).cpu())
        zs = torch.cat(zs)
        S["stats"] = {"shift_factor": float(zs.mean()), "scaling_factor": float(1.0 / zs.std())}
        S["stage"] = "dit"
        print(f"[vae] done: {S['vae_step']} steps; latent stats {S['stats']}", flush=True)
        checkpoint()
        last_ck = time.time()

    # ---------------- stage 2: transformer ----------------
    vae.eval()
    for p in vae.parameters():
        p.requires_grad_(False)
    shift, scale = S["stats"]["shift_factor"], S["stats"]["scaling_factor"]
    dit_budget = a.dit_minutes * 60
    rope_cache = {}
    T = embeds.shape[1]
    txt_ids = torch.zeros(T, 3, device=dev)

    def encode(idx, side, gen):
        x = data.render(idx, side, gen, device=dev)
        with torch.no_grad(), amp():
            mean, logvar = vae.encode_moments(x)
        return mean.float(), logvar.float()

    pools = {}  # side -> [mean, logvar, rows]: VAE posteriors of rendered captions, renewed a little every step

    def pooled_batch(side, bs, gen):
        """bs posteriors drawn from the pool of this size after renewing pool_refresh * bs of them (all seeded)."""
        if side not in pools:
            n = a.pool * bs
            parts = []
            for i in range(0, n, bs):
                idx, rows = subset_idx(gen, min(bs, n - i))
                parts.append((*encode(idx, side, gen), rows.to(dev)))
            pools[side] = [torch.cat([p[j] for p in parts]) for j in range(3)]
        pm, pl, pr = pools[side]
        r = max(1, int(round(a.pool_refresh * bs)))
        idx, rows = subset_idx(gen, r)
        # Distinct slots: with repeated indices an indexed write keeps an unspecified source per element on CUDA,
        # so one slot became an element-wise mix of two images (striped latents) under a third caption's row.
        # That corrupted ~3% of the pool and the samples broke more the longer the pool was used (runs 3-4 of
        # 2026-12-06, tools/train-mini/README.md).
        at = torch.randperm(len(pr), generator=gen)[:r].to(dev)
        pm[at], pl[at] = encode(idx, side, gen)
        pr[at] = rows.to(dev)
        pick = torch.randint(0, len(pr), (bs,), generator=gen).to(dev)
        return pm[pick], pl[pick], pr[pick]
    dit.train()
    acc, nacc = 0.0, 0
    while S["dit_seconds"] < dit_budget and not (a.max_dit_steps and S["dit_step"] >= a.max_dit_steps):
        if out_of_wall():
            checkpoint()
            return 2
        t0 = time.time()
        k = S["dit_step"]
        gen = torch.Generator().manual_seed(a.seed * 2_000_003 + k)
        side = pick_bucket(gen, a.tiny)
        h = w = side // 8
        L = (h // 2) * (w // 2)
        bs = a.batch if a.tiny else max(8, int(round(a.batch * (256 + T) / (L + T))))
        if a.pool:
            mean, logvar, rows = pooled_batch(side, bs, gen)
        else:
            idx, rows = subset_idx(gen, bs)
            mean, logvar = encode(idx, side, gen)
        dgen = torch.Generator(device=dev).manual_seed(a.seed * 3_000_017 + k)
        z = mean + torch.exp(0.5 * logvar) * torch.randn(mean.shape, generator=dgen, device=dev)
        x0 = fm.pack((z - shift) * scale)  # [B, L, 64]
        eps = torch.randn(x0.shape, generator=dgen, device=dev)
        sig = logit_normal_sigma(torch.randn(bs, generator=dgen, device=dev), L)
        xt = (1 - sig[:, None, None]) * x0 + sig[:, None, None] * eps
        guidance = 1.0 + 4.0 * torch.rand(bs, generator=dgen, device=dev)
        if side not in rope_cache:
            rope_cache[side] = fm.rope_tables(torch.cat([txt_ids, fm.img_ids(h, w, dev)], 0), dit.axes)
        lr = a.lr * min(1.0, (k - S["warm_from"] + 1) / max(1, a.warmup))
        if a.cosine:
            lr *= 0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, S["dit_seconds"] / dit_budget)))
        for g_ in dopt.param_groups:
            g_["lr"] = lr
        rows_d = rows.to(dev)
        with amp():
            txt = t5(t5_ids[rows_d]) if t5 is not None else embeds[rows_d]
            pred = dit(xt, txt, pooled[rows_d], sig, guidance, None, None, rope=rope_cache[side])
        loss = F.mse_loss(pred.float(), eps - x0)
        dopt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(dit.parameters(), 1.0)
        dopt.step()
        d = min(a.ema, (1 + k) / (10 + k))
        with torch.no_grad():
            # One fused update over all parameters where torch has it (2.x): per-tensor lerps cost a launch each.
            ep, mp = list(ema.parameters()), [p.detach() for p in dit.parameters()]
            if t5 is not None:
                ep += list(ema_t5.parameters())
                mp += [p.detach() for p in t5.parameters()]
            if hasattr(torch, "_foreach_lerp_"):
                torch._foreach_lerp_(ep, mp, 1 - d)
            else:
                for pe, pm_ in zip(ep, mp):
                    pe.lerp_(pm_, 1 - d)
        if cuda:
            torch.cuda.synchronize()
        S["dit_step"] += 1
        S["dit_seconds"] += time.time() - t0
        acc += float(loss)
        nacc += 1
        if S["dit_step"] % a.log_every == 0:
            log_row(csv_path, ["dit", S["dit_step"], round(S["dit_seconds"], 2), acc / nacc, lr])
            print(f"[dit] step {S['dit_step']} {S['dit_seconds']:.0f}s loss {acc / nacc:.5f} (side {side}, "
                  f"batch {bs})", flush=True)
            acc, nacc = 0.0, 0
        if time.time() - last_ck > a.ckpt_seconds:
            checkpoint()
            last_ck = time.time()
    S["stage"] = "done"
    checkpoint()
    print(f"[done] vae {S['vae_step']} steps / {S['vae_seconds']:.0f}s, transformer {S['dit_step']} steps / "
          f"{S['dit_seconds']:.0f}s, wall {time.time() - t_start:.0f}s", flush=True)


if __name__ == "__main__":
    sys.exit(main() or 0)
