"""Flags and start-up shared by the launchers: multi-host init, CPU device count, config."""
from __future__ import annotations

import os

from absl import flags, logging

FLAGS = flags.FLAGS

flags.DEFINE_enum("distributed", "auto", ["auto", "yes", "no"],
                  "jax.distributed.initialize(): 'auto' = when --coordinator_address is set or on a multi-host "
                  "TPU VM; 'yes' = always (no-arg auto-detection on TPU/SLURM); 'no' = never.")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (non-TPU multi-process runs).")
flags.DEFINE_integer("num_processes", None, "Number of processes (with --coordinator_address).")
flags.DEFINE_integer("process_id", None, "This process's id (with --coordinator_address).")
flags.DEFINE_integer("init_timeout", 300, "Seconds to wait for all processes in jax.distributed.initialize.")
flags.DEFINE_string("cpu_collectives", "gloo", "CPU collectives for multi-process CPU runs (gloo | mpi | none).")
flags.DEFINE_integer("num_cpu_devices", 0, "If > 0, simulate this many CPU devices (development only).")


def _multihost_tpu_env() -> bool:
    hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
    return "," in hosts


def init_runtime() -> None:
    """Applies --num_cpu_devices / --cpu_collectives and initialises jax.distributed if asked.

    Must run before anything touches a JAX backend.
    """
    import jax

    if FLAGS.num_cpu_devices > 0:
        jax.config.update("jax_num_cpu_devices", FLAGS.num_cpu_devices)
    want = FLAGS.distributed == "yes" or (
        FLAGS.distributed == "auto" and (FLAGS.coordinator_address or _multihost_tpu_env()))
    if not want:
        return
    if FLAGS.cpu_collectives != "none":
        jax.config.update("jax_cpu_collectives_implementation", FLAGS.cpu_collectives)
    if FLAGS.coordinator_address:
        if FLAGS.num_processes is None or FLAGS.process_id is None:
            raise ValueError("--coordinator_address needs --num_processes and --process_id")
        jax.distributed.initialize(coordinator_address=FLAGS.coordinator_address,
                                   num_processes=FLAGS.num_processes, process_id=FLAGS.process_id,
                                   initialization_timeout=FLAGS.init_timeout)
    else:
        jax.distributed.initialize(initialization_timeout=FLAGS.init_timeout)
    logging.info("jax.distributed: process %d of %d, %d local / %d global devices", jax.process_index(),
                 jax.process_count(), jax.local_device_count(), jax.device_count())
