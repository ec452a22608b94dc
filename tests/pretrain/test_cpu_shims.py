import pytest
import torch

from pretrain import cpu_shims

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="shims are inactive with CUDA")


@pytest.fixture
def shims():
    assert cpu_shims.install()
    yield
    cpu_shims.uninstall()


def test_redirects_cuda_to_cpu(shims) -> None:
    assert torch.cuda.current_device() == "cpu"
    t = torch.zeros(3, device="cuda")
    assert t.device.type == "cpu"
    assert torch.tensor([1.0], device=torch.cuda.current_device()).device.type == "cpu"
    assert t.cuda() is t
    assert t.to("cuda").device.type == "cpu"
    torch.cuda.synchronize()


def test_uninstall_restores_torch() -> None:
    zeros, to = torch.zeros, torch.Tensor.to
    cpu_shims.install()
    assert torch.zeros is not zeros
    cpu_shims.uninstall()
    assert torch.zeros is zeros and torch.Tensor.to is to and not cpu_shims.installed()
    with pytest.raises((RuntimeError, AssertionError)):
        torch.zeros(1, device="cuda")


def test_rng_tracker_forks_named_cpu_states(shims) -> None:
    from megatron.core.tensor_parallel import get_cuda_rng_tracker

    tracker = get_cuda_rng_tracker()
    assert isinstance(tracker, cpu_shims.CpuRNGStatesTracker)
    tracker.reset()
    tracker.add("model-parallel-rng", 7)
    torch.manual_seed(0)
    outside = torch.get_rng_state()
    with tracker.fork():
        a = torch.rand(4)
    assert torch.equal(torch.get_rng_state(), outside)  # the default stream did not move
    torch.manual_seed(7)
    assert torch.equal(a, torch.rand(4))  # the fork drew from the seed-7 stream
    with tracker.fork():
        b = torch.rand(4)
    assert not torch.equal(a, b)  # and the named stream advanced
    with pytest.raises(ValueError):
        tracker.add("other", 7)


def test_clip_scales_grads_to_max_norm(shims) -> None:
    import megatron.core.optimizer.optimizer as moptim

    p = torch.nn.Parameter(torch.ones(4))
    p.grad = torch.full((4,), 3.0)  # norm 6
    moptim.clip_grad_by_total_norm_fp32([p], max_norm=1.0, total_norm=6.0)
    assert torch.linalg.vector_norm(p.grad).item() == pytest.approx(1.0, rel=1e-5)
