"""EMA's forward and hand-derived backward as two `torch.library` operators, `ema_yolo::ema_<v>` and its backward.

Written for memory traffic. On CPU the work runs in chunks of group-samples small enough to stay in the cache
(`CHUNK_BYTES`), so the forward reads a float32 input from memory about once and writes one full-size tensor (the
output); the backward recomputes the gate product from the input instead of saving it, and writes one (the input gradient).
Only the equations of the published module are implemented; see `EMA` for what they are.

Notation, per group (n = batch x groups): z (cg, h, w) is the input, g_h (cg, h) and g_w (cg, w) the sigmoid gates,
t = z * g_h * g_w, xhat = (t - mean) * rstd the GroupNorm-normalised t, s1 = softmax(gn.bias), s2 = softmax over
the spatial mean of conv3x3(z), K = sum_k s1[k] conv3x3.weight[k] (cg, 3, 3), and
m = sum_k K[k] (*) z[k] + sum_k s2[k] (gn.weight[k] xhat[k] + gn.bias[k]) + sum_k s1[k] conv3x3.bias[k];
the output is z * sigmoid(m).
"""

import contextlib
import hashlib
from importlib import resources

import torch

__all__ = ("ema", "ema_forward")

_TAPS = tuple(divmod(tap, 3) for tap in range(9))  # (dy, dx) of each 3x3 tap, row-major like the conv weight


# For a tap offset d in {0, 1, 2} along one axis: (destination, source) slices such that destination index i pairs
# with source index i + d - 1, i.e. zero padding of one on both sides.
_SHIFTS = {0: (slice(1, None), slice(None, -1)), 1: (slice(None), slice(None)), 2: (slice(None, -1), slice(1, None))}


def _tap_slices(dy, dx):
    """Index tuples (dst, src) over (..., h, w) such that dst[i, j] pairs with src[i + dy - 1, j + dx - 1]."""
    (dst_y, src_y), (dst_x, src_x) = _SHIFTS[dy], _SHIFTS[dx]
    return (Ellipsis, dst_y, dst_x), (Ellipsis, src_y, src_x)


def _tap_ranges(size):
    """Split the 9 taps into consecutive ranges of at most `size` (a scratch buffer of cg planes holds cg tap planes)."""
    return [range(i, min(9, i + size)) for i in range(0, 9, size)]


# Tap planes of a map up to this size are allocated at once (one matrix product for all 9 taps): a few larger
# operations are faster than filling a scratch buffer cg planes at a time, as each operation costs a fixed few us.
PLANES_BYTES = 2**20


def _add_conv_channel_sum(m, z, kernel, scratch=None):
    """Add sum_k kernel[k] (*) z[k] (3x3 cross-correlation, zero padding) to m: z (n, cg, h, w), m (n, h, w).

    Each tap's channel mix is one batched matmul (kernel taps x channels); the taps are then added shifted. `scratch`
    (n * cg * h * w elements or more) receives the tap planes, cg at a time, when all 9 would take more than
    `PLANES_BYTES`; otherwise (and without it: exports) they are allocated.
    """
    n, cg, h, w = z.shape
    flat = z.view(n, cg, h * w)
    small = scratch is None or n * 9 * h * w * z.element_size() <= PLANES_BYTES
    for taps in _tap_ranges(9 if small else cg):
        weight = kernel[:, taps.start : taps.stop].t().expand(n, len(taps), cg)
        out = None if small else scratch.view(-1)[: n * len(taps) * h * w].view(n, len(taps), h * w)
        planes = torch.bmm(weight, flat, out=out).view(n, len(taps), h, w)
        for i, tap in enumerate(taps):
            (_, dst_y, dst_x), (_, src_y, src_x) = _tap_slices(*_TAPS[tap])
            m[:, dst_y, dst_x].add_(planes[:, i, src_y, src_x])  # not `+=`, which copies the sum onto itself again
    return m


def _conv_channel_sum_backward(dm, z, kernel, dz, scratch):
    """Backward of `_add_conv_channel_sum`: add its input gradient to dz and return the kernel's gradient (cg, 9).

    The tap planes go into `scratch` cg at a time, or are allocated at once under `PLANES_BYTES`.
    """
    n, cg, h, w = z.shape
    flat, dz_flat, d_kernel = z.view(n, cg, h * w), dz.view(n, cg, h * w), kernel.new_empty(kernel.shape)
    small = n * 9 * h * w * z.element_size() <= PLANES_BYTES
    for taps in _tap_ranges(9 if small else cg):
        chunk = slice(taps.start, taps.stop)
        planes = z.new_zeros((n, 9, h, w)) if small else scratch.view(-1)[: n * len(taps) * h * w].zero_()
        planes = planes.view(n, len(taps), h, w)
        for i, tap in enumerate(taps):  # the output position each input position fed: the mirrored shift
            dy, dx = _TAPS[tap]
            dst, src = _tap_slices(2 - dy, 2 - dx)
            planes[:, i][dst] = dm[src]
        planes = planes.view(n, len(taps), h * w)
        # (taps, cg) then transposed: with a single tap this is the fast vector-on-the-left product
        d_kernel[:, chunk] = torch.bmm(planes, flat.transpose(1, 2)).sum(0).t()
        dz_flat.baddbmm_(kernel[:, chunk].expand(n, cg, len(taps)), planes)
    return d_kernel


# On CPU a map larger than the last-level cache is processed in chunks of whole group-samples (the computation never
# mixes them), each small enough that its intermediate tensors stay in the cache: a contiguous float32 input is read
# from memory about once and the output written once (other dtypes and layouts are converted in one pass first), and
# everything between runs at cache speed. Maps that fit the cache run in one piece: every chunk pays a fixed dispatch
# cost. Chunk size measured on a 2-core EPYC with a 32 MB L3 (docs/benchmarks.md, roofline section).
CHUNK_BYTES = 2**22
CACHE_BYTES = 2**23


def _chunks(z):
    """Chunk slices of group-samples z (n, cg, h, w): one chunk off the CPU or when z fits `CACHE_BYTES`, else chunks
    of `CHUNK_BYTES`; and the largest chunk's size."""
    n, item_bytes = z.shape[0], z.shape[1:].numel() * z.element_size()
    k = max(1, n if z.device.type != "cpu" or n * item_bytes <= CACHE_BYTES else CHUNK_BYTES // item_bytes)
    return [slice(i, min(n, i + k)) for i in range(0, max(n, 1), k)], min(n, k)  # an empty batch: one empty chunk


def _gate_product(z, gate_h, gate_w, scratch=None):
    """t = z * g_h * g_w for z (k, cg, h, w), written into `scratch` (at least z's size) when given."""
    out = None if scratch is None else scratch.view(-1)[: z.numel()].view(z.shape)
    return torch.mul(z, gate_h.unsqueeze(-1), out=out).mul_(gate_w.unsqueeze(-2))


def _pool_gates(row_sum, col_sum, w1, b1):
    """Directional pooling and the shared 1x1 conv, from the row sums (k, cg, h) and column sums (k, cg, w) of z:
    pooled (k, cg, h + w), as the published code concatenates them, and the sigmoid gates (k, cg, h + w)."""
    h, w = row_sum.shape[-1], col_sum.shape[-1]
    pooled = torch.cat((row_sum / w, col_sum / h), -1)
    return pooled, torch.matmul(w1, pooled).add_(b1.unsqueeze(-1)).sigmoid_()


def _branch_softmax(z, row_sum, col_sum, w3, b3):
    """The 3x3 branch's window sums `taps` (k, cg, 3, 3) and s2 (k, cg), softmax over its spatial mean.

    Tap (a, b) sees every row but the last (a = 0) or the first (a = 2), and likewise columns. By inclusion-exclusion:
    total - excluded row - excluded column + their corner.
    """
    k, cg, h, w = z.shape
    total, zero = row_sum.sum(2), torch.zeros_like(row_sum[..., 0])
    row_out = torch.stack((row_sum[..., -1], zero, row_sum[..., 0]), -1)  # (k, cg, 3)
    col_out = torch.stack((col_sum[..., -1], zero, col_sum[..., 0]), -1)
    corners = (z[..., -1, -1], zero, z[..., -1, 0], zero, zero, zero, z[..., 0, -1], zero, z[..., 0, 0])
    taps = torch.stack(corners, -1).view(k, cg, 3, 3) - row_out.unsqueeze(-1) - col_out.unsqueeze(-2)
    taps += total.view(k, cg, 1, 1)
    return taps, torch.softmax(torch.mm(taps.view(k, cg * 9), w3.reshape(cg, cg * 9).t()) / (h * w) + b3, 1)


def _forward_chunk(z, eps, gn_w, gn_b, w1, b1, w3, b3, s1, kernel, out=None, scratch=None):
    """EMA of group-samples z (k, cg, h, w); returns the output and the tensors the backward needs for them.

    With `out` (z's shape and dtype) and `scratch` (at least z's size) the output and the intermediates are written
    there (the eager operator); without them every tensor is allocated (exporters trace plain ops).
    """
    k, cg, h, w = z.shape
    hw = h * w

    row_sum, col_sum = z.sum(3), z.sum(2)
    pooled, gates = _pool_gates(row_sum, col_sum, w1, b1)
    gate_h, gate_w = gates[..., :h], gates[..., h:]

    # GroupNorm(cg, cg) of t = z * g_h * g_w: its centred values d = t - mean (two-pass variance); the normalised
    # xhat = d * rstd is never formed, rstd is folded into the channel weights below.
    d = _gate_product(z, gate_h, gate_w, scratch)
    mean = d.mean((2, 3))
    d.sub_(mean.view(k, cg, 1, 1))
    rstd = torch.rsqrt(torch.linalg.vector_norm(d, dim=(2, 3)).square() / hw + eps)  # (k, cg); not square_: autograd
    # differentiates this function where exporters and observers run it, and the norm's backward reads its output

    taps, s2 = _branch_softmax(z, row_sum, col_sum, w3, b3)

    # m = s2-weighted sum of gn(t) + s1-weighted sum of conv3x3(z); the latter is one 3x3 kernel per input channel.
    const = (s2 * gn_b).sum(1) + (s1 * b3).sum()
    m = torch.bmm((s2 * gn_w * rstd).unsqueeze(1), d.view(k, cg, hw)).view(k, h, w).add_(const.view(k, 1, 1))
    sig = _add_conv_channel_sum(m, z, kernel, scratch=out).sigmoid_()  # tap planes in `out` before the output
    out = torch.mul(z, sig.unsqueeze(1), out=out)
    return out, (mean, gates, sig, s2, rstd, taps, pooled)


def _prepare(x, groups, gn_weight, gn_bias, conv1x1_weight, conv1x1_bias, conv3x3_weight, conv3x3_bias):
    """Group-samples z (B * G, C / G, H, W) in the computing dtype, the parameters in it, s1 and the 3x3 kernel K."""
    b, c, h, w = x.shape  # symbolic in exports; the group counts are Python ints
    cg = c // groups
    acc = torch.promote_types(x.dtype, torch.float32)
    z = x.to(acc).reshape(b * groups, cg, h, w).contiguous()  # contiguous whatever the input's layout: flat views
    gn_w, gn_b, w1, b1, w3, b3 = (
        p if p.dtype == acc else p.to(acc)  # no call where none is needed: each costs what small maps notice
        for p in (gn_weight, gn_bias, conv1x1_weight, conv1x1_bias, conv3x3_weight, conv3x3_bias)
    )
    s1 = torch.softmax(gn_b, 0)  # the spatial mean of gn(.) is exactly its bias
    kernel = torch.mm(s1.view(1, cg), w3.reshape(cg, cg * 9)).view(cg, 9)  # sum_k s1[k] conv3x3.weight[k]; not torch.mv, whose ONNX export gave wrong values here
    return z, (gn_w, gn_b, w1.reshape(cg, cg), b1, w3, b3, s1, kernel)


def ema_forward(x, groups, eps, gn_weight, gn_bias, conv1x1_weight, conv1x1_bias, conv3x3_weight, conv3x3_bias):
    """EMA of `x` (B, C, H, W) with `groups` groups, in plain ops; returns (output, tensors the backward needs).

    What exporters, FLOP counters and `EMA.spatial_weights` run: one chunk, every tensor allocated. Computes in
    float32 or wider whatever the input dtype (the output has the input's dtype), like autocast does for GroupNorm
    and softmax.
    """
    z, weights = _prepare(x, groups, gn_weight, gn_bias, conv1x1_weight, conv1x1_bias, conv3x3_weight, conv3x3_bias)
    return _forward_whole(x, z, eps, weights)


def _forward_whole(x, z, eps, weights, out=None):
    """`ema_forward` of the group-samples z of `x` (as `_prepare` returns them, with `weights`), in one piece; `out`
    (z's shape and dtype), when given, also holds the 3x3 branch's tap planes before the output."""
    gn_w, gn_b, w1, b1, w3, b3, s1, kernel = weights
    out, (mean, *saved) = _forward_chunk(z, eps, gn_w, gn_b, w1, b1, w3, b3, s1, kernel, out)
    return out.view(x.shape).to(x.dtype), (mean, *saved, s1, kernel)


def _saved_shapes(x, groups):
    """Shapes of the tensors `ema_forward` saves for the backward, for input `x` (B, C, H, W), in its order."""
    b, c, h, w = x.shape
    n, cg = b * groups, c // groups
    return [(n, cg), (n, cg, h + w), (n, h, w), (n, cg), (n, cg), (n, cg, 3, 3), (n, cg, h + w), (cg,), (cg, 9)]


def _ema_forward_chunked(x, groups, eps, *params):
    """`ema_forward` in cache-sized chunks into buffers it owns (the eager operator's kernel); same results.

    A map that fits the cache is one chunk and runs as `ema_forward` does: owned buffers would only add copies, each a
    fixed cost that small maps do not hide.
    """
    z, weights = _prepare(x, groups, *params)
    slices, size = _chunks(z)
    if len(slices) == 1:
        return _forward_whole(x, z, eps, weights, torch.empty_like(z))
    gn_w, gn_b, w1, b1, w3, b3, s1, kernel = weights
    n, cg, h, w = z.shape
    out = torch.empty(z.shape, dtype=x.dtype, device=x.device)
    scratch = z.new_empty((size, cg, h, w))
    chunk_out = out if out.dtype == z.dtype else z.new_empty((size, cg, h, w))
    saved = [z.new_empty(shape) for shape in _saved_shapes(x, groups)[:7]]  # all but s1 and K: per group-sample
    for sl in slices:
        k = sl.stop - sl.start
        part = chunk_out[sl] if chunk_out is out else chunk_out[:k]
        result, chunk_saved = _forward_chunk(z[sl], eps, gn_w, gn_b, w1, b1, w3, b3, s1, kernel, part, scratch)
        if chunk_out is not out:
            out[sl] = result
        for full, piece in zip(saved, chunk_saved):
            full[sl] = piece
    return out.view(x.shape), (*saved, s1, kernel)


def autocast_off(device_type):
    """Turn autocast off on `device_type` where it is on: the EMA math casts to float32 or wider by itself."""
    try:
        enabled = torch.is_autocast_enabled(device_type)
    except RuntimeError:  # device types autocast does not know, e.g. 'meta' (shape inference, FLOP counters)
        enabled = False
    return torch.autocast(device_type, enabled=False) if enabled else contextlib.nullcontext()


# EMA as two functional operators. Their eager kernels reuse buffers freely, but only buffers they allocate
# themselves: they never write into an input, and every tensor they return is fresh (no alias of an input). A compiler
# (AOTAutograd, inductor) owns, donates and reuses the buffers of its graphs, saved activations included, and cannot
# see writes hidden inside an operator; with these two contracts it needs to see none, and it keeps each operator
# opaque: no graph breaks, no EMA kernels to generate. Shapes and strides come from the fake kernels below.
# torch.compile's caches (inductor's FX graph cache, AOTAutograd's) know a custom operator by its name only, not by its
# kernels or fake kernel (pytorch/pytorch#160472, #144344): a cache warmed by another version of this file would
# replay code compiled for other saved tensors. So the names carry a digest of this file.
VERSION = hashlib.sha1(resources.files(__package__).joinpath("ema_function.py").read_bytes()).hexdigest()[:12]


@torch.library.custom_op(f"ema_yolo::ema_{VERSION}", mutates_args=())
def ema_op(
    x: torch.Tensor, groups: int, eps: float, gn_weight: torch.Tensor, gn_bias: torch.Tensor,
    conv1x1_weight: torch.Tensor, conv1x1_bias: torch.Tensor, conv3x3_weight: torch.Tensor, conv3x3_bias: torch.Tensor,
) -> list[torch.Tensor]:
    """EMA's forward: [output (x's shape and dtype), then the tensors the backward needs] (see `_saved_shapes`)."""
    with autocast_off(x.device.type):
        out, saved = _ema_forward_chunked(
            x, groups, eps, gn_weight, gn_bias, conv1x1_weight, conv1x1_bias, conv3x3_weight, conv3x3_bias
        )
    return [out, *saved]


@ema_op.register_fake
def _(x, groups, eps, gn_weight, gn_bias, conv1x1_weight, conv1x1_bias, conv3x3_weight, conv3x3_bias):
    acc = torch.promote_types(x.dtype, torch.float32)
    return [x.new_empty(x.shape), *(x.new_empty(s, dtype=acc) for s in _saved_shapes(x, groups))]


@torch.library.custom_op(f"ema_yolo::ema_backward_{VERSION}", mutates_args=())
def ema_backward_op(
    grad_out: torch.Tensor, x: torch.Tensor, mean: torch.Tensor, gates: torch.Tensor, sig: torch.Tensor,
    s2: torch.Tensor, rstd: torch.Tensor, taps: torch.Tensor, pooled: torch.Tensor, s1: torch.Tensor,
    kernel: torch.Tensor, gn_weight: torch.Tensor, gn_bias: torch.Tensor, conv1x1_weight: torch.Tensor,
    conv3x3_weight: torch.Tensor, conv3x3_bias: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """EMA's backward: gradients of x (x's shape, computing dtype) and of the six parameters (flat, computing dtype)."""
    with autocast_off(grad_out.device.type):
        acc = mean.dtype
        (n, cg), (h, w) = mean.shape, sig.shape[1:]
        z = x.to(acc).reshape(n, cg, h, w).contiguous()
        params = (gn_weight, gn_bias, conv1x1_weight.reshape(cg, cg), conv3x3_weight, conv3x3_bias)
        saved = (mean, gates, sig, s2, rstd, taps, pooled, s1, kernel)
        grads = _backward(grad_out, z, *saved, *(p.to(acc) for p in params))
    return grads[0].view(x.shape), *grads[1:]


@ema_backward_op.register_fake
def _(grad_out, x, mean, *_):
    cg = mean.shape[1]
    sizes = [cg, cg, cg * cg, cg, cg * cg * 9, cg]
    return mean.new_empty(x.shape), *(mean.new_empty(s) for s in sizes)


def _setup_context(ctx, inputs, output):
    x, groups, _, gn_weight, gn_bias, conv1x1_weight, conv1x1_bias, conv3x3_weight, conv3x3_bias = inputs
    ctx.mark_non_differentiable(*output[1:])
    ctx.save_for_backward(x, *output[1:], gn_weight, gn_bias, conv1x1_weight, conv3x3_weight, conv3x3_bias)
    params = (gn_weight, gn_bias, conv1x1_weight, conv1x1_bias, conv3x3_weight, conv3x3_bias)
    ctx.param_meta = [(p.shape, p.dtype) for p in params]
    ctx.x_dtype = x.dtype


def register_autograd(forward_op, backward_op):
    """Make `forward_op` (this module's `ema_op` or an operator with its signature and outputs) differentiable once
    through `backward_op` (with `ema_backward_op`'s signature and outputs)."""

    def backward_rule(ctx, output_grads):
        grads = backward_op(output_grads[0], *ctx.saved_tensors)  # the saved tensors' grads are None
        return (
            grads[0].to(ctx.x_dtype), None, None,
            *(g.view(shape).to(dtype) for g, (shape, dtype) in zip(grads[1:], ctx.param_meta)),
        )

    forward_op.register_autograd(backward_rule, setup_context=_setup_context)


register_autograd(ema_op, ema_backward_op)


def ema(x, groups, eps, gn_weight, gn_bias, conv1x1_weight, conv1x1_bias, conv3x3_weight, conv3x3_bias):
    """EMA of `x` (B, C, H, W) through the `ema_yolo::ema_<VERSION>` operator (differentiable once); the output.

    Without autograd in eager mode (inference) the operator's kernel runs without the operator: its dispatch costs a
    fixed ~0.1 ms per call on the 2-core development CPU, which decided small maps against the published structure.
    """
    if not torch.is_grad_enabled() and not torch.compiler.is_compiling():
        with autocast_off(x.device.type):
            return _ema_forward_chunked(
                x, groups, eps, gn_weight, gn_bias, conv1x1_weight, conv1x1_bias, conv3x3_weight, conv3x3_bias
            )[0]
    return ema_op(x, groups, eps, gn_weight, gn_bias, conv1x1_weight, conv1x1_bias, conv3x3_weight, conv3x3_bias)[0]


def _backward(grad_out, z, mean, gates, sig, s2, rstd, taps, pooled, s1, kernel, gn_w, gn_b, w1, w3, b3):
    """EMA's backward in the forward's chunks; reads the saved tensors, never writes them. Returns (dz, param grads).

    Each chunk's gradient with respect to its input is complete within the chunk; the parameters' gradients are
    sums over group-samples, accumulated over the chunks (`_backward_chunk`), and finished here.
    """
    n, cg, h, w = z.shape
    go = grad_out.to(z.dtype).reshape(n, cg, h, w)
    dz = torch.empty_like(z)
    slices, size = _chunks(z)
    scratch = z.new_empty((size, cg, h, w))
    sums = None
    for sl in slices:
        saved = (mean[sl], gates[sl], sig[sl], s2[sl], rstd[sl], taps[sl], pooled[sl])
        part = _backward_chunk(go[sl], z[sl], *saved, s1, kernel, gn_w, gn_b, w1, w3, b3, dz[sl], scratch)
        sums = part if sums is None else [a + b for a, b in zip(sums, part)]
    return (dz, *_param_grads(sums, s1, w3, b3))


def _param_grads(sums, s1, w3, b3):
    """The parameters' gradients (flat) from the sums over group-samples that `_backward_chunk` returns: adds the
    terms through s1 = softmax(gn.bias), which weighs the 3x3 kernel and bias: K = sum_k s1[k] conv3x3.weight[k]."""
    d_gn_w, d_gn_b, d_w1, d_b1, d_kernel, d_w3, d_b3, d_sum = sums
    cg = s1.shape[0]
    d_kernel = d_kernel.view(cg, 3, 3)
    d_s1 = torch.einsum("kjyx,jyx->k", w3, d_kernel) + b3 * d_sum
    d_gn_b = d_gn_b + s1 * (d_s1 - (s1 * d_s1).sum())
    d_w3 = d_w3 + s1.view(cg, 1, 1, 1) * d_kernel
    d_b3 = d_b3 + s1 * d_sum
    return d_gn_w, d_gn_b, d_w1.reshape(-1), d_b1, d_w3.reshape(-1), d_b3


def _backward_chunk(go, z, mean, gates, sig, s2, rstd, taps, pooled, s1, kernel, gn_w, gn_b, w1, w3, b3, dz, scratch):
    """One chunk's backward: writes its input gradient into `dz`, returns its share of the parameter gradients.

    Returns [d gn.weight, d gn.bias (s2 path), d conv1x1.weight, d conv1x1.bias, d K, d conv3x3.weight (s2 path),
    d conv3x3.bias (s2 path), sum of dm]; the s1 terms need the sums over all chunks (`_backward`).
    """
    k, cg, h, w = z.shape
    gate_h, gate_w = gates[..., :h], gates[..., h:]
    hw = h * w

    # out = z * sigmoid(m): dm = sum_k go * z * sig'(m); the direct term go * sig starts dz.
    buf = torch.mul(go, z, out=dz)  # dz's memory is the first buffer
    dm = torch.ops.aten.sigmoid_backward(buf.sum(1), sig)  # (k, h, w)
    d_sum = dm.sum((1, 2))  # (k,)

    # The centred product d = t - mean, recomputed into the scratch (the forward kept only its statistics).
    d = _gate_product(z, gate_h, gate_w, scratch).sub_(mean.view(k, cg, 1, 1))

    # GroupNorm branch, m += sum_k s2[k] (gamma[k] xhat[k] + beta[k]) with xhat = d * rstd: GroupNorm's backward with
    # dy[k] = s2[k] dm. sum_p dm * xhat[k]; batched matrix-vector products run several times faster with the vector on
    # the left.
    xhat_dm = torch.bmm(dm.view(k, 1, hw), d.view(k, cg, hw).transpose(1, 2)).view(k, cg) * rstd
    d_s2 = gn_w * xhat_dm + gn_b * d_sum.unsqueeze(1)
    d_gn_w, d_gn_b = (s2 * xhat_dm).sum(0), (s2 * d_sum.unsqueeze(1)).sum(0)
    a = (gn_w * rstd * s2).view(k, cg, 1, 1)
    # dt = a (dm - mean(dm) - xhat mean(dm xhat)), written over d
    dt = torch.addcmul(a * (d_sum / -hw).view(k, 1, 1, 1), d, a * (rstd * xhat_dm / -hw).view(k, cg, 1, 1), out=d)
    dt.addcmul_(a, dm.unsqueeze(1))

    # t = z * g_h * g_w
    prod = torch.mul(dt, z, out=buf)
    d_gates = torch.cat(  # (k, cg, h + w)
        (
            torch.matmul(gate_w.unsqueeze(-2), prod.transpose(-1, -2)).squeeze(-2),
            torch.matmul(gate_h.unsqueeze(-2), prod).squeeze(-2),
        ),
        -1,
    )
    torch.mul(go, sig.unsqueeze(1), out=dz)
    dz.addcmul_(dt.mul_(gate_h.unsqueeze(-1)), gate_w.unsqueeze(-2))

    # 3x3 branch, m += sum_k K[k] (*) z[k]; dt's memory is free scratch now.
    d_kernel = _conv_channel_sum_backward(dm, z, kernel, dz, scratch=dt)

    d_w1, d_b1, d_w3, d_b3, d_h, d_w, d_taps = _gates_backward(d_gates, d_s2, gates, pooled, s2, taps, w1, w3, h)
    dz.add_(d_h.unsqueeze(-1)).add_(d_w.unsqueeze(-2))
    for (i, j), (ty, tx) in zip(((-1, -1), (-1, 0), (0, -1), (0, 0)), ((0, 0), (0, 2), (2, 0), (2, 2))):
        dz[..., i, j] += d_taps[..., ty, tx]
    return [d_gn_w, d_gn_b, d_w1, d_b1, d_kernel, d_w3, d_b3, d_sum.sum()]


def _gates_backward(d_gates, d_s2, gates, pooled, s2, taps, w1, w3, h):
    """Backward of `_pool_gates` and `_branch_softmax` for one chunk, given the gradients of the gates (k, cg, h + w)
    and of s2 (k, cg), for maps of height `h`.

    Returns the chunk's share of d conv1x1.weight, d conv1x1.bias, d conv3x3.weight and d conv3x3.bias (s2 path),
    then what z receives through the pooling and window sums: per row d_h (k, cg, h), per column d_w (k, cg, w), and
    at the four corners d_taps[..., a, b] (k, cg, 3, 3) for (a, b) = (0, 0) at (-1, -1), (0, 2) at (-1, 0), (2, 0) at
    (0, -1) and (2, 2) at (0, 0).
    """
    w = gates.shape[-1] - h
    hw = h * w
    # Gates: g = sigmoid(conv1x1(pooled)), the same 1x1 conv for both directions.
    d_act = torch.ops.aten.sigmoid_backward(d_gates, gates)
    d_w1 = torch.bmm(d_act, pooled.transpose(1, 2)).sum(0)
    d_b1 = d_act.sum((0, 2))
    d_pooled = torch.matmul(w1.t(), d_act)

    # s2 = softmax over the 3x3 branch's spatial mean.
    d_mean = s2 * (d_s2 - (s2 * d_s2).sum(1, keepdim=True))  # (k, cg)
    d_w3 = torch.einsum("nk,njyx->kjyx", d_mean, taps) / hw
    d_taps = torch.einsum("nk,kjyx->njyx", d_mean, w3) / hw  # (k, cg, 3, 3)

    # Pooling and window sums are linear in z: dz[i, j] += d_h[i] + d_w[j] per channel, plus the four corners.
    # Window sums, by the forward's inclusion-exclusion: every tap reads the total, less a border row and column.
    d_h, d_w = d_pooled[..., :h].div_(w), d_pooled[..., h:].div_(h)  # (k, cg, h), (k, cg, w), views
    d_h += d_taps.sum((2, 3)).unsqueeze(-1)
    d_h[..., -1] -= d_taps[:, :, 0].sum(-1)
    d_h[..., 0] -= d_taps[:, :, 2].sum(-1)
    d_w[..., -1] -= d_taps[..., 0].sum(-1)
    d_w[..., 0] -= d_taps[..., 2].sum(-1)
    return d_w1, d_b1, d_w3, d_mean.sum(0), d_h, d_w, d_taps
