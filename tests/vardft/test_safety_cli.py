"""demo, predict and bands never destroy a user's files and refuse bad requests in one line.

Issue 15: ``demo --out`` deleted a whole project folder; ``predict --out`` could be a
directory or the run's own checkpoint; ``predict`` on a crystal run, ``bands --path ""``
and ``bands --basis def2-svp`` on Si (259 GiB) ended in tracebacks.
"""

import json
import os

import pytest

from tests.cli_helpers import assert_refused, run_cli_in_process
from vardft.checkpoint import CHECKPOINT_FILE, CONFIG_FILE, save_checkpoint
from vardft.rundir import MARKER_FILE, claim_run_directory

WATER_XYZ = "3\nwater\nO 0.0 0.0 0.0\nH 0.0 0.0 0.96\nH 0.93 0.0 -0.24\n"


def _tree(root):
    """{relative path: content} of every file under ``root``."""
    out = {}
    for here, _, files in os.walk(root):
        for name in files:
            path = os.path.join(here, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = f.read()
    return out


def _project(root):
    files = {"config.json": b'{"project": "mine"}', "src/main.py": b"print('hi')\n", "data/results.csv": b"a,b\n1,2\n"}
    for rel, data in files.items():
        os.makedirs(os.path.dirname(os.path.join(root, rel)) or root, exist_ok=True)
        with open(os.path.join(root, rel), "wb") as f:
            f.write(data)
    return files


def _molecule_run(path, created_by="train"):
    with claim_run_directory(str(path), "molecule", resume=False, created_by=created_by):
        with open(os.path.join(path, CONFIG_FILE), "w") as f:
            json.dump({"format_version": 1, "xc": "pbe", "basis": "def2-svp"}, f)
        save_checkpoint(str(path), {"step": 1})


# ----------------------------------------------------------------------- demo
def test_demo_refuses_a_project_folder_and_deletes_nothing(tmp_path):
    project = tmp_path / "project"
    files = _project(str(project))
    result = run_cli_in_process("demo", "--out", project, "--steps", "1", cwd=tmp_path)
    assert_refused(result, str(project), "config.json that vardft did not write")
    assert _tree(str(project)) == files


def test_demo_refuses_its_own_run_with_a_users_file_in_it(tmp_path):
    run = tmp_path / "demo"
    _molecule_run(run, created_by="demo")
    (run / "notes.txt").write_text("mine")
    before = _tree(str(run))
    result = run_cli_in_process("demo", "--out", run, "--steps", "1", cwd=tmp_path)
    assert_refused(result, "notes.txt that vardft did not write")
    assert _tree(str(run)) == before


def test_demo_refuses_a_training_run(tmp_path):
    run = tmp_path / "run"
    _molecule_run(run)
    before = _tree(str(run))
    result = run_cli_in_process("demo", "--out", run, "--steps", "1", cwd=tmp_path)
    assert_refused(result, "already holds a vardft molecule run")
    assert _tree(str(run)) == before


# -------------------------------------------------------------------- predict
def test_predict_out_is_a_directory(tmp_path):
    run = tmp_path / "run"
    _molecule_run(run)
    (tmp_path / "water.xyz").write_text(WATER_XYZ)
    (tmp_path / "outdir").mkdir()
    result = run_cli_in_process("predict", run, "water.xyz", "--out", "outdir", cwd=tmp_path)
    assert_refused(result, "--out outdir is a directory")


def test_predict_out_inside_the_run_never_touches_it(tmp_path):
    run = tmp_path / "run"
    _molecule_run(run)
    (tmp_path / "water.xyz").write_text(WATER_XYZ)
    before = _tree(str(run))
    for target in (CHECKPOINT_FILE, CONFIG_FILE, "pred.h5"):
        result = run_cli_in_process("predict", run, "water.xyz", "--out", run / target, cwd=tmp_path)
        assert_refused(result, "lies inside the run")
    assert _tree(str(run)) == before


def test_bands_empty_path(tmp_path):
    result = run_cli_in_process("bands", "si", "--scf", "--path", "", cwd=tmp_path)
    assert_refused(result, "band path '' is empty")


def test_bands_memory_is_estimated_before_allocating(tmp_path):
    result = run_cli_in_process("bands", "si", "--scf", "--basis", "def2-svp", cwd=tmp_path)
    line = assert_refused(result, "def2-svp", "GiB", "budget")
    assert "Bloch AO values would need" in line


def test_demo_replaces_its_own_run_and_only_its_files(tmp_path, monkeypatch, capsys):
    """In-process, training and validation replaced by stubs: a second demo into the
    same --out starts from an empty run (vardft's files removed, nothing else there)."""
    import types

    from vardft.checkpoint import VALIDATION_FILE, atomic_write_bytes
    from vardft.cli import main
    from vardft.rundir import read_marker

    seen = []

    def fake_train(dataset, run_dir, config, **kwargs):
        seen.append(sorted(os.listdir(run_dir)))
        atomic_write_bytes(os.path.join(run_dir, CONFIG_FILE), b"{}")
        save_checkpoint(run_dir, {"step": config.steps})
        return types.SimpleNamespace(step=config.steps, seconds=0.0)

    def fake_validate(run_dir, data, max_frames=None, progress=True):
        atomic_write_bytes(os.path.join(run_dir, VALIDATION_FILE), b"{}")
        return {"mean": {}, "xc": "pbe", "basis": "def2-svp"}

    import vardft.commands.demo as demo

    monkeypatch.setattr(demo, "train", fake_train)
    monkeypatch.setattr(demo, "validate_run", fake_validate)
    monkeypatch.setattr(demo, "load_dataset", lambda name, seed=0: types.SimpleNamespace(train=(1, 2)))
    out = str(tmp_path / "demo")
    for _ in range(2):
        assert main(["demo", "--out", out, "--steps", "1", "--json"]) == 0
    assert seen == [[".lock", MARKER_FILE]] * 2
    assert sorted(os.listdir(out)) == sorted([".lock", MARKER_FILE, CONFIG_FILE, CHECKPOINT_FILE, "validation.json"])
    assert read_marker(out)["created_by"] == "demo"
    capsys.readouterr()


@pytest.mark.parametrize("flags,fragment", [
    (["--cache-gb", "-1"], "--cache-gb must be > 0"),
    (["--hold-gb", "-1"], "--hold-gb must be a number >= 0"),
    (["--hold-gb", "nan"], "--hold-gb must be a number >= 0"),
    (["--workers", "-2"], "workers must be >= 0"),
    (["--eval-every", "0"], "evaluation interval must be >= 1 step"),
    (["--baseline", "sap", "--distill-lr", "0"], "distillation learning rate must be a positive finite number"),
])
def test_train_refuses_bad_streaming_flags_before_any_work(tmp_path, flags, fragment):
    """One line, exit 2, nothing printed on stdout and no run directory created."""
    result = run_cli_in_process("train", "water", "--out", str(tmp_path / "run"), *flags, cwd=tmp_path)
    assert_refused(result, fragment)
    assert not result.stdout.strip() and not (tmp_path / "run").exists()
