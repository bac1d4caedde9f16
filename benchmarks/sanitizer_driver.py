"""A short CUDA run of every lift_ext kernel, for compute-sanitizer (memcheck, racecheck):
odd sizes (vector tails, unaligned list members), every grad dtype and optional array, both
phi modes, the GMM E, M and prior-gradient kernels, the graph-safe SGLD step, and the
TensorTable steps (slots in device memory; on the table's stream and on another one).

    compute-sanitizer --tool memcheck --error-exitcode 1 python benchmarks/sanitizer_driver.py
    python benchmarks/sanitizer_driver.py --device cpu     (the same calls on the CPU kernels)
"""
import argparse

import torch

import lift_ext
from lift_ext import ops


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    dev = torch.device(parser.parse_args(argv).device)
    if dev.type == "cuda" and not (torch.cuda.is_available() and lift_ext.cuda_kernels_built()):
        raise SystemExit("sanitizer_driver: needs a GPU and the CUDA kernels (or --device cpu)")
    gen = torch.Generator(device=dev).manual_seed(0)
    rnd = lambda *s: torch.randn(*s, device=dev, generator=gen)  # noqa: E731

    # SGLD, flat, every grad dtype, with and without the optional arrays; odd numel.
    n = 4099
    for gdtype in (torch.float32, torch.bfloat16, torch.float16):
        p, g, c = rnd(n), rnd(n).to(gdtype), rnd(n)
        lift_ext.sgld_step(p, g, lr=1e-3, seed=1, offset=2)
        lift_ext.sgld_step(p, g, lr=1e-3, prior_mean=c, prior_precision=0.5, accum=torch.zeros_like(p),
                           square_avg=torch.rand(n, device=dev), eps=1e-2, seed=1, offset=3)
    # SGLD, lists: many small tensors (one launch), sizes not multiples of 4, views at odd offsets.
    sizes = [1, 3, 5, 4096, 6147, 33, 65537]
    base = rnd(1 + sum(sizes))
    ps = list(base[1:1 + sum(sizes)].split(sizes))
    gs = [rnd(k).bfloat16() for k in sizes]
    cs = [rnd(k) for k in sizes]
    lift_ext.sgld_step(ps, gs, lr=1e-3, prior_mean=cs, prior_precision=0.1,
                       square_avg=[torch.rand(k, device=dev) for k in sizes], eps=1e-2, seed=4, offset=5)
    lift_ext.sgld_step([rnd(6144) for _ in range(72)], [rnd(6144) for _ in range(72)], lr=1e-3,
                       temperature=0.0)
    # A list longer than one launch's tensor table (448): split into several launches.
    long_sizes = [(i * 37) % 11 for i in range(500)]
    lift_ext.sgld_step([rnd(k) for k in long_sizes], [rnd(k) for k in long_sizes], lr=1e-3, seed=2)
    # Graph-safe form: seed/offset read from a device tensor, offset advanced on device.
    state = torch.tensor([7, 0], dtype=torch.int64, device=dev)
    p, g = rnd(n), rnd(n)
    lift_ext.sgld_step(p, g, lr=1e-3, rng_state=state)
    lift_ext.sgld_step(list(rnd(2 * n + 1).split([n, n + 1])), [rnd(n), rnd(n + 1)], lr=1e-3,
                       rng_state=state)
    # TensorTable: the same odd list through a table (one launch reading its slots from device
    # memory), plain and graph-safe, on the build's stream and on another stream.
    table = lift_ext.TensorTable(ps, gs, prior_means=cs, accums=[torch.zeros(k, device=dev) for k in sizes],
                                 square_avgs=[torch.rand(k, device=dev) for k in sizes])
    lift_ext.sgld_step(table, lr=1e-3, prior_precision=0.1, eps=1e-2, seed=6, offset=7)
    state = torch.tensor([7, 0], dtype=torch.int64, device=dev)
    lift_ext.sgld_step(table, lr=1e-3, rng_state=state, eps=1e-2)
    if dev.type == "cuda":
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            lift_ext.sgld_step(table, lr=1e-3, seed=8, offset=9, eps=1e-2)
        torch.cuda.current_stream().wait_stream(side)
    # Noise and raw words.
    lift_ext.philox_normal(12347, seed=3, offset=9, device=dev)
    ops.philox4x32_10(torch.randint(0, 2**32, (37, 4), device=dev), torch.randint(0, 2**32, (37, 2), device=dev))
    # phi step, both modes, with and without a prior mean.
    phi, s, mu0 = rnd(n), rnd(n), rnd(n)
    for gibbs in (False, True):
        for pm in (None, mu0):
            ops.phi_step_(phi, s, pm, lr=1e-3, temperature=1.0, sigma=1.0, beta=0.5, num_tasks=8,
                          gibbs=gibbs, seed=1, offset=1)
    # GMM E, M, prior gradient: D not a multiple of the vector width with B = 1 and B > 1, and
    # D = 8192 (vector loads over several chunks) with B = 9 (a second batch tile).
    k = 8
    for b, d in ((1, 10007), (5, 10007), (9, 8192)):
        means, m2 = rnd(k, d), rnd(k, d).abs() + 1.0
        counts = torch.full((k,), 10.0, dtype=torch.float64, device=dev)
        x = rnd(b, d)
        _, resp = ops.gmm_estep(x, means, m2, counts, reg=1e-6)
        ops.gmm_mstep_(means, m2, counts, x, resp)
    theta, grad = rnd(d), torch.zeros(d, device=dev)
    _, r = ops.gmm_estep(theta[None], means, m2, counts, reg=1e-2)
    ops.gmm_prior_grad_(grad, theta, means, m2, counts, r[0].contiguous(), reg=1e-2, scale=1.0)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    print(f"sanitizer driver: all kernels ran on {dev}")


if __name__ == "__main__":
    main()
