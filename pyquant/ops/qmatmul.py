"""``qmatmul``: quantized matmul, y = x @ dequantize(W).T (+ bias); for the ``-a8`` specs x is
quantized to int8 first (``reference.quantize_activations``).

Public entry point, input validation, and the ``torch.library`` op ``pyquant::qmatmul`` (with a
fake implementation, so it composes with torch.compile). Backends register a function with the
signature of ``reference.qmatmul``: (x[M, K] contiguous, qweight, scales, zeros, bias, bits,
group_size, in_features) -> y[M, N] in x's dtype, weight-only: the op quantizes x for the -a8
specs unless the backend's ``prepare`` does it (``register_prepare(..., act8=True)``).
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

from ..formats import QuantizedWeight
from . import reference
from ._registry import register, resolve

SUPPORTED_X_DTYPES = (torch.float32, torch.bfloat16, torch.float16)

register("qmatmul", "reference")(reference.qmatmul)


@torch.library.custom_op("pyquant::qmatmul", mutates_args=())
def _qmatmul_op(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: Optional[torch.Tensor],
                bias: Optional[torch.Tensor], bits: int, group_size: int, in_features: int,
                backend: str, act_bits: int = 0) -> torch.Tensor:
    impl = resolve("qmatmul", x.device, backend)
    if act_bits and impl.quantizes_activations:  # as the eager call runs it
        return impl.prepare(qweight, scales, zeros, bits, group_size, in_features, act_bits=act_bits)(x, bias)

    def run(x, bias):
        return impl.fn(x, qweight, scales, zeros, bias, bits, group_size, in_features)
    if act_bits:
        run = reference.with_quantized_activations(run, group_size or in_features)
    return run(x, bias)


@_qmatmul_op.register_fake
def _(x, qweight, scales, zeros, bias, bits, group_size, in_features, backend, act_bits=0):
    return x.new_empty((x.shape[0], qweight.shape[0]))


def _cached_runner(qw: QuantizedWeight, dev: torch.device, backend: str) -> "Callable | None":
    """The runner ``_runner`` made for ``qw`` on ``dev`` with ``backend``, while the weight's tensors
    are still the same objects and storage; else None."""
    hit = qw._runners.get((backend, dev))
    if hit is not None and hit[0] is qw.qweight and hit[1] is qw.scales and hit[2] is qw.zeros \
            and hit[3] == _ptrs(hit[0], hit[1], hit[2]):
        return hit[4]
    return None


def _runner(qw: QuantizedWeight, dev: torch.device, backend: str) -> Callable:
    """``run(x[..., K], bias) -> y[..., N]`` for ``qw`` on device ``dev`` through ``backend`` ("auto" or
    a name), x's rows contiguous: the backend's prepared runner (weight checked and converted once),
    cached on ``qw`` (``_cached_runner``)."""
    run = _cached_runner(qw, dev, backend)
    if run is not None:
        return run
    impl = resolve("qmatmul", dev, backend)
    q, s, z = qw.qweight, qw.scales, qw.zeros
    args = (q, s, z, qw.spec.bits, qw.spec.group_size or 0, qw.in_features)
    act = qw.spec.act_bits
    kernel_quantizes_x = bool(act) and impl.quantizes_activations
    if impl.prepare is not None:
        run = impl.prepare(*args, act_bits=act) if kernel_quantizes_x else impl.prepare(*args)
    else:
        def run(x, bias, fn=impl.fn):
            return fn(x, q, s, z, bias, *args[3:])
    if not (impl.prepare is not None and impl.prepare_any_rank):
        run = _any_rank(run, qw.in_features)
    if act and not kernel_quantizes_x:
        run = reference.with_quantized_activations(run, qw.spec.act_block(qw.in_features))
    qw._runners[(backend, dev)] = (q, s, z, _ptrs(q, s, z), run)
    return run


def _any_rank(run2: Callable, k: int) -> Callable:
    """A runner of x[M, K] as one of x[..., K]."""
    def run(x, bias):
        if x.dim() == 2:
            return run2(x, bias)
        y = run2(x.reshape(-1, k), bias)
        return y.reshape(*x.shape[:-1], y.shape[-1])
    return run


def _ptrs(q, s, z) -> tuple:
    return q.data_ptr(), s.data_ptr(), 0 if z is None else z.data_ptr()


def check_qmatmul_args(x: torch.Tensor, qw: QuantizedWeight, bias: Optional[torch.Tensor]) -> torch.device:
    """Raise ValueError naming the problem if x, qw, bias cannot go through qmatmul; returns x's device."""
    if not isinstance(qw, QuantizedWeight):
        raise ValueError(f"qmatmul: weight must be a QuantizedWeight, got {type(qw).__name__}")
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"qmatmul: x must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in SUPPORTED_X_DTYPES:
        raise ValueError(f"qmatmul: unsupported activation dtype {x.dtype} (use float32, bfloat16 or float16)")
    if x.dim() < 1 or x.shape[-1] != qw.in_features:
        raise ValueError(f"qmatmul: x's last dimension is {tuple(x.shape)[-1:]} but the weight has K={qw.in_features}")
    dev = x.device
    if dev != qw.device:
        raise ValueError(f"qmatmul: x is on {dev} but the weight is on {qw.device}")
    if bias is not None:
        if tuple(bias.shape) != (qw.out_features,):
            raise ValueError(f"qmatmul: bias must have shape [{qw.out_features}], got {list(bias.shape)}")
        if bias.device != dev:
            raise ValueError(f"qmatmul: bias is on {bias.device} but x is on {dev}")
    return dev


def qmatmul(x: torch.Tensor, qw: QuantizedWeight, bias: Optional[torch.Tensor] = None, backend: str = "auto") -> torch.Tensor:
    """y[..., N] = x[..., K] @ qw.dequantize().T (+ bias), in x's dtype (accumulated in float32).
    For the ``-a8`` specs x is first quantized to int8 (``pq.ops.reference.quantize_activations``).

    The full-precision weight is never built by the native backends: dequantization happens in
    registers. ``backend``: "auto" (fastest available for x's device), or a name from
    ``pq.ops.available_backends("qmatmul", device)``.
    """
    eager = type(x) is torch.Tensor and not torch.compiler.is_compiling()
    if eager and bias is None and isinstance(qw, QuantizedWeight) and x.ndim and x.shape[-1] == qw.shape[1] \
            and x.dtype in SUPPORTED_X_DTYPES:
        # A runner made for x's device passed check_qmatmul_args with the weight as it still is, and
        # x fits it: 2.5-4.2 us a call less at 4096 x 4096 (bench/RESULTS.md, thirty-second session).
        run = _cached_runner(qw, x.device, backend)
        if run is not None:
            return run(x if x.is_contiguous() else x.contiguous(), None)
    dev = check_qmatmul_args(x, qw, bias)
    if bias is not None and bias.dtype != x.dtype:
        bias = bias.to(x.dtype)
    if eager:
        # Call the backend directly; the custom-op dispatch alone costs ~0.1 ms per call on a small
        # CPU, more than a decode-size kernel. Tracing/compiling goes through the op, which resolves
        # the backend when it runs: the availability probes (calls into pyquant._C) are not
        # traceable, and a graph compiled before any eager call would break on them.
        return _runner(qw, dev, backend)(x if x.is_contiguous() else x.contiguous(), bias)
    x2 = x.reshape(-1, qw.in_features)
    if not x2.is_contiguous():
        x2 = x2.contiguous()
    y = torch.ops.pyquant.qmatmul(x2, qw.qweight, qw.scales, qw.zeros, bias, qw.spec.bits,
                                  qw.spec.group_size or 0, qw.in_features, backend, qw.spec.act_bits or 0)
    return y if x.dim() == 2 else y.reshape(*x.shape[:-1], qw.out_features)


def grouped_rows(x: torch.Tensor, sizes: "list[int]", out_features: int, run: Callable) -> torch.Tensor:
    """y[R, out_features]: group e, the next sizes[e] rows of x, through ``run(e, rows)``; zeros past them."""
    parts, start = [], 0
    for e, n in enumerate(sizes):
        if n:
            parts.append(run(e, x[start:start + n]))
            start += n
    if start < x.shape[0] or not parts:
        parts.append(x.new_zeros((x.shape[0] - start, out_features)))
    return parts[0] if len(parts) == 1 else torch.cat(parts)


@torch.library.custom_op("pyquant::grouped_qmatmul", mutates_args=())
def _grouped_qmatmul_op(x: torch.Tensor, counts: torch.Tensor, qweights: list[torch.Tensor], scales: list[torch.Tensor],
                        zeros: list[Optional[torch.Tensor]], in_perms: list[Optional[torch.Tensor]], bits: int,
                        group_size: int, in_features: int, out_features: int, backend: str,
                        act_bits: int = 0) -> torch.Tensor:
    def run(e, rows):
        if in_perms[e] is not None:
            rows = rows.index_select(-1, in_perms[e])
        return _qmatmul_op(rows.contiguous(), qweights[e], scales[e], zeros[e], None, bits, group_size, in_features,
                           backend, act_bits)
    return grouped_rows(x, counts.tolist(), out_features, run)


@_grouped_qmatmul_op.register_fake
def _(x, counts, qweights, scales, zeros, in_perms, bits, group_size, in_features, out_features, backend, act_bits=0):
    return x.new_empty((x.shape[0], out_features))


def grouped_qmatmul(x: torch.Tensor, counts: torch.Tensor, qws: "list[QuantizedWeight]",
                    in_perms: "list[Optional[torch.Tensor]] | None" = None, backend: str = "auto") -> torch.Tensor:
    """y[R, N] for x[R, K] whose rows come in groups: group e, the next ``counts[e]`` rows, goes through
    ``qws[e]`` (its columns first gathered by ``in_perms[e]`` when given, as QuantLinear does); rows past
    sum(counts) give zeros. A mixture-of-experts layer's experts on their routed rows, sorted by expert.
    Under torch.compile this is one op, ``pyquant::grouped_qmatmul``, that reads the group sizes when it
    runs: the graph has no shape that depends on the routing. Every weight must share one spec and shape."""
    if not qws:
        raise ValueError("grouped_qmatmul: no weights")
    first = qws[0]
    for qw in qws:
        if not isinstance(qw, QuantizedWeight) or qw.spec != first.spec or qw.shape != first.shape:
            raise ValueError("grouped_qmatmul: every weight must be a QuantizedWeight of one spec and shape")
    if x.dim() != 2:
        raise ValueError(f"grouped_qmatmul: x must be [rows, K], got {list(x.shape)}")
    check_qmatmul_args(x, first, None)
    if counts.dim() != 1 or counts.numel() != len(qws) or counts.is_floating_point():
        raise ValueError(f"grouped_qmatmul: counts must be {len(qws)} integers (one per weight), got "
                         f"{counts.dtype} {list(counts.shape)}")
    perms = list(in_perms) if in_perms is not None else [None] * len(qws)
    if len(perms) != len(qws):
        raise ValueError(f"grouped_qmatmul: {len(perms)} in_perms for {len(qws)} weights")
    if type(x) is torch.Tensor and not torch.compiler.is_compiling():
        sizes = counts.tolist()
        if sum(sizes) > x.shape[0] or min(sizes) < 0:
            raise ValueError(f"grouped_qmatmul: counts {sizes} do not fit x's {x.shape[0]} rows")

        def run(e, rows):
            return qmatmul(rows if perms[e] is None else rows.index_select(-1, perms[e]), qws[e], backend=backend)
        return grouped_rows(x, sizes, first.out_features, run)
    return torch.ops.pyquant.grouped_qmatmul(
        x, counts, [q.qweight for q in qws], [q.scales for q in qws], [q.zeros for q in qws], perms,
        first.spec.bits, first.spec.group_size or 0, first.in_features, first.out_features, backend,
        first.spec.act_bits or 0)
