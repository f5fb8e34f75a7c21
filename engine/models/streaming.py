"""The streaming-decoder contract of the engine's latent decoders (the Wan VAE's
``StreamingDecoder``, ``TAEHVStreamingDecoder`` -- also behind the light decoders --,
``CogVideoXClipDecoder``, the multi-view ``MultiViewDecoder``): the runtime's decode jobs
call ``reset`` and ``decode_chunk``; :class:`ChunkDecoder` states it and gives
``decode_all`` once. A user's own decoder factory may return any object with those two
methods (the runtime duck-types it)."""

from __future__ import annotations

import abc

import torch


class ChunkDecoder(abc.ABC):
    """The streaming-decoder contract the runtime's decode jobs use: :meth:`reset` starts a
    new video, :meth:`decode_chunk` decodes its next latent frames [B, C, f, h, w] (in the
    DiT's latent space) to pixels [B, 3, t, H, W] in [-1, 1] (t = 4f - 3 for the first chunk
    after a reset, 4f after), carrying the causal state. ``whole_clip``: a decode job must
    hand a clip's latents in one call (the decoder cannot continue another job's chunk)."""

    whole_clip = False

    @abc.abstractmethod
    def reset(self) -> None:
        """Forget the causal state: the next chunk starts a new video."""

    @abc.abstractmethod
    def decode_chunk(self, latents: torch.Tensor) -> torch.Tensor:
        """The next latent frames -> their pixels (see the class docstring)."""

    def decode_all(self, latents: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        """``reset()``, one whole video [B, C, F, h, w] -> [B, 3, 4F - 3, H, W], ``reset()``."""
        self.reset()
        out = self.decode_chunk(latents, *args, **kwargs)
        self.reset()
        return out
