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


import pytest  # noqa: E402


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Scheduling under ``--dist loadgroup`` (setup.cfg): a test that uses a module-scoped
    fixture (a built dataset, a trained run, a tiny sweep) joins its module's group, so the
    fixture is built once, on one worker; every other test is handed out on its own, so the
    two workers finish together instead of one waiting on the other's last module.
    (tryfirst: the group must be set before pytest-xdist reads it.)"""
    for item in items:
        info = getattr(item, "_fixtureinfo", None)
        defs = info.name2fixturedefs.values() if info is not None else ()
        if any(d.scope == "module" for ds in defs for d in ds):
            item.add_marker(pytest.mark.xdist_group(item.module.__name__))
