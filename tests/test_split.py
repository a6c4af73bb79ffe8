import numpy as np

from sibeatgan.data.split import TEST, TRAIN, VAL, inter_patient, intra_patient
from sibeatgan.datasets.mitdb import DS1, DS2, MITDB


def labels(n_normal=1003, abnormal=(37, 71, 9, 3)):
    cls = [0] * n_normal
    for c, k in enumerate(abnormal, start=1):
        cls += [c] * k
    return np.random.default_rng(5).permutation(np.array(cls, dtype=np.int8))


def test_fold_sizes_follow_protocol():
    cls = labels()
    n = int(np.sum(cls == 0))
    for fold in range(5):
        split = intra_patient(cls, fold, seed=0)
        assert np.sum((split == TEST) & (cls == 0)) == n // 5
        rest = n - n // 5
        assert np.sum(split == TRAIN) == int(np.floor(0.9 * rest))
        assert np.sum((split == VAL) & (cls == 0)) == rest - int(np.floor(0.9 * rest))
        assert not np.any((split == TRAIN) & (cls > 0)), "train holds N beats only"
        for c, k in zip(range(1, 5), (37, 71, 9, 3), strict=True):
            assert np.sum((split == TEST) & (cls == c)) == int(np.floor(0.9 * k))


def test_test_folds_are_disjoint_and_abnormal_split_is_shared():
    cls = labels()
    splits = [intra_patient(cls, f, seed=0) for f in range(5)]
    test_n = [set(np.flatnonzero((s == TEST) & (cls == 0))) for s in splits]
    for i in range(5):
        for j in range(i + 1, 5):
            assert not test_n[i] & test_n[j]
    abnormal = cls > 0
    for s in splits[1:]:
        assert np.array_equal(s[abnormal], splits[0][abnormal])


def test_same_seed_same_split_other_seed_other_split():
    cls = labels()
    assert np.array_equal(intra_patient(cls, 2, 7), intra_patient(cls, 2, 7))
    assert not np.array_equal(intra_patient(cls, 2, 7), intra_patient(cls, 2, 8))


def test_inter_patient_keeps_patients_apart():
    records = np.array([DS1[0]] * 50 + [DS2[0]] * 50)
    cls = np.array(([0] * 45 + [2] * 5) * 2, dtype=np.int8)
    split = inter_patient(cls, records, 0, MITDB.inter_patient)
    assert set(split[records == DS2[0]]) == {TEST}
    assert set(split[records == DS1[0]]) <= {TRAIN, VAL}
    assert np.all(split[(records == DS1[0]) & (cls > 0)] == VAL)
