"""CLIP image conditioning for Wan2.1 image-to-video models.

Wan2.1 I2V cross-attends to the penultimate hidden states of a CLIP ViT-H/14 image
encoder (257 tokens x 1280 for 224px inputs), as diffusers' WanImageToVideoPipeline
computes them. :class:`ImageEncoder` loads a transformers ``CLIPVisionModel`` and its
``CLIPImageProcessor`` from a local folder (no downloads).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch


class ImageEncoder:
    """CLIP vision encoder + image processor -> image tokens [B, N, hidden]."""

    def __init__(self, model: torch.nn.Module, processor):
        self.model = model.eval().requires_grad_(False)
        self.processor = processor

    @property
    def dim(self) -> int:
        """Width of the image tokens (1280 for ViT-H/14)."""
        return int(self.model.config.hidden_size)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @classmethod
    def from_folder(cls, path: str | os.PathLike, dtype: torch.dtype = torch.float32,
                    device: str | torch.device = "cpu") -> "ImageEncoder":
        """Load from a diffusers pipeline root (``image_encoder/`` + ``image_processor/``)
        or one folder holding both. Raises FileNotFoundError naming what was looked for."""
        from transformers import CLIPImageProcessor, CLIPVisionModel

        path = os.fspath(path)
        model_dirs = [os.path.join(path, "image_encoder"), path]
        model_dir = next((d for d in model_dirs if os.path.isfile(os.path.join(d, "config.json"))), None)
        proc_dirs = [os.path.join(path, "image_processor"), path]
        proc_dir = next((d for d in proc_dirs if os.path.isfile(os.path.join(d, "preprocessor_config.json"))), None)
        if model_dir is None or proc_dir is None:
            raise FileNotFoundError(
                f"no CLIP image encoder at {path!r}: looked for config.json in {model_dirs} and "
                f"preprocessor_config.json in {proc_dirs} (a Wan2.1 I2V diffusers pipeline root has both)"
            )
        model = CLIPVisionModel.from_pretrained(model_dir, dtype=dtype, local_files_only=True).to(device)
        processor = CLIPImageProcessor.from_pretrained(proc_dir, local_files_only=True)
        return cls(model, processor)

    @torch.no_grad()
    def encode(self, images: Sequence | np.ndarray) -> torch.Tensor:
        """Images (PIL images or uint8 arrays [H, W, 3]) -> penultimate-layer tokens
        [B, N, hidden] in the encoder's dtype."""
        if isinstance(images, np.ndarray) and images.ndim == 3:
            images = [images]
        inputs = self.processor(images=list(images), return_tensors="pt")
        pixels = inputs["pixel_values"].to(self.device, next(self.model.parameters()).dtype)
        out = self.model(pixel_values=pixels, output_hidden_states=True)
        return out.hidden_states[-2]

    @torch.no_grad()
    def encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """Images [B, 3, H, W] in [-1, 1] -> penultimate-layer tokens [B, N, hidden], preprocessed
        as Wan's own CLIP wrapper does it (wan/modules/clip.py ``visual``; LongVie's
        ``WanImageEncoder.encode_image``): the WHOLE image bicubic-resized to the encoder's
        square input (no centre crop, unlike :meth:`encode`), mapped to [0, 1], normalised
        with the processor's mean / std."""
        if not isinstance(pixels, torch.Tensor) or pixels.dim() != 4 or pixels.shape[1] != 3:
            raise ValueError(f"pixels must be [B, 3, H, W] in [-1, 1]; got "
                             f"{tuple(pixels.shape) if isinstance(pixels, torch.Tensor) else type(pixels).__name__}")
        import torch.nn.functional as F

        size = int(self.model.config.image_size)
        dt = next(self.model.parameters()).dtype
        x = F.interpolate(pixels.to(self.device, torch.float32), size=(size, size), mode="bicubic", align_corners=False)
        mean = torch.tensor(self.processor.image_mean, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(self.processor.image_std, device=self.device).view(1, 3, 1, 1)
        x = (x * 0.5 + 0.5 - mean) / std
        return self.model(pixel_values=x.to(dt), output_hidden_states=True).hidden_states[-2]
