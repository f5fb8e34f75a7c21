"""Deterministic stand-ins for LongVie's CLIP image encoder and its inputs (no release dependency).

The LongVie release (Vchitect/LongVie) conditions its DiT on CLIP ViT-H/14 tokens of the input
image: ``WanVideoUnit_ImageEmbedderCLIP`` calls ``pipe.image_encoder.encode_image([image])`` with
``image`` = ``pipe.preprocess_image(input_image)`` ([1, 3, H, W] float32 in [-1, 1]) and feeds the
[1, 257, 1280] result to ``dit.img_emb``.  The golden fixtures (tests/release/longvie_golden.py,
tests/fixtures/longvie/) replace that 600M-parameter encoder with :func:`stub_clip_tokens`, a small
deterministic function of the preprocessed image, and shim the DiT's CLIP width 1280 to
``CLIP_WIDTH``.  Our engine's LongVie tests import this module to compute the same tokens.

Also here: the seeded generators of the fixture's input image and control-video keyframes
(:func:`random_uint8_image`, :func:`smooth_uint8_keyframes`; the fixtures store their outputs) and
:func:`control_frame_index`, how a control video's 81 frames are picked from its keyframes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

CLIP_WIDTH = 64  # stands in for the real 1280
NUM_TOKENS = 257  # 1 class token + 16 x 16 patch tokens, as ViT-H/14 at 224 px
GRID = (16, 16)
SEED = 2025


def stub_clip_params(width: int = CLIP_WIDTH, seed: int = SEED):
    """(proj [3, width], bias [width], pos [257, width]) drawn from torch.Generator(seed), in that order."""
    g = torch.Generator().manual_seed(seed)
    proj = torch.randn(3, width, generator=g, dtype=torch.float32) * 0.5
    bias = torch.randn(width, generator=g, dtype=torch.float32) * 0.1
    pos = torch.randn(NUM_TOKENS, width, generator=g, dtype=torch.float32) * 0.5
    return proj, bias, pos


def stub_clip_tokens(img: torch.Tensor, width: int = CLIP_WIDTH, seed: int = SEED, params=None) -> torch.Tensor:
    """img [B, 3, H, W] in [-1, 1] -> tokens [B, 257, width] float32.

    token 0 = mean of the image over H, W; tokens 1..256 = adaptive_avg_pool2d(img, 16x16) in
    row-major order; each 3-vector is mapped by ``tanh(v @ proj + bias + pos[token])``
    (params = stub_clip_params(width, seed), drawn here when not given).
    """
    x = img.to(torch.float32)
    cls = x.mean(dim=(2, 3)).unsqueeze(1)                               # [B, 1, 3]
    grid = F.adaptive_avg_pool2d(x, GRID).flatten(2).transpose(1, 2)     # [B, 256, 3]
    feats = torch.cat([cls, grid], dim=1)                                # [B, 257, 3]
    proj, bias, pos = params if params is not None else stub_clip_params(width, seed)
    return torch.tanh(feats @ proj + bias + pos)


class StubClipEncoder(torch.nn.Module):
    """Drop-in for ``WanImageEncoder`` as the pipeline uses it: ``encode_image(list of [1,3,H,W])``."""

    def __init__(self, width: int = CLIP_WIDTH, seed: int = SEED):
        super().__init__()
        self.width, self.seed = width, seed
        self.params = stub_clip_params(width, seed)  # drawn once, outside the pipeline call
        self.calls = []  # the preprocessed images it was given (for the golden script's records)

    def encode_image(self, videos):
        self.calls.append([v.detach().clone() for v in videos])
        return torch.cat([stub_clip_tokens(v, params=self.params) for v in videos], dim=0)


def random_uint8_image(seed: int, height: int, width: int) -> torch.Tensor:
    """[H, W, 3] uint8, i.i.d. uniform from torch.Generator(seed)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (height, width, 3), generator=g, dtype=torch.int64).to(torch.uint8)


def control_frame_index(frames: int = 81, keyframes: int = 11) -> torch.Tensor:
    """int64 [frames]: frame t of a fixture control video is keyframe t * keyframes // frames
    (piecewise constant in time, so the fixture stores 11 frames per control video, not 81)."""
    return torch.arange(frames, dtype=torch.int64) * keyframes // frames


def smooth_uint8_keyframes(seed: int, keyframes: int, height: int, width: int, grid: tuple = (4, 6)) -> torch.Tensor:
    """[K, H, W, 3] uint8: uniform random [K, 3, *grid] from torch.Generator(seed), bilinear
    (align_corners=True) upsampled to [height, width], times 255, rounded (the fixture stores the result)."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(keyframes, 3, *grid, generator=g, dtype=torch.float32)
    up = F.interpolate(low, size=(height, width), mode="bilinear", align_corners=True)
    return (up * 255.0).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()
