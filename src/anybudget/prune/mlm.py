"""The masked-LM objective (BERT, Devlin et al. 2019, Sec. 3.1): choose 15% of the tokens; of
those, 80% become [MASK], 10% a random token, 10% stay; predict the originals. Used to pre-train
the project's small BERT, to find the paper's MLM ticket, and to train an MLM head on an encoder
that ships without one (all-MiniLM-L6-v2)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

__all__ = ["MLMStream", "add_mlm_head", "mask_tokens", "mlm_accuracy"]


def mask_tokens(
    input_ids: torch.Tensor,
    special: torch.Tensor,
    mask_id: int,
    vocab_size: int,
    generator: torch.Generator,
    prob: float = 0.15,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's 80/10/10 corruption. input_ids, special: (batch, seq); returns (inputs, labels)
    with labels = -100 where nothing is predicted. Special tokens are never chosen."""
    if not 0.0 < prob < 1.0:
        raise ValueError(f"prob={prob!r} must be in (0, 1)")
    shape = input_ids.shape
    chosen = (torch.rand(shape, generator=generator) < prob) & ~special
    labels = torch.where(chosen, input_ids, torch.full_like(input_ids, -100))
    r = torch.rand(shape, generator=generator)
    to_mask = chosen & (r < 0.8)
    to_rand = chosen & (r >= 0.8) & (r < 0.9)
    rand_tok = torch.randint(vocab_size, shape, generator=generator)
    inputs = torch.where(to_mask, torch.full_like(input_ids, mask_id), input_ids)
    inputs = torch.where(to_rand, rand_tok, inputs)
    return inputs, labels


@dataclass
class MLMStream:
    """A token stream (no specials) cut into ``[CLS] x_1..x_{L-2} [SEP]`` windows for MLM."""

    tokens: np.ndarray  # (n,) uint16
    seq_len: int
    cls_id: int
    sep_id: int
    mask_id: int
    vocab_size: int

    def windows(self, starts: np.ndarray) -> torch.Tensor:
        L = self.seq_len - 2
        body = np.stack([self.tokens[s:s + L] for s in starts]).astype(np.int64)
        ids = np.concatenate([np.full((len(starts), 1), self.cls_id), body,
                              np.full((len(starts), 1), self.sep_id)], axis=1)
        return torch.from_numpy(ids)

    def _corrupt(self, ids: torch.Tensor, g: torch.Generator) -> dict:
        special = torch.zeros_like(ids, dtype=torch.bool)
        special[:, 0] = special[:, -1] = True
        inputs, labels = mask_tokens(ids, special, self.mask_id, self.vocab_size, g)
        return {"input_ids": inputs, "attention_mask": torch.ones_like(ids), "labels": labels}

    def __call__(self, rng: np.random.Generator, batch_size: int) -> dict:
        """A random training batch (windows and corruption drawn from ``rng``)."""
        hi = len(self.tokens) - (self.seq_len - 2)
        if hi <= 0:
            raise ValueError(f"the stream has {len(self.tokens)} tokens, fewer than seq_len={self.seq_len}")
        starts = rng.integers(0, hi, size=batch_size)
        g = torch.Generator().manual_seed(int(rng.integers(2**62)))
        return self._corrupt(self.windows(starts), g)

    def fixed_batches(self, n_windows: int, batch_size: int, seed: int = 0):
        """Deterministic evaluation batches: consecutive windows, corruption from ``seed``."""
        L = self.seq_len - 2
        n = min(n_windows, len(self.tokens) // L)
        g = torch.Generator().manual_seed(seed)
        for s in range(0, n, batch_size):
            starts = np.arange(s, min(s + batch_size, n)) * L
            yield self._corrupt(self.windows(starts), g)


@torch.no_grad()
def mlm_accuracy(model: nn.Module, stream: MLMStream, n_windows: int = 512, batch_size: int = 64,
                 seed: int = 0) -> dict[str, float]:
    """Accuracy and loss at the corrupted positions of held-out windows (fixed corruption)."""
    device = next(model.parameters()).device
    model.eval()
    correct = total = 0
    loss_sum = 0.0
    for b in stream.fixed_batches(n_windows, batch_size, seed):
        b = {k: v.to(device) for k, v in b.items()}
        labels = b.pop("labels")
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits = model(**b).logits.float()
        sel = labels != -100
        correct += int((logits.argmax(-1)[sel] == labels[sel]).sum())
        loss_sum += float(nn.functional.cross_entropy(logits[sel], labels[sel], reduction="sum"))
        total += int(sel.sum())
    return {"mlm_accuracy": correct / max(1, total), "mlm_loss": loss_sum / max(1, total)}


def add_mlm_head(encoder: nn.Module):
    """A ``BertForMaskedLM`` holding ``encoder``'s weights (a ``BertModel``) and a fresh MLM
    head whose decoder is tied to the word embeddings; train the head with the encoder frozen
    (``requires_grad`` of ``bert.*`` set False here) before using it for MLM IMP."""
    from transformers import BertForMaskedLM

    cfg = encoder.config
    cfg.tie_word_embeddings = True
    mlm = BertForMaskedLM(cfg)
    missing, unexpected = mlm.bert.load_state_dict(encoder.state_dict(), strict=False)
    bad = [k for k in missing if not k.startswith("pooler")] + [k for k in unexpected if not k.startswith("pooler")]
    if bad:
        raise ValueError(f"encoder is not a BertModel: mismatched weights {bad[:3]}")
    mlm.tie_weights()
    for n, p in mlm.named_parameters():
        p.requires_grad = not n.startswith("bert.")
    return mlm
