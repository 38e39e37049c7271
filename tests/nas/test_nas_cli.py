import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from anybudget.cli import main


def test_search_cli_prints_arch_accuracy_flops_and_time(tmp_path, capsys):
    out = tmp_path / "s.json"
    # no --table: the NAS-Bench-201 table that ships with the package gives the accuracies
    rc = main(["nas", "search", "--budget", "flops=110M", "--smoke", "--device", "cpu", "--quiet", "--out", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "seed 0: |" in text and "MFLOPs" in text and "acc " in text and " s)" in text
    rec = json.loads(out.read_text())
    assert rec["device"]["torch"] and rec["date"] and rec["config"]["seeds"] is not None
    run = rec["runs"][0]
    assert run["flops"] <= 110e6 and set(run["accuracy"]) == {"cifar10", "cifar100", "ImageNet16-120"}
    # checkpointed by default beside --out: a rerun takes the finished seed from it at once
    ck = json.loads((tmp_path / "s.checkpoint.json").read_text())
    assert ck["runs"][0]["arch"] == run["arch"] and ck["budget"] == "flops=110M"
    assert not list(tmp_path.glob("*.rounds.json"))  # per-round files go once the seed is done
    t0 = time.perf_counter()
    assert main(["nas", "search", "--budget", "flops=110M", "--smoke", "--device", "cpu", "--quiet", "--out", str(out)]) == 0
    assert time.perf_counter() - t0 < 5 and json.loads(out.read_text())["runs"][0]["arch"] == run["arch"]
    # --smoke is the same search with the tiny settings, recorded in the checkpoint
    assert ck["config"]["C"] == 1 and ck["config"]["batch_size"] == 4 and ck["config"]["repeat"] == 1
    with pytest.raises(SystemExit, match="--smoke is supported for --space nb201 only"):
        main(["nas", "search", "--space", "darts", "--smoke", "--quiet"])


def test_cli_errors_are_clear(capsys):
    with pytest.raises(SystemExit, match="flops=1M is below every architecture"):
        main(["nas", "search", "--budget", "flops=1M", "--device", "cpu", "--quiet"])
    with pytest.raises(SystemExit) as ei:  # checked by argparse: exit 2, the message on stderr
        main(["nas", "search", "--budget", "watts=3", "--quiet"])
    assert ei.value.code == 2 and "unknown budget key 'watts'" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="unknown proxies"):
        main(["nas", "correlate", "--proxies", "zen"])
    with pytest.raises(SystemExit):
        main(["nas", "search", "--space", "nasbench101"])
    assert "invalid choice" in capsys.readouterr().err


def test_correlate_cli_prints_the_table(csv_path, tmp_path, capsys):
    out = tmp_path / "c.json"
    rc = main(["nas", "correlate", "--num-archs", "5", "--proxies", "linear_regions,params", "--table", str(csv_path),
               "--device", "cpu", "--quiet", "--out", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "5 architectures" in text and "linear_regions" in text and "cifar100 tau" in text
    rec = json.loads(out.read_text())
    assert len(rec["scores"]["index"]) == 5 and set(rec["correlations"]) == {"linear_regions", "params"}


def _cli(*args):
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2] / "src") + os.pathsep
               + os.environ.get("PYTHONPATH", ""))
    env.pop("ANYBUDGET_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "anybudget.cli", *args], capture_output=True, text=True, env=env,
                          timeout=120, check=False)


def test_correlate_resume_with_other_proxies_is_refused_and_the_checkpoint_kept(csv_path, tmp_path, capsys):
    out, ck = tmp_path / "c.json", tmp_path / "c.checkpoint.json"
    base = ["nas", "correlate", "--num-archs", "4", "--table", str(csv_path), "--device", "cpu", "--quiet"]
    assert main([*base, "--proxies", "linear_regions,params", "--out", str(out)]) == 0
    saved = ck.read_bytes()  # the default checkpoint, beside --out
    assert json.loads(saved)["proxies"] == ["linear_regions", "params"]
    # in a subprocess, as a user sees it: exit 2, one line naming the argument and the keys, nothing written
    r = _cli(*base, "--proxies", "linear_regions,params,naswot", "--out", str(tmp_path / "d.json"), "--checkpoint", str(ck))
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: --checkpoint"), r.stderr
    assert "proxies:" in lines[0] and "naswot" in lines[0] and "delete it to start over" in lines[0]
    assert ck.read_bytes() == saved and not (tmp_path / "d.json").exists()
    capsys.readouterr()
    for extra, words in ((["--proxies", "params"], "proxies: "), (["--proxies", "linear_regions,params", "--zc-batch", "8"],
                                                                   "config.zc_batch: 64 there, 8 now")):
        assert main([*base, *extra, "--checkpoint", str(ck), "--out", str(tmp_path / "d.json")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and words in err and ck.read_bytes() == saved and not (tmp_path / "d.json").exists()
    # the same proxies in another order are the same run: resumed, nothing rescored
    assert main([*base, "--proxies", "params,linear_regions", "--checkpoint", str(ck)]) == 0
    assert ck.read_bytes() == saved


def test_correlate_resume_with_fewer_archs_reports_only_those(csv_path, tmp_path):
    from anybudget.nas.correlate import ProxyConfig, sample_indices, score_archs

    ck = tmp_path / "ck.json"
    full = score_archs(sample_indices(6, seed=0), ProxyConfig(), proxies=("params",), device="cpu", quiet=True,
                       checkpoint=ck)
    part = score_archs(sample_indices(3, seed=0), ProxyConfig(), proxies=("params",), device="cpu", quiet=True,
                       checkpoint=ck)
    want = [int(i) for i in sample_indices(3, seed=0)]
    assert sorted(part["index"]) == sorted(want) and len(part["params"]) == 3
    assert len(json.loads(ck.read_text())["scores"]["index"]) == 6 and len(full["index"]) == 6


def test_search_blocked_default_checkpoint_is_named_before_any_work(tmp_path, capsys):
    (tmp_path / "s.checkpoint.json").mkdir()  # the default checkpoint's path is blocked by a folder
    assert main(["nas", "search", "--out", str(tmp_path / "s.json"), "--device", "cpu", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --checkpoint (default beside --out)") and err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.checkpoint.json"]
