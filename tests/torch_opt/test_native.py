"""The native CPU kernels (torch_opt/_native): the default step path of RMSpropODE and Amos.

Each path is checked against the per-tensor reference kernels in float64, and the element-wise
RMSprop kernel against torch's own operations in torch's order (with an IEEE square root, the
one difference) to the bit; plus the fallback without a compiler, the cache, and the
bookkeeping (version counters, threads, mixed groups).
"""

from __future__ import annotations

import itertools
import math
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from torch_opt import Amos, RMSpropODE  # noqa: E402
from torch_opt import _native as native  # noqa: E402

needs_native = pytest.mark.skipif(
    native.library() is None, reason="the native kernels could not be built here"
)

FLAGS = ("maximize", "weight_decay", "centered", "bias_correction", "eps_in_sqrt", "momentum")
SHAPES = [(7, 3), (33,), (), (0,), (2, 1025)]


def settings(bits):
    on = dict(zip(FLAGS, bits, strict=True))
    return {
        "alpha": 0.9,
        "eps": 1e-3,
        "lr": 0.05,
        "maximize": on["maximize"],
        "weight_decay": 0.1 if on["weight_decay"] else 0.0,
        "centered": on["centered"],
        "bias_correction": on["bias_correction"],
        "eps_in_sqrt": on["eps_in_sqrt"],
        "momentum": 0.8 if on["momentum"] else 0.0,
    }


def ieee_sqrt(x):
    with np.errstate(invalid="ignore"):  # centered + bias correction can go negative: NaN
        return torch.from_numpy(np.asarray(np.sqrt(x.numpy())))


def torch_ops_step(p, g, state, kw, count):
    """One element-wise step with torch's operations in torch's order (those of the foreach
    path and of torch.optim.RMSprop), the square root IEEE's."""
    alpha, eps, lr = kw["alpha"], kw["eps"], kw["lr"]
    if kw["maximize"]:
        g = -g
    if kw["weight_decay"]:
        g = g.add(p, alpha=kw["weight_decay"])
    nu = state["square_avg"]
    nu.mul_(alpha).addcmul_(g, g, value=1 - alpha)
    if kw["centered"]:
        state["grad_avg"].lerp_(g, 1 - alpha)
    v, mu = nu, state.get("grad_avg")
    if kw["bias_correction"]:
        c = 1 - alpha**count
        v = nu / c
        mu = mu / c if mu is not None else None
    if kw["centered"]:
        v = v.addcmul(mu, mu, value=-1)
    denom = ieee_sqrt(v.add(eps)) if kw["eps_in_sqrt"] else ieee_sqrt(v).add(eps)
    if kw["momentum"]:
        buf = state["momentum_buffer"]
        buf.mul_(kw["momentum"]).addcdiv_(g, denom)
        p.add_(buf, alpha=-lr)
    else:
        p.addcdiv_(g, denom, value=-lr)


def params_and_grads(dtype, steps=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    ps = [torch.randn(s, generator=gen, dtype=dtype) for s in SHAPES]
    grads = [[torch.randn(s, generator=gen, dtype=dtype) for s in SHAPES] for _ in range(steps)]
    return ps, grads


@needs_native
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("bits", list(itertools.product([False, True], repeat=6)))
def test_elementwise_kernel_is_torchs_operations_to_the_bit(bits, dtype):
    kw = settings(bits)
    ps, grads = params_and_grads(dtype)
    ours = [p.clone().requires_grad_() for p in ps]
    opt = RMSpropODE(ours, **kw)
    want = [p.clone() for p in ps]
    states = [
        {k: torch.zeros_like(p) for k in ("square_avg", "grad_avg", "momentum_buffer")}
        for p in want
    ]
    for count, gs in enumerate(grads, start=1):
        for p, g in zip(ours, gs, strict=True):
            p.grad = g.clone()
        opt.step()
        for p, g, st in zip(want, gs, states, strict=True):
            torch_ops_step(p, g, st, kw, count)
    bitwise = {"rtol": 0, "atol": 0, "equal_nan": True}  # centered + bias correction: NaNs
    for a, b, st in zip(ours, want, states, strict=True):
        torch.testing.assert_close(a.detach(), b, **bitwise)
        torch.testing.assert_close(opt.state[a]["square_avg"], st["square_avg"], **bitwise)


def reference_and_default(kw, dtype=torch.float64, scale="elementwise", steps=4):
    """The same run with the reference kernels (foreach=False) and the default path. A positive
    initial scale keeps the centered variance with bias correction away from 0, where
    rounding (here the global norm's order of summation) decides between a number and NaN."""
    kw = {**kw, "initial_scale": 0.5}
    ps, grads = params_and_grads(dtype, steps=steps, seed=3)
    runs = []
    for foreach in (False, None):
        params = [p.clone().requires_grad_() for p in ps]
        opt = RMSpropODE(params, foreach=foreach, scale=scale, **kw)
        for gs in grads:
            for p, g in zip(params, gs, strict=True):
                p.grad = g.clone()
            opt.step()
        runs.append((params, opt))
    return runs


@needs_native
@pytest.mark.parametrize("scale", ["elementwise", "global"])
@pytest.mark.parametrize("bits", list(itertools.product([False, True], repeat=6)))
def test_default_path_equals_the_reference_kernels_in_float64(bits, scale):
    (ref, ref_opt), (got, opt) = reference_and_default(settings(bits), scale=scale)
    close = {"rtol": 1e-12, "atol": 1e-13, "equal_nan": True}  # (4) cancels: a few ulps
    for a, b in zip(got, ref, strict=True):
        torch.testing.assert_close(a, b, **close)
        for key, value in ref_opt.state[b].items():
            torch.testing.assert_close(opt.state[a][key], value, **close)
    if scale == "global":
        torch.testing.assert_close(
            opt.param_groups[0]["global_sq_avg"],
            ref_opt.param_groups[0]["global_sq_avg"],
            **close,
        )


def amos_runs(dtype, options, shape_rule, steps=5):
    """The same Amos run on the native path and on the torch path (native turned off), and
    the starting parameters."""
    gen = torch.Generator().manual_seed(4)
    ps = [torch.randn(s, generator=gen, dtype=dtype) for s in [(40, 30), (301,), (5, 1)]]
    ps.append(torch.zeros(17, dtype=dtype))  # eta 0.5 (all zeros)
    grads = [[torch.randn(p.shape, generator=gen, dtype=dtype) for p in ps] for _ in range(steps)]
    out = []
    for use_native in (True, False):
        params = [p.clone().requires_grad_() for p in ps]
        opt = Amos(params, lr=0.05, shape=shape_rule, **options)
        for gs in grads:
            for p, g in zip(params, gs, strict=True):
                p.grad = g.clone()
            if use_native:
                opt.step()
            else:
                lib = native._state.pop("lib", None)
                native._state["lib"] = None
                try:
                    opt.step()
                finally:
                    native._state["lib"] = lib
        out.append((params, opt))
    return (*out, ps)


AMOS_OPTIONS = [
    {},
    {"momentum": 0.9},
    {"clip_value": 0.5, "extra_l2": 0.01},
    {"momentum": 0.5, "clip_value": 1.0, "beta": 0.9, "c_coef": 0.5, "d_coef": 0.1},
]
SHAPE_RULES = {"full": None, "per tensor": lambda name, p: ()}


@needs_native
@pytest.mark.parametrize("rule", list(SHAPE_RULES))
@pytest.mark.parametrize("options", AMOS_OPTIONS)
@pytest.mark.parametrize(("dtype", "rtol"), [(torch.float64, 1e-12), (torch.float32, 2e-5)])
def test_amos_native_path_equals_the_reference_kernel(options, rule, dtype, rtol):
    (got, opt), (want, ref), start = amos_runs(dtype, options, SHAPE_RULES[rule])
    for a, b, s in zip(got, want, start, strict=True):
        assert not torch.equal(a, s)  # it moved
        torch.testing.assert_close(a, b, rtol=rtol, atol=rtol * 1e-2)
        for key in ("v", "b", "step", "momentum_buffer"):
            if key in ref.state[b]:
                torch.testing.assert_close(
                    opt.state[a][key], ref.state[b][key], rtol=rtol, atol=rtol * 1e-3
                )


@needs_native
def test_amos_native_path_moves_parameters_like_the_closed_form_first_step():
    """First step with state ``()`` (math.md §2.2): v = (1-beta) M2, r = 1/v (bias 1-beta),
    gamma = lr^2 r M2 = lr^2/(1-beta) ... computed independently here in float64."""
    gen = torch.Generator().manual_seed(9)
    p0 = torch.randn(50, generator=gen, dtype=torch.float64)
    g = torch.randn(50, generator=gen, dtype=torch.float64)
    lr, eta, beta = 0.1, 0.7, 0.99
    p = p0.clone().requires_grad_()
    opt = Amos([p], lr=lr, eta=eta, beta=beta, shape=lambda name, q: ())
    p.grad = g.clone()
    opt.step()
    m2 = float((g**2).mean())
    v = (1 - beta) * m2
    r = (1 - beta) / v
    gamma = lr**2 * r * m2  # c = d = 1 at b = 0
    want = p0 + (-0.5 * gamma) * p0 - lr * eta * np.sqrt(r) * g
    torch.testing.assert_close(p.detach(), want, rtol=1e-13, atol=1e-15)
    torch.testing.assert_close(opt.state[p]["b"], torch.tensor(gamma, dtype=torch.float64))


@needs_native
def test_mixed_groups_split_between_the_native_and_the_torch_path():
    """Non-contiguous, bf16 and complex tensors beside plain ones: each takes its path and the
    whole step equals the foreach path's (to an ulp: the square root)."""
    gen = torch.Generator().manual_seed(2)
    ps = [
        torch.randn(6, 5, generator=gen),
        torch.randn(5, 6, generator=gen).t(),
        torch.randn(9, generator=gen).bfloat16(),
        torch.randn(4, generator=gen, dtype=torch.complex64),
        torch.randn(3, generator=gen, dtype=torch.float64),
    ]
    runs = []
    for foreach in (True, None):
        params = [p.clone().requires_grad_() for p in ps]
        opt = RMSpropODE(params, foreach=foreach, momentum=0.5, centered=True)
        gen_g = torch.Generator().manual_seed(7)
        for _ in range(3):
            for p in params:
                p.grad = torch.randn(p.shape, generator=gen_g, dtype=p.dtype)
            opt.step()
        runs.append(params)
    for a, b in zip(*runs, strict=True):
        tol = {torch.bfloat16: 1e-2, torch.float64: 1e-14}.get(a.dtype, 1e-6)
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)
        assert a.stride() == b.stride()


MGS_SHAPES = [(7, 3), (), (0,), (2, 1025), (33,)]  # one entry, none, and over a chunk (1024)


@needs_native
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("antithetic", [False, True])
@pytest.mark.parametrize("guided", [False, True])
@pytest.mark.parametrize("exact", [False, True])
def test_mgs_proposal_is_the_torch_paths_to_the_bit_with_the_same_sums(
    dtype, antithetic, guided, exact
):
    """The native pass over a block: (3) bitwise torch's perturbations (the flat (K, n) path,
    per-entry scales), the sums of (4) equal torch's up to the order of summation."""
    from torch_opt._native.sampling import native_propose, takes
    from torch_opt.sampling.kernels import _density_weights, _proposal_sums, perturbations

    k = 6
    gen = torch.Generator().manual_seed(11)
    numels = [math.prod(shape) for shape in MGS_SHAPES]
    rows = k // 2 if antithetic else k
    z = [torch.randn(rows, *shape, generator=gen, dtype=dtype) for shape in MGS_SHAPES]
    # A signed zero in rows that unguided candidates use (row 1: candidate 1, or candidate 2
    # under antithetic): torch's "+ 0" makes it +0 in a guided block; it stays -0 otherwise.
    z[0][1, 0] = -0.0
    guide = 1e-2 * torch.randn(sum(numels), generator=gen, dtype=dtype) if guided else None
    if guided:
        guide[:21] = 0.0  # a member without a surrogate: zeros, as _flat_surrogate fills it
    scales = [0.37, 2.0**-20, 1.5, 1e-3, 3.0]
    mask = [True, False, False, True, True, False]
    assert takes(dtype, torch.device("cpu"), guide)

    flat_z = torch.cat([t.reshape(rows, -1) for t in z], dim=1)
    per_entry = torch.tensor(scales, dtype=torch.float64).repeat_interleave(torch.tensor(numels))
    want = perturbations(guide, flat_z, mask, scale=per_entry, antithetic=antithetic)
    density = "exact" if exact else "unit_variance"
    want_a, want_b = _proposal_sums([want], [guide], [per_entry], density)

    flat_z = torch.cat([t.reshape(-1) for t in z])  # each member's (rows, n_P) end to end
    s = torch.tensor(scales, dtype=torch.float64)
    w = _density_weights(s)
    for in_place in (False, True):  # a fresh buffer, then the normals overwritten
        if in_place and antithetic:
            continue
        target = flat_z.clone() if in_place else torch.empty(k * sum(numels), dtype=dtype)
        a, b = native_propose(
            guide,
            None if in_place else flat_z,
            target,
            numels,
            s,
            w if exact else None,
            mask,
            antithetic=antithetic,
        )
        got = torch.cat([t.reshape(k, -1) for t in target.split([k * n for n in numels])], 1)
        bits = torch.int32 if dtype == torch.float32 else torch.int64
        assert torch.equal(got.view(bits), want.view(bits))
        torch.testing.assert_close(a, want_a, rtol=1e-14, atol=0)
        torch.testing.assert_close(b, want_b, rtol=1e-14, atol=0)
        if not guided:
            assert torch.equal(a, b)
        else:
            assert not torch.equal(a, b)


@needs_native
def test_mgs_proposal_sums_at_extreme_scales_match_torchs():
    """Scales whose square underflows (weight -inf) or overflows (weight -0): the native sums
    are torch's, NaN where torch's are NaN (0 * inf)."""
    from torch_opt._native.sampling import native_propose
    from torch_opt.sampling.kernels import _density_weights, _proposal_sums, perturbations

    f64 = torch.float64
    gen = torch.Generator().manual_seed(2)
    for scale in (1e-170, 1e170):
        z = [torch.randn(4, 3, generator=gen, dtype=f64)]
        guide = 1e-3 * torch.randn(3, generator=gen, dtype=f64)
        mask = [True, False, True, False]
        s = torch.tensor(scale, dtype=f64)
        want = perturbations(guide, z[0], mask, scale=s)
        want_a, want_b = _proposal_sums([want], [guide], [s], "exact")
        eps = torch.empty(4 * 3, dtype=f64)
        a, b = native_propose(
            guide,
            z[0].reshape(-1),
            eps,
            [3],
            s.reshape(1),
            _density_weights(s.reshape(1)),
            mask,
            antithetic=False,
        )
        assert torch.equal(eps.view(4, 3), want)
        torch.testing.assert_close(a, want_a, rtol=1e-14, atol=0, equal_nan=True)
        torch.testing.assert_close(b, want_b, rtol=1e-14, atol=0, equal_nan=True)


@needs_native
def test_mgs_proposal_does_not_depend_on_the_thread_count():
    """Rows (candidates) are dealt to threads whole, so the sums of (4) are the same bits on
    one thread and on several (ranks of a distributed run must agree bitwise)."""
    from torch_opt._native.sampling import native_propose
    from torch_opt.sampling.kernels import _density_weights

    gen = torch.Generator().manual_seed(4)
    k, numels = 8, [3 * (1 << 15), 999]  # enough entries for two threads
    z = torch.randn(k * sum(numels), generator=gen)
    guide = torch.randn(sum(numels), generator=gen)
    scales = torch.tensor([0.5, 2.0], dtype=torch.float64)
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            eps = torch.empty_like(z)
            a, b = native_propose(
                guide,
                z,
                eps,
                numels,
                scales,
                _density_weights(scales),
                [True] * 4 + [False] * 4,
                antithetic=False,
            )
            results.append((eps, a, b))
    finally:
        torch.set_num_threads(before)
    (eps1, a1, b1), (eps2, a2, b2) = results
    assert torch.equal(a1, a2) and torch.equal(b1, b2)
    assert torch.equal(eps1, eps2)


@needs_native
@pytest.mark.parametrize("antithetic", [False, True])
def test_mgs_native_steps_equal_the_torch_paths(monkeypatch, antithetic):
    """Whole MGS steps with the native proposal (float32, float64 blocks) and bf16 beside
    them on the torch path, against every block on the torch path: the first step's
    candidates bitwise (later ones follow parameters that differ by rounding), and the same
    parameters after three steps (up to the summation order of (4))."""
    import torch_opt.sampling.shells as shells
    from torch_opt import MGS

    calls = []
    real = shells.native_propose

    def counted(*args, **kwargs):
        calls[-1] += 1
        return real(*args, **kwargs)

    def run(native_on):
        if native_on:
            monkeypatch.setattr(shells, "native_propose", counted)
        else:
            monkeypatch.setattr(shells, "takes", lambda *args: False)
        gen = torch.Generator().manual_seed(3)
        params = [
            torch.randn(5, 4, generator=gen).requires_grad_(),
            torch.randn(7, generator=gen, dtype=torch.float64).requires_grad_(),
            torch.randn(3, 2, generator=gen).bfloat16().requires_grad_(),
            torch.randn(2049, generator=gen).requires_grad_(),
        ]
        opt = MGS(params, num_samples=6, antithetic=antithetic, seed=5, noise=0.5)
        seen = []

        def closure():
            seen.append([p.detach().clone() for p in params])
            return sum(p.float().square().sum() for p in params)

        for _ in range(3):
            for p in params:
                p.grad = torch.randn(p.shape, generator=gen).to(p.dtype)
            calls.append(0)
            opt.step(closure)
        monkeypatch.undo()
        return params, seen

    native_params, native_seen = run(True)
    native_calls = list(calls)
    torch_params, torch_seen = run(False)
    assert len(native_seen) == len(torch_seen) == 3 * 7
    assert native_calls == [2] * 3  # the float32 and the float64 block, natively, at every step
    for a, b in zip(native_seen[:7], torch_seen[:7], strict=True):  # the first step: bitwise
        for x, y in zip(a, b, strict=True):
            assert torch.equal(x, y)
    for a, b in zip(native_params, torch_params, strict=True):
        tol = {torch.float64: 1e-12, torch.float32: 1e-6, torch.bfloat16: 1e-2}[a.dtype]
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)


@needs_native
def test_steps_bump_the_version_counters():
    """Writes through data pointers are invisible to autograd; the kernels' callers bump the
    version counters as torch's in-place operations would, so autograd still catches a step
    between forward and backward."""
    w = torch.randn(4, 3, requires_grad=True)
    for opt in (RMSpropODE([w]), Amos([w], lr=0.1)):
        w.grad = torch.randn(4, 3)
        before = w._version
        opt.step()
        assert w._version > before
    loss = (w * w).sum()  # saves w for the backward pass
    w.grad = torch.randn(4, 3)
    RMSpropODE([w]).step()
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


@needs_native
def test_elementwise_results_do_not_depend_on_the_thread_count():
    before = torch.get_num_threads()
    out = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            p = torch.linspace(-3, 3, 100_003).requires_grad_()
            p.grad = torch.cos(torch.arange(100_003.0))
            opt = RMSpropODE([p], momentum=0.9)
            for _ in range(2):
                opt.step()
            out.append(p.detach())
    finally:
        torch.set_num_threads(before)
    assert torch.equal(*out)


def test_no_compiler_falls_back_with_one_warning(monkeypatch, tmp_path):
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    monkeypatch.setenv("TWINOPT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(native, "_state", {})
    p = torch.randn(5, requires_grad=True)
    q = p.detach().clone().requires_grad_()
    with pytest.warns(native.NativeUnavailableWarning, match=r"no C compiler .*no-such-cc"):
        opt, peer = RMSpropODE([p]), torch.optim.RMSprop([q])  # the build is tried here
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        p.grad = q.grad = torch.ones(5)
        opt.step()
        peer.step()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        opt.step()  # no second warning
        peer.step()
    assert torch.equal(p, q)  # the foreach path: torch's operations
    assert native.library() is None


def test_native_off_switch_compiles_nothing(monkeypatch, tmp_path):
    monkeypatch.setenv("TWINOPT_NATIVE", "0")
    monkeypatch.setenv("TWINOPT_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(native, "_state", {})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert native.library() is None
    assert list(tmp_path.iterdir()) == []


@needs_native
@pytest.mark.slow
def test_a_second_process_loads_the_cached_library_without_compiling(tmp_path):
    env = {**os.environ, "TWINOPT_CACHE_DIR": str(tmp_path)}
    build = "import torch_opt._native as n; assert n.library() is not None"
    subprocess.run([sys.executable, "-c", build], env=env, check=True, timeout=300)
    assert len(list(tmp_path.glob("kernels-*.so"))) == 1
    reuse = (
        "import torch_opt._native as n\n"
        "def boom(*a, **k): raise AssertionError('compiled again')\n"
        "n._compile = boom\n"
        "assert n.library() is not None, n._state"
    )
    subprocess.run([sys.executable, "-c", reuse], env=env, check=True, timeout=300)


@needs_native
def test_an_unwritable_cache_falls_back_to_a_private_temporary_directory(tmp_path, monkeypatch):
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    monkeypatch.setenv("TWINOPT_CACHE_DIR", str(blocked / "cache"))
    monkeypatch.setattr(native.tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    got = native._writable_cache()
    assert got == tmp_path / "tmp" / f"twinopt-{os.getuid()}"
    assert got.stat().st_mode & 0o777 == 0o700
