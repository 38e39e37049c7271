"""2:4 semi-structured sparse inference against dense, same run, same GPU, for each of torch's two
sparse backends (CUTLASS and cuSPARSELt), each checked against the dense product of the same
2:4-masked weights before its time is reported.

  # the 2:4 ticket of run_imp.py (<work>/m24: fp16 classifier + mask.safetensors)
  python benchmarks/prune/speed24.py --model <work>/m24 --data .carry/prune_minilm/imp --out $OUT
  # or build that ticket here first (job_24: 2:4 magnitude mask on theta_0, fine-tuned on --task)
  python benchmarks/prune/speed24.py --encoder .carry/prune/minilm --data .carry/prune_minilm/imp --task rt --out $OUT
  python benchmarks/prune/speed24.py --smoke --out /tmp/x                 # CPU: the same path, no kernels

Two measurements: (1) one BERT encoder layer's six matrices at --hidden (Q, K, V, attention output,
FFN in, FFN out) on --tokens tokens, input (batch, seq, hidden) with bias, as BERT calls them;
(2) the classifier, dense fp16 vs its prunable Linears as semi-structured tensors (sparse24.Linear24):
logits against the dense forward of the same masked weights, accuracy on the task's dev and test
splits, latency on a dev batch. Every time is taken twice: eager (what a caller gets: torch's
cuSPARSELt op builds its descriptors and plan on the host at every call, ~0.5 ms) and replayed
from a CUDA graph (kernels only). Ratios = dense / sparse median, same run. Bound: 2:4 halves the
multiply-adds of the converted matmuls only, so the model can gain at most T / (T - L / 2), with T
the dense forward and L its converted matmuls (each timed alone at the shape the model feeds it).
"""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # jobs.py (the 2:4 ticket) when run from the repository root
    sys.path.insert(0, str(HERE))

from anybudget.cudagraph import capture
from anybudget.measure import kernel_times, latency
from anybudget.prune.masks import apply_mask
from anybudget.prune.sparse24 import mask_24, prune_24, to_semi_structured

BACKENDS = ("cutlass", "cusparselt")
PARTS = ("bert_base_layer", "bert_base_layer_unfused", "model", "model_unfused")  # the last two need a model
REL_TOL = 2e-2  # fp16 products of K <= 3072 terms: rounding stays well below this relative error
ERRORS = (RuntimeError, NotImplementedError, ValueError)


@contextlib.contextmanager
def backend(name: str):
    """Select torch's semi-structured backend for conversions inside the block."""
    from torch.sparse import SparseSemiStructuredTensor

    old = SparseSemiStructuredTensor._FORCE_CUTLASS
    SparseSemiStructuredTensor._FORCE_CUTLASS = name == "cutlass"
    try:
        yield
    finally:
        SparseSemiStructuredTensor._FORCE_CUTLASS = old


def _rel(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.float() - ref.float()).abs().max() / ref.float().abs().max().clamp_min(1e-6))


_T0 = time.perf_counter()


def log(msg: str) -> None:
    """A progress line on stderr, with the seconds since the start (a stopped run shows where it was)."""
    print(f"[speed24 {time.perf_counter() - _T0:6.1f}s] {msg}", file=sys.stderr, flush=True)


def _err(e: Exception) -> str:
    return f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"


def kernel_ms(fn, repeat: int = 10) -> float:
    """Mean ms per call of the CUDA kernels ``fn()`` launches (``measure.kernel_times``: torch.profiler
    device time, no host gaps), after one warm-up call."""
    fn()
    torch.cuda.synchronize()
    return kernel_times(fn, steps=repeat)[1] / 1e3


def timed(fn, repeat: int, graph: bool, kernels: bool = True, slow_eager: bool = False) -> dict:
    """Median ms of ``fn()`` eager and, on CUDA with ``graph``, replayed from a CUDA graph (the graph's
    output is checked against the eager one: rel_err_graph), and the kernels' own time (kernel_ms).
    ``slow_eager``: eager calls cost ~200 ms each (torch 2.11's cuSPARSELt op plans on the host at every
    call, measured on an H100): eager is timed over 2 calls and the kernels from the graph's replay."""
    res = {"eager_ms": latency(fn, warmup=1 if slow_eager else 3, repeat=2 if slow_eager else repeat).median_s * 1e3}
    if not (graph and torch.cuda.is_available()):
        return res
    try:
        if kernels and not slow_eager:
            res["kernel_ms"] = kernel_ms(fn)
    except Exception as e:  # noqa: BLE001 (profiler API drift must not lose the run)
        res["kernel_error"] = _err(e)
    try:
        ref = fn()
        held = {}  # the captured call's output tensor, which every replay rewrites
        g = capture(lambda: held.update(out=fn()), warmup=3)
        g.replay()
        res["rel_err_graph"] = _rel(held["out"], ref)
        res["graph_ms"] = latency(g.replay, warmup=3, repeat=repeat).median_s * 1e3
        if kernels and slow_eager:
            res["kernel_ms"] = kernel_ms(g.replay)
    except ERRORS as e:
        res["graph_error"] = _err(e)
        if kernels and slow_eager:  # its kernels were to be timed from the graph: say why they are missing
            res["kernel_error"] = "no CUDA graph: " + res["graph_error"]
    return res


def _ratios(row: dict, dense: dict, sparse: dict) -> None:
    row.update({f"dense_{k}": v for k, v in dense.items()})
    row.update({f"sparse_{k}": v for k, v in sparse.items()})
    for k in ("eager_ms", "graph_ms", "kernel_ms"):
        if dense.get(k, 0) > 0 and sparse.get(k, 0) > 0:
            row[f"speedup_{k[:-3]}"] = dense[k] / sparse[k]


def matmul_speed(tokens: int = 16384, hidden: int = 768, repeat: int = 50, name: str = "cusparselt",
                 fuse_transpose: bool = True, graph: bool = True) -> dict:
    """Dense vs 2:4 latency of one BERT encoder layer's six matrices (fp16, CUDA)."""
    torch.manual_seed(0)
    shapes = [(hidden, hidden)] * 4 + [(4 * hidden, hidden), (hidden, 4 * hidden)]
    rows = {}
    for i, (o, k) in enumerate(shapes):
        lin = torch.nn.Sequential(torch.nn.Linear(k, o)).half().cuda()
        mask = {"0.weight": mask_24(lin[0].weight)}
        apply_mask(lin, mask)
        x = torch.randn(tokens // 128, 128, k, device="cuda", dtype=torch.half)
        row = {}
        kern = name == "cusparselt" and fuse_transpose  # the profiler once per shape, not per variant
        with torch.inference_mode():
            ref = lin(x)
            dense = timed(lambda: lin(x), repeat, graph, kern)  # noqa: B023 (called inside this iteration)
            try:
                with backend(name):
                    to_semi_structured(lin, mask, fuse_transpose=fuse_transpose)
                row["rel_err"] = _rel(lin(x), ref)
                row["correct"] = row["rel_err"] <= REL_TOL
                _ratios(row, dense, timed(lambda: lin(x), repeat, graph, kern, name == "cusparselt"))  # noqa: B023
            except ERRORS as e:
                row.update({f"dense_{k}": v for k, v in dense.items()}, error=_err(e))
        rows[f"{i}:{o}x{k}"] = row
    ok = [r for r in rows.values() if "sparse_eager_ms" in r]
    out = {"backend": name, "fuse_transpose": fuse_transpose, "tokens": tokens, "hidden": hidden, "matrices": rows,
           "all_correct": bool(ok) and len(ok) == len(rows) and all(r["correct"] for r in ok),
           "bound": 2.0}
    for k in ("eager", "graph", "kernel"):
        if ok and len(ok) == len(rows) and all(r.get(f"sparse_{k}_ms", 0) > 0 for r in ok):
            out[f"layer_speedup_{k}"] = (sum(r[f"dense_{k}_ms"] for r in ok) / sum(r[f"sparse_{k}_ms"] for r in ok))
    return out


def _linear_inputs(model, names) -> dict:
    """The input shape each converted Linear sees in one forward (recorded by forward hooks)."""
    mods = dict(model.named_modules())
    shapes, hooks = {}, []

    def record(path):
        def hook(module, args, output):  # returns None: the output is left as it is
            shapes.setdefault(path, tuple(args[0].shape))
        return hook

    for n in names:
        p = n.rsplit(".", 1)[0]
        hooks.append(mods[p].register_forward_hook(record(p)))
    return shapes, hooks


def _accuracy(model, splits: dict, device) -> dict:
    import numpy as np

    out = {}
    for s, data in splits.items():
        hits = n = 0
        for i in range(0, len(data), 256):
            b = data.batch(np.arange(i, min(i + 256, len(data))), device=device)
            y = b.pop("labels")
            hits += int((model(**b).logits.float().argmax(-1) == y).sum())
            n += len(y)
        out[f"{s}.accuracy"] = hits / n
    return out


def model_speed(model_dir: str, batch: dict, splits: dict | None = None, repeat: int = 50, name: str = "cusparselt",
                device: str = "cuda", graph: bool = True, dtype: torch.dtype | None = None, to_sparse=None,
                fuse_transpose: bool = True) -> dict:
    """Dense vs semi-structured forward of a 2:4-masked fp16 classifier on ``batch``; accuracy on
    ``splits`` (classification) before and after. ``model_dir`` holds ``mask.safetensors`` (a saved 2:4
    ticket) or the 2:4 magnitude mask is made here. ``dtype``: fp16 on CUDA, fp32 elsewhere by default;
    ``to_sparse``: sparse24.to_semi_structured's converter (tests: a CPU stand-in of the kernel)."""
    from transformers import AutoModelForSequenceClassification

    from anybudget.prune.masks import load_mask

    dtype = dtype or (torch.float16 if device == "cuda" else torch.float32)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, dtype=dtype).to(device).eval()
    mpath = Path(model_dir) / "mask.safetensors"
    mask = load_mask(mpath)[0] if mpath.exists() else prune_24(model)
    with torch.no_grad():
        apply_mask(model, mask, strict=False)
    batch = {k: v.to(device) for k, v in batch.items() if k != "labels"}
    if "attention_mask" in batch:  # prepared 4-D additive mask: transformers' 2-D path syncs (mask.all()),
        am = batch["attention_mask"]  # which a CUDA graph capture refuses
        L = am.shape[1]
        batch["attention_mask"] = ((1.0 - am[:, None, None, :].to(dtype)) * torch.finfo(dtype).min).expand(-1, 1, L, L).contiguous()
    res = {"backend": name, "fuse_transpose": fuse_transpose, "prunable": len(mask), "batch": list(batch["input_ids"].shape)}
    with torch.inference_mode():
        shapes, hooks = _linear_inputs(model, mask)
        ref = model(**batch).logits.float()
        for h in hooks:
            h.remove()
        dense = timed(lambda: model(**batch).logits, repeat, graph)
        lin_ms = 0.0
        mods = dict(model.named_modules())
        for p, shp in shapes.items():  # the converted matmuls alone, dense, at the model's shapes
            x = torch.randn(shp, device=device, dtype=dtype)
            t = timed(lambda: mods[p](x), repeat, graph, kernels=False)  # noqa: B023
            lin_ms += t.get("graph_ms", t["eager_ms"])
        t_dense = dense.get("graph_ms", dense["eager_ms"])
        res["dense_converted_matmuls_ms"] = lin_ms
        res["bound"] = t_dense / max(t_dense - lin_ms / 2, 1e-9)
        if splits:
            res["accuracy_dense"] = _accuracy(model, splits, device)
        try:
            with backend(name):
                converted = to_semi_structured(model, mask, to_sparse=to_sparse, fuse_transpose=fuse_transpose)
            out = model(**batch).logits.float()
            sparse = timed(lambda: model(**batch).logits, repeat, graph, slow_eager=name == "cusparselt")
        except ERRORS as e:
            res.update({f"dense_{k}": v for k, v in dense.items()}, error=_err(e))
            return res
        _ratios(res, dense, sparse)
        res.update({"converted": len(converted), "rel_err_logits": _rel(out, ref),
                    "argmax_agreement": float((out.argmax(-1) == ref.argmax(-1)).float().mean()),
                    "examples": int(ref.shape[0])})
        res["correct"] = res["rel_err_logits"] <= REL_TOL
        if splits:
            res["accuracy_sparse_kernels"] = _accuracy(model, splits, device)
    return res


def all_backends(model_dir: str | None, batch: dict | None, splits: dict | None = None, tokens: int = 16384,
                 hidden: int = 768, repeat: int = 50, save: dict | None = None, on_part=None,
                 backends: tuple = BACKENDS, only: tuple | None = None) -> dict:
    """Every backend: the layer's matrices (cuSPARSELt also unfused) and, given ``model_dir``, the model.
    With ``save`` the results go into ``save["backends"]`` as they come and ``on_part()`` runs after each
    part (the caller writes the record: a stopped run keeps what it measured)."""
    res = {} if save is None else save.setdefault("backends", {})
    for name in backends:
        res[name] = {}
        parts = [("bert_base_layer", lambda: matmul_speed(tokens, hidden, repeat, name))]  # noqa: B023
        if name == "cusparselt":
            parts.append(("bert_base_layer_unfused",
                          lambda: matmul_speed(tokens, hidden, repeat, name, fuse_transpose=False)))  # noqa: B023
        if model_dir is not None:
            parts.append(("model", lambda: model_speed(model_dir, batch, splits, repeat, name)))  # noqa: B023
            if name == "cusparselt":
                parts.append(("model_unfused", lambda: model_speed(model_dir, batch, splits, repeat, name,  # noqa: B023
                                                                   fuse_transpose=False)))
        for part, fn in parts:
            if only is not None and part not in only:
                continue
            log(f"{name} {part}: start")
            res[name][part] = fn()
            log(f"{name} {part}: done")
            if on_part is not None:
                on_part()
    return res


def build_ticket(encoder: str, data: str, task: str, seed: int, out: Path, device: str) -> dict:
    """run_imp's job_24 here: the 2:4 magnitude mask on theta_0 (``encoder``), fine-tuned on ``task``
    with run_imp's defaults; saves the fp16 classifier and its mask to ``out``."""
    import jobs

    j = {"data": data, "model": encoder, "device": device, "threads": 2, "task": task, "seed": seed, "save": str(out),
         "finetune": {"epochs": 2.0, "lr": 2e-4, "batch_size": 64, "bf16": False}}
    r = jobs.job_24(j)
    return {"task": task, "seed": seed, "sparsity": r["sparsity"], "metrics": r["metrics"]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="a 2:4 ticket folder (fp16 classifier + mask.safetensors)")
    ap.add_argument("--encoder", default=None, help="build the ticket here from this pre-trained encoder")
    ap.add_argument("--data", default=None, help="prepared task data (<data>/tasks/<task>.safetensors.xz)")
    ap.add_argument("--task", default="rt")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tokens", type=int, default=16384)
    ap.add_argument("--hidden", type=int, default=768, help="matmul section's layer width (BERT-base 768)")
    ap.add_argument("--repeat", type=int, default=50)
    ap.add_argument("--name", default="prune_speed24", help="record name")
    ap.add_argument("--out", default=None, help="write <name>.json here")
    ap.add_argument("--smoke", action="store_true", help="CPU, tiny model: ticket, dense timings, accuracy")
    ap.add_argument("--backends", default=",".join(BACKENDS), help="comma list of " + ", ".join(BACKENDS))
    ap.add_argument("--parts", default=None, help="comma list of bert_base_layer, bert_base_layer_unfused (cuSPARSELt), "
                    "model, model_unfused (cuSPARSELt); default all")
    ap.add_argument("--ticket-dir", default=None,
                    help="with --encoder: build the ticket here and keep it (reuse it later with --model)")
    ap.add_argument("--trace-after", type=float, default=None,
                    help="print every thread's stack after this many seconds, and every 60 s after (a hang shows where)")
    args = ap.parse_args(argv)
    if bad := set(args.backends.split(",")) - set(BACKENDS):
        raise SystemExit(f"--backends: unknown {sorted(bad)}; allowed: {', '.join(BACKENDS)}")
    if args.parts and (bad := set(args.parts.split(",")) - set(PARTS)):
        raise SystemExit(f"--parts: unknown {sorted(bad)}; allowed: {', '.join(PARTS)}")
    if args.trace_after:
        faulthandler.dump_traceback_later(args.trace_after, repeat=True)
    cuda = torch.cuda.is_available() and not args.smoke
    if not cuda and not args.smoke:
        print("speed24: needs CUDA (--smoke runs the same path on the CPU without the kernels)")
        return 0
    if args.model and args.encoder:
        raise SystemExit("--model and --encoder: give one (a saved ticket, or an encoder to build it from)")
    tmp = tempfile.TemporaryDirectory(prefix="speed24_")
    if args.smoke:
        import smoke

        data, enc = smoke.build(Path(tmp.name) / "data")
        args.data, args.encoder, args.model, args.repeat = str(data), str(enc), None, 2
    res: dict = {}
    device = "cuda" if cuda else "cpu"
    model_dir = args.model
    if args.encoder:
        if not args.data:
            raise SystemExit("--encoder needs --data (the task to fine-tune the 2:4 ticket on)")
        model_dir = args.ticket_dir or str(Path(tmp.name) / "m24")
        log(f"ticket: building from {args.encoder} on {args.task}")
        res["ticket"] = build_ticket(args.encoder, args.data, args.task, args.seed, Path(model_dir), device)
        log(f"ticket: built {res['ticket']['metrics']}")
    splits, batch = None, None
    if model_dir:
        import numpy as np

        from anybudget.prune.tasks import load_task

        if args.data:
            spec, sp, _ = load_task(Path(args.data) / "tasks" / f"{args.task}.safetensors.xz")
            if spec.kind == "binary":
                splits = {s: sp[s] for s in ("dev", "test")}
            batch = sp["dev"].batch(np.arange(min(256, len(sp["dev"]))))
        else:
            g = torch.Generator().manual_seed(0)
            ids = torch.randint(5, 4096, (256, 128), generator=g)
            batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    def write(complete: bool) -> None:
        if args.out:
            from anybudget.io import write_results

            flat = {k: v for k, v in res.items() if k != "backends"} | res.get("backends", {})  # one layout, partial or not
            write_results(args.name + ("_smoke" if args.smoke else ""), vars(args), {**flat, "complete": complete},
                          out_dir=args.out)

    if cuda:
        all_backends(model_dir, batch, splits, args.tokens, args.hidden, args.repeat, save=res,
                     on_part=lambda: write(False), backends=tuple(args.backends.split(",")),
                     only=tuple(args.parts.split(",")) if args.parts else None)
        res.update(res.pop("backends"))
    else:  # smoke: the ticket, dense timings and accuracy; the conversion reports that it needs CUDA
        res["cusparselt"] = {"model": model_speed(model_dir, batch, splits, args.repeat, device="cpu")}
    print(res)
    write(True)
    faulthandler.cancel_dump_traceback_later()
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
