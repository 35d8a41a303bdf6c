"""A real Slurm cluster on this one host, for the integration tests (a helper, not a conftest).

    info = start_cluster(workdir)            # munged + slurmctld + slurmd here; node idle
    info = start_cluster(workdir, nodes=2)   # same, with two slurmd = two nodes on this host
    ...                                      # sbatch / srun / snakemake --profile ... work now
    stop_cluster(info)                       # cancel jobs, stop what we started, restore /etc, /dev

What the cluster looks like (profiles/ci-slurm and tests/test_slurm_cluster.py rely on it):
  * node 1 is named after this host; with nodes=2 a second node "localhost" is served by a second
    slurmd on another port (both names resolve to this machine, so a torch c10d rendezvous on
    "the first node" works). Each node has the CPUs / sockets / cores that `slurmd -C` detects
    here (a node must not claim more than slurmd finds, or it is drained) and an equal share of
    the memory;
  * partitions `cpu` (default) and `gpu`, both on every node;
  * two fake GPUs per node: `Gres=gpu:2` backed by /dev/nullN symlinks to /dev/null, so Slurm
    allocates them and sets CUDA_VISIBLE_DEVICES in the job as on a real GPU node;
  * no accounting (no slurmdbd; `sacct` does not work): the Snakemake plugin must poll with
    `squeue`, and MinJobAge=600 keeps finished jobs visible to `squeue` long enough for that.

The config must be /etc/slurm/slurm.conf: a SLURM_CONF exported by a test does not reach the `srun`
that the Snakemake job step runs inside the job. Files already there are backed up and restored.
Known to work with Debian 12's slurm-wlm 22.05 (proctrack/linuxproc and task/none: no cgroups).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

ETC_SLURM = Path("/etc/slurm")
MUNGE_RUN = Path("/run/munge")
REQUIRED = ("munged", "munge", "unmunge", "slurmctld", "slurmd", "sbatch", "srun", "squeue", "sinfo", "scontrol",
            "scancel")
CLUSTER_NAME = "tuneflow-ci"
GPUS_PER_NODE = 2
SLURMD_PORT = 6818


@dataclass
class ClusterInfo:
    workdir: Path
    nodes: list
    cpus: int
    real_memory_mb: int  # per node
    gpus_per_node: int = GPUS_PER_NODE
    partitions: tuple = ("cpu", "gpu")
    # daemon name -> Popen of what *we* started (a munged that already answers is reused)
    procs: dict = field(default_factory=dict)
    # path we wrote -> backup of what was there (None: nothing; removed on stop)
    saved: dict = field(default_factory=dict)
    created_dirs: list = field(default_factory=list)

    @property
    def node(self) -> str:
        return self.nodes[0]

    def log_paths(self) -> dict:
        paths = {"munged": self.workdir / "munged.log", "slurmctld": self.workdir / "slurmctld.log"}
        paths.update({f"slurmd {n}": self.workdir / f"slurmd-{n}.log" for n in self.nodes})
        return paths

    def logs(self, tail: int = 40) -> str:
        """Last lines of each daemon log (for assertion messages)."""
        out = []
        for name, path in self.log_paths().items():
            if path.exists():
                lines = path.read_text(errors="replace").splitlines()[-tail:]
                out.append(f"--- {name} ({path}) ---\n" + "\n".join(lines))
        return "\n".join(out)


def _clean_env() -> dict:
    """This environment without SLURM_* / SBATCH_* / SRUN_* settings (daemons, client commands)."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "SRUN_", "SALLOC_"))}


def _running(name: str) -> list[int]:
    """PIDs of live processes whose command name is exactly `name` (reads /proc, signals nothing)."""
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            if (d / "comm").read_text().strip() == name and " Z " not in (d / "stat").read_text():
                pids.append(int(d.name))
        except OSError:
            continue
    return pids


def is_available() -> tuple[bool, str]:
    """(True, "") when this machine can run the local cluster, else (False, why) for pytest.skip."""
    missing = [c for c in REQUIRED if shutil.which(c) is None]
    if missing:
        return False, (f"Slurm/munge not installed (missing {', '.join(missing)}); "
                       "run .ci/system-deps.sh as root to install slurm-wlm and munge")
    if os.geteuid() != 0:
        return False, "the local Slurm cluster needs root (writes /etc/slurm and /run/munge, runs slurmd)"
    if not Path("/etc/munge/munge.key").exists():
        return False, "no /etc/munge/munge.key (the munge package creates it when installed)"
    busy = [n for n in ("slurmctld", "slurmd") if _running(n)]
    if busy:
        return False, f"{' and '.join(busy)} already running on this host; not reconfiguring someone else's Slurm"
    return True, ""


def _cmd(*args, timeout=15) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, env=_clean_env())


def _node_hardware() -> dict:
    """What slurmd detects on this machine (`slurmd -C`), as a dict of its Key=Value fields."""
    first = subprocess.run(["slurmd", "-C"], check=True, capture_output=True, text=True,
                           env=_clean_env()).stdout.splitlines()[0]
    return dict(kv.split("=", 1) for kv in first.split() if "=" in kv)


def _remember(path: Path, info: ClusterInfo) -> None:
    if path in info.saved:
        return
    if path.exists() or path.is_symlink():
        backup = info.workdir / "backup" / path.name
        backup.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, backup, follow_symlinks=False)
        info.saved[path] = backup
    else:
        info.saved[path] = None


def _write(path: Path, text: str, info: ClusterInfo) -> None:
    _remember(path, info)
    path.write_text(text)


def _fake_gpus(i: int, info: ClusterInfo) -> list[Path]:
    return [Path(f"/dev/null{i * info.gpus_per_node + g}") for g in range(info.gpus_per_node)]


def _slurm_conf(info: ClusterInfo, hw: dict) -> str:
    w = info.workdir
    topology = " ".join(f"{k}={hw[k]}" for k in ("Boards", "SocketsPerBoard", "CoresPerSocket", "ThreadsPerCore")
                        if k in hw)
    nodes = "\n".join(
        f"NodeName={n} NodeHostname={n} NodeAddr=127.0.0.1 Port={SLURMD_PORT + i} CPUs={info.cpus} {topology} "
        f"RealMemory={info.real_memory_mb} Gres=gpu:{info.gpus_per_node} State=UNKNOWN"
        for i, n in enumerate(info.nodes))
    all_nodes = ",".join(info.nodes)
    return f"""\
# Written by tests/slurm_cluster.py for the tuneflow integration tests; removed when they end.
ClusterName={CLUSTER_NAME}
SlurmctldHost={info.node}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation={w}/state
SlurmdSpoolDir={w}/spool/%n
SlurmctldPidFile={w}/slurmctld.pid
SlurmdPidFile={w}/slurmd-%n.pid
SlurmctldLogFile={w}/slurmctld.log
SlurmdLogFile={w}/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
MinJobAge=600
KillWait=10
InactiveLimit=0
SchedulerParameters=sched_interval=2
GresTypes=gpu
{nodes}
PartitionName=cpu Nodes={all_nodes} Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes={all_nodes} MaxTime=INFINITE State=UP
"""


CGROUP_CONF = """\
# Written by tests/slurm_cluster.py. Slurm 22.05 has no CgroupPlugin=disabled: load v1, constrain
# nothing (proctrack/linuxproc + task/none never create cgroups).
CgroupPlugin=cgroup/v1
ConstrainCores=no
ConstrainRAMSpace=no
ConstrainSwapSpace=no
ConstrainDevices=no
"""


def _wait(pred, timeout: float, what: str, info: ClusterInfo | None = None, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        for name, proc in (info.procs.items() if info else ()):
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode} while waiting for {what}\n{info.logs()}")
        time.sleep(interval)
    raise RuntimeError(f"timed out after {timeout}s waiting for {what}" + (f"\n{info.logs()}" if info else ""))


def _munge_ok() -> bool:
    try:
        cred = subprocess.run(["munge", "-n"], capture_output=True, timeout=5)
        return cred.returncode == 0 and subprocess.run(["unmunge"], input=cred.stdout, capture_output=True,
                                                       timeout=5).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def node_states(nodes) -> dict:
    """{node: sinfo state} ("idle", "mixed", "down*", ...; "" when sinfo does not answer)."""
    try:
        r = _cmd("sinfo", "-h", "-N", "-o", "%N %T", timeout=10)
    except subprocess.TimeoutExpired:
        return {n: "" for n in nodes}
    seen = dict(line.split(None, 1) for line in r.stdout.splitlines() if len(line.split()) == 2)
    return {n: seen.get(n, "").strip() for n in nodes}


def start_cluster(workdir, nodes: int = 1) -> ClusterInfo:
    """Configure and start munged, slurmctld and `nodes` slurmd (1 or 2) here; return once all are idle."""
    ok, why = is_available()
    if not ok:
        raise RuntimeError(why)
    if nodes not in (1, 2):
        raise ValueError("nodes must be 1 or 2")
    workdir = Path(workdir).resolve()
    for sub in ("state", "spool"):
        (workdir / sub).mkdir(parents=True, exist_ok=True)
    os.chmod(workdir, 0o755)

    hw = _node_hardware()
    host = hw.get("NodeName") or socket.gethostname().split(".")[0]
    names = [host, "localhost"][:nodes]
    if len(set(names)) != len(names):
        raise RuntimeError(f"this host is called {host!r}; cannot add a second node named 'localhost'")
    info = ClusterInfo(
        workdir=workdir,
        nodes=names,
        cpus=int(hw["CPUs"]),
        # an equal share, a little below what slurmd reports so memory jitter never drains a node
        real_memory_mb=max(256, int(int(hw["RealMemory"]) * 0.95) // nodes),
    )
    try:
        _start(info, hw)
    except BaseException:
        stop_cluster(info)
        raise
    return info


def _start(info: ClusterInfo, hw: dict) -> None:
    w = info.workdir
    ETC_SLURM.mkdir(parents=True, exist_ok=True)
    gres_lines = []
    for i, node in enumerate(info.nodes):
        devs = _fake_gpus(i, info)
        for dev in devs:
            _remember(dev, info)
            if dev.exists() or dev.is_symlink():
                dev.unlink()
            dev.symlink_to("/dev/null")
        gres_lines.append(f"NodeName={node} Name=gpu File={','.join(map(str, devs))}")
    _write(ETC_SLURM / "slurm.conf", _slurm_conf(info, hw), info)
    _write(ETC_SLURM / "cgroup.conf", CGROUP_CONF, info)
    _write(ETC_SLURM / "gres.conf", "# Written by tests/slurm_cluster.py: fake GPUs.\n" + "\n".join(gres_lines) + "\n",
           info)

    env = _clean_env()
    if not _munge_ok():
        if _running("munged"):
            raise RuntimeError("a munged is running but does not answer (`munge -n | unmunge` fails)")
        if not MUNGE_RUN.exists():
            MUNGE_RUN.mkdir(mode=0o755)
            info.created_dirs.append(MUNGE_RUN)
        shutil.chown(MUNGE_RUN, "munge", "munge")
        with open(info.log_paths()["munged"], "ab") as log:
            # -F: foreground, so the PID we hold is munged itself. It runs as the munge user
            # because munged insists on owning its key file.
            info.procs["munged"] = subprocess.Popen(
                ["munged", "-F", "--force"], user="munge", group="munge", stdout=log, stderr=subprocess.STDOUT,
                env=env, start_new_session=True)
        _wait(_munge_ok, 20, "munged to answer", info)

    # -D: foreground (we hold the PIDs). slurmctld -c -i: start from empty state.
    with open(w / "slurmctld-stdout.log", "ab") as log:
        info.procs["slurmctld"] = subprocess.Popen(["slurmctld", "-D", "-c", "-i"], stdout=log,
                                                   stderr=subprocess.STDOUT, env=env, start_new_session=True, cwd=w)

    def ctld_up():
        r = _cmd("scontrol", "ping")
        return r.returncode == 0 and "UP" in r.stdout

    _wait(ctld_up, 30, "slurmctld to answer `scontrol ping`", info)
    for node in info.nodes:
        with open(w / f"slurmd-{node}-stdout.log", "ab") as log:
            info.procs[f"slurmd {node}"] = subprocess.Popen(["slurmd", "-D", "-N", node], stdout=log,
                                                            stderr=subprocess.STDOUT, env=env,
                                                            start_new_session=True, cwd=w)

    def all_idle():
        states = node_states(info.nodes)
        for node, state in states.items():
            if state.startswith(("down", "drain")):
                _cmd("scontrol", "update", f"nodename={node}", "state=resume")
        return all(s.startswith("idle") for s in states.values())

    _wait(all_idle, 60, f"nodes {','.join(info.nodes)} to be idle in sinfo", info)


def _terminate(proc: subprocess.Popen, timeout: float = 15) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def stop_cluster(info: ClusterInfo) -> None:
    """Cancel all jobs, stop the daemons we started, restore /etc/slurm and remove the fake GPUs."""
    ctld = info.procs.get("slurmctld")
    if ctld is not None and ctld.poll() is None:
        try:
            _cmd("scancel", "--partition=cpu,gpu", timeout=10)

            def no_jobs():
                return not _cmd("squeue", "-h", "-t", "PD,R,CG,S", "-o", "%i", timeout=10).stdout.split()

            _wait(no_jobs, 30, "jobs to end after scancel")
        except (RuntimeError, subprocess.TimeoutExpired, OSError):
            pass
    # slurmd before slurmctld, munged last.
    for name in [n for n in info.procs if n.startswith("slurmd ")] + ["slurmctld", "munged"]:
        if name in info.procs:
            _terminate(info.procs[name])
    for path, backup in info.saved.items():
        try:
            if path.exists() or path.is_symlink():
                path.unlink()
            if backup is not None:
                shutil.copy2(backup, path, follow_symlinks=False)
        except OSError:
            pass
    info.saved.clear()
    for d in reversed(info.created_dirs):
        shutil.rmtree(d, ignore_errors=True)
    info.created_dirs.clear()


def client_env(prepend_path: str | None = None) -> dict:
    """Environment for commands that talk to the test cluster (no inherited SLURM_* settings)."""
    env = _clean_env()
    if prepend_path:
        env["PATH"] = f"{prepend_path}{os.pathsep}{env.get('PATH', '')}"
    return env


def show_job(job_id) -> dict:
    """`scontrol show job -o <id>` as {Key: Value}."""
    r = _cmd("scontrol", "show", "job", "-o", str(job_id))
    if r.returncode != 0:
        raise RuntimeError(f"scontrol show job {job_id}: {r.stderr.strip()}")
    return dict(m.groups() for m in re.finditer(r"(\S+?)=(\S*)", r.stdout.strip()))
