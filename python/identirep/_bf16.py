"""bfloat16 as uint16 bit patterns, for NumPy and CuPy arrays alike (array methods only)."""
from __future__ import annotations

import numpy as np


def to_f32(bits):
    """float32 values of bfloat16 bit patterns (exact); one uint32 array, shifted in place."""
    out = bits.astype(np.uint32)
    out <<= 16
    return out.view(np.float32)


def from_f32(x):
    """bfloat16 bit patterns of float32 x, rounded to nearest even."""
    b = x.view(np.uint32)
    return ((b + 0x7FFF + ((b >> 16) & 1)) >> 16).astype(np.uint16)


def split3(x):
    """Three bfloat16 bit arrays (hi, mid, lo) whose values add up to float32 x: each step
    rounds the remainder to 8 significant bits, and the remainder of a float32 (24 bits) after
    two steps has at most 8 left. Exact while the remainders are normal (|x| >= 2^-100);
    smaller x are off by at most 2^-126. (x near the float32 maximum, where rounding to
    bfloat16 overflows, and non-finite x are not split.)"""
    parts, rest = [], x
    for _ in range(3):
        bits = from_f32(rest)
        parts.append(bits)
        rest = rest - to_f32(bits)
    return parts
