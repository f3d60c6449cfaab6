"""The Triton kernel of :func:`mmmambavision.ops.residual_norm`: residual, layer scale and LayerNorm in one pass."""
import triton
import triton.language as tl


@triton.jit
def residual_norm_kernel(X, Y, G, W, B, XO, HO, M, N, eps, HAS_GAMMA: tl.constexpr, BLOCK_M: tl.constexpr,
                         BLOCK_N: tl.constexpr):
    """Rows ``BLOCK_M`` at a time of (M, N) row-major X, Y: ``XO = X + Y * G`` (``X + Y`` without ``HAS_GAMMA``)
    in XO's dtype, and ``HO = LayerNorm(XO) * W + B`` of the stored XO, statistics in fp32, in HO's dtype."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_N)
    col_mask = cols < N
    mask = (rows < M)[:, None] & col_mask[None, :]
    offsets = rows.to(tl.int64)[:, None] * N + cols[None, :]
    x = tl.load(X + offsets, mask=mask, other=0.).to(tl.float32)
    y = tl.load(Y + offsets, mask=mask, other=0.).to(tl.float32)
    if HAS_GAMMA:
        gamma = tl.load(G + cols, mask=col_mask, other=0.).to(tl.float32)
        s = x + y * gamma[None, :]
    else:
        s = x + y
    stored = s.to(XO.dtype.element_ty)
    tl.store(XO + offsets, stored, mask=mask)
    s = stored.to(tl.float32)  # normalise the residual as stored, as a LayerNorm after the addition reads it
    mean = tl.sum(s, axis=1) / N
    centred = tl.where(mask, s - mean[:, None], 0.)
    rstd = 1. / tl.sqrt(tl.sum(centred * centred, axis=1) / N + eps)
    weight = tl.load(W + cols, mask=col_mask, other=0.).to(tl.float32)
    bias = tl.load(B + cols, mask=col_mask, other=0.).to(tl.float32)
    h = centred * rstd[:, None] * weight[None, :] + bias[None, :]
    tl.store(HO + offsets, h.to(HO.dtype.element_ty), mask=mask)
