"""SGLD step: fused op against eager per-tensor, foreach and flat-buffer PyTorch."""
import pytest
import torch

import bench_all
import bench_sgld
import lift_ext
from suite_util import DEVICES, timed

SHAPES = {"flat 2^20": [1 << 20], "list 72 x 6144": [6144] * 72}
IMPLS = ["fused", "per-tensor", "foreach", "flat eager"]


def make(sizes, device, variant):
    total = sum(sizes)
    gen = torch.Generator().manual_seed(0)
    flat = [torch.randn(total, generator=gen).to(device) for _ in range(3)]
    if variant == "bf16":
        flat[1] = flat[1].bfloat16()
    v = torch.rand(total, generator=gen).to(device) if variant == "precond" else None
    split = lambda t: [x.clone() for x in t.split(sizes)]  # noqa: E731
    return flat + [v], [split(t) for t in flat] + [split(v) if v is not None else None]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("variant", ["plain", "precond", "bf16"])
@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("impl", IMPLS)
def test_sgld(benchmark, impl, shape, variant, device):
    sizes = SHAPES[shape]
    is_list = len(sizes) > 1
    if impl == "foreach" and not is_list:
        pytest.skip("foreach is the list formulation")
    (fp, fg, fc, fv), (ps, gs, cs, vs) = make(sizes, device, variant)
    benchmark.group = f"sgld {shape} {variant} {device}"
    if impl == "fused":
        args = (ps, gs, cs, vs) if is_list else (fp, fg, fc, fv)

        def fn():
            lift_ext.sgld_step(args[0], args[1], lr=bench_sgld.LR, temperature=bench_sgld.TEMP,
                               prior_mean=args[2], prior_precision=bench_sgld.LAM,
                               square_avg=args[3], seed=0, offset=1)
    elif variant == "precond":
        fn = {"per-tensor": lambda: [bench_all.precond_eager_step(*a) for a in zip(ps, gs, cs, vs)],
              "foreach": lambda: bench_all.precond_foreach_step(ps, gs, cs, vs),
              "flat eager": lambda: bench_all.precond_flat_step(fp, fg, fc, fv)}[impl]
    else:
        eager = bench_all.bf16_eager_step if variant == "bf16" else bench_sgld.eager_step
        foreach = bench_all.bf16_foreach_step if variant == "bf16" else bench_sgld.foreach_step
        flat = bench_all.bf16_flat_step if variant == "bf16" else bench_sgld.flat_step
        fn = {"per-tensor": lambda: [eager(*a) for a in zip(ps, gs, cs)],
              "foreach": lambda: foreach(ps, gs, cs),
              "flat eager": lambda: fp.copy_(flat(fp, fg, fc))}[impl]
    timed(benchmark, fn, device)
