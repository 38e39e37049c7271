import sys
from pathlib import Path

import numpy as np
import pytest

from anybudget.prune.tasks import (
    TASKS,
    binary_rows,
    consecutive_pairs,
    load_task,
    metric,
    parse_vader,
    save_task,
    split_of,
)

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "prune"


def _fake_vader(d: Path) -> Path:
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    good, bad = ["a great fun film", "wonderful acting and a moving story"], ["a dull mess", "boring and far too long"]
    for name in ("movieReviewSnippets", "tweets", "amazonReviewSnippets", "nytEditorialSnippets"):
        lines = []
        for i in range(60):
            pos = i % 2 == 0
            text = f"{rng.choice(good if pos else bad)} number {i}"
            r = (1.5 + i / 100) if pos else (-1.5 - i / 100)
            if i % 10 == 9:
                r = 0.3  # neutral: dropped from the binary task
            lines.append(f"{i}\t{r}\t{text}")
        (d / f"{name}_GroundTruth.txt").write_text("\r\n".join(lines) + "\r\n")
    return d


def _fake_corpus(d: Path) -> Path:
    d.mkdir(parents=True)
    doc = ("The server starts a worker for each request. The worker reads the request body. "
           "It then writes the answer to the socket. Errors are logged to the journal file.")
    for split, n in (("train", 12), ("validation", 4), ("test", 4)):
        docs = [doc.replace("server", f"server{k}") + "\nA second paragraph explains the options in detail."
                for k in range(n)]
        (d / f"{split}.txt").write_text("\n\n\f\n\n".join(docs))
    return d


def test_parse_binary_and_splits_are_fixed_by_text(tmp_path):
    rows = parse_vader(_fake_vader(tmp_path / "v") / "movieReviewSnippets_GroundTruth.txt")
    assert len(rows) == 60 and rows[0] == ("0", 1.5, "wonderful acting and a moving story number 0")
    b = binary_rows(rows)
    assert len(b) == 54 and {y for _, y in b} == {0, 1}
    assert all((y == 1) == (r > 0) for (_, r, t), (_, y) in zip([r for r in rows if abs(r[1]) >= 1], b))
    assert split_of("The Rock is destined") == split_of("The Rock is destined")
    counts = {s: sum(split_of(f"sentence {i}") == s for i in range(5000)) for s in ("train", "dev", "test")}
    assert 0.07 < counts["test"] / 5000 < 0.13 and 0.07 < counts["dev"] / 5000 < 0.13
    with pytest.raises(ValueError, match="path=.* holds no"):
        (tmp_path / "empty.txt").write_text("nothing here\n")
        parse_vader(tmp_path / "empty.txt")


def test_consecutive_pairs_are_adjacent_or_from_another_document():
    docs = ["Alpha one is here now. Alpha two is here now. Alpha three is here now.",
            "Beta one is there too. Beta two is there too. Beta three is there too."]
    pairs = consecutive_pairs(docs, seed=0)
    assert len(pairs) == 4
    for a, b, y in pairs:
        same = a.split()[0] == b.split()[0]
        if y == 1:
            assert same and ["one", "two", "three"].index(b.split()[1]) == ["one", "two", "three"].index(a.split()[1]) + 1
        else:
            assert not same


def test_metrics():
    assert metric("binary", [1, 0, 1, 1], [1, 0, 0, 1]) == {"accuracy": 0.75}
    m = metric("regression", [1.0, 2.0, 3.0, 5.0], [2.0, 4.0, 6.0, 7.0])
    assert m["spearman"] == pytest.approx(1.0) and 0.9 < m["pearson"] < 1.0
    assert metric("regression", [1, 2, 2, 3], [1, 2, 2, 3])["spearman"] == pytest.approx(1.0)  # ties
    with pytest.raises(ValueError, match="kind='ner' is unknown"):
        metric("ner", [1], [1])


def test_prepare_builds_compact_task_files_that_round_trip(tmp_path):
    pytest.importorskip("tokenizers")
    sys.path.insert(0, str(BENCH))
    import prepare

    out = tmp_path / "carry"
    rc = prepare.main(["--vader", str(_fake_vader(tmp_path / "v")), "--corpus", str(_fake_corpus(tmp_path / "c")),
                       "--out", str(out), "--build", str(tmp_path / "b"), "--vocab", "120", "--max-pairs", "30",
                       "--pretrain-tokens", "500", "--imp-tokens", "300"])
    assert rc == 0
    for name, spec in TASKS.items():
        got, splits, info = load_task(out / "imp" / "tasks" / f"{name}.safetensors.xz")
        assert got == spec and set(splits) == {"train", "dev", "test"}
        total = sum(len(s) for s in splits.values())
        assert total == sum(v["n"] for v in info.values()) and total > 0
        tr = splits["train"]
        batch = tr.batch(np.arange(min(4, len(tr))))
        assert (batch["input_ids"][:, 0] == 2).all()  # [CLS]
        if name == "consecutive":
            assert batch["token_type_ids"].max() == 1
    vocab = (out / "imp" / "vocab.txt").read_text().splitlines()
    assert vocab[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    save_task(tmp_path / "x.safetensors", *load_task(out / "imp" / "tasks" / "rt.safetensors.xz")[:1],
              load_task(out / "imp" / "tasks" / "rt.safetensors.xz")[1], {"k": 1})
    assert load_task(tmp_path / "x.safetensors")[2] == {"k": 1}
