"""The built-in qm9 dataset: deterministic splits by molecule, the size split, labels in the run."""

import numpy as np
import pytest

from vardft.config import make_config
from vardft.data import load_dataset
from vardft.model import ModelConfig
from vardft.qm9 import qm9_split, read_qm9
from vardft.train import run_record


@pytest.fixture(scope="module")
def qm9():
    return read_qm9()


def test_qm9_is_read_whole_and_closed_shell(qm9):
    assert len(qm9) == 130_831  # QM9 without the 3,054 unconverged structures
    first = qm9[0]
    assert (first.index, first.smiles, first.symbols) == (1, "C", ("C", "H", "H", "H", "H"))
    assert first.positions.shape == (5, 3)
    assert max(m.heavy_atoms for m in qm9) == 9


def test_every_qm9_geometry_is_read(qm9):
    """The default qm9-ood split (1,000 molecules) met a geometry written with bare points
    (``0.``, not JSON) and failed in validation; every molecule's coordinates must parse."""
    for m in qm9:
        positions = m.positions
        assert positions.shape == (len(m.symbols), 3) and np.isfinite(positions).all(), m.index
    acetylene = qm9[3]  # index 4, C#C, stored as [[0.5995394918,0.,1.],...]
    assert acetylene.index == 4
    np.testing.assert_array_equal(acetylene.positions[:, 1:], [[0.0, 1.0]] * 4)
    np.testing.assert_allclose(acetylene.positions[:, 0], [0.5995394918, -0.5995394918, -1.6616385861, 1.6616385861])


def test_split_is_deterministic_and_nested(qm9):
    small, large = qm9_split(3, 5, 4), qm9_split(3, 20, 4)
    assert [m.index for m in small.validation] == [m.index for m in large.validation]
    assert [m.index for m in small.train] == [m.index for m in large.train[:5]]
    assert not {m.index for m in large.train} & {m.index for m in large.validation}
    assert [m.index for m in qm9_split(4, 5, 4).train] != [m.index for m in small.train]


def test_size_split_holds_out_the_larger_molecules(qm9):
    split = qm9_split(0, 30, 10, max_heavy_atoms=6)
    assert all(m.heavy_atoms <= 6 for m in split.train)
    assert all(m.heavy_atoms > 6 for m in split.validation)


def test_run_records_the_qm9_molecules_trained_on(qm9):
    data = load_dataset("qm9", n_train=3, n_validation=1)
    split = qm9_split(0, 3, 1)
    assert data.train_labels == tuple(f"{m.index} {m.smiles}" for m in split.train)
    assert [s.symbols for s in data.train] == [m.symbols for m in split.train]
    config = make_config("molecule", dataset="qm9")
    assert config.xc == "b3lyp" and config.basis == "def2-svp"
    record = run_record(config, ModelConfig.preset("S", basis=config.basis, elements=("H", "C", "N", "O", "F")), data)
    assert record["train_molecules"] == list(data.train_labels)


def test_builtin_size_split_qm9_ood(qm9):
    """``vardft train qm9-ood``: train on ≤ 7 heavy atoms, held out 8–9, no molecule in both."""
    data = load_dataset("qm9-ood", n_train=6, n_validation=4)
    heavy = [sum(s != "H" for s in m.symbols) for m in data.train + data.validation]
    assert max(heavy[:6]) <= 7 < min(heavy[6:])
    assert data.name == "qm9-ood" and len(data.train_labels) == 6
    assert make_config("molecule", dataset="qm9-ood").xc == "b3lyp"
