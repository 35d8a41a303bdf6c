"""Launch a training or evaluation script under torchrun, locally or across a Slurm allocation.

Mapping to Slurm (one torchrun per node, each starting `nproc_per_node` ranks):
  SLURM_JOB_ID, SLURM_NNODES, SLURM_JOB_NODELIST -> srun --nodes=N --ntasks-per-node=1 torchrun
      --nnodes=N --nproc-per-node=P --rdzv-backend=c10d --rdzv-endpoint=<first node>:<port>
      --rdzv-id=<SLURM_JOB_ID>
Outside Slurm, or on a one-node allocation, torchrun runs directly with --standalone (c10d on a
free local port, so several local jobs never collide).

torchrun forwards SIGTERM/SIGUSR1 (what Slurm sends before preemption or the time limit) to the
ranks, which save a checkpoint and exit non-zero; it waits `shutdown_timeout` seconds for that.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys

FORWARDED_SIGNALS = "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1,SIGUSR2"


def slurm_head_node() -> str:
    nodelist = os.environ["SLURM_JOB_NODELIST"]
    out = subprocess.run(["scontrol", "show", "hostnames", nodelist], check=True, capture_output=True, text=True)
    return out.stdout.split()[0]


def build_command(script, script_args, nproc_per_node=1, nnodes=1, port=29500, shutdown_timeout=300, env=None):
    env = os.environ if env is None else env
    torchrun = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc_per_node}",
                f"--signals-to-handle={FORWARDED_SIGNALS}", f"--shutdown-timeout={shutdown_timeout}"]
    in_slurm = "SLURM_JOB_ID" in env
    if in_slurm:
        nnodes = int(env.get("SLURM_NNODES", nnodes))
    if nnodes > 1:
        if not in_slurm:
            raise SystemExit(f"launch: {nnodes} nodes requested but this is not a Slurm allocation; "
                             "run through the slurm profile, or set resources.nodes: 1")
        head = slurm_head_node()
        return ["srun", f"--nodes={nnodes}", f"--ntasks={nnodes}", "--ntasks-per-node=1", "--kill-on-bad-exit=1",
                *torchrun, f"--nnodes={nnodes}", "--rdzv-backend=c10d", f"--rdzv-endpoint={head}:{port}",
                f"--rdzv-id={env['SLURM_JOB_ID']}", script, *script_args]
    return [*torchrun, "--standalone", "--nnodes=1", script, *script_args]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nproc-per-node", type=int, default=1)
    p.add_argument("--nnodes", type=int, default=1)
    p.add_argument("--port", type=int, default=29500)
    p.add_argument("--shutdown-timeout", type=int, default=300)
    p.add_argument("script")
    p.add_argument("args", nargs=argparse.REMAINDER)
    a = p.parse_args(argv)
    cmd = build_command(a.script, a.args, a.nproc_per_node, a.nnodes, a.port, a.shutdown_timeout)
    print("launch:", shlex.join(cmd), file=sys.stderr, flush=True)
    # Replace this process so signals from Slurm or Snakemake reach torchrun directly.
    os.execvp(cmd[0], cmd)


if __name__ == "__main__":
    main()
