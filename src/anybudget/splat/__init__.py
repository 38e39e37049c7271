"""LightGaussian (Fan et al., NeurIPS 2024): compress a 3D Gaussian Splatting scene to a size budget.

    from anybudget.splat import read_ply, load_views, lightgaussian
    result = lightgaussian(read_ply("scene.ply"), load_views("data/garden"), budget="size=40MB")
    result.save("scene.lgz")            # decode_to_ply / `anybudget splat decompress` -> standard .ply

Rendering uses gsplat on CUDA when installed (``pip install 'anybudget[splat]'``) and a tiled
PyTorch reference rasterizer otherwise; everything runs on a CPU for small scenes.
"""

from anybudget.splat.cameras import Camera, load_colmap_text, load_nerf_synthetic, load_views
from anybudget.splat.codec import decode, decompress_to_ply, encode, load_lgz, save_lgz
from anybudget.splat.distill import DistillConfig, distill_sh
from anybudget.splat.pipeline import LightGaussianConfig, LightGaussianResult, lightgaussian
from anybudget.splat.ply import PlyError, read_ply, write_ply
from anybudget.splat.prune import prune, prune_mask
from anybudget.splat.quantize import QuantizeConfig, QuantizedScene, quantize
from anybudget.splat.render import render
from anybudget.splat.scene import GaussianScene
from anybudget.splat.significance import SignificanceConfig, global_significance, significance
from anybudget.splat.train import TrainConfig, finetune, train

__all__ = [
    "Camera", "DistillConfig", "GaussianScene", "LightGaussianConfig", "LightGaussianResult", "PlyError",
    "QuantizeConfig", "QuantizedScene", "SignificanceConfig", "TrainConfig", "decode", "decompress_to_ply",
    "distill_sh", "encode", "finetune", "global_significance", "lightgaussian", "load_colmap_text", "load_lgz",
    "load_nerf_synthetic", "load_views", "prune", "prune_mask", "quantize", "read_ply", "render", "save_lgz",
    "significance", "train", "write_ply",
]
