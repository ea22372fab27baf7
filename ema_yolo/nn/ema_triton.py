"""EMA's forward and backward as Triton kernels in two `torch.library.triton_op` operators, `ema_yolo::ema_triton_<v>`
and its backward, so that `torch.compile` on CUDA sees the kernels (inductor schedules them next to its own) instead of
an opaque operator.

The same equations and the same saved tensors as the eager operator (`ema_function`, whose notation this follows);
the heavy passes over the (n, cg, h, w) group-samples are kernels, the small per-channel algebra in between is the
eager operator's own helpers, which inductor compiles and the tests check. Forward: one pass for the row and column
sums, one for GroupNorm's statistics of t = z * g_h * g_w (two-pass: mean, then centred squares), one that writes
sigmoid(m) and the output. Backward: one pass for dm, one for every per-channel reduction (sum dm * d, the 3x3
kernel's gradient, and the row and column sums the gates' gradients are made of), one that writes the input gradient.
No atomics: every reduction runs in one program and the per-sample partial sums are added by torch, so the results
are deterministic.

Tested on CPU under Triton's interpreter (`TRITON_INTERPRET=1`, set before this module is imported) against the
published module; `torch.compile` of these operators needs a GPU.
"""

import hashlib
from importlib import resources

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # Triton comes with PyTorch's CUDA wheels; without it this path is unavailable
    triton = None

from .ema_function import (
    _branch_softmax,
    _gates_backward,
    _param_grads,
    _pool_gates,
    _prepare,
    autocast_off,
    register_autograd,
)

__all__ = ("available", "ema_triton")

_BLOCK = 4096  # elements of one tile: a power of two, rows of the next power of two >= w


def available(device):
    """True where the Triton operator can run on `device`: CUDA with Triton installed (or Triton's interpreter)."""
    device = torch.device(device)
    if triton is None:
        return False
    from triton.runtime.interpreter import InterpretedFunction

    return device.type == "cuda" or isinstance(_pool_kernel, InterpretedFunction)


def _tile(h, w):
    """Block sizes (rows, columns) of one tile for an h x w map: whole rows, as many as fit `_BLOCK` elements."""
    bw = triton.next_power_of_2(w)
    return max(1, min(triton.next_power_of_2(h), _BLOCK // bw)), bw


if triton is not None:

    @triton.jit
    def _pool_kernel(z, row_sum, col_sum, h, w, BH: tl.constexpr, BW: tl.constexpr):
        """Per group-sample channel (program): row sums (h) and column sums (w) of its plane."""
        plane = tl.program_id(0)
        cols = tl.arange(0, BW)
        col_acc = tl.zeros([BW], dtype=z.dtype.element_ty)
        for r0 in range(0, h, BH):
            rows = r0 + tl.arange(0, BH)
            mask = (rows[:, None] < h) & (cols[None, :] < w)
            tile = tl.load(z + plane * h * w + rows[:, None] * w + cols[None, :], mask=mask, other=0.0)
            tl.store(row_sum + plane * h + rows, tl.sum(tile, 1), mask=rows < h)
            col_acc += tl.sum(tile, 0)
        tl.store(col_sum + plane * w + cols, col_acc, mask=cols < w)

    @triton.jit
    def _stats_kernel(z, gates, mean, rstd, h, w, eps, BH: tl.constexpr, BW: tl.constexpr):
        """Per channel: mean and 1 / std of t = z * g_h * g_w over its plane (two passes, as the eager operator)."""
        plane = tl.program_id(0)
        cols = tl.arange(0, BW)
        gw = tl.load(gates + plane * (h + w) + h + cols, mask=cols < w, other=0.0)
        total = tl.zeros([BW], dtype=z.dtype.element_ty)
        for r0 in range(0, h, BH):
            rows = r0 + tl.arange(0, BH)
            mask = (rows[:, None] < h) & (cols[None, :] < w)
            gh = tl.load(gates + plane * (h + w) + rows, mask=rows < h, other=0.0)
            t = tl.load(z + plane * h * w + rows[:, None] * w + cols[None, :], mask=mask, other=0.0)
            total += tl.sum(t * gh[:, None] * gw[None, :], 0)
        mu = tl.sum(total, 0) / (h * w)
        squares = tl.zeros([BW], dtype=z.dtype.element_ty)
        for r0 in range(0, h, BH):
            rows = r0 + tl.arange(0, BH)
            mask = (rows[:, None] < h) & (cols[None, :] < w)
            gh = tl.load(gates + plane * (h + w) + rows, mask=rows < h, other=0.0)
            t = tl.load(z + plane * h * w + rows[:, None] * w + cols[None, :], mask=mask, other=0.0)
            d = tl.where(mask, t * gh[:, None] * gw[None, :] - mu, 0.0)
            squares += tl.sum(d * d, 0)
        tl.store(mean + plane, mu)
        tl.store(rstd + plane, 1.0 / tl.sqrt(tl.sum(squares, 0) / (h * w) + eps))

    @triton.jit
    def _output_kernel(z, gates, mean, a, const, kernel, sig, out, cg, h, w, BH: tl.constexpr, BW: tl.constexpr):
        """Per group-sample (program axis 0) and tile of rows (axis 1): m = sum_k a[k] (t[k] - mean[k]) + const +
        sum_k K[k] (*) z[k], then sig = sigmoid(m) and out = z * sig."""
        sample, r0 = tl.program_id(0), tl.program_id(1) * BH
        rows, cols = r0 + tl.arange(0, BH), tl.arange(0, BW)
        inside = (rows[:, None] < h) & (cols[None, :] < w)
        m = tl.zeros([BH, BW], dtype=z.dtype.element_ty) + tl.load(const + sample)
        for c in range(cg):
            plane = sample * cg + c
            base = z + plane * h * w
            gh = tl.load(gates + plane * (h + w) + rows, mask=rows < h, other=0.0)
            gw = tl.load(gates + plane * (h + w) + h + cols, mask=cols < w, other=0.0)
            zc = tl.load(base + rows[:, None] * w + cols[None, :], mask=inside, other=0.0)
            m += tl.load(a + plane) * (zc * gh[:, None] * gw[None, :] - tl.load(mean + plane))
            for dy in tl.static_range(3):
                for dx in tl.static_range(3):
                    y, x = rows + (dy - 1), cols + (dx - 1)
                    mask = (y[:, None] >= 0) & (y[:, None] < h) & (x[None, :] >= 0) & (x[None, :] < w)
                    shifted = tl.load(base + y[:, None] * w + x[None, :], mask=mask, other=0.0)
                    m += tl.load(kernel + c * 9 + dy * 3 + dx) * shifted
        s = 1.0 / (1.0 + tl.exp(-m))
        tl.store(sig + sample * h * w + rows[:, None] * w + cols[None, :], s, mask=inside)
        for c in range(cg):
            offset = (sample * cg + c) * h * w + rows[:, None] * w + cols[None, :]
            tl.store(out + offset, tl.load(z + offset, mask=inside, other=0.0) * s, mask=inside)

    @triton.jit
    def _dm_kernel(go, z, sig, dm, cg, h, w, BH: tl.constexpr, BW: tl.constexpr):
        """Per group-sample and tile of rows: dm = sigmoid'(m) sum_k go[k] z[k]."""
        sample, r0 = tl.program_id(0), tl.program_id(1) * BH
        rows, cols = r0 + tl.arange(0, BH), tl.arange(0, BW)
        inside = (rows[:, None] < h) & (cols[None, :] < w)
        pix = rows[:, None] * w + cols[None, :]
        acc = tl.zeros([BH, BW], dtype=z.dtype.element_ty)
        for c in range(cg):
            offset = (sample * cg + c) * h * w + pix
            acc += tl.load(go + offset, mask=inside, other=0.0) * tl.load(z + offset, mask=inside, other=0.0)
        s = tl.load(sig + sample * h * w + pix, mask=inside, other=0.0)
        tl.store(dm + sample * h * w + pix, acc * s * (1.0 - s), mask=inside)

    @triton.jit
    def _reduce_kernel(
        z, gates, mean, dm, xd, d_kernel, row_terms, col_terms, cg, h, w, BH: tl.constexpr, BW: tl.constexpr
    ):
        """Per channel: sum dm * d, the 3x3 kernel's gradient sum_p z[p] dm[p - tap + 1], and for the gates'
        gradients the row sums over x and column sums over y of z g_w (resp. g_h) times 1, d and dm (3 each)."""
        plane = tl.program_id(0)
        sample = plane // cg
        cols = tl.arange(0, BW)
        taps = tl.arange(0, 16)
        gw = tl.load(gates + plane * (h + w) + h + cols, mask=cols < w, other=0.0)
        mu = tl.load(mean + plane)
        dk = tl.zeros([16], dtype=z.dtype.element_ty)
        xd_acc = tl.zeros([BW], dtype=z.dtype.element_ty)
        c1 = tl.zeros([BW], dtype=z.dtype.element_ty)
        c2 = tl.zeros([BW], dtype=z.dtype.element_ty)
        c3 = tl.zeros([BW], dtype=z.dtype.element_ty)
        for r0 in range(0, h, BH):
            rows = r0 + tl.arange(0, BH)
            inside = (rows[:, None] < h) & (cols[None, :] < w)
            gh = tl.load(gates + plane * (h + w) + rows, mask=rows < h, other=0.0)
            zc = tl.load(z + plane * h * w + rows[:, None] * w + cols[None, :], mask=inside, other=0.0)
            dmc = tl.load(dm + sample * h * w + rows[:, None] * w + cols[None, :], mask=inside, other=0.0)
            d = tl.where(inside, zc * gh[:, None] * gw[None, :] - mu, 0.0)
            xd_acc += tl.sum(dmc * d, 0)
            zw, zh = zc * gw[None, :], zc * gh[:, None]
            row_base = row_terms + plane * 3 * h + rows
            tl.store(row_base, tl.sum(zw, 1), mask=rows < h)
            tl.store(row_base + h, tl.sum(zw * d, 1), mask=rows < h)
            tl.store(row_base + 2 * h, tl.sum(zw * dmc, 1), mask=rows < h)
            c1 += tl.sum(zh, 0)
            c2 += tl.sum(zh * d, 0)
            c3 += tl.sum(zh * dmc, 0)
            for dy in tl.static_range(3):
                for dx in tl.static_range(3):
                    y, x = rows - (dy - 1), cols - (dx - 1)
                    mask = (y[:, None] >= 0) & (y[:, None] < h) & (x[None, :] >= 0) & (x[None, :] < w)
                    shifted = tl.load(dm + sample * h * w + y[:, None] * w + x[None, :], mask=mask, other=0.0)
                    dk += tl.where(taps == dy * 3 + dx, tl.sum(tl.sum(zc * shifted, 1), 0), 0.0)
        tl.store(xd + plane, tl.sum(xd_acc, 0))
        tl.store(d_kernel + plane * 9 + taps, dk, mask=taps < 9)
        col_base = col_terms + plane * 3 * w + cols
        tl.store(col_base, c1, mask=cols < w)
        tl.store(col_base + w, c2, mask=cols < w)
        tl.store(col_base + 2 * w, c3, mask=cols < w)

    @triton.jit
    def _input_grad_kernel(
        go, z, gates, mean, sig, dm, a, alpha, beta, kernel, d_h, d_w, d_taps, dz, cg, h, w,
        BH: tl.constexpr, BW: tl.constexpr,
    ):
        """Per channel (axis 0) and tile of rows (axis 1): dz = go sig + dt g_h g_w + sum_taps K dm[p - tap + 1]
        + d_h[y] + d_w[x] + the four corners' window terms, with dt = a dm + alpha + beta d."""
        plane, r0 = tl.program_id(0), tl.program_id(1) * BH
        sample, c = plane // cg, plane % cg
        rows, cols = r0 + tl.arange(0, BH), tl.arange(0, BW)
        inside = (rows[:, None] < h) & (cols[None, :] < w)
        pix = rows[:, None] * w + cols[None, :]
        gh = tl.load(gates + plane * (h + w) + rows, mask=rows < h, other=0.0)
        gw = tl.load(gates + plane * (h + w) + h + cols, mask=cols < w, other=0.0)
        zc = tl.load(z + plane * h * w + pix, mask=inside, other=0.0)
        dmc = tl.load(dm + sample * h * w + pix, mask=inside, other=0.0)
        g = gh[:, None] * gw[None, :]
        dt = tl.load(a + plane) * dmc + tl.load(alpha + plane) + tl.load(beta + plane) * (zc * g - tl.load(mean + plane))
        grad = tl.load(go + plane * h * w + pix, mask=inside, other=0.0) * tl.load(
            sig + sample * h * w + pix, mask=inside, other=0.0
        ) + dt * g
        for dy in tl.static_range(3):
            for dx in tl.static_range(3):
                y, x = rows - (dy - 1), cols - (dx - 1)
                mask = (y[:, None] >= 0) & (y[:, None] < h) & (x[None, :] >= 0) & (x[None, :] < w)
                shifted = tl.load(dm + sample * h * w + y[:, None] * w + x[None, :], mask=mask, other=0.0)
                grad += tl.load(kernel + c * 9 + dy * 3 + dx) * shifted
        grad += tl.load(d_h + plane * h + rows, mask=rows < h, other=0.0)[:, None]
        grad += tl.load(d_w + plane * w + cols, mask=cols < w, other=0.0)[None, :]
        last_y, first_y = rows[:, None] == h - 1, rows[:, None] == 0
        last_x, first_x = cols[None, :] == w - 1, cols[None, :] == 0
        corner = d_taps + plane * 9
        grad += tl.where(last_y & last_x, tl.load(corner), 0.0) + tl.where(last_y & first_x, tl.load(corner + 2), 0.0)
        grad += tl.where(first_y & last_x, tl.load(corner + 6), 0.0) + tl.where(first_y & first_x, tl.load(corner + 8), 0.0)
        tl.store(dz + plane * h * w + pix, grad, mask=inside)


def _launch(kernel):
    """`kernel` as the operator bodies call it: through `wrap_triton`, which lets tracing (make_fx, inductor) see it."""
    return torch.library.wrap_triton(kernel)


# A digest of this file and of the eager operator's (whose helpers run between the kernels) in the names, as for
# `ema_function.VERSION`: torch.compile's caches know an operator by its name.
VERSION = hashlib.sha1(
    b"".join(resources.files(__package__).joinpath(f).read_bytes() for f in ("ema_triton.py", "ema_function.py"))
).hexdigest()[:12]


if triton is not None:

    @torch.library.triton_op(f"ema_yolo::ema_triton_{VERSION}", mutates_args=())
    def ema_triton_op(
        x: torch.Tensor, groups: int, eps: float, gn_weight: torch.Tensor, gn_bias: torch.Tensor,
        conv1x1_weight: torch.Tensor, conv1x1_bias: torch.Tensor, conv3x3_weight: torch.Tensor,
        conv3x3_bias: torch.Tensor,
    ) -> list[torch.Tensor]:
        """EMA's forward in Triton kernels: the outputs of `ema_function.ema_op` (output, then what the backward needs)."""
        with autocast_off(x.device.type):
            z, (gn_w, gn_b, w1, b1, w3, b3, s1, kernel) = _prepare(
                x, groups, gn_weight, gn_bias, conv1x1_weight, conv1x1_bias, conv3x3_weight, conv3x3_bias
            )
            n, cg, h, w = z.shape
            bh, bw = _tile(h, w)
            row_sum, col_sum = z.new_empty((n, cg, h)), z.new_empty((n, cg, w))
            _launch(_pool_kernel)[(n * cg,)](z, row_sum, col_sum, h, w, BH=bh, BW=bw)
            pooled, gates = _pool_gates(row_sum, col_sum, w1, b1)
            mean, rstd = z.new_empty((n, cg)), z.new_empty((n, cg))
            _launch(_stats_kernel)[(n * cg,)](z, gates, mean, rstd, h, w, eps, BH=bh, BW=bw)
            taps, s2 = _branch_softmax(z, row_sum, col_sum, w3, b3)
            a = s2 * gn_w * rstd
            const = (s2 * gn_b).sum(1) + (s1 * b3).sum()
            sig, out = z.new_empty((n, h, w)), torch.empty_like(z)
            grid = (n, triton.cdiv(h, bh))
            _launch(_output_kernel)[grid](z, gates, mean, a, const, kernel, sig, out, cg, h, w, BH=bh, BW=bw)
        return [out.view(x.shape).to(x.dtype), mean, gates, sig, s2, rstd, taps, pooled, s1, kernel]

    @torch.library.triton_op(f"ema_yolo::ema_triton_backward_{VERSION}", mutates_args=())
    def ema_triton_backward_op(
        grad_out: torch.Tensor, x: torch.Tensor, mean: torch.Tensor, gates: torch.Tensor, sig: torch.Tensor,
        s2: torch.Tensor, rstd: torch.Tensor, taps: torch.Tensor, pooled: torch.Tensor, s1: torch.Tensor,
        kernel: torch.Tensor, gn_weight: torch.Tensor, gn_bias: torch.Tensor, conv1x1_weight: torch.Tensor,
        conv3x3_weight: torch.Tensor, conv3x3_bias: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """EMA's backward in Triton kernels: the outputs of `ema_function.ema_backward_op`."""
        with autocast_off(grad_out.device.type):
            acc = mean.dtype
            (n, cg), (h, w) = mean.shape, sig.shape[1:]
            hw = h * w
            z = x.to(acc).reshape(n, cg, h, w).contiguous()
            go = grad_out.to(acc).reshape(n, cg, h, w).contiguous()
            gn_w, gn_b, w3, b3 = (p.to(acc) for p in (gn_weight, gn_bias, conv3x3_weight, conv3x3_bias))
            w1 = conv1x1_weight.to(acc).reshape(cg, cg)
            bh, bw = _tile(h, w)
            rows = triton.cdiv(h, bh)

            dm = z.new_empty((n, h, w))
            _launch(_dm_kernel)[(n, rows)](go, z, sig, dm, cg, h, w, BH=bh, BW=bw)
            d_sum = dm.sum((1, 2))
            xd, d_kernel = z.new_empty((n, cg)), z.new_empty((n, cg, 9))
            row_terms, col_terms = z.new_empty((n, cg, 3, h)), z.new_empty((n, cg, 3, w))
            _launch(_reduce_kernel)[(n * cg,)](
                z, gates, mean, dm, xd, d_kernel, row_terms, col_terms, cg, h, w, BH=bh, BW=bw
            )

            # GroupNorm's backward with dy[k] = s2[k] dm, as the eager operator's `_backward_chunk`; dt = t's gradient
            # = a dm + alpha + beta d, whose sums against z g_w and z g_h are the gates' gradients.
            xhat_dm = xd * rstd
            d_s2 = gn_w * xhat_dm + gn_b * d_sum.unsqueeze(1)
            a = gn_w * rstd * s2
            alpha, beta = a * (d_sum / -hw).unsqueeze(1), a * rstd * xhat_dm / -hw
            coefficients = torch.stack((alpha, beta, a), -1).unsqueeze(-2)  # (n, cg, 1, 3)
            d_gates = torch.cat(
                (
                    torch.matmul(coefficients, row_terms).squeeze(-2),
                    torch.matmul(coefficients, col_terms).squeeze(-2),
                ),
                -1,
            )
            d_w1, d_b1, d_w3, d_b3, d_h, d_w, d_taps = _gates_backward(d_gates, d_s2, gates, pooled, s2, taps, w1, w3, h)
            dz = torch.empty_like(z)
            _launch(_input_grad_kernel)[(n * cg, rows)](
                go, z, gates, mean, sig, dm, a, alpha, beta, kernel, d_h.contiguous(), d_w.contiguous(),
                d_taps, dz, cg, h, w, BH=bh, BW=bw,
            )
            sums = [
                (s2 * xhat_dm).sum(0), (s2 * d_sum.unsqueeze(1)).sum(0), d_w1, d_b1, d_kernel.sum(0), d_w3, d_b3,
                d_sum.sum(),
            ]
            grads = _param_grads(sums, s1, w3, b3)
        return dz.view(x.shape), *grads

    register_autograd(ema_triton_op, ema_triton_backward_op)


def ema_triton(x, groups, eps, gn_weight, gn_bias, conv1x1_weight, conv1x1_bias, conv3x3_weight, conv3x3_bias):
    """EMA of `x` (B, C, H, W) through the `ema_yolo::ema_triton_<VERSION>` operator (differentiable once); the output.

    Same arguments and result as `ema_function.ema`; needs `available(x.device)`.
    """
    return ema_triton_op(x, groups, eps, gn_weight, gn_bias, conv1x1_weight, conv1x1_bias, conv3x3_weight, conv3x3_bias)[0]
