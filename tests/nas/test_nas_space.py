import csv

import pytest

from anybudget.nas.space import (
    NUM_ARCHS,
    OPS,
    all_archs,
    arch_from_index,
    arch_index,
    format_arch,
    parse_arch,
)


def test_round_trip_every_arch():
    archs = all_archs()
    assert len(archs) == NUM_ARCHS == 15625
    assert len(set(archs)) == NUM_ARCHS
    for i, a in enumerate(archs):
        s = format_arch(a)
        assert parse_arch(s) == a
        assert arch_index(s) == arch_index(a) == i
        assert arch_from_index(i) == a


def test_index_order_anchors_from_the_benchmark_generator():
    # The asserts NAS-Bench-201's generate_meta_info makes on its own shuffled order.
    assert format_arch(arch_from_index(0)) == (
        "|avg_pool_3x3~0|+|nor_conv_1x1~0|skip_connect~1|+|nor_conv_1x1~0|skip_connect~1|skip_connect~2|"
    )
    assert format_arch(arch_from_index(9)) == (
        "|avg_pool_3x3~0|+|none~0|none~1|+|skip_connect~0|none~1|nor_conv_3x3~2|"
    )
    assert format_arch(arch_from_index(123)) == (
        "|avg_pool_3x3~0|+|avg_pool_3x3~0|nor_conv_1x1~1|+|none~0|avg_pool_3x3~1|nor_conv_3x3~2|"
    )


def test_index_order_matches_the_published_table(csv_path):
    import lzma

    opener = lzma.open if str(csv_path).endswith(".xz") else open
    with opener(csv_path, "rt", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == NUM_ARCHS
    for i, r in enumerate(rows):
        assert format_arch(arch_from_index(i)) == r["ArchitectureString"], i


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("|nor_conv_3x3~0|+|none~0|none~1|", "2 nodes"),
        ("|conv_7x7~0|+|none~0|none~1|+|none~0|none~1|none~2|", "unknown op 'conv_7x7'"),
        ("|none~1|+|none~0|none~1|+|none~0|none~1|none~2|", "should be 'op~0'"),
        ("|none~0|+|none~0|+|none~0|none~1|none~2|", "node 2 has 1 inputs"),
        ("none~0|+|none~0|none~1|+|none~0|none~1|none~2|", "wrapped in '|'"),
        ("|none0|+|none~0|none~1|+|none~0|none~1|none~2|", "should be 'op~0'"),
    ],
)
def test_malformed_arch_strings_raise(text, match):
    with pytest.raises(ValueError, match=match):
        parse_arch(text)


def test_bad_ops_and_indices_raise():
    with pytest.raises(ValueError, match="unknown op 'sep_conv_3x3'.*allowed ops"):
        format_arch(("sep_conv_3x3",) + ("none",) * 5)
    with pytest.raises(ValueError, match="has 5 ops; a NAS-Bench-201 cell has 6 edges"):
        arch_index(("none",) * 5)
    with pytest.raises(ValueError, match=r"index=15625 is out of range.*\[0, 15625\)"):
        arch_from_index(15625)
    with pytest.raises(ValueError, match="out of range"):
        arch_from_index(-1)
    with pytest.raises(TypeError, match="must be a str"):
        parse_arch(3)
    assert OPS == ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
