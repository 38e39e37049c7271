"""Tiny random causal LMs for the kv tests (a uniquely named module: the test folders share
sys.path, so two conftest.py files would shadow each other)."""

import contextlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import torch


def tiny_model(family: str, seed: int = 0):
    """A tiny random causal LM of ``family`` (fp32, CPU)."""
    import transformers as tf

    torch.manual_seed(seed)
    common = dict(vocab_size=96, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=64, max_position_embeddings=256)
    if family == "llama":
        cfg = tf.LlamaConfig(num_key_value_heads=2, **common)
    elif family == "mistral":
        cfg = tf.MistralConfig(num_key_value_heads=2, sliding_window=None, **common)
    elif family == "qwen2":
        cfg = tf.Qwen2Config(num_key_value_heads=2, **common)
    elif family == "qwen3":
        cfg = tf.Qwen3Config(num_key_value_heads=2, head_dim=8, **common)
    elif family == "gpt_neox":
        cfg = tf.GPTNeoXConfig(rotary_pct=0.5, **common)
    else:
        raise ValueError(family)
    cfg._attn_implementation = "sdpa"
    model = tf.AutoModelForCausalLM.from_config(cfg).eval()
    # Random init gives near-uniform attention; sharpen it so heavy hitters differ from local.
    with torch.no_grad():
        for n, p in model.named_parameters():
            if any(k in n for k in ("q_proj", "k_proj", "query_key_value")):
                p.mul_(4.0)
    return model


FAMILIES = ["llama", "mistral", "qwen2", "qwen3", "gpt_neox"]


GPU_TEST_SECONDS = 240.0  # default cap of one gpu-marked kv test (ANYBUDGET_GPU_TEST_S overrides)


@contextlib.contextmanager
def time_limit(seconds: float, what: str):
    """Raise ``TimeoutError`` naming ``what`` when the block runs past ``seconds`` (serving's
    ``row_guard.alarm``: SIGALRM, main thread; where there is none the block runs unbounded). A test
    that hangs or compiles for too long then fails with its traceback (where it was) instead of
    stalling the whole session."""
    if seconds <= 0:
        raise ValueError(f"seconds={seconds}: must be > 0")
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks" / "kv"))
    from row_guard import alarm

    with alarm(seconds, lambda: TimeoutError(f"{what} ran past {seconds:g} s")):
        yield


def run_interpreted(script):
    """Run ``script`` in a subprocess under Triton's interpreter (TRITON_INTERPRET must be set before
    triton compiles anything) with this checkout's sources first; returns its stdout."""
    env = dict(os.environ, TRITON_INTERPRET="1")
    src = os.path.join(os.path.dirname(__file__), "..", "..", "src")
    env["PYTHONPATH"] = os.path.abspath(src) + os.pathsep + env.get("PYTHONPATH", "")
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], check=False, env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout


def interpreter_ok():
    """(usable, reason): whether Triton's interpreter can run the kernels here."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False, "triton not installed (pip install 'anybudget[gpu]')"
    import numpy

    if tuple(int(x) for x in numpy.__version__.split(".")[:2]) >= (2, 4):
        return False, "Triton's interpreter breaks on numpy >= 2.4; the dev extra pins numpy<2.4"
    return True, ""
