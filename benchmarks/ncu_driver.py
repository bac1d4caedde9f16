"""One fused SGLD call per benchmark shape, for Nsight Compute (no timing of its own):

    ncu --clock-control none -k regex:sgld_kernel --section SpeedOfLight --section Occupancy \
        python benchmarks/ncu_driver.py

flat 2^27 plain, flat 2^27 preconditioned, list 448 x 65536 plain, list 72 x 6144 plain, and
the last two through a TensorTable (the kernel reading its slots from device memory).
"""
import torch

import lift_ext


def main():
    dev = torch.device("cuda")
    for sizes, preconditioned in (([1 << 27], False), ([1 << 27], True), ([65536] * 448, False),
                                  ([6144] * 72, False)):
        params = [torch.randn(n, device=dev) for n in sizes]
        grads = [torch.randn(n, device=dev) for n in sizes]
        centers = [torch.randn(n, device=dev) for n in sizes]
        square_avgs = [torch.rand(n, device=dev) for n in sizes] if preconditioned else None
        lift_ext.sgld_step(params, grads, lr=1e-4, temperature=1.0, prior_mean=centers, prior_precision=0.5,
                           square_avg=square_avgs, eps=1e-3, seed=0, offset=0)
        if len(sizes) > 1:
            table = lift_ext.TensorTable(params, grads, prior_means=centers)
            lift_ext.sgld_step(table, lr=1e-4, temperature=1.0, prior_precision=0.5, seed=0, offset=1)
            del table
        torch.cuda.synchronize()
        del params, grads, centers, square_avgs
    print("ncu driver: done")


if __name__ == "__main__":
    main()
