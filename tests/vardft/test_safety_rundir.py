"""Run directories are only ever vardft runs, one process at a time; damaged files are never used.

Issue 15: a folder that is not a run is refused (not overwritten), resume checks the
kind and the settings, a torn log line is dropped with a warning, a lock keeps a second
process out (and dies with its holder), and flipped bytes in a checkpoint or a cached
integral file are detected.
"""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from basis.errors import CheckpointError
from vardft import checkpoint as ckpt
from vardft.rundir import (
    LOCK_FILE,
    MARKER_FILE,
    check_resume,
    claim_run_directory,
    read_marker,
    run_containing,
    run_kind,
)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

STATE = {"params": {"w": np.arange(64, dtype=np.float64)}, "step": 7}


def _touch(path, text="x"):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def _legacy_run(path, kind=None):
    os.makedirs(path)
    config = {"format_version": 1, "xc": "pbe"}
    if kind:
        config["kind"] = kind
    _touch(os.path.join(path, ckpt.CONFIG_FILE), json.dumps(config))
    ckpt.atomic_write_bytes(os.path.join(path, ckpt.CHECKPOINT_FILE), b"\x80")


# ------------------------------------------------------------------ new runs
def test_new_run_creates_directory_and_marker(tmp_path):
    run = str(tmp_path / "run")
    with claim_run_directory(run, "molecule", resume=False):
        assert read_marker(run)["kind"] == "molecule"
    assert run_kind(run) == "molecule"


def test_new_run_in_empty_directory(tmp_path):
    with claim_run_directory(str(tmp_path), "crystal", resume=False):
        pass
    assert run_kind(str(tmp_path)) == "crystal"


def test_new_run_refuses_a_users_folder_and_touches_nothing(tmp_path):
    _touch(str(tmp_path / "config.json"), "{\"mine\": 1}")
    _touch(str(tmp_path / "src" / "main.py"))
    before = sorted(os.listdir(tmp_path))
    with pytest.raises(CheckpointError, match=r"holds config\.json that vardft did not write"):
        with claim_run_directory(str(tmp_path), "molecule", resume=False):
            pytest.fail("claimed a user's folder")
    assert sorted(os.listdir(tmp_path)) == before
    assert (tmp_path / "config.json").read_text() == "{\"mine\": 1}"


def test_new_run_refuses_any_file(tmp_path):
    _touch(str(tmp_path / "notes.txt"))
    with pytest.raises(CheckpointError, match=r"notes\.txt"):
        with claim_run_directory(str(tmp_path), "molecule", resume=False):
            pass


def test_new_run_refuses_a_file_path(tmp_path):
    _touch(str(tmp_path / "f"))
    with pytest.raises(CheckpointError, match="is a file"):
        with claim_run_directory(str(tmp_path / "f"), "molecule", resume=False):
            pass


def test_new_run_refuses_an_existing_run(tmp_path):
    run = str(tmp_path / "run")
    with claim_run_directory(run, "molecule", resume=False):
        pass
    with pytest.raises(CheckpointError, match="already holds a vardft molecule run; pass --resume"):
        with claim_run_directory(run, "molecule", resume=False):
            pass


def test_replace_removes_only_vardfts_files_of_its_own_runs(tmp_path):
    run = str(tmp_path / "demo")
    with claim_run_directory(run, "molecule", resume=False, created_by="demo", replace=True):
        for name in (ckpt.CONFIG_FILE, ckpt.LOG_FILE, ckpt.VALIDATION_FILE):
            _touch(os.path.join(run, name))
        ckpt.save_checkpoint(run, STATE)
    with claim_run_directory(run, "molecule", resume=False, created_by="demo", replace=True):
        assert sorted(os.listdir(run)) == sorted([LOCK_FILE, MARKER_FILE])
    _touch(os.path.join(run, "results.csv"))
    with pytest.raises(CheckpointError, match=r"results\.csv that vardft did not write"):
        with claim_run_directory(run, "molecule", resume=False, created_by="demo", replace=True):
            pass
    assert os.path.exists(os.path.join(run, "results.csv"))


def test_replace_never_touches_a_run_made_by_train(tmp_path):
    run = str(tmp_path / "run")
    with claim_run_directory(run, "molecule", resume=False):
        ckpt.save_checkpoint(run, STATE)
    with pytest.raises(CheckpointError, match="already holds"):
        with claim_run_directory(run, "molecule", resume=False, created_by="demo", replace=True):
            pass
    assert ckpt.has_checkpoint(run)


# -------------------------------------------------------------------- resume
def test_resume_needs_a_run(tmp_path):
    with pytest.raises(CheckpointError, match="no such directory"):
        with claim_run_directory(str(tmp_path / "absent"), "molecule", resume=True):
            pass
    _touch(str(tmp_path / "config.json"), "{}")
    with pytest.raises(CheckpointError, match="not a vardft run"):
        with claim_run_directory(str(tmp_path), "molecule", resume=True):
            pass


def test_resume_refuses_the_other_kind(tmp_path):
    run = str(tmp_path / "run")
    with claim_run_directory(run, "crystal", resume=False):
        pass
    with pytest.raises(CheckpointError, match="holds a vardft crystal run, not a molecule run"):
        with claim_run_directory(run, "molecule", resume=True):
            pass


@pytest.mark.parametrize("kind", ["molecule", "crystal"])
def test_legacy_runs_count_as_runs_of_their_kind(tmp_path, kind):
    run = str(tmp_path / "old")
    _legacy_run(run, "crystal" if kind == "crystal" else None)
    assert run_kind(run) == kind
    other = "molecule" if kind == "crystal" else "crystal"
    with pytest.raises(CheckpointError, match=f"not a {other} run"):
        with claim_run_directory(run, other, resume=True):
            pass
    with claim_run_directory(run, kind, resume=True):
        pass
    assert read_marker(run)["kind"] == kind


def test_run_kind_of_a_non_run(tmp_path):
    with pytest.raises(CheckpointError, match="not a vardft run directory"):
        run_kind(str(tmp_path))
    with pytest.raises(CheckpointError, match="no such run directory"):
        run_kind(str(tmp_path / "absent"))


def test_run_containing(tmp_path):
    run = str(tmp_path / "run")
    with claim_run_directory(run, "molecule", resume=False):
        pass
    assert run_containing(os.path.join(run, "pred.h5")) == os.path.abspath(run)
    assert run_containing(str(tmp_path / "elsewhere.h5")) is None


def test_check_resume_lists_every_difference():
    saved = {"basis": "def2-svp", "xc": "pbe", "model": {"elements": ["H", "O"]}, "dataset": "water"}
    requested = {"basis": "def2-tzvp", "xc": "b3lyp", "model": {"elements": ("H", "N")}, "dataset": "water"}
    with pytest.raises(CheckpointError) as err:
        check_resume(saved, requested, ["basis", "xc", "model.elements", "dataset"], run_dir="RUN")
    message = str(err.value)
    assert "\n" not in message
    assert "basis def2-svp, not def2-tzvp" in message and "xc pbe, not b3lyp" in message
    assert 'model.elements ["H", "O"], not ["H", "N"]' in message and "dataset" not in message
    check_resume(saved, dict(saved, model={"elements": ("H", "O")}), ["basis", "model.elements", "absent"])


# --------------------------------------------------------------------- locks
_HOLDER = textwrap.dedent(
    """
    import sys, time
    from vardft.rundir import claim_run_directory
    with claim_run_directory(sys.argv[1], "molecule", resume=False):
        print("held", flush=True)
        time.sleep(120)
    """
)


def test_second_process_is_refused_and_the_lock_dies_with_its_holder(tmp_path):
    run = str(tmp_path / "run")
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, run], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(CheckpointError, match=rf"in use by another vardft process \(pid {holder.pid}\)"):
            with claim_run_directory(run, "molecule", resume=True):
                pass
    finally:
        holder.kill()
        holder.wait()
    assert os.path.exists(os.path.join(run, LOCK_FILE))  # left behind by the killed process
    with claim_run_directory(run, "molecule", resume=True):
        pass


def test_stale_lock_file_does_not_block(tmp_path):
    run = str(tmp_path / "run")
    with claim_run_directory(run, "molecule", resume=False):
        pass
    _touch(os.path.join(run, LOCK_FILE), "999999999\n")
    with claim_run_directory(run, "molecule", resume=True):
        assert open(os.path.join(run, LOCK_FILE)).read().strip() == str(os.getpid())


def test_nested_claim_in_one_process(tmp_path):
    run = str(tmp_path / "run")
    with claim_run_directory(run, "molecule", resume=False, created_by="demo", replace=True):
        with claim_run_directory(run, "molecule", resume=False):
            pass
        with pytest.raises(CheckpointError, match="not a crystal run"):
            with claim_run_directory(run, "crystal", resume=False):
                pass


# ----------------------------------------------------------------------- log
def test_torn_last_log_line_is_dropped_with_a_warning(tmp_path):
    run = str(tmp_path)
    for step in (1, 2):
        ckpt.append_log(run, {"step": step, "loss": 0.5})
    with open(os.path.join(run, ckpt.LOG_FILE), "a") as f:
        f.write('{"step": 3, "lo')
    with pytest.warns(UserWarning, match=r"log\.jsonl.*torn last line"):
        assert [r["step"] for r in ckpt.read_log(run)] == [1, 2]
    with pytest.warns(UserWarning):
        ckpt.truncate_log(run, 2)
    assert [r["step"] for r in ckpt.read_log(run)] == [1, 2]


def test_damaged_log_line_in_the_middle_is_an_error(tmp_path):
    run = str(tmp_path)
    _touch(os.path.join(run, ckpt.LOG_FILE), '{"step": 1}\n{"ste\n{"step": 3}\n')
    with pytest.raises(CheckpointError, match=r"log\.jsonl line 2"):
        ckpt.read_log(run)


# --------------------------------------------------------------- checkpoints
def _flip_bytes(path, offset, n=8):
    with open(path, "r+b") as f:
        f.seek(offset)
        data = f.read(n)
        f.seek(offset)
        f.write(bytes(b ^ 0x5A for b in data))


def test_checkpoint_round_trip(tmp_path):
    ckpt.save_checkpoint(str(tmp_path), STATE)
    out = ckpt.load_checkpoint(str(tmp_path), STATE)
    np.testing.assert_array_equal(out["params"]["w"], STATE["params"]["w"])
    assert int(ckpt.load_state_dict(str(tmp_path))["step"]) == 7


def test_checkpoint_with_flipped_bytes_is_an_error(tmp_path):
    run = str(tmp_path)
    ckpt.save_checkpoint(run, STATE)
    path = os.path.join(run, ckpt.CHECKPOINT_FILE)
    size = os.path.getsize(path)
    _flip_bytes(path, size - 100)  # inside the float array of the parameters
    assert os.path.getsize(path) == size
    with pytest.raises(CheckpointError, match=r"checkpoint\.msgpack is damaged"):
        ckpt.load_checkpoint(run, STATE)
    with pytest.raises(CheckpointError, match=r"checkpoint\.msgpack is damaged"):
        ckpt.load_state_dict(run)


def test_checkpoint_written_before_checksums_still_loads(tmp_path):
    from flax import serialization

    ckpt.atomic_write_bytes(os.path.join(tmp_path, ckpt.CHECKPOINT_FILE), serialization.to_bytes(STATE))
    out = ckpt.load_checkpoint(str(tmp_path), STATE)
    np.testing.assert_array_equal(out["params"]["w"], STATE["params"]["w"])


# ---------------------------------------------------------- integral cache
def test_cached_integrals_with_flipped_bytes_are_rebuilt(tmp_path):
    import h5py

    from basis.system import System
    from vardft.data import IntegralCache

    h2 = System(("H", "H"), [[0.0, 0.0, 0.0], [0.0, 0.0, 0.74]])
    cache = IntegralCache(str(tmp_path))
    good = cache.get(h2, "lda,vwn", "sto-3g", grid_level=0)
    path = cache.path(h2, "lda,vwn", "sto-3g", 0)
    with h5py.File(path, "r") as f:
        offset = f["hcore"].id.get_offset()
    size = os.path.getsize(path)
    _flip_bytes(path, offset)
    assert os.path.getsize(path) == size
    with pytest.warns(UserWarning, match="checksum"):
        again = cache.get(h2, "lda,vwn", "sto-3g", grid_level=0)
    assert cache.misses == 2 and cache.hits == 0
    np.testing.assert_array_equal(np.asarray(again.hcore), np.asarray(good.hcore))
    third = cache.get(h2, "lda,vwn", "sto-3g", grid_level=0)  # the rebuilt file is good
    assert cache.hits == 1
    np.testing.assert_array_equal(np.asarray(third.hcore), np.asarray(good.hcore))
