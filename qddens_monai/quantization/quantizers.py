"""Weight quantizers: the level sets of INQ, D2ED2Q, DoReFa, TWN and a uniform baseline.

Every quantizer maps a weight tensor onto a finite level set described by a small
``params`` tensor (its scale), and can write the result as integer codes in
``[0, 2**bits)``. ``quantize(w, params)`` is *defined* as ``decode(encode(w, params), params)``,
so a weight that was quantized, packed and unpacked is bit-identical.

``bits`` always counts the storage bits per weight, sign included: a b-bit weight is
stored in exactly b bits by :mod:`qddens_monai.quantization.packing`.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch

__all__ = [
    "Quantizer",
    "PowerOfTwoQuantizer",
    "LogMinMaxQuantizer",
    "DoReFaQuantizer",
    "TernaryQuantizer",
    "UniformQuantizer",
    "QUANTIZERS",
    "get_quantizer",
]


class Quantizer(ABC):
    """Base class of a per-tensor (or per-channel) weight quantizer.

    Args:
        bits: storage bits per weight, sign included; must lie in ``[min_bits, max_bits]``.
    """

    name: str = ""
    min_bits: int = 2
    max_bits: int = 16
    #: the schedule the method was published with: incremental (INQ-style, frozen
    #: partitions) or straight-through (quantize in every forward, latent float weight).
    incremental: bool = True

    def __init__(self, bits: int) -> None:
        if isinstance(bits, bool) or not isinstance(bits, int):
            raise ValueError(f"{self.name}: bits must be an integer, got {bits!r}.")
        if not self.min_bits <= bits <= self.max_bits:
            raise ValueError(
                f"{self.name}: bits={bits} is out of range, this method takes {self.min_bits}..{self.max_bits} bits."
            )
        self.bits = bits

    def param_shape(self, weight_shape: torch.Size, channel_dim: int) -> tuple[int, ...]:
        """Shape of the ``params`` tensor for a weight of ``weight_shape``."""
        return (1,)

    @abstractmethod
    def calibrate(self, w: torch.Tensor, channel_dim: int) -> torch.Tensor:
        """Compute the level set's parameters (its scale) from the whole weight tensor ``w``."""

    @abstractmethod
    def encode(self, w: torch.Tensor, params: torch.Tensor, channel_dim: int) -> torch.Tensor:
        """Integer codes (int64, same shape as ``w``, values in ``[0, 2**bits)``) of the nearest levels."""

    @abstractmethod
    def decode(self, codes: torch.Tensor, params: torch.Tensor, channel_dim: int) -> torch.Tensor:
        """Float weights (dtype of ``params``) of ``codes``."""

    def index(self, values: torch.Tensor, params: torch.Tensor, channel_dim: int) -> torch.Tensor:
        """Codes of weights that already lie on the level set: the inverse of :meth:`decode`."""
        return self.encode(values, params, channel_dim)

    def quantize(self, w: torch.Tensor, params: torch.Tensor, channel_dim: int = 0) -> torch.Tensor:
        """Quantize ``w`` onto the level set given by ``params``; no gradient."""
        with torch.no_grad():
            return self.decode(self.encode(w, params, channel_dim), params, channel_dim).to(w.dtype)

    def surrogate(self, w: torch.Tensor, params: torch.Tensor, channel_dim: int) -> torch.Tensor:
        """Differentiable stand-in whose gradient the straight-through estimator uses (identity by default)."""
        return w

    def straight_through(self, w: torch.Tensor, params: torch.Tensor, channel_dim: int = 0) -> torch.Tensor:
        """Quantized values in the forward pass, the surrogate's gradient in the backward pass."""
        s = self.surrogate(w, params, channel_dim)
        # s - s.detach() is exactly zero, so the forward value is exactly the quantized one.
        return s - s.detach() + self.quantize(w, params, channel_dim)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(bits={self.bits})"


def _per_channel_view(x: torch.Tensor, ndim: int, channel_dim: int) -> torch.Tensor:
    """Reshape a (C,) tensor so it broadcasts along ``channel_dim`` of an ``ndim`` tensor."""
    shape = [1] * ndim
    shape[channel_dim] = -1
    return x.reshape(shape)


class PowerOfTwoQuantizer(Quantizer):
    """INQ's power-of-two level set (Zhou et al. 2017).

    Levels ``{0, ±2**n2, ..., ±2**n1}`` with ``s = max|W|``, ``n1 = floor(log2(4s/3))`` and
    ``n2 = n1 + 1 - 2**(b-2)``. A weight goes to ``β·sign(w)`` when ``(α+β)/2 <= |w| < 3β/2``
    for adjacent levels ``α < β``; weights under ``2**n2 / 2`` go to zero and weights above
    the top level (possible once the free weights are retrained) are clamped to it.

    Codes: 0 is zero, ``1 + 2*(n - n2) + (w < 0)`` is ``±2**n``: ``2**(b-1) + 1`` levels in b bits.
    """

    name = "power_of_two"
    min_bits = 2
    max_bits = 16

    def calibrate(self, w: torch.Tensor, channel_dim: int) -> torch.Tensor:
        s = w.detach().abs().max().double()
        n1 = math.floor(math.log2(4.0 * float(s) / 3.0)) if s > 0 else 0
        return torch.tensor([float(n1)], dtype=w.dtype, device=w.device)

    def exponents(self, params: torch.Tensor) -> tuple[int, int]:
        """``(n1, n2)``: the largest and smallest exponent of the level set."""
        n1 = int(params.reshape(-1)[0].item())
        return n1, n1 + 1 - 2 ** (self.bits - 2)

    def encode(self, w: torch.Tensor, params: torch.Tensor, channel_dim: int) -> torch.Tensor:
        n1, n2 = self.exponents(params)
        a = w.detach().abs().double()
        # The arithmetic midpoint of 2**(n-1) and 2**n is 0.75 * 2**n.
        n = torch.floor(torch.log2(torch.clamp(a, min=1e-300) / 0.75))
        n = torch.where(a < 0.75 * torch.exp2(n), n - 1, n)
        n = torch.where(a >= 1.5 * torch.exp2(n), n + 1, n)
        n = n.clamp(n2, n1).long()
        codes = 1 + 2 * (n - n2) + (w < 0).long()
        return torch.where(a < 0.5 * 2.0**n2, torch.zeros_like(codes), codes)

    def decode(self, codes: torch.Tensor, params: torch.Tensor, channel_dim: int) -> torch.Tensor:
        _, n2 = self.exponents(params)
        k = (codes - 1).clamp(min=0)
        magnitude = torch.exp2((n2 + torch.div(k, 2, rounding_mode="floor")).double())
        sign = 1.0 - 2.0 * (k % 2).double()
        return torch.where(codes == 0, torch.zeros_like(magnitude), sign * magnitude).to(params.dtype)


class LogMinMaxQuantizer(Quantizer):
    """The logarithmic min-max quantizer of the D2ED2Q public code.

    ``ln|w|`` is quantized uniformly between its minimum and maximum over the tensor and
    mapped back with ``exp`` and the sign. One of the b bits holds the sign, so there are
    ``2**(b-1)`` magnitudes (the public code used ``2**b`` magnitudes plus a sign, i.e. b+1
    bits of storage). There is no zero level: exact zeros become the smallest positive level.
    """

    name = "log_minmax"
    min_bits = 2
    max_bits = 16

    def param_shape(self, weight_shape: torch.Size, channel_dim: int) -> tuple[int, ...]:
        return (2,)

    def calibrate(self, w: torch.Tensor, channel_dim: int) -> torch.Tensor:
        a = w.detach().abs()
        a = a[a > 0]
        if a.numel() == 0:
            return torch.zeros(2, dtype=w.dtype, device=w.device)
        logs = torch.log(a.double())
        return torch.stack([logs.min(), logs.max()]).to(w.dtype)

    def _grid(self, params: torch.Tensor) -> tuple[float, float, int]:
        lo, hi = (float(v) for v in params.double())
        return lo, hi, 2 ** (self.bits - 1) - 1

    def encode(self, w: torch.Tensor, params: torch.Tensor, channel_dim: int) -> torch.Tensor:
        lo, hi, top = self._grid(params)
        logs = torch.log(w.detach().abs().double().clamp(min=1e-300))
        step = (hi - lo) / top if hi > lo else 1.0
        k = torch.round((logs - lo) / step).clamp(0, top).long()
        return 2 * k + (w < 0).long()

    def decode(self, codes: torch.Tensor, params: torch.Tensor, channel_dim: int) -> torch.Tensor:
        lo, hi, top = self._grid(params)
        step = (hi - lo) / top if hi > lo else 0.0
        k = torch.div(codes, 2, rounding_mode="floor").double()
        sign = 1.0 - 2.0 * (codes % 2).double()
        return (sign * torch.exp(lo + k * step)).to(params.dtype)


class DoReFaQuantizer(Quantizer):
    """DoReFa-Net's k-bit weight quantizer (Zhou et al. 2016), straight-through.

    ``w_q = 2 q_k(tanh(w) / (2 max|tanh(w)|) + 0.5) - 1`` with ``q_k(x) = round((2**k-1) x) / (2**k-1)``;
    the gradient flows through the ``tanh`` normalisation and straight through the rounding.
    For k = 1: ``w_q = sign(w) * mean|w|`` with an identity gradient. ``params`` holds
    ``max|tanh(w)|`` (k > 1) or ``mean|w|`` (k = 1).
    """

    name = "dorefa"
    min_bits = 1
    max_bits = 16
    incremental = False

    def calibrate(self, w: torch.Tensor, channel_dim: int) -> torch.Tensor:
        w = w.detach()
        value = w.abs().mean() if self.bits == 1 else torch.tanh(w).abs().max()
        return value.reshape(1).clamp(min=torch.finfo(w.dtype).tiny)

    def encode(self, w: torch.Tensor, params: torch.Tensor, channel_dim: int) -> torch.Tensor:
        if self.bits == 1:
            return (w >= 0).long()
        levels = 2**self.bits - 1
        x = torch.tanh(w.detach().double()) / (2 * params.double()) + 0.5
        return torch.round(x * levels).clamp(0, levels).long()

    def decode(self, codes: torch.Tensor, params: torch.Tensor, channel_dim: int) -> torch.Tensor:
        if self.bits == 1:
            return ((2 * codes - 1).double() * params.double()).to(params.dtype)
        levels = 2**self.bits - 1
        return (2.0 * codes.double() / levels - 1.0).to(params.dtype)

    def index(self, values: torch.Tensor, params: torch.Tensor, channel_dim: int) -> torch.Tensor:
        # encode() applies tanh, so it is not its own inverse on the level set.
        if self.bits == 1:
            return (values >= 0).long()
        levels = 2**self.bits - 1
        return torch.round((values.detach().double() + 1.0) * levels / 2.0).clamp(0, levels).long()

    def surrogate(self, w: torch.Tensor, params: torch.Tensor, channel_dim: int) -> torch.Tensor:
        return w if self.bits == 1 else torch.tanh(w) / params


class TernaryQuantizer(Quantizer):
    """Ternary weight networks (Li et al. 2016), per output channel, straight-through.

    Per output channel c: ``delta_c = 0.7 * mean|W_c|``, ``alpha_c = mean(|w| : |w| > delta_c)``,
    ``w_t = alpha_c * sign(w) * [|w| > delta_c]``. Codes 0, 1, 2 are 0, +alpha, -alpha: 2 bits.
    ``params`` has shape (C, 2): ``(delta_c, alpha_c)``.
    """

    name = "ternary"
    min_bits = 2
    max_bits = 2
    incremental = False

    def __init__(self, bits: int = 2) -> None:
        super().__init__(bits)

    def param_shape(self, weight_shape: torch.Size, channel_dim: int) -> tuple[int, ...]:
        return (weight_shape[channel_dim], 2)

    def calibrate(self, w: torch.Tensor, channel_dim: int) -> torch.Tensor:
        a = w.detach().abs().transpose(0, channel_dim).reshape(w.shape[channel_dim], -1)
        delta = 0.7 * a.mean(dim=1)
        above = a > delta[:, None]
        alpha = (a * above).sum(dim=1) / above.sum(dim=1).clamp(min=1)
        return torch.stack([delta, alpha], dim=1)

    def encode(self, w: torch.Tensor, params: torch.Tensor, channel_dim: int) -> torch.Tensor:
        delta = _per_channel_view(params[:, 0], w.ndim, channel_dim)
        codes = 1 + (w < 0).long()
        return torch.where(w.detach().abs() > delta, codes, torch.zeros_like(codes))

    def decode(self, codes: torch.Tensor, params: torch.Tensor, channel_dim: int) -> torch.Tensor:
        alpha = _per_channel_view(params[:, 1], codes.ndim, channel_dim)
        sign = torch.where(codes == 2, -1.0, 1.0).to(params.dtype)
        return torch.where(codes == 0, torch.zeros_like(sign), sign * alpha)


class UniformQuantizer(Quantizer):
    """Symmetric uniform b-bit quantizer, the baseline, straight-through.

    ``L = 2**(b-1) - 1`` steps each side of zero, step ``s / L`` with ``s = max|W|``;
    ``2L + 1`` levels, codes ``i + L`` for ``i`` in ``[-L, L]``.
    """

    name = "uniform"
    min_bits = 2
    max_bits = 16
    incremental = False

    def calibrate(self, w: torch.Tensor, channel_dim: int) -> torch.Tensor:
        return w.detach().abs().max().reshape(1)

    def encode(self, w: torch.Tensor, params: torch.Tensor, channel_dim: int) -> torch.Tensor:
        top = 2 ** (self.bits - 1) - 1
        step = params.double().clamp(min=1e-300) / top
        return torch.round(w.detach().double() / step).clamp(-top, top).long() + top

    def decode(self, codes: torch.Tensor, params: torch.Tensor, channel_dim: int) -> torch.Tensor:
        top = 2 ** (self.bits - 1) - 1
        return ((codes - top).double() * (params.double() / top)).to(params.dtype)


QUANTIZERS: dict[str, type[Quantizer]] = {
    q.name: q for q in (PowerOfTwoQuantizer, LogMinMaxQuantizer, DoReFaQuantizer, TernaryQuantizer, UniformQuantizer)
}


def get_quantizer(method: str, bits: int) -> Quantizer:
    """The quantizer named ``method`` (a key of :data:`QUANTIZERS`) at ``bits`` bits."""
    if method not in QUANTIZERS:
        raise ValueError(f"Unknown quantization method {method!r}; choose one of {sorted(QUANTIZERS)}.")
    return QUANTIZERS[method](bits)
