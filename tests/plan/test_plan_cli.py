"""`anybudget fit` and `anybudget generate --plan` as a user runs them (subprocess): one-line errors
before any work, and a CPU end-to-end fit on a tiny elastic folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from plan_helpers import REFLM

SRC = Path(__file__).resolve().parents[2] / "src"


def run(*args, timeout=180):
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "anybudget.cli", *map(str, args)], env=env, capture_output=True,
                          text=True, timeout=timeout, check=False)


def one_line_error(r, *needles):
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    # (a model load may print transformers' progress bar above it)
    assert "Traceback" not in r.stderr and [x for x in lines if x.startswith("error:")] == lines[-1:], r.stderr[-2000:]
    err = lines[-1]
    for n in needles:
        assert n in err, err
    return err


@pytest.mark.parametrize("args, needles", [
    (["--budget", "kv=20%"], ["--budget", "mem=... and/or latency=..."]),
    (["--budget", "mem=lots"], ["--budget", "mem=lots is not valid"]),
    (["--new", "1"], ["--new", ">= 2"]),
    (["--kv-budgets", "120%"], ["--kv-budgets", "(0, 100)"]),
    (["--policies", "h2o,lru"], ["--policies", "h2o, streaming, local"]),
    (["--text", "/nonexistent.txt"], ["--text", "does not exist"]),
    (["--quality", "/nonexistent.json"], ["--quality", "does not exist"]),
])
def test_bad_arguments_fail_before_work(tmp_path, elastic_folder, args, needles):
    base = {"--model": elastic_folder, "--budget": "mem=1GiB", "--out": tmp_path / "o"}
    for k, v in zip(args[::2], args[1::2]):
        base[k] = v
    one_line_error(run("fit", *[x for kv in base.items() for x in kv]), *needles)
    assert not (tmp_path / "o").exists()


def test_model_not_built_by_elastic_names_the_build_command(tmp_path):
    err = one_line_error(run("fit", "--model", REFLM, "--budget", "mem=1GiB", "--out", tmp_path / "o"),
                         "--model", "not built by elastic", "anybudget elastic build")
    assert "plain model folder" in err


def test_unreachable_budget_and_too_long_workload(tmp_path, elastic_folder):
    one_line_error(run("fit", "--model", elastic_folder, "--budget", "mem=1KiB", "--prompt", 32, "--new", 4, "--batch", 2,
                       "--out", tmp_path / "o"), "no candidate fits mem=1KiB", "smallest memory reachable is mem=",
                   "smallest latency latency=")
    one_line_error(run("fit", "--model", elastic_folder, "--budget", "mem=1GiB", "--prompt", 500, "--new", 20,
                       "--out", tmp_path / "o"), "max_position_embeddings 512")
    one_line_error(run("generate", "--plan", tmp_path / "none", "hello"), "--plan", "no plan.json")


def test_fit_then_generate_from_the_plan(tmp_path, elastic_folder):
    out = tmp_path / "deploy"
    r = run("fit", "--model", elastic_folder, "--budget", "mem=64MiB", "--prompt", 32, "--new", 4, "--batch", 2,
            "--policies", "h2o,local", "--kv-budgets", "50%,20%", "--quality-tokens", 16, "--out", out, "--quiet")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "plan for mem=64MiB" in r.stdout and "->" in r.stdout
    plan = json.loads((out / "plan.json").read_text())
    assert plan["measured"]["peak_bytes"] <= 64 * 2**20 and plan["trials"][-1]["meets"]
    assert json.loads((out / "cache.json").read_text())["policy"] == plan["chosen"]["policy"]
    assert (out / "model" / "config.json").is_file() and (out / "model" / "tokenizer.json").is_file()
    assert (out / "candidates.png").stat().st_size > 1000
    # a second budget reusing the measured quality data of the first plan
    r2 = run("fit", "--model", elastic_folder, "--budget", "mem=64MiB,latency=10s", "--prompt", 32, "--new", 4, "--batch", 2,
             "--policies", "h2o,local", "--kv-budgets", "50%,20%", "--quality", out / "plan.json", "--out", tmp_path / "d2",
             "--quiet")
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert json.loads((tmp_path / "d2" / "plan.json").read_text())["quality"] == plan["quality"]
    g = run("generate", "--plan", out, "--max-new-tokens", 3, "The device")
    assert g.returncode == 0, g.stderr[-3000:]
    assert g.stdout.startswith("The device") and f"cache {plan['chosen']['policy']}" in g.stdout
