"""The naive baseline: a plain per-chunk Self-Forcing-style loop, as public pipelines run it.

What the engine's ``ar`` path is compared against in ``bench/throughput.py``. It uses the
*same weights* (the modules of a :class:`engine.models.wan.WanDiT`: projections, norms,
FFN, modulation tables, cross-attention, head, patch embedding, and the VAE) but none of
the engine's fast path: no fixed-slot KV cache, no frame-visibility attention backends,
no fused kernels, no streaming decoder. Per chunk of ``chunk_frames`` latent frames:

- for each of the sampler's steps: one full DiT forward over the chunk whose
  self-attention reads ``torch.cat`` of the clean keys/values of the visible past frames
  (a Python list of per-frame tensors per layer, Self-Forcing's list cache) plus the
  chunk's own, through ``F.scaled_dot_product_attention`` with no mask; predict x0,
  re-noise to the next sigma with fresh noise;
- then one more forward of the clean chunk at t = 0 whose keys/values are appended to
  the list cache (skipped after the last chunk, as in the engine);
- RoPE as original Wan computes it (complex float64), the time embedding in float64.

The whole video is decoded at the end with ``vae.decode`` (Self-Forcing's
``inference.py``), so the baseline's time to first frame is its total time.

Semantics equal the engine's ``ar`` rollout (block-causal chunks, noise addressed by
(seed, stream, position) through :func:`engine_kernels.noise.frame_noise`, sink frames + a
bounded window for long videos), so the two must produce the same video within floating
point tolerance; ``bench/throughput.py`` checks that.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from engine_kernels.noise import frame_noise

INITIAL_NOISE_STREAM = 0  # same addressing as the engine: stream 0 initial noise, 1 + i after step i


def few_step_sigmas(timesteps, shift: float) -> list[float]:
    """Shifted sigmas of a few-step schedule plus a terminal 0 (float64 arithmetic)."""
    out = []
    for t in timesteps:
        s = float(t) / 1000.0
        out.append(shift * s / (1.0 + (shift - 1.0) * s))
    return out + [0.0]


def _sinusoid(t: float, dim: int, device) -> torch.Tensor:
    """Wan's sinusoidal time embedding [1, dim] (cos half first), in float64."""
    half = dim // 2
    freqs = torch.pow(10000.0, -torch.arange(half, dtype=torch.float64, device=device) / half)
    args = torch.tensor([t], dtype=torch.float64, device=device)[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


def _rope_freqs(head_dim: int, max_pos: int, theta: float, device) -> list[torch.Tensor]:
    """Original Wan's complex RoPE tables (time, height, width), each [max_pos, d_axis/2] complex128."""
    d = head_dim
    out = []
    for dim in (d - 4 * (d // 6), 2 * (d // 6), 2 * (d // 6)):
        inv = 1.0 / torch.pow(theta, torch.arange(0, dim, 2, dtype=torch.float64, device=device)[: dim // 2] / dim)
        ang = torch.outer(torch.arange(max_pos, dtype=torch.float64, device=device), inv)
        out.append(torch.polar(torch.ones_like(ang), ang))
    return out


class NaiveSelfForcing:
    """The plain per-chunk loop over a WanDiT's weights (see the module docstring).

    chunk_frames / sink_frames / window_frames: the same attention window the engine
    uses (``window_frames=None``: every past frame stays visible).
    """

    def __init__(self, model, vae, *, chunk_frames: int = 3, sink_frames: int = 0, window_frames: int | None = None):
        cfg = model.config
        if cfg.is_i2v:
            raise ValueError("the naive baseline covers text-to-video models only")
        self.model, self.vae, self.cfg = model, vae, cfg
        self.chunk_frames, self.sink_frames, self.window_frames = chunk_frames, sink_frames, window_frames
        self.device, self.dtype = model.device, model.dtype

    # -- one DiT forward ---------------------------------------------------------------
    def _rope(self, x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
        """x [B, S, H, Dh] rotated by complex freqs [S, Dh/2] (float64 complex, Wan style)."""
        B, S, H, Dh = x.shape
        xc = torch.view_as_complex(x.to(torch.float64).reshape(B, S, H, Dh // 2, 2))
        return torch.view_as_real(xc * freqs[None, :, None, :]).flatten(3).to(x.dtype)

    def _freqs(self, positions: list[int], gh: int, gw: int) -> torch.Tensor:
        ft, fh, fw = self._tables
        n = len(positions)
        pos = torch.tensor(positions, device=self.device)
        f = torch.cat([
            ft[pos].view(n, 1, 1, -1).expand(n, gh, gw, -1),
            fh[:gh].view(1, gh, 1, -1).expand(n, gh, gw, -1),
            fw[:gw].view(1, 1, gw, -1).expand(n, gh, gw, -1),
        ], dim=-1)
        return f.reshape(n * gh * gw, -1)

    def forward(self, x: torch.Tensor, t: float, positions: list[int], cross_kv: list, cache: list[list],
                visible: list[int], store: bool) -> torch.Tensor:
        """Velocity [1, C, n, h, w] of chunk latents x at timestep t. ``cache[layer]`` is a
        list of (position, k, v) of past clean frames; ``visible`` the positions it may read;
        ``store``: append this pass's keys/values to the cache (the clean re-run)."""
        m, cfg = self.model, self.cfg
        D, H = cfg.dim, cfg.num_heads
        Dh = D // H
        eps = cfg.eps
        _, _, n, h, w = x.shape
        gh, gw = h // cfg.patch_size[1], w // cfg.patch_size[2]
        tpf = gh * gw
        freqs = self._freqs(positions, gh, gw)

        e = m.time_embedding(_sinusoid(t, cfg.freq_dim, self.device).to(self.dtype))  # [1, D]
        e0 = m.time_projection(e).float().view(1, 6, D)
        tokens = m.patch_embedding(x.to(self.dtype)).flatten(2).transpose(1, 2)  # [1, S, D]
        for i, blk in enumerate(m.blocks):
            mod = blk.modulation.float() + e0  # [1, 6, D]
            shift, scale, gate, c_shift, c_scale, c_gate = [c for c in mod.chunk(6, dim=1)]
            a = blk.self_attn
            hs = (F.layer_norm(tokens.float(), (D,), eps=eps) * (1 + scale) + shift).to(self.dtype)
            q = self._rope(a.norm_q(a.q(hs)).view(1, -1, H, Dh), freqs)
            k = self._rope(a.norm_k(a.k(hs)).view(1, -1, H, Dh), freqs)
            v = a.v(hs).view(1, -1, H, Dh)
            past = [(pk, pv) for p, pk, pv in cache[i] if p in visible]
            k_all = torch.cat([pk for pk, _ in past] + [k], dim=1)  # rebuilt every pass
            v_all = torch.cat([pv for _, pv in past] + [v], dim=1)
            y = F.scaled_dot_product_attention(q.transpose(1, 2), k_all.transpose(1, 2), v_all.transpose(1, 2))
            y = a.o(y.transpose(1, 2).flatten(2))
            tokens = (tokens.float() + y.float() * gate).to(self.dtype)
            if store:
                for f, p in enumerate(positions):
                    cache[i].append((p, k[:, f * tpf:(f + 1) * tpf], v[:, f * tpf:(f + 1) * tpf]))
            tokens = tokens + blk.cross_attn(blk.norm3(tokens.float()).to(self.dtype), cross_kv[i])
            hs = (F.layer_norm(tokens.float(), (D,), eps=eps) * (1 + c_scale) + c_shift).to(self.dtype)
            tokens = (tokens.float() + blk.ffn(hs).float() * c_gate).to(self.dtype)
        hm = m.head.modulation.float() + e.float()[:, None]  # [1, 2, D]
        hshift, hscale = hm.chunk(2, dim=1)
        out = m.head.head((F.layer_norm(tokens.float(), (D,), eps=eps) * (1 + hscale) + hshift).to(self.dtype))
        pt, ph, pw = cfg.patch_size
        out = out.view(n // pt, gh, gw, pt, ph, pw, cfg.out_channels)
        return torch.einsum("fhwpqrc->cfphqwr", out).reshape(1, cfg.out_channels, n, h, w)

    # -- the loop ---------------------------------------------------------------------
    @torch.no_grad()
    def rollout(self, text_embeds: torch.Tensor, num_latent_frames: int, latent_hw: tuple[int, int], *,
                timesteps=(1000.0, 750.0, 500.0, 250.0), shift: float = 5.0, seed: int = 0) -> torch.Tensor:
        """Clean latents [1, C, F, h, w] (float32) of the whole video."""
        cfg, dev = self.cfg, self.device
        h, w = latent_hw
        C = cfg.out_channels
        self._tables = _rope_freqs(cfg.head_dim, max(num_latent_frames, 1024), cfg.rope_theta, dev)
        ctx = self.model.prepare_context(text_embeds.to(dev, self.dtype))  # cross-attention K/V, once
        sig = few_step_sigmas(timesteps, shift)
        cache: list[list] = [[] for _ in range(cfg.num_layers)]
        chunks = [list(range(s, min(s + self.chunk_frames, num_latent_frames)))
                  for s in range(0, num_latent_frames, self.chunk_frames)]
        out = []
        for ci, pos in enumerate(chunks):
            s0 = pos[0]
            visible = {p for p in range(s0) if p < self.sink_frames or self.window_frames is None
                       or p >= s0 - self.window_frames}
            x = frame_noise(seed, pos, (1, C, h, w), stream=INITIAL_NOISE_STREAM, device=dev)
            for i in range(len(sig) - 1):
                v = self.forward(x, sig[i] * 1000.0, pos, ctx.cross_kv, cache, visible, store=False)
                x0 = x - sig[i] * v.float()
                if i + 2 < len(sig):
                    eps = frame_noise(seed, pos, (1, C, h, w), stream=1 + i, device=dev)
                    x = (1 - sig[i + 1]) * x0 + sig[i + 1] * eps
                else:
                    x = x0
            out.append(x)
            if ci + 1 < len(chunks):
                self.forward(x, 0.0, pos, ctx.cross_kv, cache, visible, store=True)  # clean re-run -> cache
                nxt = chunks[ci + 1][0]
                if self.window_frames is not None:  # evict frames no later chunk can see
                    for layer in cache:
                        layer[:] = [e for e in layer if e[0] < self.sink_frames or e[0] >= nxt - self.window_frames]
        return torch.cat(out, dim=2)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents [1, 16, F, h, w] -> uint8 frames [T, H, W, 3] with one ``vae.decode``."""
        vcfg = self.vae.config
        zd = vcfg.z_dim
        mean = torch.tensor(vcfg.latents_mean, device=latents.device).view(1, zd, 1, 1, 1)
        std = torch.tensor(vcfg.latents_std, device=latents.device).view(1, zd, 1, 1, 1)
        param = next(self.vae.parameters())
        z = (latents.float() * std + mean).to(param.device, param.dtype)
        video = self.vae.decode(z, return_dict=False)[0]
        x = video.float().clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8)
        return x[0].permute(1, 2, 3, 0).contiguous().cpu().numpy()

    def generate(self, text_embeds, num_latent_frames, latent_hw, **kw):
        """Latents, then uint8 frames of the whole video (decoded at the end)."""
        lat = self.rollout(text_embeds, num_latent_frames, latent_hw, **kw)
        return lat, self.decode(lat)

