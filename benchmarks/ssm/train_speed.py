"""MQAR training-step speed, old vs new in one run (and, with ``--with-scan``, the scan against its memory bound).

Part 1 (issue 17 item 1): per-step time of the reference step (masked positions, a host read per
step, the old scan: 18 states in the kernel, sequential backward) and of each static-shape step
variant (``anybudget.ssm.fast_step``), for the Table 2 model (d_model 128, polarize both, depth
2 and 4), batch 128, the reference training mixture (seq 64..1024), all in one process on one GPU:

* ``cudagraph_fp32``: CUDA graph per shape, IEEE float32 matmuls (the earlier 19.6-ms path);
* ``cudagraph``: the same with TF32 matmuls (``FastStepConfig.tf32``, the default);
* ``compile``: torch.compile(fullgraph) of the loss with the scan as a custom op (``scan_op``), TF32;
* ``compile+cudagraph``: that compiled step captured as one CUDA graph per shape;
* ``compile+cudagraph+bf16``: plus bf16 autocast of the forward (not the reference's precision);
* ``compile+cudagraph+tf`` / ``+tf16``: compile+cudagraph with the time-major scan tiles (``time_first``):
  forward (8, 32, 8) and chunked backward (8, 16, 4), the tiles of ``ssm_step_profile.json``'s eager
  step (its scan kernels took 5.5 ms against 8.5 ms for the time_last ones at depth 2, H200); ``tf16``:
  forward (8, 16, 4) too, so the backward reuses the forward's states instead of rebuilding them.
* ``+tf16+...``: tf16 with one change (``SCAN_EXTRAS``; the scan kernels' bounds at this step are in
  ``scan_triton_bwd``'s docstring): ``adj32`` the adjoint kernel on 32-channel blocks, ``split`` up to
  8 programs per chunk for the grads kernel at short sequences, ``tuned`` triton.autotune of the adjoint and
  grads tiles per shape (in the warm-up), ``prefetch`` the grads kernel loading the next channel block
  before the current one's arithmetic, ``fwdpf`` the forward loading the next tile before the current
  one's arithmetic, ``tuned+prefetch`` all three, ``reg168`` the grads kernel capped at 168 registers
  (3 programs an SM instead of 2) and the forward at 80 (6 instead of 5), with adj32; ``ndtile`` / ``cdt`` inductor's ``triton.prefer_nd_tiling`` /
  ``coordinate_descent_tuning`` for the ~250 kernels around the scan (``FastStepConfig.compile_options``,
  a compile of its own: ~70 s of warm-up), ``combo`` inductor's ``combo_kernels`` (independent small
  kernels launched as one), ``static`` one compile per shape (11 compiles: minutes, time it alone);
  ``fast`` = tuned + fwdpf + ndtile + cdt (no grads prefetch: it adds registers, and spills under the
  tuned configs' register caps, ``ssm_scan_regs.json``); ``bwdtm`` the backward's adjoint and grads kernels on
  time-major tiles (``ScanBlocks.bwd_tm``: scans and sums over a chunk in registers; at sm_90 the grads kernel has
  ~25% fewer instructions and ~1/3 fewer lane exchanges a channel block, the adjoint 1/9 of the exchanges),
  ``tuned+bwdtm`` autotune choosing per shape among both layouts' configs, ``bwdtm42`` the time-major kernels at
  the tiles with the fewest instructions a channel at sm_90 (``ssm_scan_regs.json``): grads (4 channels, 2 warps)
  capped at 200 registers (5 programs an SM, no spills), adjoint (16, 4).
  ``bwdtm+cdt`` / ``+ndtile`` / ``+static`` / ``+fast``: bwdtm with the inductor options above (``fast``: both
  options and the forward's prefetch), the ~250 kernels around the scan being about half of the bwdtm step.
  ``bwdtm+fwdchunk``: bwdtm with the chunk-parallel forward (``ScanBlocks.fwd_chunk`` = 256,
  ``scan_triton_fwdchunk``): the mixture's buckets up to seq 256 run as one chunk (the same kernel work as
  bwdtm), 512 and 1024 as 2 and 4 chunks, so only the long buckets pay its extra traffic (~9 B a (token,
  channel)); at batch 128 the whole-sequence forward already has 4096 programs (~6 waves on an H100), so this
  tells whether shorter serial chains still pay there, while its case is batch 16 (``scan_bwd_speed``'s rows).
  ``bwdgl`` / ``bwdgl42``: bwdtm with the grads kernel in Gluon (``ScanBlocks.bwd_gluon``, ``scan_gluon_bwd``:
  layouts stated, 68 lane exchanges at sm_90 against 506, Triton 3.6) at (8, 16, 4) / (4, 16, 2);
  ``bwdgl42r200`` (4, 16, 2) capped at 200 registers (5 programs an SM, no spills at sm_90, Triton 3.6),
  ``bwdgl+reg168`` (8, 16, 4) capped at 168 (3 programs, 56 bytes of spills; the fastest backward at seq >= 128 in
  ``ssm_grads_gluon.json``).
  ``+fold``: the polarized channels, D and z inside the scan's kernels (``ScanBlocks.fold_fixed``) instead of
  the closed form's PyTorch ops around them: ``bwdgl+reg168+fold`` and ``bwdtm+fold``; ``+pf``: and the
  forward's next-tile prefetch (``fwd_prefetch``); ``+async``: and the Gluon grads kernel's next-block reads as
  cp.async copies into shared memory (``bwd_prefetch = "async"``): the fastest preset since session 24.

Every variant times the same step indices after warm-up (all shapes compiled / captured first),
then profiles a few steps: kernels per step (inside a CUDA graph too) and their summed GPU time. A
fixed-seed run of the reference and of the fast variants from the same init records the loss curve
(mean over every 10 steps) and their largest relative difference.

Part 2 (``--with-scan``): the Triton scan forward+backward at batch 16, d_inner 256, seq 4096 beside
its memory-traffic bound (``scan_bound``).

    python benchmarks/ssm/train_speed.py --out $OUT          # one H100/H200, ~6-8 minutes (--time-limit 300)
    python benchmarks/ssm/train_speed.py --smoke --out /tmp/x  # CPU, seconds, same training code
"""

from __future__ import annotations

import argparse
import dataclasses
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


# name -> (FastStep mode or "reference", FastStepConfig overrides, scan: OLD or NEW)
OLD, NEW = "old", "new"
VARIANTS = {
    "reference": ("reference", {}, OLD),
    "eager": ("eager", {}, NEW),
    "cudagraph_fp32": ("cudagraph", {"tf32": False}, NEW),
    "cudagraph": ("cudagraph", {}, NEW),
    "compile": ("compile", {}, NEW),
    "compile+cudagraph": ("compile+cudagraph", {}, NEW),
    "compile+cudagraph+bf16": ("compile+cudagraph+bf16", {}, NEW),
    "compile+cudagraph+autotune": ("compile+cudagraph", {"compile_mode": "max-autotune-no-cudagraphs"}, NEW),
    "compile+cudagraph+tf": ("compile+cudagraph", {}, "new_tf"),
    "compile+cudagraph+tf16": ("compile+cudagraph", {}, "new_tf16"),
    # Scan backward tuning on top of tf16 (SCAN_EXTRAS) and inductor options for the ~250 kernels around it.
    "compile+cudagraph+tf16+adj32": ("compile+cudagraph", {}, "new_tf16_adj32"),
    "compile+cudagraph+tf16+split": ("compile+cudagraph", {}, "new_tf16_split"),
    "compile+cudagraph+tf16+tuned": ("compile+cudagraph", {}, "new_tf16_tuned"),
    "compile+cudagraph+tf16+ndtile": ("compile+cudagraph", {"compile_options": (("triton.prefer_nd_tiling", True),)},
                                      "new_tf16"),
    "compile+cudagraph+tf16+cdt": ("compile+cudagraph", {"compile_options": (("coordinate_descent_tuning", True),)},
                                   "new_tf16"),
    "compile+cudagraph+tf16+combo": ("compile+cudagraph", {"compile_options": (("combo_kernels", True),)}, "new_tf16"),
    "compile+cudagraph+tf16+static": ("compile+cudagraph", {"compile_dynamic": False}, "new_tf16"),
    "compile+cudagraph+tf16+prefetch": ("compile+cudagraph", {}, "new_tf16_prefetch"),
    "compile+cudagraph+tf16+fwdpf": ("compile+cudagraph", {}, "new_tf16_fwdpf"),
    "compile+cudagraph+tf16+reg168": ("compile+cudagraph", {}, "new_tf16_reg168"),
    "compile+cudagraph+tf16+tuned+prefetch": ("compile+cudagraph", {}, "new_tf16_tuned_prefetch"),
    "compile+cudagraph+tf16+bwdtm": ("compile+cudagraph", {}, "new_tf16_bwdtm"),
    "compile+cudagraph+tf16+tuned+bwdtm": ("compile+cudagraph", {}, "new_tf16_tuned_bwdtm"),
    "compile+cudagraph+tf16+bwdtm42": ("compile+cudagraph", {}, "new_tf16_bwdtm42"),
    # The time-major backward with the inductor options (never timed with the default backward either).
    "compile+cudagraph+tf16+bwdtm+cdt": ("compile+cudagraph", {"compile_options": (("coordinate_descent_tuning", True),)},
                                         "new_tf16_bwdtm"),
    "compile+cudagraph+tf16+bwdtm+ndtile": ("compile+cudagraph",
                                            {"compile_options": (("triton.prefer_nd_tiling", True),)}, "new_tf16_bwdtm"),
    "compile+cudagraph+tf16+bwdtm+static": ("compile+cudagraph", {"compile_dynamic": False}, "new_tf16_bwdtm"),
    "compile+cudagraph+tf16+bwdtm+fast": ("compile+cudagraph", {"compile_options": (("triton.prefer_nd_tiling", True),
                                                                                    ("coordinate_descent_tuning", True))},
                                          "new_tf16_bwdtm_fwdpf"),
    "compile+cudagraph+tf16+bwdtm+fwdchunk": ("compile+cudagraph", {}, "new_tf16_bwdtm_fwdchunk"),
    # The Gluon grads kernel (ScanBlocks.bwd_gluon) after the time-major adjoint, at (8, 16, 4) and (4, 16, 2).
    "compile+cudagraph+tf16+bwdgl": ("compile+cudagraph", {}, "new_tf16_bwdgl"),
    "compile+cudagraph+tf16+bwdgl42": ("compile+cudagraph", {}, "new_tf16_bwdgl42"),
    "compile+cudagraph+tf16+bwdgl42r200": ("compile+cudagraph", {}, "new_tf16_bwdgl42r200"),
    "compile+cudagraph+tf16+bwdgl+reg168": ("compile+cudagraph", {}, "new_tf16_bwdgl_reg168"),
    "compile+cudagraph+tf16+bwdgl+reg168+fold": ("compile+cudagraph", {}, "new_tf16_bwdgl_reg168_fold"),
    "compile+cudagraph+tf16+bwdtm+fold": ("compile+cudagraph", {}, "new_tf16_bwdtm_fold"),
    "compile+cudagraph+tf16+bwdgl+reg168+fold+pf": ("compile+cudagraph", {}, "new_tf16_bwdgl_reg168_fold_pf"),
    "compile+cudagraph+tf16+bwdgl+reg168+fold+pf+async": ("compile+cudagraph", {},
                                                          "new_tf16_bwdgl_reg168_fold_pf_async"),
    "compile+cudagraph+tf16+fast": ("compile+cudagraph", {"compile_options": (("triton.prefer_nd_tiling", True),
                                                                              ("coordinate_descent_tuning", True))},
                                    "new_tf16_tuned_fwdpf"),
}
# The old path: the time_last kernel over all 18 states, sequential backward; the new: polarized
# channels in closed form, chunked backward.
SCANS = {OLD: ("time_last", False, ((4, 32, 4), (4, 32, 4)), "sequential"),
         NEW: ("time_last", True, ((4, 32, 4), (4, 32, 4)), "chunked"),
         "new_tf": ("time_first", True, ((8, 32, 8), (8, 16, 4)), "chunked"),
         "new_tf16": ("time_first", True, ((8, 16, 4), (8, 16, 4)), "chunked"),
         "new_tf16_adj32": ("time_first", True, ((8, 16, 4), (8, 16, 4)), "chunked"),
         "new_tf16_split": ("time_first", True, ((8, 16, 4), (8, 16, 4)), "chunked"),
         "new_tf16_tuned": ("time_first", True, ((8, 16, 4), (8, 16, 4)), "chunked"),
         "new_tf16_prefetch": ("time_first", True, ((8, 16, 4), (8, 16, 4)), "chunked"),
         "new_tf16_fwdpf": ("time_first", True, ((8, 16, 4), (8, 16, 4)), "chunked"),
         "new_tf16_reg168": ("time_first", True, ((8, 16, 4), (8, 16, 4)), "chunked"),
         "new_tf16_tuned_prefetch": ("time_first", True, ((8, 16, 4), (8, 16, 4)), "chunked"),
         "new_tf16_tuned_fwdpf": ("time_first", True, ((8, 16, 4), (8, 16, 4)), "chunked"),
         "new_tf16_bwdtm": ("time_first", True, ((8, 16, 4), (8, 16, 4)), "chunked"),
         "new_tf16_tuned_bwdtm": ("time_first", True, ((8, 16, 4), (8, 16, 4)), "chunked"),
         "new_tf16_bwdtm42": ("time_first", True, ((8, 16, 4), (4, 16, 2)), "chunked"),
         "new_tf16_bwdtm_fwdpf": ("time_first", True, ((8, 16, 4), (8, 16, 4)), "chunked"),
         "new_tf16_bwdtm_fwdchunk": ("time_first", True, ((8, 16, 4), (8, 16, 4)), "chunked"),
         "new_tf16_bwdgl": ("time_first", True, ((8, 16, 4), (8, 16, 4)), "chunked"),
         "new_tf16_bwdgl42": ("time_first", True, ((8, 16, 4), (4, 16, 2)), "chunked"),
         "new_tf16_bwdgl42r200": ("time_first", True, ((8, 16, 4), (4, 16, 2)), "chunked"),
         "new_tf16_bwdgl_reg168": ("time_first", True, ((8, 16, 4), (8, 16, 4)), "chunked"),
         "new_tf16_bwdgl_reg168_fold": ("time_first", True, ((8, 16, 4), (8, 16, 4)), "chunked"),
         "new_tf16_bwdtm_fold": ("time_first", True, ((8, 16, 4), (8, 16, 4)), "chunked"),
         "new_tf16_bwdgl_reg168_fold_pf": ("time_first", True, ((8, 16, 4), (8, 16, 4)), "chunked"),
         "new_tf16_bwdgl_reg168_fold_pf_async": ("time_first", True, ((8, 16, 4), (8, 16, 4)), "chunked")}
# ScanBlocks settings beyond SCANS' (defaults for scans not named): the adjoint kernel's own (BLOCK_D, warps)
# (programs of 16 x 32 x 16 on 8 warps, 64 registers a thread, instead of 16 x 8 x 16 on 4); 4096 programs aimed at (the grads kernel's channel
# blocks split over up to 8 programs at short sequences); triton.autotune of the adjoint and grads tiles;
# the grads kernel's next-block prefetch; the time_first forward's next-tile prefetch; the grads kernel's
# registers capped at 168 (3 programs an SM instead of 2, no spills at sm_90: ssm_scan_regs.json), the
# forward's at 80 (6 instead of 5); the time-major grads kernel (alone, or among the tuned configs); the
# chunk-parallel forward's chunk.
SCAN_DEFAULTS = {"bwd_adjoint": None, "bwd_programs": 512, "bwd_autotune": False, "bwd_prefetch": False,
                 "fwd_prefetch": False, "bwd_maxnreg": None, "fwd_maxnreg": None, "bwd_tm": False, "fwd_chunk": None,
                 "bwd_gluon": False, "fold_fixed": False}
SCAN_EXTRAS = {"new_tf16_adj32": {"bwd_adjoint": (32, 8)},
               "new_tf16_split": {"bwd_programs": 4096},
               "new_tf16_tuned": {"bwd_autotune": True},
               "new_tf16_prefetch": {"bwd_prefetch": True},
               "new_tf16_fwdpf": {"fwd_prefetch": True},
               "new_tf16_reg168": {"bwd_maxnreg": 168, "bwd_adjoint": (32, 8), "fwd_maxnreg": 80},
               "new_tf16_tuned_prefetch": {"bwd_autotune": True, "bwd_prefetch": True, "fwd_prefetch": True},
               "new_tf16_tuned_fwdpf": {"bwd_autotune": True, "fwd_prefetch": True},
               "new_tf16_bwdtm": {"bwd_tm": True},
               "new_tf16_tuned_bwdtm": {"bwd_autotune": True, "bwd_tm": True},
               "new_tf16_bwdtm42": {"bwd_tm": True, "bwd_maxnreg": 200, "bwd_adjoint": (16, 4)},
               "new_tf16_bwdtm_fwdpf": {"bwd_tm": True, "fwd_prefetch": True},
               "new_tf16_bwdtm_fwdchunk": {"bwd_tm": True, "fwd_chunk": 256},
               "new_tf16_bwdgl": {"bwd_tm": True, "bwd_gluon": True},
               "new_tf16_bwdgl42": {"bwd_tm": True, "bwd_gluon": True, "bwd_adjoint": (8, 4)},
               "new_tf16_bwdgl42r200": {"bwd_tm": True, "bwd_gluon": True, "bwd_adjoint": (8, 4), "bwd_maxnreg": 200},
               "new_tf16_bwdgl_reg168": {"bwd_tm": True, "bwd_gluon": True, "bwd_maxnreg": 168},
               "new_tf16_bwdgl_reg168_fold": {"bwd_tm": True, "bwd_gluon": True, "bwd_maxnreg": 168,
                                              "fold_fixed": True},
               "new_tf16_bwdtm_fold": {"bwd_tm": True, "fold_fixed": True},
               "new_tf16_bwdgl_reg168_fold_pf": {"bwd_tm": True, "bwd_gluon": True, "bwd_maxnreg": 168,
                                                 "fold_fixed": True, "fwd_prefetch": True},
               "new_tf16_bwdgl_reg168_fold_pf_async": {"bwd_tm": True, "bwd_gluon": True, "bwd_maxnreg": 168,
                                                       "fold_fixed": True, "fwd_prefetch": True,
                                                       "bwd_prefetch": "async"}}
TOP_KERNELS = 12  # kernels per row of the record, by GPU time
# Timed at every depth before the rest (a --time-limit cut loses the rest first).
FIRST = ("reference", "compile+cudagraph", "compile+cudagraph+tf", "compile+cudagraph+tf16", "cudagraph_fp32")
GPU_DEFAULT = ("reference,cudagraph_fp32,cudagraph,compile,compile+cudagraph,compile+cudagraph+tf,"
               "compile+cudagraph+tf16,compile+cudagraph+bf16")


class Runner:
    """The inner loop of ``train.train_mqar`` for one variant (``VARIANTS``), without evaluation."""

    def __init__(self, variant, model, segments, batch, vocab, seed, total=10_000, compile_backend="inductor"):
        from anybudget.ssm.fast_step import FastStep, FastStepConfig
        from anybudget.ssm.mqar import MQARStream
        from anybudget.ssm.train import TrainConfig, _param_groups, cosine_lr

        mode, extra, _ = VARIANTS.get(variant, (variant, {}, NEW))
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
            fc = dataclasses.replace(fc, compile_backend=compile_backend, **extra)
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


def set_scan(variant, split, tiles, impl="chunked", extras=None):
    """Choose the Triton scan: tile layout, polarized channels split out or not, tile sizes, backward kernel;
    ``extras``: further ``ScanBlocks`` settings (``SCAN_DEFAULTS`` for the rest)."""
    try:
        from anybudget.ssm.scan_triton import ScanBlocks
    except ImportError:  # CPU smoke without triton: the chunked scan runs
        return
    ScanBlocks.variant, ScanBlocks.split_fixed, ScanBlocks.bwd_impl = variant, split, impl
    ScanBlocks.fwd, ScanBlocks.bwd = tiles
    ScanBlocks.bwd_chunked = tiles[1]  # the backward tiles serve whichever backward runs
    for k, v in {**SCAN_DEFAULTS, **(extras or {})}.items():
        setattr(ScanBlocks, k, v)
    import torch

    # Compiled graphs bake in what ScanBlocks said when they were traced (the forward's tile, split or folded
    # polarized channels) and dynamo does not guard on it: a variant after another would replay the other's graph.
    torch._dynamo.reset()


def set_named_scan(name):
    """``set_scan`` for a ``SCANS`` entry and its ``SCAN_EXTRAS``."""
    set_scan(*SCANS[name], extras=SCAN_EXTRAS.get(name))


def _warm_and_time(r, args, profile_steps=0):
    """Run every shape once (compile / capture), then time ``args.steps`` steps; optionally profile a few."""
    t0 = time.perf_counter()
    for i in first_step_of_each_shape(r.stream):  # compile kernels / capture graphs for every shape
        r.step(i)
    _sync()
    row = {"warmup_s": time.perf_counter() - t0}
    t0 = time.perf_counter()
    for i in range(args.steps):
        r.step(20_000 + i)
    _sync()
    row["step_s"] = (time.perf_counter() - t0) / args.steps
    if profile_steps:
        from anybudget.measure import kernel_times

        it = iter(range(30_000, 30_000 + profile_steps))
        top, kernel_us, count = kernel_times(lambda: r.step(next(it)), steps=profile_steps, top=TOP_KERNELS)
        row.update(kernels_per_step=count, kernel_ms_per_step=kernel_us / 1e3,
                   top_kernels=[{"kernel": k["kernel"][:80], "calls_per_step": k["calls_per_step"],
                                 "us_per_step": round(k["us_per_step"], 1)} for k in top])
    return row


def time_variant(name, layers, args, device, segments, profile_steps=3):
    """One ``VARIANTS`` entry at one depth: warm-up, timing, kernels per step (one record row)."""
    scan = SCANS[VARIANTS[name][2]]
    set_named_scan(VARIANTS[name][2])
    r = Runner(name, build(layers, args.d_model, args.vocab, device), segments, args.batch, args.vocab, seed=7,
               compile_backend=args.compile_backend)
    return {"variant": name, "mode": VARIANTS[name][0], "layers": layers, "scan": VARIANTS[name][2],
            "scan_variant": scan[0], "split_fixed": scan[1], "bwd_impl": scan[3],
            "scan_extras": SCAN_EXTRAS.get(VARIANTS[name][2], {}),
            **_warm_and_time(r, args, profile_steps)}


def time_mode(mode, layers, args, device, segments, variant, split=True, tiles=((4, 32, 4), (4, 32, 4)),
              impl="chunked"):
    """A FastStep mode (or "reference") with an explicit scan setting (``scan_bwd_speed.py`` uses it)."""
    set_scan(variant, split, tiles, impl)
    r = Runner(mode, build(layers, args.d_model, args.vocab, device), segments, args.batch, args.vocab, seed=7,
               compile_backend=args.compile_backend)
    return {"mode": mode, "layers": layers, "scan_variant": variant, "split_fixed": split, "tiles": tiles,
            "bwd_impl": impl, **_warm_and_time(r, args)}


def loss_curve(name, layers, args, device, segments):
    set_named_scan(VARIANTS[name][2])
    r = Runner(name, build(layers, args.d_model, args.vocab, device, seed=1), segments, args.batch, args.vocab,
               seed=123, total=args.curve_steps, compile_backend=args.compile_backend)
    curve = []
    for i in range(args.curve_steps):
        r.step(i)
        if (i + 1) % 10 == 0:
            curve.append(r.take_loss())
    return curve


def _plan(variants, depths):
    """(variant, depth) in run order: the headline variants at every depth first, then the rest."""
    first = [(v, d) for d in depths for v in variants if v in FIRST]
    return first + [(v, d) for d in depths for v in variants if v not in FIRST]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    from anybudget.io import results_dir

    ap.add_argument("--out", default=str(results_dir("ssm_train_speed")))
    ap.add_argument("--smoke", action="store_true", help="CPU, tiny model and mixture, seconds")
    ap.add_argument("--steps", type=int, default=100, help="timed steps per variant (same indices for all)")
    ap.add_argument("--curve-steps", type=int, default=200, help="fixed-seed steps for the loss-curve check")
    ap.add_argument("--depths", default="2,4")
    ap.add_argument("--modes", default=None, help=f"comma list of {', '.join(VARIANTS)} "
                    f"(default on GPU: {GPU_DEFAULT}; --smoke: reference,eager)")
    ap.add_argument("--curve-modes", default="compile+cudagraph,cudagraph_fp32",
                    help="fast variants whose fixed-seed loss curve is compared with the reference")
    ap.add_argument("--with-scan", action="store_true", help="also time the scan against its memory bound")
    ap.add_argument("--time-limit", type=float, default=300.0,
                    help="seconds after which remaining step timings are skipped (recorded as skipped)")
    ap.add_argument("--compile-backend", default="inductor", help="torch.compile backend (--smoke: aot_eager)")
    args = ap.parse_args(argv)
    from anybudget.io import write_results
    from anybudget.ssm.mqar import TRAIN_MIXTURE, MQARSegment

    cuda = torch.cuda.is_available() and not args.smoke
    device = "cuda" if cuda else "cpu"
    modes = (args.modes or (GPU_DEFAULT if cuda else "reference,eager")).split(",")
    bad = [m for m in modes if m not in VARIANTS]
    if bad or "reference" not in modes:
        ap.error(f"--modes {args.modes!r}: needs 'reference' and names from {', '.join(VARIANTS)} (unknown: {bad})")
    curve_modes = [m for m in args.curve_modes.split(",") if m in modes]
    if args.smoke:
        args.batch, args.d_model, args.vocab = 4, 16, 96
        args.steps, args.curve_steps = 3, 20
        args.compile_backend = "aot_eager" if args.compile_backend == "inductor" else args.compile_backend
        segments = (MQARSegment(32, 100, 2), MQARSegment(64, 50, 4))
        modes = [m for m in modes if "cudagraph" not in VARIANTS[m][0]]
        curve_modes = [m for m in modes if m != "reference"]
    else:
        if not cuda:
            print("needs CUDA (or --smoke)", file=sys.stderr)
            return 2
        args.batch, args.d_model, args.vocab = 128, 128, 8192
        segments = TRAIN_MIXTURE
    depths = [int(d) for d in args.depths.split(",")]
    # Every variant compiles the same function (static_mqar_loss) anew: depths x precisions x modes
    # can pass dynamo's default of 8 cached graphs per function, after which fullgraph raises.
    torch._dynamo.config.recompile_limit = max(64, torch._dynamo.config.recompile_limit)
    metrics: dict = {"steps": [], "loss_curves": {}, "speedup": {}}
    config = {"model": f"MambaLM d_model {args.d_model}, d_state 16+2 (polarize both), vocab {args.vocab}",
              "batch": args.batch, "segments": [s.__dict__ for s in segments], "timed_steps": args.steps,
              "timing": "wall clock over the same step indices (after every shape was compiled/captured), "
                        f"synchronised at both ends; kernels: torch.profiler over 3 further steps (top {TOP_KERNELS})",
              "variants": {m: {"mode": VARIANTS[m][0], **VARIANTS[m][1], "scan": SCANS[VARIANTS[m][2]],
                               "scan_extras": SCAN_EXTRAS.get(VARIANTS[m][2], {})} for m in modes},
              "depths": depths, "compile_backend": args.compile_backend, "smoke": args.smoke, "device": device,
              "time_limit_s": args.time_limit}
    rec_name = "ssm_train_speed" + ("_smoke" if args.smoke else "")
    t_start = time.perf_counter()
    for name, layers in _plan(modes, depths):
        if time.perf_counter() - t_start > args.time_limit:
            row = {"variant": name, "layers": layers, "skipped": f"past --time-limit {args.time_limit} s"}
        else:
            try:
                row = time_variant(name, layers, args, device, segments)
            except Exception as e:  # noqa: BLE001 - record and go on: one failing variant must not lose the others
                row = {"variant": name, "layers": layers, "error": repr(e)[:400]}
        metrics["steps"].append(row)
        print({k: v for k, v in row.items() if k != "top_kernels"}, flush=True)
        # Rewritten after every row: a call cut by its timeout keeps the rows done (metrics.complete False).
        write_results(rec_name, config, {"steps": metrics["steps"], "complete": False}, out_dir=args.out)
        if cuda:
            torch.cuda.empty_cache()
    for layers in depths:
        rows = {r["variant"]: r for r in metrics["steps"] if r["layers"] == layers and "step_s" in r}
        if "reference" not in rows:
            continue
        ref = rows["reference"]["step_s"]
        fast = {n: r for n, r in rows.items() if n != "reference" and "bf16" not in n}
        best = min(fast, key=lambda n: fast[n]["step_s"]) if fast else None
        metrics["speedup"][f"L{layers}"] = {
            "reference_s": ref, "per_variant": {n: ref / r["step_s"] for n, r in rows.items() if n != "reference"},
            "best": best, "best_s": fast[best]["step_s"] if best else None,
            "speedup": ref / fast[best]["step_s"] if best else None}
    layers = depths[0]
    curves = {"reference": loss_curve("reference", layers, args, device, segments)}
    for name in curve_modes:
        try:
            curves[name] = loss_curve(name, layers, args, device, segments)
        except Exception as e:  # noqa: BLE001 - recorded, the run goes on
            curves[name] = repr(e)[:300]
    metrics["loss_curves"] = {"layers": layers, "every": 10, "curves": curves,
                              "max_rel_diff_vs_reference": {
                                  m: max(abs(a - b) / abs(a) for a, b in zip(curves["reference"], c))
                                  for m, c in curves.items() if m != "reference" and isinstance(c, list)}}
    if cuda and args.with_scan:
        metrics["scan"] = scan_part(args)
    metrics["wall_s"] = time.perf_counter() - t_start
    metrics["complete"] = True
    path = write_results(rec_name, config, metrics, out_dir=args.out)
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
