"""The log-to-record rebuild: every number of a train_lm_v2 log is parsed, and a log without them is refused."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks/zoo"))
from record_from_log import count_params, parse_log  # noqa: E402

LOG = """[rank0]: warning noise
23.66 steps/s = 3.10 M tok/s on 4 GPU(s); schedule 6859 steps = 899M tokens = 7.0 epochs
step 400 epoch 0.41 train 3.849 val 3.824 (52s)
step 6859 epoch 7.00 train 2.442 val 2.852 (329s)
v1_test: ppl 17.98  bits/byte 1.0435  (294912 tokens)
heldout: ppl 23.61  bits/byte 1.1058  (96256 tokens)
{"prompt": "The Linux kernel", "greedy_rp1.1": "The Linux kernel provides"}
done in 341s
"""


def test_parse_log_reads_every_number():
    m = parse_log(LOG)
    assert (m["steps_per_s"], m["mtok_per_s"], m["world_size"]) == (23.66, 3.10, 4)
    assert (m["schedule_steps"], m["schedule_mtokens"], m["schedule_epochs"]) == (6859, 899, 7.0)
    assert [c["step"] for c in m["curve"]] == [400, 6859] and m["curve"][1]["val"] == 2.852
    assert m["eval"]["v1_test"] == {"ppl": 17.98, "bits_per_byte": 1.0435, "tokens": 294912}
    assert m["samples"][0]["prompt"] == "The Linux kernel"


def test_parse_log_refuses_a_log_without_an_evaluation():
    with pytest.raises(ValueError, match="no throughput line"):
        parse_log(LOG.split("v1_test")[0].replace("steps/s", "steps"))


def test_count_params_matches_the_shipped_size():
    assert count_params(8, 512, 1024) == 27271680  # the shipped v2/v3 model's recorded count
