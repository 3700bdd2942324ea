"""Test setup: every test process sees 8 simulated CPU devices, and the whole run — and the
runs after it — share one persistent JAX compilation cache.

(Tests compile at XLA's default optimisation level, as users run: at
``--xla_backend_optimization_level=0`` they compile in ~0.6x the CPU time, but k-means on
``x`` and on ``x·2^100`` then differs in the last bit of some centroids, which the default
level keeps identical — test_clustering_is_scale_free.)

XLA reads the flag when the backend starts and JAX reads the cache settings when it is
imported, so both are set here, before any test module imports jax. The cache lives in
``.pytest_cache/jax_compilation_cache`` (git-ignored); xdist workers and every subprocess a
test starts (launchers, the main job) inherit it through the environment, so a program
compiled once (the smoke model's train and eval steps, the tiny LLaVA, k-means at a given
shape) is read from disk everywhere else — in this run and in later ones, where most of the
suite's time (XLA compiling) is then skipped. An entry is keyed by the program's HLO, the
XLA flags and the jax/jaxlib versions, so a changed program compiles afresh and stale entries
are never used; the directory is emptied when a run starts with it above
``_CACHE_LIMIT_BYTES``. A run started with JAX_COMPILATION_CACHE_DIR already set uses that
directory; ``TD_JAX_TEST_FRESH_CACHE=1`` gives a run its own cache (a cold run, as on a fresh
machine), removed when it ends.
"""
import os
import shutil
import tempfile

_FLAG = "--xla_force_host_platform_device_count=8"
if _FLAG not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _FLAG).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Keep per-test thread pools small: pytest-xdist already runs one worker per core.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

_OWN_CACHE = None
_CACHE_LIMIT_BYTES = 2 << 30       # a cold full run writes ~0.1 GB


def _dir_bytes(path: str) -> int:
    return sum(e.stat().st_size for e in os.scandir(path) if e.is_file(follow_symlinks=False))


if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    if os.environ.get("TD_JAX_TEST_FRESH_CACHE", "") not in ("", "0"):
        _OWN_CACHE = tempfile.mkdtemp(prefix="td_jax_tests_jax_cache_")
        os.environ["JAX_COMPILATION_CACHE_DIR"] = _OWN_CACHE
    else:   # the pytest process that starts the run (not a worker: they inherit the variable)
        _cache = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".pytest_cache",
                              "jax_compilation_cache")
        if os.path.isdir(_cache) and _dir_bytes(_cache) > _CACHE_LIMIT_BYTES:
            shutil.rmtree(_cache, ignore_errors=True)
        os.makedirs(_cache, exist_ok=True)
        os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")


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


def pytest_unconfigure(config):
    """A run's own compilation cache (TD_JAX_TEST_FRESH_CACHE) goes when the run ends (workers
    share it: only the process that made it removes it)."""
    if _OWN_CACHE and not os.environ.get("PYTEST_XDIST_WORKER"):
        shutil.rmtree(_OWN_CACHE, ignore_errors=True)
