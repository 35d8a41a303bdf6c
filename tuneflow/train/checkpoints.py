"""Checkpoints of a training job: where they live, which one to resume from, marking one complete,
stopping cleanly on preemption, and turning a failed write into a clear error.

Layout of one stage run:
  results/work/<prefix><stage>/          checkpoints (kept across failed jobs; Snakemake would
      settings.json                       delete a failed job's declared outputs, so they live
      checkpoint-N/ (+ .complete marker)  here) -- removed once the outputs are complete
  results/adapters/<prefix><stage>/      the declared output (tuneflow.train.outputs)
"""

from __future__ import annotations

import json
import shutil
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tuneflow import distributed
from tuneflow.distributed import barrier, is_main, log
from tuneflow.errors import TuneflowError
from tuneflow.io import storage_error

COMPLETE_MARKER = ".complete"
PREEMPTED_EXIT_CODE = 143  # 128 + SIGTERM: "stopped by a signal, checkpoint saved; rerun to resume"


def inputs_fingerprint(paths) -> list:
    """(path, size, mtime) of every file under the stage's inputs (tokenized data, base model).
    Snakemake rewrites an input only when what it depends on changed, so a changed stamp means the
    checkpoints were trained on something else; hashing gigabytes of weights at start-up is avoided."""
    stamps = []
    for root in map(Path, paths):
        files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
        for f in files:
            st = f.stat()
            stamps.append([str(f), st.st_size, st.st_mtime_ns])
    return stamps


def prepare_work_dir(work_dir, settings: dict, inputs) -> str | None:
    """Return the checkpoint to resume from, or None. Checkpoints written with other settings or
    other inputs (`inputs`: the data and base model paths) are discarded."""
    work = Path(work_dir)
    fingerprint = json.dumps({"settings": settings, "inputs": inputs_fingerprint(inputs)}, sort_keys=True)
    stamp = work / "settings.json"
    if is_main():
        if stamp.exists() and stamp.read_text() != fingerprint:
            log(f"settings or inputs changed since the checkpoints in {work} were written: starting over")
            shutil.rmtree(work)
        work.mkdir(parents=True, exist_ok=True)
        stamp.write_text(fingerprint)
        for ckpt in work.glob("checkpoint-*"):
            if not (ckpt / COMPLETE_MARKER).exists():
                log(f"removing incomplete checkpoint {ckpt} (the job stopped while saving it)")
                shutil.rmtree(ckpt, ignore_errors=True)
    barrier()
    done = [c for c in work.glob("checkpoint-*") if (c / COMPLETE_MARKER).exists()]
    if not done:
        return None
    return str(max(done, key=lambda c: int(c.name.split("-")[-1])))


def _callback_classes():
    from transformers import TrainerCallback

    class CheckpointCompleteCallback(TrainerCallback):
        """Marks a checkpoint complete once every rank has written its part."""

        def on_save(self, args, state, control, **kwargs):
            barrier()
            ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if is_main() and ckpt.is_dir():
                (ckpt / COMPLETE_MARKER).write_text(str(time.time()))
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

    @property
    def resumed_step(self) -> int | None:
        return int(Path(self.resume_from).name.split("-")[-1]) if self.resume_from else None


def prepare(run, training_args) -> Checkpointing:
    """Join the process group (as the trainer's arguments say), then pick the checkpoint of the
    same settings and inputs to resume from. `run`: tuneflow.train.setup.StageRun."""
    distributed.start_for_trainer(training_args)
    resume_from = prepare_work_dir(run.args.work_dir, run.settings, run.inputs)
    complete_cls, preemption_cls = _callback_classes()
    preemption = preemption_cls()
    return Checkpointing(str(run.args.work_dir), resume_from, [complete_cls(), preemption], preemption)


def resume_note(work_dir) -> str:
    done = sorted((c for c in Path(work_dir).glob("checkpoint-*") if (c / COMPLETE_MARKER).exists()),
                  key=lambda c: int(c.name.split("-")[-1]))
    return f"the last complete checkpoint {done[-1]} is intact and a rerun resumes from it" if done else \
        "no complete checkpoint exists yet"


def train(trainer, ckpt: Checkpointing):
    """Run trainer.train(), turning a failed write into a clear error; exit 143 when preempted."""
    if ckpt.resume_from:
        log(f"resuming from {ckpt.resume_from}")
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
