"""The one table of noise streams (pure Python).

Noise for a latent frame is addressed by (seed, stream, position) (:func:`engine_kernels.noise.frame_noise`).
A denoise job owns the block of streams ``noise_stream * 1000 ... + 999`` (``Job.noise_stream``:
MiLA's coarse jobs use block 1 so an anchor's coarse and fine noise differ); within a block:

==========================  ==========  ===========================================================
name                        offset      what
==========================  ==========  ===========================================================
:data:`INITIAL`             0           a generated frame's initial noise, by its position
:func:`renoise` (i)         1 + i       few-step re-noising after step ``i``, by position
:data:`FRESH_SHARE`         998         the fresh share mixed into interpolated noise (``noise_rho``)
:data:`UNIFIED`             999         unified clip noise: the k-th generated frame of every clip
==========================  ==========  ===========================================================

Interpolated noise (``noise="interp"``) reads the planning frames' initial noise of block 0
for jobs of block 0, and of the job's own block otherwise.
"""

from __future__ import annotations

BLOCK = 1000
INITIAL = 0
FRESH_SHARE = 998
UNIFIED = 999


def stream(block: int, offset: int) -> int:
    """The stream id of ``offset`` within job noise block ``block``."""
    return block * BLOCK + offset


def renoise(step: int) -> int:
    """Offset of the few-step re-noising drawn after sampler step ``step``."""
    return 1 + step
