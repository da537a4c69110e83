"""The loss's parts in the trainer's output: ``engine.state.output["loss/<part>"]`` beside MONAI's ``"loss"``.

MONAI's ``SupervisedTrainer`` stores one number per iteration, ``output["loss"]``. A loss made of parts
(:class:`~qddens_monai.losses.EnsembleLoss`: segmentation per learner, diversity per level) keeps them after each
call; :class:`LossPartsHandler` copies them into the output as flat ``"loss/<part>"`` keys when the trainer fires
``LOSS_COMPLETED``, so every handler reads them where it reads the loss. Flat keys, because the trainer then
decollates the output per sample and repeats each scalar, as it does for ``"loss"``; a nested dict would not
survive that. :func:`loss_parts_from_output` reads them back from a batch dict or a decollated list.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from monai.utils import IgniteInfo, min_version, optional_import

if TYPE_CHECKING:
    from ignite.engine import Engine

    from ..losses.parts import LossWithParts
else:
    Engine, _ = optional_import(
        "ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Engine", as_type="decorator"
    )

__all__ = ["LossPartsHandler", "loss_parts_from_output", "PARTS_PREFIX"]

#: Prefix of the parts' keys in ``engine.state.output``.
PARTS_PREFIX = "loss/"


class LossPartsHandler:
    """Copy ``loss.last_parts`` into ``engine.state.output`` after each loss computation of a MONAI trainer.

    Usage example (bundle config, ``train#handlers``)::

        {"_target_": "qddens_monai.handlers.LossPartsHandler", "loss": "@loss"}

    Then ``engine.state.output["loss/seg/meta"]`` (a detached 0-d tensor before decollation, a float after) is
    there for every handler, e.g. :class:`~qddens_monai.handlers.TrainingCurvesHandler` or
    ``StatsHandler(output_transform=qddens_monai.handlers.loss_parts_from_output)``.

    Args:
        loss: the trainer's loss function, a :class:`~qddens_monai.losses.parts.LossWithParts`.
    """

    def __init__(self, loss: LossWithParts) -> None:
        if not hasattr(loss, "last_parts"):
            raise TypeError(f"LossPartsHandler needs a loss that keeps its parts (last_parts); got {type(loss)}.")
        self.loss = loss

    def attach(self, engine: Engine) -> None:
        from monai.engines.utils import IterationEvents

        engine.add_event_handler(IterationEvents.LOSS_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        output = engine.state.output
        if isinstance(output, dict):
            output.update({PARTS_PREFIX + name: value for name, value in self.loss.last_parts.items()})


def loss_parts_from_output(output: Any) -> dict[str, Any]:
    """The ``"loss/<part>"`` entries of a trainer's output as ``{part: value}``.

    Args:
        output: ``engine.state.output``: a batch dict, or the list of per-sample dicts of a decollating trainer
            (the parts are repeated in each; the first is read).
    """
    if isinstance(output, (list, tuple)) and output and isinstance(output[0], Mapping):
        output = output[0]
    if not isinstance(output, Mapping):
        return {}
    return {k[len(PARTS_PREFIX) :]: v for k, v in output.items() if isinstance(k, str) and k.startswith(PARTS_PREFIX)}
