"""One-line entry point: ``em = make_elastic(model, calib_batches)``."""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn

from anybudget.elastic.importance import activation_importance
from anybudget.elastic.model import ElasticLlama, ElasticSpace
from anybudget.elastic.permute import permute_by_importance

__all__ = ["make_elastic"]


def make_elastic(
    model: nn.Module,
    calib_batches: Iterable,
    space: ElasticSpace | None = None,
    embedding: bool = False,
    depth: bool = False,
    quiet: bool = True,
) -> ElasticLlama:
    """Rank heads and neurons on ``calib_batches``, permute ``model`` in place, wrap it as ElasticLlama.

    The full model's function is unchanged (to float rounding); ``em.importance`` keeps the scores.
    """
    imp = activation_importance(model, calib_batches, embedding=embedding, depth=depth, quiet=quiet)
    permute_by_importance(model, imp)
    em = ElasticLlama(model, space)
    em.importance = imp
    return em
