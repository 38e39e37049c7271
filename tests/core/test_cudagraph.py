import pytest
import torch

from anybudget.cudagraph import capture


def test_capture_needs_cuda_and_a_valid_warmup(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="capture\\(\\) needs CUDA"):
        capture(lambda: None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(ValueError, match="warmup=-1 is out of range"):
        capture(lambda: None, warmup=-1)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_replays_rerun_the_step_on_the_same_tensors():
    x = torch.zeros(4, device="cuda")
    graph = capture(lambda: x.add_(1), warmup=2)  # the warm-up calls run, the capture does not
    assert x.tolist() == [2.0] * 4
    for _ in range(3):
        graph.replay()
    torch.cuda.synchronize()
    assert x.tolist() == [5.0] * 4
