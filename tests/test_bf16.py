"""bfloat16 bit patterns (identirep._bf16): rounding, widening, and the exact three-part split
behind the GPU's bfloat16 pivot cross products."""
import numpy as np

from identirep import _bf16 as bf16


def wide_float32(n, seed):
    """float32 values over most of the exponent range, both signs, zeros and subnormals."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(n) * 2.0 ** rng.integers(-140, 120, n)).astype(np.float32)
    x[:4] = [0.0, -0.0, 1e-45, -3e-39]
    return x


def test_rounding_matches_ml_dtypes_and_widening_is_exact(ml_dtypes):
    x = wide_float32(100000, 0)
    bits = bf16.from_f32(x)
    np.testing.assert_array_equal(bits, x.astype(ml_dtypes.bfloat16).view(np.uint16))
    np.testing.assert_array_equal(bf16.to_f32(bits), x.astype(ml_dtypes.bfloat16)
                                  .astype(np.float32))


def test_split3_adds_up_to_the_float32_exactly():
    # exactly while the remainders stay normal (|x| >= 2^-100); below, bfloat16's shorter
    # subnormals leave at most 2^-126 absolute
    x = wide_float32(100000, 1)
    parts = [bf16.to_f32(p).astype(np.float64) for p in bf16.split3(x)]
    total, x64 = parts[0] + parts[1] + parts[2], x.astype(np.float64)
    normal = np.abs(x64) >= 2.0 ** -100
    assert normal.sum() > 80000
    np.testing.assert_array_equal(total[normal], x64[normal])
    assert np.abs(total - x64).max() <= 2.0 ** -126
    # each part is at most half an ulp (8 bits) of the one before
    big = np.abs(parts[0]) > 0
    assert np.all(np.abs(parts[1][big]) <= np.abs(parts[0][big]) * 2.0 ** -8)


def test_split_products_are_those_of_a_float32_matmul():
    # float32 L times bfloat16 g: the three exact parts give L g^T to float32 accumulation
    rng = np.random.default_rng(2)
    L = rng.standard_normal((7, 64)).astype(np.float32)
    g_bits = bf16.from_f32(rng.standard_normal((50, 64)).astype(np.float32))
    g = bf16.to_f32(g_bits).astype(np.float64)
    exact = L.astype(np.float64) @ g.T
    split = sum(bf16.to_f32(p).astype(np.float64) @ g.T for p in bf16.split3(L))
    np.testing.assert_allclose(split, exact, rtol=0, atol=1e-12 * np.abs(exact).max())
    one_part = bf16.to_f32(bf16.from_f32(L)).astype(np.float64) @ g.T
    assert np.abs(one_part - exact).max() > 1e-4 * np.abs(exact).max()  # bfloat16 L would not do


def test_a_wider_bias_is_not_rounded_to_the_kind_of_g(ml_dtypes):
    # bfloat16 f and g with a float32 bias: the bias keeps its float32 values (f', g' widened
    # to float32), as the same values stored as float32 give
    import identirep as ir
    from helpers import random_pair
    bf = np.dtype(ml_dtypes.bfloat16)
    a, b = random_pair(N=200, V=40, M=6, bias=True, seed=5)
    half = [ir.Model(m.f.astype(bf), m.g.astype(bf), (3 * m.bias).astype(np.float32))
            for m in (a, b)]
    wide = [ir.Model(m.f.astype(np.float32), m.g.astype(np.float32), m.bias) for m in half]
    assert [x.dtype for x in half[0].augmented(None)] == [np.float32, np.float32]
    got, want = ir.kl(*half), ir.kl(*wide)
    np.testing.assert_allclose([got.kl12, got.kl21], [want.kl12, want.kl21], rtol=1e-6)
