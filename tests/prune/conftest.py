import numpy as np
import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from anybudget.prune.tasks import TaskData


def tiny_config(**kw):
    base = {"vocab_size": 64, "hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2,
                "intermediate_size": 32, "max_position_embeddings": 32, "type_vocab_size": 2}
    base.update(kw)
    return BertConfig(**base)


@pytest.fixture
def tiny_pretrained():
    """A 'pre-trained' body: a seeded random tiny BERT classifier (theta_0)."""
    torch.manual_seed(0)
    return BertForSequenceClassification(tiny_config(num_labels=2)).state_dict()


@pytest.fixture
def make_model(tiny_pretrained):
    def make(num_labels=2, head_seed=1):
        torch.manual_seed(head_seed)
        m = BertForSequenceClassification(tiny_config(num_labels=num_labels))
        body = {k: v for k, v in tiny_pretrained.items() if k.startswith("bert.")}
        m.load_state_dict(body, strict=False)
        return m
    return make


def synthetic_task(n=96, seed=0, vocab=64):
    """Label 1 iff token 7 occurs: learnable by a tiny model in a few steps."""
    rng = np.random.default_rng(seed)
    seqs, labels = [], []
    for _ in range(n):
        L = int(rng.integers(4, 10))
        body = rng.integers(5, vocab, size=L)
        y = int(rng.random() < 0.5)
        body[body == 7] = 8
        if y:
            body[rng.integers(L)] = 7
        seqs.append(np.concatenate([[2], body, [3]]))
        labels.append(y)
    offsets = np.concatenate([[0], np.cumsum([len(s) for s in seqs])])
    return TaskData(np.concatenate(seqs).astype(np.uint16), offsets.astype(np.int64),
                    np.array([len(s) for s in seqs], np.int32), np.array(labels, np.float32))


@pytest.fixture
def task_data():
    return {"train": synthetic_task(96, 0), "dev": synthetic_task(48, 1), "test": synthetic_task(48, 2)}
