"""Launch a training or evaluation script under torchrun, locally or across a Slurm allocation.

Outside Slurm torchrun runs directly with --standalone (c10d on a free local port, so several
local jobs never collide). Inside a Slurm job (SLURM_JOB_ID set) torchrun runs in a job step of
its own, one torchrun per node, each starting `nproc_per_node` ranks:
  srun --overlap --nodes=N --ntasks=N --ntasks-per-node=1 --cpus-per-task=C --kill-on-bad-exit=0
       --wait=<shutdown_timeout + 60> torchrun --nnodes=N --nproc-per-node=P --rdzv-backend=c10d
       --rdzv-endpoint=<first node of the job>:<20000 + job id % 10000> --rdzv-id=<SLURM_JOB_ID>   (N > 1)
       torchrun --standalone --nnodes=1 --nproc-per-node=P                       (N = 1)
where N, the node list and C are the JOB's (`scontrol show job`, or SLURM_JOB_NUM_NODES /
SLURM_JOB_NODELIST / SLURM_CPUS_PER_TASK in a batch script).

Why a step of its own, and why this shape (all checked on real Slurm 22.05 with
snakemake-executor-plugin-slurm 2.8, see tests/test_slurm_cluster.py):
  * Slurm's `--signal=TERM@360` (profiles/slurm) reaches every process of every job STEP, not the
    batch script. The rule's own Snakemake and this launcher must not be in a signalled step when
    N > 1: srun turns a SIGTERM it receives into SIGKILL for its tasks ("forcing job
    termination"), so the ranks would die before checkpointing. tuneflow.cluster.rule_resources
    therefore sets the `mpi` resource, which makes the plugin run the rule in the batch script
    instead of under its own `srun -n1`; then only this step (torchrun + ranks) gets the signal.
  * If the rule does run in a step (no `mpi` resource), a one-node job runs torchrun right there
    (the signal reaches it; Snakemake finishes the job on SIGTERM), a multi-node job still
    starts the srun below, but the time-limit signal then kills it without a checkpoint.
  * In such a step SLURM_NNODES / SLURM_JOB_NODELIST describe the step (1 node) and the plugin has
    removed SLURM_JOB_NUM_NODES: the job's size comes from `scontrol show job`.
  * srun gets an environment without the enclosing SLURM_* step variables (only the job id), else
    it believes the allocation is that one step ("Only allocated 1 nodes asked for 2"), and
    --overlap, else it waits forever for the CPUs / GPUs the enclosing step holds.

torchrun forwards SIGTERM/SIGUSR1 (what Slurm sends before preemption or the time limit) to the
ranks, which save a checkpoint and exit non-zero; it waits `shutdown_timeout` seconds for that.
(Slurm signals the ranks of the step directly as well: a rank may see the signal twice.)
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys

FORWARDED_SIGNALS = "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1,SIGUSR2"


# SLURM_* variables the nested srun keeps: they name the job (and the config), nothing else.
# Everything else describes the job step this process runs in and would confine srun to it.
SRUN_KEEP_ENV = {"SLURM_JOB_ID", "SLURM_JOBID", "SLURM_CONF", "SLURM_CLUSTER_NAME", "SLURM_SUBMIT_DIR",
                 "SLURM_SUBMIT_HOST"}


def _scontrol(*args) -> str:
    return subprocess.run(["scontrol", *args], check=True, capture_output=True, text=True).stdout


def slurm_job_nodes(env=None) -> list[str]:
    """Hostnames of the whole job allocation, first (rendezvous) node first."""
    env = os.environ if env is None else env
    if "SLURM_STEP_ID" in env or "SLURM_JOB_NODELIST" not in env:
        # Inside a job step SLURM_JOB_NODELIST is the step's node list: ask the controller.
        fields = dict(kv.split("=", 1) for kv in _scontrol("show", "job", "-o", env["SLURM_JOB_ID"]).split()
                      if "=" in kv)
        nodelist = fields["NodeList"]
    else:
        nodelist = env["SLURM_JOB_NODELIST"]
    return _scontrol("show", "hostnames", nodelist).split()


def slurm_head_node(env=None) -> str:
    return slurm_job_nodes(env)[0]


def slurm_job_num_nodes(env=None) -> int:
    """Nodes of the job allocation (not of the job step this process may run in)."""
    env = os.environ if env is None else env
    if "SLURM_JOB_NUM_NODES" in env:
        return int(env["SLURM_JOB_NUM_NODES"])
    if "SLURM_STEP_ID" not in env and "SLURM_NNODES" in env:  # batch script: SLURM_NNODES is the job's
        return int(env["SLURM_NNODES"])
    return len(slurm_job_nodes(env))


def srun_env(env=None) -> dict:
    """Environment for the nested srun: the job id without the enclosing step's SLURM_* settings."""
    env = os.environ if env is None else env
    return {k: v for k, v in env.items()
            if not k.startswith(("SLURM_", "SRUN_", "SBATCH_", "SALLOC_")) or k in SRUN_KEEP_ENV}


def _slurm_cpus_per_task(env) -> str | None:
    if env.get("SLURM_CPUS_PER_TASK"):
        return env["SLURM_CPUS_PER_TASK"]
    try:
        out = _scontrol("show", "job", "-o", env["SLURM_JOB_ID"])
    except (OSError, subprocess.CalledProcessError):
        return None
    value = dict(kv.split("=", 1) for kv in out.split() if "=" in kv).get("CPUs/Task", "")
    return value if value.isdigit() else None


def rendezvous_port(job_id: str) -> int:
    """A port per job (20000-29999, below Linux's ephemeral range), so two multi-node jobs that
    share a first node never meet in, or fight over, the same c10d store."""
    return 20000 + int(job_id) % 10000


def build_command(script, script_args, nproc_per_node=1, nnodes=1, port=None, shutdown_timeout=300, env=None):
    env = os.environ if env is None else env
    torchrun = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc_per_node}",
                f"--signals-to-handle={FORWARDED_SIGNALS}", f"--shutdown-timeout={shutdown_timeout}"]
    in_slurm = "SLURM_JOB_ID" in env
    in_step = "SLURM_STEP_ID" in env
    if in_slurm:  # the allocation decides; an explicit --nnodes N > 1 must agree with it
        requested, nnodes = nnodes, slurm_job_num_nodes(env)
        if requested > 1 and requested != nnodes:
            raise SystemExit(f"launch: --nnodes {requested} but Slurm job {env['SLURM_JOB_ID']} has {nnodes} "
                             "node(s); is the rule's `nodes` resource the stage's resources.nodes?")
    if nnodes > 1 and not in_slurm:
        raise SystemExit(f"launch: {nnodes} nodes requested but this is not a Slurm allocation; "
                         "run through the slurm profile, or set resources.nodes: 1")
    if in_slurm and (nnodes > 1 or not in_step):
        # torchrun(s) in a job step of their own: one per node; the step is what Slurm's
        # --signal reaches (see the module docstring). --overlap: share the CPUs/GPUs/memory
        # with whatever step we may be running in.
        cpus = _slurm_cpus_per_task(env)
        # When one node's torchrun ends, the others get shutdown_timeout + 60 s to end too (a rank
        # still writing its checkpoint after a signal, while another node's ranks have already
        # exited), then srun kills them (peers of a crashed node would hang in a collective).
        # Not --kill-on-bad-exit=1: it kills them at once, checkpoint or not.
        srun = ["srun", "--overlap", f"--nodes={nnodes}", f"--ntasks={nnodes}", "--ntasks-per-node=1",
                *([f"--cpus-per-task={cpus}"] if cpus else []), "--kill-on-bad-exit=0",
                f"--wait={shutdown_timeout + 60}"]
        if nnodes == 1:
            return [*srun, *torchrun, "--standalone", "--nnodes=1", script, *script_args]
        head = slurm_head_node(env)
        port = port or rendezvous_port(env["SLURM_JOB_ID"])
        return [*srun, *torchrun, f"--nnodes={nnodes}", "--rdzv-backend=c10d", f"--rdzv-endpoint={head}:{port}",
                f"--rdzv-id={env['SLURM_JOB_ID']}", script, *script_args]
    return [*torchrun, "--standalone", "--nnodes=1", script, *script_args]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nproc-per-node", type=int, default=1)
    p.add_argument("--nnodes", type=int, default=1)
    p.add_argument("--port", type=int, default=None, help="c10d rendezvous port (default: derived from SLURM_JOB_ID)")
    p.add_argument("--shutdown-timeout", type=int, default=300)
    p.add_argument("script")
    p.add_argument("args", nargs=argparse.REMAINDER)
    a = p.parse_args(argv)
    cmd = build_command(a.script, a.args, a.nproc_per_node, a.nnodes, a.port, a.shutdown_timeout)
    print("launch:", shlex.join(cmd), file=sys.stderr, flush=True)
    # Replace this process so signals from Slurm or Snakemake reach torchrun directly.
    if cmd[0] == "srun":
        os.execvpe(cmd[0], cmd, srun_env())
    os.execvp(cmd[0], cmd)


if __name__ == "__main__":
    main()
