import json

import pytest

from anybudget.cli import main


def test_search_cli_prints_arch_accuracy_flops_and_time(tmp_path, capsys):
    out = tmp_path / "s.json"
    # no --table: the NAS-Bench-201 table that ships with the package gives the accuracies
    rc = main(["nas", "search", "--budget", "flops=110M", "--repeat", "1", "--batch-size", "4",
               "--device", "cpu", "--quiet", "--out", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "seed 0: |" in text and "MFLOPs" in text and "acc " in text and " s)" in text
    rec = json.loads(out.read_text())
    assert rec["device"]["torch"] and rec["date"] and rec["config"]["seeds"] is not None
    run = rec["runs"][0]
    assert run["flops"] <= 110e6 and set(run["accuracy"]) == {"cifar10", "cifar100", "ImageNet16-120"}


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
