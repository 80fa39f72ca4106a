"""Fused streaming top-N log-softmax kernel (Triton): one kernel, the [T, V] logits never exist.

Each program owns BLOCK_T rows of ``hidden`` and one slice of the vocabulary (a "split"). It walks
its slice in tiles of BLOCK_V rows of the LM head and, per tile:
  1. computes the logits tile ``hidden[rows] @ W[tile].T`` with ``tl.dot`` (fp32 accumulation;
     int8 / int4 heads are dequantized in registers, see ``WFMT``), then adds the head's bias and
     soft-caps it where the head has them (``HAS_BIAS``, ``HAS_SOFTCAP``: an LMHead, ops/head.py);
  2. updates a running max and rescaled sum of exp (online log-sum-exp; all -inf stays NaN-free);
  3. writes the raw logits of ``targets`` and ``ref_ids`` that fall inside the tile (``tl.gather``
     along the tile from the block's ids, loaded once);
  4. merges the tile into a running top-N kept as packed int64 keys (below), skipped when no row's
     tile max reaches its current N-th logit.
Per (split, row) it writes the running max, the sum and the N best keys; ``stream_topn`` combines
the splits in O(T * splits * N) (one split when the grid already fills the device).

Top-N keys: a float32 logit maps to an order-preserving int32 ``s`` (flip the magnitude bits of
negatives), and ``key = s << 32 | (2**31 - 1 - id)``: keys are unique, larger key = larger logit,
and on equal logits the lower id has the larger key, so ordering keys is exactly the contract's
order (descending, ties -> lower id first). The exact logit and id are decoded from the key. The
empty slot is INT64_MIN, below every real token (a real -inf logit included).
Merging: while some row's best remaining tile key beats its current N-th key, that key replaces
the row's minimum slot (unique, because keys are unique) and leaves the tile. For random data the
loop runs ~N * BLOCK_V / v0 times per tile after the first, so the merge is cheap.
Quantized LM heads (QuantizedWeight int8 / int4) go through this same kernel: codes are
dequantized in registers (int8: the row scale multiplies the accumulated tile), never via the driver.
"""
from __future__ import annotations

import triton
import triton.language as tl

KEY_EMPTY = -(2**63)        # an empty top-N slot: sorts after every real token
_ID_BIAS = 2**31 - 1        # key low word = _ID_BIAS - id  (ids < 2**31)

WFMT_DENSE, WFMT_INT8, WFMT_INT4 = 0, 1, 2


@triton.jit
def _load_w_tile(w_ptr, s_ptr, z_ptr, offs_v, offs_k, V, K, stride_wv, stride_sv, stride_zv, G,
                 WFMT: tl.constexpr, HAS_ZEROS: tl.constexpr, DOT_DTYPE: tl.constexpr):
    """W[offs_v, offs_k] as DOT_DTYPE (int8: codes only, the row scale is applied after the dot)."""
    vmask = offs_v < V
    kmask = offs_k < K
    m = vmask[:, None] & kmask[None, :]
    offs_v = offs_v.to(tl.int64)  # V * row stride may pass 2**31
    if WFMT == 0:
        w = tl.load(w_ptr + offs_v[:, None] * stride_wv + offs_k[None, :], mask=m, other=0.0)
        return w.to(DOT_DTYPE)
    elif WFMT == 1:
        q = tl.load(w_ptr + offs_v[:, None] * stride_wv + offs_k[None, :], mask=m, other=0)
        return q.to(DOT_DTYPE)
    else:
        byte = tl.load(w_ptr + offs_v[:, None] * stride_wv + (offs_k // 2)[None, :], mask=m, other=0)
        code = ((byte.to(tl.int32) >> ((offs_k % 2) * 4)[None, :]) & 0xF).to(tl.float32)
        g = offs_k // G
        sc = tl.load(s_ptr + offs_v[:, None] * stride_sv + g[None, :], mask=m, other=0.0).to(tl.float32)
        if HAS_ZEROS:
            zp = tl.load(z_ptr + offs_v[:, None] * stride_zv + g[None, :], mask=m, other=0).to(tl.float32)
        else:
            zp = 8.0
        return ((code - zp) * sc).to(DOT_DTYPE)


@triton.jit
def _stream_topn_kernel(
    h_ptr, w_ptr, s_ptr, z_ptr, b_ptr,
    tgt_ptr, ref_ptr,
    max_out, sum_out, key_out, tgt_out, ref_out,
    T, V, K, G, v_per_split, n_ref, softcap,
    stride_h, stride_wv, stride_sv, stride_zv, stride_ref,
    TOP_N: tl.constexpr, NP: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_K: tl.constexpr,
    WFMT: tl.constexpr, HAS_ZEROS: tl.constexpr, HAS_TGT: tl.constexpr, HAS_REF: tl.constexpr, NRP: tl.constexpr,
    DOT_DTYPE: tl.constexpr, INPUT_PRECISION: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_SOFTCAP: tl.constexpr,
):
    pid_t = tl.program_id(0)
    split = tl.program_id(1)
    offs_t = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    tmask = offs_t < T
    rows64 = offs_t.to(tl.int64)
    v_begin = split * v_per_split
    v_end = tl.minimum(v_begin + v_per_split, V)

    run_max = tl.full([BLOCK_T], float("-inf"), tl.float32)
    run_sum = tl.zeros([BLOCK_T], tl.float32)
    pos = tl.arange(0, NP)
    key_top = tl.full([BLOCK_T, NP], -9223372036854775807 - 1, tl.int64)
    key_max_i64 = tl.full([BLOCK_T, NP], 9223372036854775807, tl.int64)
    if HAS_TGT:
        tgt = tl.load(tgt_ptr + offs_t, mask=tmask, other=-1)
    if HAS_REF:  # this block's reference ids [BLOCK_T, NRP], loaded once
        offs_r = tl.arange(0, NRP)
        rmask = tmask[:, None] & (offs_r[None, :] < n_ref)
        ref_off = rows64[:, None] * stride_ref + offs_r[None, :]
        ref_blk = tl.load(ref_ptr + ref_off, mask=rmask, other=-1)

    for v0 in range(v_begin, v_end, BLOCK_V):
        offs_v = v0 + tl.arange(0, BLOCK_V)
        vmask = offs_v < v_end
        # 1. logits tile [BLOCK_T, BLOCK_V], fp32 accumulation over K
        acc = tl.zeros([BLOCK_T, BLOCK_V], tl.float32)
        for k0 in range(0, K, BLOCK_K):
            offs_k = k0 + tl.arange(0, BLOCK_K)
            h = tl.load(h_ptr + rows64[:, None] * stride_h + offs_k[None, :],
                        mask=tmask[:, None] & (offs_k < K)[None, :], other=0.0).to(DOT_DTYPE)
            w = _load_w_tile(w_ptr, s_ptr, z_ptr, offs_v, offs_k, v_end, K, stride_wv, stride_sv, stride_zv, G,
                             WFMT, HAS_ZEROS, DOT_DTYPE)
            acc = tl.dot(h, tl.trans(w), acc, input_precision=INPUT_PRECISION)
        if WFMT == 1:
            row_scale = tl.load(s_ptr + offs_v, mask=vmask, other=0.0).to(tl.float32)
            acc = acc * row_scale[None, :]
        if HAS_BIAS:
            acc = acc + tl.load(b_ptr + offs_v, mask=vmask, other=0.0).to(tl.float32)[None, :]
        if HAS_SOFTCAP:  # softcap * tanh(acc / softcap), tanh(y) = sign(y) (1 - e) / (1 + e), e = exp(-2|y|) <= 1
            e = tl.exp(-2.0 * tl.abs(acc / softcap))
            th = (1.0 - e) / (1.0 + e)
            acc = softcap * tl.where(acc < 0, -th, th)
        logits = tl.where(vmask[None, :] & tmask[:, None], acc, float("-inf"))  # padded rows: no NaN

        # 2. online log-sum-exp (a row with only -inf so far keeps max=-inf, sum=0, no NaN)
        tile_max = tl.max(logits, 1)
        new_max = tl.maximum(run_max, tile_max)
        safe = tl.where(new_max == float("-inf"), 0.0, new_max)
        run_sum = run_sum * tl.exp(run_max - safe) + tl.sum(tl.exp(logits - safe[:, None]), 1)
        run_max = new_max

        # 3. gathers of the target / reference ids that fall in this tile (tl.gather along the tile)
        tile_len = tl.minimum(v_end - v0, BLOCK_V)
        if HAS_TGT:
            rel_t = tgt - v0
            inside = tmask & (rel_t >= 0) & (rel_t < tile_len)
            idx = tl.where(inside, rel_t, 0).to(tl.int32)
            val = tl.reshape(tl.gather(logits, tl.reshape(idx, [BLOCK_T, 1]), axis=1), [BLOCK_T])
            tl.store(tgt_out + offs_t, val, mask=inside)
        if HAS_REF:
            rel_r = ref_blk - v0
            inside_r = rmask & (rel_r >= 0) & (rel_r < tile_len)
            vals = tl.gather(logits, tl.where(inside_r, rel_r, 0).to(tl.int32), axis=1)
            tl.store(ref_out + ref_off, vals, mask=inside_r)

        # 4. running top-N over packed keys, skipped when no row's tile max reaches its N-th logit
        #    (last, so the logits are dead once the keys exist: fewer live registers)
        slot_key = tl.where(pos[None, :] < TOP_N, key_top, key_max_i64)
        row_min = tl.min(slot_key, 1)
        s_min = (row_min >> 32).to(tl.int32)
        thr = (s_min ^ ((s_min >> 31) & 0x7FFFFFFF)).to(tl.float32, bitcast=True)
        thr = tl.where(row_min == (-9223372036854775807 - 1), float("-inf"), thr)
        need = tl.max(((tile_max >= thr) & tmask).to(tl.int32), 0)
        if need > 0:
            bits = logits.to(tl.int32, bitcast=True)
            bits = tl.where((bits & 0x7FFFFFFF) == 0, 0, bits)  # -0.0 ties with +0.0 (lower id first)
            ordered = bits ^ ((bits >> 31) & 0x7FFFFFFF)
            keys = (ordered.to(tl.int64) << 32) | (2147483647 - offs_v).to(tl.int64)[None, :]
            keys = tl.where(vmask[None, :] & tmask[:, None], keys, (-9223372036854775807 - 1))
            best = tl.max(keys, 1)
            go = tl.max((best > row_min).to(tl.int32), 0)
            while go > 0:
                ins = best > row_min
                min_pos = tl.min(tl.where(slot_key == row_min[:, None], pos[None, :], NP), 1)
                hit = (pos[None, :] == min_pos[:, None]) & ins[:, None]
                key_top = tl.where(hit, best[:, None], key_top)
                keys = tl.where((keys == best[:, None]) & ins[:, None], (-9223372036854775807 - 1), keys)
                slot_key = tl.where(pos[None, :] < TOP_N, key_top, key_max_i64)
                row_min = tl.min(slot_key, 1)
                best = tl.max(keys, 1)
                go = tl.max((best > row_min).to(tl.int32), 0)

    out_row = split.to(tl.int64) * T + rows64
    tl.store(max_out + out_row, run_max, mask=tmask)
    tl.store(sum_out + out_row, run_sum, mask=tmask)
    tl.store(key_out + out_row[:, None] * TOP_N + pos[None, :], key_top,
             mask=tmask[:, None] & (pos[None, :] < TOP_N))


# ---- launcher ---------------------------------------------------------------------------------

def _next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def _dot_dtype(hidden_dtype, weight_dtype, wfmt: int):
    """The dtype tl.dot runs in: the common half dtype when both sides share it, else float32."""
    import torch

    halves = (torch.float16, torch.bfloat16)
    if wfmt == WFMT_DENSE:
        same_half = hidden_dtype == weight_dtype and hidden_dtype in halves
        return hidden_dtype if same_half else torch.float32
    if wfmt == WFMT_INT8 and hidden_dtype in halves:  # int8 codes are exact in fp16 / bf16
        return hidden_dtype
    return torch.float16 if hidden_dtype == torch.float16 else torch.float32


def decode_keys(keys):
    """Packed int64 top-N keys -> (raw logits float32, token ids int64); empty slots -> (-inf, -1)."""
    import torch

    s = (keys >> 32).to(torch.int32)
    bits = s ^ ((s >> 31) & 0x7FFFFFFF)
    vals = bits.view(torch.float32).clone()
    ids = _ID_BIAS - (keys & 0xFFFFFFFF)
    empty = keys == KEY_EMPTY
    vals[empty] = float("-inf")
    ids[empty] = -1
    return vals, ids


def kernel_meta(T: int, K: int, top_n: int, vocab_tile, dot_dtype, wfmt: int, has_zeros: bool, has_tgt: bool,
                n_ref: int, interp: bool, precision: str = "ieee", block_t=None, block_k=None,
                has_bias: bool = False, has_softcap: bool = False) -> dict:
    """The kernel's compile-time parameters (constexprs and num_warps) for one call (n_ref: reference
    ids per token, 0 for none; has_bias / has_softcap: the head's steps after the product).

    BLOCK_V: the power of two <= vocab_tile, in [16, 128] on a GPU (registers) or [16, 256] under
    the interpreter (fewer, larger steps); BLOCK_T up to 64 tokens, BLOCK_K up to 64 hidden units
    (32 for float32 dots: registers and shared memory).
    """
    import torch

    bv = min(256 if interp else 128, max(16, 1 << (int(vocab_tile or 128).bit_length() - 1)))
    bt = block_t or min(64, max(16, _next_pow2(T)))
    bk = block_k or min(32 if dot_dtype == torch.float32 else 64, max(16, _next_pow2(K)))  # fp32: half the K step
    tl_dtype = {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}[dot_dtype]
    return dict(TOP_N=int(top_n), NP=max(2, _next_pow2(top_n)), BLOCK_T=bt, BLOCK_V=bv, BLOCK_K=bk,
                WFMT=wfmt, HAS_ZEROS=bool(has_zeros), HAS_TGT=bool(has_tgt), HAS_REF=n_ref > 0,
                NRP=max(2, _next_pow2(max(1, n_ref))),
                DOT_DTYPE=tl_dtype, INPUT_PRECISION=precision, HAS_BIAS=bool(has_bias),
                HAS_SOFTCAP=bool(has_softcap), num_warps=8 if bt * bv >= 64 * 128 else 4)


def compile_ahead(arch: int, meta: dict, hidden_ptr: str = "bf16", weight_ptr: str = "bf16"):
    """Compile the kernel for an NVIDIA GPU of compute capability ``arch`` (80, 90, ...) with no GPU
    present (Triton's bundled ptxas), for the constexprs ``meta`` of ``kernel_meta``: checks that
    what runs under the interpreter also builds for the hardware. Returns Triton's CompiledKernel
    (``.asm["cubin"]``; ``.metadata.shared``: shared memory in bytes)."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn = _stream_topn_kernel
    if not hasattr(fn, "cache_key"):
        raise ValueError("compile_ahead: the kernel was loaded under TRITON_INTERPRET=1; run without it")
    names = fn.arg_names
    meta = dict(meta)
    num_warps = meta.pop("num_warps", 4)
    ptrs = {"h_ptr": "*" + hidden_ptr, "w_ptr": "*" + weight_ptr, "s_ptr": "*fp32", "z_ptr": "*u8",
            "b_ptr": "*fp32", "tgt_ptr": "*i64", "ref_ptr": "*i64", "max_out": "*fp32", "sum_out": "*fp32",
            "key_out": "*i64", "tgt_out": "*fp32", "ref_out": "*fp32", "softcap": "fp32"}
    sig = {a: ptrs.get(a, "constexpr" if a in meta else "i32") for a in names}
    src = ASTSource(fn, sig, constexprs={(names.index(a),): v for a, v in meta.items()})
    return triton.compile(src, target=GPUTarget("cuda", int(arch), 32), options={"num_warps": num_warps})


def stream_topn(hidden, weight, top_n: int, targets=None, ref_ids=None, vocab_tile=None, splits=None,
                block_t=None, block_k=None):
    """Fused streaming log-softmax statistics of ``hidden[T,H] @ weight[V,H].T`` (never [T,V]).

    ``weight``: a contiguous fp32/fp16/bf16 Tensor [V,H] or a QuantizedWeight (int8 or int4,
    dequantized in registers), or an LMHead of one (its bias [V] and soft cap applied to each tile). ``vocab_tile``: vocabulary rows per tile (rounded down to a power
    of two in [16, 256]). ``splits``: vocabulary slices run as separate programs and combined here
    (default: 1 under the interpreter, else enough to fill the GPU).
    Returns the backend dict of the contract: "logsumexp" f32[T] (natural log), "top_ids" int64[T,N],
    "top_logits" f32[T,N] (raw logits, descending, ties -> lower id), "target_logits" f32[T] (if
    targets), "ref_logits" f32[T,Nr] (if ref_ids). Inputs are assumed validated by the caller.
    """
    import os

    import torch

    T, K = hidden.shape
    dev = hidden.device
    bias = softcap = None
    if hasattr(weight, "softcap"):  # an LMHead (pyquant/ops/head.py)
        weight, bias, softcap = weight.weight, weight.bias, weight.softcap
    quant = not isinstance(weight, torch.Tensor)
    if quant:
        bits = weight.spec.bits
        wfmt = WFMT_INT8 if bits == 8 else WFMT_INT4
        w, sc, zp = weight.qweight, weight.scales, weight.zeros
        V = weight.out_features
        G = weight.spec.group_size or 1
        stride_sv = sc.stride(0) if wfmt == WFMT_INT4 else 1
        stride_zv = zp.stride(0) if zp is not None else 0
        dot_dtype = _dot_dtype(hidden.dtype, None, wfmt)
    else:
        wfmt, w, sc, zp, G, stride_sv, stride_zv = WFMT_DENSE, weight, None, None, 1, 0, 0
        V = weight.shape[0]
        dot_dtype = _dot_dtype(hidden.dtype, weight.dtype, wfmt)
    n = int(top_n)
    out = {"logsumexp": torch.empty(T, dtype=torch.float32, device=dev)}
    if targets is not None:
        out["target_logits"] = torch.full((T,), float("nan"), dtype=torch.float32, device=dev)
    if ref_ids is not None:
        out["ref_logits"] = torch.full(tuple(ref_ids.shape), float("nan"), dtype=torch.float32, device=dev)
    if T == 0:
        out["top_ids"] = torch.empty((0, n), dtype=torch.int64, device=dev)
        out["top_logits"] = torch.empty((0, n), dtype=torch.float32, device=dev)
        return out

    interp = os.environ.get("TRITON_INTERPRET") == "1"
    if interp and dot_dtype == torch.bfloat16:  # the interpreter's bf16 tl.dot is wrong: upcast there
        dot_dtype = torch.float32
    precision = "ieee"
    if dot_dtype == torch.float32 and dev.type == "cuda" and torch.backends.cuda.matmul.allow_tf32:
        precision = "tf32"  # follow torch.matmul's own setting
    n_ref = ref_ids.shape[1] if ref_ids is not None else 0
    meta = kernel_meta(T, K, n, vocab_tile, dot_dtype, wfmt, zp is not None, targets is not None,
                       n_ref, interp, precision, block_t, block_k, bias is not None, softcap is not None)
    bt, bv = meta["BLOCK_T"], meta["BLOCK_V"]
    n_tblocks = triton.cdiv(T, bt)
    if splits is None:
        if interp or dev.type != "cuda":
            splits = 1
        else:
            sms = torch.cuda.get_device_properties(dev).multi_processor_count
            splits = max(1, min(triton.cdiv(2 * sms, n_tblocks), triton.cdiv(V, 4 * bv)))
    v_per_split = triton.cdiv(triton.cdiv(V, max(1, int(splits))), bv) * bv
    splits = triton.cdiv(V, v_per_split)

    max_p = torch.empty((splits, T), dtype=torch.float32, device=dev)
    sum_p = torch.empty((splits, T), dtype=torch.float32, device=dev)
    key_p = torch.empty((splits, T, n), dtype=torch.int64, device=dev)
    tgt = targets if targets is not None else max_p
    ref = ref_ids if ref_ids is not None else max_p
    _stream_topn_kernel[(n_tblocks, splits)](
        hidden, w, sc if sc is not None else w, zp if zp is not None else w, bias if bias is not None else max_p,
        tgt, ref,
        max_p, sum_p, key_p, out.get("target_logits", max_p), out.get("ref_logits", max_p),
        T, V, K, G, v_per_split, n_ref, float(softcap or 1.0),
        hidden.stride(0), w.stride(0), stride_sv, stride_zv, max(n_ref, 1),
        **meta,
    )
    if splits == 1:
        out["logsumexp"] = max_p[0] + torch.log(sum_p[0])
        keys = key_p[0]
    else:
        m = max_p.max(dim=0).values
        safe = torch.where(torch.isinf(m) & (m < 0), torch.zeros_like(m), m)
        out["logsumexp"] = m + torch.log((sum_p * torch.exp(max_p - safe)).sum(dim=0))
        keys = key_p.permute(1, 0, 2).reshape(T, splits * n)
    keys = torch.sort(keys, dim=1, descending=True).values[:, :n]
    out["top_logits"], out["top_ids"] = decode_keys(keys)
    return out
