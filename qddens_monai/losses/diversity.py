# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""Deep diversity loss between the base learners of a deep ensemble (QME-Net / QDD-Ens / D2ED2Q)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import combinations
from typing import Any, Union

import torch
from torch.nn.modules.loss import _Loss

from ..ensemble import EnsembleOutput
from ..ensemble.learners import activate

__all__ = ["DeepDiversityLoss", "FeatureInput"]

#: a list (one entry per base learner) of lists (one entry per level) of ``(B, C_l, *spatial_l)`` feature maps,
#: or the ensemble's train-mode output (:class:`~qddens_monai.ensemble.EnsembleOutput`, a dict holding such a list
#: under ``"features"`` and optionally ``"roles"``).
FeatureInput = Union[Sequence[Sequence[torch.Tensor]], EnsembleOutput, Mapping[str, Any]]

_FORMS = ("faithful", "cosine", "ncl", "ambiguity")
_INPUTS = ("features", "probabilities")
_ACTIVATIONS = ("softmax", "sigmoid")
_LEVEL_REDUCTIONS = ("sum", "mean")
_CHANNEL_REDUCTIONS = ("auto", "none", "mean")
_CHANNEL_NORMS = (None, "center", "standardize")
_SATURATIONS = ("cubic", "tanh", "clamp")
_DEFAULT_ROLES = ("encoder", "decoder")


class DeepDiversityLoss(_Loss):
    """
    Deep diversity between the base learners of a deep ensemble, computed on their internal feature maps at
    every selected resolution level (QME-Net, QDD-Ens, D2ED2Q). The value is **larger when the learners are
    more diverse**; an ensemble objective subtracts it (see ``EnsembleLoss``).

    For each selected level ``l`` the maps of the K-1 base learners are first made comparable
    (``channel_reduction``, then ``channel_norm``), a per-level diversity ``div_l`` is computed by ``form``,
    and the levels are combined by ``level_reduction``.

    Forms (``F_i`` is learner i's prepared map at one level, pairs are ``i < j``):

    - ``"faithful"``: the authors' public-code form, mean over pairs of ``sqrt(||F_i - F_j||_2 + eps)`` with the
      L2 norm over the whole batch tensor. Unbounded above: subtracting it rewards inflating feature norms,
      which can make training diverge. It is therefore kept in check by a **size-normalised saturation**, on by
      default (``max_rms``). Since ``sqrt(||F_i - F_j||) = N**0.25 * sqrt(rms(F_i - F_j))`` for maps of ``N``
      elements, each pair's value ``d`` is passed through a saturating function with scale
      ``cap = N**0.25 * sqrt(max_rms)``, i.e. the saturation acts on the per-element root-mean-square
      difference and one setting works for any batch size, channel count, resolution and 2D/3D. The default
      ``"cubic"`` saturation is the soft clip ``cap * (u - u**3 / 3)``, ``u = min(d / cap, 1)``: the same
      Taylor expansion as ``cap * tanh(d / cap)`` (value and gradient faithful up to a relative ``u**2 / 3``
      and ``u**2``), smooth, and **exactly flat** once ``rms(F_i - F_j) >= max_rms`` (value ``2/3 cap``).
      Past that point the objective gives no reward at all for pushing features further apart, so it is
      bounded below and feature norms can grow only until the learners differ by about ``max_rms`` per element
      (not without bound, as with the raw term). ``"tanh"`` keeps an exponentially small but non-zero reward
      there, which scale-free optimisers such as Adam still follow; ``"clamp"`` is flat but has a kink.
      ``max_rms=None`` gives the unprotected public-code term.
    - ``"cosine"``: mean over pairs and over the batch of ``1 - cos(F_i[b], F_j[b])`` of the per-sample flattened
      maps; in ``[0, 2]`` (in ``[0, 1]`` for non-negative, e.g. post-ReLU, maps unless ``channel_norm`` centres
      them). Invariant to the scale of each learner's features, so it cannot be gamed by norms.
    - ``"ncl"``: negative-correlation-learning ambiguity per voxel: the learners' spread around their mean
      ``sum_k ||f_k - f_mean||^2`` as a fraction of their energy ``sum_k ||f_k||^2`` (norms over channels at one
      voxel), averaged over batch and voxels; in ``[0, 1]`` (``0`` = identical, ``1`` for features cancelling
      out, at most ``1 - 1/K`` for non-negative features, reached where one learner alone is active).
      Equals ``(1/K) sum_{i<j} ||f_i - f_j||^2`` over the energy, so it is also a pairwise measure.
    - ``"ambiguity"``: the ambiguity term of negative correlation learning (Liu & Yao 1999) unnormalised:
      ``(1/K) sum_k ||f_k - f_mean||^2`` per voxel, averaged over batch and voxels. Bounded (at most ``2``) on
      probabilities, the input it is meant for (``inputs="probabilities"``); unbounded on features.

    ``inputs="probabilities"`` measures the base learners' *outputs* instead of their features: their
    probabilities (``activation`` of ``pred["logits"][:-1]``) form one level with role ``"output"``, and
    ``levels`` is ignored. ``form="ambiguity"`` on probabilities is negative correlation learning's penalty as the
    ensemble literature uses it; the features' forms stay as the QME-Net / D2ED2Q papers define them.

    Learners whose channel counts differ at a level (heterogeneous ensembles) cannot be compared element-wise;
    with ``channel_reduction="auto"`` all learners' maps at that level are then replaced by their channel-mean
    maps ``(B, 1, *spatial)``, a fixed, parameter-free and channel-permutation-invariant reduction.

    With fewer than two base learners there is no pair and the loss is ``0``.

    Example::

        div = DeepDiversityLoss(form="cosine", levels=("encoder", "decoder"))
        value = div(net_output)  # net_output = {"logits": [...], "features": [[...], [...]], "roles": [...]}

    """

    def __init__(
        self,
        form: str = "faithful",
        levels: Sequence[int] | Sequence[str] | None = None,
        level_reduction: str = "sum",
        channel_reduction: str = "auto",
        channel_norm: str | None = None,
        max_rms: float | None = 4.0,
        saturation: str = "cubic",
        eps: float = 1e-8,
        inputs: str = "features",
        activation: str = "softmax",
    ) -> None:
        """
        Args:
            form: {``"faithful"``, ``"cosine"``, ``"ncl"``, ``"ambiguity"``} the per-level diversity measure, see
                the class docstring. Defaults to ``"faithful"``.
            levels: which levels to use, either level indices (negative indices count from the deepest level)
                or level roles (e.g. ``("encoder", "decoder")``, matched against the ``roles`` passed with the
                features). ``None`` (default) selects the ``"encoder"`` and ``"decoder"`` levels when roles are
                given (the public code's 8 levels; stem and bottleneck are left out), and all levels when no
                roles are given or none of them is an encoder or decoder level (e.g. a network that fuses only
                its bottleneck).
            level_reduction: {``"sum"``, ``"mean"``} how the per-level values are combined. Defaults to
                ``"sum"`` as in the public code (``alpha`` then scales with the number of levels).
            channel_reduction: {``"auto"``, ``"none"``, ``"mean"``} how learners' maps are made comparable over
                channels. ``"none"``: compare the maps as they are (channel counts must match). ``"mean"``:
                always compare channel-mean maps. ``"auto"`` (default): ``"none"`` at levels where all learners
                have the same channel count, ``"mean"`` at the others.
            channel_norm: {``None``, ``"center"``, ``"standardize"``} optional per-sample, per-channel
                normalisation over the spatial dimensions, applied after ``channel_reduction`` and before the
                measure. ``"center"`` subtracts the spatial mean (the cosine form then measures correlation
                rather than overlap of non-negative activations), ``"standardize"`` also divides by the spatial
                standard deviation (every channel then weighs the same, and the faithful form can no longer be
                inflated by feature norms).
                Defaults to ``None`` (the public code's raw features).
            max_rms: faithful form only: the per-element root-mean-square feature difference at which each
                pair's term saturates, ``cap = N**0.25 * sqrt(max_rms)`` for maps of ``N`` elements. ``None``
                disables the safeguard (the unbounded public-code term). Defaults to ``4.0``, several times the
                typical difference of batch-normalised post-ReLU features (about ``0.5``-``1``): at ``rms = 1`` the
                ``"cubic"`` value is 8% and its gradient 25% below the faithful ones. Ignored by
                the bounded forms.
            saturation: {``"cubic"``, ``"tanh"``, ``"clamp"``} faithful form only: how a pair's value ``d``
                saturates at ``cap``: ``"cubic"`` (default) ``cap * (u - u**3 / 3)`` with ``u = min(d / cap, 1)``,
                smooth and exactly flat past ``cap``; ``"tanh"`` ``cap * tanh(d / cap)``; ``"clamp"``
                ``min(d, cap)``.
            eps: small constant: added inside the square root of the faithful form (``1e-8`` in the public code)
                and to the denominators of the other forms and of ``"standardize"``. Defaults to ``1e-8``.
            inputs: {``"features"``, ``"probabilities"``} what is compared: the base learners' level features
                (default, the papers' deep diversity) or their output probabilities (one level, role
                ``"output"``; needs the ensemble output dict with ``"logits"``).
            activation: {``"softmax"``, ``"sigmoid"``} how ``inputs="probabilities"`` turns logits into
                probabilities. Defaults to ``"softmax"``.

        Raises:
            ValueError: when an option is not one of the listed values, or ``max_rms`` is not positive.

        """
        super().__init__()
        for name, value, allowed in (
            ("form", form, _FORMS),
            ("level_reduction", level_reduction, _LEVEL_REDUCTIONS),
            ("channel_reduction", channel_reduction, _CHANNEL_REDUCTIONS),
            ("channel_norm", channel_norm, _CHANNEL_NORMS),
            ("saturation", saturation, _SATURATIONS),
            ("inputs", inputs, _INPUTS),
            ("activation", activation, _ACTIVATIONS),
        ):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}.")
        if max_rms is not None and max_rms <= 0:
            raise ValueError(f"max_rms must be positive or None, got {max_rms}.")
        if isinstance(levels, (str, int)):
            levels = [levels]  # type: ignore[list-item]
        self.form = form
        self.levels = None if levels is None else list(levels)
        self.level_reduction = level_reduction
        self.channel_reduction = channel_reduction
        self.channel_norm = channel_norm
        self.max_rms = max_rms
        self.saturation = saturation
        self.eps = eps
        self.inputs = inputs
        self.activation = activation

    def output_level(self, pred: FeatureInput) -> tuple[list[list[torch.Tensor]], list[str]]:
        """The base learners' probabilities as one level (role ``"output"``), from the ensemble output dict.

        Raises:
            ValueError: when ``pred`` is not the ensemble's output dict with ``"logits"``.
        """
        if not isinstance(pred, Mapping) or "logits" not in pred:
            raise ValueError("inputs='probabilities' needs the ensemble's train-mode output dict with 'logits'.")
        return [[activate(logits.float(), self.activation)] for logits in list(pred["logits"])[:-1]], ["output"]

    @staticmethod
    def unpack(
        features: FeatureInput, roles: Sequence[str] | None = None
    ) -> tuple[list[list[torch.Tensor]], list[str] | None]:
        """
        Normalise the accepted inputs to ``(per-learner list of per-level maps, roles)``.

        Args:
            features: per-learner lists of per-level ``(B, C_l, *spatial_l)`` maps, or the ensemble output
                dict with ``"features"`` (and optionally ``"roles"``).
            roles: level roles; overrides ``features["roles"]`` when given.

        Raises:
            ValueError: when the learners do not have the same number of levels or a dict has no ``"features"``.

        """
        if isinstance(features, Mapping):
            if "features" not in features:
                raise ValueError(f"the ensemble output has no 'features' entry, keys: {list(features)}.")
            roles = features.get("roles") if roles is None else roles
            features = features["features"]
        per_learner = [list(levels) for levels in features]  # type: ignore[union-attr]
        if len({len(levels) for levels in per_learner}) > 1:
            counts = [len(x) for x in per_learner]
            raise ValueError(f"all learners must expose the same number of levels, got {counts}.")
        return per_learner, None if roles is None else list(roles)

    def select_levels(self, num_levels: int, roles: Sequence[str] | None = None) -> list[int]:
        """
        Indices (sorted, non-negative) of the levels this loss uses.

        Args:
            num_levels: number of levels every learner exposes.
            roles: optional role name per level, length ``num_levels``.

        Raises:
            ValueError: when ``roles`` has the wrong length, roles are requested but not given, or nothing matches.
            IndexError: when a level index is out of range.

        """
        if roles is not None and len(roles) != num_levels:
            raise ValueError(f"got {len(roles)} roles for {num_levels} levels.")
        wanted = self.levels
        if wanted is None:
            if roles is None or not any(r in _DEFAULT_ROLES for r in roles):
                return list(range(num_levels))
            wanted = list(_DEFAULT_ROLES)
        if any(isinstance(x, str) for x in wanted):
            if not all(isinstance(x, str) for x in wanted):
                raise ValueError(f"levels must be all indices or all roles, got {wanted}.")
            if roles is None:
                raise ValueError(f"levels {wanted} are given by role, but no roles were passed with the features.")
            selected = [i for i, r in enumerate(roles) if r in wanted]
            if not selected:
                raise ValueError(f"no level has a role in {wanted}; roles are {list(roles)}.")
            return selected
        indices = set()
        for i in wanted:
            if not -num_levels <= int(i) < num_levels:  # type: ignore[arg-type]
                raise IndexError(f"level index {i} out of range for {num_levels} levels.")
            indices.add(int(i) % num_levels)  # type: ignore[arg-type]
        return sorted(indices)

    def _prepare(self, maps: list[torch.Tensor], level: int) -> list[torch.Tensor]:
        """Make the learners' maps at one level comparable: same shape, channel reduction, channel norm."""
        if len({tuple(m.shape[2:]) for m in maps}) > 1 or len({m.shape[0] for m in maps}) > 1:
            shapes = [tuple(m.shape) for m in maps]
            raise ValueError(f"level {level}: learners' maps differ in batch or spatial shape: {shapes}.")
        same_channels = len({m.shape[1] for m in maps}) == 1
        if self.channel_reduction == "none" and not same_channels:
            raise ValueError(
                f"level {level}: channel counts differ {[m.shape[1] for m in maps]}; "
                "use channel_reduction='auto' or 'mean'."
            )
        maps = [m.float() for m in maps]
        if self.channel_reduction == "mean" or not same_channels:
            maps = [m.mean(dim=1, keepdim=True) for m in maps]
        if self.channel_norm is not None:
            spatial = tuple(range(2, maps[0].ndim))
            maps = [m - m.mean(dim=spatial, keepdim=True) for m in maps]
            if self.channel_norm == "standardize":
                maps = [m / torch.sqrt(m.pow(2).mean(dim=spatial, keepdim=True) + self.eps) for m in maps]
        return maps

    def _faithful(self, maps: list[torch.Tensor]) -> torch.Tensor:
        cap = None if self.max_rms is None else (maps[0].numel() ** 0.25) * (self.max_rms**0.5)
        values = []
        for a, b in combinations(maps, 2):
            d = torch.sqrt(torch.linalg.vector_norm(a - b) + self.eps)
            if cap is not None:
                if self.saturation == "cubic":
                    u = torch.clamp(d / cap, max=1.0)
                    d = cap * (u - u.pow(3) / 3.0)
                elif self.saturation == "tanh":
                    d = cap * torch.tanh(d / cap)
                else:
                    d = torch.clamp(d, max=cap)
            values.append(d)
        return torch.stack(values).mean()

    def _cosine(self, maps: list[torch.Tensor]) -> torch.Tensor:
        flat = [m.reshape(m.shape[0], -1) for m in maps]
        values = []
        for a, b in combinations(flat, 2):
            # plain formula with eps on the product of norms: finite gradients even for all-zero (dead) maps
            cos = (a * b).sum(1) / (torch.linalg.vector_norm(a, dim=1) * torch.linalg.vector_norm(b, dim=1) + self.eps)
            values.append((1.0 - cos).mean())
        return torch.stack(values).mean()

    @staticmethod
    def _spread(stacked: torch.Tensor) -> torch.Tensor:
        """``sum_k ||f_k - f_mean||^2`` per voxel (norm over channels) of stacked maps (K, B, C, *S): (B, *S)."""
        return (stacked - stacked.mean(dim=0, keepdim=True)).pow(2).sum(dim=(0, 2))

    def _ncl(self, maps: list[torch.Tensor]) -> torch.Tensor:
        stacked = torch.stack(maps)  # (K, B, C, *spatial)
        energy = stacked.pow(2).sum(dim=(0, 2))
        return (self._spread(stacked) / (energy + self.eps)).mean()

    def _ambiguity(self, maps: list[torch.Tensor]) -> torch.Tensor:
        return self._spread(torch.stack(maps)).mean() / len(maps)

    def per_level(
        self, features: FeatureInput, roles: Sequence[str] | None = None, levels: Sequence[int] | None = None
    ) -> dict[int, torch.Tensor]:
        """
        Diversity of each level, before ``level_reduction``.

        Args:
            features: per-learner lists of per-level ``(B, C_l, *spatial_l)`` maps (K-1 base learners, each with
                the same number of levels), or the ensemble's train-mode output dict with ``"features"`` (and
                optionally ``"roles"``).
            roles: optional role per level (``"stem"``, ``"encoder"``, ``"bottleneck"``, ``"decoder"``); overrides
                the dict's ``"roles"``.
            levels: explicit level indices to compute, overriding this loss's selection (e.g. to log levels
                that are not optimised).

        Returns:
            dict mapping level index to a scalar tensor; values are ``0`` with fewer than two learners.

        """
        if self.inputs == "probabilities":
            per_learner, roles = self.output_level(features)
            levels = [0]
        else:
            per_learner, roles = self.unpack(features, roles)
        if not per_learner or not per_learner[0]:
            raise ValueError("no features given.")
        num_levels = len(per_learner[0])
        indices = self.select_levels(num_levels, roles) if levels is None else [int(i) % num_levels for i in levels]
        measures = {"faithful": self._faithful, "cosine": self._cosine, "ncl": self._ncl, "ambiguity": self._ambiguity}
        measure = measures[self.form]
        out: dict[int, torch.Tensor] = {}
        for level in indices:
            maps = [learner[level] for learner in per_learner]
            if len(maps) < 2:
                out[level] = maps[0].new_zeros((), dtype=torch.float)
                continue
            out[level] = measure(self._prepare(maps, level))
        return out

    def reduce_levels(self, values: Mapping[int, torch.Tensor]) -> torch.Tensor:
        """
        Combine per-level values (from ``per_level``) by ``level_reduction``.

        Args:
            values: dict mapping level index to scalar tensor, not empty.

        """
        stacked = torch.stack(list(values.values()))
        return stacked.sum() if self.level_reduction == "sum" else stacked.mean()

    def forward(  # type: ignore[override]
        self, features: FeatureInput, roles: Sequence[str] | None = None
    ) -> torch.Tensor:
        """
        Args:
            features: per-learner lists of per-level ``(B, C_l, *spatial_l)`` maps (2D or 3D spatial), K-1 base
                learners with the same number of levels; at one level all learners share batch and spatial
                shape. Or the ensemble's train-mode output dict ``{"logits": ..., "features": ..., "roles": ...}``.
            roles: optional role per level; overrides ``features["roles"]``.

        Returns:
            scalar tensor, larger for more diverse learners.

        """
        return self.reduce_levels(self.per_level(features, roles))
