"""Why the one-channel (A-bar = 1) starts behind at depth 2: its output and gradients at initialisation (CPU).

Table 2 v2's one-L2 runs learn last. This measures, at initialisation (Table 2 v2's model: seed, d_model
128, 16 learned states + the one-channel, depth 2) on MQAR batches at seq 256 (64 pairs):

  * per layer, the RMS (over batch and channels) of the scan's output from the one-channel alone,
    ``C_t[one] * h_t[one]`` with ``h_t[one] = sum_{s<=t} delta_s B_s[one] x_s`` (a running sum: Eq. 5 with
    A-bar = 1), against the output of the 16 learned channels together, at tokens 16, 64, 128, 256;
  * the norm of the loss's gradient on ``x_proj``'s rows that make B and C of the one-channel,
    against the mean over the learned channels' rows (one batch, the training loss).

Both come from the model's own modules: each layer's input is captured by a forward hook, then split
into the two groups of channels with the reference scan (C masked to one group, no D, no gate).

    python benchmarks/ssm/one_channel_check.py [--seeds 123,124] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
POSITIONS = (16, 64, 128, 256)


def group_outputs(layer, hidden: torch.Tensor) -> dict[str, torch.Tensor]:
    """The scan's output ``(batch, d_inner, seq)`` from the one-channel alone and from the learned channels
    alone (C masked to the group; no D, no gate): the two add up to the scan of all channels."""
    from anybudget.ssm.scan import selective_scan

    _, x, _, dt, B, C = layer.scan_inputs(hidden)
    n_one = layer.config.n_ones
    out = {}
    for name, cols in (("one", slice(0, n_one)), ("learned", slice(n_one, n_one + layer.config.d_state))):
        Cm = torch.zeros_like(C)
        Cm[:, cols] = C[:, cols]
        out[name] = selective_scan(x, dt, layer.A(), B, Cm, None, z=None, delta_bias=layer.dt_proj.bias.float(),
                                   delta_softplus=True, backend="ref")
    return out


def channel_outputs(layer, hidden: torch.Tensor) -> dict[str, list[float]]:
    """RMS (over batch and channels) of each group's output at the tokens of POSITIONS within the sequence."""
    seq = hidden.shape[1]
    return {k: [float(y[..., p - 1].pow(2).mean().sqrt()) for p in POSITIONS if p <= seq]
            for k, y in group_outputs(layer, hidden).items()}


def check(seed: int, plan: dict, batch: int) -> dict:
    import table2_worker as w

    from anybudget.ssm.mqar import multiquery_ar

    model = w.build("one", 2, seed, plan).float().eval()
    L = plan["seq_len"]
    inputs, labels = multiquery_ar(plan["vocab_size"], L, L // 4, batch, seed=seed)
    captured = []
    hooks = [m.register_forward_pre_hook(lambda mod, args: captured.append((mod, args[0].detach())))
             for m in model.modules() if type(m).__name__ == "Mamba"]
    logits = model(inputs)
    logits = logits if torch.is_tensor(logits) else logits[0]
    for h in hooks:
        h.remove()
    loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)
    loss.backward()
    layers = []
    for i, (mod, hid) in enumerate(captured):
        with torch.no_grad():
            rms = channel_outputs(mod, hid)
        c = mod.config
        g = mod.x_proj.weight.grad  # rows: [dt rank | B (one, learned) | C (one, learned)]
        nb = c.d_state_total
        rows = {"B": g[c.rank:c.rank + nb], "C": g[c.rank + nb:c.rank + 2 * nb]}
        grad = {}
        for k, r in rows.items():
            norms = r.norm(dim=1)
            grad[k] = {"one": float(norms[:c.n_ones].mean()), "learned_mean": float(norms[c.n_ones:].mean()),
                       "ratio": float(norms[:c.n_ones].mean() / norms[c.n_ones:].mean())}
        layers.append({"layer": i, "rms_at": dict(zip([str(p) for p in POSITIONS], zip(rms["one"], rms["learned"]))),
                       "rms_one_over_learned": [a / b for a, b in zip(rms["one"], rms["learned"])],
                       "x_proj_grad_rows": grad})
    return {"seed": seed, "loss": float(loss.detach()), "layers": layers}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="123,124", help="comma list of Table 2 v2 seeds")
    ap.add_argument("--batch", type=int, default=16, help="MQAR examples (seq 256, 64 pairs)")
    ap.add_argument("--out", default=None, help="results folder (default benchmarks/results/ssm)")
    args = ap.parse_args(argv)
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        ap.error(f"--seeds {args.seeds!r}: a comma list of integers")
    if not seeds or args.batch < 1:
        ap.error(f"--seeds {args.seeds!r} / --batch {args.batch}: need at least one seed and batch >= 1")
    sys.path.insert(0, str(HERE))
    import table2_scaled as t2

    from anybudget.io import results_dir, write_results

    plan = {**t2.PLAN, **t2.V2}
    torch.set_num_threads(min(2, torch.get_num_threads()))
    runs = [check(s, plan, args.batch) for s in seeds]
    for r in runs:
        for lay in r["layers"]:
            print(f"seed {r['seed']} layer {lay['layer']}: one/learned RMS at {POSITIONS}: "
                  + ", ".join(f"{x:.2f}" for x in lay["rms_one_over_learned"])
                  + f"; x_proj grad rows one/learned: B {lay['x_proj_grad_rows']['B']['ratio']:.1f}, "
                    f"C {lay['x_proj_grad_rows']['C']['ratio']:.1f}")
    config = {"model": "Table 2 v2 one_L2 at initialisation", "seq_len": plan["seq_len"], "pairs": plan["seq_len"] // 4,
              "batch": args.batch, "positions": list(POSITIONS), "scan": "ref (float32)"}
    path = write_results("ssm_one_channel_check", config, {"runs": runs}, out_dir=args.out or results_dir("ssm_one_channel_check"))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
