"""Faults survived: a rank killed with SIGKILL (in a never-trained project too), SIGTERM (Slurm
preemption / time limit), a full or read-only disk while saving or merging, a damaged checkpoint or
tokenized output, a diverged run, and Snakemake itself killed mid-run. Each one costs at most the
work since the last intact checkpoint, never leaves a half-written or diverged result that looks
complete, and the rerun resumes from that checkpoint. Each test works on a copy of the session's
demo run, whose uninterrupted PT / SFT / DPO outputs are the reference."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from conftest import BIN, env_with_venv, files_under, skip_or_fail
from pipeline import CI_CONFIG, copy_project, load_tensors, max_abs_diff, run_ci, train_info

pytestmark = [pytest.mark.fault, pytest.mark.slow]

# Resuming restores model, optimizer, scheduler, RNG and data order: on CPU the resumed adapter
# equals the uninterrupted one up to float rounding in re-partitioned ZeRO-2 optimizer state.
RESUME_TOLERANCE = 1e-5


def start(project, *targets, options=()):
    """Snakemake in its own process group (so the whole tree can be killed at once)."""
    cmd = [str(BIN / "snakemake"), "--profile", "local", *options, *targets, "--configfile", CI_CONFIG]
    log = open(Path(project) / "snakemake.out", "w")
    return subprocess.Popen(cmd, cwd=project, env=env_with_venv(), stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)


def wait_for(pred, timeout=300, what="condition", proc=None):
    end = time.time() + timeout
    while time.time() < end:
        value = pred()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process ended ({proc.returncode}) before {what}")
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def complete_checkpoints(work: Path) -> list[Path]:
    return sorted((c for c in work.glob("checkpoint-*") if (c / ".complete").exists()),
                  key=lambda c: int(c.name.split("-")[1]))


def step(ckpt: Path) -> int:
    return int(ckpt.name.split("-")[1])


def processes():
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                yield int(pid), [c.decode(errors="replace") for c in cmd if c]
            except OSError:
                continue


def rank_pids(stage, project):
    """Training ranks (not torchrun itself) of `stage` in `project`."""
    out = []
    for pid, cmd in processes():
        script = next((i for i, c in enumerate(cmd) if c.endswith("scripts/train.py")), None)
        if script is not None and "torch.distributed.run" not in cmd and cmd[script + 1:script + 2] == [stage]:
            try:
                if os.readlink(f"/proc/{pid}/cwd") == str(project):
                    out.append(pid)
            except OSError:
                pass
    return out


def torchrun_pid(stage, project):
    for pid, cmd in processes():
        if "torch.distributed.run" in cmd and stage in cmd and any(c.endswith("scripts/train.py") for c in cmd):
            try:
                if os.readlink(f"/proc/{pid}/cwd") == str(project):
                    return pid
            except OSError:
                pass
    return None


def wait_gone(pgid, timeout=60):
    end = time.time() + timeout
    while time.time() < end:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)


def digest(directory: Path) -> dict:
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.fixture
def sft_project(demo_run, tmp_path):
    """A copy of the demo project whose SFT stage (and what follows) has to run again."""
    project = copy_project(demo_run, tmp_path / "project")
    shutil.rmtree(project / "results" / "adapters" / "sft")
    return project


def reference_sft(demo_run):
    return load_tensors(demo_run / "results" / "adapters" / "sft" / "adapter_model.safetensors")


def test_kill9_a_rank_after_the_first_checkpoint_then_resume(demo_run, sft_project):
    work = sft_project / "results" / "work" / "sft"
    proc = start(sft_project, "results/adapters/sft")
    wait_for(lambda: complete_checkpoints(work), what="the first checkpoint", proc=proc)
    delay = random.uniform(0.0, 1.0)
    time.sleep(delay)
    victims = wait_for(lambda: rank_pids("sft", sft_project), timeout=30, what="the training ranks")
    victim = random.choice(victims)
    print(f"killing rank pid {victim} with SIGKILL {delay:.2f}s after the first checkpoint")
    os.kill(victim, signal.SIGKILL)
    assert proc.wait(timeout=300) != 0
    assert not (sft_project / "results" / "adapters" / "sft").exists(), "a killed job must not look complete"
    survived = complete_checkpoints(work)
    assert survived, "the checkpoints must survive the failed job"
    last = step(survived[-1])

    run_ci(sft_project, "results/adapters/sft")
    adapter = sft_project / "results" / "adapters" / "sft"
    assert train_info(adapter)["resumed_from_step"] == last
    diff = max_abs_diff(reference_sft(demo_run), load_tensors(adapter / "adapter_model.safetensors"))
    print(f"resumed from step {last}; max |adapter - uninterrupted adapter| = {diff:.3g}")
    assert diff <= RESUME_TOLERANCE
    assert not work.exists(), "checkpoints are removed once the output is complete"


def test_kill9_a_rank_during_rl_then_resume(demo_run, tmp_path):
    """Online RL (sampling, rewards from the reward model, KL to the reference) resumes from its
    checkpoint after a rank is killed, and ends where the uninterrupted run ended."""
    project = copy_project(demo_run, tmp_path / "project")
    shutil.rmtree(project / "results" / "adapters" / "rl")
    work = project / "results" / "work" / "rl"
    proc = start(project, "results/adapters/rl")
    wait_for(lambda: complete_checkpoints(work), what="the first RL checkpoint", proc=proc)
    victim = random.choice(wait_for(lambda: rank_pids("rl", project), timeout=30, what="the RL ranks"))
    os.kill(victim, signal.SIGKILL)
    assert proc.wait(timeout=300) != 0
    assert not (project / "results" / "adapters" / "rl").exists(), "a killed job must not look complete"
    last = step(complete_checkpoints(work)[-1])

    run_ci(project, "results/adapters/rl")
    adapter = project / "results" / "adapters" / "rl"
    info = train_info(adapter)
    assert info["resumed_from_step"] == last and info["steps"] == info["settings"]["training"]["max_steps"]
    reference = load_tensors(demo_run / "results" / "adapters" / "rl" / "adapter_model.safetensors")
    diff = max_abs_diff(reference, load_tensors(adapter / "adapter_model.safetensors"))
    print(f"RL resumed from step {last}; max |adapter - uninterrupted adapter| = {diff:.3g}")
    assert diff <= RESUME_TOLERANCE
    assert not work.exists()


def test_sigterm_saves_a_checkpoint_and_the_retry_resumes(demo_run, sft_project):
    work = sft_project / "results" / "work" / "sft"
    proc = start(sft_project, "results/adapters/sft", options=("--retries", "1"))
    wait_for(lambda: complete_checkpoints(work), what="the first checkpoint", proc=proc)
    pid = wait_for(lambda: torchrun_pid("sft", sft_project), timeout=30, what="torchrun")
    os.kill(pid, signal.SIGTERM)  # what Slurm sends before preemption or the time limit
    assert proc.wait(timeout=600) == 0, (sft_project / "snakemake.out").read_text()[-5000:]
    out = (sft_project / "snakemake.out").read_text()
    m = re.search(r"stop signal received: saving a checkpoint at step (\d+)", out)
    assert m, out[-5000:]
    assert "checkpoint saved after a stop signal; exiting so the job can be retried" in out
    assert "Error in rule train_sft" in out and "Trying to restart job" in out, out[-5000:]
    adapter = sft_project / "results" / "adapters" / "sft"
    assert train_info(adapter)["resumed_from_step"] == int(m.group(1))
    assert max_abs_diff(reference_sft(demo_run), load_tensors(adapter / "adapter_model.safetensors")) <= RESUME_TOLERANCE


def _mount_tmpfs(path: Path, size="64m"):
    path.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True, text=True)
    if proc.returncode != 0:
        skip_or_fail(f"cannot mount a tmpfs to simulate a full / read-only disk: {proc.stderr.strip()}")


def _fill(path: Path):
    with open(path / "filler", "wb") as f:
        chunk = b"\0" * (1 << 20)
        try:
            while True:
                f.write(chunk)
                f.flush()
        except OSError as e:
            assert e.errno == errno.ENOSPC


@pytest.mark.parametrize("failure", ["disk-full", "read-only"])
def test_storage_failure_while_saving_keeps_the_previous_checkpoint(demo_run, sft_project, failure):
    work_root = sft_project / "results" / "work"
    _mount_tmpfs(work_root)
    try:
        work = work_root / "sft"
        proc = start(sft_project, "results/adapters/sft")
        first = wait_for(lambda: complete_checkpoints(work), what="the first checkpoint", proc=proc)[0]
        if failure == "disk-full":
            _fill(work_root)
        else:
            subprocess.run(["mount", "-o", "remount,ro", str(work_root)], check=True)
        kept = digest(first)
        assert proc.wait(timeout=300) != 0
        log = (sft_project / "logs" / "train_sft.log").read_text()
        what = "No space left on device (errno 28)" if failure == "disk-full" else "Read-only file system (errno 30)"
        expected = (f"tuneflow: error: saving a checkpoint in results/work/sft failed: {what}; the last complete "
                    f"checkpoint {first.relative_to(sft_project)} is intact and a rerun resumes from it")
        assert expected in log, log[-4000:]
        assert digest(first) == kept, "the previous checkpoint must be untouched"
        assert not (sft_project / "results" / "adapters" / "sft").exists()

        if failure == "disk-full":
            (work_root / "filler").unlink()
        else:
            subprocess.run(["mount", "-o", "remount,rw", str(work_root)], check=True)
        run_ci(sft_project, "results/adapters/sft")
        adapter = sft_project / "results" / "adapters" / "sft"
        assert train_info(adapter)["resumed_from_step"] == step(first)
        assert max_abs_diff(reference_sft(demo_run), load_tensors(adapter / "adapter_model.safetensors")) <= RESUME_TOLERANCE
    finally:
        subprocess.run(["umount", "-l", str(work_root)], capture_output=True)


def test_disk_full_while_writing_the_outputs_leaves_nothing_and_the_rerun_resumes(demo_run, sft_project):
    """Training finishes, then the disk holding results/adapters is full when the adapter is written."""
    adapters = sft_project / "results" / "adapters"
    saved = sft_project / "adapters-before"
    shutil.move(adapters, saved)
    _mount_tmpfs(adapters)
    try:
        subprocess.run(["cp", "-a", f"{saved}/.", str(adapters)], check=True)  # the other stages' outputs, mtimes kept
        _fill(adapters)
        proc = start(sft_project, "results/adapters/sft")
        assert proc.wait(timeout=600) != 0
        log = (sft_project / "logs" / "train_sft.log").read_text()
        assert ("tuneflow: error: writing the stage's outputs to results/adapters/sft failed: No space left on device "
                "(errno 28); nothing was left there, and the last complete checkpoint results/work/sft/checkpoint-") in log, log[-4000:]
        assert sorted(p.name for p in adapters.iterdir()) == ["dpo", "filler", "kto", "pt", "rl", "rm"]  # no staging directory left
        last = step(complete_checkpoints(sft_project / "results" / "work" / "sft")[-1])

        (adapters / "filler").unlink()
        run_ci(sft_project, "results/adapters/sft")
        adapter = adapters / "sft"
        assert train_info(adapter)["resumed_from_step"] == last
        assert max_abs_diff(reference_sft(demo_run), load_tensors(adapter / "adapter_model.safetensors")) <= RESUME_TOLERANCE
    finally:
        subprocess.run(["umount", "-l", str(adapters)], capture_output=True)


def test_killing_snakemake_mid_run_then_rerunning(demo_run, tmp_path):
    project = copy_project(demo_run, tmp_path / "project")
    for stale in ("adapters/dpo", "merged/dpo", "eval/dpo", "eval/summary.tsv", "report"):
        path = project / "results" / stale
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    kept = {p: (project / "results" / p).stat().st_mtime for p in ("adapters/sft", "merged/sft", "eval/sft", "data/demo_pairs")}
    work = project / "results" / "work" / "dpo"
    proc = start(project)
    wait_for(lambda: complete_checkpoints(work), what="the first DPO checkpoint", proc=proc)
    os.killpg(proc.pid, signal.SIGKILL)  # Snakemake and every process it started, like a crashed node
    proc.wait()
    wait_gone(proc.pid)
    assert not (project / "results" / "adapters" / "dpo").exists()
    survived = step(complete_checkpoints(work)[-1])

    first = run_ci(project, check=False)
    if first.returncode != 0:  # Snakemake refuses to start while its lock from the killed run is there
        assert "cannot be locked" in first.stdout + first.stderr
        run_ci(project, options=("--unlock",))
        run_ci(project)
    assert train_info(project / "results" / "adapters" / "dpo")["resumed_from_step"] == survived
    assert (project / "results" / "report" / "index.html").is_file()
    for p, mtime in kept.items():
        assert (project / "results" / p).stat().st_mtime == mtime, f"{p} was complete and must not be rebuilt"
    again = run_ci(project, options=("-n",))
    assert "Nothing to be done" in again.stdout + again.stderr


STALE_LOCK_RANKS = '''
import json, sys
from transformers import TrainingArguments
from tuneflow import distributed

ds = {"zero_optimization": {"stage": 2}, "train_micro_batch_size_per_gpu": "auto",
      "gradient_accumulation_steps": "auto", "train_batch_size": "auto"}
args = TrainingArguments(output_dir=sys.argv[1], use_cpu=True, deepspeed=ds, report_to=[])
distributed.start_for_trainer(args)
import torch.distributed as dist
print("joined", dist.get_rank(), dist.get_world_size(), flush=True)
dist.destroy_process_group()
'''


def test_a_lock_left_by_a_rank_killed_inside_deepspeeds_kernel_build_does_not_hang_later_jobs(tmp_path):
    # DeepSpeed on CPU JIT-builds a shared-memory kernel at start, behind a lock file; a rank killed
    # there leaves the lock, and (before the fix) every later job on the machine waited on it forever.
    extensions = tmp_path / "torch_extensions"
    (extensions / "deepspeed_shm_comm").mkdir(parents=True)
    (extensions / "deepspeed_shm_comm" / "lock").touch()
    script = tmp_path / "ranks.py"
    script.write_text(STALE_LOCK_RANKS)
    proc = subprocess.run([str(BIN / "python"), "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                           str(script), str(tmp_path / "out")],
                          env=env_with_venv({"TORCH_EXTENSIONS_DIR": str(extensions)}), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert sorted(re.findall(r"joined (\d) 2", proc.stdout)) == ["0", "1"]


def test_the_first_training_run_killed_after_its_first_checkpoint_resumes(demo_run, tmp_path):
    """A never-trained project (tokenized data fresh from its rule, no training yet): the common case
    of Slurm preemption. The trainer's dataset transforms used to write cache files into the
    tokenized output, which changed the checkpoints' fingerprint: the rerun started over."""
    project = copy_project(demo_run, tmp_path / "project")
    for stale in ("tokenized", "adapters/pt", "work"):
        shutil.rmtree(project / "results" / stale, ignore_errors=True)
    work = project / "results" / "work" / "pt"
    proc = start(project, "results/adapters/pt")
    wait_for(lambda: complete_checkpoints(work), what="the first checkpoint", proc=proc)
    victim = random.choice(wait_for(lambda: rank_pids("pt", project), timeout=30, what="the training ranks"))
    os.kill(victim, signal.SIGKILL)
    assert proc.wait(timeout=300) != 0
    assert not (project / "results" / "adapters" / "pt").exists()
    last = step(complete_checkpoints(work)[-1])

    run_ci(project, "results/adapters/pt")
    adapter = project / "results" / "adapters" / "pt"
    assert train_info(adapter)["resumed_from_step"] == last
    diff = max_abs_diff(load_tensors(demo_run / "results" / "adapters" / "pt" / "model.safetensors"),
                        load_tensors(adapter / "model.safetensors"))
    print(f"first run resumed from step {last}; max |weights - uninterrupted weights| = {diff:.3g}")
    assert diff <= RESUME_TOLERANCE
    tokenized = next((project / "results" / "tokenized" / "demo_text").glob("pt-*"))
    written = json.loads((tokenized / "files.json").read_text())["files"]
    assert files_under(tokenized) == sorted([*written, "files.json", ".snakemake_timestamp"]), \
        "training wrote into the tokenize rule's output"


def test_a_damaged_checkpoint_is_not_resumed_the_previous_intact_one_is(demo_run, tmp_path):
    project = copy_project(demo_run, tmp_path / "project")
    shutil.rmtree(project / "results" / "adapters" / "dpo")
    work = project / "results" / "work" / "dpo"
    proc = start(project, "results/adapters/dpo")
    wait_for(lambda: complete_checkpoints(work), what="the first checkpoint", proc=proc)
    os.kill(wait_for(lambda: torchrun_pid("dpo", project), timeout=30, what="torchrun"), signal.SIGTERM)
    assert proc.wait(timeout=300) != 0  # preempted: a second checkpoint saved, no retry here
    *_, previous, newest = complete_checkpoints(work)
    weights = newest / "adapter_model.safetensors"
    size = weights.stat().st_size
    weights.write_bytes(weights.read_bytes()[: size // 2])  # a truncated copy, say

    run_ci(project, "results/adapters/dpo")
    log = (project / "logs" / "train_dpo.log").read_text()
    assert (f"checkpoint {newest.relative_to(project)} is damaged (adapter_model.safetensors has {size // 2} bytes, "
            f"{size} when it was saved): removing it") in log, log[-4000:]
    assert f"falling back to the previous complete checkpoint {previous.relative_to(project)}, which is intact" in log
    adapter = project / "results" / "adapters" / "dpo"
    assert train_info(adapter)["resumed_from_step"] == step(previous)
    reference = load_tensors(demo_run / "results" / "adapters" / "dpo" / "adapter_model.safetensors")
    assert max_abs_diff(reference, load_tensors(adapter / "adapter_model.safetensors")) <= RESUME_TOLERANCE


def test_a_file_deleted_from_a_tokenized_output_is_named_with_the_rule_to_force(demo_run, tmp_path):
    """Snakemake does not see it ("Nothing to be done"); the next training used to crash with a
    FileNotFoundError. The job reading the directory checks it against its manifest."""
    project = copy_project(demo_run, tmp_path / "project")
    shutil.rmtree(project / "results" / "adapters" / "pt")
    tokenized = next((project / "results" / "tokenized" / "demo_text").glob("pt-*"))
    arrow = next((tokenized / "train").glob("*.arrow"))
    arrow.unlink()
    proc = run_ci(project, "results/adapters/pt", check=False)
    assert proc.returncode != 0
    log = (project / "logs" / "train_pt.log").read_text()
    rel = tokenized.relative_to(project)
    assert (f"tuneflow: error: {rel}/train/{arrow.name}: is missing: {rel} was damaged after the `tokenize` job wrote "
            f"it; rebuild it: snakemake --forcerun {rel} <your targets> (or -R tokenize to rerun every tokenize job)") in log, log[-3000:]
    assert "FileNotFoundError" not in log
    planned = run_ci(project, "results/adapters/pt", options=("-n", "--forcerun", rel)).stdout
    assert re.search(rf"rule tokenize:\n\s+input: [^\n]*\n\s+output: {re.escape(str(rel))}", planned), planned[-3000:]


@pytest.mark.parametrize("training, error", [
    ({}, r"training diverged: the gradients were not finite \(the optimizer skipped the step\) at step \d+ \(1 consecutive "
         r"non-finite step; stages\.pt\.training\.max_nonfinite_steps allows 0\); nothing was written"),
    ({"deepspeed": None}, r"training diverged: the loss was NaN at step \d+ \(1 consecutive non-finite step"),
    ({"deepspeed": None, "training": {"max_nonfinite_steps": 1000, "max_steps": 6}},
     r"the trained weights hold non-finite values \(NaN / inf\) in \d+ tensors, e\.g\. model\.\S+: the training "
     r"diverged, so they were not written"),
], ids=["zero2-skipped-steps", "ddp-nan-loss", "tolerated-steps-nan-weights"])
def test_a_diverged_run_fails_naming_the_step_and_writes_nothing(demo_run, tmp_path, training, error):
    """learning_rate 1e6: the job used to exit 0 with loss 0.0 in the loss log and NaN weights."""
    project = copy_project(demo_run, tmp_path / "project")
    shutil.rmtree(project / "results" / "adapters" / "pt")
    pt = {**training, "training": {"learning_rate": 1.0e6, **training.get("training", {})}}
    overlay = project / "diverge.yaml"
    overlay.write_text(yaml.safe_dump({"stages": {"pt": pt}}))
    proc = run_ci(project, "results/adapters/pt", configs=[overlay], check=False)
    assert proc.returncode != 0
    log = (project / "logs" / "train_pt.log").read_text()
    assert re.search("tuneflow: error: " + error, log), log[-4000:]
    assert not (project / "results" / "adapters" / "pt").exists()


def test_disk_full_while_merging_is_an_error_that_leaves_nothing(demo_run, tmp_path):
    project = copy_project(demo_run, tmp_path / "project")
    merged = project / "results" / "merged"
    saved = project / "merged-before"
    shutil.move(merged, saved)
    _mount_tmpfs(merged, size="16m")
    try:
        subprocess.run(["cp", "-a", f"{saved}/pt", f"{saved}/dpo", str(merged)], check=True)
        _fill(merged)
        proc = run_ci(project, "results/merged/sft", check=False)
        assert proc.returncode != 0
        log = (project / "logs" / "merge_sft.log").read_text()
        assert ("tuneflow: error: writing the merged model to results/merged/sft failed: No space left on device "
                "(errno 28); nothing was left there") in log, log[-3000:]
        assert "Traceback" not in log
        assert sorted(p.name for p in merged.iterdir()) == ["dpo", "filler", "pt"]
    finally:
        subprocess.run(["umount", "-l", str(merged)], capture_output=True)


def test_every_output_file_follows_the_umask(demo_run):
    """safetensors writes 0600; every output, weights included, gets the mode the umask gives."""
    mask = os.umask(0)
    os.umask(mask)
    results = demo_run / "results"
    modes = {str(p.relative_to(results)): oct(p.stat().st_mode & 0o777) for p in results.rglob("*") if p.is_file()}
    assert any(name.endswith(".safetensors") for name in modes)
    assert {m for m in modes.values()} == {oct(0o666 & ~mask)}, {k: v for k, v in modes.items() if v != oct(0o666 & ~mask)}
