"""Where the compile time of fit_grid's static measurements goes, on the CPU: dynamo's counters and
compile-phase times for a sequence of measured candidates, per compile mode.

The measurement is fit_grid's own (``plan.measure_candidate(serve="static")`` with a
``CompileConfig`` whose backend is given here; transformers compiles the decoding step only, the
prefill runs eagerly), on sub-networks exported from an elastic model of the reference LM's shapes
(random weights, ``--layers`` of its 8), batch 2, prompt 32, 6 new tokens. Modes:
  static  ``dynamic=False``: every candidate compiled for its shapes (fit_grid's default)
  shared  ``dynamic=True`` + dynamic weight shapes + no duck sizing (``--compile shared``: one graph
          per cache kind, one more for one KV group)
  auto    ``dynamic=None`` (dynamo's automatic dynamic) + dynamic weight shapes
Per candidate: seconds of the measurement (mostly the compilation), new graphs, frames compiled,
recompilations, graph breaks; per mode, dynamo's aggregated phase times (``compile_times``).

Measured (this machine's CPU, 2 shared cores, eager backend, 8 layers, h2o): static 9-13 s per
candidate, dynamo tracing 7-12 s of it; shared 85-93 s for its one graph (fake-tensor shape
propagation 82 s: sympy over the symbolic weight sizes); auto 12 s for the first candidate and
96-101 s for its recompilation at the second sub-network. Inductor (CPU, 8 layers): static 95 s,
of which tracing 12 s and C++ codegen/compile the rest. Every mode compiles exactly one frame per
graph and none per decoding step. Numbers: ``--out`` record.

CPU (~2-6 min; --smoke: 2 layers, eager, ~1 min):
  python benchmarks/plan/compile_probe.py --out /tmp/cprobe [--layers 8 --backend eager]
Writes plan_compile_probe.json (results record).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SEQ = "4:1024:h2o:50,4:1024:h2o:20,2:256:h2o:10,3:768:h2o:20,1:256:h2o:20"

CHILD = r"""
import json, sys, time
import torch
torch.set_num_threads(1)
import torch._dynamo.config as dcfg
from torch._dynamo.utils import compile_times, counters
from transformers import CompileConfig, LlamaConfig, LlamaForCausalLM
from anybudget.elastic import make_elastic
from anybudget.plan import Candidate, ServingWorkload, export_candidate, measure_candidate
a = json.loads(sys.argv[1])
cfg = json.load(open(a["config"])) | {"num_hidden_layers": a["layers"]}
torch.manual_seed(0)
em = make_elastic(LlamaForCausalLM(LlamaConfig(**cfg)).eval(), [torch.randint(0, cfg["vocab_size"], (2, 16))])
mode = a["mode"]
cc = CompileConfig(backend=a["backend"], dynamic={"static": False, "shared": True, "auto": None}[mode],
                   **({} if a["backend"] == "inductor" else {"mode": None}))
cc._compile_all_devices = True
wl = ServingWorkload(32, 6, 2, "float32")
rows = []
for item in a["seq"].split(","):
    kv, mlp, pol, pct = item.split(":")
    c = Candidate(int(kv), int(mlp), pol, float(pct)) if pol != "full" else Candidate(int(kv), int(mlp))
    m = export_candidate(em, c, dtype=torch.float32)
    before = {k: sum(counters[k].values()) for k in ("recompiles", "graph_break")}
    g0, f0 = counters["stats"]["unique_graphs"], counters["frames"]["total"]
    t = time.perf_counter()
    measure_candidate(m, c, wl, repeat=1, serve="static", compile_config=cc, share_graphs=mode != "static")
    rows.append({"label": c.label, "seconds": time.perf_counter() - t,
                 "new_graphs": counters["stats"]["unique_graphs"] - g0, "frames": counters["frames"]["total"] - f0,
                 "recompiles": sum(counters["recompiles"].values()) - before["recompiles"],
                 "graph_breaks": sum(counters["graph_break"].values()) - before["graph_break"]})
    print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
raw = compile_times(repr="str", aggregate=True)
print(json.dumps({"rows": rows, "compile_times": raw}))
"""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--backend", default="eager", help="eager (dynamo only), aot_eager or inductor")
    ap.add_argument("--modes", default="static,shared,auto")
    ap.add_argument("--seq", default=SEQ, help="candidates kv:mlp:policy:percent, in order")
    ap.add_argument("--smoke", action="store_true", help="2 layers, eager backend")
    a = ap.parse_args(argv)
    if a.smoke:
        a.layers, a.backend = 2, "eager"
    from anybudget.io import write_results

    env_src = str(ROOT / "src")
    results = {}
    for mode in a.modes.split(","):
        arg = {"config": str(ROOT / "src/anybudget/assets/reflm/config.json"), "layers": a.layers, "mode": mode,
               "backend": a.backend, "seq": a.seq}
        t = time.perf_counter()
        p = subprocess.run([sys.executable, "-c", CHILD, json.dumps(arg)], capture_output=True, text=True,
                           check=False, env={**os.environ, "PYTHONPATH": env_src})
        if p.returncode != 0:
            raise SystemExit(f"mode {mode} failed:\n{p.stderr[-3000:]}")
        res = json.loads(p.stdout.strip().splitlines()[-1])
        res["process_s"] = time.perf_counter() - t
        results[mode] = res
        print(f"{mode}: " + ", ".join(f"{r['label']} {r['seconds']:.1f}s/{r['new_graphs']}g" for r in res["rows"]),
              file=sys.stderr)
    config = {"layers": a.layers, "backend": a.backend, "seq": a.seq, "workload": {"batch": 2, "prompt": 32, "new": 6}}
    metrics = {mode: {"rows": r["rows"], "graphs": sum(x["new_graphs"] for x in r["rows"]),
                      "seconds": sum(x["seconds"] for x in r["rows"]), "compile_times": r["compile_times"]}
               for mode, r in results.items()}
    write_results("plan_compile_probe", config, metrics, {}, out_dir=a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
