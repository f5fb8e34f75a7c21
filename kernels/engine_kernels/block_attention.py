"""Block-sparse attention forward over a frame-level visibility pattern.

Shapes: ``q`` ``[B, H, Sq, D]``; ``k``, ``v`` ``[B, H, Sk, D]``; output ``[B, H, Sq, D]``
in ``q.dtype``; optional log-sum-exp ``[B, H, Sq]`` float32 (natural log).  Token i of
the query sequence belongs to frame ``q_frame_ids[i]``, key token j to frame
``k_frame_ids[j]``; query i may attend to key j iff
``visibility[q_frame_ids[i], k_frame_ids[j]]``.

The Triton kernel is FlashAttention-2 style: one program per (query tile, batch*head);
it visits only the key tiles listed in a :class:`~engine_kernels.block_mask.BlockMask`
(FULL tiles without any mask, walked as runs of consecutive tiles -- affine addresses,
no index load per tile -- then PARTIAL tiles with the element mask), keeping an
online softmax in base 2 (``log2(e)`` folded into the scale, ``exp2``).  All tensors
are addressed through their strides, so ``q`` may be a ``[B, S, H, D]`` tensor
transposed to ``[B, H, S, D]`` and ``k``/``v`` may be slices of a larger preallocated
KV-cache buffer -- nothing is copied.
"""

from __future__ import annotations

import torch

from engine_kernels._triton import check_device, interpreting, tl, triton
from engine_kernels.block_mask import BlockMask, build_block_mask, dense_mask

_LOG2E = 1.4426950408889634
_LN2 = 0.6931471805599453
_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               q_frame_ids: torch.Tensor, k_frame_ids: torch.Tensor) -> None:
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"q, k, v must be 4-D [B, H, S, D], got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    if q.dtype not in _DTYPES or k.dtype != q.dtype or v.dtype != q.dtype:
        raise TypeError(f"q, k, v must share one dtype of {_DTYPES}, got {q.dtype}, {k.dtype}, {v.dtype}")
    b, h, sq, d = q.shape
    if k.shape != v.shape or k.shape[0] != b or k.shape[1] != h or k.shape[3] != d:
        raise ValueError(f"k and v must be [B={b}, H={h}, Sk, D={d}], got {tuple(k.shape)}, {tuple(v.shape)}")
    if q_frame_ids.shape != (sq,):
        raise ValueError(f"q_frame_ids must be [Sq={sq}], got {tuple(q_frame_ids.shape)}")
    if k_frame_ids.shape != (k.shape[2],):
        raise ValueError(f"k_frame_ids must be [Sk={k.shape[2]}], got {tuple(k_frame_ids.shape)}")
    if sq == 0 or k.shape[2] == 0:
        raise ValueError("empty query or key sequence")


def block_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
                              q_frame_ids: torch.Tensor, k_frame_ids: torch.Tensor,
                              visibility: torch.Tensor, scale: float | None = None,
                              return_lse: bool = False):
    """Dense-mask attention in float32 with torch softmax (the oracle for the kernel).

    Same signature and semantics as :func:`block_attention`: returns ``o`` ``[B, H, Sq, D]``
    in ``q.dtype``, or ``(o, lse)`` with ``lse`` ``[B, H, Sq]`` float32 (natural log).
    Raises ``ValueError`` when some query frame sees no key token.
    """
    _check_qkv(q, k, v, q_frame_ids, k_frame_ids)
    mask = dense_mask(q_frame_ids.to(q.device), k_frame_ids.to(q.device), visibility.to(q.device))
    blind = ~mask.any(1)
    if blind.any():
        frames = sorted(set(q_frame_ids.to(q.device)[blind].tolist()))
        raise ValueError(f"query frames {frames} see no key token; attention would be undefined (NaN)")
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    s = torch.matmul(q.float(), k.float().transpose(-1, -2)) * scale
    s = s.masked_fill(~mask, float("-inf"))
    lse = torch.logsumexp(s, dim=-1)
    o = torch.matmul(torch.softmax(s, dim=-1), v.float()).to(q.dtype)
    return (o, lse) if return_lse else o


@triton.jit
def _visit_tile(acc, m_i, l_i, q, qf, row_bits, n, K, V, KF, VIS, k_base, v_base,
                stride_kn, stride_kd, stride_vn, stride_vd, Sk, Fk, qk_scale,
                HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, MASKED: tl.constexpr,
                BITMASK: tl.constexpr, PRECISION: tl.constexpr):
    """One key tile: scores, (element mask), online-softmax update of acc / m_i / l_i.

    The element mask of a PARTIAL tile is ``visibility[qf[i], kf[j]]``: with at most 64
    key frames (BITMASK) it is bit ``kf[j]`` of the query row's int64 word ``row_bits[i]``
    (register arithmetic only); otherwise a gather from the int8 matrix, which costs far
    more registers (ptxas spills at 128x64 tiles) and is kept for very long key axes.
    """
    offs_n = n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    kt_ptrs = K + k_base + offs_n[None, :] * stride_kn + offs_d[:, None] * stride_kd
    v_ptrs = V + v_base + offs_n[:, None] * stride_vn + offs_d[None, :] * stride_vd
    if MASKED:
        in_k = offs_n < Sk
        kt = tl.load(kt_ptrs, mask=in_k[None, :], other=0.0)
        v = tl.load(v_ptrs, mask=in_k[:, None], other=0.0)
    else:
        kt = tl.load(kt_ptrs)
        v = tl.load(v_ptrs)
    s = tl.dot(q, kt, input_precision=PRECISION) * qk_scale  # [BLOCK_M, BLOCK_N], base-2 logits
    if MASKED:
        kf = tl.load(KF + offs_n, mask=in_k, other=0)
        if BITMASK:
            seen = (row_bits[:, None] >> kf.to(tl.int64)[None, :]) & 1
        else:
            seen = tl.load(VIS + qf[:, None] * Fk + kf[None, :])
        s = tl.where((seen != 0) & in_k[None, :], s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    if MASKED:
        m_base = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows that saw nothing yet
    else:
        m_base = m_new  # finite: a FULL tile has no masked score
    p = tl.math.exp2(s - m_base[:, None])
    alpha = tl.math.exp2(m_i - m_base)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=PRECISION)
    return acc, m_new, l_i


@triton.jit
def _block_attention_fwd(
    Q, K, V, O, LSE, QF, KF, VIS, VIS_BITS,
    RUN_CNT, RUNS, PART_CNT, PART_IDX, run_stride, idx_stride_part,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_ob, stride_oh, stride_om, stride_od,
    H, Sq, Sk, Fk, qk_scale,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    RETURN_LSE: tl.constexpr, BITMASK: tl.constexpr, PRECISION: tl.constexpr,
):
    # Heaviest query tiles first: in causal-like patterns later tiles see more keys, and
    # launching them early shortens the tail where few programs are left running.
    pid_m = tl.num_programs(0) - 1 - tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    in_q = offs_m < Sq
    q_ptrs = Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qm + offs_d[None, :] * stride_qd
    q = tl.load(q_ptrs, mask=in_q[:, None], other=0.0)
    qf = tl.load(QF + offs_m, mask=in_q, other=0)
    if BITMASK:
        row_bits = tl.load(VIS_BITS + qf)  # int64 [BLOCK_M]: bit j = sees key frame j
    else:
        row_bits = qf
    k_base = b * stride_kb + h * stride_kh
    v_base = b * stride_vb + h * stride_vh

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)

    # FULL tiles come as runs [first, end) of consecutive tiles: inside a run the tile
    # addresses are affine in the loop counter (no dependent index load per tile).
    n_runs = tl.load(RUN_CNT + pid_m)
    for r in range(0, n_runs):
        first = tl.load(RUNS + pid_m * run_stride + 2 * r)
        end = tl.load(RUNS + pid_m * run_stride + 2 * r + 1)
        for n in range(first, end):
            acc, m_i, l_i = _visit_tile(acc, m_i, l_i, q, qf, row_bits, n, K, V, KF, VIS,
                                        k_base, v_base, stride_kn, stride_kd, stride_vn,
                                        stride_vd, Sk, Fk, qk_scale, HEAD_DIM, BLOCK_N, False,
                                        BITMASK, PRECISION)
    # PARTIAL tiles are few (pattern edges); not pipelining them keeps their shared-memory
    # buffers and registers out of the FULL loop's budget.
    n_part = tl.load(PART_CNT + pid_m)
    for i in tl.range(0, n_part, num_stages=1):
        n = tl.load(PART_IDX + pid_m * idx_stride_part + i)
        acc, m_i, l_i = _visit_tile(acc, m_i, l_i, q, qf, row_bits, n, K, V, KF, VIS,
                                    k_base, v_base, stride_kn, stride_kd, stride_vn, stride_vd,
                                    Sk, Fk, qk_scale, HEAD_DIM, BLOCK_N, True, BITMASK,
                                    PRECISION)

    l_safe = tl.where(l_i == 0.0, 1.0, l_i)  # only padding rows (>= Sq) can have l == 0
    out = acc / l_safe[:, None]
    o_ptrs = O + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_om + offs_d[None, :] * stride_od
    tl.store(o_ptrs, out.to(O.dtype.element_ty), mask=in_q[:, None])
    if RETURN_LSE:
        lse = (m_i + tl.math.log2(l_safe)) * 0.6931471805599453
        tl.store(LSE + pid_bh * Sq + offs_m, lse, mask=in_q)


def default_tiles(head_dim: int, dtype: torch.dtype) -> tuple[int, int, int, int]:
    """(block_m, block_n, num_warps, num_stages) used when the caller does not choose.

    Chosen from the sm_90 compile report (tests/kernels/compile_check.py): every default
    fits in an H100's shared memory, ptxas spills nothing and wgmma is not serialised.
    float32 runs 3xTF32 dots (hi/lo operand splits), which need small tiles.  Timings on a GPU come
    from ``python bench/kernel_speed.py --sweep``.
    """
    if interpreting():
        return 32, 32, 4, 1
    if dtype == torch.float32:
        return (32, 32, 4, 2) if head_dim <= 64 else (32, 32, 8, 2)
    if head_dim <= 64:
        return 128, 64, 4, 3
    return 128, 128, 8, 2


def block_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
                    q_frame_ids: torch.Tensor, k_frame_ids: torch.Tensor,
                    visibility: torch.Tensor, scale: float | None = None,
                    return_lse: bool = False, block_mask: BlockMask | None = None,
                    block_m: int | None = None, block_n: int | None = None,
                    num_warps: int | None = None, num_stages: int | None = None,
                    out: torch.Tensor | None = None):
    """Attention of ``q`` over ``k``/``v`` restricted by a frame visibility pattern.

    Args:
        q: ``[B, H, Sq, D]`` float32 / float16 / bfloat16, any strides.
        k, v: ``[B, H, Sk, D]`` same dtype, any strides (e.g. a slice of a KV-cache buffer).
        q_frame_ids: int ``[Sq]`` frame of each query token (row index into ``visibility``).
        k_frame_ids: int ``[Sk]`` frame of each key token (column index into ``visibility``).
        visibility: bool ``[Fq, Fk]``.
        scale: softmax scale, default ``D ** -0.5``.
        return_lse: also return the log-sum-exp ``[B, H, Sq]`` float32 (natural log).
        block_mask: a prebuilt :class:`BlockMask` (skips the cache lookup); must match the
            tile sizes used.
        block_m, block_n: tile sizes (powers of two >= 16); default per device/dtype.
        num_warps, num_stages: launch tuning (default per head dim/dtype, see
            :func:`default_tiles`; ``bench/kernel_speed.py --sweep`` times alternatives).
        out: optional preallocated ``[B, H, Sq, D]`` output of ``q.dtype`` (any strides).

    Returns:
        ``o`` ``[B, H, Sq, D]`` in ``q.dtype``, or ``(o, lse)`` when ``return_lse``.

    Raises:
        ValueError: bad shapes, ``D`` not a power of two in [16, 256], or some query frame
            that sees no key token (checked before launch, naming the frames).
    """
    _check_qkv(q, k, v, q_frame_ids, k_frame_ids)
    B, H, Sq, D = q.shape
    Sk = k.shape[2]
    if D < 16 or D > 256 or D & (D - 1):
        raise ValueError(f"head dim must be a power of two in [16, 256], got {D}")
    check_device(q, k, v)
    dm, dn, dw, ds = default_tiles(D, q.dtype)
    num_warps = num_warps or dw
    num_stages = num_stages or ds
    if block_mask is not None:
        block_m, block_n = block_mask.block_m, block_mask.block_n
    block_m = block_m or dm
    block_n = block_n or dn
    for name, t in (("block_m", block_m), ("block_n", block_n)):
        if t < 16 or t & (t - 1):
            raise ValueError(f"{name} must be a power of two >= 16, got {t}")
    if block_mask is None:
        block_mask = build_block_mask(q_frame_ids, k_frame_ids, visibility, block_m, block_n,
                                      device=q.device)
    if (block_mask.seq_q, block_mask.seq_k) != (Sq, Sk):
        raise ValueError(f"block_mask built for Sq={block_mask.seq_q}, Sk={block_mask.seq_k}; "
                         f"got Sq={Sq}, Sk={Sk}")
    if out is None:
        out = torch.empty((B, H, Sq, D), device=q.device, dtype=q.dtype)
    elif out.shape != (B, H, Sq, D) or out.dtype != q.dtype or out.device != q.device:
        raise ValueError(f"out must be [B, H, Sq, D]={B, H, Sq, D} of {q.dtype} on {q.device}")
    lse = torch.empty((B, H, Sq), device=q.device, dtype=torch.float32) if return_lse else out
    scale = D ** -0.5 if scale is None else float(scale)
    bm = block_mask
    grid = (bm.num_q_tiles, B * H)
    _block_attention_fwd[grid](
        q, k, v, out, lse, bm.q_frame_ids, bm.k_frame_ids, bm.visibility,
        bm.visibility_bits if bm.visibility_bits is not None else bm.visibility,
        bm.full_run_counts, bm.full_runs, bm.partial_counts, bm.partial_index,
        bm.full_runs.stride(0), bm.partial_index.stride(0),
        *q.stride(), *k.stride(), *v.stride(), *out.stride(),
        H, Sq, Sk, bm.visibility.shape[1], scale * _LOG2E,
        HEAD_DIM=D, BLOCK_M=block_m, BLOCK_N=block_n, RETURN_LSE=return_lse,
        BITMASK=bm.visibility_bits is not None,
        PRECISION="tf32x3" if q.dtype == torch.float32 else "tf32",
        num_warps=num_warps, num_stages=num_stages,
    )
    return (out, lse) if return_lse else out


def visible_flops(block_mask: BlockMask, batch: int, heads: int, head_dim: int) -> float:
    """Forward FLOPs counting only visible (query, key) pairs: ``4 * pairs * D * B * H``."""
    return 4.0 * block_mask.visible_pairs * head_dim * batch * heads


__all__ = ["block_attention", "block_attention_reference", "default_tiles", "visible_flops"]
