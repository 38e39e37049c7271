"""A static-shape MQAR training step: no host syncs, optionally compiled or captured as a CUDA graph.

The reference step (``train.train_mqar`` with ``step="reference"``) selects labeled positions
with a boolean mask, whose size the host must read back every step, and calls ~30 small kernels
per layer from Python: at d_model 128 the GPU waits on the host (23 ms / step at depth 2 on an
H100). Here every shape is known ahead of time:

* a batch from one MQAR segment has exactly ``num_kv_pairs`` queries per row, so the answers come
  as ``positions, values: (batch, num_kv_pairs)`` (``mqar.mqar_queries``, drawn on the device,
  same examples as the reference stream) and the loss gathers those positions: the same mean
  cross-entropy over the same positions, in another order;
* the learning rate lives in a tensor (``capturable`` AdamW), the loss is summed on the device
  and read only when a record is written;
* ``cuda_graph=True`` captures forward + backward + optimizer step once per segment shape
  (one graph per sequence-length bucket) and replays it; ``compile=True`` compiles the loss
  (``torch.compile``, backend chosen by ``compile_backend``; "eager" / "aot_eager" test the tracing
  on a CPU) as one graph (``fullgraph=True``): the selective scan enters it as the opaque custom op
  ``scan_op`` (Triton kernels, registered backward), so the compiler fuses the layout changes and
  elementwise work around it (the depthwise conv becomes shifted multiply-adds, ``Mamba.forward``).
  Both together: the compiled step is captured as one CUDA graph per shape (the compiler's own
  CUDA graphs, ``mode="reduce-overhead"``, are not used: this capture also holds the optimizer).
* ``tf32=True`` (default): float32 matmuls on CUDA may use TF32 tensor cores during the step
  (``torch.backends.cuda.matmul.allow_tf32`` and cuDNN's, restored after): a 10-bit mantissa in
  the products, float32 accumulation; the scan's recurrence is Triton code in float32 either way.
  ``tf32=False`` keeps the reference's IEEE float32 matmuls.

The embedding's backward is an ``index_add`` (atomic adds on CUDA): PyTorch's dense embedding
backward may size its work on the host, which a CUDA graph cannot capture.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from anybudget.cudagraph import capture

__all__ = ["FastStep", "FastStepConfig", "static_mqar_loss"]

STEP_MODES = ("reference", "auto", "eager", "compile", "cudagraph", "compile+cudagraph", "cudagraph+bf16",
              "compile+cudagraph+bf16")


@dataclass(frozen=True)
class FastStepConfig:
    """How the static step runs. ``compile``: torch.compile the loss; ``cuda_graph``: capture the
    whole step per segment shape (CUDA only); ``compile_backend``: torch.compile's backend;
    ``compile_mode``: torch.compile's mode (None: the default; "max-autotune-no-cudagraphs" tunes
    the matmuls; modes with the compiler's own CUDA graphs are refused with ``cuda_graph``);
    ``compile_dynamic``: one compile for every sequence length (True, default: the training mixture
    has 11 shapes, above dynamo's recompile limit of 8) or one per shape (False);
    ``bf16``: bf16 autocast for the forward (matmuls and the scan's inputs in bf16, the scan
    accumulating in fp32, the loss in fp32; not the reference's precision: opt-in);
    ``tf32``: TF32 tensor-core matmuls on CUDA (default on; see the module docstring);
    ``compile_options``: inductor settings as ``(name, value)`` pairs for ``torch.compile(options=...)``,
    e.g. ``(("coordinate_descent_tuning", True),)`` (empty: the defaults; torch takes options or a
    mode, not both)."""

    compile: bool = False
    cuda_graph: bool = False
    compile_backend: str = "inductor"
    warmup_steps: int = 2
    bf16: bool = False
    tf32: bool = True
    compile_mode: str | None = None
    compile_dynamic: bool | None = True
    compile_options: tuple = ()

    def __post_init__(self):
        if self.compile_options and self.compile_mode is not None:
            raise ValueError(f"compile_options={self.compile_options!r} with compile_mode={self.compile_mode!r}: "
                             "torch.compile takes one of them; set compile_mode=None")
        if not all(isinstance(o, tuple) and len(o) == 2 and isinstance(o[0], str) for o in self.compile_options):
            raise ValueError(f"compile_options={self.compile_options!r} must be (name, value) pairs")
        if self.cuda_graph and self.compile and self.compile_mode in ("reduce-overhead", "max-autotune"):
            raise ValueError(f"compile_mode={self.compile_mode!r} captures its own CUDA graphs; with cuda_graph=True "
                             "use None or 'max-autotune-no-cudagraphs'")
        if not isinstance(self.warmup_steps, int) or self.warmup_steps < 1:
            raise ValueError(f"warmup_steps={self.warmup_steps!r} must be an integer >= 1")

    @staticmethod
    def from_mode(mode: str, device) -> FastStepConfig:
        """``mode``: one of STEP_MODES except "reference"; "auto" = CUDA graphs on CUDA, else eager."""
        if mode not in STEP_MODES or mode == "reference":
            raise ValueError(f"step={mode!r}; allowed: {', '.join(STEP_MODES)}")
        cuda = torch.device(device).type == "cuda"
        if mode == "auto":
            mode = "cudagraph" if cuda else "eager"
        if "cudagraph" in mode and not cuda:
            raise ValueError(f"step={mode!r} needs a CUDA device, got {device}; use 'eager' or 'compile'")
        return FastStepConfig(compile="compile" in mode, cuda_graph="cudagraph" in mode, bf16="bf16" in mode)


@contextmanager
def _tf32(enabled: bool):
    """TF32 matmuls (cuBLAS and cuDNN) inside the block when ``enabled``; the previous settings after."""
    if not enabled:
        yield
        return
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


class _EmbeddingIndexAdd(torch.autograd.Function):
    """``weight[ids]`` whose backward is one ``index_add`` (no host sync, capturable)."""

    @staticmethod
    def forward(ctx, weight, ids):
        ctx.save_for_backward(ids)
        ctx.shape = weight.shape
        return weight[ids]

    @staticmethod
    def backward(ctx, grad):
        (ids,) = ctx.saved_tensors
        dw = grad.new_zeros(ctx.shape)
        dw.index_add_(0, ids.reshape(-1), grad.reshape(-1, ctx.shape[1]))
        return dw, None


def _features(model: nn.Module, inputs: Tensor) -> Tensor:
    if hasattr(model, "layers") and hasattr(model, "norm_f") and not hasattr(model, "pos"):
        x = _EmbeddingIndexAdd.apply(model.embedding.weight, inputs)  # MambaLM: sync-free embedding
        for layer in model.layers:
            x = layer(x)
        return model.norm_f(x)
    return model.features(inputs)


def static_mqar_loss(model: nn.Module, inputs: Tensor, positions: Tensor, values: Tensor) -> Tensor:
    """Mean cross-entropy of the answers: inputs (b, seq), positions / values (b, k) -> scalar.

    Equals ``F.cross_entropy(*train.labeled_logits(model, inputs, labels))`` for the labels these
    positions encode (the same terms, summed in another order).
    """
    h = _features(model, inputs)
    h = h.gather(1, positions.unsqueeze(-1).expand(-1, -1, h.shape[-1]))
    logits = model.lm_head(h)
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), values.reshape(-1))


class FastStep:
    """One optimizer step per call on a given batch, no host sync; loss summed on the device.

    ``groups``: AdamW parameter groups (``train._param_groups``). ``step(inputs, positions,
    values, lr)`` runs one step at learning rate ``lr``; ``take_loss()`` returns and resets the
    summed loss and the number of steps it covers (the only host read).
    """

    def __init__(self, model: nn.Module, groups, lr: float, grad_clip: float | None = None,
                 config: FastStepConfig = FastStepConfig()):
        self.model, self.config, self.grad_clip = model, config, grad_clip
        self.device = device = next(model.parameters()).device
        if config.cuda_graph and device.type != "cuda":
            raise ValueError(f"cuda_graph=True needs the model on CUDA, it is on {device}")
        self.params = [p for g in groups for p in g["params"]]
        self.capturable = config.cuda_graph
        # A tensor lr lets a captured optimizer step read a new value each replay.
        self.lr = torch.tensor(float(lr), device=device) if self.capturable else float(lr)
        self.opt = torch.optim.AdamW(groups, lr=self.lr, capturable=self.capturable)
        # The tensors a captured step reads (one per group if the optimizer copied them).
        self._lr_tensors = [g["lr"] for g in self.opt.param_groups] if self.capturable else []
        self.loss_sum = torch.zeros((), device=device)
        self.n = 0
        loss = static_mqar_loss
        if config.compile:
            loss = torch.compile(static_mqar_loss, backend=config.compile_backend, mode=config.compile_mode,
                                 options=dict(config.compile_options) or None, dynamic=config.compile_dynamic,
                                 fullgraph=True)
        self._loss = loss
        self._graphs: dict[tuple, tuple] = {}
        self._pool = None

    def _body(self, inputs, positions, values):
        # cache_enabled=False: autocast's cast cache must not outlive a captured graph (torch docs).
        # TF32 covers the backward's matmuls too; autocast only the forward (torch's AMP rule).
        with _tf32(self.config.tf32 and self.device.type == "cuda"):
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.config.bf16, cache_enabled=False):
                loss = self._loss(self.model, inputs, positions, values)
            loss.backward()
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip, foreach=True)
        self.opt.step()
        self.loss_sum.add_(loss.detach())

    def set_lr(self, lr: float) -> None:
        if self._lr_tensors:
            for t in self._lr_tensors:
                t.fill_(lr)  # a kernel with a host scalar: no sync
        else:
            for g in self.opt.param_groups:
                g["lr"] = lr

    def step(self, inputs: Tensor, positions: Tensor, values: Tensor, lr: float) -> None:
        self.set_lr(lr)
        if not self.config.cuda_graph:
            self.opt.zero_grad(set_to_none=True)
            self._body(inputs, positions, values)
        else:
            key = (tuple(inputs.shape), tuple(positions.shape))
            if key not in self._graphs:
                self._capture(key, inputs, positions, values)
            graph, static = self._graphs[key]
            for buf, new in zip(static, (inputs, positions, values)):
                buf.copy_(new)
            graph.replay()
        self.n += 1

    def _capture(self, key, inputs, positions, values) -> None:
        """Warm up (allocates optimizer state, compiles kernels) and capture one graph.

        Warm-up steps change the weights and the optimizer state, so both are restored in place
        afterwards (the graph keeps their addresses); the captured step runs only on replay.
        """
        saved_p = [p.detach().clone() for p in self.params]
        saved_s = {id(p): {k: v.clone() if isinstance(v, Tensor) else v for k, v in self.opt.state[p].items()}
                   for p in self.params if p in self.opt.state}
        saved_loss = self.loss_sum.clone()
        static = tuple(t.clone() for t in (inputs, positions, values))

        def step():
            self.opt.zero_grad(set_to_none=True)  # host-side only: no kernel enters the graph
            self._body(*static)

        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        # One pool for all shapes: graphs never run concurrently and nothing a graph allocates
        # is needed after its replay (weights, optimizer state, loss sum and inputs live outside).
        graph = capture(step, warmup=self.config.warmup_steps, pool=self._pool)
        with torch.no_grad():
            for p, v in zip(self.params, saved_p):
                p.copy_(v)
            for p in self.params:
                old = saved_s.get(id(p))
                for k, v in self.opt.state[p].items():
                    if isinstance(v, Tensor):
                        v.copy_(old[k]) if old is not None else v.zero_()
            self.loss_sum.copy_(saved_loss)
        self._graphs[key] = (graph, static)

    def take_loss(self) -> tuple[float, int]:
        """(summed loss, steps) since the last call; reads the device once."""
        total, n = float(self.loss_sum), self.n
        self.loss_sum.zero_()
        self.n = 0
        return total, n

    def state_dict(self) -> dict:
        return self.opt.state_dict()

    def load_state_dict(self, sd: dict) -> None:
        """Load optimizer state; captured graphs keep reading the same tensors (copied in place)."""
        if not self._graphs:
            self.opt.load_state_dict(sd)
            for g, t in zip(self.opt.param_groups, self._lr_tensors):
                g["lr"] = t  # load_state_dict put the saved lr (a float or another tensor) there
            return
        # state_dict numbers parameters in param-group order, the order of self.params.
        for i, p in enumerate(self.params):
            for k, v in sd["state"].get(i, {}).items():
                self.opt.state[p][k].copy_(v)
