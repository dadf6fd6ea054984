"""GPU timing, accuracy and per-kernel profile of the Triton backend (the figures of
benchmarks/RESULTS.md's Triton table). CUDA-graph replay timing, median.

    PROFILE=1 python benchmarks/triton_bench.py main       # the table
    python benchmarks/triton_bench.py variants             # backward channel-tile sweep
"""
import os, sys, time, math, itertools
import torch, triton
from triton.testing import do_bench, do_bench_cudagraph
sys.path.insert(0, "tests")
import pan_ops
from pan_ops import triton_kernels as tk
from pan_ops import reference

T0 = time.time()
dev = "cuda"
print("torch", torch.__version__, "triton", triton.__version__, torch.cuda.get_device_name(), "autotune", tk.AUTOTUNE, flush=True)

def bench(fn):
    """Median device time in us, launched from a CUDA graph (the host is slower than these kernels)."""
    fn(); torch.cuda.synchronize()
    return do_bench_cudagraph(fn, rep=30, return_mode="median") * 1e3

def profile(label, fns):
    from torch.profiler import profile as prof, ProfilerActivity
    for fn in fns: fn()
    torch.cuda.synchronize()
    with prof(activities=[ProfilerActivity.CUDA]) as p:
        for _ in range(20):
            for fn in fns: fn()
        torch.cuda.synchronize()
    rows = []
    for e in p.key_averages():
        if e.device_time_total > 0:
            rows.append((e.device_time_total / max(e.count, 1), e.count, e.key[:60]))
    for t, n, k in sorted(rows, reverse=True)[:8]:
        print(f"    [{label}] {t:8.1f} us x{n:4d}  {k}", flush=True)

# measured copy bandwidth (read + write bytes)
x = torch.empty(256 * 2**20 // 4, device=dev); y = torch.empty_like(x)
t = bench(lambda: y.copy_(x)); BW = 2 * x.numel() * 4 / (t * 1e-6)
print(f"copy bandwidth {BW/1e12:.2f} TB/s", flush=True)
del x, y

def make(B, C, H, W, P, dtype, layout="nchw"):
    g = torch.Generator(device=dev).manual_seed(0)
    f = torch.randn(B, C, H, W, device=dev, generator=g).to(dtype)
    m = torch.randn(B, P, H, W, device=dev, generator=g).to(dtype)
    if layout == "cl":
        f = f.contiguous(memory_format=torch.channels_last); m = m.contiguous(memory_format=torch.channels_last)
    return f, m

def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()

def run_case(B, C, H, W, P, dtype, layout="nchw", compare_einsum=True, label=""):
    f, m = make(B, C, H, W, P, dtype, layout)
    es = f.element_size()
    fb, mb, ob = f.numel() * es, m.numel() * es, B * P * C * es
    floor_fwd = (fb + mb + ob) / BW * 1e6
    floor_fb = (fb + mb + ob + ob + fb + mb + fb + mb) / BW * 1e6
    g = torch.randn(B, P, C, device=dev, dtype=dtype)
    fr, mr = f.detach().requires_grad_(True), m.detach().requires_grad_(True)
    op = torch.ops.pan_ops.weighted_pool_triton
    bop = torch.ops.pan_ops.weighted_pool_triton_backward
    # accuracy vs float64 at this shape
    out = op(f, m, 1e-6); gf, gm = bop(g, f, m, 1e-6)
    fd, md = f.double().requires_grad_(True), m.double().requires_grad_(True)
    ref = reference.weighted_pool(fd, md); ref.backward(g.double())
    acc = (rel(out, ref), rel(gf, fd.grad), rel(gm, md.grad))
    del fd, md, ref
    torch.cuda.synchronize()
    t_fwd = bench(lambda: op(f, m, 1e-6))
    t_bwd = bench(lambda: bop(g, f, m, 1e-6))
    def fb_triton():
        fr.grad = mr.grad = None
        pan_ops.weighted_pool(fr, mr, backend="triton").backward(g)
    t_fb = bench(fb_triton)
    torch.cuda.reset_peak_memory_stats(); base = torch.cuda.memory_allocated(); fb_triton(); torch.cuda.synchronize()
    extra = (torch.cuda.max_memory_allocated() - base) / 2**20
    line = (f"{label}{(B,C,H,W,P)} {str(dtype)[6:]:8} {layout:4} triton fwd {t_fwd:7.1f} us ({floor_fwd/t_fwd*100:4.0f}% of floor {floor_fwd:5.1f})"
            f" | bwd {t_bwd:7.1f} | fwd+bwd {t_fb:7.1f} us ({floor_fb/t_fb*100:4.0f}% of floor {floor_fb:5.1f}) | peak extra {extra:6.1f} MiB"
            f" | relerr {acc[0]:.1e} {acc[1]:.1e} {acc[2]:.1e}")
    if compare_einsum:
        t_ef = bench(lambda: reference.weighted_pool(f, m))
        def fb_ref():
            fr.grad = mr.grad = None
            reference.weighted_pool(fr, mr).backward(g)
        t_efb = bench(fb_ref)
        line += f" | einsum fwd {t_ef:6.1f} fwd+bwd {t_efb:6.1f}"
    print(line, flush=True)
    if os.environ.get("PROFILE") and compare_einsum:
        profile(f"{str(dtype)[6:]} {layout}", [lambda: op(f, m, 1e-6), lambda: bop(g, f, m, 1e-6)])
    for k in (tk._forward_kernel, tk._backward_features_kernel):
        bc = getattr(k, "best_config", None)
        if bc is not None: print("    best", k.fn.__name__, bc, flush=True)
    return t_fwd, t_fb

phase = sys.argv[1] if len(sys.argv) > 1 else "main"
if phase == "main":
    for dtype in (torch.float32, torch.bfloat16):
        run_case(64, 2048, 16, 8, 14, dtype)
    run_case(64, 2048, 16, 8, 14, torch.float32, "cl")
    run_case(64, 2048, 16, 8, 14, torch.bfloat16, "cl", compare_einsum=False)
    for dtype in (torch.float32, torch.bfloat16):
        run_case(256, 2048, 16, 8, 14, dtype)
        run_case(64, 2048, 24, 8, 6, dtype)
    run_case(64, 2048, 16, 8, 14, torch.float16, compare_einsum=False)
    run_case(16, 2048, 16, 8, 14, torch.float64, compare_einsum=False)
    print(f"main phase done at {time.time()-T0:.0f}s", flush=True)
elif phase == "variants":
    for block_c in (256, 64):
        tk.BACKWARD_BLOCK_C = block_c
        for dtype in (torch.float32, torch.bfloat16):
            run_case(64, 2048, 16, 8, 14, dtype, label=f"[bwdC={block_c}] ")
        run_case(256, 2048, 16, 8, 14, torch.bfloat16, compare_einsum=False, label=f"[bwdC={block_c}] ")
        if time.time() - T0 > float(os.environ.get("BUDGET", "120")): break
    print(f"variants done at {time.time()-T0:.0f}s", flush=True)
