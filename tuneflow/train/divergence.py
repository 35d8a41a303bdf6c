"""A diverged run must fail, not be written out as a success. A step is non-finite when its training
loss is NaN / inf, or when the optimizer skipped it because its gradients were not finite
(DeepSpeed skips such steps; the loss then stays finite while the model goes nowhere) without
fp16 loss scaling to explain it (fp16 skips overflowing steps by design and lowers the scale).
Once more consecutive steps than the stage's `training.max_nonfinite_steps` have been non-finite
the job stops with an error naming the steps; non-finite trained weights are never written.
Which steps were non-finite is kept in the trainer's log history (so it survives a resume) for
the loss log (tuneflow.train.outputs.loss_log_rows)."""

from __future__ import annotations

import math

from tuneflow import distributed
from tuneflow.errors import TuneflowError

NONFINITE_KEY = "nonfinite"  # a log-history entry {"step": N, "nonfinite": "loss nan" | "loss inf" | "gradients"}


def _any_rank(flag: bool, device) -> bool:
    """True on every rank when `flag` is true on one (so that all ranks stop at the same step)."""
    if not distributed.initialized():
        return flag
    import torch
    import torch.distributed as dist

    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def nonfinite_loss_guard(tolerance: int, key: str):
    """The TrainerCallback that stops a diverged run (transformers is imported only here)."""
    from transformers import TrainerCallback

    class NonFiniteLossGuard(TrainerCallback):
        """Sees the loss of every micro-batch (watch() wraps the trainer's training_step: callbacks
        are not given the loss, and the trainer logs the average of the finite ones in place of a
        NaN) and whether the optimizer skipped the step; counts consecutive non-finite steps."""

        def __init__(self):
            self.trainer = None
            self.bad = None  # what was not finite since the last optimizer step
            self.run: list[int] = []  # the current streak of non-finite steps

        def watch(self, trainer):
            self.trainer = trainer
            original = trainer.training_step

            def training_step(*args, **kwargs):
                loss = original(*args, **kwargs)
                value = float(loss.detach().float().sum())
                if not math.isfinite(value):
                    self.bad = "loss nan" if math.isnan(value) else "loss inf"
                return loss

            trainer.training_step = training_step

        def _skipped_without_loss_scaling(self, args) -> bool:
            if self.trainer is None or args.fp16:
                return False
            return bool(self.trainer.accelerator.optimizer_step_was_skipped)

        def on_step_end(self, args, state, control, **kwargs):
            bad = self.bad or ("gradients" if self._skipped_without_loss_scaling(args) else None)
            self.bad = None
            if not _any_rank(bad is not None, args.device):
                self.run = []
                return control
            bad = bad or "gradients"  # another rank saw it
            what = {"loss nan": "the loss was NaN", "loss inf": "the loss was infinite",
                    "gradients": "the gradients were not finite (the optimizer skipped the step)"}[bad]
            step = state.global_step
            self.run.append(step)
            state.log_history.append({"step": step, NONFINITE_KEY: bad})
            if len(self.run) > tolerance:
                steps = f"step {step}" if len(self.run) == 1 else f"steps {self.run[0]}-{step}"
                raise TuneflowError(
                    f"training diverged: {what} at {steps} ({len(self.run)} consecutive non-finite step{'s' if len(self.run) > 1 else ''}; "
                    f"{key}.max_nonfinite_steps allows {tolerance}); nothing was written. Lower {key}.learning_rate, "
                    "check max_grad_norm and precision, or look for bad samples in the data")
            distributed.log(f"non-finite step {step}: {what} ({len(self.run)} consecutive, "
                            f"{key}.max_nonfinite_steps: {tolerance})")
            return control

    return NonFiniteLossGuard()


def check_finite_weights(model, device, what: str):
    """Refuse weights holding NaN or inf (every rank checks its own: ZeRO-3 partitions them)."""
    import torch

    bad = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        data = getattr(p, "ds_tensor", p.data)  # ZeRO-3: this rank's partition
        if data.numel() and not torch.isfinite(data).all():
            bad.append(name)
    if _any_rank(bool(bad), device):
        example = f", e.g. {bad[0]}" if bad else ""
        raise TuneflowError(f"{what} hold non-finite values (NaN / inf) in {len(bad) or 'some'} tensors{example}: the "
                            "training diverged, so they were not written; lower the learning rate and rerun")
