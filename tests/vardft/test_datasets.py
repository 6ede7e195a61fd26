"""Built-in datasets: held-out frames stay held out whatever the training-set size."""

import numpy as np

from vardft.data import load_dataset


def _positions(systems):
    return [s.positions for s in systems]


def test_validation_frames_do_not_depend_on_training_size_and_never_overlap_training():
    small = load_dataset("water", seed=3, n_train=4, n_validation=3)
    large = load_dataset("water", seed=3, n_train=12, n_validation=3)
    for a, b in zip(_positions(small.validation), _positions(large.validation)):
        np.testing.assert_array_equal(a, b)
    for v in _positions(large.validation):
        assert all(np.abs(v - t).max() > 1e-3 for t in _positions(large.train))
    # the training frames of the smaller set are the first ones of the larger set
    for a, b in zip(_positions(small.train), _positions(large.train)):
        np.testing.assert_array_equal(a, b)


def test_seeds_give_different_conformations():
    a = load_dataset("water", seed=0, n_train=2, n_validation=1)
    b = load_dataset("water", seed=1, n_train=2, n_validation=1)
    assert np.abs(a.train[0].positions - b.train[0].positions).max() > 1e-3
