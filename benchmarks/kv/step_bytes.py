"""What a compiled static decoding step moves: inductor's kernels and bytes per buffer, on the CPU.

Compiles one decoding step of a small Llama (head dim 128 like the serving model) holding an
``H2OCache(static=True)`` with inductor, as transformers' compiled generation does, and reads the
scheduler's fused kernels (``torch._inductor.config._post_fusion_custom_pass``): for every kernel
the buffers it reads and writes, each tagged with its role (a layer's ``keys``, ``values``,
``prio``, ``pos``, ``valid``, the model's weights, or a temporary), and the bytes it touches
(accesses along the kernel's loop ranges, so an ``index_put_`` of one slot counts one slot, not
the buffer). Temporaries of a cache-like size are listed: a clone or a float32 copy of the cache
would show up there. ``torch._dynamo.explain`` gives the graph and break count.

From the per-slot bytes of the small model (per row, KV head and slot; the KV part scales with
the head dim, the rest does not) it writes a per-step byte budget for the serving model of
``serving.py`` (hidden 2048, 24 layers, 16 heads of 128, MHA) at batch 64, prompt 2k, 20%:
what the step moves, against the minimum (read the kept keys and values once, write one slot,
read and write the scores of the kept slots, read positions and validity once) and the weights.

CPU only, no GPU needed: ``python benchmarks/kv/step_bytes.py --out /tmp/x`` (about a minute).
The counts are inductor's CPU schedule; on CUDA the same FX graph is fused by the Triton
scheduler (counts per buffer agree; the number of kernels can differ).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import re
import sys
from collections import defaultdict

import torch

SERVING = {"batch": 64, "prompt": 2048, "new_tokens": 128, "budget": 0.2, "layers": 24, "kv_heads": 16,
           "head_dim": 128, "dtype_bytes": 2, "weight_bytes": 2 * 1_279_000_000}


def small_model(layers=2, heads=2, head_dim=128, dtype=torch.bfloat16, seed=0):
    """A random Llama with the serving model's head dim (hidden = heads x head_dim), MHA."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(hidden_size=heads * head_dim, intermediate_size=2 * heads * head_dim,
                      num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                      vocab_size=128, max_position_embeddings=8192)
    cfg._attn_implementation = "sdpa"
    return LlamaForCausalLM(cfg).to(dtype).eval()


_BUFFERS = ("real_seen", "keys", "values", "prio", "pos", "valid", "seen")


def _role(source_name: str) -> str:
    """The role of a dynamo graph input from its source name (``L_kw_..._layers_0_keys``...)."""
    m = re.search(r"layers?(?:_(\d+))?_(" + "|".join(_BUFFERS) + r")_?$", source_name)
    if m:
        return f"{m.group(2)}[{m.group(1) or 0}]"
    return "weights" if "weight" in source_name else "input"


def _triton_tiling(node):
    """The iteration tiles inductor's Triton scheduling gives a fused kernel, e.g. ``["x", "r0_"]``
    (rows, then a reduction over a contiguous dim) or ``["y", "x", "r0_"]`` (a 2-D tiled reduction,
    whose block configs keep R0_BLOCK at 4: see ``slot_decode_op._slot_decode``); None for an
    extern kernel or under the cpp scheduler."""
    import torch._inductor.config as icfg
    from torch._inductor.codegen.triton import TritonScheduling
    from torch._inductor.scheduler import FusedSchedulerNode, SchedulerNode
    from torch._inductor.virtualized import V

    if icfg.cpu_backend != "triton" or not isinstance(node, (SchedulerNode, FusedSchedulerNode)):
        return None
    try:
        removed = getattr(V.graph.scheduler, "removed_ops", ())  # set later, at codegen
        nodes = [n for n in node.get_nodes() if n.get_name() not in removed]
        _, (numel, rnumel) = max(nodes, key=lambda n: int(n.is_reduction())).group
        sched = TritonScheduling(V.graph.scheduler)
        schedule = sched.generate_node_schedule(nodes, numel, rnumel)
        analysis = node.get_coalesce_analysis() if icfg.triton.coalesce_tiling_analysis else None
        tiling, _ = TritonScheduling.get_tiling_and_scores(schedule, numel, rnumel, analysis)
    except Exception:  # noqa: BLE001 - inductor internals (torch 2.13): report nothing rather than fail
        return None
    return [str(k) for k in tiling if not (str(k) == "r0_" and tiling[k] == 1)]


class _Recorder:
    """Collects (kernel, reads, writes) from inductor's scheduler and the graph inputs' roles."""

    def __init__(self, slots: int):
        self.slots = slots  # the slot dimension: a temporary with it is per slot, else an activation
        self.kernels, self.input_roles, self.temporaries, self.sources = [], {}, [], []
        self.temp_sizes = {}
        self.stopped = None  # why the compile stopped after scheduling (Triton scheduling, no driver)

    def backend(self, gm, example_inputs):
        """Dynamo backend: note the graph inputs' source names, then compile with inductor."""
        from torch._inductor.compile_fx import compile_fx

        self.sources = [n.name for n in gm.graph.nodes if n.op == "placeholder"]
        return compile_fx(gm, example_inputs)

    def inner_compile(self, orig):
        def wrapped(gm, example_inputs, **kw):
            ph = [n.target for n in gm.graph.nodes if n.op == "placeholder"]
            if len(ph) != len(self.sources):
                raise RuntimeError(f"{len(ph)} AOT inputs for {len(self.sources)} dynamo inputs: cannot name them")
            self.input_roles = {a: _role(s) for a, s in zip(ph, self.sources)}
            return orig(gm, example_inputs, **kw)
        return wrapped

    def post_fusion(self, nodes):
        from torch._inductor import ir
        from torch._inductor.dependencies import MemoryDep
        from torch._inductor.scheduler import ExternKernelSchedulerNode
        from torch._inductor.virtualized import V

        sizevars = V.graph.sizevars
        hint = getattr(sizevars, "size_hint", None) or sizevars.optimization_hint  # torch < / >= 2.12

        def real(name):
            """A mutation's output buffer is the mutated buffer itself."""
            seen = set()
            while name not in seen:
                seen.add(name)
                try:
                    buf = V.graph.get_buffer(name)
                except Exception:  # noqa: BLE001 - a graph input
                    return name
                layout = getattr(buf, "layout", None)
                if isinstance(layout, ir.MutationLayoutSHOULDREMOVE):
                    name = layout.target.get_name()
                else:
                    return name
            return name

        def nbytes(dep, extern):
            name = real(dep.name)
            try:
                buf = V.graph.get_buffer(dep.name) or V.graph.graph_inputs.get(dep.name)
                itemsize = buf.get_dtype().itemsize
                total = hint(buf.get_numel())
            except Exception:  # noqa: BLE001
                return name, 0, 0
            if not isinstance(dep, MemoryDep):
                # StarDep: an extern kernel's operand (read whole); in a generated kernel only an
                # ordering edge on a buffer it mutates (its MemoryDeps count the real accesses).
                return name, (total * itemsize if extern else 0), total
            syms = dep.index.free_symbols
            n = math.prod(hint(r) for v, r in dep.ranges.items() if v in syms) if dep.ranges else 1
            return name, min(n, total) * itemsize, total

        for node in nodes:
            rw = node.read_writes
            ent = {"kernel": node.get_name(), "kind": type(node).__name__, "reads": defaultdict(int),
                   "writes": defaultdict(int)}
            for key, deps in (("reads", rw.reads), ("writes", rw.writes)):
                for dep in deps:
                    name, b, _ = nbytes(dep, isinstance(node, ExternKernelSchedulerNode))
                    ent[key][name] += b
            origins = set()
            for sn in node.get_nodes():
                if sn.node is not None:
                    origins |= {str(o.target) for o in sn.node.origins if o.op == "call_function"}
            ent["ops"] = sorted(origins)
            ent["tiling"] = _triton_tiling(node)
            self.kernels.append(ent)
            for sn in node.get_nodes():
                buf = sn.node
                if buf is None or isinstance(getattr(buf, "layout", None), ir.MutationLayoutSHOULDREMOVE):
                    continue
                with contextlib.suppress(Exception):  # a buffer without a size (NoneLayout): nothing stored
                    size = [hint(s) for s in buf.get_size()]
                    self.temporaries.append((buf.get_name(), hint(buf.get_numel()) * buf.get_dtype().itemsize,
                                             str(buf.get_dtype()), size))
                    self.temp_sizes[buf.get_name()] = size
        return nodes

    def role(self, name: str) -> str:
        if name in self.input_roles:
            return self.input_roles[name]
        return "slot temporary" if self.slots in self.temp_sizes.get(name, ()) else "activation"


_VIEWS = {"view", "_unsafe_view", "expand", "permute", "transpose", "t", "clone", "reshape", "unsqueeze",
          "squeeze", "slice", "select", "index_put", "index_put_", "_to_copy", "convert_element_type", "alias"}


def _matmul_operands(gm, roles) -> list[str]:
    """Roles of the graph inputs that reach an aten ``bmm`` / ``mm`` operand through views and copies."""
    found = []
    for n in gm.graph.nodes:
        if n.op != "call_function" or getattr(n.target, "__name__", "").split(".")[0] not in ("bmm", "mm", "addmm"):
            continue
        todo = [a for a in n.args if isinstance(a, torch.fx.Node)]
        while todo:
            a = todo.pop()
            if a.op == "placeholder":
                found.append(roles.get(a.target, "input"))
            elif a.op == "call_function" and getattr(a.target, "__name__", "").split(".")[0] in _VIEWS:
                todo += [x for x in a.args[:1] if isinstance(x, torch.fx.Node)]
    return found


def matmul_inputs(step, args) -> list[str]:
    """Roles of the inputs that reach a ``bmm`` / ``mm`` in ``step``'s graph as AOT autograd hands
    it to a compiler (no inductor: seconds). ``["keys[0]", "values[0]"]``: the attention over the
    slots runs as matmuls (on CUDA, cuBLAS calls) rather than as reductions inductor generates."""
    from torch._dynamo.backends.common import aot_autograd

    found, sources = [], []

    def fw(gm, example_inputs):
        ph = [n.target for n in gm.graph.nodes if n.op == "placeholder"]
        found.extend(_matmul_operands(gm, {a: _role(s) for a, s in zip(ph, sources)}))
        return gm

    def backend(gm, example_inputs):
        sources[:] = [n.name for n in gm.graph.nodes if n.op == "placeholder"]
        return aot_autograd(fw_compiler=fw)(gm, example_inputs)

    torch._dynamo.reset()
    with torch.no_grad():
        torch.compile(step, backend=backend, fullgraph=True, dynamic=True)(*args)
    torch._dynamo.reset()
    return sorted(found)


@contextlib.contextmanager
def _bmm_as_extern_call():
    """Lower ``aten.bmm`` to the aten kernel, as inductor does on CUDA for one query row against
    many keys (a cuBLAS call); its CPU lowering would turn it into a fused reduction instead."""
    from torch._inductor import lowering

    op = torch.ops.aten.bmm.default
    saved = lowering.lowerings[op]
    lowering.lowerings[op] = lowering.fallback_handler(op, add_to_fallback_set=False)
    try:
        yield
    finally:
        lowering.lowerings[op] = saved


def account(step, args, layers, *, dynamic=True, scheduler="cpp", extern_bmm=False) -> dict:
    """Compile ``step(*args)`` with inductor (one graph, no breaks expected) and account the bytes
    its kernels move per buffer role; ``layers``: the static slot layers the step works on.
    extern_bmm: lower bmm as CUDA does for these shapes (an aten call), see :func:`_bmm_as_extern_call`.

    scheduler: ``"cpp"`` (inductor's CPU code, compiled and run) or ``"triton"``: inductor's
    Triton scheduling on the CPU device (``cpu_backend="triton"``), the fusion rules a GPU gets;
    without a Triton CPU driver the compile stops after scheduling, which is all that is counted
    (the step is then not run by the compiled code)."""
    import torch._inductor.compile_fx as cfx
    import torch._inductor.config as icfg

    if scheduler not in ("cpp", "triton"):
        raise ValueError(f"scheduler={scheduler!r} must be 'cpp' or 'triton'")

    torch._dynamo.reset()
    explain = torch._dynamo.explain(step)(*args)  # runs one step: the cache moves on by a token
    torch._dynamo.reset()
    rec = _Recorder(layers[0].keys.shape[2])
    matmuls = []
    orig = cfx._compile_fx_inner
    inner = rec.inner_compile(orig)

    def wrapped(gm, example_inputs, **kw):
        out = inner(gm, example_inputs, **kw)
        matmuls.extend(_matmul_operands(gm, rec.input_roles))
        return out

    cfx._compile_fx_inner = wrapped
    try:
        with (icfg.patch(_post_fusion_custom_pass=rec.post_fusion, cpu_backend=scheduler), torch.no_grad(),
              _bmm_as_extern_call() if extern_bmm else contextlib.nullcontext()):
            torch.compile(step, backend=rec.backend, fullgraph=True, dynamic=dynamic)(*args)
    except Exception as e:  # Triton scheduling without a CPU driver stops at codegen
        if scheduler != "triton" or not rec.kernels:
            raise
        rec.stopped = f"{type(e).__name__}: {str(e)[:120]}"
    finally:
        cfx._compile_fx_inner = orig
    B, H, S, D = layers[0].keys.shape
    by_role = defaultdict(lambda: {"read": 0, "written": 0})
    for k in rec.kernels:
        for key, verb in (("reads", "read"), ("writes", "written")):
            for name, b in k[key].items():
                by_role[rec.role(name).split("[")[0]][verb] += b
    keys_bytes = layers[0].keys.numel() * layers[0].keys.element_size()
    slots = B * H * S * len(layers)
    temps = [t for t in rec.temporaries if t[0] not in rec.input_roles and S in t[3]]
    per_slot = {r: (v["read"] + v["written"]) / slots for r, v in sorted(by_role.items())
                if r not in ("weights", "activation", "input")}
    return {
        "shape": {"batch": B, "kv_heads": H, "slots": S, "head_dim": D, "layers": len(layers),
                  "capacity": getattr(layers[0], "capacity", None), "dtype": str(layers[0].keys.dtype)},
        "graphs": explain.graph_count, "graph_breaks": explain.graph_break_count,
        "scheduler": scheduler, "stopped_after_scheduling": rec.stopped,
        "kernels": len([k for k in rec.kernels if k["kind"] != "NopKernelSchedulerNode"]),
        "kernel_list": [{**k, "reads": {f"{n} ({rec.role(n)})": b for n, b in k["reads"].items()},
                         "writes": {f"{n} ({rec.role(n)})": b for n, b in k["writes"].items()}}
                        for k in rec.kernels],
        "bytes_by_role": {r: dict(v) for r, v in sorted(by_role.items())},
        "per_slot_bytes": per_slot,
        "per_slot_total": sum(per_slot.values()),
        "per_slot_minimum": 2 * D * layers[0].keys.element_size() + 4 + 4 + 8 + 1,
        "matmul_operands": sorted(matmuls),
        "largest_temporaries": sorted(temps, key=lambda t: -t[1])[:8],
        "keys_bytes_one_layer": keys_bytes,
        "largest_temporary_over_keys": max((t[1] for t in temps), default=0) / keys_bytes,
    }


def analyse_model_step(model, *, batch=4, prompt=320, budget="20%", new_tokens=16, dynamic=True,
                       scheduler="cpp") -> dict:
    """One whole decoding step of ``model`` (all layers, weights included), as ``generate`` compiles it."""
    from anybudget import kv

    kv.enable(model)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, model.config.vocab_size, (batch, prompt), generator=g)
    cache = kv.H2OCache(budget, static=True, max_new_tokens=new_tokens)
    kw = kv.cache_kwargs(model, cache)
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids), **kw)

    def step(tok, pos):
        return model(input_ids=tok, position_ids=pos, cache_position=pos[0], **kw).logits

    return account(step, (out.logits[:, -1:].argmax(-1), torch.full((batch, 1), prompt)), cache.layers,
                   dynamic=dynamic, scheduler=scheduler)


def analyse_hf_static_step(model, *, batch=4, prompt=320, new_tokens=16, scheduler="triton") -> dict:
    """The same accounting for transformers' StaticCache (full cache, SDPA over every slot): the
    compiled step ``cache_implementation="static"`` runs, for comparing kernel counts."""
    from transformers import StaticCache

    from anybudget import kv

    kv.disable(model)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, model.config.vocab_size, (batch, prompt), generator=g)
    cache = StaticCache(config=model.config, max_cache_len=prompt + new_tokens)
    with torch.no_grad():
        out = model(input_ids=ids, past_key_values=cache, use_cache=True)

    def step(tok, pos):
        return model(input_ids=tok, position_ids=pos, cache_position=pos[0], past_key_values=cache,
                     use_cache=True).logits

    return account(step, (out.logits[:, -1:].argmax(-1), torch.full((batch, 1), prompt)), cache.layers,
                   scheduler=scheduler)


def layer_step(*, batch=3, heads=2, head_dim=128, prompt=96, budget="20%", new_tokens=8, products="auto",
               dtype=torch.bfloat16, device="cpu", layers=1):
    """One layer's part of a decoding step alone (write the new slot, attend, add the scores,
    evict), as ``kv.hf.anybudget_attention`` runs it, on a prefilled static H2O layer: a small
    graph that compiles in seconds; ``layers`` > 1: that many layers one after the other in one
    step (each with its own slots; the same new token), as a model's step holds them without the
    weights. Returns (step, args, layers)."""
    from anybudget import kv
    from anybudget.kv.attention import slot_decode_attention

    g = torch.Generator(device=device).manual_seed(0)
    cache = kv.H2OCache(budget, static=True, max_new_tokens=new_tokens)
    slot_layers = []
    for _ in range(layers):
        layer = cache._new_layer()
        layer.decode_products = products
        k = torch.randn(batch, heads, prompt, head_dim, generator=g, device=device, dtype=dtype)
        layer.update(k, k)
        layer.finish_prompt(torch.rand(batch, heads, prompt, generator=g, device=device), None)
        slot_layers.append(layer)
        del k

    def step(q, k_new, v_new):
        out = q
        for layer in slot_layers:
            keys, values = layer.update(k_new, v_new)
            out = slot_decode_attention(out, keys, values, key_mask=layer.valid, colsum_out=layer.prio,
                                        products=layer.decode_products)
            layer.evict()
        return out

    args = [torch.randn(batch, heads, 1, head_dim, generator=g, device=device, dtype=dtype) for _ in range(3)]
    return step, args, slot_layers


def analyse_layer_step(scheduler="cpp", extern_bmm=False, **kw) -> dict:
    """:func:`account` of :func:`layer_step` (other keyword arguments: its)."""
    step, args, layers = layer_step(**kw)
    return account(step, args, layers, scheduler=scheduler, extern_bmm=extern_bmm)


def byte_budget(per_slot: dict, serving=SERVING) -> dict:
    """Per-step bytes of the serving model from the small model's per-slot bytes (head dim 128 in both)."""
    s = serving
    cap = math.ceil(s["budget"] * (s["prompt"] + s["new_tokens"]) - 1e-9)
    slots = s["batch"] * s["kv_heads"] * (cap + 1) * s["layers"]
    kv_slot = 2 * s["head_dim"] * s["dtype_bytes"]
    now = sum(per_slot.values()) * slots
    minimum = slots * (kv_slot + 4 + 4 + 8 + 1) + slots / (cap + 1) * kv_slot  # K,V + prio r/w + pos + valid; one write
    return {"slots_per_row_and_head": cap + 1, "slot_count_all_layers": slots,
            "step_bytes_kv_and_state": now, "minimum_kv_and_state": minimum, "weights": s["weight_bytes"],
            "ratio_to_minimum": now / minimum,
            "total_with_weights": now + s["weight_bytes"], "minimum_total": minimum + s["weight_bytes"]}


def _show(title, res):
    print(f"== {title}: {res['kernels']} kernels, {res['graphs']} graph(s), {res['graph_breaks']} breaks, "
          f"{res['per_slot_total']:.1f} bytes per slot (minimum {res['per_slot_minimum']})")
    for k in res["kernel_list"]:
        reads = {n: b for n, b in k["reads"].items() if b}
        writes = {n: b for n, b in k["writes"].items() if b}
        print(f"  {k['kernel']}: R {reads} W {writes}")
    print("  per slot:", {r: round(b, 1) for r, b in res["per_slot_bytes"].items()})


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None, help="folder for kv_step_bytes.json (default: print only)")
    ap.add_argument("--quick", action="store_true", help="small shapes only (seconds; the test's sizes)")
    args = ap.parse_args(argv)
    s = SERVING
    serving_layer = ({"batch": 3, "heads": 2, "prompt": 96, "new_tokens": 8} if args.quick else
                     {"batch": s["batch"], "heads": s["kv_heads"], "prompt": s["prompt"], "new_tokens": s["new_tokens"]})
    results = {}
    # One layer of the serving model's step at its own shape, fused as inductor's Triton scheduler
    # fuses for a GPU (needs triton installed; the cpp schedule otherwise).
    try:
        import triton  # noqa: F401

        sched = "triton"
    except ImportError:
        sched = "cpp"
    for products in ("auto", "matmul"):  # matmul: bmm lowered to an aten call, as on CUDA (cuBLAS)
        results[f"layer_{products}_{sched}"] = analyse_layer_step(scheduler=sched, products=products,
                                                                  extern_bmm=products == "matmul", **serving_layer)
    # The whole step of a small 2-layer model (weights, norms, MLP too): compiled and run on the CPU;
    # kernel counts under the Triton scheduling for both variants and for transformers' StaticCache.
    P = 96 if args.quick else 320
    results["model_cpp"] = analyse_model_step(small_model(layers=2), batch=4, prompt=P)
    if sched == "triton":
        from anybudget.kv.cache import KVBudgetCache

        results["model_auto_triton"] = analyse_model_step(small_model(layers=2), batch=4, prompt=P, scheduler=sched)
        KVBudgetCache.decode_products = "matmul"
        try:
            with _bmm_as_extern_call():
                results["model_matmul_triton"] = analyse_model_step(small_model(layers=2), batch=4, prompt=P,
                                                                    scheduler=sched)
        finally:
            KVBudgetCache.decode_products = "auto"
        results["hf_static_triton"] = analyse_hf_static_step(small_model(layers=2), batch=4, prompt=P)
    for title, res in results.items():
        _show(title, res)
    print("kernels per step (2-layer model / one layer):",
          {k: v["kernels"] for k, v in results.items()})
    layer = results[f"layer_auto_{sched}"]
    budget = byte_budget(layer["per_slot_bytes"])
    print("serving byte budget (batch 64, prompt 2k, 20%, 24 layers):", json.dumps(budget, indent=1))
    if args.out:
        from anybudget.io import write_results

        metrics = {**{k: {kk: vv for kk, vv in v.items()} for k, v in results.items()}, "serving_budget": budget}
        write_results("kv_step_bytes", {"serving": SERVING, "quick": args.quick, "layer_shape": serving_layer},
                      metrics, out_dir=args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
