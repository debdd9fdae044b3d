"""The width experiment's models, K of them at once: p(y|x) = softmax_y(f(x) . g(y)).

f and g are MLPs with three hidden layers of width w, leaky ReLU (slope 0.01), and a final
linear layer without bias into the 2-d representation. g's input is the class one-hot with
its last entry dropped (C - 1 inputs: the last class is the zero vector). The optional
fixed-length variant rescales f(x) and/or g(y) to norm ``FIXED_LENGTH``.

The K models of a :class:`StackedModels` share nothing: each layer's weights are one tensor
(K, fan_in, fan_out) whose slice k is model k's, and every product is batched over k
(``torch.baddbmm``), so K small MLPs cost one call per layer instead of K. Model k's initial
weights come from its own seeded generator, drawn as ``torch.nn.Linear`` draws them
(uniform in +-1/sqrt(fan_in), weights and biases). Needs torch (``identirep[repro]``).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

REPRESENTATION_DIM = 2
HIDDEN_LAYERS = 3
LEAKY_SLOPE = 0.01
FIXED_LENGTH = 20.0
#: the fixed-length variants: which outputs are rescaled to norm FIXED_LENGTH
FIXED_LENGTH_VARIANTS = {"none": (), "f": ("f",), "g": ("g",), "both": ("f", "g")}


def g_inputs(classes: int) -> torch.Tensor:
    """g's inputs, one row per class: the one-hot vector without its last entry (C x C-1)."""
    return torch.eye(classes)[:, :classes - 1]


def _layer_sizes(fan_in: int, width: int):
    sizes = [fan_in] + [width] * HIDDEN_LAYERS + [REPRESENTATION_DIM]
    return list(zip(sizes[:-1], sizes[1:]))


def _uniform(gen: torch.Generator, shape, bound: float) -> torch.Tensor:
    return (torch.rand(shape, generator=gen, dtype=torch.float64) * 2 - 1) * bound


class StackedMLP(torch.nn.Module):
    """K MLPs of the same shape: hidden layers with bias and leaky ReLU, a final linear layer
    without bias. ``forward`` takes (K, B, fan_in) and returns (K, B, 2)."""

    def __init__(self, fan_in: int, width: int, generators: Sequence[torch.Generator],
                 dtype=torch.float32):
        super().__init__()
        sizes = _layer_sizes(fan_in, width)
        self.weights = torch.nn.ParameterList()
        self.biases = torch.nn.ParameterList()
        for i, (n_in, n_out) in enumerate(sizes):
            bound = 1.0 / math.sqrt(n_in)
            last = i == len(sizes) - 1
            w, b = [], []
            for gen in generators:      # per model: weight, then bias, layer by layer
                # drawn as nn.Linear's (out, in) weight, stored transposed for x @ W
                w.append(_uniform(gen, (n_out, n_in), bound).T)
                if not last:
                    b.append(_uniform(gen, (n_out,), bound))
            self.weights.append(torch.nn.Parameter(torch.stack(w).to(dtype).contiguous()))
            if not last:
                self.biases.append(torch.nn.Parameter(torch.stack(b).to(dtype)[:, None, :]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for w, b in zip(self.weights[:-1], self.biases):
            x = torch.nn.functional.leaky_relu(torch.baddbmm(b, x, w), LEAKY_SLOPE)
        return torch.bmm(x, self.weights[-1])


def _rescaled(z: torch.Tensor) -> torch.Tensor:
    return FIXED_LENGTH * z / z.norm(dim=-1, keepdim=True)


class StackedModels(torch.nn.Module):
    """K models p(y|x) = softmax_y(f(x) . g(y)) of one width, trained and evaluated together.

    ``generators[k]`` initialises model k (its f, then its g); ``fixed_length`` is a key of
    ``FIXED_LENGTH_VARIANTS``; the weights are float32 unless ``dtype`` says otherwise."""

    def __init__(self, width: int, classes: int, generators: Sequence[torch.Generator],
                 fixed_length: str = "none", dtype=torch.float32):
        super().__init__()
        if fixed_length not in FIXED_LENGTH_VARIANTS:
            raise ValueError(f"fixed_length must be one of {sorted(FIXED_LENGTH_VARIANTS)}")
        self.width, self.classes, self.count = width, classes, len(generators)
        self.fixed = FIXED_LENGTH_VARIANTS[fixed_length]
        self.f = StackedMLP(2, width, generators, dtype)
        self.g = StackedMLP(classes - 1, width, generators, dtype)
        self.register_buffer("g_in", g_inputs(classes))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """f of (K, B, 2) inputs: (K, B, 2)."""
        z = self.f(x)
        return _rescaled(z) if "f" in self.fixed else z

    def unembed(self) -> torch.Tensor:
        """g of every class, per model: (K, C, 2)."""
        z = self.g(self.g_in.to(self.f.weights[0].dtype).expand(self.count, -1, -1))
        return _rescaled(z) if "g" in self.fixed else z

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits f(x) . g(y) of (K, B, 2) inputs: (K, B, C)."""
        return torch.bmm(self.embed(x), self.unembed().transpose(1, 2))
