"""Device choice, with the GPU count faked so the GPU branch runs without a GPU."""
import mxnet as mx
import pytest

from d2lbn import device


@pytest.mark.parametrize("count, i, expected", [
    (0, 0, mx.cpu()), (1, 0, mx.gpu(0)), (1, 1, mx.cpu()), (4, 3, mx.gpu(3)),
])
def test_try_gpu(monkeypatch, count, i, expected):
    monkeypatch.setattr(mx.context, "num_gpus", lambda: count)
    assert device.try_gpu(i) == expected


@pytest.mark.parametrize("count, expected", [
    (0, [mx.cpu()]), (1, [mx.gpu(0)]), (3, [mx.gpu(0), mx.gpu(1), mx.gpu(2)]),
])
def test_try_all_gpus(monkeypatch, count, expected):
    monkeypatch.setattr(mx.context, "num_gpus", lambda: count)
    assert device.try_all_gpus() == expected


def test_real_machine_count_is_consistent():
    """Whatever this machine has, the answer is a context MXNet can allocate on."""
    ctx = device.try_gpu()
    assert ctx == (mx.gpu(0) if mx.context.num_gpus() > 0 else mx.cpu())
    assert mx.nd.ones(1, ctx=ctx).context == ctx


@pytest.mark.parametrize("bad", [-1, 1.5, "0", True])
def test_bad_index(bad):
    with pytest.raises(ValueError, match="i must be a GPU index"):
        device.try_gpu(bad)
