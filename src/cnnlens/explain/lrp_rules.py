"""The LRP rules (Montavon et al. 2019, "Layer-wise relevance propagation: an overview"), each as the term
whose gradient propagates relevance through one convolution or linear layer.

A layer ``y = layer(a, W, b)`` with relevance ``R_y`` at its output distributes it to its input as
``R_a = sum_k c_k a_k * d z_k/d a_k^T (R_y / stabilise(z))``, where each rule picks its modified inputs
``a_k`` (``a``, its positive or negative part, ones, the input's bounds), weights ``W_k`` and the sums ``z``
that normalise. :mod:`cnnlens.explain.lrp` keeps relevance as ``R = activation * gradient`` everywhere, so
a rule is a tensor ``T`` computed in the forward pass whose gradient is what the rule needs: with
``T = z * (y / stabilise(z)).detach()``, ``a * d T/d a^T g = sum_k a_k W_k^T (R_y / stabilise(z))`` for
``R_y = y * g``. The layer's output keeps its value, ``y + (T - T.detach())``.

The rules and their stabiliser follow Zennit's (``zennit.rules``: ``z + (1[z = 0] + sign z) * eps``; the
bias parts as there: ``b+`` in z-plus' positive sum, ``b + gamma b+`` in gamma's); Captum's
``EpsilonRule``, ``GammaRule`` and ``Alpha1_Beta0_Rule`` agree with them on non-negative inputs and
bias-free layers (Captum keeps the whole bias in gamma and alpha-beta, and gamma's ``W + gamma W+`` also
for negative outputs, where Zennit's generalised gamma takes ``W + gamma W-``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch

#: ``layer(a, W, b)``: the call's convolution or linear map with its other arguments (stride, padding) bound.
Layer = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]
#: The stabiliser of every rule but epsilon (Zennit's default).
STABILISER = 1e-6


def stabilise(z: torch.Tensor, eps: float) -> torch.Tensor:
    """``z + (1[z = 0] + sign z) * eps``: away from zero by ``eps``, zeros to ``+eps`` (Zennit's ``stabilize``)."""
    return z + ((z == 0).to(z) + z.sign()) * eps


def share(z: torch.Tensor, y: torch.Tensor, eps: float = STABILISER) -> torch.Tensor:
    """``z * (y / stabilise(z))``, the ratio held constant: the gradient that gives each of ``z``'s terms its
    share of the output's relevance (none where the stabilised ``z`` is 0, as for LRP-0 at ``z = 0``)."""
    den = stabilise(z.detach(), eps)
    zero = den == 0
    return z * torch.where(zero, 0, y.detach() / torch.where(zero, 1, den)).detach()


def _pos(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.clamp(min=0)


def _neg(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.clamp(max=0)


def _plus(w: torch.Tensor | None, extra: torch.Tensor | None, gamma: float) -> torch.Tensor | None:
    return None if w is None else w + gamma * extra


@dataclasses.dataclass(frozen=True)
class Rule:
    """One LRP rule; :meth:`term` returns the tensor whose gradient propagates the relevance."""

    #: Whether the rule reads the input's bounds or ones instead of the input (first layer only).
    first_only = False

    def term(self, layer: Layer, a: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, plain: torch.Tensor,
             leaves: list[torch.Tensor]) -> torch.Tensor:
        """``T`` for the layer on input ``a`` (``plain = layer(a, w, b)``, differentiable); a first-layer rule
        appends the tensors it reads besides ``a`` to ``leaves`` (their relevance is ``leaf * gradient``)."""
        raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class Epsilon(Rule):
    """LRP-epsilon (Bach et al. 2015): ``R_j = sum_k a_j w_jk / (z_k + eps sign z_k) R_k``; ``epsilon=0`` is
    LRP-0 (a unit with ``z = 0`` then passes nothing on)."""

    epsilon: float = 1e-6

    def term(self, layer, a, w, b, plain, leaves):  # noqa: ANN001, ANN201 (Rule.term's)
        return share(plain, plain.detach(), self.epsilon)


@dataclasses.dataclass(frozen=True)
class AlphaBeta(Rule):
    """LRP-alpha-beta (Bach et al. 2015): ``alpha`` times the relevance shared by the positive contributions
    ``z+ = W+ a+ + W- a- + b+``, minus ``beta`` times that shared by the negative ones; ``alpha - beta = 1``.
    ``AlphaBeta(1, 0)`` is the z-plus rule (Montavon et al. 2017; Zennit's ``ZPlus``)."""

    alpha: float = 1.0
    beta: float = 0.0

    def term(self, layer, a, w, b, plain, leaves):  # noqa: ANN001, ANN201 (Rule.term's)
        ap, an = a.clamp(min=0), a.clamp(max=0)
        y = plain.detach()
        out = self.alpha * share(layer(ap, w.clamp(min=0), _pos(b)) + layer(an, w.clamp(max=0), None), y)
        if self.beta:
            out = out - self.beta * share(layer(ap, w.clamp(max=0), _neg(b)) + layer(an, w.clamp(min=0), None), y)
        return out


@dataclasses.dataclass(frozen=True)
class Gamma(Rule):
    """LRP-gamma (Montavon et al. 2019): weights ``W + gamma W+`` (bias ``b + gamma b+``) for positive
    inputs of a positive output; generalised to negative inputs and outputs as Zennit's ``Gamma`` (Andeol
    et al. 2021): a negative output shares by ``W + gamma W-``."""

    gamma: float = 0.25

    def term(self, layer, a, w, b, plain, leaves):  # noqa: ANN001, ANN201 (Rule.term's)
        g, ap, an = self.gamma, a.clamp(min=0), a.clamp(max=0)
        wp, wn = w.clamp(min=0), w.clamp(max=0)
        y = plain.detach()
        up = layer(ap, w + g * wp, _plus(b, _pos(b), g)) + layer(an, w + g * wn, None)
        down = layer(ap, w + g * wn, _plus(b, _neg(b), g)) + layer(an, w + g * wp, None)
        return (y > 0).to(y) * share(up, y) + (y < 0).to(y) * share(down, y)


@dataclasses.dataclass(frozen=True)
class ZBox(Rule):
    """z^B (Montavon et al. 2017), for the first layer of inputs bounded by ``low <= a <= high``:
    ``z = W a - W+ low - W- high``; the relevance of ``low`` and ``high`` is the input's too. ``low`` /
    ``high``: tensors broadcastable to the layer's input."""

    low: torch.Tensor
    high: torch.Tensor
    first_only = True

    def term(self, layer, a, w, b, plain, leaves):  # noqa: ANN001, ANN201 (Rule.term's)
        low = self.low.to(a).expand_as(a).clone().requires_grad_(True)
        high = self.high.to(a).expand_as(a).clone().requires_grad_(True)
        leaves += [low, high]
        z = plain - layer(low, w.clamp(min=0), _pos(b)) - layer(high, w.clamp(max=0), _neg(b))
        return share(z, plain.detach())


@dataclasses.dataclass(frozen=True)
class Flat(Rule):
    """The flat rule (Lapuschkin et al. 2019): every input of a unit's receptive field an equal share,
    ``R_j = sum_k R_k / #{j in k's field}`` (ones for inputs and weights, no bias)."""

    first_only = True

    def term(self, layer, a, w, b, plain, leaves):  # noqa: ANN001, ANN201 (Rule.term's)
        ones = torch.ones_like(a).requires_grad_(True)
        leaves.append(ones)
        return share(layer(ones, torch.ones_like(w), None), plain.detach())
