"""The machine a run trains on, and how a preset adapts to it.

Mixed bfloat16 pays off only where the hardware computes bfloat16 natively (AMX or AVX-512 BF16
on a CPU, bfloat16 tensor cores on a GPU); elsewhere it is emulated and many times slower. The
``cpu`` presets therefore train in mixed bfloat16, with their bfloat16 recipe, exactly where it
is fast: :func:`adapt_to_machine` decides this in one place, and ``fit`` prints its decision and
records it in the run's ``config.json``.
"""

from __future__ import annotations

import functools
import os
import resource
import sys
from pathlib import Path

import keras
import tensorflow as tf

from keras_siamese.config import BFLOAT16_RECIPES, TrainConfig, preset


@functools.cache  # the hardware does not change within a process
def fast_bfloat16_hardware() -> str | None:
    """What makes mixed bfloat16 pay off here ("AMX", "AVX-512 BF16", a GPU), or None.

    Training runs on the GPU where there is one, so then only the GPU counts: it
    needs bfloat16 tensor cores (compute capability 8.0, Ampere, or later).
    Elsewhere, an AVX2-only CPU or an older GPU, bfloat16 arithmetic is emulated
    or slow. The CPU flags are read from ``/proc/cpuinfo`` (Linux).
    """
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        capability = tf.config.experimental.get_device_details(gpus[0]).get("compute_capability")
        if capability is not None and tuple(capability) >= (8, 0):
            return f"a GPU of compute capability {capability[0]}.{capability[1]}"
        return None
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return None
    if "amx_bf16" in flags:
        return "AMX"
    return "AVX-512 BF16" if "avx512_bf16" in flags else None


def describe_machine() -> dict[str, object]:
    """What a run's figures are measured on: CPU model, usable cores, fast bfloat16, versions.

    Speed, and so the epochs a time limit buys, depend on the machine, so ``fit`` records this
    beside every run's metrics.
    """
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count()
    gpus = [
        tf.config.experimental.get_device_details(gpu).get("device_name", gpu.name)
        for gpu in tf.config.list_physical_devices("GPU")
    ]
    return {
        "cpu": cpu,
        "cores": cores,
        "gpus": gpus,
        "fast_bfloat16": fast_bfloat16_hardware(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
    }


def peak_memory_mib(pid: int | str = "self") -> float:
    """The peak resident memory of a process (this one by default), in MiB.

    On Linux this is ``VmHWM`` from ``/proc/PID/status``: the process's own high-water mark
    since it started. ``ru_maxrss`` is not used there because Linux carries the parent's
    resident memory over to a child started with fork or vfork and exec, so a ``fit`` started
    by a large process (a pytest worker, a notebook kernel) would report its parent's peak.
    Elsewhere this process's ``ru_maxrss`` is the best there is (KiB, or bytes on macOS).
    """
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    if pid not in ("self", os.getpid()):
        raise OSError(f"no peak memory readable for process {pid} (needs Linux's /proc)")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024**2 if sys.platform == "darwin" else peak / 1024


def mixed_precision_by_default(preset_name: str) -> bool:
    """Whether the preset trains in mixed bfloat16 unless told: a preset with a bfloat16
    recipe (``config.BFLOAT16_RECIPES``), on a machine where bfloat16 is fast."""
    return preset_name in BFLOAT16_RECIPES and fast_bfloat16_hardware() is not None


def adapt_to_machine(preset_name: str, mixed_precision: bool | None = None) -> TrainConfig:
    """The named preset as it trains on this machine.

    Args:
        preset_name: a name in ``config.PRESETS``.
        mixed_precision: True or False to choose the precision (with the preset's bfloat16
            recipe for True); None to let the machine decide (``mixed_precision_by_default``).

    Returns:
        The preset, in mixed bfloat16 with its recipe where that is chosen, its
        ``machine_adaptation`` saying what is decided and why.

    Raises:
        ValueError: an unknown preset name.
    """
    if mixed_precision is not None:
        config = preset(preset_name, mixed_precision)
        told = "--mixed-precision" if mixed_precision else "--no-mixed-precision"
        return config.replace(machine_adaptation=f"{_precision(config)}, as told ({told})")
    config = preset(preset_name, mixed_precision_by_default(preset_name))
    fast = fast_bfloat16_hardware()
    if config.model.mixed_precision:
        why = f"bfloat16 is fast with {fast}; --no-mixed-precision for float32"
    elif preset_name not in BFLOAT16_RECIPES:
        why = f"the {preset_name} preset's precision; --mixed-precision for bfloat16"
    else:
        why = "bfloat16 is not fast here (no AMX, AVX-512 BF16 or recent GPU)"
    return config.replace(machine_adaptation=f"{_precision(config)} ({why})")


def _precision(config: TrainConfig) -> str:
    return "mixed bfloat16" if config.model.mixed_precision else "float32"
