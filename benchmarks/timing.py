"""Timing helpers shared by the benchmark scripts: median wall time of a callable on a device,
the replay time of a CUDA graph of it, and the device's measured copy bandwidth (the floor
every memory-bound kernel is held to)."""
import statistics
import time
from typing import Callable

import torch


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_ms(fn: Callable[[], object], device: torch.device, warmup: int = 3, repeats: int = 15,
              min_seconds: float = 0.2) -> float:
    """Median milliseconds of fn() over `repeats` runs (more while under min_seconds)."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    samples = []
    start_all = time.perf_counter()
    while len(samples) < repeats or (time.perf_counter() - start_all < min_seconds and len(samples) < 200):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(samples)


def graph_replay_ms(step, device):
    """Median ms of one replay of a CUDA graph holding `step` (the kernel time without the
    Python and launch cost of an eager call)."""
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(3):
            step()
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    return median_ms(graph.replay, device)


def copy_bandwidth_gbs(device: torch.device, numel: int = 1 << 26) -> float:
    """Read+write bandwidth of a device-to-device float32 copy, in GB/s."""
    src = torch.empty(numel, device=device).normal_()
    dst = torch.empty_like(src)
    ms = median_ms(lambda: dst.copy_(src), device)
    return 2 * numel * 4 / (ms * 1e-3) / 1e9


def device_name(device: torch.device) -> str:
    """The GPU's name, or for the CPU its model, architecture, the instruction-set path of the
    CPU kernels' normals (lift_ext.cpu_isa()) and the thread count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    import lift_ext
    from lift_ext import provenance
    return (f"CPU {provenance.cpu_model()} ({platform.machine()}, normals path {lift_ext.cpu_isa()}), "
            f"{torch.get_num_threads()} threads")
