"""Which checkpoint a stage resumes from (tuneflow.train.checkpoints.prepare_work_dir): only a complete
one whose files are as they were saved, written with the same settings from the same inputs
(tokenized data, base model)."""

from __future__ import annotations

import os

import pytest

from tuneflow.train.checkpoints import COMPLETE_MARKER, mark_complete, prepare_work_dir


def checkpoint(work, step, complete=True):
    ckpt = work / f"checkpoint-{step}"
    ckpt.mkdir(parents=True)
    (ckpt / "adapter_model.safetensors").write_bytes(b"x")
    if complete:
        mark_complete(ckpt)
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


def damage_truncate(ckpt):
    f = ckpt / "adapter_model.safetensors"
    f.write_bytes(f.read_bytes()[:-1])


def damage_overwrite(ckpt):
    """Same size, other bytes: only the hash tells."""
    (ckpt / "adapter_model.safetensors").write_bytes(b"y" * len((ckpt / "adapter_model.safetensors").read_bytes()))


def damage_delete(ckpt):
    (ckpt / "adapter_model.safetensors").unlink()


def big_checkpoint(work, step):
    ckpt = work / f"checkpoint-{step}"
    ckpt.mkdir(parents=True)
    (ckpt / "adapter_model.safetensors").write_bytes(os.urandom(4096))
    (ckpt / "optimizer.pt").write_bytes(os.urandom(1024))
    mark_complete(ckpt)
    return ckpt


@pytest.mark.fault
@pytest.mark.parametrize("damage, why", [
    (damage_truncate, "adapter_model.safetensors has 4095 bytes, 4096 when it was saved"),
    (damage_overwrite, "adapter_model.safetensors changed since it was saved (sha256 differs)"),
    (damage_delete, "adapter_model.safetensors is missing"),
], ids=["truncated", "overwritten-same-size", "deleted"])
def test_a_damaged_checkpoint_is_removed_and_the_previous_intact_one_resumed(tmp_path, capsys, damage, why):
    data, model, work = setup(tmp_path)
    prepare_work_dir(work, {"lr": 1}, [data, model])
    big_checkpoint(work, 5)
    last = big_checkpoint(work, 10)
    damage(last)
    assert prepare_work_dir(work, {"lr": 1}, [data, model]) == str(work / "checkpoint-5")
    assert not last.exists()
    err = capsys.readouterr().err
    assert f"checkpoint {last} is damaged ({why}): removing it" in err
    assert f"falling back to the previous complete checkpoint {work / 'checkpoint-5'}, which is intact" in err


@pytest.mark.fault
def test_no_intact_checkpoint_starts_over_saying_so(tmp_path, capsys):
    data, model, work = setup(tmp_path)
    prepare_work_dir(work, {"lr": 1}, [data, model])
    damage_overwrite(big_checkpoint(work, 5))
    old = big_checkpoint(work, 10)
    (old / COMPLETE_MARKER).write_text("1")  # a marker that lists no files is not trusted either
    assert prepare_work_dir(work, {"lr": 1}, [data, model]) is None
    err = capsys.readouterr().err
    assert "its .complete marker does not list the checkpoint's files" in err
    assert f"no intact checkpoint is left in {work}: starting over" in err


def test_files_added_next_to_a_workflow_output_do_not_discard_the_checkpoints(tmp_path):
    """The fingerprint of an input with a manifest is what the manifest lists (what training read):
    a cache file written beside the tokenized data, as TRL's .map did, changes nothing."""
    from tuneflow.io import write_dir_manifest

    data, model, work = setup(tmp_path)
    write_dir_manifest(data, "tokenize")
    prepare_work_dir(work, {"lr": 1}, [data, model])
    big_checkpoint(work, 5)
    (data / "train" / "cache-0123.arrow").write_bytes(b"cache")
    assert prepare_work_dir(work, {"lr": 1}, [data, model]) == str(work / "checkpoint-5")
    (data / "train" / "data.arrow").write_bytes(b"other tokens")  # the rule rebuilt it with other content
    write_dir_manifest(data, "tokenize")
    assert prepare_work_dir(work, {"lr": 1}, [data, model]) is None
