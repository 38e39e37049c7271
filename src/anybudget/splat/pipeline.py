"""LightGaussian end to end (Fan et al., NeurIPS 2024, Fig. 2): global significance -> prune 66% and
recover (5k steps) -> distil SH 3 -> 2 with pseudo views (10k steps) -> vector-quantise the colour
of the 60% least significant Gaussians -> a compact ``.lgz`` file.

``lightgaussian(scene, views, budget="size=40MB")`` chooses the ratios for a size budget
(:mod:`anybudget.splat.budget`). With ``workdir`` every stage's output is saved there (``.ply`` and
safetensors) and a rerun resumes after the last finished stage.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from anybudget.io import atomic_path, atomic_write_text, check_checkpoint_config
from anybudget.splat.budget import SizePlan, plan_for_size
from anybudget.splat.cameras import Camera
from anybudget.splat.codec import save_lgz
from anybudget.splat.distill import DistillConfig, distill_sh
from anybudget.splat.ply import read_ply, write_ply
from anybudget.splat.prune import check_ratio, prune
from anybudget.splat.quantize import QuantizeConfig, QuantizedScene, quantize
from anybudget.splat.scene import GaussianScene
from anybudget.splat.significance import SignificanceConfig, significance
from anybudget.splat.train import TrainConfig, finetune

__all__ = ["LightGaussianConfig", "LightGaussianResult", "lightgaussian"]


@dataclass(frozen=True)
class LightGaussianConfig:
    """Args:
        prune_ratio: fraction of Gaussians pruned by global significance (0.66).
        recovery_iterations: fine-tuning steps after pruning (5,000).
        prune_rule: 'paper' (exact count) or 'reference' (threshold, ties removed).
        significance: the score (LightGaussian's opacity x transmittance x volume^0.1).
        distill: SH distillation (degree 2, 10k steps, pseudo views); ``distill=None`` skips it.
        quantize: VQ (codebook 8,192, ratio 0.6, float32 positions).
        train: learning rates etc. of the recovery fine-tune (3DGS defaults).
        background: render background.
    """

    prune_ratio: float = 0.66
    recovery_iterations: int = 5000
    prune_rule: str = "paper"
    significance: SignificanceConfig = field(default_factory=SignificanceConfig)
    distill: DistillConfig | None = field(default_factory=DistillConfig)
    quantize: QuantizeConfig = field(default_factory=QuantizeConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    background: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def __post_init__(self):
        check_ratio(self.prune_ratio, "prune_ratio")


@dataclass
class LightGaussianResult:
    quantized: QuantizedScene
    significance: torch.Tensor  # of the pruned, recovered scene (what VQ used)
    stages: dict[str, GaussianScene]
    config: LightGaussianConfig
    plan: SizePlan | None = None

    @property
    def scene(self) -> GaussianScene:
        """The decoded final scene (what a viewer of the ``.ply`` sees)."""
        return self.quantized.to_scene()

    def save(self, path: str | os.PathLike) -> int:
        return save_lgz(self.quantized, path)


def _stage(workdir, name, make, load, save):
    """Run ``make`` unless ``workdir/name`` exists (then ``load`` it); save what ``make`` made."""
    if workdir is None:
        return make()
    path = Path(workdir) / name
    if path.exists():
        return load(path)
    out = make()
    save(out, path)
    return out


def _save_tensor(t, path):
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file({"significance": t.contiguous()}, str(tmp))


def _load_tensor(path):
    from safetensors.torch import load_file

    return load_file(str(path))["significance"]


def lightgaussian(scene: GaussianScene, views: list[Camera], budget=None,
                  config: LightGaussianConfig = LightGaussianConfig(), backend: str = "auto",
                  workdir: str | os.PathLike | None = None, progress: bool = True,
                  keep_stages: bool = False) -> LightGaussianResult:
    """Compress ``scene`` with LightGaussian using the training ``views`` (with images).

    ``workdir``: each stage is saved there and a rerun resumes after the last finished one; the
    folder's ``config.json`` records the configuration and input, and another one is refused
    (:class:`anybudget.io.CheckpointMismatch` naming the keys) rather than mixed with old stages.
    """
    if not views:
        raise ValueError("views is empty; LightGaussian needs the training cameras and images")
    plan = None
    if budget is not None:
        final_degree = config.distill.degree if config.distill is not None else scene.sh_degree
        plan = plan_for_size(budget, len(scene), final_degree, config.quantize.codebook_size,
                             min_prune=config.prune_ratio)
        config = replace(config, prune_ratio=plan.prune_ratio,
                         quantize=replace(config.quantize, ratio=plan.vq_ratio, position_bits=plan.position_bits))
    if workdir is not None:
        # the stages saved there are only valid for this configuration and this input
        run = {**json.loads(json.dumps(asdict(config), default=str)), "input_gaussians": len(scene),
               "input_sh_degree": scene.sh_degree, "views": len(views)}
        cfg_path = Path(workdir) / "config.json"
        if cfg_path.is_file():
            check_checkpoint_config(workdir, json.loads(cfg_path.read_text(encoding="utf-8")), run, "--workdir",
                                    "use another --workdir, or delete it to start over")
        Path(workdir).mkdir(parents=True, exist_ok=True)
        atomic_write_text(cfg_path, json.dumps(run, indent=2))
    bg = config.background
    stages: dict[str, GaussianScene] = {}

    def pruned():
        score = significance(scene, views, config.significance, bg, progress)
        p = prune(scene, score.to(scene.device), config.prune_ratio, config.prune_rule)
        if config.recovery_iterations:
            p = finetune(p, views, config.recovery_iterations, replace(config.train, background=bg),
                         backend=backend, progress=progress)
        return p

    dev = scene.device
    load_ply = lambda path: read_ply(path).to(dev)
    save_ply = lambda s, path: write_ply(s, path)
    current = _stage(workdir, "pruned.ply", pruned, load_ply, save_ply)
    if keep_stages:
        stages["pruned"] = current
    score = _stage(workdir, "significance.safetensors",
                   lambda: significance(current, views, config.significance, bg, progress),
                   _load_tensor, _save_tensor)
    if config.distill is not None:
        current = _stage(workdir, "distilled.ply",
                         lambda: distill_sh(current, views, config.distill, bg, backend, progress), load_ply, save_ply)
        if keep_stages:
            stages["distilled"] = current
    q = quantize(current, score, config.quantize, progress)
    if keep_stages:
        stages["quantized"] = q.to_scene()
    return LightGaussianResult(q, score, stages, config, plan)
