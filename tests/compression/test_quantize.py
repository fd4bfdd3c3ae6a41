import numpy as np
import pytest
import torch

from fedsegnet.compression.index_coding import PayloadError
from fedsegnet.compression.quantize import dequantize, quantize


def _vals(n, seed=0):
    return torch.randn(n, generator=torch.Generator().manual_seed(seed)) * 0.02


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("block", [0, 1, 64, 256])
@pytest.mark.parametrize("n", [1, 63, 1000])
def test_round_to_nearest_error_is_at_most_half_a_step(bits, block, n):
    v = _vals(n)
    codes, scales = quantize(v, bits, block)
    assert codes.dtype == np.uint8 and codes.size == (n if bits == 8 else (n + 1) // 2)
    assert scales.dtype == np.float32 and scales.size == (1 if block == 0 else -(-n // block))
    out = dequantize(codes, scales, n, bits, block)
    size = n if block == 0 else block
    step = torch.from_numpy(scales).repeat_interleave(size)[:n]
    assert out.shape == (n,) and out.dtype == torch.float32
    assert ((out - v).abs() <= step / 2 + 1e-7).all()


@pytest.mark.parametrize("bits", [4, 8])
def test_stochastic_rounding_is_bounded_and_unbiased(bits):
    v = torch.full((20_000,), 0.3) * torch.tensor([1.0, -1.0]).repeat(10_000)
    v[0] = 1.0  # sets the scale of the single block
    codes, scales = quantize(v, bits, 0, stochastic=True, generator=torch.Generator().manual_seed(0))
    out = dequantize(codes, scales, v.numel(), bits, 0)
    assert ((out - v).abs() < float(scales[0]) + 1e-7).all()
    assert abs(float(out[2::2].mean()) - 0.3) < 0.01  # 0.3 is not on the grid; the mean still is


@pytest.mark.parametrize("bits,dtype", [(16, np.float16), (32, np.float32)])
def test_float_bits_keep_floats(bits, dtype):
    v = _vals(100)
    codes, scales = quantize(v, bits)
    assert codes.dtype == dtype and scales.size == 0
    out = dequantize(codes, scales, 100, bits)
    torch.testing.assert_close(out, v, atol=1e-4 if bits == 16 else 0, rtol=1e-3 if bits == 16 else 0)


def test_input_is_not_modified():
    v = _vals(500)
    before = v.clone()
    quantize(v, 4, 32, stochastic=True)
    assert torch.equal(v, before)


def test_bad_bits():
    with pytest.raises(ValueError, match="bits=3"):
        quantize(_vals(4), bits=3)


@pytest.mark.parametrize(
    "case,match",
    [
        ("short", "expected 100 uint8 bytes"),
        ("scales", "expected 2 float32 scales"),
        ("nan_scale", "NaN or Inf"),
        ("code", "out of range"),
        ("bits", "unknown value bits"),
    ],
)
def test_malformed_values_are_rejected(case, match):
    codes, scales = quantize(_vals(100), 8, 64)
    bits = 8
    if case == "short":
        codes = codes[:-1]
    elif case == "scales":
        scales = scales[:1]
    elif case == "nan_scale":
        scales = scales.copy()
        scales[1] = np.nan
    elif case == "code":
        codes = codes.copy()
        codes[3] = 255
    elif case == "bits":
        bits = 6
    with pytest.raises(PayloadError, match=match):
        dequantize(codes, scales, 100, bits, 64, name="dec.w")


def test_nan_in_float_values_is_rejected():
    codes, scales = quantize(_vals(10), 16)
    codes[2] = np.nan
    with pytest.raises(PayloadError, match="NaN or Inf"):
        dequantize(codes, scales, 10, 16)


def test_code_times_a_huge_finite_scale_is_rejected():
    codes, scales = quantize(_vals(100), 8, 64)
    scales = np.full_like(scales, 3e38)  # finite, but 127 steps of it overflow float32
    with pytest.raises(PayloadError, match="dec.w: 8-bit codes times scales overflow float32"):
        dequantize(codes, scales, 100, 8, 64, name="dec.w")


def test_a_huge_block_is_not_expanded():
    # one scale for 3 values, declared with a block of 2**40: the decoder never builds 2**40 scales
    codes, scales = quantize(_vals(3), 8, 0)
    out = dequantize(codes, scales, 3, 8, 2**40)
    np.testing.assert_allclose(out.numpy(), dequantize(codes, scales, 3, 8, 0).numpy())
