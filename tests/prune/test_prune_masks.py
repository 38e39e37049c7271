import pytest
import torch

from anybudget.prune.magnitude import BERT_PRUNABLE, full_mask, prunable_names, random_prune
from anybudget.prune.masks import (
    MaskEnforcer,
    apply_mask,
    bake,
    load_mask,
    mask_sparsity,
    save_mask,
    sparsity_report,
)


def test_default_pattern_is_the_paper_set(make_model):
    m = make_model()
    names = prunable_names(m, BERT_PRUNABLE)
    assert len(names) == 2 * 6 + 1
    assert "bert.pooler.dense.weight" in names
    for n in names:
        assert n.endswith(".weight") and "embeddings" not in n and "LayerNorm" not in n
        assert not n.startswith("classifier")
    assert {n.split(".")[-2] for n in names} == {"query", "key", "value", "dense"}


def test_mask_round_trip_is_bit_exact_with_metadata(make_model, tmp_path):
    m = make_model()
    mask = random_prune(full_mask(m), 0.37, generator=torch.Generator().manual_seed(3))
    save_mask(tmp_path / "m.safetensors", mask, {"task": "rt", "round": 4})
    back, meta = load_mask(tmp_path / "m.safetensors")
    assert meta == {"task": "rt", "round": 4}
    assert set(back) == set(mask)
    for k in mask:
        assert back[k].dtype == torch.bool and torch.equal(back[k], mask[k])
    rep = sparsity_report(back)
    assert rep["pruned"] == round(0.37 * rep["total"])
    assert rep["overall"] == pytest.approx(mask_sparsity(mask))
    assert sum(v["pruned"] for v in rep["layers"].values()) == rep["pruned"]


def test_apply_and_enforcer_keep_pruned_weights_zero_then_bake_is_plain(make_model):
    m = make_model()
    mask = random_prune(full_mask(m), 0.5, generator=torch.Generator().manual_seed(0))
    apply_mask(m, mask)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2, weight_decay=0.1)
    enf = MaskEnforcer(m, mask, opt)
    params = dict(m.named_parameters())
    for _ in range(3):
        out = m(input_ids=torch.randint(0, 64, (2, 6)), labels=torch.tensor([0, 1]))
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    for k, mk in mask.items():
        assert torch.all(params[k][~mk] == 0)
        assert torch.any(params[k][mk] != 0)
    enf.remove()
    assert not opt._optimizer_step_post_hooks
    # a model carrying torch.nn.utils.prune hooks bakes into plain keys
    from torch.nn.utils import prune as tprune
    tprune.l1_unstructured(m.bert.pooler.dense, "weight", amount=0.3)
    baked = bake(m, mask)
    sd = baked.state_dict()
    assert not any(k.endswith(("_orig", "_mask")) for k in sd)
    assert all(not mod._forward_pre_hooks for mod in baked.modules())
    assert torch.all(sd["bert.encoder.layer.0.attention.self.query.weight"][~mask["bert.encoder.layer.0.attention.self.query.weight"]] == 0)


def test_bad_masks_raise_errors_naming_the_problem(make_model):
    m = make_model()
    mask = full_mask(m)
    k = next(iter(mask))
    with pytest.raises(ValueError, match=r"mask\[.*has shape"):
        apply_mask(m, {k: torch.ones(3, 3, dtype=torch.bool)})
    with pytest.raises(ValueError, match="unknown parameter name"):
        apply_mask(m, {"bert.nope.weight": torch.ones(1, dtype=torch.bool)})
    with pytest.raises(ValueError, match="bool tensor"):
        apply_mask(m, {k: torch.ones_like(mask[k], dtype=torch.float32)})
    apply_mask(m, {"bert.nope.weight": torch.ones(1, dtype=torch.bool)}, strict=False)  # skipped
    for bad in (1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match=r"sparsity=.* is out of range.*\[0, 1\)"):
            random_prune(mask, bad)
