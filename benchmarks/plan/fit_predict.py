"""A ``fit_grid.py`` grid's selection run on the CPU from a state folder, no GPU: which plan each fit
would choose and how many new compiled measurements (and quality checks) the GPU call needs.

Every fit of the grid (``--grid``, its levels and the state's workload, candidates, margin and
trials) runs ``plan.fit`` as the GPU call would: the same latency model, memory model and quality
table (the state's), the device's predictions (bfloat16, H2O's fused scores on CUDA), and a
measurement function that returns the state's measurement of a candidate already measured on
that device (what the GPU call reuses; one it measures again, ``fit_state.reusable``, stands in
for its new measurement and counts as one) and, for any other, a simulated one: its
prediction (``--error none``) or its prediction times the worst measured / predicted ratio among the
state's measurements (``--error worst``: memory and latency apart, >= 1; a candidate that then
breaks its budget is a fall-back, as on the device). Budgets the state already holds are not run
again (a GPU call skips them too). The state folder is only read: the weights are unpacked into
a temporary folder.

    python benchmarks/plan/fit_predict.py --state .carry/plan/fit_state --grid bind --out /tmp/fp

Writes ``--out/plan_fit_grid[_GRID]_predicted.json`` (a results record: per budget the three fits'
predicted choices with the trials they would measure; the new measurements and checks; the device
seconds they take at the state's recorded compile and check times) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import lzma
import shutil
import sys
import tempfile
import time
from pathlib import Path

from anybudget import plan as P
from anybudget.budget import BudgetError
from anybudget.io import write_results
from anybudget.plan.fit import predict_all

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
import fit_grid as G
from fit_report import summarize
from fit_state import ELASTIC_FILES, WEIGHTS_XZ, State, reusable

LOAD_S = 20.0  # a GPU call's imports, weights and tar besides its phases (call 3: 240 s total, 223 s of phases)


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--state", required=True, help="a fit_grid.py state folder with phases build, quality and latency done")
    ap.add_argument("--grid", choices=sorted(G.GRIDS), default="bind")
    ap.add_argument("--mem-levels", default=None)
    ap.add_argument("--latency-levels", default=None)
    ap.add_argument("--latency-scale", choices=("full", "range"), default=None)
    ap.add_argument("--error", choices=("none", "worst"), default="none",
                    help="a new candidate's simulated measurement: its prediction, or times the worst measured/predicted "
                         "ratio of the state's measurements")
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    cfg = json.loads((Path(a.state) / "progress.json").read_text())["config"]
    # fit_grid's own arguments for this state: its fingerprint must match (State checks it)
    gargs = ["--out", a.out, "--grid", a.grid, "--prompt", str(cfg["prompt"]), "--new", str(cfg["new"]),
             "--batch", str(cfg["batch"]), "--serve", cfg["serve"], "--policies", cfg["policies"],
             "--kv-budgets", cfg["kv_budgets"], "--quality-seqs", str(cfg["quality_seqs"]),
             "--max-trials", str(cfg["max_trials"]), "--margin", str(cfg["margin"]),
             "--train-steps", str(cfg["train_steps"]), "--train-batch", str(cfg["train_batch"]),
             "--train-seq", str(cfg["train_seq"]), "--lr", str(cfg["lr"])]
    for flag in ("mem_levels", "latency_levels", "latency_scale"):
        if getattr(a, flag) is not None:
            gargs += ["--" + flag.replace("_", "-"), getattr(a, flag)]
    g = G.parse(gargs + (["--smoke"] if cfg.get("smoke") else []))
    if cfg.get("smoke"):  # --smoke sets the tiny workload; the state's values stand
        g.prompt, g.new, g.batch, g.quality_seqs, g.max_trials = (cfg[k] for k in ("prompt", "new", "batch",
                                                                                 "quality_seqs", "max_trials"))
        g.train_steps, g.train_batch, g.train_seq = cfg["train_steps"], cfg["train_batch"], cfg["train_seq"]
    g.state, g.error = a.state, a.error
    return g


def load_model(st: State, tmp: Path):
    """The state's elastic build on the CPU, its weights unpacked into ``tmp`` (the state is left as it is)."""
    e = tmp / "elastic"
    (e / "model").mkdir(parents=True)
    for name in ELASTIC_FILES:
        if (st.elastic / name).is_file():
            shutil.copyfile(st.elastic / name, e / name)
    for f in (st.elastic / "model").iterdir():
        if f.is_file() and f.name != "model.safetensors":
            shutil.copyfile(f, e / "model" / f.name)
    raw = st.elastic / "model" / "model.safetensors"
    data = raw.read_bytes() if raw.is_file() else lzma.decompress((st.elastic / WEIGHTS_XZ).read_bytes())
    (e / "model" / "model.safetensors").write_bytes(data)
    return P.load_elastic_folder(e, device="cpu")[0]


def error_ratios(memo: dict, rows: dict) -> dict:
    """The worst measured / predicted ratio (>= 1) of peak memory and step latency among ``memo``."""
    out = {"mem": 1.0, "latency": 1.0}
    for lab, m in memo.items():
        r = rows.get(lab)
        if r is None:
            continue
        out["mem"] = max(out["mem"], m["peak_bytes"] / r["mem"])
        out["latency"] = max(out["latency"], m["step_s"] / r["latency_s"])
    return out


def main(argv=None) -> int:
    a = parse(argv)
    t0 = time.perf_counter()
    st = State(a.state, G.fingerprint(a))
    missing = [p for p in ("build", "quality", "latency") if not st.done(p)]
    if missing:
        raise SystemExit(f"error: --state {a.state!r} has not done {', '.join(missing)}: run fit_grid.py first")
    quality = P.Quality.from_dict(st["quality"])
    lat = P.LatencyModel.from_dict(st["latency"]["model"])
    device = lat.device
    gpu = device != "cpu"
    policies, pcts = tuple(p for p in a.policies.split(",") if p), tuple(G.levels(a.kv_budgets))
    wl = P.ServingWorkload(a.prompt, a.new, a.batch, "bfloat16" if gpu else "float32")
    with tempfile.TemporaryDirectory() as tmp:
        em = load_model(st, Path(tmp))
        rows = predict_all(em, wl, quality, lat, policies, pcts, fused=gpu)
        by_label = {r["label"]: r for r in rows}
        memo = {lab: v["measured"] for lab, v in st.get("measured", {}).items() if v["device"] == device}
        ratio = error_ratios(memo, by_label) if a.error == "worst" else {"mem": 1.0, "latency": 1.0}
        budgets, full = G.grid(a, rows)
        recorded = st.get(a.grid_key, [])
        new: list[str] = []

        def measure(model, c, w):
            if c.label in memo and reusable(memo[c.label]):
                return dict(memo[c.label])
            if c.label in memo:  # measured again on the device (fit_state.reusable): its old numbers stand in
                if c.label not in new:
                    new.append(c.label)
                return dict(memo[c.label]) | {"simulated": True}
            if c.label not in new:
                new.append(c.label)
            r = by_label[c.label]
            return {"step_s": r["latency_s"] * ratio["latency"], "peak_bytes": r["mem"] * ratio["mem"],
                    "peak_kind": "simulated", "simulated": True}

        entries, checks = [], {}
        for i, b in enumerate(budgets):
            entry = {"budget": b, "recorded": i < len(recorded)}
            if entry["recorded"] and recorded[i].get("budget") not in (None, b):  # as fit_grid refuses a drift
                raise ValueError(f"budget {i}: the state recorded {recorded[i]['budget']!r}, this grid computes "
                                 f"{b!r}: the grid's levels or the state's reference numbers changed")
            for kind, tech in G.KINDS.items():
                try:
                    p = P.fit(em, b, wl, quality, lat, policies, pcts, tech, a.max_trials, margin=a.margin,
                              measure=measure, fused=gpu)
                    entry[kind] = G.plan_row(p) | {"simulated": [t["label"] for t in p.trials
                                                                 if t["measured"].get("simulated")]}
                except BudgetError as e:
                    entry[kind] = {"error": str(e)}
                lab = entry[kind].get("chosen")
                if lab is not None and lab not in st["checked"]:
                    checks[lab] = {"predicted_ppl": by_label[lab]["ppl"]}
            if entry["recorded"]:  # a GPU call skips it; the simulation of it is a check of this script
                entry["matches_recorded"] = all(entry[k].get("chosen") == recorded[i][k].get("chosen") for k in G.KINDS)
            entries.append(entry)
    todo = [e for e in entries if not e["recorded"]]
    new_run = sorted({lab for e in todo for k in G.KINDS for lab in e[k].get("simulated", [])})
    new_checks = sorted({e[k]["chosen"] for e in todo for k in G.KINDS if e[k].get("chosen") in checks})
    d = st["durations"]
    compile_s = max([v for k, v in d.items() if k.startswith("compile:")] or [60.0])
    check_s = d.get("check", 20.0)
    seconds = LOAD_S + len(new_run) * compile_s + len(new_checks) * check_s + len(todo) * d.get("budget", 1.0)
    checked = st["checked"]  # measured ppl of plans checked on the device (new choices: predicted only)
    summary = {k.replace("_measured", "_simulated") if k == "plans_meet_budget_measured" else k: v
               for k, v in summarize(entries, checked).items() if "measured_ppl" not in k} | {
        "budgets_to_run": len(todo), "budgets_needing_a_measurement": sum(
            any(e[k].get("simulated") for k in G.KINDS) for e in todo),
        "new_measurements": len(new_run), "new_quality_checks": len(new_checks),
        "compile_s_each": compile_s, "check_s_each": check_s, "device_seconds_estimate": seconds,
        "guard_seconds_estimate": LOAD_S + len(new_run) * 1.15 * compile_s + len(new_checks) * 1.15 * check_s,
        "recorded_budgets_reproduced": sum(e.get("matches_recorded", False) for e in entries),
        "recorded_budgets": sum(e["recorded"] for e in entries)}
    config = {"state": str(a.state), "grid": a.grid, "mem_levels": a.mem_levels, "latency_levels": a.latency_levels,
              "latency_scale": a.latency_scale, "error": a.error, "error_ratios": ratio, "device": device,
              "workload": wl.__dict__, "policies": list(policies), "kv_percents": list(pcts),
              "max_trials": a.max_trials, "margin": a.margin, "cpu_seconds": time.perf_counter() - t0}
    metrics = {"summary": summary, "grid": entries, "new_measurements": new_run, "new_quality_checks": new_checks,
               "full_model": {"label": full["label"], "predicted_mem": full["mem"],
                              "predicted_latency_s": full["latency_s"], "ppl": full["ppl"]}}
    path = write_results(f"{a.record}_predicted", config, metrics, out_dir=a.out)
    for e in entries:
        cells = [f"{k}={e[k].get('chosen', 'none')}" + (f" ({e[k]['predicted_ppl']:.2f})" if "chosen" in e[k] else "")
                 for k in G.KINDS]
        print(f"{e['budget']:<36} " + "  ".join(cells) + ("  [recorded]" if e["recorded"] else ""))
    print(f"wrote {path}: {json.dumps(summary)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
