"""Which checkpoint a stage resumes from (tuneflow.train.checkpoints.prepare_work_dir): only a complete
one, written with the same settings from the same inputs (tokenized data, base model)."""

from __future__ import annotations

import os

from tuneflow.train.checkpoints import COMPLETE_MARKER, prepare_work_dir


def checkpoint(work, step, complete=True):
    ckpt = work / f"checkpoint-{step}"
    ckpt.mkdir(parents=True)
    (ckpt / "adapter_model.safetensors").write_bytes(b"x")
    if complete:
        (ckpt / COMPLETE_MARKER).write_text("1")
    return ckpt


def setup(tmp_path):
    data, model, work = tmp_path / "tokenized", tmp_path / "model", tmp_path / "work"
    (data / "train").mkdir(parents=True)
    (data / "train" / "data.arrow").write_bytes(b"tokens")
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"weights")
    return data, model, work


def test_resumes_from_the_last_complete_checkpoint(tmp_path):
    data, model, work = setup(tmp_path)
    assert prepare_work_dir(work, {"lr": 1}, [data, model]) is None
    checkpoint(work, 5)
    checkpoint(work, 10)
    partial = checkpoint(work, 15, complete=False)  # the job died while saving it
    assert prepare_work_dir(work, {"lr": 1}, [data, model]) == str(work / "checkpoint-10")
    assert not partial.exists()


def test_other_settings_start_over(tmp_path):
    data, model, work = setup(tmp_path)
    prepare_work_dir(work, {"lr": 1}, [data, model])
    checkpoint(work, 5)
    assert prepare_work_dir(work, {"lr": 2}, [data, model]) is None
    assert not (work / "checkpoint-5").exists()


def test_rebuilt_data_or_base_model_start_over(tmp_path):
    """A failed SFT job, then PT or the data changed: the old checkpoints were trained on something else."""
    data, model, work = setup(tmp_path)
    for changed in (data / "train" / "data.arrow", model / "model.safetensors"):
        prepare_work_dir(work, {"lr": 1}, [data, model])
        checkpoint(work, 5)
        assert prepare_work_dir(work, {"lr": 1}, [data, model]) == str(work / "checkpoint-5")  # control
        st = changed.stat()
        os.utime(changed, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # rewritten by its rule
        assert prepare_work_dir(work, {"lr": 1}, [data, model]) is None
        assert not (work / "checkpoint-5").exists()
