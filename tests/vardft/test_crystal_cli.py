"""``vardft train`` / ``vardft validate`` on crystals: a tiny run end to end, and error paths."""

import json
import os

import numpy as np
import pytest

from vardft.cli import main

TINY = ["--steps", "2", "--n-train", "1", "--kmesh", "1", "1", "1", "--mesh", "9", "9", "9",
        "--xc", "lda,vwn", "--quiet", "--checkpoint-every", "1"]


@pytest.fixture(scope="module")
def crystal_run(tmp_path_factory):
    run_dir = str(tmp_path_factory.mktemp("crystal") / "run")
    assert main(["train", "si", "--out", run_dir, *TINY]) == 0
    return run_dir


def test_train_writes_a_crystal_run(crystal_run):
    with open(os.path.join(crystal_run, "config.json")) as f:
        conf = json.load(f)
    assert conf["kind"] == "crystal" and conf["baseline"] == "sap"  # the crystal default
    train = conf["train"]
    assert (train["xc"], train["basis"], train["pseudo"]) == ("lda,vwn", "gth-szv", "gth-pade")
    assert train["kmesh"] == [1, 1, 1] and train["mesh"] == [9, 9, 9] and conf["dataset"] == "si"
    with open(os.path.join(crystal_run, "log.jsonl")) as f:
        records = [json.loads(line) for line in f]
    assert [r["step"] for r in records] == [1, 2]
    assert all(np.isfinite(r["energy"]) and np.isfinite(r["sc_rmse"]) for r in records)
    assert os.path.exists(os.path.join(crystal_run, "checkpoint.msgpack"))


def test_validate_gives_finite_metrics(crystal_run, capsys):
    assert main(["validate", crystal_run, "si", "--max-frames", "1", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["baseline"] == "sap" and result["kmesh"] == [1, 1, 1]
    (frame,) = result["frames"]
    for key in ("energy_error_per_cell", "band_mae_mev", "band_max_mev", "band_shift_mev", "aligned_band_mae_mev"):
        assert np.isfinite(frame[key]) and result["mean"][key] == pytest.approx(frame[key])
    assert abs(frame["band_shift_mev"]) <= frame["band_mae_mev"] + 1e-9  # |mean error| <= mean |error|
    # variational: the model's density is not below PySCF's SCF energy on the same mesh
    assert frame["energy_error_per_cell"] > -1e-7
    assert frame["n_bands"] == 8  # 4 valence + 4 conduction bands of Si (gth-szv has 8)
    assert main(["validate", crystal_run, "si", "--max-frames", "1"]) == 0
    assert "band MAE" in capsys.readouterr().out


def test_where_the_reference_does_not_converge_validate_compares_at_n_half_per_k(crystal_run, capsys, monkeypatch):
    """PySCF's KRKS and vardft's continuation cut to one cycle: the frame is marked unconverged
    and left out of the plain means, and its n/2-per-k reference, continued from that state,
    gives the bands of the converged run (Si: n/2 per k is PySCF's own filling)."""
    from vardft import validate

    assert main(["validate", crystal_run, "si", "--max-frames", "1", "--json"]) == 0
    (converged,) = json.loads(capsys.readouterr().out)["frames"]
    monkeypatch.setattr(validate, "REFERENCE_MAX_CYCLE", 1)
    monkeypatch.setattr(validate, "CONTINUATION_MAX_CYCLE", 1)
    assert main(["validate", crystal_run, "si", "--max-frames", "1", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    (frame,) = result["frames"]
    assert frame["reference"] == "unconverged" and not frame["reference_converged"]
    assert result["mean"]["n_unconverged_references"] == 1 and "band_mae_mev" not in result["mean"]
    assert abs(frame["band_mae_mev"] - converged["band_mae_mev"]) > 1e-3  # against the cut state
    for key in ("insulating_band_mae_mev", "band_shift_mev", "aligned_band_mae_mev"):
        assert frame[key] == pytest.approx(converged[key], abs=1e-4) and result["mean"][key] == frame[key]
    assert main(["validate", crystal_run, "si", "--max-frames", "1"]) == 0
    assert "0:Si2*" in capsys.readouterr().out


def test_resume_of_a_finished_run_and_existing_checkpoint(crystal_run, capsys):
    assert main(["train", "si", "--out", crystal_run, *TINY]) == 2
    assert "already holds a vardft crystal run" in capsys.readouterr().err
    assert main(["train", "si", "--out", crystal_run, *TINY, "--resume"]) == 0


def test_crystal_validate_of_a_molecular_run_is_one_line(tmp_path, capsys):
    run_dir = str(tmp_path / "mol")
    assert main(["train", "water", "--out", run_dir, "--steps", "0", "--n-train", "1", "--quiet",
                 "--basis", "sto-3g", "--cache", "none"]) == 0
    capsys.readouterr()
    assert main(["validate", run_dir, "si"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "molecule model" in err and "crystal" in err


def test_molecular_data_on_a_crystal_run_is_one_line(crystal_run, capsys):
    assert main(["validate", crystal_run, "water"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "crystal" in err


def test_bad_kmesh_is_one_line(tmp_path, capsys):
    assert main(["train", "si", "--out", str(tmp_path / "r"), "--kmesh", "0", "1", "1", "--steps", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "k-point mesh" in err


def test_bad_batch_size_is_one_line(tmp_path, capsys):
    assert main(["train", "si", "--out", str(tmp_path / "r"), *TINY, "--batch-size", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "batch size" in err


def test_predict_writes_crystal_hamiltonians(crystal_run, tmp_path, capsys):
    """``vardft predict`` with a crystal model: H(k), S(k), P(k) and bands at the run's k-mesh."""
    import h5py

    out = str(tmp_path / "pred.h5")
    assert main(["predict", crystal_run, "si", "--out", out]) == 0
    with h5py.File(out) as f:
        g = f["0"]
        assert g.attrs["kind"] == "crystal" and list(g.attrs["kmesh"]) == [1, 1, 1]
        H, S, P = g["hamiltonian"][()], g["overlap"][()], g["density_matrix"][()]
        assert H.shape == S.shape == P.shape == (1, 8, 8) and np.iscomplexobj(H)
        assert np.abs(H - np.conj(np.swapaxes(H, 1, 2))).max() < 1e-12
        assert abs(np.einsum("kij,kji->", P, S).real - 8.0) < 1e-8  # valence electrons of Si2
        assert np.isfinite(g["energy"][()])


def test_molecule_on_a_crystal_model_is_one_line(crystal_run, tmp_path, capsys):
    assert main(["predict", crystal_run, "water", "--out", str(tmp_path / "p.h5")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "crystal model" in err[0] and "molecule" in err[0]


def test_load_gives_the_run_kind(crystal_run):
    from basis.errors import CheckpointError
    from vardft.api import CrystalModel, load

    assert isinstance(load(crystal_run), CrystalModel)
    with pytest.raises(CheckpointError, match="crystal model, not a molecule model"):
        load(crystal_run, "molecule")


@pytest.fixture(scope="module")
def sap_run(tmp_path_factory):
    run_dir = str(tmp_path_factory.mktemp("crystal") / "sap")
    assert main(["train", "si", "--out", run_dir, "--baseline", "sap", *TINY]) == 0
    return run_dir


def test_sap_run_predicts_real_space_blocks_that_bloch_sum_to_its_k_mesh_prediction(sap_run, tmp_path, capsys):
    """``vardft predict --real-space`` (issue 13): H(R), S(R) as atom-pair blocks in the
    documented layout; Σ_n e^{ik·T_n} of them is the H(k), S(k) the k-mesh prediction writes."""
    import h5py

    run_dir = sap_run
    blocks_file, kmesh_file = str(tmp_path / "rs.h5"), str(tmp_path / "k.h5")
    assert main(["predict", run_dir, "si", "--real-space", "--out", blocks_file]) == 0
    assert main(["predict", run_dir, "si", "--out", kmesh_file]) == 0
    capsys.readouterr()
    with h5py.File(blocks_file) as f, h5py.File(kmesh_file) as g:
        blk, ref = f["0"], g["0"]
        offsets, lattice = blk["ao_offsets"][()], blk["lattice_bohr"][()]
        nao = int(offsets[-1])
        kpts = ref["kpts"][()]
        H = np.zeros((len(kpts), nao, nao), complex)
        S = np.zeros_like(H)
        for (i, j), n, h, s in zip(blk["pairs"][()], blk["shifts"][()], blk["hamiltonian"][()], blk["overlap"][()]):
            a, b = offsets[i], offsets[j]
            ni, nj = offsets[i + 1] - a, offsets[j + 1] - b
            phase = np.exp(1j * kpts @ (n @ lattice))
            H[:, a:a + ni, b:b + nj] += phase[:, None, None] * h[:ni, :nj]
            S[:, a:a + ni, b:b + nj] += phase[:, None, None] * s[:ni, :nj]
        np.testing.assert_allclose(H, ref["hamiltonian"][()], atol=1e-12)
        np.testing.assert_allclose(S, ref["overlap"][()], atol=1e-12)
    # a molecular model has no real-space blocks: one line, exit 2
    mol_dir = str(tmp_path / "mol")
    assert main(["train", "water", "--out", mol_dir, "--steps", "0", "--n-train", "1", "--quiet",
                 "--basis", "sto-3g", "--cache", "none"]) == 0
    assert main(["predict", mol_dir, "water", "--real-space", "--out", str(tmp_path / "m.h5")]) == 2
    assert "--real-space is for crystal models" in capsys.readouterr().err


def test_bands_nearest_the_fermi_level_equal_those_of_the_full_solve(sap_run, capsys):
    """``vardft bands --model RUN --nbands N`` (issue 13): the N bands around the gap from
    the solver that computes no others equal the same bands of the full solve (1e-8 Eh), and
    the record says which bands they are."""
    args = ["bands", "si", "--model", sap_run, "--path", "GX", "--npoints", "5", "--json"]
    assert main(args) == 0
    full = json.loads(capsys.readouterr().out)
    assert main(args + ["--nbands", "4"]) == 0
    window = json.loads(capsys.readouterr().out)
    assert full["first_band"] == 0 and window["first_band"] == 2  # Si: 4 occupied bands of 8
    some, every = np.asarray(window["bands_ev"]), np.asarray(full["bands_ev"])
    assert some.shape == (5, 4)
    np.testing.assert_allclose(some, every[:, 2:6], atol=1e-8 * 27.211386, rtol=0)
    assert window["fermi_ev"] == pytest.approx(full["fermi_ev"], abs=1e-7)
    for bad, says in ((["--nbands", "0"], "nbands must be at least 1"),):
        assert main(args + bad) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and says in err
    assert main(["bands", "si", "--scf", "--nbands", "4"]) == 2
    assert "--nbands works with --model" in capsys.readouterr().err


def _supercell_file(path, repeat, rattle=0.0):
    import ase
    from ase.build import make_supercell

    from basis.crystal import read_crystal

    p = read_crystal("si")
    atoms = make_supercell(ase.Atoms(p.symbols, positions=p.positions, cell=p.cell, pbc=True), np.diag(repeat))
    if rattle:
        atoms.rattle(rattle, seed=3)
    atoms.write(path, format="extxyz")
    return str(path)


def test_unfolded_supercell_bands_are_the_primitive_bands_with_weight_one(sap_run, tmp_path, capsys):
    """``vardft bands SUPERCELL --model RUN --unfold PRIMITIVE`` (issue 13): on a perfect
    2×2×1 Si supercell (folded bands meet: degenerate levels) every state has weight 0 or 1
    at each primitive k, the weight-1
    states are the primitive cell's own model bands (1e-8 Eh), and at every k the weights
    add up to the primitive cell's 8 orbitals; on a displaced supercell they still add up
    to 8 and lie in [0, 1] to round-off, spread over more states."""
    common = ["--model", sap_run, "--path", "GXW", "--npoints", "5", "--json"]
    assert main(["bands", "si", *common]) == 0
    primitive = np.asarray(json.loads(capsys.readouterr().out)["bands_ev"])
    plot = tmp_path / "unfolded.png"
    assert main(["bands", _supercell_file(tmp_path / "sc.xyz", (2, 2, 1)), *common, "--unfold", "si",
                 "--plot", str(plot)]) == 0
    data = json.loads(capsys.readouterr().out)
    bands, weights = np.asarray(data["bands_ev"]), np.asarray(data["weights"])
    assert bands.shape == weights.shape == (5, 32)
    assert np.abs(weights * (1 - weights)).max() < 1e-6  # 0 or 1 (weights written to 6 decimals)
    np.testing.assert_allclose(weights.sum(axis=1), 8.0, atol=1e-5)
    picked = np.stack([np.sort(b[w > 0.5]) for b, w in zip(bands, weights)])
    np.testing.assert_allclose(picked, primitive, atol=1e-8 * 27.211386, rtol=0)
    assert plot.stat().st_size > 0 and data["unfolded_onto"] == "Si2"
    assert main(["bands", str(tmp_path / "sc.xyz"), *common, "--unfold", "si", "--nbands", "4"]) == 0
    window = json.loads(capsys.readouterr().out)  # bands 15-18 of 32, 16 occupied: the same states and weights
    np.testing.assert_allclose(np.asarray(window["weights"]), weights[:, 14:18], atol=1e-6)
    np.testing.assert_allclose(np.asarray(window["bands_ev"]), bands[:, 14:18], atol=1e-8)

    assert main(["bands", _supercell_file(tmp_path / "rattled.xyz", (2, 1, 1), rattle=0.05), *common,
                 "--unfold", "si"]) == 0
    weights = np.asarray(json.loads(capsys.readouterr().out)["weights"])
    np.testing.assert_allclose(weights.sum(axis=1), 8.0, atol=1e-5)
    assert weights.min() > -1e-3 and weights.max() < 1 + 1e-3
    assert np.abs(weights * (1 - weights)).max() > 1e-3  # displacements mix k and k + G

    assert main(["bands", "si", *common, "--unfold", str(tmp_path / "sc.xyz")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "not an integer multiple" in err
    assert main(["bands", "si", "--scf", "--unfold", "si"]) == 2
    assert "--unfold works with --model" in capsys.readouterr().err


def test_unfolding_weights_of_a_state_add_up_to_one_over_the_folded_wavevectors():
    """The N primitive wavevectors k + G that fold onto one supercell k share its states; the
    weights (:func:`solvers.bands.unfolding_weights`) of any normalised state over them add
    up to one — here a random state of a random 3-cell supercell."""
    from solvers.bands import unfolding_weights

    rng = np.random.default_rng(0)
    n_orb, n_cells = 3, 3
    lattice = np.eye(3) * 4.0  # primitive; the supercell is 3 × 1 × 1
    orbital = np.tile(np.arange(n_orb), n_cells)
    translation = np.repeat(np.arange(n_cells), n_orb)[:, None] * lattice[0][None, :]
    A = rng.normal(size=(9, 9)) + 1j * rng.normal(size=(9, 9))
    S = A @ A.conj().T + 9 * np.eye(9)
    C = rng.normal(size=(9, 2)) + 1j * rng.normal(size=(9, 2))
    C /= np.sqrt(np.einsum("mi,mn,ni->i", C.conj(), S, C).real)
    k = np.array([0.3, 0.1, -0.2])
    G = 2 * np.pi / (3 * 4.0) * np.array([1.0, 0.0, 0.0])  # the supercell's reciprocal vector
    total = sum(unfolding_weights(C, S @ C, orbital, translation, k + j * G, n_orb) for j in range(n_cells))
    np.testing.assert_allclose(total, 1.0, atol=1e-12)


def test_sparse_and_dense_band_solvers_agree(sap_run, tmp_path, capsys):
    """``vardft bands --nbands N --solver sparse`` (issue 13): the bands nearest the Fermi
    level from sparse H(k), S(k) and shift-invert Lanczos equal the dense subset solver's to
    1e-8 Eh, on a displaced 8-atom supercell (32 AOs: Lanczos, not its dense fallback)."""
    cell = _supercell_file(tmp_path / "sc221.xyz", (2, 2, 1), rattle=0.05)
    args = ["bands", cell, "--model", sap_run, "--path", "GX", "--npoints", "4", "--nbands", "6", "--json"]
    results = {}
    for solver in ("dense", "sparse"):
        assert main(args + ["--solver", solver]) == 0
        results[solver] = json.loads(capsys.readouterr().out)
    dense, sparse = (np.asarray(results[s]["bands_ev"]) for s in ("dense", "sparse"))
    assert dense.shape == (4, 6) and results["sparse"]["first_band"] == 13  # 16 occupied of 32
    np.testing.assert_allclose(sparse, dense, atol=1e-8 * 27.211386, rtol=0)
    assert main(["bands", cell, "--model", sap_run, "--solver", "sparse"]) == 2
    assert "give nbands" in capsys.readouterr().err
