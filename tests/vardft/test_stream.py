"""Streamed training data (JAX backend): records on disk, bounded cache, batches that
equal the in-memory path, and training that reproduces the host backend."""

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from basis.integrals import build_integrals
from basis.system import System
from solvers.energy import energy_and_fock
from vardft.config import make_config
from vardft.data import IntegralCache, load_dataset
from vardft.model import ModelConfig
from vardft import stream
from vardft.stream import load_record
from vardft.tasks import MoleculeTask
from vardft.train import train

LOSS_REL_TOL = 1e-9  # issue 11: the JAX backend reproduces the host backend's losses
MATRIX_TOL = 1e-10  # Eh


def _config(**kw):
    """Streaming is the same for both baselines; the distillation's streaming is tested in
    test_fast_prediction. Minao keeps these runs to label-free steps."""
    return make_config("molecule", preset="S", basis="sto-3g", backend="jax", workers=0, **{"baseline": "minao", **kw})


def _model(config, systems):
    del systems
    return ModelConfig.preset("S", basis=config.basis, elements=("H", "O"), cutoff=config.cutoff)


@pytest.fixture(scope="module")
def water():
    return load_dataset("water", n_train=4, n_validation=1)


def test_streamed_batch_equals_in_memory_bucket(water, tmp_path):
    """The padded arrays of a streamed batch give the in-memory path's energy, Fock and
    baseline for the same molecules (padding changes nothing)."""
    config = _config()
    task = MoleculeTask(config)
    model = _model(config, water.train)
    streamed = task.prepare(water.train, model, IntegralCache(str(tmp_path)))
    host = MoleculeTask(dataclasses.replace(config, backend="host"))
    in_memory = host.prepare(water.train, model)
    assert len(streamed) == len(in_memory) == 1
    data = streamed[0].take([2, 0])
    ref = in_memory[0].take([2, 0])
    for k in range(2):
        ints_s = jax.tree.map(lambda a: a[k], data.ints)
        ints_h = jax.tree.map(lambda a: a[k], ref.ints)
        P = ints_h.dm_guess
        _, _, F_s = energy_and_fock(P, ints_s)
        _, _, F_h = energy_and_fock(P, ints_h)
        assert float(jnp.abs(F_s - F_h).max()) < MATRIX_TOL
        assert float(jnp.abs(data.h_base[k] - ref.h_base[k]).max()) < MATRIX_TOL
    # every batch of the bucket has the same shapes: one compiled step
    other = streamed[0].take([1, 3])
    assert jax.tree.map(jnp.shape, other) == jax.tree.map(jnp.shape, data)


def test_resident_records_are_not_read_again_and_give_the_same_batch(water, tmp_path):
    """With room for two of three padded records on the device, the two are never read
    from the store again, the third is read per batch, and the batch is the one read
    from disk, bit for bit."""
    config = _config()
    model = _model(config, water.train)
    task = MoleculeTask(config)
    plain = task.prepare(water.train[:3], model, IntegralCache(str(tmp_path), memory_bytes=0))[0]
    one = sum(np.asarray(leaf).nbytes for leaf in jax.tree.leaves(
        stream.pad_record(plain.records([0])[0], plain.padded_shells(0), plain.shapes, plain.store.settings)))
    held = task.prepare(water.train[:3], model, IntegralCache(str(tmp_path), memory_bytes=2 * one + 1))[0]
    reads = []
    fetch = held.store.fetch
    held.store.fetch = lambda systems, idx, rebuild: reads.extend(idx) or fetch(systems, idx, rebuild)
    first = held.take([0, 1, 2])
    assert sorted(reads) == [0, 1, 2] and len(held.resident) == 2 and held.resident.held_bytes == 2 * one
    reads.clear()
    again = held.take([2, 1, 0])
    assert reads == [2]  # the one that did not fit
    reference = plain.take([2, 1, 0])
    for a, b in zip(jax.tree.leaves(again), jax.tree.leaves(reference)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert jax.tree.structure(first) == jax.tree.structure(again)
    assert len(plain.resident) == 0  # --hold-gb 0: every batch read
    default = task.prepare(water.train[:3], model, IntegralCache(str(tmp_path)))[0]
    default.take([0, 1, 2])
    assert len(default.resident) == 3  # by default, what fits in a quarter of the memory


def test_default_hold_leaves_room_for_the_training_step(water, tmp_path, monkeypatch):
    """By default the held records, the largest training step and a quarter of the memory
    to spare fit in the memory together (holding a quarter beside a ~15 GB QM9 step got
    ``vardft train qm9`` killed for memory on 25 GB): a step that takes three quarters
    leaves nothing to hold, a small one leaves the quarter."""
    from vardft import tasks
    from vardft.config import STEP_MEMORY_FACTOR

    config = _config(batch_size=2)
    model = _model(config, water.train)
    step = tasks.step_memory_bytes(water.train[:3], config)  # three conformations of one molecule
    assert step == int(STEP_MEMORY_FACTOR * 2 * tasks.in_memory_bytes(water.train[:1], config))
    memory = int(step / 0.75)
    monkeypatch.setattr(tasks, "machine_memory_bytes", lambda: memory)
    full = MoleculeTask(config).prepare(water.train[:3], model, IntegralCache(str(tmp_path)))[0]
    full.take([0, 1, 2])
    assert full.resident.budget <= 0.75 * memory - step + 1 and len(full.resident) == 0
    monkeypatch.setattr(tasks, "machine_memory_bytes", lambda: 1000 * step)
    roomy = MoleculeTask(config).prepare(water.train[:3], model, IntegralCache(str(tmp_path)))[0]
    assert roomy.resident.budget == int(0.25 * 1000 * step)
    assert tasks.resident_budget(123, 1, 10 * memory) == 123  # --hold-gb is taken as it is
    # a run sizes the budget over its held-out molecules too (qm9-ood holds out the larger ones)
    from ase.build import molecule

    larger = [*water.train[:3], System.from_atoms(molecule("C6H6"))]
    larger_step = tasks.step_memory_bytes(larger, config)
    memory = int(larger_step / 0.75)
    monkeypatch.setattr(tasks, "machine_memory_bytes", lambda: memory)
    alone = MoleculeTask(config).prepare(water.train[:3], model, IntegralCache(str(tmp_path)))[0]
    sized = MoleculeTask(config).prepare(water.train[:3], model, IntegralCache(str(tmp_path)), sizing=larger)[0]
    assert larger_step > step and alone.resident.budget > 0 and sized.resident.budget <= 1


def test_records_hold_no_ao_values_and_the_process_keeps_none(water, tmp_path):
    config = _config()
    task = MoleculeTask(config)
    sets = task.prepare(water.train, _model(config, water.train), IntegralCache(str(tmp_path)))
    store = sets[0].store
    assert store.written == len(water.train) and not store.memory
    files = sorted(os.listdir(tmp_path))
    record = load_record(os.path.join(tmp_path, files[0]))
    nao = record.arrays["overlap"].shape[0]
    assert record.arrays["cderi_packed"].shape[1] == nao * (nao + 1) // 2
    dense = build_integrals(water.train[0], config.xc, config.basis, config.grid_level)
    assert record.nbytes < 0.5 * sum(np.asarray(a).nbytes for a in (dense.ao, dense.cderi))


def test_damaged_record_is_rebuilt_and_bound_is_respected(water, tmp_path, monkeypatch):
    config = _config()
    task = MoleculeTask(config)
    model = _model(config, water.train)
    sets = task.prepare(water.train[:2], model, IntegralCache(str(tmp_path)))
    path = sets[0].store.path(sets[0].systems[0])
    with open(path, "r+b") as f:  # flip bytes inside the array data
        f.seek(os.path.getsize(path) // 2)
        f.write(b"\x00\xff\x00\xff")
    with pytest.warns(UserWarning, match="checksum"):
        assert load_record(path) is None
    # a bound below one record: nothing is written, batches are rebuilt when needed
    bounded = tmp_path / "bounded"
    sets = task.prepare(water.train[:2], model, IntegralCache(str(bounded), max_bytes=1000))
    assert sets[0].store.written == 0 and _only_size_notes(bounded)
    data = sets[0].take([0, 1])
    assert sets[0].store.rebuilt == 2 and np.isfinite(np.asarray(data.h_base)).all()
    # preparing them again builds none for its sizes (a resumed QM9 run rebuilt 400): the notes fix the shapes
    built = []
    build = stream.build_record
    monkeypatch.setattr(stream, "build_record", lambda *a: built.append(a) or build(*a))
    again = task.prepare(water.train[:2], model, IntegralCache(str(bounded), max_bytes=1000))
    assert not built and again[0].shapes == sets[0].shapes
    assert len(os.listdir(bounded)) == 2
    # with room again (a bound raised, disk freed) a record rebuilt for a batch is kept and then read:
    # a QM9 cache once full rebuilt 49 of its 200 records for every batch of later runs
    roomy = task.prepare(water.train[:2], model, IntegralCache(str(bounded)))
    roomy[0].take([1, 0])
    assert roomy[0].store.rebuilt == 2 and roomy[0].store.written == 2
    data = roomy[0].take([0, 1])
    assert roomy[0].store.rebuilt == 2 and np.isfinite(np.asarray(data.h_base)).all()


def _only_size_notes(directory) -> bool:
    """No record files in ``directory``, only the size notes of records that were not kept."""
    return all(name.endswith(".sizes.json") for name in os.listdir(directory))


def test_cache_keeps_the_disk_reserve_and_survives_a_full_disk(water, tmp_path, monkeypatch):
    """A QM9 run filled a 79 GB disk with records and died in the middle of a write: the
    store now leaves DISK_RESERVE_BYTES free, and a full disk met while writing costs the
    record (rebuilt when needed), not the run."""
    import errno
    import shutil
    from collections import namedtuple

    config = _config()
    task = MoleculeTask(config)
    model = _model(config, water.train)
    usage = namedtuple("usage", "total used free")
    reserve = tmp_path / "reserve"
    with monkeypatch.context() as m:
        m.setattr(shutil, "disk_usage", lambda path: usage(10**12, 10**12 - 10**9, stream.DISK_RESERVE_BYTES))
        with pytest.warns(UserWarning, match="GB of disk free"):
            sets = task.prepare(water.train[:2], model, IntegralCache(str(reserve)))
    assert sets[0].store.written == 0 and _only_size_notes(reserve)
    assert np.isfinite(np.asarray(sets[0].take([0, 1]).h_base)).all()

    def no_space(path, record):
        open(path + ".partial", "wb").close()  # what a write cut short leaves is not ours to keep
        os.remove(path + ".partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(stream, "save_record", no_space)
    full = tmp_path / "full"
    with pytest.warns(UserWarning, match="GB of disk free"):
        sets = task.prepare(water.train[:2], model, IntegralCache(str(full)))
    assert sets[0].store.written == 0 and sets[0].store.disk_full and _only_size_notes(full)
    assert np.isfinite(np.asarray(sets[0].take([0, 1]).h_base)).all()


def test_unbounded_cache_takes_at_most_half_the_free_disk(water, tmp_path, monkeypatch):
    """A QM9 cache ran to the disk reserve and left no room to install packages on the
    same disk: without --cache-gb a store takes at most half of the space free when it
    opens, besides what it already holds."""
    import shutil
    from collections import namedtuple

    config = _config()
    task = MoleculeTask(config)
    model = _model(config, water.train)
    (sets,) = task.prepare(water.train[:1], model, IntegralCache(str(tmp_path / "first")))
    record_bytes = sets.store.used
    usage = namedtuple("usage", "total used free")
    free = int(1.5 * record_bytes)  # room for the record, but half of it is not
    monkeypatch.setattr(stream, "DISK_RESERVE_BYTES", 0)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**12, 10**12 - free, free))
    half = tmp_path / "half"
    with pytest.warns(UserWarning, match="full at its bound"):
        (sets,) = task.prepare(water.train[:1], model, IntegralCache(str(half)))
    assert sets.store.max_bytes == free // 2 and sets.store.written == 0 and _only_size_notes(half)
    # what the directory holds already counts on top of the share, and the bound is fixed once per cache
    (tmp_path / "first" / "other.h5").write_bytes(b"0" * 1000)
    cache = IntegralCache(str(tmp_path / "first"))
    assert cache.record_bound() == record_bytes + 1000 + free // 2
    (tmp_path / "first" / "more.h5").write_bytes(b"0" * 1000)
    assert cache.record_bound() == record_bytes + 1000 + free // 2


@pytest.mark.slow  # two trainings with compilation (~90 s on 2 cores); the batch test above covers the data
def test_jax_backend_training_reproduces_host_losses(water, tmp_path):
    losses = {}
    for backend in ("host", "jax"):
        config = make_config("molecule", preset="S", basis="sto-3g", steps=3, batch_size=2, eval_every=None,
                             backend=backend, workers=1)
        result = train(water, None, config, cache=IntegralCache(str(tmp_path / backend)), progress=False)
        losses[backend] = np.array([h["loss"] for h in result.history])
    assert np.max(np.abs(losses["jax"] - losses["host"]) / np.abs(losses["host"])) < LOSS_REL_TOL


def test_automatic_backend_streams_what_does_not_fit(water, monkeypatch):
    """``backend=None`` keeps small sets in memory on a CPU and streams large ones."""
    from vardft import tasks

    config = make_config("molecule", basis="sto-3g")
    assert config.backend is None
    small = tasks.in_memory_bytes(water.train[:1], config)
    assert tasks.in_memory_bytes(water.train[:4], config) == 4 * small
    assert MoleculeTask(config).resolve(water.train).backend == "host"
    monkeypatch.setattr(tasks, "HOST_MEMORY_FRACTION", 0.0)
    assert MoleculeTask(config).resolve(water.train).backend == "jax"


def test_automatic_backend_counts_the_held_out_molecules_it_evaluates(water, monkeypatch):
    """Training sets that fit in memory, but not with the held-out set the run evaluates:
    ``train`` streams (a QM9 run of 8 + 100 molecules was killed for memory otherwise); a run
    that evaluates nothing keeps the host backend."""
    from vardft import tasks

    config = make_config("molecule", preset="S", basis="sto-3g", steps=1, eval_every=1, workers=0, baseline="minao")
    train_bytes = tasks.in_memory_bytes(water.train, config)
    held_out = tasks.in_memory_bytes(water.validation, config)
    monkeypatch.setattr(tasks, "HOST_MEMORY_FRACTION", (train_bytes + held_out / 2) / tasks.machine_memory_bytes())
    assert MoleculeTask(config).resolve(water.train).backend == "host"
    assert train(water, None, config, progress=False).config.backend == "jax"
    quiet = dataclasses.replace(config, eval_every=None)
    assert train(water, None, quiet, progress=False).config.backend == "host"


def test_batches_of_a_mixed_bucket_share_one_structure(water, tmp_path):
    """A bucket holding molecules with different electron counts: a batch whose molecules
    happen to agree has the same pytree structure (static electron count) as a mixed one,
    so it compiles nothing new."""
    from basis.system import System

    config = _config()
    hydrogen = System(("H", "H"), [[0.0, 0.0, 0.0], [0.0, 0.0, 0.74]])
    systems = [MoleculeTask.to_frame(s)[0] for s in (*water.train[:2], hydrogen)]
    bucket = MoleculeTask(config).stream_bucket(systems, _model(config, systems), stream.RecordStore(
        str(tmp_path), MoleculeTask(config).record_settings()))
    same, mixed = bucket.take([0, 1]), bucket.take([0, 2])
    assert jax.tree.structure(same) == jax.tree.structure(mixed)
    assert np.asarray(mixed.n_electrons).tolist() == [10, 2]


def test_record_workers_end_with_the_training_process(tmp_path):
    """A training process killed outright (as the kernel does when memory runs out) takes
    its record workers with it instead of leaving them idle, holding memory."""
    import signal
    import subprocess
    import sys
    import time

    script = tmp_path / "parent.py"
    script.write_text(
        "import os, time\n"
        "from vardft.stream import worker_pool\n"
        "if __name__ == '__main__':\n"
        "    with worker_pool(1) as pool:\n"
        "        print(pool.submit(os.getpid).result(), flush=True)\n"
        "        time.sleep(600)\n")
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                              cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    worker = int(parent.stdout.readline())
    parent.send_signal(signal.SIGKILL)
    parent.wait()

    def alive(pid):
        try:
            with open(f"/proc/{pid}/status") as f:
                return "zombie" not in f.read()
        except FileNotFoundError:
            return False

    deadline = time.time() + 20
    while alive(worker) and time.time() < deadline:
        time.sleep(0.2)
    assert not alive(worker)


def test_run_holds_what_its_compiled_step_leaves(water, tmp_path, monkeypatch):
    """Without ``--hold-gb`` a streamed run sizes its held records after compiling its step:
    the memory available, less the compiled step's buffers with a second batch, less the
    margin. Given room for exactly one record beyond that, it holds one record (never
    more), and the step it measured covers at least two batches of the largest bucket."""
    from vardft import tasks
    from vardft import train as train_module

    config = _config(batch_size=2, steps=2, eval_every=None)
    first = train(water, None, config, cache=IntegralCache(str(tmp_path)), progress=False)
    nao = water.train[0].to_mole(config.basis).nao_nr()
    assert first.step_bytes > 2 * 2 * nao * nao * 8 and first.hold_bytes == tasks.memory_budget(None)
    record = stream.load_record(next(str(p) for p in tmp_path.iterdir() if p.name.endswith(".h5")))
    one = record.nbytes  # padded: at least this; two records are at least twice it
    margin = int(tasks.HOLD_MARGIN_FRACTION * tasks.memory_capacity())
    monkeypatch.setattr(train_module, "available_memory_bytes", lambda: first.step_bytes + margin + int(1.5 * one))
    held = []
    offer = stream.ResidentRecords.offer
    monkeypatch.setattr(stream.ResidentRecords, "offer",
                        lambda self, key, padded: (offer(self, key, padded), held.append(len(self)))[0])
    second = train(water, None, config, cache=IntegralCache(str(tmp_path)), progress=False)
    assert second.step_bytes == first.step_bytes and second.hold_bytes == int(1.5 * one)
    assert held and max(held) == 1
    assert [h["loss"] for h in second.history] == [h["loss"] for h in first.history]
