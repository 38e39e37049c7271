import time

import pytest
import torch

from anybudget import measure


def test_latency_measures_sleep():
    t = measure.latency(time.sleep, 0.01, warmup=1, repeat=5, device="cpu")
    assert len(t.times_s) == 5 and t.device == "cpu"
    assert 0.009 < t.median_s < 0.2
    assert set(t.as_dict()) >= {"median_s", "mean_s", "repeat"}


def test_latency_bad_input():
    with pytest.raises(ValueError, match="repeat=0 must be an integer >= 1"):
        measure.latency(lambda: None, repeat=0)
    with pytest.raises(ValueError, match="warmup=-1"):
        measure.latency(lambda: None, warmup=-1)
    with pytest.raises(TypeError, match="fn must be callable"):
        measure.latency(3)
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            measure.latency(lambda: None, device="cuda")


def test_model_bytes_counts_shared_once():
    lin = torch.nn.Linear(10, 20)  # 200 + 20 floats
    m = torch.nn.Sequential(lin, lin)
    m.register_buffer("b", torch.zeros(5, dtype=torch.float16))
    assert measure.model_bytes(m) == 220 * 4 + 5 * 2
    assert measure.model_bytes(m, buffers=False) == 220 * 4
    with pytest.raises(TypeError, match="torch.nn.Module"):
        measure.model_bytes("x")


def test_peak_memory_cpu_returns_none():
    out, peak = measure.peak_memory(lambda: 7)
    assert out == 7
    assert peak is None or peak >= 0


def test_file_size(tmp_path):
    (tmp_path / "a").write_bytes(b"x" * 10)
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "b").write_bytes(b"y" * 5)
    assert measure.file_size(tmp_path / "a") == 10
    assert measure.file_size(tmp_path) == 15
    with pytest.raises(FileNotFoundError, match="does not exist"):
        measure.file_size(tmp_path / "nope")


def test_device_record_fields():
    rec = measure.device_record()
    for k in ("date", "commit", "torch", "transformers", "gpu", "driver", "python"):
        assert k in rec
    assert rec["torch"] == torch.__version__


def test_host_time_counts_the_calls_and_checks_its_arguments():
    calls = []

    def fn(x):
        calls.append(x)
        time.sleep(0.002)

    t = measure.host_time(fn, 7, warmup=2, repeat=5)
    assert calls == [7] * 7  # warm-up + timed calls, arguments passed through
    assert 0.0019 < t < 0.2  # seconds per call
    with pytest.raises(ValueError, match="repeat=0 must be an integer >= 1"):
        measure.host_time(fn, 1, repeat=0)
    with pytest.raises(ValueError, match="warmup=-1"):
        measure.host_time(fn, 1, warmup=-1)
    with pytest.raises(TypeError, match="fn must be callable"):
        measure.host_time(3)


def test_kernel_times_lists_the_costliest_ops_per_call_and_checks_steps():
    import pytest
    import torch

    from anybudget.measure import kernel_times

    a = torch.randn(256, 256)
    rows, total_us, count = kernel_times(lambda: (a @ a).relu_(), steps=2, top=3)
    assert 0 < len(rows) <= 3 and total_us >= sum(r["us_per_step"] for r in rows) > 0 and count >= 2
    assert [r["us_per_step"] for r in rows] == sorted((r["us_per_step"] for r in rows), reverse=True)
    assert any("mm" in r["kernel"] for r in rows) and all(r["calls_per_step"] > 0 for r in rows)
    with pytest.raises(ValueError, match="steps=0"):
        kernel_times(lambda: None, steps=0)
