"""anybudget: make a trained model meet any device budget while keeping its accuracy.

Techniques live in sub-packages (``anybudget.kv``, ``anybudget.ssm``, ``anybudget.nas``, ...);
importing ``anybudget`` itself loads only the budget parser, so it is instant.
"""

from anybudget.budget import Budget, BudgetError, Quantity

__version__ = "0.1.0"
__all__ = ["Budget", "BudgetError", "Quantity", "__version__"]
