"""How the op lives inside PyTorch: opcheck, torch.compile, autocast, FLOP counting,
and clear errors for bad input."""

from types import SimpleNamespace

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import pan_ops
from op_utils import REL_TOL, ground_truth, make_inputs, rel_error

CUDA = torch.cuda.is_available()
needs_extension = pytest.mark.skipif(not pan_ops._library.HAS_EXTENSION, reason="pan_ops._C is not built")
DEVICES = ["cpu"] + (["cuda"] if CUDA else [])


@needs_extension
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_opcheck(device, layout):
    features, masks = make_inputs(2, 7, 5, 3, 4, torch.float32, device, layout)
    features.requires_grad_(True)
    masks.requires_grad_(True)
    backend = "cpu" if device == "cpu" else "cuda"  # the compiled kernels; Triton's opcheck: test_triton_backend
    torch.library.opcheck(torch.ops.pan_ops.weighted_pool.default, (features, masks, 1e-6, backend))
    grad = torch.randn(2, 4, 7, device=device)
    backward = torch.ops.pan_ops._weighted_pool_backward.default
    torch.library.opcheck(backward, (grad, features.detach(), masks.detach(), 1e-6, backend))


@needs_extension
@pytest.mark.parametrize("device", DEVICES)
def test_torch_compile_fullgraph_forward_backward(device):
    torch._dynamo.reset()
    features, masks = make_inputs(2, 12, 6, 4, 5, torch.float32, device, seed=1)

    @torch.compile(fullgraph=True, backend="inductor")
    def step(f, m):
        return (pan_ops.weighted_pool(f, m) * 2).square().sum()

    f, m = features.clone().requires_grad_(True), masks.clone().requires_grad_(True)
    step(f, m).backward()
    fe, me = features.clone().requires_grad_(True), masks.clone().requires_grad_(True)
    (pan_ops.weighted_pool(fe, me) * 2).square().sum().backward()
    torch.testing.assert_close(f.grad, fe.grad)
    torch.testing.assert_close(m.grad, me.grad)


@needs_extension
@pytest.mark.parametrize("device,dtype", [("cpu", torch.bfloat16)] + ([("cuda", torch.float16)] if CUDA else []))
def test_autocast_casts_both_inputs(device, dtype):
    features, masks = make_inputs(2, 9, 4, 3, 5, torch.float32, device)
    with torch.autocast(device, dtype=dtype):
        out = pan_ops.weighted_pool(features, masks.half())  # mixed dtypes are fine under autocast
        direct = torch.ops.pan_ops.weighted_pool(features, masks.half(), 1e-6)
    assert out.dtype == dtype and direct.dtype == dtype
    ref, _, _ = ground_truth(features.to(dtype), masks.half().to(dtype), 1e-6)
    assert rel_error(out, ref) < REL_TOL[dtype]
    assert torch.equal(out, direct)


def test_dtype_mismatch_outside_autocast_is_an_error():
    features, masks = make_inputs(2, 9, 4, 3, 5)
    with pytest.raises(TypeError, match="same dtype"):
        pan_ops.weighted_pool(features, masks.double())


@needs_extension
def test_flop_counter_counts_the_op():
    B, C, H, W, P = 2, 16, 6, 4, 5
    features, masks = make_inputs(B, C, H, W, P)
    features.requires_grad_(True)
    with FlopCounterMode(display=False) as counter:
        out = pan_ops.weighted_pool(features, masks, backend="cpu")
    forward = 2 * B * P * C * H * W
    assert counter.get_total_flops() == forward
    with FlopCounterMode(display=False) as counter:
        pan_ops.weighted_pool(features, masks, backend="cpu").sum().backward()
    assert counter.get_total_flops() == 3 * forward
    assert out.shape == (B, P, C)


def _bad_inputs():
    f, m = make_inputs(2, 6, 4, 3, 5)
    return [
        ("rank", f[0], m, ValueError, r"features must be 4-D.*\[6, 4, 3\]"),
        ("mask rank", f, m[:, :, 0], ValueError, r"masks must be 4-D.*\[2, 5, 3\]"),
        ("batch", f, m[:1], ValueError, r"same batch size.*\[2, 6, 4, 3\].*\[1, 5, 4, 3\]"),
        ("spatial", f, m[:, :, :3], ValueError, r"same spatial size.*\[2, 6, 4, 3\].*\[2, 5, 3, 3\]"),
        ("integer", f.long(), m.long(), TypeError, r"features must be float16, bfloat16, float32 or float64"),
        ("dtype", f, m.half(), TypeError, r"same dtype"),
    ]


@pytest.mark.parametrize("case", _bad_inputs(), ids=lambda c: c[0])
def test_bad_input_python_api(case):
    _, f, m, exc, pattern = case
    for backend in ("auto", "reference"):
        with pytest.raises(exc, match=pattern):
            pan_ops.weighted_pool(f, m, backend=backend)


@needs_extension
@pytest.mark.parametrize("case", _bad_inputs(), ids=lambda c: c[0])
def test_bad_input_registered_op(case):
    """Direct torch.ops calls hit the same checks in C++."""
    _, f, m, exc, pattern = case
    with pytest.raises(exc, match=pattern):
        torch.ops.pan_ops.weighted_pool(f, m, 1e-6)


@pytest.mark.parametrize("eps", [0.0, -1.0])
def test_bad_eps(eps):
    f, m = make_inputs(1, 2, 3, 3, 2)
    with pytest.raises(ValueError, match="eps must be > 0"):
        pan_ops.weighted_pool(f, m, eps=eps)
    if pan_ops._library.HAS_EXTENSION:
        with pytest.raises(ValueError, match="eps must be > 0"):
            torch.ops.pan_ops.weighted_pool(f, m, eps)


def test_every_default_eps_is_the_contracts():
    """pan_ops.DEFAULT_EPS is the one default: the Python signatures read it, and the C++
    schema, which cannot import it, states the same value."""
    import inspect

    for function in (pan_ops.weighted_pool, pan_ops.reference.weighted_pool, pan_ops.MaskedWeightedPool.__init__):
        assert inspect.signature(function).parameters["eps"].default == pan_ops.DEFAULT_EPS, function
    if pan_ops._library.HAS_EXTENSION:
        (eps,) = [a for a in torch.ops.pan_ops.weighted_pool.default._schema.arguments if a.name == "eps"]
        assert eps.default_value == pan_ops.DEFAULT_EPS


def test_bad_backend_name():
    """Every Python entry point rejects an unknown name with the one check (BACKENDS listed), the
    registered op for its direct callers."""
    f, m = make_inputs(1, 2, 3, 3, 2)
    listed = r"backend must be one of \('auto', 'reference', 'cpu', 'cuda', 'triton'\), got 'fastest'"
    for call in (
        lambda: pan_ops.weighted_pool(f, m, backend="fastest"),
        lambda: pan_ops.WeightedPool.apply(f, m, 1e-3, "fastest"),
        lambda: pan_ops.MaskedWeightedPool(backend="fastest"),
        lambda: pan_ops.force_backend("fastest").__enter__(),
    ):
        with pytest.raises(ValueError, match=listed):
            call()
    if pan_ops._library.HAS_EXTENSION:
        with pytest.raises(ValueError, match="backend must be one of"):
            torch.ops.pan_ops.weighted_pool(f, m, 1e-3, "fastest")


@needs_extension
def test_force_backend_overrides_every_call_in_its_block(monkeypatch):
    """Inside force_backend("reference") a call asking for the C++ kernel runs the reference (the op
    is not called), the result is the float64 ground truth, and the previous choice comes back
    after the block, also when it raises."""
    features, masks = make_inputs(2, 7, 5, 3, 4, torch.float64, seed=3)
    ref, _, _ = ground_truth(features, masks, 1e-3, torch.ones(2, 4, 7, dtype=torch.float64))
    op_calls = []
    op = torch.ops.pan_ops.weighted_pool
    monkeypatch.setattr(torch.ops.pan_ops, "weighted_pool", lambda *a: op_calls.append(a) or op(*a))
    with pan_ops.force_backend("reference"):
        out = pan_ops.weighted_pool(features, masks, 1e-3, backend="cpu")
        with pytest.raises(RuntimeError, match="boom"), pan_ops.force_backend("cpu"):
            assert pan_ops.weighted_pool(features, masks, 1e-3, backend="reference").shape == out.shape
            raise RuntimeError("boom")
        pan_ops.weighted_pool(features, masks, 1e-3, backend="cpu")
    assert rel_error(out, ref) < 1e-12
    assert [a[3] for a in op_calls] == ["cpu"]  # only the call forced onto "cpu" reached the op
    pan_ops.weighted_pool(features, masks, 1e-3, backend="cpu")
    assert [a[3] for a in op_calls] == ["cpu", "cpu"]


def test_backend_device_mismatch():
    f, m = make_inputs(1, 2, 3, 3, 2)
    with pytest.raises(RuntimeError, match="needs cuda tensors"):
        pan_ops.weighted_pool(f, m, backend="cuda")


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_device_mismatch():
    f, m = make_inputs(1, 2, 3, 3, 2)
    with pytest.raises(RuntimeError, match="same device"):
        pan_ops.weighted_pool(f.cuda(), m)


@needs_extension
def test_backward_grad_shape_checked():
    f, m = make_inputs(2, 6, 4, 3, 5)
    with pytest.raises(ValueError, match=r"grad must have shape \[B,P,C\] = \[2, 5, 6\]"):
        torch.ops.pan_ops._weighted_pool_backward(torch.randn(2, 6, 5), f, m, 1e-6, "cpu")


@needs_extension
@pytest.mark.parametrize("device", DEVICES)
def test_autograd_function_matches_float64(device):
    """pan_ops.WeightedPool, applied with and without the optional arguments, against the
    float64 ground truth (its backward is the op's own formula)."""
    features, masks = make_inputs(2, 7, 5, 3, 4, torch.float64, device, seed=5)
    grad = torch.randn(2, 4, 7, dtype=torch.float64, device=device)
    ref, ref_df, ref_dm = ground_truth(features, masks, 1e-3, grad)
    for args in ((1e-3,), (1e-3, "auto"), (1e-3, "reference")):
        f, m = features.clone().requires_grad_(True), masks.clone().requires_grad_(True)
        out = pan_ops.WeightedPool.apply(f, m, *args)
        out.backward(grad)
        assert rel_error(out, ref) < 1e-12 and rel_error(f.grad, ref_df) < 1e-12 and rel_error(m.grad, ref_dm) < 1e-12
    # the backward itself, asked for one input's gradient only: None for the other, the one exact
    for backend, backward in (("auto", pan_ops._library.backward), ("reference", pan_ops.WeightedPool.backward)):
        for needs, expected in (((True, False), (ref_df, None)), ((False, True), (None, ref_dm))):
            ctx = SimpleNamespace(saved_tensors=(features, masks), eps=1e-3, backend=backend, needs_input_grad=(*needs, False, False))
            grads = backward(ctx, grad)
            assert grads[2:] == (None, None)
            for got, want in zip(grads[:2], expected):
                assert got is None if want is None else rel_error(got, want) < 1e-12


@needs_extension
def test_double_backward_is_an_error_not_a_silent_none():
    features, masks = make_inputs(2, 5, 3, 3, 4, torch.float64)
    features.requires_grad_(True)
    masks.requires_grad_(True)
    out = pan_ops.weighted_pool(features, masks, backend="cpu")
    (grad_features,) = torch.autograd.grad(out.square().sum(), features, create_graph=True)
    with pytest.raises(NotImplementedError, match="second derivatives are not implemented"):
        grad_features.sum().backward()
