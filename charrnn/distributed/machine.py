"""What this machine offers training: its cores (nothing that needs torch to find out).

Kept free of torch so that ``charrnn launch`` and the Prefect flow process,
which only start torchrun, stay light.
"""

from __future__ import annotations

import os


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity where the OS has one), at least 1."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def auto_nproc(precision: str = "auto") -> tuple[int, str]:
    """The fastest training layout on this machine: (processes per machine, why).

    One process per GPU where there are GPUs. On a CPU, intra-op threads already
    use every core, so DDP only splits the batch and adds an all-reduce. Measured
    side by side (bench/RESULTS.md, ``bench/ddp_scaling.py``): on AVX-512 CPUs one
    process with all cores beat two in bf16 (2 processes at 0.52x-0.82x) and in
    fp32 (0.70x-0.97x), and the loss is the all-reduce, not the split batch (two
    independent half-batch processes match one); on AVX2-only CPUs two processes
    ran at 1.03x in fp32, so they keep the two processes they had before ``auto``.
    """
    import torch

    from charrnn.model.precision import autocast_dtype

    if torch.cuda.is_available():
        gpus = torch.cuda.device_count()
        return gpus, f"one process per GPU ({gpus} visible)"
    cores = available_cores()
    if autocast_dtype(precision, torch.device("cpu")) is not None:
        return (
            1,
            f"CPU with native bf16: one process with all {cores} cores "
            "(faster than averaging gradients between processes)",
        )
    isa = torch.backends.cpu.get_cpu_capability()
    if isa == "AVX512":
        return (
            1,
            f"AVX-512 CPU in fp32: one process with all {cores} cores "
            "(faster than averaging gradients between processes)",
        )
    procs = min(2, cores)
    return (
        procs,
        f"{isa} CPU in fp32: {procs} process(es) sharing {cores} cores "
        "(2 measured at 1.03x of 1 on AVX2)",
    )
