"""anybudget.prune: lottery tickets in pre-trained transformers (Chen et al., NeurIPS 2020).

    from anybudget.prune import IMPConfig, imp, apply_mask, save_mask
    result = imp(make_model, train_fn, eval_fn, IMPConfig(rounds=9), out_dir="runs/rt")
    apply_mask(model, result.masks[7])          # 70% of the encoder weights pruned

Masks are plain ``{parameter name: bool tensor}`` dicts saved as safetensors; magnitude pruning
is global or layer-wise with the paper's linear schedule (10% of the original weights per round)
or a geometric one; IMP rewinds to the pre-trained weights (or step k) and checkpoints each round;
the controls (random pruning, random re-init, one-shot magnitude, shuffled weights) and the
one-standard-deviation winning criterion live in ``controls``; ``sparse24`` exports 2:4 sparsity.
"""

from anybudget.prune.controls import CONTROLS, control, sparsest_winning, winning
from anybudget.prune.imp import IMPConfig, IMPResult, imp, rewind
from anybudget.prune.magnitude import (
    BERT_PRUNABLE,
    full_mask,
    geometric_sparsity,
    linear_sparsity,
    magnitude_prune,
    prunable_names,
    random_prune,
    schedule,
)
from anybudget.prune.masks import (
    Mask,
    MaskEnforcer,
    apply_mask,
    bake,
    load_mask,
    mask_sparsity,
    save_mask,
    sparsity_report,
)
from anybudget.prune.train import FineTuneConfig, evaluate, finetune

__all__ = [
    "BERT_PRUNABLE",
    "CONTROLS",
    "FineTuneConfig",
    "IMPConfig",
    "IMPResult",
    "Mask",
    "MaskEnforcer",
    "apply_mask",
    "bake",
    "control",
    "evaluate",
    "finetune",
    "full_mask",
    "geometric_sparsity",
    "imp",
    "linear_sparsity",
    "load_mask",
    "magnitude_prune",
    "mask_sparsity",
    "prunable_names",
    "random_prune",
    "rewind",
    "save_mask",
    "schedule",
    "sparsest_winning",
    "sparsity_report",
    "winning",
]
