"""The environment of the subprocesses tests start (launchers, the main job, benchmarks)."""
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_DEVICES = re.compile(r"--xla_force_host_platform_device_count=\d+")


def env(devices: int | None = 8, **extra: str) -> dict:
    """``os.environ`` — so the run's compilation cache and XLA settings (tests/conftest.py) carry
    over — with JAX on CPU, ``devices`` simulated devices (None: the flag dropped, one device),
    the repository first on PYTHONPATH, and ``extra`` variables."""
    flags = _DEVICES.sub("", os.environ.get("XLA_FLAGS", "")).split()
    if devices:
        flags.append(f"--xla_force_host_platform_device_count={devices}")
    out = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=" ".join(flags), **extra)
    out["PYTHONPATH"] = ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")
    return out
