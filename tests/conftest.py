"""Test setup: every test process sees 8 simulated CPU devices.

XLA reads the flag when the backend starts, so it is set here, before any test module
imports jax.
"""
import os

_FLAG = "--xla_force_host_platform_device_count=8"
if _FLAG not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _FLAG).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Keep per-test thread pools small: pytest-xdist already runs one worker per core.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
