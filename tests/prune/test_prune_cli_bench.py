import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from anybudget.cli import main
from anybudget.prune.masks import load_mask, mask_sparsity

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "prune"
sys.path.insert(0, str(BENCH))


@pytest.fixture
def smoke_data(tmp_path):
    import smoke

    return smoke.build(tmp_path / "data")


def test_cli_imp_resumes_then_apply_and_report(smoke_data, tmp_path, capsys):
    data, model = smoke_data
    common = ["prune", "imp", "--model", str(model), "--task", "rt", "--data", str(data),
              "--out", str(tmp_path / "run"), "--epochs", "1", "--lr", "3e-3", "--batch-size", "16",
              "--device", "cpu", "--quiet"]
    assert main(common + ["--rounds", "2"]) == 0
    text = capsys.readouterr().out
    assert "round 2: sparsity 0.200" in text and "dev.accuracy" in text
    with pytest.raises(SystemExit, match="another config"):
        main(common + ["--rounds", "3", "--schedule", "geometric"])
    with pytest.raises(SystemExit, match=r"error: --out .*\(finetune\.lr: 0\.003 there, 0\.004 now\); use another --out"):
        main([("4e-3" if a == "3e-3" else a) for a in common] + ["--rounds", "3"])  # fine-tuning settings count too
    assert main(common + ["--rounds", "3"]) == 0  # extends the same run by one round
    assert "round 3: sparsity 0.300" in capsys.readouterr().out
    mask_file = tmp_path / "run" / "round_02.mask.safetensors"
    assert main(["prune", "report", "--mask", str(mask_file), "--layers"]) == 0
    text = capsys.readouterr().out
    assert "4,352 weights, 870 pruned" in text and "pooler.dense.weight" in text  # round(0.2 * 4352)
    apply = ["prune", "apply", "--mask", str(mask_file), "--model", str(model), "--out", str(tmp_path / "baked")]
    with pytest.raises(SystemExit, match="unknown parameter name.*pooler"):
        main(apply)  # the task mask has the pooler, the MLM model has none
    assert main([*apply, "--skip-missing"]) == 0
    assert "skipped 1 entries" in capsys.readouterr().out
    from transformers import BertForMaskedLM

    baked = BertForMaskedLM.from_pretrained(tmp_path / "baked")
    mask, _ = load_mask(mask_file)
    params = dict(baked.named_parameters())
    shared = [k for k in mask if k in params]
    assert shared and all(torch.all(params[k][~mask[k]] == 0) for k in shared)
    assert (tmp_path / "baked" / "vocab.txt").exists()
    with pytest.raises(SystemExit, match="--task 'sst9'"):
        main(common[:5] + ["sst9"] + common[6:])
    with pytest.raises(SystemExit) as ei:  # checked by argparse: exit 2, the message on stderr
        main(common + ["--rounds", "-2"])
    assert ei.value.code == 2 and "argument --rounds: -2" in capsys.readouterr().err


def test_cli_imp_on_mlm(smoke_data, tmp_path, capsys):
    data, model = smoke_data
    assert main(["prune", "imp", "--model", str(model), "--task", "mlm", "--data", str(data), "--out",
                 str(tmp_path / "mlm"), "--rounds", "1", "--mlm-steps", "3", "--batch-size", "4",
                 "--device", "cpu", "--quiet"]) == 0
    assert "dev.mlm_accuracy" in capsys.readouterr().out
    assert mask_sparsity(load_mask(tmp_path / "mlm" / "round_01.mask.safetensors")[0]) == pytest.approx(0.1, abs=1e-3)


def test_run_imp_smoke_writes_record_and_pngs(tmp_path):
    import run_imp

    assert run_imp.main(["--smoke", "--workers", "0", "--out", str(tmp_path), "--quiet"]) == 0
    rec = json.loads((tmp_path / "prune_imp_smoke.json").read_text())
    m = rec["metrics"]
    assert set(m["tasks"]) == {"mlm", "rt", "rt_reg"} and not m["skipped"]
    rt = m["tasks"]["rt"]
    assert set(rt["controls"]) == {"random_pruning", "random_reinit", "oneshot", "shuffled"}
    assert len(rt["full"]["runs"]) == 2 and "transfer_mlm" in rt and "sparse24" in rt
    assert rec["baseline"]["paper_sparsest_matching"]["SST-2"] == 0.6
    assert (tmp_path / "imp_curves.png").stat().st_size > 1000
    assert (tmp_path / "transfer.png").exists() and (tmp_path / "mlm_mask20.safetensors").exists()


def test_pretrain_smoke(tmp_path):
    import pretrain_bert

    assert pretrain_bert.main(["--smoke", "--out", str(tmp_path), "--quiet"]) == 0
    rec = json.loads((tmp_path / "prune_pretrain_bert_smoke.json").read_text())
    assert rec["metrics"]["steps"] == 30 and 0 <= rec["metrics"]["mlm_accuracy"] <= 1
    assert rec["metrics"]["params"] > 0 and (tmp_path / "pretrain_bert.png").exists()


def test_imp_runs_data_parallel_under_torchrun(smoke_data, tmp_path):
    """Two CPU processes (gloo): each takes half of every batch; rank 0 writes the run."""
    import os
    import subprocess

    data, model = smoke_data
    env = {**os.environ, "PYTHONPATH": str(BENCH.parents[1] / "src"), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29531",
           "-m", "anybudget.cli", "prune", "imp", "--model", str(model), "--task", "rt", "--data", str(data),
           "--out", str(tmp_path / "ddp"), "--rounds", "1", "--epochs", "1", "--batch-size", "16",
           "--lr", "3e-3", "--device", "cpu", "--quiet"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    rec = json.loads((tmp_path / "ddp" / "imp.json").read_text())
    assert [x["round"] for x in rec["rounds"]] == [0, 1]
    assert mask_sparsity(load_mask(tmp_path / "ddp" / "round_01.mask.safetensors")[0]) == pytest.approx(0.1, abs=1e-3)


def test_run_imp_past_its_deadline_skips_jobs_and_still_writes_a_record(tmp_path):
    import run_imp

    assert run_imp.main(["--smoke", "--workers", "0", "--out", str(tmp_path), "--quiet", "--minutes", "0"]) == 0
    m = json.loads((tmp_path / "prune_imp_smoke.json").read_text())["metrics"]
    assert m["tasks"] == {} and len(m["skipped"]) > 0 and all(s["skipped"] == "deadline" for s in m["skipped"])


def test_pretrain_output_goes_into_the_carry_folder(tmp_path):
    import prepare
    import pretrain_bert

    assert pretrain_bert.main(["--smoke", "--out", str(tmp_path / "out"), "--quiet"]) == 0
    assert prepare.main(["--model", str(tmp_path / "out" / "bert"), "--out", str(tmp_path / "carry")]) == 0
    from transformers import BertForMaskedLM

    m = BertForMaskedLM.from_pretrained(tmp_path / "carry" / "imp" / "model")
    assert m.dtype == torch.float16 and (tmp_path / "carry" / "imp" / "model" / "vocab.txt").exists()


def test_mlm_head_on_a_frozen_encoder_keeps_the_encoder(tmp_path):
    """The MiniLM path: pretrain_bert --encoder trains only a tied MLM head."""
    import pretrain_bert
    from transformers import BertConfig, BertForMaskedLM, BertModel

    words = pretrain_bert.SPECIALS + [f"w{i}" for i in range(59)]
    torch.manual_seed(0)
    enc = BertModel(BertConfig(vocab_size=len(words), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                               intermediate_size=32, max_position_embeddings=64))
    enc.save_pretrained(tmp_path / "enc")
    (tmp_path / "enc" / "vocab.txt").write_text("\n".join(words) + "\n")
    assert pretrain_bert.main(["--smoke", "--encoder", str(tmp_path / "enc"), "--out", str(tmp_path / "o"), "--quiet"]) == 0
    mlm = BertForMaskedLM.from_pretrained(tmp_path / "o" / "bert")
    q = "encoder.layer.1.attention.self.query.weight"
    assert torch.allclose(mlm.bert.state_dict()[q].float(), enc.state_dict()[q].half().float())
    rec = json.loads((tmp_path / "o" / "prune_pretrain_bert_smoke.json").read_text())
    assert rec["config"]["model"] == "MLM head on a frozen encoder"


def test_imp_jobs_spread_round_robin_over_gpus_and_stay_put_on_one():
    import run_imp

    todo = [("job_imp", {"task": t, "device": "cuda"}) for t in ("a", "b", "c")]
    assert run_imp.spread(todo, 1) == todo and run_imp.spread(todo, 0) == todo
    spread = run_imp.spread(todo, 2)
    assert [j["device"] for _, j in spread] == ["cuda:0", "cuda:1", "cuda:0"]
    assert [j["task"] for _, j in spread] == ["a", "b", "c"] and todo[0][1]["device"] == "cuda"  # input untouched


def test_speed24_smoke_builds_the_ticket_and_its_dense_numbers(tmp_path):
    import speed24

    assert speed24.main(["--smoke", "--out", str(tmp_path)]) == 0
    m = json.loads((tmp_path / "prune_speed24_smoke.json").read_text())["metrics"]
    assert m["ticket"]["sparsity"] == pytest.approx(0.5)
    mod = m["cusparselt"]["model"]
    assert mod["accuracy_dense"]["dev.accuracy"] == pytest.approx(m["ticket"]["metrics"]["dev.accuracy"])
    assert mod["bound"] >= 1.0 and "need CUDA" in mod["error"]


def test_speed24_refuses_an_unknown_backend_and_keeps_the_ticket_where_asked(tmp_path):
    import speed24

    with pytest.raises(SystemExit, match="--backends: unknown \\['cudnn'\\]"):
        speed24.main(["--smoke", "--backends", "cudnn"])
    with pytest.raises(SystemExit, match="--parts: unknown \\['modle'\\]"):
        speed24.main(["--smoke", "--parts", "modle"])
    assert speed24.main(["--smoke", "--out", str(tmp_path), "--ticket-dir", str(tmp_path / "m24")]) == 0
    assert (tmp_path / "m24" / "mask.safetensors").exists()  # kept: a later call reuses it with --model
    assert json.loads((tmp_path / "prune_speed24_smoke.json").read_text())["metrics"]["complete"] is True


def test_speed24_model_export_on_the_cpu_stand_in_equals_dense(tmp_path, monkeypatch, make_model, task_data):
    """speed24.model_speed's whole path (load a saved 2:4 ticket, convert every prunable Linear, forward,
    accuracy) with cuSPARSELt's operand contract kept by a CPU stand-in (tests/prune/cslt_fake.py)."""
    import speed24
    from cslt_fake import fake_cslt_sparse_mm, fake_to_sparse

    from anybudget.prune.masks import apply_mask, save_mask
    from anybudget.prune.sparse24 import prune_24

    monkeypatch.setattr(torch, "_cslt_sparse_mm", fake_cslt_sparse_mm)
    m = make_model()
    mask = prune_24(m)
    apply_mask(m, mask)
    m.save_pretrained(tmp_path / "m24")
    save_mask(tmp_path / "m24" / "mask.safetensors", mask, {"pattern": "2:4"})
    batch = task_data["dev"].batch(np.arange(16))  # 16 rows: no padding, the pooler's strided input reaches the kernel
    r = speed24.model_speed(str(tmp_path / "m24"), batch, {"dev": task_data["dev"]}, repeat=1, device="cpu",
                            dtype=torch.bfloat16, to_sparse=fake_to_sparse)
    assert r["converted"] == r["prunable"] == 13 and r["correct"], r
    assert r["argmax_agreement"] >= 0.9
    assert r["accuracy_sparse_kernels"]["dev.accuracy"] == pytest.approx(r["accuracy_dense"]["dev.accuracy"], abs=0.07)


def test_imp_curves_colour_each_control_the_same_in_every_panel(tmp_path, monkeypatch):
    """The record's controls come in job-completion order, different per task; the one legend
    must hold for every panel."""
    import report

    import anybudget.io

    figs = []
    monkeypatch.setattr(anybudget.io, "save_figure", lambda fig, path, **kw: figs.append(fig))
    lv = {"0.5": {"mean": 0.5, "std": 0.01}}
    full = {"mean": 0.6, "std": 0.01}
    order = [("oneshot", "shuffled", "random_pruning", "random_reinit"), ("random_reinit", "oneshot", "shuffled", "random_pruning")]
    tasks = {f"t{i}": {"metric": "dev.accuracy", "full": full, "imp": lv, "sparsest_winning": {"imp": None},
                       "controls": {k: lv for k in o}} for i, o in enumerate(order)}
    report._imp_curves({"tasks": tasks}, tmp_path / "c.png")
    colours = [{c.get_label(): c.lines[0].get_color() for c in ax.containers} for ax in figs[0].axes[:2]]
    assert colours[0] == colours[1] and len(set(colours[0].values())) == 5
