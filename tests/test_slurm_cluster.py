"""Cluster mapping: tuneflow.cluster.rule_resources, the Slurm parts of tuneflow.launch, the
profiles, and (marked `slurm`) a toy workflow submitted through profiles/slurm + profiles/ci-slurm
to a real Slurm started on this host by tests/slurm_cluster.py (two slurmd = two nodes, fake GPUs).

The toy Snakefile is written to a temporary directory (the project's Snakefile is not used): a CPU
rule, a one-node "training" rule (2 GPUs, 2 ranks) and a two-node one (1 GPU + 2 ranks per node),
each running scripts/launch.py on a probe that all_reduces over gloo and records what it saw.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from slurm_cluster import client_env, is_available, show_job
from tuneflow import launch
from tuneflow.cluster import processes_per_node, rule_resources

REPO = Path(__file__).resolve().parent.parent
PROFILES = REPO / "profiles"
CPU_RULES = ("tiny_model", "convert", "tokenize", "summarize", "report")
GPU_RULES = ("train_pt", "train_sft", "train_dpo", "merge", "evaluate")
TRAIN_RULES = ("train_pt", "train_sft", "train_dpo")


# ---------------------------------------------------------------------------------------------
# rule_resources / processes_per_node


def test_cpu_rule_gets_one_task_and_no_gpus():
    res = {"nodes": 1, "gpus_per_node": 4, "processes_per_node": None, "cpus_per_task": 3, "mem_mb": 2000,
           "runtime": 30}
    assert rule_resources(res, gpu_rule=False) == {
        "nodes": 1, "tasks": 1, "cpus_per_task": 3, "mem_mb": 2000, "runtime": 30}
    assert processes_per_node(res, gpu_rule=False) == 1


def test_one_node_two_gpus():
    res = {"nodes": 1, "gpus_per_node": 2, "processes_per_node": None, "cpus_per_task": 8, "mem_mb": 32000,
           "runtime": 120}
    assert rule_resources(res, gpu_rule=True) == {
        "nodes": 1, "tasks": 1, "cpus_per_task": 8, "mem_mb": 32000, "runtime": 120,
        "gres": "gpu:2", "tasks_per_gpu": 0, "local_gpus": 2, "mpi": 0}
    assert processes_per_node(res) == 2


def test_two_nodes_eight_gpus():
    res = {"nodes": 2, "gpus_per_node": 8, "processes_per_node": None, "cpus_per_task": 64, "mem_mb": 500000,
           "runtime": 1440}
    r = rule_resources(res, gpu_rule=True)
    # one torchrun per node: 2 tasks, each with every CPU of its node; GPUs per node, not in total
    assert (r["nodes"], r["tasks"], r["gres"], r["cpus_per_task"]) == (2, 2, "gpu:8", 64)
    assert r["tasks_per_gpu"] == 0  # no --ntasks-per-gpu (8 tasks x 64 CPUs would not fit a node)
    assert "gpu" not in r and "gpus" not in r  # would add a --gpus=<total> next to --gres
    assert processes_per_node(res) == 8


def test_processes_per_node_override():
    res = {"nodes": 1, "gpus_per_node": 2, "processes_per_node": 4, "cpus_per_task": 4, "mem_mb": 4000,
           "runtime": 10}
    assert processes_per_node(res) == 4
    assert rule_resources(res, gpu_rule=True)["tasks"] == 1  # still ONE torchrun, with 4 ranks
    cpu_ddp = {"nodes": 2, "gpus_per_node": 0, "processes_per_node": 3}
    assert processes_per_node(cpu_ddp) == 3
    r = rule_resources(cpu_ddp, gpu_rule=True)
    assert (r["nodes"], r["tasks"], "gres" in r) == (2, 2, False)  # -> --nodes=2 --ntasks=2


def test_defaults_and_bad_values():
    assert processes_per_node({}) == 1
    r = rule_resources({}, gpu_rule=True)
    assert (r["nodes"], r["cpus_per_task"], r["mem_mb"], r["runtime"]) == (1, 2, 8000, 240)
    with pytest.raises(ValueError, match="resources.nodes"):
        rule_resources({"nodes": 0}, gpu_rule=True)
    with pytest.raises(ValueError, match="processes_per_node"):
        processes_per_node({"processes_per_node": 0})
    with pytest.raises(ValueError, match="unknown resources key"):
        rule_resources({"gpus": 2}, gpu_rule=True)


# ---------------------------------------------------------------------------------------------
# tuneflow.launch, Slurm branch (scontrol faked)


@pytest.fixture
def fake_scontrol(monkeypatch):
    calls = []

    def scontrol(*args):
        calls.append(args)
        if args[:2] == ("show", "hostnames"):
            return {"gpu[07-08]": "gpu07\ngpu08\n", "gpu07": "gpu07\n"}[args[2]]
        if args[:2] == ("show", "job"):
            return "JobId=42 NumNodes=2 NodeList=gpu[07-08] CPUs/Task=16 Partition=gpu\n"
        raise AssertionError(args)

    monkeypatch.setattr(launch, "_scontrol", scontrol)
    return calls


def test_launch_outside_slurm_is_standalone():
    cmd = launch.build_command("train.py", ["--x"], nproc_per_node=4, env={})
    assert "--standalone" in cmd and "srun" not in cmd and cmd[-2:] == ["train.py", "--x"]
    with pytest.raises(SystemExit, match="not a Slurm allocation"):
        launch.build_command("train.py", [], nnodes=2, env={})


def test_launch_in_the_plugins_job_step_uses_the_jobs_nodes(fake_scontrol):
    # What scripts/launch.py sees under the plugin's `srun -n1`: the STEP's view (1 node).
    env = {"SLURM_JOB_ID": "42", "SLURM_STEP_ID": "0", "SLURM_NNODES": "1", "SLURM_JOB_NODELIST": "gpu07",
           "SLURM_CPUS_PER_TASK": "16"}
    cmd = launch.build_command("train.py", [], nproc_per_node=8, nnodes=2, env=env)
    assert cmd[:4] == ["srun", "--overlap", "--nodes=2", "--ntasks=2"]
    assert "--cpus-per-task=16" in cmd and "--kill-on-bad-exit=1" not in cmd
    assert "--rdzv-endpoint=gpu07:20042" in cmd and "--rdzv-id=42" in cmd and "--nnodes=2" in cmd


def test_launch_in_the_batch_script_runs_torchrun_in_its_own_step(fake_scontrol):
    # The `mpi` resource makes the plugin run the rule in the batch script, SLURM_* stripped.
    env = {"SLURM_JOB_ID": "42"}
    fake_scontrol.clear()
    cmd = launch.build_command("train.py", [], nproc_per_node=8, env=env)
    assert cmd[0] == "srun" and "--nodes=2" in cmd and "--rdzv-endpoint=gpu07:20042" in cmd
    one = {"SLURM_JOB_ID": "43", "SLURM_JOB_NUM_NODES": "1", "SLURM_CPUS_PER_TASK": "4"}
    cmd = launch.build_command("train.py", [], nproc_per_node=2, env=one)
    assert cmd[:3] == ["srun", "--overlap", "--nodes=1"] and "--standalone" in cmd and "--cpus-per-task=4" in cmd


def test_rendezvous_port_differs_between_jobs():
    assert launch.rendezvous_port("42") == 20042 and launch.rendezvous_port("1234567") == 24567
    assert len({launch.rendezvous_port(str(j)) for j in range(1000, 1100)}) == 100
    assert all(20000 <= launch.rendezvous_port(str(j)) < 30000 for j in (1, 9999, 10000, 99999999))


def test_launch_refuses_a_node_count_the_job_does_not_have(fake_scontrol):
    env = {"SLURM_JOB_ID": "44", "SLURM_JOB_NUM_NODES": "1"}
    with pytest.raises(SystemExit, match="--nnodes 2 but Slurm job 44 has 1 node"):
        launch.build_command("train.py", [], nnodes=2, env=env)


def test_launch_one_node_inside_a_step_runs_torchrun_directly():
    env = {"SLURM_JOB_ID": "42", "SLURM_STEP_ID": "0", "SLURM_JOB_NUM_NODES": "1"}
    cmd = launch.build_command("train.py", [], nproc_per_node=2, env=env)
    assert cmd[0] == sys.executable and "--standalone" in cmd


def test_srun_env_keeps_only_the_job_id():
    env = {"SLURM_JOB_ID": "42", "SLURM_NNODES": "1", "SLURM_JOB_NODELIST": "gpu07", "SLURM_STEP_ID": "0",
           "SRUN_CPUS_PER_TASK": "2", "SLURM_CONF": "/etc/slurm/slurm.conf", "PATH": "/bin", "CUDA_HOME": "/c"}
    assert launch.srun_env(env) == {"SLURM_JOB_ID": "42", "SLURM_CONF": "/etc/slurm/slurm.conf", "PATH": "/bin",
                                    "CUDA_HOME": "/c"}


# ---------------------------------------------------------------------------------------------
# profiles


def _profile(name):
    return yaml.safe_load((PROFILES / name / "config.yaml").read_text())


def test_profile_names_resolve_from_the_repo_root(monkeypatch):
    from snakemake.cli import get_profile_dir

    monkeypatch.chdir(REPO)
    for name in ("slurm", "local"):
        found = get_profile_dir(name)
        assert found is not None, name
        assert found[1].resolve() == (PROFILES / name / "config.yaml").resolve()


@pytest.mark.parametrize("name", ["slurm", "ci-slurm"])
def test_slurm_profiles_put_every_rule_on_its_partition(name):
    p = _profile(name)
    assert p["executor"] == "slurm"
    sr = p["set-resources"]
    cpu = {sr[r]["slurm_partition"] for r in CPU_RULES}
    gpu = {sr[r]["slurm_partition"] for r in GPU_RULES}
    assert len(cpu) == 1 and len(gpu) == 1 and cpu != gpu
    for r in TRAIN_RULES:
        assert re.fullmatch(r"'--signal=TERM@\d+'", sr[r]["slurm_extra"]), r
    # the amounts come from the workflow config (rule_resources), not from the profile
    assert not {"nodes", "gres", "tasks", "cpus_per_task", "mem_mb", "runtime"} & {k for v in sr.values() for k in v}


def test_ci_profile_polls_with_squeue_and_repeats_the_replaced_keys():
    slurm, ci = _profile("slurm"), _profile("ci-slurm")
    assert ci["slurm-status-command"] == "squeue"
    assert (ci["set-resources"]["train_sft"]["slurm_partition"], ci["set-resources"]["tokenize"]["slurm_partition"]) \
        == ("gpu", "cpu")
    # later --profile replaces whole top-level keys: the CI profile must carry every rule again
    assert set(ci["set-resources"]) == set(slurm["set-resources"])
    assert slurm["retries"] >= 1 and "retries" not in ci  # inherited from profiles/slurm


@pytest.mark.parametrize("profiles", [["slurm"], ["slurm", "ci-slurm"], ["ci-slurm"], ["local"]])
def test_profiles_are_accepted_by_snakemake(tmp_path, profiles):
    """Every key is a real option of Snakemake 9 / plugin 2.8 (a dry run parses them all)."""
    (tmp_path / "Snakefile").write_text("rule tokenize:\n    output: 'x'\n    shell: 'touch {output}'\n")
    args = [a for p in profiles for a in ("--profile", str(PROFILES / p))]
    r = subprocess.run([sys.executable, "-m", "snakemake", *args, "-n", "x"], cwd=tmp_path, capture_output=True,
                       text=True, env=client_env(os.path.dirname(sys.executable)), timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


# ---------------------------------------------------------------------------------------------
# real Slurm


PROBE = '''\
"""gloo all_reduce over all ranks; rank 0 records what the job saw. With --wait-for-signal:
wait for SIGTERM/SIGUSR1, "save a checkpoint" (rank 0, CKPT_SECONDS) and exit 3; a rerun that finds
the checkpoint records it and finishes."""
import json, os, signal, sys, time
import torch
import torch.distributed as dist

out = sys.argv[1]
wait = "--wait-for-signal" in sys.argv
got = []
for s in (signal.SIGTERM, signal.SIGUSR1):
    signal.signal(s, lambda n, f: got.append(n))
dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
t = torch.tensor([float(rank + 1)])
dist.all_reduce(t)
info = {k: os.environ.get(k) for k in ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_PARTITION", "SLURM_JOB_ID",
        "SLURM_STEP_ID", "SLURM_JOB_NODELIST", "SLURMD_NODENAME")}
info.update(world_size=world, all_reduce=t.item())
ckpt = out + ".ckpt"
if wait and os.path.exists(ckpt):
    info["resumed_from"] = open(ckpt).read()
elif wait:
    open(f"{out}.ready{rank}", "w").close()
    deadline = time.time() + 300
    while not got and time.time() < deadline:
        time.sleep(0.1)
    if rank == 0:
        t0 = time.time()
        time.sleep(float(os.environ.get("CKPT_SECONDS", "5")))
        with open(ckpt, "w") as f:
            json.dump({"signals": got, "saved_after_s": time.time() - t0}, f)
    sys.exit(3)
if rank == 0:
    with open(out, "w") as f:
        json.dump(info, f)
dist.destroy_process_group()
'''

SNAKEFILE = '''\
import sys
sys.path.insert(0, {repo!r})
from tuneflow.cluster import processes_per_node, rule_resources

ONE_NODE = dict(nodes=1, gpus_per_node=2, processes_per_node=2, cpus_per_task=2, mem_mb=1000, runtime=10)
TWO_NODES = dict(nodes=2, gpus_per_node=1, processes_per_node=2, cpus_per_task=2, mem_mb=1000, runtime=10)
LAUNCH = "python {repo}/scripts/launch.py --nnodes {{resources.nodes}} --nproc-per-node {{params.nproc}} probe.py"

rule all:
    input: "out/tokenize.txt", "out/train_sft.json", "out/train_pt.json"

rule tokenize:  # a CPU rule (name from the project, so the profiles' set-resources apply)
    output: "out/tokenize.txt"
    threads: 2  # -> cpus_per_task from default-resources
    shell: "echo $SLURM_JOB_ID $SLURM_JOB_PARTITION > {{output}}"

rule train_sft:  # one node, 2 GPUs, 2 ranks
    input: "out/tokenize.txt"
    output: "out/train_sft.json"
    params: nproc=processes_per_node(ONE_NODE)
    threads: ONE_NODE["cpus_per_task"]
    resources: **rule_resources(ONE_NODE, gpu_rule=True)
    shell: LAUNCH + " {{output}}"

rule train_pt:  # two nodes x (1 GPU, 2 ranks)
    input: "out/tokenize.txt"
    output: "out/train_pt.json"
    params: nproc=processes_per_node(TWO_NODES)
    resources: **rule_resources(TWO_NODES, gpu_rule=True)
    shell: LAUNCH + " {{output}}"

rule train_dpo:  # two nodes, stopped by a signal once, resumed by the retry
    output: "out/train_dpo.json"
    params: nproc=processes_per_node(TWO_NODES)
    resources: **rule_resources(TWO_NODES, gpu_rule=True)
    shell: LAUNCH + " {{output}} --wait-for-signal"
'''


@pytest.fixture
def toy(tmp_path):
    (tmp_path / "probe.py").write_text(PROBE)
    (tmp_path / "Snakefile").write_text(SNAKEFILE.format(repo=str(REPO)))
    return tmp_path


def _snakemake_cmd(*targets):
    return [sys.executable, "-m", "snakemake", "--profile", str(PROFILES / "slurm"), "--profile",
            str(PROFILES / "ci-slurm"), "--verbose", *targets]


def _env(**extra):
    # Jobs inherit this environment (sbatch --export=ALL): the venv's python first on PATH.
    return {**client_env(os.path.dirname(sys.executable)), **extra}


def _submissions(log: str) -> dict:
    """rule -> [Slurm job ids], in submission order, from the plugin's messages."""
    subs = {}
    for job, rule in re.findall(r"submitted with SLURM jobid (\d+) \(log: \S*/rule_(\w+)/", log):
        subs.setdefault(rule, []).append(job)
    return subs


def _sbatch_lines(log: str) -> dict:
    """rule -> the sbatch call the plugin logged (--verbose)."""
    return {m.group(2): m.group(1) for m in re.finditer(r"sbatch call: (sbatch .*?--comment rule_(\w+) .*)", log)}


@pytest.mark.slurm
@pytest.mark.timeout(600)
def test_toy_workflow_runs_every_rule_as_a_slurm_job(slurm_cluster, toy):
    r = subprocess.run(_snakemake_cmd(), cwd=toy, env=_env(), capture_output=True, text=True, timeout=480)
    log = r.stdout + r.stderr
    (toy / "snakemake.log").write_text(log)
    assert r.returncode == 0, log[-6000:] + "\n" + slurm_cluster.logs()

    subs = _submissions(log)
    assert set(subs) == {"tokenize", "train_sft", "train_pt"}, subs
    jobs = {rule: show_job(ids[-1]) for rule, ids in subs.items()}
    for rule, ids in subs.items():
        # the plugin's Slurm log of that job exists (slurm-keep-successful-logs in ci-slurm)
        assert (toy / ".snakemake" / "slurm_logs" / f"rule_{rule}" / f"{ids[-1]}.log").is_file(), rule
        assert jobs[rule]["JobState"] == "COMPLETED", (rule, jobs[rule])
        assert jobs[rule]["Comment"] == f"rule_{rule}"

    # CPU rule: partition cpu, one task
    job_id, partition = (toy / "out/tokenize.txt").read_text().split()
    assert (job_id, partition) == (subs["tokenize"][-1], "cpu")
    assert (jobs["tokenize"]["Partition"], jobs["tokenize"]["NumTasks"], jobs["tokenize"]["CPUs/Task"]) == \
        ("cpu", "1", "2"), jobs["tokenize"]

    sbatch = _sbatch_lines(log)
    # one node x 2 GPUs: partition gpu, gres gpu:2, ONE task (one torchrun) with both CPUs
    line = sbatch["train_sft"]
    for opt in ("-p gpu", "--gres=gpu:2", "--nodes=1", "--cpus-per-task=2", "--mem 1000", "-t 10",
                "--signal=TERM@360"):
        assert opt in line, (opt, line)
    assert "--ntasks-per-gpu" not in line and "--gpus=" not in line, line
    j = jobs["train_sft"]
    assert (j["Partition"], j["TresPerNode"], j["NumNodes"], j["NumTasks"], j["CPUs/Task"]) == \
        ("gpu", "gres:gpu:2", "1", "1", "2"), j
    sft = json.loads((toy / "out/train_sft.json").read_text())
    assert sft["SLURM_JOB_ID"] == subs["train_sft"][-1] and sft["SLURM_JOB_PARTITION"] == "gpu"
    assert sft["CUDA_VISIBLE_DEVICES"] and len(sft["CUDA_VISIBLE_DEVICES"].split(",")) == 2, sft
    assert (sft["world_size"], sft["all_reduce"]) == (2, 1.0 + 2.0)
    assert sft["SLURM_STEP_ID"] == "0"  # torchrun ran in a job step of its own (launch.py's srun)

    # two nodes x (1 GPU, 2 ranks): one torchrun per node, 4 ranks across both nodes
    line = sbatch["train_pt"]
    for opt in ("-p gpu", "--gres=gpu:1", "--nodes=2", "--cpus-per-task=2", "--signal=TERM@360"):
        assert opt in line, (opt, line)
    assert "--ntasks-per-gpu" not in line, line
    j = jobs["train_pt"]
    assert (j["Partition"], j["TresPerNode"], j["NumNodes"], j["NumTasks"]) == ("gpu", "gres:gpu:1", "2", "2"), j
    pt = json.loads((toy / "out/train_pt.json").read_text())
    assert (pt["world_size"], pt["all_reduce"]) == (4, 1.0 + 2.0 + 3.0 + 4.0), pt
    assert pt["CUDA_VISIBLE_DEVICES"], pt
    assert sorted(pt["SLURM_JOB_NODELIST"].split(",")) == sorted(slurm_cluster.nodes), pt


@pytest.mark.slurm
@pytest.mark.timeout(600)
def test_signalled_multinode_training_checkpoints_and_the_retry_resumes(slurm_cluster, toy):
    """Slurm's --signal (here sent at once with `scancel --signal=TERM`, which reaches the same
    processes: every job step, not the batch script) must give the ranks time to checkpoint; the
    failed job is then resubmitted (retries, profiles/slurm) and resumes from the checkpoint."""
    ckpt_seconds = 8
    out = toy / "out" / "train_dpo.json"
    proc = subprocess.Popen(_snakemake_cmd("out/train_dpo.json"), cwd=toy, env=_env(CKPT_SECONDS=str(ckpt_seconds)),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 300
        while not all(Path(f"{out}.ready{r}").exists() for r in range(4)):
            assert proc.poll() is None, proc.stdout.read()[-6000:]
            assert time.monotonic() < deadline, "the ranks never started"
            time.sleep(0.5)
        running = subprocess.run(["squeue", "-h", "-t", "R", "-o", "%i %k"], capture_output=True, text=True,
                                 env=_env()).stdout.split("\n")
        job_id = next(line.split()[0] for line in running if line.endswith("rule_train_dpo"))
        subprocess.run(["scancel", "--signal=TERM", job_id], check=True, env=_env())
        log, _ = proc.communicate(timeout=420)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    (toy / "snakemake.log").write_text(log)
    assert proc.returncode == 0, log[-6000:] + "\n" + slurm_cluster.logs()

    ckpt = json.loads(Path(f"{out}.ckpt").read_text())
    assert signal_names(ckpt["signals"]) <= {"SIGTERM"} and ckpt["signals"], ckpt
    assert ckpt["saved_after_s"] >= ckpt_seconds  # not SIGKILLed while "saving"
    result = json.loads(out.read_text())
    assert result["resumed_from"] and result["world_size"] == 4
    ids = _submissions(log)["train_dpo"]
    assert len(ids) == 2 and ids[0] == job_id, ids
    assert show_job(ids[0])["JobState"] == "FAILED" and show_job(ids[1])["JobState"] == "COMPLETED"


def signal_names(nums):
    import signal

    return {signal.Signals(n).name for n in nums}


def test_cluster_helper_reports_why_it_cannot_run():
    ok, why = is_available()
    assert ok or why  # never (False, "")
    if shutil.which("slurmctld") is None:
        assert "not installed" in why
