"""Shared test utilities: random inputs, float64 reference comparisons, a tiny model builder.

Import from any test as ``from helpers import ...`` (tests/ is on sys.path via tests/conftest.py).
"""
from __future__ import annotations

import math
from typing import Optional

import torch

# Relative size of one rounding of the output into each dtype (unit roundoff).
UNIT_ROUNDOFF = {torch.float32: 2.0 ** -24, torch.bfloat16: 2.0 ** -8, torch.float16: 2.0 ** -11,
                 torch.float64: 2.0 ** -53}


def gen(seed: int = 0) -> torch.Generator:
    """A CPU torch.Generator seeded with ``seed`` (tests draw fresh inputs from it)."""
    return torch.Generator().manual_seed(seed)


def randn(*shape, dtype=torch.float32, seed: int = 0, device="cpu", scale: float = 1.0) -> torch.Tensor:
    """Standard-normal tensor (times ``scale``) drawn in float32 on the CPU, cast to dtype, moved to device."""
    return (torch.randn(*shape, generator=gen(seed)) * scale).to(dtype).to(device)


def matmul_bound(x64: torch.Tensor, w64: torch.Tensor, k: int, out_dtype: torch.dtype,
                 ref: torch.Tensor) -> torch.Tensor:
    """Elementwise error bound for y = x @ w.T accumulated in fp32 and rounded to ``out_dtype``.

    fp32 accumulation of K products errs by at most ~K*u*sum|x||w| (u = 2^-24); random rounding
    errors grow like sqrt(K), so we allow 8*sqrt(K)*u*(|x| @ |w|.T) with a floor of 64u, plus one
    rounding of the result into out_dtype (relative to |ref|).
    """
    u32 = UNIT_ROUNDOFF[torch.float32]
    acc = max(8.0 * math.sqrt(k), 64.0) * u32 * (x64.abs() @ w64.abs().T)
    return acc + 2 * UNIT_ROUNDOFF[out_dtype] * ref.abs() + 1e-30


def assert_matmul_close(y: torch.Tensor, x: torch.Tensor, w64: torch.Tensor, bias: Optional[torch.Tensor] = None,
                        what: str = "", out_dtype: Optional[torch.dtype] = None) -> None:
    """Assert y[..., N] == x[..., K] @ w64.T (+ bias), computed in float64, within matmul_bound.

    x and bias are taken as stored (their dtype's values, exactly, in float64); y must have x's
    dtype (or ``out_dtype``) and shape [..., N]. The failure message names the worst element and
    its error ratio.
    """
    want = out_dtype or x.dtype
    assert y.dtype == want, f"{what}: output dtype {y.dtype} != {want}"
    x64 = x.detach().double().cpu().reshape(-1, x.shape[-1])
    w64 = w64.double().cpu()
    ref = x64 @ w64.T
    if bias is not None:
        ref = ref + bias.detach().double().cpu()
    want_shape = tuple(x.shape[:-1]) + (w64.shape[0],)
    assert tuple(y.shape) == want_shape, f"{what}: shape {tuple(y.shape)} != {want_shape}"
    y64 = y.detach().double().cpu().reshape(ref.shape)
    assert torch.isfinite(y64).all(), f"{what}: non-finite output"
    bound = matmul_bound(x64, w64, x.shape[-1], y.dtype, ref)
    err = (y64 - ref).abs()
    ratio = err / bound
    if not bool((ratio <= 1).all()):
        i = int(ratio.argmax())
        r, c = divmod(i, ref.shape[1])
        raise AssertionError(f"{what}: y[{r},{c}]={y64[r, c].item():.8g} vs float64 {ref[r, c].item():.8g} "
                             f"(err {err[r, c].item():.3g} > bound {bound[r, c].item():.3g}; "
                             f"{int((ratio > 1).sum())} of {ratio.numel()} elements out)")


def tiny_llama(seed=None, *, tie: bool = False, std: float = 0.2, vocab: int = 300, bias: bool = False,
               hidden: int = 64, inter: int = 128, layers: int = 2, ctx: int = 256):
    """A random-initialized float32 LlamaForCausalLM in eval mode: 2 layers, hidden 64, MLP 128, 4 heads,
    2 KV heads, vocab 300 unless overridden. Weights N(0, std) (std well above transformers' 0.02, so
    greedy decoding has no near-ties); seed=None keeps the global RNG's state. bias=True gives the
    attention projections a bias (like Qwen2), also N(0, std). The one tiny model of the test suite."""
    from transformers import LlamaConfig, LlamaForCausalLM

    if seed is not None:
        torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=ctx,
                      tie_word_embeddings=tie, initializer_range=std, attention_bias=bias,
                      bos_token_id=1, eos_token_id=2, pad_token_id=0)
    model = LlamaForCausalLM(cfg).eval()
    if bias:
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, torch.nn.Linear) and m.bias is not None:
                    m.bias.normal_(0, std)
    return model


def assert_rows_read_only_their_own_scales(qw, ms=(1, 3), seed: int = 22, what: str = "") -> None:
    """Through the CPU binding (pyquant._C.qmatmul_cpu, fp32 x and y): with the odd rows' scales set
    to Inf, the even rows' results must still match float64 (0 * Inf would make them NaN if a row
    read past its own scales). ``qw`` is changed: its odd rows' scales become Inf."""
    from pyquant.ops import _native
    from pyquant.ops.reference import quantize_activations

    k = qw.in_features
    qw.scales[1::2] = float("inf")
    w = qw.dequantize(torch.float64)[0::2]
    for m in ms:
        x = randn(m, k, seed=seed)
        y = torch.empty(m, qw.out_features)
        _native.native().qmatmul_cpu(x, qw.qweight, qw.scales, qw.zeros, None, qw.spec.bits, qw.spec.group_size or 0,
                                     k, y, 0, qw.spec.act_bits or 0)
        xe = quantize_activations(x, qw.spec.act_block(k)) if qw.spec.act_bits else x
        assert_matmul_close(y[:, 0::2], xe, w, what=f"{what} K={k} M={m}, even rows")
