"""Where the compile time of fit_grid's static measurements goes, on the CPU: dynamo's counters and
compile-phase times for a sequence of measured candidates, per compile mode.

The measurement is fit_grid's own (``plan.measure_candidate(serve="static")`` with a
``CompileConfig`` whose backend is given here; transformers compiles the decoding step only, the
prefill runs eagerly), on sub-networks exported from an elastic model of the reference LM's shapes
(random weights, ``--layers`` of its 8; v3's widths, ``V3_SHAPES``), batch 2, prompt 32, 6 new tokens. Modes:
  static  ``dynamic=False``: every candidate compiled for its shapes (fit_grid's default)
  shared  ``dynamic=True`` + dynamic weight shapes + no duck sizing (``--compile shared``: one graph
          per cache kind, one more for one KV group)
  auto    ``dynamic=None`` (dynamo's automatic dynamic) + dynamic weight shapes
Per candidate: seconds of the measurement (mostly the compilation), new graphs, frames compiled,
recompilations, graph breaks; per mode, dynamo's aggregated phase times (``compile_times``).

Measured (2 shared CPU cores, eager backend, 8 layers, the 5 default candidates, 2026-11-26): every
mode compiles one frame per graph, no graph break, none per decoding step (the prefill is not
compiled). static: 5 graphs, 47 s in all, 7-12 s per candidate (dynamo 8 s for the last);
shared: 2 graphs (one more for one KV group), 100 s in all, 64 s for the first, dynamo 99 s of
which fake-tensor shape propagation (sympy over the symbolic weight sizes) 84 s; auto: 4 graphs,
164 s in all: 5 s for static first graphs, 71 s and 83 s for the recompilations that made the weight
sizes dynamic. With inductor (CPU, 8 layers, one h2o candidate): static 95 s (dynamo 12 s, C++
codegen and compilation the rest); shared did not finish within 900 s.

CPU (~2-6 min; --smoke: 1 layer, 2 candidates, ~30 s):
  python benchmarks/plan/compile_probe.py --out /tmp/cprobe [--layers 8 --backend eager]
Writes plan_compile_probe.json (results record).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SEQ = "4:1024:h2o:50,4:1024:h2o:20,2:256:h2o:10,3:768:h2o:20,1:256:h2o:20"
# The shapes the record was measured on (reference LM v3; the candidates above name its widths):
# the shipped model's config with these sizes, so a later reference LM does not change the probe.
V3_SHAPES = {"hidden_size": 512, "intermediate_size": 1024, "num_attention_heads": 8, "num_key_value_heads": 4}


def probe(mode: str, layers: int, backend: str, seq: str) -> dict:
    """The candidates of ``seq`` measured in order in one fresh dynamo state; per candidate the counters' deltas."""
    import torch
    from torch._dynamo.utils import (
        compilation_time_metrics,
        compile_times,
        counters,
        guard_failures,
    )
    from transformers import CompileConfig, LlamaConfig, LlamaForCausalLM

    from anybudget.elastic import make_elastic
    from anybudget.plan import Candidate, ServingWorkload, export_candidate, measure_candidate

    torch._dynamo.reset()
    counters.clear()
    compilation_time_metrics.clear()
    cfg = json.loads((ROOT / "src/anybudget/assets/reflm/config.json").read_text()) | V3_SHAPES | {"num_hidden_layers": layers}
    torch.manual_seed(0)
    em = make_elastic(LlamaForCausalLM(LlamaConfig(**cfg)).eval(), [torch.randint(0, cfg["vocab_size"], (2, 16))])
    cc = CompileConfig(backend=backend, dynamic={"static": False, "shared": True, "auto": None}[mode],
                       **({} if backend == "inductor" else {"mode": None}))
    cc._compile_all_devices = True
    wl = ServingWorkload(32, 6, 2, "float32")
    rows = []
    for item in seq.split(","):
        kv, mlp, pol, pct = item.split(":")
        c = Candidate(int(kv), int(mlp), pol, float(pct)) if pol != "full" else Candidate(int(kv), int(mlp))
        m = export_candidate(em, c, dtype=torch.float32)
        before = {"recompiles": 0 if mode == "static" else sum(len(v) for v in guard_failures.values()),
                  "graph_break": sum(counters["graph_break"].values())}  # static: dynamo reset per candidate
        g0, f0 = counters["stats"]["unique_graphs"], counters["frames"]["total"]
        t = time.perf_counter()
        measure_candidate(m, c, wl, repeat=1, serve="static", compile_config=cc, share_graphs=mode != "static")
        rows.append({"label": c.label, "seconds": time.perf_counter() - t,
                     "new_graphs": counters["stats"]["unique_graphs"] - g0, "frames": counters["frames"]["total"] - f0,
                     "recompiles": sum(len(v) for v in guard_failures.values()) - before["recompiles"],
                     "graph_breaks": sum(counters["graph_break"].values()) - before["graph_break"]})
        print(f"{mode}: {json.dumps(rows[-1])}", file=sys.stderr, flush=True)
    return {"rows": rows, "compile_times": compile_times(repr="str", aggregate=True)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--backend", default="eager", help="eager (dynamo only), aot_eager or inductor")
    ap.add_argument("--modes", default="static,shared,auto")
    ap.add_argument("--seq", default=SEQ, help="candidates kv:mlp:policy:percent, in order")
    ap.add_argument("--smoke", action="store_true", help="1 layer, eager backend, 2 candidates")
    a = ap.parse_args(argv)
    if a.smoke:
        a.layers, a.backend, a.seq = 1, "eager", "2:1024:h2o:50,1:512:h2o:20"
    import torch

    from anybudget.io import write_results

    torch.set_num_threads(1)
    results = {mode: probe(mode, a.layers, a.backend, a.seq) for mode in a.modes.split(",")}
    config = {"layers": a.layers, "backend": a.backend, "seq": a.seq, "workload": {"batch": 2, "prompt": 32, "new": 6}}
    metrics = {mode: {"rows": r["rows"], "graphs": sum(x["new_graphs"] for x in r["rows"]),
                      "seconds": sum(x["seconds"] for x in r["rows"]), "compile_times": r["compile_times"]}
               for mode, r in results.items()}
    write_results("plan_compile_probe", config, metrics, {}, out_dir=a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
