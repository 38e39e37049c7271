import functools

import pytest
import torch
from safetensors.torch import load_file

from anybudget.prune.controls import CONTROLS, control, sparsest_winning, winning
from anybudget.prune.imp import IMPConfig, imp, rewind
from anybudget.prune.masks import mask_sparsity
from anybudget.prune.train import FineTuneConfig, evaluate, finetune

FT = FineTuneConfig(epochs=1, lr=3e-3, batch_size=16)


def _fns(task_data, seen=None):
    def train_fn(model, seed, mask, on_step=None):
        if seen is not None:
            seen.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return finetune(model, task_data["train"], "binary", FT, seed, mask=mask, on_step=on_step)
    return train_fn, functools.partial(evaluate, data=task_data["dev"], kind="binary")


def test_imp_rewinds_the_body_exactly_to_theta0_and_keeps_the_head(make_model, task_data, tiny_pretrained):
    seen = []
    train_fn, eval_fn = _fns(task_data, seen)
    res = imp(make_model, train_fn, eval_fn, IMPConfig(rounds=2), seed=0, progress=False)
    assert [r["target"] for r in res.rounds] == pytest.approx([0.0, 0.1, 0.2])
    for r in (1, 2):
        start, mask = seen[r], res.masks[r]
        for k, v in start.items():
            if k.startswith("bert."):
                want = tiny_pretrained[k] * mask[k] if k in mask else tiny_pretrained[k]
                assert torch.equal(v, want), k
        # head: the values trained in the previous round, not the initial ones
        assert not torch.equal(start["classifier.weight"], seen[0]["classifier.weight"])
    assert abs(mask_sparsity(res.masks[2]) - 0.2) < 1e-3


def test_rewind_head_option_and_bad_config(make_model):
    m = make_model()
    theta0 = {k: v.clone() for k, v in m.state_dict().items()}
    with torch.no_grad():
        for p in m.parameters():
            p.add_(1.0)
    rewind(m, theta0, head="keep")
    assert torch.equal(m.bert.pooler.dense.weight, theta0["bert.pooler.dense.weight"])
    assert not torch.equal(m.classifier.weight, theta0["classifier.weight"])
    rewind(m, theta0, head="rewind")
    assert torch.equal(m.classifier.weight, theta0["classifier.weight"])
    with pytest.raises(ValueError, match="head='reset' is unknown"):
        IMPConfig(head="reset")
    with pytest.raises(ValueError, match="rounds=-1"):
        IMPConfig(rounds=-1)


def test_resumed_imp_equals_uninterrupted(make_model, task_data, tmp_path):
    train_fn, eval_fn = _fns(task_data)
    cfg = IMPConfig(rounds=3, rewind_step=2)
    full = imp(make_model, train_fn, eval_fn, cfg, seed=5, out_dir=tmp_path / "a", progress=False)
    part = imp(make_model, train_fn, eval_fn, cfg, seed=5, out_dir=tmp_path / "b", progress=False, stop_after=2)
    assert len(part.rounds) == 2
    resumed = imp(make_model, train_fn, eval_fn, cfg, seed=5, out_dir=tmp_path / "b", progress=False)
    assert [r["metrics"] for r in resumed.rounds] == [r["metrics"] for r in full.rounds]
    for r in full.masks:
        for k in full.masks[r]:
            assert torch.equal(full.masks[r][k], resumed.masks[r][k])
    a, b = load_file(tmp_path / "a/trained.safetensors"), load_file(tmp_path / "b/trained.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match=r'another configuration \(head: "keep" there, "rewind" now\)'):
        imp(make_model, train_fn, eval_fn, IMPConfig(rounds=3, rewind_step=2, head="rewind"), seed=5, out_dir=tmp_path / "a", progress=False)


def test_controls_build_the_right_subnetworks(make_model, task_data, tiny_pretrained):
    train_fn, eval_fn = _fns(task_data)
    res = imp(make_model, train_fn, eval_fn, IMPConfig(rounds=3), seed=0, progress=False)
    imp_mask = res.masks[3]
    s = mask_sparsity(imp_mask)
    built = {k: control(k, make_model, imp_mask, seed=1) for k in CONTROLS}
    for kind, (model, mask) in built.items():
        assert mask_sparsity(mask) == pytest.approx(s, abs=1e-9), kind
        sd = model.state_dict()
        for k, m in mask.items():
            assert torch.all(sd[k][~m] == 0)
    q = "bert.encoder.layer.0.attention.self.query.weight"
    assert torch.equal(built["imp"][0].state_dict()[q], tiny_pretrained[q] * imp_mask[q])
    assert not all(torch.equal(built["random_pruning"][1][k], imp_mask[k]) for k in imp_mask)
    assert not torch.equal(built["random_reinit"][0].state_dict()[q], built["imp"][0].state_dict()[q])
    sh = built["shuffled"][0].state_dict()[q]
    assert torch.equal(built["shuffled"][1][q], imp_mask[q])
    assert not torch.equal(sh, built["imp"][0].state_dict()[q])
    # one-shot: magnitude of theta_0 itself
    om = built["oneshot"][1]
    kept = torch.cat([tiny_pretrained[k].abs()[om[k]] for k in om])
    gone = torch.cat([tiny_pretrained[k].abs()[~om[k]] for k in om])
    assert gone.max() <= kept.min()
    with pytest.raises(ValueError, match="kind='lottery' is unknown"):
        control("lottery", make_model, imp_mask)


def test_winning_criterion_is_one_std_of_the_full_model():
    full = [0.80, 0.82, 0.84]  # mean 0.82, sample std 0.02
    assert winning([0.80, 0.81, 0.80], full)  # mean 0.8033 >= 0.80
    assert not winning([0.79, 0.80, 0.79], full)  # 0.7933 < 0.80
    assert winning([0.80], [0.80])
    levels = {0.1: [0.83], 0.5: [0.81], 0.7: [0.70], 0.8: [0.805]}
    assert sparsest_winning(levels, full) == 0.8
    assert sparsest_winning(levels, full, contiguous=True) == 0.5
    assert sparsest_winning({0.9: [0.1]}, full) is None
    with pytest.raises(ValueError, match="need scores"):
        winning([], full)
