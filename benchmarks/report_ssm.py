"""The MQAR training-step speed table (``ssm_train_speed.json``), the Gluon backward's scan table
(``ssm_grads_gluon.json``) and the folded scan's (``ssm_scan_fold.json``) for the results page (``report.py``)."""

from __future__ import annotations

from report_lm_elastic import dev, load, rel


def _why(s: dict) -> str:
    """A skipped or failed variant's reason, its first line, fit for a table cell."""
    why = s.get("skipped") or s.get("error", "")
    return why.split("\\n")[0].split("\n")[0][:90].replace("|", "/")


def ssm_train_speed_md():
    """Per variant and depth: ms/step, the ratio to the reference step of the same run, kernels; the scan's bound."""
    r = load("ssm_train_speed")
    if not r or "variants" not in r["config"]:
        return ""
    c, m = r["config"], r["metrics"]
    ref = {s["layers"]: s["step_s"] for s in m["steps"] if s["variant"] == "reference" and "step_s" in s}
    out = ("### Polarized Mamba: the MQAR training step\n\n"
           f"{c['model']}, batch {c['batch']}, the reference training mixture (seq 64-1024); {c['timed_steps']} "
           "timed steps per variant, all variants in one process (`benchmarks/ssm/train_speed.py`). x ref: the "
           "reference step of the same run divided by the variant's step (the target is 3x).\n\n"
           "| variant | depth | ms / step | x ref | kernels / step | kernel ms / step | warm-up s |\n"
           "|---|---|---|---|---|---|---|\n")
    for s in sorted(m["steps"], key=lambda s: (s["layers"], s.get("step_s") or 1e9)):
        if "step_s" not in s:
            out += f"| {s['variant']} | {s['layers']} | - | - | - | - | {_why(s)} |\n"
            continue
        x = ref[s["layers"]] / s["step_s"] if s["layers"] in ref else float("nan")
        out += (f"| {s['variant']} | {s['layers']} | {s['step_s'] * 1e3:.1f} | {x:.2f}x | "
                f"{s['kernels_per_step']:.0f} | {s['kernel_ms_per_step']:.1f} | {s['warmup_s']:.0f} |\n")
    lc = m.get("loss_curves", {}).get("max_rel_diff_vs_reference")
    if lc:
        out += (f"\nFixed-seed loss curve against the reference step (depth {m['loss_curves']['layers']}), largest "
                "relative difference: " + ", ".join(f"{k} {v:.1e}" for k, v in lc.items()) + ".\n")
    sc = m.get("scan")
    if sc:
        sh = sc["shape"]
        out += (f"\nThe Triton scan alone, batch {sh['batch']}, d_inner {sh['d_inner']}, d_state {sh['d_state']}, "
                f"seq {sh['seq']}, forward + backward. Bound: its bytes at the copy bandwidth measured in the same "
                f"run ({sc['measured_copy_bw_Bps'] / 1e12:.2f} TB/s). Model path: the 16 learned states in the "
                "kernel, the 2 polarized ones in closed form (what the step runs); kernel 18 states: all in the "
                "kernel.\n\n| layout | inputs | path | fwd+bwd ms | bound ms | x bound |\n|---|---|---|---|---|---|\n")
        for lay, v in sc["by_variant"].items():
            for k in ("fp32", "bf16", "fp32_kernel_18_states", "bf16_kernel_18_states"):
                if k in v:
                    x, path = v[k], "kernel 18 states" if "18" in k else "model path"
                    out += (f"| {lay} | {k.split('_')[0]} | {path} | {x['fwd_bwd_s'] * 1e3:.2f} | "
                            f"{x['bound_s_measured_copy'] * 1e3:.3f} | {x['x_over_bound_measured']:.0f}x |\n")
    png = rel("ssm_train_speed_loss", "png")
    return out + f"\n![loss curves]({png})\n\nSource: `{rel('ssm_train_speed')}` ({dev(r)}).\n"


def ssm_grads_gluon_md():
    """The chunked backward with the Gluon grads kernel against the time-major Triton one (``ssm_grads_gluon.json``):
    the scan at seq 4096 beside its memory-traffic bound."""
    r = load("ssm_grads_gluon")
    if not r:
        return ""
    sc = r["metrics"]["scan_4096"]
    sh = sc["shape"]
    out = ("### Polarized Mamba: the scan with the Gluon grads kernel\n\n"
           f"Batch {sh['batch']}, d_inner {sh['d_inner']}, d_state {sh['d_state']} (16 learned in the kernels, the 2 "
           f"polarized in closed form), seq {sh['seq']}, float32, time_first forward (8, 16, 4), time-major adjoint; "
           "only the grads kernel differs (`benchmarks/ssm/grads_gluon_speed.py`). Bound: the bytes each pass must "
           f"move at the copy bandwidth measured in the same run ({r['config']['measured_copy_bw_Bps'] / 1e12:.2f} "
           "TB/s); the target is 5x.\n\n"
           "| grads kernel | tiles | fwd ms | bwd ms | fwd+bwd ms | bound ms | x bound | largest rel. error |\n"
           "|---|---|---|---|---|---|---|---|\n")
    for name, row in sc["rows"].items():
        if "fwd_bwd_s" not in row:
            out += f"| {name} | {tuple(row['tiles'])} | - | - | - | - | - | {_why(row) or row.get('refused', '')} |\n"
            continue
        tiles = tuple(row["tiles"]) + ((f"maxnreg {row['bwd_maxnreg']}",) if row.get("bwd_maxnreg") else ())
        out += (f"| {name} | {', '.join(map(str, tiles))} | {row['fwd_s'] * 1e3:.2f} | {row['bwd_s'] * 1e3:.2f} | "
                f"{row['fwd_bwd_s'] * 1e3:.2f} | {row['bound_fwd_bwd_s'] * 1e3:.3f} | "
                f"{row['fwd_bwd_x_over_bound']:.1f}x | {max(row['rel_err'].values()):.1e} |\n")
    comp = sc.get("compiled") or {}
    if comp:
        out += ("\nThe same path under `torch.compile(fullgraph=True)` (the scan as the custom op, the closed-form "
                "channels and gating fused around it, as the training step runs it): forward+backward, kernel time "
                "and the scan's own kernels (grads, forward, adjoint, carry).\n\n"
                "| grads kernel | fwd+bwd ms | x bound | kernel ms | scan kernels ms | largest rel. error |\n"
                "|---|---|---|---|---|---|\n")
        own = ("grads", "fwd_kernel", "adjoint", "carry")
        for name, row in comp.items():
            if "fwd_bwd_s" not in row:
                out += f"| {name} | - | - | - | - | {_why(row) or row.get('refused', '')} |\n"
                continue
            scan_ms = sum(k["us_per_call"] for k in row["top_kernels"] if any(o in k["kernel"] for o in own)) / 1e3
            out += (f"| {name} | {row['fwd_bwd_s'] * 1e3:.2f} | {row['fwd_bwd_x_over_bound']:.1f}x | "
                    f"{row['kernel_ms_per_call']:.2f} | {scan_ms:.2f} | {max(row['rel_err'].values()):.1e} |\n")
    return out + f"\nSource: `{rel('ssm_grads_gluon')}` ({dev(r)}).\n"


def ssm_scan_fold_md():
    """The scan with the polarized channels folded into its kernels (``ssm_scan_fold.json``): eager, compiled and
    captured forward + backward beside the memory-traffic bound, and where the compiled call's kernel time goes
    (profiled without the graph)."""
    r = load("ssm_scan_fold")
    if not r:
        return ""
    m = r["metrics"]
    sh = m["shape"]
    out = ("### Polarized Mamba: the scan with the polarized channels in its kernels\n\n"
           f"Batch {sh['batch']}, d_inner {sh['d_inner']}, {sh['learned']} learned + 2 polarized states, seq "
           f"{sh['seq']}, float32; forward + backward of `selective_scan(fixed_channels=(1, 1))` "
           "(`benchmarks/ssm/scan_fold_speed.py`). split: the polarized channels' closed form, D and the gate in "
           "PyTorch ops around the kernels; fold: inside them (`ScanBlocks.fold_fixed`). captured: the compiled call "
           "replayed as one CUDA graph, as the training step runs it. Bound: each tensor once at the copy bandwidth "
           f"measured in the same run ({m['measured_copy_bw_Bps'] / 1e12:.2f} TB/s): {m['bound_fwd_bwd_s'] * 1e3:.3f} "
           f"ms; the target is 5x ({m['target_s'] * 1e3:.2f} ms).\n\n"
           "Kernels: the compiled call's, profiled without the graph.\n\n"
           "| configuration | eager ms | compiled ms | captured ms | captured x bound | kernels | "
           "grads / fwd / adjoint / carry / other kernel ms | largest rel. error |\n|---|---|---|---|---|---|---|---|\n")
    own = ("grads", "fwd_kernel", "adjoint", "carry")
    for name, row in m["rows"].items():
        if "captured_fwd_bwd_s" not in row:
            out += f"| {name} | - | - | - | - | - | - | {_why(row) or row.get('refused', '')} |\n"
            continue
        k = row["compiled_kernels"]
        parts = [sum(t["us_per_call"] for t in k["top_kernels"] if o in t["kernel"]) / 1e3 for o in own]
        other = k["kernel_ms_per_call"] - sum(parts)
        err = max(v for errs in row["rel_err"].values() for v in errs.values())
        out += (f"| {name} | {row['eager_fwd_bwd_s'] * 1e3:.2f} | {row['compiled_fwd_bwd_s'] * 1e3:.2f} | "
                f"**{row['captured_fwd_bwd_s'] * 1e3:.2f}** | {row['captured_x_over_bound']:.2f}x | "
                f"{k['kernels_per_call']:.0f} | " + " / ".join(f"{x:.2f}" for x in (*parts, other)) +
                f" | {err:.1e} |\n")
    return out + f"\nSource: `{rel('ssm_scan_fold')}` ({dev(r)}).\n"
