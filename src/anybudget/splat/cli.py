"""``anybudget splat train | compress | decompress | eval``. Heavy imports stay inside the commands."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from anybudget.cli_types import (
    add_dataclass_args,
    budget,
    dataclass_from_args,
    device,
    existing_file,
    fraction,
    nonneg_int,
    positive_int,
    writable_dir,
    writable_file,
)


def register(sub) -> None:
    from anybudget.splat.distill import DistillConfig
    from anybudget.splat.pipeline import LightGaussianConfig
    from anybudget.splat.quantize import QuantizeConfig
    from anybudget.splat.significance import SignificanceConfig
    from anybudget.splat.train import TrainConfig

    sp = sub.add_parser("splat", help="LightGaussian: compress 3DGS scenes to a size budget (train, eval)")
    ssub = sp.add_subparsers(dest="splat_command", metavar="VERB", required=True)

    t = ssub.add_parser("train", help="train a 3DGS scene on a NeRF-synthetic or COLMAP folder")
    t.add_argument("--views", required=True, help="dataset folder (transforms_train.json or sparse/0)")
    t.add_argument("--out", required=True, type=writable_file, help="output .ply")
    t.add_argument("--random-points", type=positive_int, default=100_000,
                   help="random initial points when the folder has no points3D.txt (default 100000)")
    t.add_argument("--checkpoint", default=None, type=writable_file,
                   help="save the training state here every 1000 steps; resume from it (default: OUT's name "
                        "+ .ckpt.safetensors beside it, removed once OUT is written)")
    t.add_argument("--white-background", action="store_true")
    add_dataclass_args(t, TrainConfig, only=("iterations", "densify_until_iter", "seed"), title="3DGS training (TrainConfig)",
                       overrides={"iterations": {"type": positive_int, "help": "steps"},
                                  "densify_until_iter": {"type": nonneg_int, "flag": "--densify-until",
                                                         "help": "last densification step"}})
    _common(t)
    t.set_defaults(func=_train)

    c = ssub.add_parser("compress", help="LightGaussian: prune, distil SH, vector-quantise, write .lgz")
    c.add_argument("scene", type=existing_file, help="input 3DGS .ply")
    c.add_argument("--views", required=True, help="the training views (dataset folder)")
    c.add_argument("--out", required=True, type=writable_file, help="output .lgz")
    c.add_argument("--budget", default=None, type=budget, help="size budget, e.g. size=40MB (default: the paper's ratios)")
    c.add_argument("--no-distill", action="store_true", help="keep the SH degree")
    # the paper's defaults live in the stage configs; one flag per field used here
    add_dataclass_args(c, LightGaussianConfig, only=("prune_ratio", "recovery_iterations"), title="LightGaussian", overrides={
        "prune_ratio": {"type": fraction, "help": "share of Gaussians pruned (a budget may raise it)"},
        "recovery_iterations": {"type": nonneg_int, "help": "fine-tune steps after pruning"}})
    add_dataclass_args(c, SignificanceConfig, only=("score",), title="significance", overrides={
        "score": {"choices": ("lightgaussian", "alpha_t", "opacity_t", "hit_count", "opacity")}})
    add_dataclass_args(c, DistillConfig, "distill-", only=("iterations",), title="SH distillation", overrides={
        "iterations": {"type": nonneg_int, "help": "SH distillation steps"}})
    add_dataclass_args(c, QuantizeConfig, "vq-", only=("codebook_size", "ratio", "iterations"), title="vector quantisation",
                       overrides={"codebook_size": {"type": positive_int, "flag": "--codebook", "help": "VQ codewords"},
                                  "ratio": {"type": fraction, "help": "fraction of Gaussians with VQ colour"},
                                  "iterations": {"type": positive_int, "help": "k-means steps"}})
    c.add_argument("--workdir", default=None, type=writable_dir,
                   help="save each stage here and resume from it (default: OUT's name + .work/ beside it, "
                        "removed once OUT is written)")
    c.add_argument("--white-background", action="store_true")
    _common(c)
    c.set_defaults(func=_compress)

    d = ssub.add_parser("decompress", help="decode a .lgz into a standard 3DGS .ply")
    d.add_argument("scene", type=existing_file, help="input .lgz")
    d.add_argument("--out", required=True, type=writable_file, help="output .ply")
    d.set_defaults(func=_decompress)

    e = ssub.add_parser("eval", help="PSNR, SSIM, size, FPS on held-out views; side-by-side PNG")
    e.add_argument("scenes", nargs="+", type=existing_file, help=".ply or .lgz files")
    e.add_argument("--views", required=True, help="dataset folder")
    e.add_argument("--split", default="test", help="views to score (default test)")
    e.add_argument("--png", default=None, type=writable_file, help="write ground truth | renders side by side here")
    e.add_argument("--out", default=None, type=writable_file, help="write the metrics as JSON here")
    e.add_argument("--white-background", action="store_true")
    e.add_argument("--no-lpips", action="store_true", help="skip LPIPS (computed when the lpips package and its weights load)")
    _common(e)
    e.set_defaults(func=_eval)


def _common(p):
    p.add_argument("--device", default=None, type=device, help="cpu or cuda (default: cuda if available)")
    p.add_argument("--backend", default="auto", choices=("auto", "reference", "gsplat"),
                   help="rasteriser (auto: gsplat on CUDA when installed)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _device(args):
    from anybudget.measure import default_device

    return default_device(args.device)


def _bg(args):
    """--white-background, else the dataset's recorded ``background`` (done.json of
    benchmarks/splat/make_scenes.py), else black (the 3DGS default)."""
    if args.white_background:
        return (1.0, 1.0, 1.0)
    meta = Path(args.views) / "done.json"
    if meta.is_file():
        bg = json.loads(meta.read_text()).get("background")
        if bg is not None:
            return tuple(float(c) for c in bg)
    return (0.0, 0.0, 0.0)


def _load_scene(path):
    from anybudget.splat.codec import load_lgz
    from anybudget.splat.ply import read_ply

    return load_lgz(path).to_scene() if str(path).endswith(".lgz") else read_ply(path)


def _train(args) -> int:
    from anybudget.splat.cameras import load_views
    from anybudget.splat.ply import write_ply
    from anybudget.splat.train import TrainConfig, initial_scene, train

    dev = _device(args)
    cfg = dataclass_from_args(TrainConfig, args, background=_bg(args))
    views = load_views(args.views, "train", background=_bg(args))
    init = initial_scene(args.views, views, args.random_points, seed=cfg.seed).to(dev)
    ckpt = Path(args.checkpoint) if args.checkpoint else _beside(args.out, ".ckpt.safetensors")
    scene = train(init, views, cfg, backend=args.backend, progress=not args.quiet, checkpoint=ckpt)
    size = write_ply(scene, args.out)
    if not args.checkpoint:
        ckpt.unlink(missing_ok=True)  # the default checkpoint served this run only
    print(f"wrote {args.out}: {len(scene)} Gaussians, {size / 1e6:.2f} MB")
    return 0


def _beside(out, suffix: str) -> Path:
    """``OUT``'s folder / ``OUT``'s file name + ``suffix`` (where a default checkpoint goes)."""
    p = Path(out)
    return p.with_name(p.name + suffix)


def _compress(args) -> int:
    from dataclasses import replace

    from anybudget.splat.cameras import load_views
    from anybudget.splat.distill import DistillConfig
    from anybudget.splat.pipeline import LightGaussianConfig, lightgaussian
    from anybudget.splat.quantize import QuantizeConfig
    from anybudget.splat.significance import SignificanceConfig

    dev = _device(args)
    scene = _load_scene(args.scene).to(dev)
    views = load_views(args.views, "train", background=_bg(args))
    cfg = dataclass_from_args(
        LightGaussianConfig, args,
        significance=dataclass_from_args(SignificanceConfig, args),
        distill=None if args.no_distill else dataclass_from_args(DistillConfig, args, "distill_"),
        quantize=dataclass_from_args(QuantizeConfig, args, "vq_"),
        background=_bg(args),
    )
    cfg = replace(cfg, train=replace(cfg.train, background=_bg(args)))
    work = Path(args.workdir) if args.workdir else _beside(args.out, ".work")
    res = lightgaussian(scene, views, budget=args.budget, config=cfg, backend=args.backend,
                        workdir=work, progress=not args.quiet)
    size = res.save(args.out)
    if not args.workdir:
        import shutil

        shutil.rmtree(work, ignore_errors=True)  # the default work folder served this run only
    plan = f" (prune {res.config.prune_ratio:.3f}, VQ {res.config.quantize.ratio})" if res.plan else ""
    print(f"wrote {args.out}: {len(res.quantized)} Gaussians, {size / 1e6:.3f} MB{plan}")
    return 0


def _decompress(args) -> int:
    from anybudget.splat.codec import decompress_to_ply

    size = decompress_to_ply(args.scene, args.out)
    print(f"wrote {args.out}: {size / 1e6:.2f} MB")
    return 0


def _eval(args) -> int:
    from anybudget.io import atomic_write_json, command_record, write_plot
    from anybudget.splat.cameras import load_views
    from anybudget.splat.evaluate import evaluate, lpips_metric, side_by_side_png

    dev = _device(args)
    views = load_views(args.views, args.split, background=_bg(args))
    scenes, rows = {}, {}
    lpips = False if args.no_lpips else lpips_metric(dev)  # loaded once for every scene
    for path in args.scenes:
        s = _load_scene(path).to(dev)
        scenes[Path(path).name] = s
        m = evaluate(s, views, _bg(args), args.backend, lpips=lpips)
        m["size_bytes"] = Path(path).stat().st_size
        rows[Path(path).name] = m
        fps = f"{m['fps']:.1f}" if m["fps"] else "-"
        lp = f" LPIPS {m['lpips']:.4f}" if m.get("lpips") is not None else ""
        print(f"{Path(path).name}: PSNR {m['psnr']:.2f} SSIM {m['ssim']:.4f}{lp} size {m['size_bytes'] / 1e6:.2f} MB "
              f"FPS {fps} ({m['num_gaussians']} Gaussians)", file=sys.stdout)
        if m.get("lpips_unavailable") and len(rows) == 1:
            print(f"LPIPS not computed: {m['lpips_unavailable']}", file=sys.stderr)
    if args.out:  # the numbers first: a failed picture never costs them
        atomic_write_json(args.out, command_record({"scenes": rows}, args))
        print(f"wrote {args.out}")
    elif not args.png:
        print(json.dumps(rows))
    if args.png and write_plot(args.png, lambda p: side_by_side_png(scenes, views, p, background=_bg(args),
                                                                    backend=args.backend)):
        print(f"wrote {args.png}")
    return 0
