"""MQAR training-step speed, old vs new in one run, and the selective scan against its memory bound.

Part 1 (issue 17 item 1): per-step time of the reference step (masked positions, a host read per
step) and of the static-shape step (``anybudget.ssm.fast_step``: eager, CUDA graph per segment
shape, with either Triton tile layout), for the Table 2 model (d_model 128, polarize both, depth
2 and 4), batch 128, the reference training mixture (seq 64..1024). Every mode times the same
step indices after warm-up (all shapes compiled / captured first). A fixed-seed run of the
reference and of each fast mode from the same init records the loss curve (mean over every 10
steps) and their largest relative difference.

Part 2: the Triton scan forward+backward at batch 16, d_inner 256, d_state 16 + 2 polarized
(the ``ssm_scan_speed.json`` configuration), seq 4096, both tile layouts, a small tile sweep,
fp32 and bf16 inputs; beside each time the memory-traffic bound: the bytes the forward and
backward must move (u, delta, z, B, C, out; dout, du, ddelta, dz, dB, dC; the tile-start states)
over the datasheet bandwidth and over a measured device-to-device copy. Errors against the
chunked PyTorch scan are recorded.

    python benchmarks/ssm/train_speed.py --out $OUT          # one H100, ~4-6 minutes
    python benchmarks/ssm/train_speed.py --smoke --out /tmp/x  # CPU, seconds, same training code
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
import torch.nn.functional as F

# Datasheet HBM bandwidth (bytes/s) by device-name fragment; the measured copy is recorded too.
PEAK_BW = {"H100 PCIe": 2.0e12, "H100": 3.35e12, "H200": 4.8e12, "A100": 2.0e12}


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def build(layers, d_model, vocab, device, seed=0):
    from anybudget.ssm import LMConfig, MambaConfig, MambaLM

    torch.manual_seed(seed)
    mc = MambaConfig(d_model=d_model, d_state=16, polarize="both")
    return MambaLM(LMConfig(vocab_size=vocab, d_model=d_model, n_layers=layers, mamba=mc)).to(device)


class Runner:
    """The inner loop of ``train.train_mqar`` for one mode, without evaluation."""

    def __init__(self, mode, model, segments, batch, vocab, seed, total=10_000, compile_backend="inductor"):
        from anybudget.ssm.fast_step import FastStep, FastStepConfig
        from anybudget.ssm.mqar import MQARStream
        from anybudget.ssm.train import TrainConfig, _param_groups, cosine_lr

        device = next(model.parameters()).device
        self.mode, self.model, self.total = mode, model, total
        self.cfg = TrainConfig(batch_size=batch, vocab_size=vocab, seed=seed)
        self.lr = lambda s: cosine_lr(self.cfg, s, total)
        self.stream = MQARStream(segments, batch, vocab, seed, device=device)
        groups = _param_groups(model, self.cfg.weight_decay)
        if mode == "reference":
            self.opt = torch.optim.AdamW(groups, lr=self.cfg.lr)
            self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: self.lr(s) / self.cfg.lr)
            self.loss_sum, self.n = 0.0, 0
        else:
            fc = FastStepConfig.from_mode(mode, device)
            fc = FastStepConfig(fc.compile, fc.cuda_graph, compile_backend, bf16=fc.bf16)
            self.fast = FastStep(model, groups, self.cfg.lr, None, fc)

    def step(self, i):
        from anybudget.ssm.train import labeled_logits

        if self.mode != "reference":
            x, pos, val, _ = self.stream.batch_queries(i)
            self.fast.step(x, pos, val, self.lr(i))
            return
        x, y, _ = self.stream.batch(i)
        loss = F.cross_entropy(*labeled_logits(self.model, x, y))
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.loss_sum, self.n = self.loss_sum + loss.detach(), self.n + 1
        self.opt.step()
        self.sched.step()
        if (i + 1) % 20 == 0:
            loss.item()  # the reference loop's progress-bar read

    def take_loss(self):
        if self.mode != "reference":
            s, n = self.fast.take_loss()
            return s / n
        s, n = float(self.loss_sum), self.n
        self.loss_sum, self.n = 0.0, 0
        return s / n


def first_step_of_each_shape(stream, start=10_000, limit=5_000):
    """Step indices (from ``start``) that together cover every segment of the mixture."""
    seen, steps = set(), []
    for i in range(start, start + limit):
        seg = stream.segment(i)
        if seg not in seen:
            seen.add(seg)
            steps.append(i)
        if len(seen) == len(stream.segments):
            break
    return steps


def set_scan(variant, split, tiles, impl="chunked"):
    """Choose the Triton scan: tile layout, polarized channels split out or not, tile sizes, backward kernel."""
    try:
        from anybudget.ssm.scan_triton import ScanBlocks
    except ImportError:  # CPU smoke without triton: the chunked scan runs
        return
    ScanBlocks.variant, ScanBlocks.split_fixed, ScanBlocks.bwd_impl = variant, split, impl
    ScanBlocks.fwd, ScanBlocks.bwd = tiles
    ScanBlocks.bwd_chunked = tiles[1]  # the backward tiles serve whichever backward runs


def time_mode(mode, layers, args, device, segments, variant, split=True, tiles=((4, 32, 4), (4, 32, 4)),
              impl="chunked"):
    set_scan(variant, split, tiles, impl)
    model = build(layers, args.d_model, args.vocab, device)
    r = Runner(mode, model, segments, args.batch, args.vocab, seed=7, compile_backend=args.compile_backend)
    t0 = time.perf_counter()
    for i in first_step_of_each_shape(r.stream):  # compile kernels / capture graphs for every shape
        r.step(i)
    _sync()
    warm = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i in range(args.steps):
        r.step(20_000 + i)
    _sync()
    per = (time.perf_counter() - t0) / args.steps
    return {"mode": mode, "layers": layers, "scan_variant": variant, "split_fixed": split, "tiles": tiles,
            "bwd_impl": impl, "step_s": per, "warmup_s": warm}


def loss_curve(mode, layers, args, device, segments, scan):
    set_scan(*scan)
    r = Runner(mode, build(layers, args.d_model, args.vocab, device, seed=1), segments, args.batch, args.vocab,
               seed=123, total=args.curve_steps, compile_backend=args.compile_backend)
    curve = []
    for i in range(args.curve_steps):
        r.step(i)
        if (i + 1) % 10 == 0:
            curve.append(r.take_loss())
    return curve


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    from anybudget.io import results_dir

    ap.add_argument("--out", default=str(results_dir("ssm_train_speed")))
    ap.add_argument("--smoke", action="store_true", help="CPU, tiny model and mixture, seconds")
    ap.add_argument("--steps", type=int, default=100, help="timed steps per mode (same indices for all)")
    ap.add_argument("--curve-steps", type=int, default=200, help="fixed-seed steps for the loss-curve check")
    ap.add_argument("--depths", default="2,4")
    ap.add_argument("--modes", default="reference,eager,cudagraph",
                    help="comma list from reference, eager, compile, cudagraph, compile+cudagraph")
    ap.add_argument("--skip-scan", action="store_true")
    ap.add_argument("--time-limit", type=float, default=360.0,
                    help="seconds after which remaining step timings are skipped (recorded as skipped)")
    ap.add_argument("--compile-backend", default="inductor", help="torch.compile backend (--smoke: eager)")
    args = ap.parse_args(argv)
    from anybudget.io import write_results
    from anybudget.ssm.mqar import TRAIN_MIXTURE, MQARSegment

    cuda = torch.cuda.is_available() and not args.smoke
    device = "cuda" if cuda else "cpu"
    if args.smoke:
        args.batch, args.d_model, args.vocab = 4, 16, 96
        args.steps, args.curve_steps, args.compile_backend = 3, 20, "eager"
        segments = (MQARSegment(32, 100, 2), MQARSegment(64, 50, 4))
        modes = [m for m in args.modes.split(",") if "cudagraph" not in m]
    else:
        if not cuda:
            print("needs CUDA (or --smoke)", file=sys.stderr)
            return 2
        args.batch, args.d_model, args.vocab = 128, 128, 8192
        segments = TRAIN_MIXTURE
        modes = args.modes.split(",")
    depths = [int(d) for d in args.depths.split(",")]
    metrics: dict = {"steps": [], "loss_curves": {}, "speedup": {}}
    t_start = time.perf_counter()
    # The old path: the reference step, the time_last kernel over all 18 states, its default tiles.
    old = ("time_last", False, ((4, 32, 4), (4, 32, 4)), "sequential")
    new = ("time_last", True, ((4, 32, 4), (4, 32, 4)))
    if cuda and not args.skip_scan:
        metrics["scan"] = scan_part(args)
        if metrics["scan"].get("best_variant"):
            bt = metrics["scan"]["best_tiles"]
            new = (metrics["scan"]["best_variant"], True, (tuple(bt["fwd"]), tuple(bt["bwd"])))
    # Each fast mode with the new scan; the best fast mode also with the old scan (what each part gives).
    plans = [(m, old if m == "reference" else new) for m in modes]
    if cuda:
        plans += [("reference", new), (modes[-1], old), (modes[-1], (new[0], False, new[2])),
                  ("cudagraph+bf16", new)]  # another precision: reported, not the headline
    for layers in depths:
        for mode, scan in plans:
            if time.perf_counter() - t_start > args.time_limit:
                row = {"mode": mode, "layers": layers, "skipped": f"past --time-limit {args.time_limit} s"}
            else:
                try:
                    row = time_mode(mode, layers, args, device, segments, *scan)
                except Exception as e:  # noqa: BLE001 - record and go on: one failing mode must not lose the others
                    row = {"mode": mode, "layers": layers, "scan_variant": scan[0], "split_fixed": scan[1],
                           "error": repr(e)[:300]}
            metrics["steps"].append(row)
            print(row, flush=True)
            if cuda:
                torch.cuda.empty_cache()
        ref = next((r["step_s"] for r in metrics["steps"] if r["layers"] == layers and r["mode"] == "reference"
                    and "step_s" in r and not r["split_fixed"]), None)
        fast = [r for r in metrics["steps"] if r["layers"] == layers and r["mode"] != "reference" and "step_s" in r
                and "bf16" not in r["mode"]]
        if ref and fast:
            best_row = min(fast, key=lambda r: r["step_s"])
            metrics["speedup"][f"L{layers}"] = {
                "reference_s": ref, "best_s": best_row["step_s"],
                "best": f"{best_row['mode']}/{best_row['scan_variant']}/split={best_row['split_fixed']}",
                "speedup": ref / best_row["step_s"]}
    layers = depths[0]
    curves = {"reference": loss_curve("reference", layers, args, device, segments, old)}
    for mode in modes + (["cudagraph+bf16"] if cuda else []):
        if mode == "reference":
            continue
        try:
            curves[mode] = loss_curve(mode, layers, args, device, segments, new)
        except Exception as e:  # noqa: BLE001 - recorded, the run goes on
            curves[mode] = repr(e)[:300]
    metrics["loss_curves"] = {"layers": layers, "every": 10, "curves": curves,
                              "max_rel_diff_vs_reference": {
                                  m: max(abs(a - b) / abs(a) for a, b in zip(curves["reference"], c))
                                  for m, c in curves.items() if m != "reference" and isinstance(c, list)}}
    metrics["wall_s"] = time.perf_counter() - t_start
    config = {"model": f"MambaLM d_model {args.d_model}, d_state 16+2 (polarize both), vocab {args.vocab}",
              "batch": args.batch, "segments": [s.__dict__ for s in segments], "timed_steps": args.steps,
              "timing": "wall clock over the same step indices (after every shape was compiled/captured), "
                        "synchronised at both ends", "depths": depths, "modes": modes,
              "smoke": args.smoke, "device": device}
    path = write_results("ssm_train_speed" + ("_smoke" if args.smoke else ""), config, metrics, out_dir=args.out)
    print("wrote", path)
    try:
        plot_curves(metrics["loss_curves"], f"{args.out}/ssm_train_speed{'_smoke' if args.smoke else ''}_loss.png")
    except Exception as e:  # noqa: BLE001 - the record matters more than the picture
        print("plot failed:", e)
    return 0


def plot_curves(lc, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, c in lc["curves"].items():
        if isinstance(c, list):
            ax.plot([lc["every"] * (i + 1) for i in range(len(c))], c, label=name,
                    linestyle="-" if name == "reference" else "--")
    ax.set_xlabel("step")
    ax.set_ylabel(f"mean training loss over {lc['every']} steps")
    ax.set_title(f"MQAR, depth {lc['layers']}: reference vs fast step (same seed)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def scan_part(args):
    from scan_bound import scan_speed_with_bound

    return scan_speed_with_bound(PEAK_BW)


if __name__ == "__main__":
    sys.exit(main())
