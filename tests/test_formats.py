"""Quantized formats: QuantSpec parsing, int4 packing, RTN quantization, and golden vectors.

The golden vectors are hand-written weights with their exact packed bytes, scales and
zero-points written out literally, so a change to the format (nibble order, zero-point
convention, padding of the ragged last group) cannot pass silently.
"""
import pytest
import torch

import pyquant as pq
from pyquant.formats import QuantizedWeight, QuantSpec, pack_int4, unpack_int4
from pyquant.quant.rtn import quantize_weight

from helpers import randn


# ---- QuantSpec -------------------------------------------------------------------------------
@pytest.mark.parametrize("text,bits,group,sym,sd", [
    ("int8", 8, None, True, "fp32"), ("int8-fp16", 8, None, True, "fp16"),
    ("int4-g32", 4, 32, False, "fp32"), ("int4-g64", 4, 64, False, "fp32"), ("int4-g128", 4, 128, False, "fp32"),
    ("int4-g256", 4, 256, False, "fp32"), ("int4-g128-sym", 4, 128, True, "fp32"),
    ("int4-g32-sym-fp16", 4, 32, True, "fp16"), ("int4-g64-fp16", 4, 64, False, "fp16"),
    ("int4-g128-a8", 4, 128, False, "fp32"), ("int8-fp16-a8", 8, None, True, "fp16"),
    ("int4-g32-sym-fp16-a8", 4, 32, True, "fp16"),
])
def test_spec_parse_and_str_round_trip(text, bits, group, sym, sd):
    s = QuantSpec.parse(text)
    assert (s.bits, s.group_size, s.symmetric, s.scale_dtype) == (bits, group, sym, sd)
    assert s.act_bits == (8 if text.endswith("-a8") else None)
    assert s.act_block(1000) == (group or 1000)
    assert str(s) == text
    assert QuantSpec.parse(str(s)) == s
    assert QuantSpec.parse(s) is s
    assert QuantSpec.parse("  " + text.upper() + " ") == s


@pytest.mark.parametrize("bad", ["int4", "int4-g48", "int4-g16", "int2-g32", "int8-g128", "fp8", "",
                                 "int4-g128-bf16", "int4-g128-asym", "int8-sym-x",
                                 "int4-g128-a4", "int4-g128-a8-sym", "int8-a8-fp16", "int4-a8"])
def test_spec_bad_text(bad):
    with pytest.raises(ValueError):
        QuantSpec.parse(bad)


def test_spec_bad_fields():
    with pytest.raises(ValueError, match="group size"):
        QuantSpec(bits=4, group_size=100)
    with pytest.raises(ValueError, match="bit width"):
        QuantSpec(bits=3, group_size=32)
    with pytest.raises(ValueError, match="no group size"):
        QuantSpec(bits=8, group_size=32)
    with pytest.raises(ValueError, match="symmetric"):
        QuantSpec(bits=8, symmetric=False)
    with pytest.raises(ValueError, match="scale dtype"):
        QuantSpec(bits=8, scale_dtype="bf16")
    with pytest.raises(ValueError, match="activation bits"):
        QuantSpec(bits=4, group_size=32, act_bits=4)


# ---- packing ---------------------------------------------------------------------------------
def test_pack_unpack_round_trip():
    g = torch.Generator().manual_seed(3)
    codes = torch.randint(0, 16, (7, 40), generator=g, dtype=torch.uint8)
    packed = pack_int4(codes)
    assert packed.dtype == torch.uint8 and packed.shape == (7, 20)
    assert torch.equal(unpack_int4(packed), codes)
    assert torch.equal(pack_int4(unpack_int4(packed)), packed)
    # low nibble first
    assert pack_int4(torch.tensor([[1, 2, 15, 0]])).tolist() == [[0x21, 0x0F]]
    with pytest.raises(ValueError, match="even"):
        pack_int4(torch.zeros(2, 3, dtype=torch.uint8))


# ---- golden vectors --------------------------------------------------------------------------
def test_golden_int8():
    w = torch.tensor([[0.5, -0.25, 0.127, -1.27],
                      [0.0, 0.0, 0.0, 0.0],
                      [0.0, 0.75, -0.375, 0.0234375]])
    qw = quantize_weight(w, "int8")
    # row 0: absmax 1.27 -> scale 0.01, codes 50, -25, round(12.7) = 13, -127
    # row 1: all zero -> scale 1, codes 0; row 2: absmax 0.75 -> scale 0.75/127, codes 0, 127, round(-63.5) = -64
    #        (round half to even), round(3.96875) = 4
    assert qw.qweight.dtype == torch.int8
    assert qw.qweight.tolist() == [[50, -25, 13, -127], [0, 0, 0, 0], [0, 127, -64, 4]]
    assert qw.scales.dtype == torch.float32
    torch.testing.assert_close(qw.scales, torch.tensor([0.01, 1.0, 0.75 / 127]), rtol=1e-7, atol=0)
    assert qw.zeros is None and qw.shape == (3, 4)
    assert qw.nbytes == 12 + 3 * 4


def test_golden_int4_asym_with_ragged_last_group():
    # K = 36 with G = 32: group 0 is 32 values, group 1 is ragged (4 real values, 28 padding codes).
    g0 = [(k % 16) * 0.25 - 1.0 for k in range(32)]  # min -1, max 2.75 -> scale 0.25, zero 4, code = k % 16
    g1 = [0.5, 1.0, 1.5, 3.75]                       # min(w, 0) = 0, max 3.75 -> scale 0.25, zero 0
    w = torch.tensor([g0 + g1])
    qw = quantize_weight(w, "int4-g32")
    expected_bytes = [0x10, 0x32, 0x54, 0x76, 0x98, 0xBA, 0xDC, 0xFE] * 2 + [0x42, 0xF6] + [0x00] * 14
    assert qw.qweight.dtype == torch.uint8 and qw.qweight.shape == (1, 32)
    assert qw.qweight.tolist() == [expected_bytes]
    assert qw.scales.tolist() == [[0.25, 0.25]]
    assert qw.zeros.dtype == torch.uint8 and qw.zeros.tolist() == [[4, 0]]
    assert qw.shape == (1, 36) and qw.padded_in_features == 64 and qw.ngroups == 2
    assert qw.nbytes == 32 + 2 * 4 + 2
    assert torch.equal(qw.dequantize(), w)  # every value is exactly representable
    # The padding codes equal the zero-point: a ragged group with a non-zero zero-point pads with it.
    w2 = torch.tensor([g0 + [-1.0, 0.5, 0.25, 2.75]])  # group 1: min -1, max 2.75 -> zero 4
    qw2 = quantize_weight(w2, "int4-g32")
    assert qw2.zeros.tolist() == [[4, 4]]
    assert qw2.qweight[0, 16:].tolist() == [0x60, 0xF5] + [0x44] * 14  # codes 0, 6, 5, 15, then padding 4
    assert torch.equal(qw2.dequantize(), w2)


def test_golden_int4_sym():
    w = torch.tensor([[((k % 15) - 7) * 0.25 for k in range(32)]])  # absmax 1.75 -> scale 0.25, code = k % 15 + 1
    qw = quantize_weight(w, "int4-g32-sym")
    assert qw.qweight.tolist() == [[0x21, 0x43, 0x65, 0x87, 0xA9, 0xCB, 0xED, 0x1F,
                                    0x32, 0x54, 0x76, 0x98, 0xBA, 0xDC, 0xFE, 0x21]]
    assert qw.scales.tolist() == [[0.25]]
    assert qw.zeros is None
    assert torch.equal(qw.dequantize(), w)


def test_golden_fp16_scales():
    w = torch.tensor([[0.1, -0.2, 0.3, -1.27]])
    qw = quantize_weight(w, "int8-fp16")
    assert qw.scales.dtype == torch.float16
    assert qw.scales.view(torch.int16).tolist() == [0x211F]  # fp16 bits of 0.01 (0.0099945068359375)
    assert qw.qweight.tolist() == [[10, -20, 30, -127]]


def test_from_tensors_validates():
    qw = quantize_weight(randn(4, 64), "int4-g32")
    again = QuantizedWeight.from_tensors("int4-g32", (4, 64), qw.tensors())
    assert torch.equal(again.dequantize(), qw.dequantize())
    with pytest.raises(ValueError, match="zeros"):
        QuantizedWeight.from_tensors("int4-g32", (4, 64), {"qweight": qw.qweight, "scales": qw.scales})
    with pytest.raises(ValueError, match="qweight"):
        QuantizedWeight.from_tensors("int4-g64", (4, 65), qw.tensors())
    with pytest.raises(ValueError, match="scales"):
        QuantizedWeight(QuantSpec.parse("int4-g32"), qw.qweight, qw.scales.half(), qw.zeros, (4, 64))


# ---- RTN quantization ------------------------------------------------------------------------
@pytest.mark.parametrize("spec", ["int8", "int8-fp16", "int4-g32", "int4-g64-sym", "int4-g128", "int4-g256-fp16"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_quantize_error_bound(spec, dtype):
    """|w - dequant(w)| <= scale / 2 (+ rounding slack), with K not a multiple of the group size."""
    n, k = 9, 300
    w = randn(n, k, dtype=dtype, seed=11)
    qw = quantize_weight(w, spec)
    s = QuantSpec.parse(spec)
    assert qw.spec == s and qw.shape == (n, k) and qw.scales.dtype == s.torch_scale_dtype
    wf = w.double()
    deq = qw.dequantize(torch.float64)
    if s.bits == 8:
        scale = qw.scales.double()[:, None].expand(n, k)
        # absmax maps to +-127 exactly: every code within range
        assert qw.qweight.abs().max() <= 127
    else:
        scale = qw.scales.double().repeat_interleave(s.group_size, dim=1)[:, :k]
    # w / scale is computed in fp32 (relative error 2^-24 on values up to 127 steps: < 2^-16 steps);
    # fp16 scales are rounded after the codes' range is set: codes may sit off by 2^-11 * 16 steps
    slack = 16 * 2.0 ** -11 if s.scale_dtype == "fp16" else 2.0 ** -16
    err = (wf - deq).abs()
    assert torch.all(err <= scale * (0.5 + slack)), float((err / scale).max())
    assert torch.equal(qw.dequantize(dtype), deq.to(dtype))
    # the float32 dequantization the reference kernels use matches float64 to fp32 rounding
    torch.testing.assert_close(qw.dequantize(torch.float32).double(), deq, rtol=2 ** -23, atol=0)


def test_quantize_bad_input():
    with pytest.raises(ValueError, match="2-D"):
        quantize_weight(torch.ones(4), "int8")
    with pytest.raises(ValueError, match="floating"):
        quantize_weight(torch.ones(4, 4, dtype=torch.int32), "int8")
    with pytest.raises(ValueError, match="NaN"):
        quantize_weight(torch.tensor([[1.0, float("nan")]]), "int8")
    with pytest.raises(ValueError):
        quantize_weight(torch.ones(4, 4), "int4-g48")


def test_public_names():
    assert pq.QuantSpec is QuantSpec
    assert pq.quantize_weight(torch.ones(2, 32), "int4-g32").shape == (2, 32)
