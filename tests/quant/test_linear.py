"""QuantLinear against a float64 reference, on every available qmatmul backend."""
import pytest
import torch
from torch import nn

import pyquant as pq
from pyquant.quant.linear import QuantLinear, set_backend, use_backend

BACKENDS = pq.ops.available_backends("qmatmul", "cpu")
SPECS = ["int8", "int4-g32", "int4-g128-sym", "int4-g64-fp16"]


def reference(x, lin: QuantLinear):
    """float64 x @ W_q.T + b, the oracle."""
    y = x.double() @ lin.qw.dequantize(torch.float64).T
    return y + lin.bias.double() if lin.bias is not None else y


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("bias", [True, False])
def test_matches_float64_reference(backend, spec, bias):
    k, n = 100, 37  # K not a multiple of any group size, odd N
    lin = nn.Linear(k, n, bias=bias)
    q = QuantLinear.from_linear(lin, spec)
    assert (q.bias is not None) == bias and q.spec == pq.QuantSpec.parse(spec)
    x = torch.randn(2, 3, k)
    with use_backend(backend):
        y = q(x)
    assert y.shape == (2, 3, n) and y.dtype == torch.float32
    ref = reference(x, q)
    # fp32 accumulation over K=100 terms of size ~|x||w|: errors ~1e-6 relative to the row magnitude
    torch.testing.assert_close(y.double(), ref, rtol=1e-5, atol=1e-5)
    # and quantization keeps the layer close to the original (loose: that is RTN's own test)
    assert (y - lin(x)).abs().max() < 0.2 * lin(x).abs().max()


@pytest.mark.parametrize("backend", BACKENDS)
def test_bfloat16_activations(backend):
    lin = nn.Linear(96, 20)
    q = QuantLinear.from_linear(lin, "int4-g32")
    x = torch.randn(5, 96).to(torch.bfloat16)
    with use_backend(backend):
        y = q(x)
    assert y.dtype == torch.bfloat16
    ref = reference(x.double(), q)
    torch.testing.assert_close(y.double(), ref, rtol=2e-2, atol=2e-2 * ref.abs().max().item())


def test_cast_keeps_format_and_state_dict_round_trip():
    q = QuantLinear.from_linear(nn.Linear(64, 16), "int4-g32")
    x = torch.randn(3, 64)
    before = q(x)
    q.to(torch.bfloat16)
    assert q.scales.dtype == torch.float32 and q.qweight.dtype == torch.uint8 and q.bias.dtype == torch.bfloat16
    q.to(torch.float32)
    shell = QuantLinear(64, 16, "int4-g32", bias=True)
    shell.load_state_dict(q.state_dict())
    assert set(q.state_dict()) == {"qweight", "scales", "zeros", "bias"}
    torch.testing.assert_close(shell(x), before, rtol=1e-2, atol=1e-2)  # bias went through bf16
    torch.testing.assert_close(shell(x), q(x), rtol=0, atol=0)
    assert "spec=int4-g32" in repr(q)
    h = QuantLinear.from_linear(nn.Linear(64, 16), "int4-g64-fp16")
    h.float()
    h.to(torch.bfloat16)
    assert h.scales.dtype == torch.float16 and h.zeros.dtype == torch.uint8


@pytest.mark.parametrize("backend", BACKENDS)
def test_weight_changes_reach_the_kernel(backend):
    """QuantLinear keeps its QuantizedWeight (and the kernel's prepared weight) between calls; a
    state-dict load (in place) or a new buffer must still change what forward computes."""
    a = QuantLinear.from_linear(nn.Linear(64, 16), "int4-g32")
    b = QuantLinear.from_linear(nn.Linear(64, 16), "int4-g32")
    x = torch.randn(2, 64)
    with use_backend(backend):
        a(x)
        a.load_state_dict(b.state_dict())
        torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)
        a.scales = b.scales * 2
        torch.testing.assert_close(a(x) - a.bias, 2 * (b(x) - b.bias), rtol=1e-6, atol=1e-6)


def test_conv1d_is_transposed():
    from transformers.pytorch_utils import Conv1D

    conv = Conv1D(nf=24, nx=64)  # weight [in, out]
    nn.init.normal_(conv.weight)
    q = QuantLinear.from_linear(conv, "int8")
    assert (q.out_features, q.in_features) == (24, 64)
    x = torch.randn(4, 64)
    torch.testing.assert_close(q(x).double(), reference(x, q), rtol=1e-5, atol=1e-5)
    assert (q(x) - conv(x)).abs().max() < 0.05 * conv(x).abs().max()


def test_backend_selection():
    q = QuantLinear.from_linear(nn.Linear(64, 8), "int8")
    x = torch.randn(2, 64)
    with use_backend("no-such-backend"):
        with pytest.raises(ValueError, match="unknown backend"):
            q(x)
        assert set_backend(q, "reference") == 1  # a module's own backend wins over the context
        torch.testing.assert_close(q(x).double(), reference(x, q), rtol=1e-5, atol=1e-5)
    set_backend(q, None)
    assert q(x).shape == (2, 8)  # "auto" again
    with pytest.raises(ValueError):
        with use_backend(""):
            pass


def test_use_backend_is_per_thread():
    import threading

    q = QuantLinear.from_linear(nn.Linear(64, 8), "int8")
    x, out = torch.randn(2, 64), []
    with use_backend("no-such-backend"):
        t = threading.Thread(target=lambda: out.append(q(x)))  # another thread still runs "auto"
        t.start()
        t.join()
    assert len(out) == 1 and out[0].shape == (2, 8)


@pytest.mark.skipif("cpu" not in BACKENDS, reason="pyquant._C is not built")
@pytest.mark.parametrize("spec", ["int4-g128", "int8-a8"])
def test_torch_compile_fullgraph(spec):
    """A QuantLinear compiles into one graph (no break), gives the eager call's bits, and a
    use_backend() block around the compiled module still picks the backend (a recompile)."""
    torch.manual_seed(0)
    q = QuantLinear.from_linear(nn.Linear(256, 96), spec)
    x = torch.randn(3, 256)
    compiled = torch.compile(q, fullgraph=True, backend="eager")
    assert torch.equal(compiled(x), q(x))
    with use_backend("reference"):
        y_ref = q(x)
        assert torch.equal(compiled(x), y_ref)
    assert not torch.equal(y_ref, q(x))  # so the check above could tell the backends apart


def test_bad_input():
    with pytest.raises(ValueError, match="cannot quantize"):
        QuantLinear.from_linear(nn.Conv2d(3, 3, 1), "int8")
    with pytest.raises(ValueError, match="group size"):
        QuantLinear.from_linear(nn.Linear(64, 8), "int4-g48")
    with pytest.raises(ValueError, match="cannot parse"):
        QuantLinear(64, 8, "fp8")
    q = QuantLinear.from_linear(nn.Linear(64, 8), "int8")
    with pytest.raises(ValueError, match="last dimension"):
        q(torch.randn(2, 63))
    with pytest.raises(ValueError, match="bias"):
        QuantLinear.from_quantized(q.qw, torch.zeros(9))
