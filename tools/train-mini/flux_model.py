"""PyTorch modules with FLUX.1-dev's architecture and diffusers/transformers parameter names.

Written from the project's FLUX spec (docs/FLUX_SPEC.md) and the TS graph builders in
engines/compiler/flux/*.ts, so `state_dict()` is exactly what our TS loader reads:
  - FluxTransformer2DModel (guidance embedding, double + single stream blocks, 3-axis interleaved RoPE,
    AdaLayerNormContinuous output with (scale, shift) order),
  - AutoencoderKL (encoder + decoder, mid-block single-head attention, GroupNorm eps 1e-6, no quant convs),
  - CLIPTextModel (causal, quick_gelu, pooled at argmax(ids)) and T5EncoderModel (relative position bias, gated GELU),
    used frozen to run flux-tiny's text encoders.
Runs on torch 1.13 (no F.scaled_dot_product_attention: falls back to explicit softmax) and torch 2.x.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def sdpa(q, k, v, bias=None, scale=None):
    """Attention over [B, H, S, D]; softmax in fp32 when falling back."""
    if hasattr(F, "scaled_dot_product_attention") and bias is None and scale is None:
        return F.scaled_dot_product_attention(q, k, v)
    s = scale if scale is not None else 1.0 / math.sqrt(q.shape[-1])
    w = torch.matmul(q, k.transpose(-1, -2)) * s
    if bias is not None:
        w = w + bias
    w = torch.softmax(w.float(), dim=-1).to(v.dtype)
    return torch.matmul(w, v)


def gelu_tanh(x):
    return F.gelu(x, approximate="tanh")


# ----------------------------------------------------------------------------------------------------------------
# Transformer
# ----------------------------------------------------------------------------------------------------------------

def timestep_sinusoid(t, dim=256):
    """diffusers Timesteps(dim, flip_sin_to_cos=True, downscale_freq_shift=0): [cos(a), sin(a)], a = t·f_k."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    a = t.float()[:, None] * freqs[None, :]
    return torch.cat([torch.cos(a), torch.sin(a)], dim=-1)


class Mlp2(nn.Module):
    """linear_1 -> SiLU -> linear_2 (TimestepEmbedding / PixArtAlphaTextProjection)."""

    def __init__(self, cin, dim):
        super().__init__()
        self.linear_1 = nn.Linear(cin, dim)
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, x):
        return self.linear_2(F.silu(self.linear_1(x)))


class TimeTextEmbed(nn.Module):
    def __init__(self, dim, pooled_dim, guidance):
        super().__init__()
        self.timestep_embedder = Mlp2(256, dim)
        if guidance:
            self.guidance_embedder = Mlp2(256, dim)
        self.text_embedder = Mlp2(pooled_dim, dim)
        self.guidance = guidance

    def forward(self, timestep, guidance, pooled):
        dt = self.timestep_embedder.linear_1.weight.dtype
        temb = self.timestep_embedder(timestep_sinusoid(timestep * 1000.0).to(dt))
        if self.guidance:
            temb = temb + self.guidance_embedder(timestep_sinusoid(guidance * 1000.0).to(dt))
        return temb + self.text_embedder(pooled)


class RMSNorm(nn.Module):
    def __init__(self, dim, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        xf = x.float()
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (y * self.weight.float()).to(x.dtype)


def layer_norm(x, eps=1e-6):
    return F.layer_norm(x.float(), (x.shape[-1],), eps=eps).to(x.dtype)


def rope_tables(ids, axes_dims, theta=10000.0):
    """ids [S, 3] -> cos, sin [S, sum(axes)], each frequency repeated twice (interleaved pairs), float32."""
    cos, sin = [], []
    pos_all = ids.double()
    for a, d in enumerate(axes_dims):
        freqs = 1.0 / (theta ** (torch.arange(0, d, 2, dtype=torch.float64, device=ids.device)[: d // 2] / d))
        ang = pos_all[:, a][:, None] * freqs[None, :]
        cos.append(torch.cos(ang).repeat_interleave(2, dim=1).float())
        sin.append(torch.sin(ang).repeat_interleave(2, dim=1).float())
    return torch.cat(cos, -1), torch.cat(sin, -1)


def apply_rope(x, cos, sin):
    """x [B, H, S, D]; out_2j = x_2j cos - x_2j+1 sin, out_2j+1 = x_2j+1 cos + x_2j sin (fp32)."""
    xf = x.float()
    pairs = xf.reshape(*xf.shape[:-1], -1, 2)
    rot = torch.stack([-pairs[..., 1], pairs[..., 0]], dim=-1).flatten(-2)
    return (xf * cos[None, None] + rot * sin[None, None]).to(x.dtype)


class FeedForward(nn.Module):
    """net.0.proj (dim -> 4dim), GELU tanh, net.2 (4dim -> dim)."""

    def __init__(self, dim):
        super().__init__()
        proj = nn.Module()
        proj.proj = nn.Linear(dim, 4 * dim)
        self.net = nn.ModuleList([proj, nn.Identity(), nn.Linear(4 * dim, dim)])

    def forward(self, x):
        return self.net[2](gelu_tanh(self.net[0].proj(x)))


class AdaLinear(nn.Module):
    def __init__(self, dim, n):
        super().__init__()
        self.linear = nn.Linear(dim, n * dim)


class DoubleAttention(nn.Module):
    def __init__(self, dim, heads, head_dim):
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(dim, dim)
        self.to_k = nn.Linear(dim, dim)
        self.to_v = nn.Linear(dim, dim)
        self.norm_q = RMSNorm(head_dim)
        self.norm_k = RMSNorm(head_dim)
        self.add_q_proj = nn.Linear(dim, dim)
        self.add_k_proj = nn.Linear(dim, dim)
        self.add_v_proj = nn.Linear(dim, dim)
        self.norm_added_q = RMSNorm(head_dim)
        self.norm_added_k = RMSNorm(head_dim)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim), nn.Identity()])
        self.to_add_out = nn.Linear(dim, dim)


class SingleAttention(nn.Module):
    def __init__(self, dim, heads, head_dim):
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(dim, dim)
        self.to_k = nn.Linear(dim, dim)
        self.to_v = nn.Linear(dim, dim)
        self.norm_q = RMSNorm(head_dim)
        self.norm_k = RMSNorm(head_dim)


def _heads(x, h):
    b, s, d = x.shape
    return x.view(b, s, h, d // h).transpose(1, 2)  # [B, H, S, hd]


def _merge(x):
    b, h, s, d = x.shape
    return x.transpose(1, 2).reshape(b, s, h * d)


class DoubleBlock(nn.Module):
    def __init__(self, dim, heads, head_dim):
        super().__init__()
        self.norm1 = AdaLinear(dim, 6)
        self.norm1_context = AdaLinear(dim, 6)
        self.attn = DoubleAttention(dim, heads, head_dim)
        self.ff = FeedForward(dim)
        self.ff_context = FeedForward(dim)

    def forward(self, x, ctx, temb, cos, sin):
        st = F.silu(temb)
        m = self.norm1.linear(st)[:, None, :].chunk(6, dim=-1)
        c = self.norm1_context.linear(st)[:, None, :].chunk(6, dim=-1)
        xn = layer_norm(x) * (1 + m[1]) + m[0]
        cn = layer_norm(ctx) * (1 + c[1]) + c[0]
        a, h = self.attn, self.attn.heads
        q = a.norm_q(_heads(a.to_q(xn), h))
        k = a.norm_k(_heads(a.to_k(xn), h))
        v = _heads(a.to_v(xn), h)
        cq = a.norm_added_q(_heads(a.add_q_proj(cn), h))
        ck = a.norm_added_k(_heads(a.add_k_proj(cn), h))
        cv = _heads(a.add_v_proj(cn), h)
        Q = apply_rope(torch.cat([cq, q], 2), cos, sin)
        K = apply_rope(torch.cat([ck, k], 2), cos, sin)
        V = torch.cat([cv, v], 2)
        att = _merge(sdpa(Q, K, V))
        t = ctx.shape[1]
        ca, xa = att[:, :t], att[:, t:]
        x = x + m[2] * a.to_out[0](xa)
        x = x + m[5] * self.ff(layer_norm(x) * (1 + m[4]) + m[3])
        ctx = ctx + c[2] * a.to_add_out(ca)
        ctx = ctx + c[5] * self.ff_context(layer_norm(ctx) * (1 + c[4]) + c[3])
        return x, ctx


class SingleBlock(nn.Module):
    def __init__(self, dim, heads, head_dim):
        super().__init__()
        self.norm = AdaLinear(dim, 3)
        self.proj_mlp = nn.Linear(dim, 4 * dim)
        self.attn = SingleAttention(dim, heads, head_dim)
        self.proj_out = nn.Linear(5 * dim, dim)

    def forward(self, z, temb, cos, sin):
        shift, scale, gate = self.norm.linear(F.silu(temb))[:, None, :].chunk(3, dim=-1)
        zn = layer_norm(z) * (1 + scale) + shift
        mlp = gelu_tanh(self.proj_mlp(zn))
        a, h = self.attn, self.attn.heads
        q = apply_rope(a.norm_q(_heads(a.to_q(zn), h)), cos, sin)
        k = apply_rope(a.norm_k(_heads(a.to_k(zn), h)), cos, sin)
        v = _heads(a.to_v(zn), h)
        att = _merge(sdpa(q, k, v))
        return z + gate * self.proj_out(torch.cat([att, mlp], -1))


class NormOut(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.linear = nn.Linear(dim, 2 * dim)

    def forward(self, x, temb):
        scale, shift = self.linear(F.silu(temb))[:, None, :].chunk(2, dim=-1)  # scale first (diffusers)
        return layer_norm(x) * (1 + scale) + shift


class FluxTransformer2DModel(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = dict(config)
        heads, hd = config["num_attention_heads"], config["attention_head_dim"]
        dim = heads * hd
        cin = config["in_channels"]
        cout = config.get("out_channels") or cin
        self.axes = list(config.get("axes_dims_rope", [16, 56, 56]))
        assert sum(self.axes) == hd, "axes_dims_rope must sum to attention_head_dim"
        self.x_embedder = nn.Linear(cin, dim)
        self.context_embedder = nn.Linear(config["joint_attention_dim"], dim)
        self.time_text_embed = TimeTextEmbed(dim, config["pooled_projection_dim"], config.get("guidance_embeds", False))
        self.transformer_blocks = nn.ModuleList([DoubleBlock(dim, heads, hd) for _ in range(config["num_layers"])])
        self.single_transformer_blocks = nn.ModuleList(
            [SingleBlock(dim, heads, hd) for _ in range(config["num_single_layers"])])
        self.norm_out = NormOut(dim)
        self.proj_out = nn.Linear(dim, cout)

    def forward(self, hidden_states, encoder_hidden_states, pooled_projections, timestep, guidance, img_ids, txt_ids,
                rope=None):
        """hidden [B, L, 64], text [B, T, Dj], pooled [B, Dp], timestep/guidance [B] (sigma, scale), ids [L|T, 3]."""
        x = self.x_embedder(hidden_states)
        temb = self.time_text_embed(timestep, guidance, pooled_projections)
        ctx = self.context_embedder(encoder_hidden_states)
        if rope is None:
            rope = rope_tables(torch.cat([txt_ids, img_ids], 0), self.axes)
        cos, sin = rope
        for blk in self.transformer_blocks:
            x, ctx = blk(x, ctx, temb, cos, sin)
        t = ctx.shape[1]
        z = torch.cat([ctx, x], 1)
        for blk in self.single_transformer_blocks:
            z = blk(z, temb, cos, sin)
        x = z[:, t:]
        return self.proj_out(self.norm_out(x, temb))


# ----------------------------------------------------------------------------------------------------------------
# VAE
# ----------------------------------------------------------------------------------------------------------------

class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in float32 whatever the autocast policy (CPU autocast in torch 1.13 has none for it)."""

    def forward(self, x):
        return F.group_norm(x.float(), self.num_groups, self.weight.float(), self.bias.float(), self.eps).to(x.dtype)


class Resnet(nn.Module):
    def __init__(self, cin, cout, groups):
        super().__init__()
        self.norm1 = GroupNorm32(groups, cin, eps=1e-6)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2 = GroupNorm32(groups, cout, eps=1e-6)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return (self.conv_shortcut(x) if self.conv_shortcut is not None else x) + h


class MidAttention(nn.Module):
    """Single-head attention over h·w tokens with a residual (diffusers Attention in the VAE mid block)."""

    def __init__(self, c, groups):
        super().__init__()
        self.group_norm = GroupNorm32(groups, c, eps=1e-6)
        self.to_q = nn.Linear(c, c)
        self.to_k = nn.Linear(c, c)
        self.to_v = nn.Linear(c, c)
        self.to_out = nn.ModuleList([nn.Linear(c, c), nn.Identity()])

    def forward(self, x):
        b, c, h, w = x.shape
        t = self.group_norm(x).view(b, c, h * w).transpose(1, 2)  # [B, hw, C]
        q, k, v = (m(t)[:, None] for m in (self.to_q, self.to_k, self.to_v))
        o = sdpa(q, k, v)[:, 0]
        o = self.to_out[0](o).transpose(1, 2).reshape(b, c, h, w)
        return x + o


class MidBlock(nn.Module):
    def __init__(self, c, groups, attention=True):
        super().__init__()
        self.resnets = nn.ModuleList([Resnet(c, c, groups), Resnet(c, c, groups)])
        self.attentions = nn.ModuleList([MidAttention(c, groups)]) if attention else nn.ModuleList()

    def forward(self, x):
        x = self.resnets[0](x)
        if len(self.attentions):
            x = self.attentions[0](x)
        return self.resnets[1](x)


class Down(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, stride=2, padding=0)

    def forward(self, x):
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Up(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Encoder(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        ch, g, n = cfg["block_out_channels"], cfg["norm_num_groups"], cfg["layers_per_block"]
        self.conv_in = nn.Conv2d(cfg.get("in_channels", 3), ch[0], 3, padding=1)
        self.down_blocks = nn.ModuleList()
        prev = ch[0]
        for i, c in enumerate(ch):
            blk = nn.Module()
            blk.resnets = nn.ModuleList([Resnet(prev if j == 0 else c, c, g) for j in range(n)])
            if i < len(ch) - 1:
                blk.downsamplers = nn.ModuleList([Down(c)])
            self.down_blocks.append(blk)
            prev = c
        self.mid_block = MidBlock(ch[-1], g, cfg.get("mid_block_add_attention", True))
        self.conv_norm_out = GroupNorm32(g, ch[-1], eps=1e-6)
        self.conv_out = nn.Conv2d(ch[-1], 2 * cfg["latent_channels"], 3, padding=1)

    def forward(self, x):
        x = self.conv_in(x)
        for blk in self.down_blocks:
            for r in blk.resnets:
                x = r(x)
            if hasattr(blk, "downsamplers"):
                x = blk.downsamplers[0](x)
        x = self.mid_block(x)
        return self.conv_out(F.silu(self.conv_norm_out(x)))


class Decoder(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        ch, g, n = list(reversed(cfg["block_out_channels"])), cfg["norm_num_groups"], cfg["layers_per_block"]
        self.conv_in = nn.Conv2d(cfg["latent_channels"], ch[0], 3, padding=1)
        self.mid_block = MidBlock(ch[0], g, cfg.get("mid_block_add_attention", True))
        self.up_blocks = nn.ModuleList()
        prev = ch[0]
        for i, c in enumerate(ch):
            blk = nn.Module()
            blk.resnets = nn.ModuleList([Resnet(prev if j == 0 else c, c, g) for j in range(n + 1)])
            if i < len(ch) - 1:
                blk.upsamplers = nn.ModuleList([Up(c)])
            self.up_blocks.append(blk)
            prev = c
        self.conv_norm_out = GroupNorm32(g, ch[-1], eps=1e-6)
        self.conv_out = nn.Conv2d(ch[-1], cfg.get("out_channels", 3), 3, padding=1)

    def forward(self, z):
        x = self.mid_block(self.conv_in(z))
        for blk in self.up_blocks:
            for r in blk.resnets:
                x = r(x)
            if hasattr(blk, "upsamplers"):
                x = blk.upsamplers[0](x)
        return self.conv_out(F.silu(self.conv_norm_out(x)))


class AutoencoderKL(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = dict(config)
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)

    def encode_moments(self, x):
        """x in [-1, 1], [B, 3, H, W] -> mean, logvar [B, C, H/8, W/8] (logvar clamped like diffusers)."""
        m = self.encoder(x)
        mean, logvar = m.chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def decode(self, z):
        return self.decoder(z)


# ----------------------------------------------------------------------------------------------------------------
# Text encoders (frozen)
# ----------------------------------------------------------------------------------------------------------------

class ClipLayer(nn.Module):
    def __init__(self, d, ff, heads, eps, act):
        super().__init__()
        self.heads = heads
        self.act = act
        self.layer_norm1 = nn.LayerNorm(d, eps=eps)
        self.layer_norm2 = nn.LayerNorm(d, eps=eps)
        sa = nn.Module()
        sa.q_proj, sa.k_proj, sa.v_proj, sa.out_proj = (nn.Linear(d, d) for _ in range(4))
        self.self_attn = sa
        mlp = nn.Module()
        mlp.fc1 = nn.Linear(d, ff)
        mlp.fc2 = nn.Linear(ff, d)
        self.mlp = mlp

    def forward(self, x, mask):
        h = self.layer_norm1(x)
        sa = self.self_attn
        q, k, v = (_heads(m(h), self.heads) for m in (sa.q_proj, sa.k_proj, sa.v_proj))
        x = x + sa.out_proj(_merge(sdpa(q, k, v, bias=mask, scale=1.0 / math.sqrt(q.shape[-1]))))
        h = self.mlp.fc1(self.layer_norm2(x))
        if self.act == "quick_gelu":
            h = h * torch.sigmoid(1.702 * h)
        elif self.act == "gelu":
            h = F.gelu(h)
        else:
            raise ValueError(f"unsupported CLIP hidden_act {self.act}")
        return x + self.mlp.fc2(h)


class CLIPTextModel(nn.Module):
    """Parameter names without the `text_model.` prefix (as flux-tiny's file stores them)."""

    def __init__(self, cfg):
        super().__init__()
        d = cfg["hidden_size"]
        self.eos_token_id = cfg.get("eos_token_id", 2)
        emb = nn.Module()
        emb.token_embedding = nn.Embedding(cfg["vocab_size"], d)
        emb.position_embedding = nn.Embedding(cfg["max_position_embeddings"], d)
        self.embeddings = emb
        enc = nn.Module()
        enc.layers = nn.ModuleList([
            ClipLayer(d, cfg["intermediate_size"], cfg["num_attention_heads"], cfg["layer_norm_eps"], cfg["hidden_act"])
            for _ in range(cfg["num_hidden_layers"])])
        self.encoder = enc
        self.final_layer_norm = nn.LayerNorm(d, eps=cfg["layer_norm_eps"])

    def forward(self, ids):
        """ids [B, 77] int64 -> pooled [B, d] (final LN hidden state at the EOS position)."""
        b, s = ids.shape
        x = self.embeddings.token_embedding(ids) + self.embeddings.position_embedding(
            torch.arange(s, device=ids.device))[None]
        mask = torch.full((s, s), float("-inf"), device=ids.device).triu(1)
        for layer in self.encoder.layers:
            x = layer(x, mask)
        x = self.final_layer_norm(x)
        if self.eos_token_id == 2:  # legacy configs: EOS is the largest id
            pos = ids.argmax(-1)
        else:
            pos = (ids == self.eos_token_id).int().argmax(-1)
        return x[torch.arange(b, device=ids.device), pos]


class T5LayerNorm(nn.Module):
    def __init__(self, d, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x):
        var = x.float().pow(2).mean(-1, keepdim=True)
        return self.weight * (x.float() * torch.rsqrt(var + self.eps)).to(x.dtype)


def t5_buckets(rel, num_buckets, max_distance):
    """Bidirectional relative-position buckets (encoder)."""
    num_buckets //= 2
    out = (rel > 0).long() * num_buckets
    rel = rel.abs()
    max_exact = num_buckets // 2
    small = rel < max_exact
    large = max_exact + (torch.log(rel.float() / max_exact) / math.log(max_distance / max_exact)
                         * (num_buckets - max_exact)).long()
    large = torch.minimum(large, torch.full_like(large, num_buckets - 1))
    return out + torch.where(small, rel, large)


class T5EncoderModel(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        d, heads, dkv = cfg["d_model"], cfg["num_heads"], cfg["d_kv"]
        eps = cfg["layer_norm_epsilon"]
        self.heads, self.dkv = heads, dkv
        self.nb, self.maxd = cfg["relative_attention_num_buckets"], cfg["relative_attention_max_distance"]
        self.gated = cfg.get("feed_forward_proj", "relu").startswith("gated")
        self.act = cfg.get("dense_act_fn", "relu")
        self.shared = nn.Embedding(cfg["vocab_size"], d)
        enc = nn.Module()
        enc.block = nn.ModuleList()
        for i in range(cfg["num_layers"]):
            blk = nn.Module()
            l0, l1 = nn.Module(), nn.Module()
            sa = nn.Module()
            sa.q, sa.k, sa.v = (nn.Linear(d, heads * dkv, bias=False) for _ in range(3))
            sa.o = nn.Linear(heads * dkv, d, bias=False)
            if i == 0:
                sa.relative_attention_bias = nn.Embedding(self.nb, heads)
            l0.SelfAttention = sa
            l0.layer_norm = T5LayerNorm(d, eps)
            ff = nn.Module()
            if self.gated:
                ff.wi_0 = nn.Linear(d, cfg["d_ff"], bias=False)
                ff.wi_1 = nn.Linear(d, cfg["d_ff"], bias=False)
            else:
                ff.wi = nn.Linear(d, cfg["d_ff"], bias=False)
            ff.wo = nn.Linear(cfg["d_ff"], d, bias=False)
            l1.DenseReluDense = ff
            l1.layer_norm = T5LayerNorm(d, eps)
            blk.layer = nn.ModuleList([l0, l1])
            enc.block.append(blk)
        enc.final_layer_norm = T5LayerNorm(d, eps)
        self.encoder = enc

    def _act(self, x):
        if self.act in ("gelu_new", "gelu_pytorch_tanh"):
            return gelu_tanh(x)
        if self.act == "relu":
            return F.relu(x)
        if self.act == "gelu":
            return F.gelu(x)
        raise ValueError(f"unsupported T5 act {self.act}")

    def forward(self, ids):
        """ids [B, T] int64 -> last_hidden_state [B, T, d] (no attention mask: pads are attended)."""
        b, s = ids.shape
        x = self.shared(ids)
        pos = torch.arange(s, device=ids.device)
        buckets = t5_buckets(pos[None, :] - pos[:, None], self.nb, self.maxd)  # [q, k]
        rab = self.encoder.block[0].layer[0].SelfAttention.relative_attention_bias
        bias = rab(buckets).permute(2, 0, 1)[None].float()  # [1, H, q, k]
        for blk in self.encoder.block:
            l0, l1 = blk.layer
            sa = l0.SelfAttention
            h = l0.layer_norm(x)
            q, k, v = (_heads(m(h), self.heads) for m in (sa.q, sa.k, sa.v))
            x = x + sa.o(_merge(sdpa(q, k, v, bias=bias, scale=1.0)))
            h = l1.layer_norm(x)
            ff = l1.DenseReluDense
            if self.gated:
                h = self._act(ff.wi_0(h)) * ff.wi_1(h)
            else:
                h = self._act(ff.wi(h))
            x = x + ff.wo(h)
        return self.encoder.final_layer_norm(x)


# ----------------------------------------------------------------------------------------------------------------
# Pipeline helpers (docs/FLUX_SPEC.md §3, §4)
# ----------------------------------------------------------------------------------------------------------------

def pack(z):
    """[B, C, h, w] -> [B, (h/2)(w/2), 4C], feature = ch*4 + dy*2 + dx."""
    b, c, h, w = z.shape
    return z.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)


def unpack(x, h, w):
    """[B, (h/2)(w/2), 4C] -> [B, C, h, w] (h, w = latent size)."""
    b, n, f = x.shape
    c = f // 4
    return x.view(b, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)


def img_ids(h, w, device=None):
    """[(h/2)(w/2), 3] float: (0, row, col) row-major, h/w = latent size."""
    r = torch.arange(h // 2, device=device).float()
    c = torch.arange(w // 2, device=device).float()
    ids = torch.zeros(h // 2, w // 2, 3, device=device)
    ids[..., 1] = r[:, None]
    ids[..., 2] = c[None, :]
    return ids.reshape(-1, 3)


def flux_sigmas(steps, seq_len, base_len=256, max_len=4096, base_shift=0.5, max_shift=1.15):
    """FlowMatchEulerDiscreteScheduler with dynamic shifting: shifted linspace(1, 1/N, N) + terminal 0."""
    m = (max_shift - base_shift) / (max_len - base_len)
    mu = seq_len * m + (base_shift - base_len * m)
    s = [1.0 - i / steps for i in range(steps)]
    out = [math.exp(mu) / (math.exp(mu) + (1.0 / v - 1.0)) for v in s]
    return torch.tensor(out + [0.0], dtype=torch.float32), mu


def load_into(module, tensors, strict=True):
    """Loads {name: tensor} into module; raises listing missing/unexpected names."""
    own = module.state_dict(keep_vars=False)
    missing = [k for k in own if k not in tensors]
    unexpected = [k for k in tensors if k not in own]
    if strict and (missing or unexpected):
        raise KeyError(f"missing {missing[:8]} unexpected {unexpected[:8]}")
    with torch.no_grad():
      for k, v in own.items():
        if k in tensors:
            if tuple(tensors[k].shape) != tuple(v.shape):
                raise ValueError(f"{k}: shape {tuple(tensors[k].shape)} != {tuple(v.shape)}")
            v.copy_(tensors[k].to(v.dtype))
