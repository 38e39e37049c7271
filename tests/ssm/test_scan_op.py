"""The scan as a custom op (``scan_op``): equal to the reference, traceable whole by torch.compile.

The op's Triton implementation is checked under the interpreter in ``test_triton.py`` ("op" cases of
``triton_interpret_check.py``); here its PyTorch implementation (the CPU path) and the compiled loss.
"""

import pytest
import torch
from ssm_helpers import scan_inputs

from anybudget.ssm import LMConfig, MambaConfig, MambaLM
from anybudget.ssm.fast_step import FastStepConfig, _tf32, static_mqar_loss
from anybudget.ssm.mqar import mqar_queries
from anybudget.ssm.scan import selective_scan, selective_scan_ref
from anybudget.ssm.scan_op import selective_scan_op


@pytest.mark.parametrize("optional", [True, False])
def test_op_forward_and_gradients_equal_the_reference(optional):
    # float64, polarized A (a 0 and a -inf column): forward, last state and all gradients to 1e-10
    # (the last state is returned in float32 as by the Triton op: 1e-6).
    ins = scan_inputs(2, 5, 23, 4, polar=True, seed=3)
    if not optional:
        ins[5] = ins[6] = ins[7] = None
    o1, h1 = selective_scan_ref(*ins, delta_softplus=True, return_last_state=True)
    o2, h2 = selective_scan_op(*ins, delta_softplus=True, return_last_state=True, impl="torch")
    assert o2.dtype == torch.float64 and h2.dtype == torch.float32 and not h2.requires_grad
    torch.testing.assert_close(o2, o1, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(h2, h1.float(), rtol=1e-6, atol=1e-6)
    g = torch.randn(o1.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    leaves = [t for t in ins if t is not None]
    for a, b in zip(torch.autograd.grad((o1 * g).sum(), leaves), torch.autograd.grad((o2 * g).sum(), leaves)):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-10)


def test_op_schema_fakes_and_autograd_pass_opcheck():
    # torch.library.opcheck: the fakes give the real outputs' shapes/strides/dtypes, the autograd
    # registration is consistent, and the op traces under AOT dispatch.
    ins = [t.detach().float() for t in scan_inputs(1, 3, 9, 3, polar=True, seed=5)]
    torch.library.opcheck(torch.ops.anybudget.ssm_scan_fwd.default, (*ins, True, "torch", 1, 0, 0),
                          test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))
    out, states, _, states1, ypre = torch.ops.anybudget.ssm_scan_fwd(*ins, True, "torch", 1, 0, 0)
    # the one-channel's states and y before the gate: only when folded into the Triton kernels
    assert states1.shape == (1, 0, 3) and ypre.shape == (0,)
    with pytest.raises(ValueError, match="n_ones=1, n_zeros=1: folding the polarized channels needs impl='triton'"):
        torch.ops.anybudget.ssm_scan_fwd(*ins, True, "torch", 1, 1, 1)
    # The backward's CPU implementation runs torch.func.vjp inside, whose wrapped tensors opcheck's
    # modes cannot inspect: its fake is compared with the real outputs directly.
    from torch._subclasses.fake_tensor import FakeTensorMode

    args = (torch.randn_like(out), *ins, states, states1, ypre)
    real = torch.ops.anybudget.ssm_scan_bwd(*args, True, "torch", 1, 0, 0)
    with FakeTensorMode() as mode:
        fake = torch.ops.anybudget.ssm_scan_bwd(*(mode.from_tensor(t) for t in args), True, "torch", 1, 0, 0)
    assert [(r.shape, r.dtype, r.stride()) for r in real] == [(f.shape, f.dtype, f.stride()) for f in fake]
    assert [r.shape for r in real] == [t.shape for t in ins]


def test_op_rejects_an_unknown_implementation():
    ins = scan_inputs(1, 2, 4, 2)
    with pytest.raises(ValueError, match="impl='cuda'; allowed: auto, triton, torch"):
        selective_scan_op(*ins, impl="cuda")
    with pytest.raises(ValueError, match="backend='opx'"):
        selective_scan(*ins, backend="opx")


def _lm(layers=1, backend="op"):
    torch.manual_seed(0)
    mc = MambaConfig(d_model=16, d_state=4, polarize="both", scan_backend=backend)
    return MambaLM(LMConfig(vocab_size=96, d_model=16, n_layers=layers, mamba=mc))


def test_compiled_loss_is_one_graph_with_the_eager_loss_and_gradients():
    # fullgraph=True raises on any graph break; the counter shows one traced graph per input shape
    # (dynamic=False here: shape-generic tracing takes 3x longer on a CPU; FastStep's default is
    # dynamic). Inside the graph the conv is the shifted multiply-add form and the scan the op.
    from torch._dynamo.testing import CompileCounterWithBackend

    lm = _lm()
    params = list(lm.parameters())
    counter = CompileCounterWithBackend("aot_eager")
    torch._dynamo.reset()
    f = torch.compile(static_mqar_loss, backend=counter, fullgraph=True, dynamic=False)
    for seq, k, seed in ((48, 6, 0), (48, 6, 1)):
        x, pos, val = mqar_queries(96, seq, k, 3, seed=seed)
        ref = static_mqar_loss(lm, x, pos, val)
        g_ref = torch.autograd.grad(ref, params)
        out = f(lm, x, pos, val)
        g = torch.autograd.grad(out, params)
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
        for (n, _), a, b in zip(lm.named_parameters(), g_ref, g):
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6, msg=n)
    assert counter.frame_count == 1  # the same shape again: no recompile
    ops = [n.target for gm in counter.graphs for n in gm.graph.nodes if n.op == "call_function"]
    assert any("ssm_scan_fwd" in str(t) for t in ops)  # the scan is in the graph as the op
    assert not any("conv" in str(t) for t in ops)  # the conv became elementwise work


def test_auto_backend_compiles_to_the_op_without_a_break():
    # "auto" is the chunked PyTorch scan eagerly on a CPU and the op while compiling; the CPU value
    # check on A is skipped while tracing (it would be a data-dependent branch). Shape-generic.
    from torch._dynamo.testing import CompileCounterWithBackend

    lm = _lm(backend="auto")
    counter = CompileCounterWithBackend("eager")
    torch._dynamo.reset()
    f = torch.compile(static_mqar_loss, backend=counter, fullgraph=True, dynamic=True)
    for seq, k in ((32, 4), (40, 2)):
        x, pos, val = mqar_queries(96, seq, k, 2, seed=2)
        torch.testing.assert_close(f(lm, x, pos, val), static_mqar_loss(lm, x, pos, val), rtol=1e-5, atol=1e-6)
    assert counter.frame_count == 1
    assert any("ssm_scan_fwd" in str(n.target) for n in counter.graphs[0].graph.nodes)


def test_tf32_switch_is_scoped_and_config_errors_name_the_argument():
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with _tf32(True):
            assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        assert not torch.backends.cuda.matmul.allow_tf32
        with _tf32(False):
            assert not torch.backends.cuda.matmul.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before
    assert FastStepConfig().tf32 and FastStepConfig.from_mode("compile", "cpu").compile
    with pytest.raises(ValueError, match="compile_mode='reduce-overhead'"):
        FastStepConfig(compile=True, cuda_graph=True, compile_mode="reduce-overhead")
    with pytest.raises(ValueError, match="warmup_steps=0"):
        FastStepConfig(warmup_steps=0)
