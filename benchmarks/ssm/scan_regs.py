"""Registers and spills of the scan kernels at the MQAR step's tiles, compiled for an H100 (sm_90) on the CPU.

No GPU needed: ``triton.compile`` builds the cubin for ``GPUTarget("cuda", 90, 32)`` and the wheel's
``cuobjdump -res-usage`` reads its registers per thread and stack (spill) bytes. Registers bound how
many programs an SM holds (65536 / (regs x 32 x warps)), the occupancy that hides the latency the
chunked backward is bound by (``scan_triton_bwd``'s docstring), and the static SASS counts of lane exchanges
(SHFL), shared-memory traffic and barriers, which share one issue pipe. Kernels: the grads kernel over
``GRADS_CONFIGS`` (with their register caps, ``maxnreg``) with and without ``PREFETCH``, the time-major grads
kernel over ``scan_triton_bwd_tm.GRADS_TM_CONFIGS`` (and folded, with and without ``EVEN``), the Gluon grads kernel
(``scan_gluon_bwd``; also with the polarized channels folded in, ``ScanBlocks.fold_fixed``, with and without
``EVEN``: no masks), the adjoint (both
layouts) over ``ADJOINT_CONFIGS``, the time_first forward at (8, 16, 4) with and without ``PREFETCH`` (and folded,
with and without ``EVEN``, beside the folded adjoint), the chunk-parallel forward's two kernels
(``scan_triton_fwdchunk``, chunk 256); fp32, 16 states, chunk 16, every optional input.

    python benchmarks/ssm/scan_regs.py --out /tmp/x             # ~2 minutes on 2 CPU cores
    python benchmarks/ssm/scan_regs.py --smoke --out /tmp/x     # grads (prefetch, time-major, Gluon), adjoint (both)
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

SM_REGS = 65536  # registers per SM (H100)


def _with_defaults(fn, consts):
    """``consts`` plus every constexpr parameter it leaves out at its default (a flag such as ``EVEN`` or ``ONE``
    would otherwise be compiled as a run-time integer)."""
    out = dict(consts)
    for p in fn.params:
        if p.is_constexpr and p.has_default and p.name not in out:
            out[p.name] = p.default
    return out


def _signature(fn, consts):
    return {n: "constexpr" if n in consts else ("*fp32" if n.endswith("_ptr") else "i32") for n in fn.arg_names}


SASS_OPS = ("SHFL", "LDS", "STS", "BAR", "MUFU")  # lane exchanges, shared memory, barriers, exps (one MIO pipe)


def resource_usage(fn, consts, warps, maxnreg=None):
    """``{"regs", "stack_bytes", "programs_per_sm", "sass"}`` of ``fn`` compiled for sm_90 with ``consts``;
    ``sass``: the cubin's instruction count and its count of each of :data:`SASS_OPS` (static, the whole kernel)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    if getattr(fn, "is_gluon", lambda: False)():  # a Gluon kernel (scan_gluon_bwd): its own front end
        from triton.experimental.gluon._runtime import GluonASTSource as ASTSource
    consts = _with_defaults(fn, consts)
    src = ASTSource(fn=fn, signature=_signature(fn, consts), constexprs=consts)
    k = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": warps, "maxnreg": maxnreg})
    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "k.cubin")
        Path(path).write_bytes(k.asm["cubin"])
        out = subprocess.run([str(tool), "-res-usage", path], capture_output=True, text=True, check=True).stdout
        sass = subprocess.run([str(tool), "-sass", path], capture_output=True, text=True, check=True).stdout
    m = re.search(r"REG:(\d+) STACK:(\d+)", out)
    if m is None:
        raise RuntimeError(f"cuobjdump -res-usage gave no REG/STACK line: {out[-300:]!r}")
    regs, stack = int(m.group(1)), int(m.group(2))
    ops = re.findall(r"/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z0-9]+)", sass)
    counts = {"instructions": len(ops), **{op: sum(o == op for o in ops) for op in SASS_OPS}}
    return {"regs": regs, "stack_bytes": stack, "programs_per_sm": SM_REGS // (regs * 32 * warps), "sass": counts}


def rows(smoke=False):
    from anybudget.ssm import scan_triton_bwd as sb
    from anybudget.ssm import scan_triton_bwd_tm as sbt
    from anybudget.ssm import scan_triton_tm as tm

    flags = {"HAS_Z": True, "HAS_BIAS": True, "SOFTPLUS": True}
    out = []
    grads = sb.GRADS_CONFIGS[:1] if smoke else sb.GRADS_CONFIGS
    for bd, w, maxnreg in grads:
        for pf in ((True,) if smoke else (False, True)):
            c = {**flags, "HAS_D": True, "BLOCK_D": bd, "BLOCK_N": 16, "BLOCK_T": 16, "N_ITERS": 256 // bd,
                 "PREFETCH": pf}
            out.append({"kernel": "grads", "block_d": bd, "warps": w, "maxnreg": maxnreg, "prefetch": pf,
                        **resource_usage(sb._chunk_grads_kernel, c, w, maxnreg)})
            print(out[-1], flush=True)
    for bd, w, maxnreg in sbt.GRADS_TM_CONFIGS[:1] if smoke else sbt.GRADS_TM_CONFIGS:  # ScanBlocks.bwd_tm
        c = {**flags, "HAS_D": True, "BLOCK_D": bd, "BLOCK_N": 16, "BLOCK_T": 16, "N_ITERS": 256 // bd}
        out.append({"kernel": "grads_tm", "block_d": bd, "warps": w, "maxnreg": maxnreg, "prefetch": False,
                    **resource_usage(sbt._chunk_grads_tm_kernel, c, w, maxnreg)})
        print(out[-1], flush=True)
    from anybudget.ssm import scan_gluon_bwd as sgb

    for bd, w, maxnreg in ((8, 4, None),) if smoke else ((8, 4, None), (4, 2, None), (8, 4, 168)):  # bwd_gluon
        c = {**flags, "HAS_D": True, "BLOCK_D": bd, "BLOCK_N": 16, "BLOCK_T": 16, "N_ITERS": 256 // bd}
        out.append({"kernel": "grads_gluon", "block_d": bd, "warps": w, "maxnreg": maxnreg, "prefetch": False,
                    **resource_usage(sgb.grads_gluon, c, w, maxnreg)})
        print(out[-1], flush=True)
    # ScanBlocks.fold_fixed (the polarized channels in the kernel, no z: the gate's backward is the adjoint's) with
    # and without EVEN (no masks), at the fastest preset's cap; then the preset's kernel (its next block's reads by
    # cp.async, ASYNC) and, beside it, session 23's (no SEED, no BC_SMEM). Flags as chunked_backward passes them.
    fold = {**flags, "HAS_Z": False, "HAS_D": True, "BLOCK_D": 8, "BLOCK_N": 16, "BLOCK_T": 16, "N_ITERS": 32,
            "ONE": True, "ZERO": True, **sgb.GRADS_FLAGS}
    for even in (False, True):
        out.append({"kernel": "grads_gluon_fold", "block_d": 8, "warps": 4, "maxnreg": 168, "even": even,
                    **resource_usage(sgb.grads_gluon, {**fold, "EVEN": even}, 4, 168)})
        print(out[-1], flush=True)
    for name, extra in (("grads_gluon_fold_async", {"ASYNC": True}),
                        *(() if smoke else (("grads_gluon_fold_s23", {"SEED": False, "BC_SMEM": False}),))):
        out.append({"kernel": name, "block_d": 8, "warps": 4, "maxnreg": 168, "even": True,
                    **resource_usage(sgb.grads_gluon, {**fold, "EVEN": True, **extra}, 4, 168)})
        print(out[-1], flush=True)
    for even in () if smoke else (False, True):  # the time-major Triton kernel folded (the preset without Gluon)
        c = {**flags, "HAS_Z": False, "HAS_D": True, "BLOCK_D": 8, "BLOCK_N": 16, "BLOCK_T": 16, "N_ITERS": 32,
             "ONE": True, "ZERO": True, "EVEN": even}
        out.append({"kernel": "grads_tm_fold", "block_d": 8, "warps": 4, "maxnreg": 168, "even": even,
                    **resource_usage(sbt._chunk_grads_tm_kernel, c, 4, 168)})
        print(out[-1], flush=True)
    for bd, w in sb.ADJOINT_CONFIGS[:1] if smoke else sb.ADJOINT_CONFIGS:  # both layouts (ScanBlocks.bwd_tm)
        c = {**flags, "STATES": False, "BLOCK_D": bd, "BLOCK_N": 16, "BLOCK_T": 16}
        for name, fn in (("adjoint", sb._chunk_adjoint_kernel), ("adjoint_tm", sbt._chunk_adjoint_tm_kernel)):
            out.append({"kernel": name, "block_d": bd, "warps": w, **resource_usage(fn, c, w)})
            print(out[-1], flush=True)
    for block_c, block_j, w, jc in (sb.CARRY_TILES, (16, 256, 4, False)):  # the carry: (j, chunk) tiles, then the old
        c = {"REVERSE": True, "BLOCK_C": block_c, "BLOCK_J": block_j, "N_BLOCKS": 256 // block_c, "ONE": True,
             "JC": jc}
        out.append({"kernel": "carry_jc" if jc else "carry", "block_c": block_c, "block_j": block_j, "warps": w,
                    **resource_usage(sb._chunk_carry_kernel, c, w)})
        print(out[-1], flush=True)
    if smoke:
        return out
    for pf, maxnreg in ((False, None), (True, None), (False, 80)):
        c = {**flags, "HAS_D": True, "N_TILES": 64, "BLOCK_D": 8, "BLOCK_N": 16, "BLOCK_T": 16, "PREFETCH": pf}
        out.append({"kernel": "fwd_tm", "block_d": 8, "warps": 4, "maxnreg": maxnreg, "prefetch": pf,
                    **resource_usage(tm.fwd_kernel_tm, c, 4, maxnreg)})
        print(out[-1], flush=True)
    for even in (False, True):  # the folded forward with its prefetch (the fastest preset), with and without masks
        c = {**flags, "HAS_D": True, "N_TILES": 64, "BLOCK_D": 8, "BLOCK_N": 16, "BLOCK_T": 16, "PREFETCH": True,
             "ONE": True, "ZERO": True, "Y_OUT": True, "EVEN": even}
        out.append({"kernel": "fwd_tm_fold", "block_d": 8, "warps": 4, "maxnreg": None, "prefetch": True,
                    "even": even, **resource_usage(tm.fwd_kernel_tm, c, 4)})
        print(out[-1], flush=True)
        c = {**flags, "STATES": False, "BLOCK_D": 8, "BLOCK_N": 16, "BLOCK_T": 16, "ONE": True, "GATE": True,
             "EVEN": even}
        out.append({"kernel": "adjoint_tm_fold", "block_d": 8, "warps": 4, "even": even,
                    **resource_usage(sbt._chunk_adjoint_tm_kernel, c, 4)})
        print(out[-1], flush=True)
    out += fwd_chunk_rows(flags)
    return out


def fwd_chunk_rows(flags):
    """The chunk-parallel forward's kernels (``ScanBlocks.fwd_chunk`` = 256 over tiles (8, 16, 4)): step 1 (chunk end
    states, no y) and step 3 (the forward over a chunk from its carried start state), with and without PREFETCH."""
    from anybudget.ssm import scan_triton_fwdchunk as fc

    tiles = {"BLOCK_D": 8, "BLOCK_N": 16, "BLOCK_T": 16, "TILES_PER_CHUNK": 16}
    out = []
    for pf in (False, True):
        out.append({"kernel": "fwd_chunk_end", "block_d": 8, "warps": 4, "maxnreg": None, "prefetch": pf,
                    **resource_usage(fc._chunk_end_kernel, {"HAS_BIAS": True, "SOFTPLUS": True, **tiles,
                                                            "PREFETCH": pf}, 4)})
        print(out[-1], flush=True)
    for pf in (False, True):
        c = {**flags, **tiles, "HAS_D": True, "HAS_H0": True, "N_TILES": 256, "PREFETCH": pf}
        out.append({"kernel": "fwd_chunk", "block_d": 8, "warps": 4, "maxnreg": None, "prefetch": pf,
                    **resource_usage(fc._chunk_fwd_kernel, c, 4)})
        print(out[-1], flush=True)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    from anybudget.io import results_dir, write_results

    ap.add_argument("--out", default=str(results_dir("ssm_scan_regs")))
    ap.add_argument("--smoke", action="store_true", help="one config of the grads kernel (with PREFETCH), the time-major grads kernel and both adjoints")
    args = ap.parse_args(argv)
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # Triton 3.9's default, set to silence its warning
    config = {"target": "cuda sm_90 (H100), 32 lanes", "dtype": "float32", "d_state": 16, "chunk": 16,
              "d_inner": 256, "smoke": args.smoke, "regs_per_sm": SM_REGS}
    path = write_results("ssm_scan_regs" + ("_smoke" if args.smoke else ""), config, {"kernels": rows(args.smoke)},
                         out_dir=args.out)
    print("wrote", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
