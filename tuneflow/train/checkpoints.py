"""Checkpoints of a training job: where they live, which one to resume from, marking one complete,
verifying it before resuming, stopping cleanly on preemption, and turning a failed write into a
clear error.

Layout of one stage run:
  results/work/<prefix><stage>/          checkpoints (kept across failed jobs; Snakemake would
      settings.json                       delete a failed job's declared outputs, so they live
      checkpoint-N/ (+ .complete marker)  here) -- removed once the outputs are complete
      datasets-tmp/                       the trainer's dataset transforms (never next to the data)
  results/adapters/<prefix><stage>/      the declared output (tuneflow.train.outputs)
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tuneflow import distributed
from tuneflow.distributed import barrier, is_main, log
from tuneflow.errors import TuneflowError
from tuneflow.io import DIR_MANIFEST, file_digests, read_json, sha256_file, storage_error

COMPLETE_MARKER = ".complete"
PREEMPTED_EXIT_CODE = 143  # 128 + SIGTERM: "stopped by a signal, checkpoint saved; rerun to resume"
TRANSFORMS_DIR = "datasets-tmp"


def inputs_fingerprint(paths) -> list:
    """What the checkpoints were trained from: for a directory output of the workflow (tokenized
    data, a merged or the embedded base model) the files its manifest lists with their sha256, i.e.
    exactly what the job read, whatever else was put there since; for another directory (a model of
    the user's) the path, size and mtime of its files, hidden ones aside."""
    stamps = []
    for root in map(Path, paths):
        manifest = root / DIR_MANIFEST
        if root.is_dir() and manifest.is_file():
            stamps.append([str(root), read_json(manifest)["files"]])
            continue
        files = sorted(p for p in root.rglob("*") if p.is_file() and not any(
            part.startswith(".") for part in p.relative_to(root).parts)) if root.is_dir() else [root]
        for f in files:
            st = f.stat()
            stamps.append([str(f), st.st_size, st.st_mtime_ns])
    return stamps


def step_of(ckpt: Path) -> int:
    return int(ckpt.name.split("-")[-1])


def mark_complete(ckpt: Path):
    """Written once every rank has written its part: the size and sha256 of each file."""
    marker = {"completed": time.time(), "files": file_digests(ckpt, exclude=(COMPLETE_MARKER,))}
    tmp = ckpt / f"{COMPLETE_MARKER}.tmp"
    tmp.write_text(json.dumps(marker, indent=1))
    os.replace(tmp, ckpt / COMPLETE_MARKER)


def checkpoint_damage(ckpt: Path) -> str | None:
    """Why a complete checkpoint cannot be resumed from (a file missing, truncated or overwritten
    since it was marked complete), or None when every file is as it was written."""
    try:
        files = json.loads((ckpt / COMPLETE_MARKER).read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return f"its {COMPLETE_MARKER} marker does not list the checkpoint's files (written by an older tuneflow?)"
    for rel, want in files.items():
        f = ckpt / rel
        if not f.is_file():
            return f"{rel} is missing"
        if f.stat().st_size != want["bytes"]:
            return f"{rel} has {f.stat().st_size} bytes, {want['bytes']} when it was saved"
        if sha256_file(f) != want["sha256"]:
            return f"{rel} changed since it was saved (sha256 differs)"
    return None


def prepare_work_dir(work_dir, settings: dict, inputs) -> str | None:
    """Return the checkpoint to resume from, or None. Checkpoints written with other settings or
    other inputs (`inputs`: the data and base model paths) are discarded; so is a complete
    checkpoint whose files were damaged since, in favour of the previous intact one."""
    work = Path(work_dir)
    fingerprint = json.dumps({"settings": settings, "inputs": inputs_fingerprint(inputs)}, sort_keys=True)
    stamp = work / "settings.json"
    if is_main():
        if stamp.exists() and stamp.read_text() != fingerprint:
            log(f"settings or inputs changed since the checkpoints in {work} were written: starting over")
            shutil.rmtree(work)
        work.mkdir(parents=True, exist_ok=True)
        stamp.write_text(fingerprint)
        shutil.rmtree(work / TRANSFORMS_DIR, ignore_errors=True)  # a killed job's leftovers
        for ckpt in work.glob("checkpoint-*"):
            if not (ckpt / COMPLETE_MARKER).exists():
                log(f"removing incomplete checkpoint {ckpt} (the job stopped while saving it)")
                shutil.rmtree(ckpt, ignore_errors=True)
        damaged = False
        for ckpt in sorted(work.glob("checkpoint-*"), key=step_of, reverse=True):
            why = checkpoint_damage(ckpt)
            if why is None:
                if damaged:
                    log(f"falling back to the previous complete checkpoint {ckpt}, which is intact")
                break
            log(f"checkpoint {ckpt} is damaged ({why}): removing it")
            shutil.rmtree(ckpt, ignore_errors=True)
            damaged = True
        else:
            if damaged:
                log(f"no intact checkpoint is left in {work}: starting over")
    barrier()
    done = [c for c in work.glob("checkpoint-*") if (c / COMPLETE_MARKER).exists()]
    if not done:
        return None
    return str(max(done, key=step_of))


def keep_transforms_in_work_dir(work_dir):
    """The trainer's dataset transforms (TRL's .map) would write cache-*.arrow files beside the
    tokenized data, into another rule's output, where they changed what the next attempt saw.
    Caching off: transforms go to a temporary directory, here placed in this job's work dir (on
    the results file system, removed with it; /tmp may be small on a cluster node)."""
    from datasets import disable_caching

    disable_caching()
    tmp = Path(work_dir) / TRANSFORMS_DIR / f"rank{distributed.rank()}"
    tmp.mkdir(parents=True, exist_ok=True)
    os.environ["TMPDIR"] = str(tmp.resolve())


def _callback_classes():
    from transformers import TrainerCallback

    class CheckpointCompleteCallback(TrainerCallback):
        """Marks a checkpoint complete once every rank has written its part."""

        def on_save(self, args, state, control, **kwargs):
            barrier()
            ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if is_main() and ckpt.is_dir():
                mark_complete(ckpt)
            barrier()

    class PreemptionCallback(TrainerCallback):
        """SIGTERM / SIGUSR1 (Slurm preemption or time limit): save a checkpoint at the end of the
        current step on every rank, stop, and exit non-zero so the job is retried and resumes."""

        def __init__(self):
            self.requested = False
            self.stopped = False
            for sig in (signal.SIGTERM, signal.SIGUSR1):
                signal.signal(sig, self._handler)

        def _handler(self, signum, frame):
            self.requested = True

        def on_step_end(self, args, state, control, **kwargs):
            import torch
            import torch.distributed as dist

            flag = self.requested
            if distributed.initialized():
                t = torch.tensor([1.0 if flag else 0.0], device=args.device)
                dist.all_reduce(t, op=dist.ReduceOp.MAX)  # every rank stops at the same step
                flag = bool(t.item())
            if flag:
                log(f"stop signal received: saving a checkpoint at step {state.global_step} and exiting")
                self.stopped = True
                control.should_save = True
                control.should_training_stop = True
            return control

    return CheckpointCompleteCallback, PreemptionCallback


@dataclass
class Checkpointing:
    """Where a job's checkpoints live, the one it resumes from, and the callbacks its trainer takes."""
    work_dir: str
    resume_from: str | None
    callbacks: list
    preemption: object  # the PreemptionCallback among `callbacks`
    divergence: object  # the divergence guard among `callbacks` (stops a run whose loss is NaN / inf)

    @property
    def resumed_step(self) -> int | None:
        return step_of(Path(self.resume_from)) if self.resume_from else None


def prepare(run, training_args) -> Checkpointing:
    """Join the process group (as the trainer's arguments say), then pick the checkpoint of the
    same settings and inputs to resume from. `run`: tuneflow.train.setup.StageRun."""
    from tuneflow.train.divergence import nonfinite_loss_guard

    distributed.start_for_trainer(training_args)
    resume_from = prepare_work_dir(run.args.work_dir, run.settings, run.inputs)
    keep_transforms_in_work_dir(run.args.work_dir)
    complete_cls, preemption_cls = _callback_classes()
    preemption = preemption_cls()
    guard = nonfinite_loss_guard(run.settings["training"]["max_nonfinite_steps"], f"stages.{run.stage}.training")
    return Checkpointing(str(run.args.work_dir), resume_from, [complete_cls(), preemption, guard], preemption, guard)


def resume_note(work_dir) -> str:
    done = sorted((c for c in Path(work_dir).glob("checkpoint-*") if (c / COMPLETE_MARKER).exists()), key=step_of)
    return f"the last complete checkpoint {done[-1]} is intact and a rerun resumes from it" if done else \
        "no complete checkpoint exists yet"


def train(trainer, ckpt: Checkpointing):
    """Run trainer.train(), turning a failed write into a clear error; exit 143 when preempted."""
    if ckpt.resume_from:
        log(f"resuming from {ckpt.resume_from}")
    ckpt.divergence.watch(trainer)
    try:
        result = trainer.train(resume_from_checkpoint=ckpt.resume_from)
    except Exception as e:
        failure = storage_error(e)
        if failure is None:
            raise
        code, what = failure
        raise TuneflowError(f"saving a checkpoint in {ckpt.work_dir} failed: {what} (errno {code}); "
                            f"{resume_note(ckpt.work_dir)}") from None
    if ckpt.preemption.stopped:
        log("checkpoint saved after a stop signal; exiting so the job can be retried")
        sys.exit(PREEMPTED_EXIT_CODE)
    return result
