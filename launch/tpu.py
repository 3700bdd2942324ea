r"""Print (or, with ``--run``, execute) the commands that start a job on a TPU pod.

    python -m launch.tpu --tpu=td-v5e --zone=us-west4-a --accelerator_type=v5litepod-16 \
        --config=experiments/smoke.py --workdir=gs://BUCKET/runs/smoke
    python -m launch.tpu ... --create          # also create the TPU VM first
    python -m launch.tpu ... --run             # execute the gcloud commands (needs gcloud)
    # the paper's fine-tune: every host first copies the checkpoint and the videos to local disk
    python -m launch.tpu --tpu=td-v5e --zone=us-west4-a --accelerator_type=v5litepod-16 \
        --pre_command="gsutil -m cp -r gs://BUCKET/hf/llava-ov-0.5b gs://BUCKET/data ~/" \
        --config=experiments/llava_ov_td.py:hf_dir=~/llava-ov-0.5b,data=~/data/{split}.json,batch=32 \
        --workdir=gs://BUCKET/runs/llava_ov_td
    # then evaluate the run on every host (results written by process 0 to --output_dir)
    python -m launch.tpu ... --launcher=eval --workdir=gs://BUCKET/runs/llava_ov_td \
        --config=experiments/eval_video_qa.py:data=~/data/nextqa/{split}.parquet,layout=nextqa \
        --train_args=--split=test,--output_dir=/tmp/nextqa

Steps: (create) -> pack this checkout -> scp the archive to ``--worker=all`` -> unpack and
``pip install`` on every worker -> (``--pre_command``) and start ``launch.train`` (or
``launch.eval``) on every worker (each host runs ``jax.distributed.initialize()`` without
arguments: ``--distributed=yes``). Also printed: the equivalent ``xpk workload create`` line for
a GKE cluster (``--xpk_cluster``). Extra launcher flags go through ``--train_args``, e.g.
``--train_args=--config.total_steps=1000``.
"""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys

from absl import app, flags

from launch import cli

FLAGS = flags.FLAGS
flags.DEFINE_string("tpu", None, "TPU VM name.")
flags.DEFINE_string("zone", None, "GCP zone, e.g. us-west4-a.")
flags.DEFINE_string("project", None, "GCP project (default: gcloud's configured one).")
flags.DEFINE_string("accelerator_type", "v5litepod-16", "TPU type (v5litepod-16 = v5e-16: 4 hosts x 4 chips).")
flags.DEFINE_string("runtime_version", "v2-alpha-tpuv5-lite", "TPU VM software version (for --create).")
flags.DEFINE_string("config", None, "Experiment config passed to the launcher (path[:arg]).")
flags.DEFINE_string("workdir", None, "Run directory on shared storage (gs://...), the same for every host "
                    "(launch.eval: the run to evaluate; optional with --train_args=--checkpoint=...).")
flags.DEFINE_enum("launcher", "train", ["train", "eval"], "Start launch.train or launch.eval on every host.")
flags.DEFINE_string("pre_command", None, "Shell command run on every worker before the launcher (e.g. copy the "
                    "checkpoint and the videos to local disk).")
flags.DEFINE_list("train_args", [], "Extra flags for the launcher (config overrides etc.), comma-separated as "
                  "CSV: double-quote one that holds commas and double its own quotes (launch.sweep --mode=tpu "
                  "prints them so).")
flags.DEFINE_string("remote_dir", "~/td-jax", "Code directory on the workers.")
flags.DEFINE_string("source_dir", None, "Checkout to copy (default: this repository).")
flags.DEFINE_string("jax_install", "jax[tpu]", "pip requirement that installs JAX for TPU on the workers.")
flags.DEFINE_bool("create", False, "Also print/run the TPU VM create command.")
flags.DEFINE_bool("run", False, "Execute the commands instead of printing them.")
flags.DEFINE_string("xpk_cluster", "CLUSTER", "GKE cluster name for the printed xpk line.")
flags.DEFINE_string("docker_image", "python:3.11", "Base image for the printed xpk line.")
flags.DEFINE_integer("num_slices", 1, "Slices (for the xpk line).")

_ARCHIVE = "/tmp/td_jax_code.tgz"


def _check_name(flag: str, value: str | None, pattern: str = r"^[a-z][-a-z0-9]*$") -> str:
    if not value:
        raise app.UsageError(f"--{flag} is required")
    if not re.match(pattern, value):
        raise app.UsageError(f"--{flag}={value!r} is not a valid name ({pattern})")
    return value


def train_command(config: str, workdir: str | None, extra: list[str], launcher: str = "train",
                  pre_command: str | None = None) -> str:
    parts = ["python3", "-m", f"launch.{launcher}", f"--config={config}"]
    parts += [f"--workdir={workdir}"] if workdir else []
    cmd = shlex.join(parts + ["--distributed=yes"] + list(extra))
    return f"{pre_command} && {cmd}" if pre_command else cmd


def gcloud_commands(*, tpu: str, zone: str, project: str | None, accelerator_type: str, runtime_version: str,
                    config: str, workdir: str | None, train_args: list[str], remote_dir: str, source_dir: str,
                    jax_install: str, create: bool, launcher: str = "train",
                    pre_command: str | None = None) -> list[list[str]]:
    """The command lines, as argument lists, in execution order."""
    proj = [f"--project={project}"] if project else []
    tpuvm = ["gcloud", "compute", "tpus", "tpu-vm"]
    on_all = [f"--zone={zone}", "--worker=all"] + proj
    cmds = []
    if create:
        cmds.append(tpuvm + ["create", tpu, f"--zone={zone}", f"--accelerator-type={accelerator_type}",
                             f"--version={runtime_version}"] + proj)
    cmds.append(["tar", "czf", _ARCHIVE, "--exclude=.git", "--exclude=__pycache__", "-C", source_dir, "."])
    cmds.append(tpuvm + ["scp", _ARCHIVE, f"{tpu}:{os.path.basename(_ARCHIVE)}"] + on_all)
    install = (f"mkdir -p {remote_dir} && tar xzf ~/{os.path.basename(_ARCHIVE)} -C {remote_dir} && "
               f"python3 -m pip install -U {shlex.quote(jax_install)} && python3 -m pip install -e {remote_dir}")
    cmds.append(tpuvm + ["ssh", tpu] + on_all + [f"--command={install}"])
    run = f"cd {remote_dir} && {train_command(config, workdir, train_args, launcher, pre_command)}"
    cmds.append(tpuvm + ["ssh", tpu] + on_all + [f"--command={run}"])
    return cmds


def xpk_command(*, cluster: str, workload: str, accelerator_type: str, num_slices: int, image: str, config: str,
                workdir: str | None, train_args: list[str], jax_install: str, launcher: str = "train",
                pre_command: str | None = None) -> list[str]:
    run = (f"python3 -m pip install -U {shlex.quote(jax_install)} && python3 -m pip install -e . && "
           f"{train_command(config, workdir, train_args, launcher, pre_command)}")
    return ["xpk", "workload", "create", f"--cluster={cluster}", f"--workload={workload}",
            f"--tpu-type={accelerator_type}", f"--num-slices={num_slices}", f"--base-docker-image={image}",
            f"--command={run}"]


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    tpu = _check_name("tpu", FLAGS.tpu)
    zone = _check_name("zone", FLAGS.zone)
    if not FLAGS.config or (FLAGS.launcher == "train" and not FLAGS.workdir):
        raise app.UsageError("--config and --workdir are required" if FLAGS.launcher == "train"
                             else "--config is required")
    config_path = FLAGS.config.partition(":")[0]
    source = FLAGS.source_dir or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if not os.path.exists(os.path.join(source, config_path)):
        raise app.UsageError(f"--config file {config_path!r} not found under {source} (paths are relative to "
                             f"the checkout, as the workers run from its copy)")
    if FLAGS.workdir and not FLAGS.workdir.startswith("gs://"):
        print(f"# note: --workdir={FLAGS.workdir} is not on GCS; every host must see the same directory",
              file=sys.stderr)
    cmds = gcloud_commands(tpu=tpu, zone=zone, project=FLAGS.project, accelerator_type=FLAGS.accelerator_type,
                           runtime_version=FLAGS.runtime_version, config=FLAGS.config, workdir=FLAGS.workdir,
                           train_args=FLAGS.train_args, remote_dir=FLAGS.remote_dir, source_dir=source,
                           jax_install=FLAGS.jax_install, create=FLAGS.create, launcher=FLAGS.launcher,
                           pre_command=FLAGS.pre_command)
    xpk = xpk_command(cluster=FLAGS.xpk_cluster, workload=tpu, accelerator_type=FLAGS.accelerator_type,
                      num_slices=FLAGS.num_slices, image=FLAGS.docker_image, config=FLAGS.config,
                      workdir=FLAGS.workdir, train_args=FLAGS.train_args, jax_install=FLAGS.jax_install,
                      launcher=FLAGS.launcher, pre_command=FLAGS.pre_command)
    if not FLAGS.run:
        print("# TPU VM (gcloud):")
        for c in cmds:
            print(shlex.join(c))
        print("# GKE (xpk), run from the checkout:")
        print(shlex.join(xpk))
        return 0
    for c in cmds:
        print(f"+ {shlex.join(c)}", flush=True)
        subprocess.run(c, check=True)
    return 0


if __name__ == "__main__":
    cli.run(main)
