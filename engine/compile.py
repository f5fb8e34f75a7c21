"""torch.compile and CUDA graphs for the per-chunk DiT step.

:func:`compiled_blocks` runs a model's DiT blocks under ``torch.compile`` for the duration
of a ``with`` block. Blocks, not the whole forward: the per-chunk host work (RoPE tables
for the chunk's positions, slot bookkeeping) stays eager and every block of every pass
reuses one graph. The dense attention mask (sdpa) or the Triton kernel's tile lists are
built eagerly before the blocks run.
``mode="reduce-overhead"`` adds CUDA graphs: each forward starts a new cudagraph step,
and KV caches made while the context is active (``engine.kvcache.cache_for``) have their
buffers marked static, so the in-place cache writes live inside the graphs (the buffers
are allocated once and never move).
"""

from __future__ import annotations

import contextlib

import torch

from .attention import resolve_backend

DEFAULT_MODE = "max-autotune-no-cudagraphs"
CUDA_GRAPHS_MODE = "reduce-overhead"


def compile_mode(compile: bool, cuda_graphs: bool) -> str | None:
    """The torch.compile mode for an EngineConfig's flags (None: run eagerly)."""
    if cuda_graphs:
        return CUDA_GRAPHS_MODE
    return DEFAULT_MODE if compile else None


@contextlib.contextmanager
def compiled_blocks(model, mode: str = DEFAULT_MODE):
    """Within the block, ``model.blocks[i]`` run under ``torch.compile(mode=mode)``;
    afterwards they are eager again. ``model``: a WanDiT (anything with ``.blocks``)."""
    import torch._dynamo as dynamo

    graphs = mode == CUDA_GRAPHS_MODE
    dynamo.reset()
    old_limit = dynamo.config.cache_size_limit
    dynamo.config.cache_size_limit = max(old_limit, 64)

    def pre(mod, args, kwargs):
        slots = kwargs.get("cache_slots")
        if slots is not None:  # mask / tile lists built eagerly, outside the compiled blocks
            backend = resolve_backend(model.attention_backend, model.device)
            if backend == "sdpa":
                slots.attend.dense_mask()
            elif backend == "triton":
                slots.attend.triton_block_mask(model.config.dim // model.config.num_heads, model.dtype)
        if graphs:
            torch.compiler.cudagraph_mark_step_begin()

    handle = model.register_forward_pre_hook(pre, with_kwargs=True)
    model.static_cache = graphs
    for blk in model.blocks:
        blk.compile(mode=mode)
    try:
        yield model
    finally:
        for blk in model.blocks:
            blk._compiled_call_impl = None
        handle.remove()
        model.static_cache = False
        dynamo.config.cache_size_limit = old_limit
        dynamo.reset()


@contextlib.contextmanager
def compiled_models(models: list, mode: str | None):
    """Within the block, every model's blocks run compiled in ``mode`` (eagerly when
    ``mode`` is None; models without ``.blocks`` stay eager)."""
    with contextlib.ExitStack() as stack:
        if mode is not None:
            for m in models:
                if hasattr(m, "blocks"):
                    stack.enter_context(compiled_blocks(m, mode))
        yield
