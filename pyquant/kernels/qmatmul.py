"""Triton kernel for weight-only quantized matmul: y[M, N] = x[M, K] @ dequantize(W).T (+ bias).

Same semantics as ``pyquant/ops/reference.py::qmatmul`` and the formats in ``pyquant/formats.py``:

* INT8 per output channel: the integer codes go into the dot product as they are, and the
  per-channel scale multiplies the fp32 accumulator once at the end.
* INT4 group-wise: a K block never straddles two groups (BLOCK_K divides the group size), so the
  block's dot product runs on the integer-valued ``code - zero`` (exact in fp16/bf16/fp32) and its
  fp32 result is multiplied by that group's scale. Packed bytes are loaded once and the two
  nibbles (low first) are interleaved in registers: the dequantized weight never exists in memory.
* Ragged K: loads of x and of the codes are masked with the true K (x is never read past K).
* fp32 accumulation; the output is stored in x's dtype.

Two inner products, picked at compile time: ``tl.dot`` (tensor cores; used for M >= 16) and a
broadcast multiply-reduce in fp32 (decode shapes, M < 16, where a 16-row MMA tile would be mostly
padding). fp32 activations use IEEE fp32 dot products (no TF32), so results match the reference.
Under the interpreter a bf16 ``tl.dot`` returns wrong values (seen with triton 3.x), so there
bf16 tiles go through the fp32 IEEE dot: the same arithmetic, since the integer-valued weights
and bf16 activations are exact in fp32.

Runs on NVIDIA GPUs and on the CPU under ``TRITON_INTERPRET=1`` (set it before this import).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _qmatmul_kernel(
    x_ptr, qw_ptr, s_ptr, z_ptr, b_ptr, y_ptr,
    M, N, K,
    stride_xm, stride_qn, stride_sn, stride_zn, stride_ym,
    BITS: tl.constexpr, GROUP: tl.constexpr, HAS_ZEROS: tl.constexpr, HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    USE_DOT: tl.constexpr, IEEE: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < M
    mask_n = offs_n < N
    rows_x = offs_m.to(tl.int64) * stride_xm
    rows_q = offs_n.to(tl.int64) * stride_qn

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mask_k = offs_k < K
        x = tl.load(x_ptr + rows_x[:, None] + offs_k[None, :],
                    mask=mask_m[:, None] & mask_k[None, :], other=0.0)          # [BM, BK]
        if BITS == 8:
            q = tl.load(qw_ptr + rows_q[:, None] + offs_k[None, :],
                        mask=mask_n[:, None] & mask_k[None, :], other=0)        # int8 [BN, BK]
            w = q.to(tl.float32)
        else:
            # BLOCK_K // 2 packed bytes per row; byte j holds codes 2j (low nibble) and 2j+1 (high).
            offs_b = k0 // 2 + tl.arange(0, BLOCK_K // 2)
            mask_b = offs_b < (K + 1) // 2
            packed = tl.load(qw_ptr + rows_q[:, None] + offs_b[None, :],
                             mask=mask_n[:, None] & mask_b[None, :], other=0)   # uint8 [BN, BK/2]
            lo = (packed & 0xF).to(tl.int32)
            hi = (packed >> 4).to(tl.int32)
            codes = tl.interleave(lo, hi)                                        # [BN, BK]
            g = k0 // GROUP
            if HAS_ZEROS:
                z = tl.load(z_ptr + offs_n.to(tl.int64) * stride_zn + g, mask=mask_n, other=0).to(tl.int32)
            else:
                z = tl.full((BLOCK_N,), 8, tl.int32)
            w = (codes - z[:, None]).to(tl.float32)
            # Codes past the true K (ragged last group, odd K) contribute nothing even if their
            # padding is not the zero-point: zero them (x is already 0 there).
            w = tl.where(mask_k[None, :], w, 0.0)
        if USE_DOT:
            if IEEE:
                part = tl.dot(x.to(tl.float32), tl.trans(w), input_precision="ieee")
            else:  # fp16/bf16: integer-valued weights in [-255, 255] are exact in these types
                part = tl.dot(x, tl.trans(w.to(x.dtype)))
        else:
            part = tl.sum(x.to(tl.float32)[:, None, :] * w[None, :, :], axis=2)   # [BM, BN]
        if BITS == 8:
            acc += part
        else:
            s = tl.load(s_ptr + offs_n.to(tl.int64) * stride_sn + k0 // GROUP, mask=mask_n, other=0.0)
            acc += part * s.to(tl.float32)[None, :]

    if BITS == 8:
        s = tl.load(s_ptr + offs_n.to(tl.int64) * stride_sn, mask=mask_n, other=0.0)
        acc = acc * s.to(tl.float32)[None, :]
    if HAS_BIAS:
        b = tl.load(b_ptr + offs_n, mask=mask_n, other=0.0)
        acc += b.to(tl.float32)[None, :]
    y_ptrs = y_ptr + offs_m.to(tl.int64)[:, None] * stride_ym + offs_n[None, :]
    tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


def _next_pow2(v: int) -> int:
    return 1 << max(0, (int(v) - 1).bit_length())


def block_config(M: int, N: int, K: int, bits: int, group_size: int, interpret: bool) -> dict:
    """Block sizes and launch options for one call (a plain heuristic, not yet tuned on a GPU).

    Returns a dict of the kernel's constexpr block sizes plus ``num_warps``/``num_stages``.
    INT4 needs BLOCK_K to divide the group size (every supported group size is a power of 2).
    """
    kmax = group_size if bits == 4 else 256
    if M < 16:  # decode: multiply-reduce, one small row block, weights streamed once
        bm = _next_pow2(M)
        if interpret:  # few, large blocks: the interpreter's cost is per block operation
            return dict(BLOCK_M=bm, BLOCK_N=64, BLOCK_K=min(kmax, 128), USE_DOT=False, num_warps=4, num_stages=1)
        # GPU: narrow column blocks so even N = 4096 fills >100 SMs; the [BM, BN, BK] product
        # tile stays at <= 8192 fp32 values (64 per thread with 4 warps), no spills.
        bk = min(kmax, 128 if bm <= 4 else 64)
        return dict(BLOCK_M=bm, BLOCK_N=16, BLOCK_K=bk, USE_DOT=False, num_warps=4, num_stages=3)
    bm = 16 if M <= 16 else (32 if M <= 32 else 64)
    bn = 64 if interpret else (64 if M <= 64 else 128)
    bk = min(kmax, 64)
    return dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, USE_DOT=True, num_warps=4, num_stages=3)


def qmatmul(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros, bias, bits: int,
            group_size: int, in_features: int, interpret: bool = False, **override) -> torch.Tensor:
    """Launch the kernel: y[M, N] in x's dtype (fp32 accumulation). Inputs are assumed validated.

    x [M, K] with unit stride along K; qweight/scales/zeros in the layout of pyquant/formats.py with
    unit stride along their last dimension; bias [N] contiguous or None. ``override`` replaces
    entries of ``block_config`` (tests and benchmarks use it to try other tilings).
    """
    M, K = x.shape
    N = qweight.shape[0]
    # The interpreter rounds fp32 -> bf16 toward zero (GPUs round to nearest even): there, store
    # fp32 and let torch round, so the CPU runs test the same numbers a GPU produces.
    round_in_torch = interpret and x.dtype == torch.bfloat16
    y = torch.empty((M, N), dtype=torch.float32 if round_in_torch else x.dtype, device=x.device)
    if M == 0 or N == 0 or K == 0:
        y.zero_()
        if bias is not None:
            y += bias.to(y.dtype)
        return y.to(x.dtype)
    cfg = block_config(M, N, K, bits, group_size or 0, interpret)
    cfg.update(override)
    grid = (triton.cdiv(M, cfg["BLOCK_M"]), triton.cdiv(N, cfg["BLOCK_N"]))
    _qmatmul_kernel[grid](
        x, qweight, scales, zeros if zeros is not None else scales, bias if bias is not None else scales, y,
        M, N, K,
        x.stride(0), qweight.stride(0), scales.stride(0), zeros.stride(0) if zeros is not None else 0, y.stride(0),
        BITS=bits, GROUP=group_size if bits == 4 else 1, HAS_ZEROS=zeros is not None, HAS_BIAS=bias is not None,
        IEEE=x.dtype == torch.float32 or (interpret and x.dtype == torch.bfloat16), **cfg,
    )
    return y.to(x.dtype) if round_in_torch else y


def compile_ahead(arch: int, cfg: dict, x_dtype: str = "bf16", bits: int = 4, group_size: int = 128,
                  has_zeros: bool = True, has_bias: bool = False, scale_dtype: str = "fp32"):
    """Compile the kernel for an NVIDIA GPU of compute capability ``arch`` (80, 90, ...) without a GPU
    (Triton's bundled ptxas), for the launch options ``cfg`` of ``block_config``: checks that what
    the interpreter runs also builds for the hardware. Returns Triton's CompiledKernel.
    Raises ValueError if this process loaded the kernel under TRITON_INTERPRET=1."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn = _qmatmul_kernel
    if not hasattr(fn, "cache_key"):
        raise ValueError("compile_ahead: the kernel was loaded under TRITON_INTERPRET=1; run without it")
    names = fn.arg_names
    meta = dict(cfg)
    num_warps, num_stages = meta.pop("num_warps", 4), meta.pop("num_stages", 3)
    meta.update(BITS=bits, GROUP=group_size if bits == 4 else 1, HAS_ZEROS=has_zeros, HAS_BIAS=has_bias,
                IEEE=x_dtype == "fp32")
    ptrs = {"x_ptr": "*" + x_dtype, "qw_ptr": "*u8" if bits == 4 else "*i8", "s_ptr": "*" + scale_dtype,
            "z_ptr": "*u8", "b_ptr": "*" + x_dtype, "y_ptr": "*" + x_dtype}
    sig = {a: ptrs.get(a, "constexpr" if a in meta else "i32") for a in names}
    src = ASTSource(fn, sig, constexprs={(names.index(a),): v for a, v in meta.items()})
    return triton.compile(src, target=GPUTarget("cuda", int(arch), 32),
                          options={"num_warps": num_warps, "num_stages": num_stages})
