"""README sections for `prune` (lottery tickets) and `splat` (LightGaussian), rendered from
benchmarks/results/*.json by benchmarks/report.py."""

from __future__ import annotations

import json

from report_lm_elastic import RES, dev, load, rel

CONTROLS = ("random_pruning", "random_reinit", "oneshot", "shuffled")
# path-traced with Blender Cycles (make_scenes_pbr.py: the three), then rasterised by Panda3D (make_scenes.py)
SCENES = ("pbr_garden", "pbr_room", "pbr_truck", "garden", "panda", "tabletop")


def _pct(s):
    return "none" if s is None else f"{100 * s:.0f}%"


def _constant(t):
    """True when the full model scored the same in every run (std 0): on a classification task,
    the sign of a majority-class predictor, against which every level 'wins'."""
    return len({round(v, 6) for v in t["full"]["runs"]}) == 1


def _fps_timed(r) -> bool:
    """Whether a LightGaussian record timed FPS over >= 1 s: its config says so, or (records made before
    the config said it) it was made after the benchmark began to, at 2026-11-26 01:44 (commit 63f9479)."""
    return bool(r["config"].get("fps_min_seconds", r["date"] >= "2026-11-26T01:44"))


def _imp_table(tasks: dict) -> str:
    """One row per task: full, IMP at 50/70/90%, sparsest winning level of IMP and each control, the paper's,
    the MLM mask's transfer (own ticket), the 2:4 mask (IMP at 50%)."""
    out = ""
    out += ("| task (metric) | full | IMP 50% | IMP 70% | IMP 90% | sparsest winning: IMP | random pruning | "
            "random re-init | one-shot | shuffled | paper (task) | MLM mask 70% (own) | 2:4 (IMP 50%) |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
    flat = []
    for name, t in tasks.items():
        f = t["full"]
        imp = t["imp"]
        cells = [f"{imp[k]['mean']:.3f}" if k in imp else "" for k in ("0.5", "0.7", "0.9")]
        sw = t.get("sparsest_winning", {})
        ctrl = [_pct(sw.get(k)) if k in sw else "n/a" for k in CONTROLS]
        paper = f"{_pct(t['paper_sparsest'])} ({t['paper_analogue']})" if t.get("paper_sparsest") is not None else "-"
        tr = t.get("transfer_mlm")
        trs = f"{tr['mean']:.3f} ({tr['own_ticket']['mean']:.3f})" if tr else "-"
        s24 = t.get("sparse24")
        s24s = f"{s24['mean']:.3f} ({s24['imp_at_50']['mean']:.3f})" if s24 else "-"
        label = f"{name} ({t['metric'].split('.')[-1]})"
        if _constant(t):
            label += " *"
            flat.append(name)
        out += (f"| {label} | {f['mean']:.3f} +- {f['std']:.3f} | " + " | ".join(cells) + f" | **{_pct(sw['imp'])}** | "
                + " | ".join(ctrl) + f" | {paper} | {trs} | {s24s} |\n")
    if flat:
        out += (f"\n\\* {', '.join(flat)}: the full model scores the same in every run (std 0), the share of the "
                "majority class on its dev split: it has not learned the task, and every pruned model that also predicts the "
                "majority class 'wins', so this task does not tell tickets from controls.\n")
    return out


def _x(v):
    return f"{v:.2f}x" if v is not None else "-"


def _speed24_md(sp: dict) -> str:
    """The 2:4 table of a speed24 record: eager and CUDA-graph speed-ups where timed (records before
    the graph timing have one eager ratio), correctness, the Amdahl bound and accuracy where recorded."""
    out = ("| backend | matmuls: max rel. error | matmuls: speed-up eager / graph | model: logits rel. error, "
           "argmax agreement | model: speed-up eager / graph (bound) | model: dev accuracy dense -> 2:4 kernels |\n"
           "|---|---|---|---|---|---|\n")
    for b, v in sp["metrics"].items():
        if not isinstance(v, dict) or "bert_base_layer" not in v:
            continue
        lay, mod = v["bert_base_layer"], v.get("model", {})
        errs = {r["error"] for r in lay["matrices"].values() if "error" in r}
        if errs:
            out += f"| {b} | {min(errs)} | - | - | - | - |\n"
            continue
        rerr = max(r["rel_err"] for r in lay["matrices"].values())
        lsp = f"{_x(lay.get('layer_speedup_eager', lay.get('layer_speedup')))} / {_x(lay.get('layer_speedup_graph'))}"
        mcell = (f"{mod['rel_err_logits']:.1e}, {mod['argmax_agreement']:.2f}" if "rel_err_logits" in mod
                 else mod.get("error", "-"))
        msp = (f"{_x(mod.get('speedup_eager', mod.get('speedup')))} / {_x(mod.get('speedup_graph'))}"
               + (f" ({mod['bound']:.2f}x)" if "bound" in mod else ""))
        acc = "-"
        if "accuracy_sparse_kernels" in mod and isinstance(mod["accuracy_sparse_kernels"], dict):
            acc = (f"{mod['accuracy_dense']['dev.accuracy']:.3f} -> "
                   f"{mod['accuracy_sparse_kernels']['dev.accuracy']:.3f}")
        out += f"| {b} | {rerr:.1e} | {lsp} | {mcell} | {msp} | {acc} |\n"
    if any("speedup" in v.get("model", {}) for v in sp["metrics"].values() if isinstance(v, dict)):
        out += ("\nMeasured before the export handed the kernel a contiguous input (`sparse24.Linear24`): the "
                "model's logits error is cuSPARSELt misreading the pooler's strided input `hidden[:, 0]`, each "
                "matrix alone being right; eager timing only, which includes torch's cuSPARSELt plan set-up on the "
                "host at every call.\n")
    return out + f"\nSource: `{rel(sp['name'])}` ({dev(sp)}).\n"


def prune_md(full=True):
    r = load("prune_imp")
    if not r:
        return ""
    pre = load("prune_pretrain_bert")
    tasks = r["metrics"]["tasks"]
    c = r["config"]
    out = "### Lottery tickets in a pre-trained BERT (IMP with rewinding)\n\n"
    if pre:
        m = pre["metrics"]
        out += (f"The BERT: {m['params'] / 1e6:.1f}M parameters (hidden 192, 4 layers), pre-trained here with masked-LM "
                f"for {m['seconds'] / 60:.1f} min on one GPU ({m['tokens_seen'] / 1e6:.0f}M tokens of the Debian "
                f"documentation corpus): held-out MLM accuracy {m['mlm_accuracy']:.3f} "
                f"(`prune_pretrain_bert.json`, {dev(pre)}). ")
    out += (f"IMP: {c['rounds']} rounds of 10% of the encoder weights, rewinding to the pre-trained weights, "
            f"{c['seeds']} seeds; fine-tuning {c['epochs']:g} epochs at lr {c['lr']:g}. A sparsity *wins* when its mean is "
            "within one standard deviation of the full model's (the paper's criterion); the table gives the sparsest "
            "winning level of IMP and of each control at 50/70/90%, the paper's sparsest winning level on the GLUE "
            "task this one stands in for, the mask found by MLM IMP at 70% transferred to the task (with the "
            "task's own 70% ticket beside it), and a 2:4 magnitude mask.\n\n")
    out += _imp_table(tasks)
    out += f"\n![imp curves]({rel('prune_imp_curves', 'png')})\n"
    sp = load("prune_speed24")
    if sp and full:
        out += ("\n2:4 semi-structured kernels against dense (fp16, same run), each backend checked against the dense "
                "product of the same masked weights: BERT-base-sized matrices (768/3072 wide, 16k tokens) and the "
                "small BERT above under its 2:4 magnitude mask, with an untrained classifier head (random batch):\n\n")
        out += _speed24_md(sp)
    out += f"\nSource: `{rel('prune_imp')}` ({dev(r)}).\n"
    return out + _minilm_md()


def _minilm_md() -> str:
    r = load("prune_imp_minilm")
    if not r:
        return ""
    c, m = r["config"], r["metrics"]
    head = RES / "prune" / "prune_minilm_runs" / "head_on_frozen_encoder_run2.json"
    h = json.loads(head.read_text()) if head.exists() else None
    out = ("\n### The same on all-MiniLM-L6-v2\n\n"
           "all-MiniLM-L6-v2 (BERT architecture, 6 layers, hidden 384, 22.7M parameters; contrastively fine-tuned "
           "for sentence embeddings, so not a masked-LM model and shipped without an MLM head). ")
    if h:
        out += (f"An MLM head trained on the frozen encoder for {h['metrics']['seconds'] / 60:.1f} min reaches MLM "
                f"accuracy {h['metrics']['mlm_accuracy']:.3f} (`prune_minilm_runs/head_on_frozen_encoder_run2.json`, "
                f"{dev(h)}); MLM IMP's round 0 then trains the whole model {c['mlm_steps']} steps (the 'full' row). ")
    out += (f"Same protocol as above: {c['rounds']} rounds, {c['seeds']} seeds, fine-tuning {c['epochs']:g} epochs at lr "
            f"{c['lr']:g}, controls at 50/70/90%, {len(m['skipped'])} jobs skipped.\n\n")
    out += _imp_table(m["tasks"])
    out += (f"\n![imp curves MiniLM]({rel('prune_imp_minilm_curves', 'png')})\n"
            f"\nSource: `{rel('prune_imp_minilm')}` ({dev(r)}; its 2:4 speed section predates the export fix "
            "and is not quoted).\n")
    sp = load("prune_speed24_minilm")
    if sp:
        out += _speed24_minilm_md(sp, load("prune_speed24_minilm_model"), m["tasks"])
    return out


def _speed24_minilm_md(sp: dict, spm: dict | None, tasks: dict) -> str:
    """The MiniLM 2:4 export on the GPU: per record and output layout, the model's dense and 2:4 times
    (eager, CUDA-graph replay, kernels alone), the bound, exactness and the accuracy on the kernels,
    beside the IMP record's unstructured 50% ticket and 2:4 mask (3 seeds)."""
    t = sp["metrics"].get("ticket", {})
    task = t.get("task", "rt")
    out = (f"\n**2:4 export on the GPU.** The MiniLM 2:4 ticket ({task}, seed {t.get('seed', 0)}: the 2:4 magnitude "
           "mask on theta_0, fine-tuned as in the IMP runs) exported with `prune.sparse24.to_semi_structured` "
           "(torch's semi-structured tensors, fp16), against the dense fp16 model with the same masked weights, "
           "same run, a dev batch of 256 sentences. Eager = a plain call (includes torch's cuSPARSELt set-up on "
           "the host at every call); graph = replayed from a CUDA graph (what `torch.compile(mode='reduce-overhead')` "
           "or a serving loop runs); kernels = GPU time alone; bound = dense / (dense - half the converted "
           "matmuls' dense time). torch's CUTLASS backend refuses compute capability 9.0 "
           "(`prune_minilm_runs/prune_speed24_minilm_call1_stopped.json`), so cuSPARSELt is the H100's only one.\n\n"
           "| record | output layout | dense eager / graph ms | 2:4 eager / graph / kernels ms | speed-up graph (kernels) | "
           "bound | logits rel. error, argmax agreement | dev / test accuracy on the 2:4 kernels |\n"
           "|---|---|---|---|---|---|---|---|\n")
    for rec in (sp, spm):
        if not rec:
            continue
        cs = rec["metrics"].get("cusparselt", {})
        for part, lay in (("model", "transposed by the kernel (default)"), ("model_unfused", "torch's transposed view")):
            v = cs.get(part)
            if not v or "sparse_graph_ms" not in v:
                continue
            acc = v.get("accuracy_sparse_kernels", {})
            out += (f"| `{rec['name']}` | {lay} | {v['dense_eager_ms']:.2f} / {v['dense_graph_ms']:.2f} | "
                    f"{v['sparse_eager_ms']:.0f} / {v['sparse_graph_ms']:.2f} / {v.get('sparse_kernel_ms', float('nan')):.2f} | "
                    f"{_x(v['speedup_graph'])} ({_x(v.get('speedup_kernel'))}) | {v['bound']:.2f}x | "
                    f"{v['rel_err_logits']:.1e}, {v['argmax_agreement']:.2f} | "
                    f"{acc.get('dev.accuracy', float('nan')):.3f} / {acc.get('test.accuracy', float('nan')):.3f} |\n")
    lay = sp["metrics"].get("cusparselt", {}).get("bert_base_layer", {})
    tk = tasks.get(task, {})
    out += "\n"
    if lay.get("layer_speedup_graph"):
        out += (f"BERT-base-sized matrices alone (768/3072 wide, 16k tokens): 2:4 at {_x(lay['layer_speedup_graph'])} "
                f"of dense replayed from a graph, {_x(lay.get('layer_speedup_kernel'))} in kernel time. ")
    if "sparse24" in tk and "imp" in tk:
        s24, i50, full = tk["sparse24"], tk["imp"].get("0.5", {}), tk["full"]
        out += (f"Accuracy beside the unstructured ticket ({task} dev, 3 seeds, `prune_imp_minilm.json`): full model "
                f"{full['mean']:.3f} +- {full['std']:.3f}, IMP's unstructured 50% ticket {i50.get('mean', float('nan')):.3f} "
                f"+- {i50.get('std', float('nan')):.3f}, the 2:4 mask {s24['mean']:.3f} +- {s24['std']:.3f}. ")
    return out + (f"\n\nSource: `{rel(sp['name'])}`" + (f", `{rel(spm['name'])}`" if spm else "")
                  + f" ({dev(sp)}).\n")


def splat_md(full=True):
    recs = {s: load(f"splat_lightgaussian_{s}") for s in SCENES}
    recs = {s: r for s, r in recs.items() if r and r["metrics"].get("stages", {}).get("quantized")}
    if not recs:
        return ""
    any_r = next(iter(recs.values()))
    cfg = any_r["config"]
    out = ("### LightGaussian: compressing trained 3DGS scenes\n\n"
           "Six scenes, each with " f"{cfg['train_views']} training / {cfg['test_views']} test views at "
           f"{cfg['resolution'][0]} px: three path-traced with Blender's Cycles (`pbr_*`: Panda3D's garden, a room "
           "of CC0 furniture, a glTF truck; `benchmarks/splat/make_scenes_pbr.py`) and three rasterised by Panda3D "
           "(`benchmarks/splat/make_scenes.py`). 3DGS trained with gsplat (densification on), then LightGaussian: "
           f"prune {100 * cfg['prune_ratio']:.0f}% by global significance + recovery fine-tuning, SH degree 3 -> "
           f"{cfg['sh_degree_after']} distilled, vector-quantise {100 * cfg['vq_ratio']:.0f}% of the SH (codebook "
           f"{cfg['codebook']}); the recovery and distillation steps are per scene in the table (the paper: 5000 "
           "and 10000); size = the stage's file (`.ply`, then `.lgz`), PSNR / SSIM on the test views, FPS of "
           "gsplat at the scene's resolution.\n\n")
    if full:
        out += "| scene | stage | Gaussians | size MB | PSNR | SSIM | FPS |\n|---|---|---|---|---|---|---|\n"
        for s, r in recs.items():
            for st, v in r["metrics"]["stages"].items():
                out += (f"| {s} | {st} | {v['num_gaussians']:,} | {v['size_bytes'] / 1e6:.2f} | {v['psnr']:.2f} | "
                        f"{v['ssim']:.3f} | {v['fps']:.0f} |\n")
        out += "\n"
    tg = any_r["baseline"]["targets"]
    out += ("| scene | Gaussians (densify grad) | recovery / distill steps | compression (vs the reference `.ply`) | PSNR drop dB | FPS gain "
            "(at 1024 px; 8 views a call) | 16-bit positions: compression, PSNR drop | GPU |\n|---|---|---|---|---|---|---|---|\n")
    for s, r in recs.items():
        m = r["metrics"]
        sm = m["summary"]
        base = m["stages"]["3dgs"]
        grad = r["config"].get("densify_grad") or 2e-4
        b8 = f"; {sm['fps_1024_batch8_gain_x']:.2f}x" if sm.get("fps_1024_batch8_gain_x") else ""
        p16 = (f"{sm['compression_x_pos16']:.1f}x, {sm['psnr_drop_db_pos16']:.2f} dB"
               if sm.get("compression_x_pos16") else "not run")
        steps = f"{r['config']['recovery']} / {r['config']['distill']}"
        out += (f"| {s} | {base['num_gaussians']:,} ({grad:g}) | {steps} | {sm['compression_x']:.1f}x ({reference_ply_ratio(m):.1f}x) | "
                f"{sm['psnr_drop_db']:.2f} | {sm['fps_gain_x']:.2f}x ({sm['fps_1024_gain_x']:.2f}x{b8}) | {p16} | "
                f"{r['device'].get('gpu') or 'CPU'} |\n")
    timed = [s for s, r in recs.items() if _fps_timed(r)]
    out += (f"\nPaper targets (Mip-NeRF 360 average): compression {tg['compression']}, PSNR drop {tg['psnr_drop_db']}, "
            f"FPS gain {tg['fps_gain']}. The reference `.ply` is the file the reference 3DGS code writes (62 float "
            "columns, normals included as zeros; the paper's baseline size); records made before the trainer wrote "
            "normals measured 59 columns, so the bracket adds 12 bytes per Gaussian to their baseline. FPS is gsplat "
            f"over the test views, timed over at least 1 s a stage ({', '.join(timed) or 'none'}) or over 3 passes "
            f"({', '.join(s for s in recs if s not in timed) or 'none'}: 0.1-0.4 s a stage, so small scenes' gains "
            "are noisy); one view a "
            "call at these sizes is bound by the host work of the call, so the 8-views-a-call figure is the "
            "rasteriser's own throughput. 16-bit positions are the codec's option (the paper keeps float32), "
            "measured on the same quantised scene.\n")
    if full:
        out += _splat_more(recs, cfg)
    out += "\nSources: " + "; ".join(f"`{rel(f'splat_lightgaussian_{s}')}` ({dev(r)})" for s, r in recs.items()) + ".\n"
    return out


def reference_ply_ratio(m) -> float:
    """Compression against the reference 3DGS ``.ply`` (62 float32 columns: x y z, nx ny nz, 48 SH, opacity,
    3 scales, 4 rotations): a baseline measured without the normal columns gets 12 bytes per Gaussian."""
    base, fin = m["stages"]["3dgs"], m["stages"]["quantized"]
    n, size = base["num_gaussians"], base["size_bytes"]
    cols = size // (4 * n)  # the header is a few hundred bytes: 59 (no normals) or 62
    return (size + (62 - cols) * 4 * n) / fin["size_bytes"]


def _splat_more(recs, cfg):
    """The significance ablation and the renders (the results page only)."""
    out = (f"\nSignificance ablation (PSNR after pruning {100 * cfg['prune_ratio']:.0f}% by "
           "each score and the same recovery):\n\n")
    arms = list(next(iter(recs.values()))["metrics"]["ablation"])
    out += "| scene | " + " | ".join(arms) + " |\n|---|" + "---|" * len(arms) + "\n"
    for s, r in recs.items():
        ab = r["metrics"]["ablation"]
        out += f"| {s} | " + " | ".join(f"{ab[a]['psnr']:.2f}" if isinstance(ab.get(a), dict) else str(ab.get(a))
                                        for a in arms) + " |\n"
    for s in recs:
        out += f"\n![{s}]({rel(f'splat_lightgaussian_{s}', 'png')})"
    return out + "\n"
