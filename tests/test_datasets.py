"""The dataset seam: MIT-BIH is one `Dataset`, and a second database defined in a test (its
own records, rate, lead names, annotation file and class map) goes through preprocess, split,
a 1-epoch training and detection without any other code knowing of it."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import PAPER_OPTIMISER, prepare, write_record

from sibeatgan.config import FS, ConfigError, Params, with_overrides
from sibeatgan.data.preprocess import load_data
from sibeatgan.data.split import TEST, TRAIN
from sibeatgan.datasets import CLASSES, Dataset, InterPatient, dataset, register
from sibeatgan.datasets.mitdb import DS1, DS2, MITDB, NON_PACED_RECORDS

SYNTH_FS = 250
SYNTH = Dataset(
    name="synthdb",
    title="a synthetic two-lead database",
    records=(1, 2, 3),
    fs=SYNTH_FS,
    lead="ECG1",
    class_of_symbol={"N": 0, "A": 1, "V": 2},  # F and Q beats of these records are skipped
    annotator="ann",
    inter_patient=InterPatient(train=(1, 2), test=(3,), source="this test"),
)


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory):
    register(SYNTH)
    folder = tmp_path_factory.mktemp("synthdb")
    rng = np.random.default_rng(5)
    for record in SYNTH.records:
        symbols = list(rng.choice(["N"] * 8 + ["A", "V", "F"], 120))
        write_record(
            folder,
            str(record),
            symbols,
            seconds=121,
            seed=record,
            fs=SYNTH_FS,
            lead_names=("ECG1", "ECG2"),
            annotator=SYNTH.annotator,
        )
    return folder


def synth_params(folder, tmp_path, *extra: str) -> Params:
    return with_overrides(
        Params(),
        [
            "preprocess.dataset=synthdb",
            "preprocess.records=[1, 2, 3]",
            f"runtime.records_dir={folder}",
            f"runtime.beats_dir={tmp_path / 'beats'}",
            f"runtime.prepared_dir={tmp_path / 'prepared'}",
            "runtime.workers=2",  # the dataset travels to the worker processes
            "runtime.threads=1",
            "model.width=4",
            "model.nz=8",
            "train.epochs=1",
            "train.batch_size=16",
            *PAPER_OPTIMISER,
            *extra,
        ],
    )


def test_mitdb_is_the_default_and_holds_what_mitdb_means():
    assert Params().preprocess.dataset == "mitdb"
    assert Params().preprocess.records == list(NON_PACED_RECORDS) == list(MITDB.records)
    assert (MITDB.fs, MITDB.lead, MITDB.annotator) == (360.0, "MLII", "atr")
    assert len(MITDB.digests()) == 145
    assert set(DS1).isdisjoint(DS2) and set(DS1) | set(DS2) == set(NON_PACED_RECORDS)
    assert set(MITDB.class_of_symbol.values()) == set(range(len(CLASSES)))


def test_an_unknown_dataset_is_one_line_listing_the_known():
    with pytest.raises(ValueError, match="unknown dataset 'nope'; known: .*mitdb"):
        dataset("nope")
    with pytest.raises(ConfigError, match="preprocess.dataset must be one of .*mitdb"):
        with_overrides(Params(), ["preprocess.dataset=nope"])
    with pytest.raises(ValueError, match="taken"):
        register(Dataset("mitdb", "another", (1,), 250.0, "I", {"N": 0}))


def test_a_second_dataset_preprocesses_splits_and_trains_through_the_seam(
    synth_dir, tmp_path, mlflow_store
):
    from sibeatgan.detection.records import read_for_detection
    from sibeatgan.evaluation.detector import load_detector
    from sibeatgan.pipeline.train import train_model

    p = synth_params(synth_dir, tmp_path)
    prepare(p)
    data = load_data(p)
    # 120 beats a record, one a second at 250 Hz: resampled to the networks' rate, windows of
    # 320 samples there; F beats are outside this dataset's class map and are skipped
    assert data.beats.shape[1:] == (2, 320)
    assert set(np.unique(data.records)) == {1, 2, 3}
    assert set(np.unique(data.classes)) <= {0, 1, 2}
    assert (data.classes == 1).any() and (data.classes == 2).any()
    # beats keep their samples at the record's own rate: one a second, half a second in
    assert (data.samples % SYNTH_FS == SYNTH_FS // 2).all()

    info = train_model(p, "teacher", resume=False)
    assert 0.0 <= info["best_val_auc"] <= 1.0
    folder = tmp_path / "models" / "teacher"
    detector = load_detector(folder / "G.pt", folder / "detector.json")
    assert detector.meta["dataset"] == "synthdb" and detector.dataset is SYNTH
    rec = read_for_detection(str(synth_dir / "3"), detector)  # lead and annotator: the dataset's
    assert rec.lead == "ECG1" and rec.annotated and rec.fs == SYNTH_FS
    assert set(rec.labels) <= {"N", "S", "V", ""} and "V" in rec.labels
    assert FS != SYNTH_FS


def test_the_dataset_names_its_inter_patient_split(synth_dir, tmp_path):
    p = synth_params(synth_dir, tmp_path, "data.split=inter")
    prepare(p)
    data = load_data(p)
    assert set(data.split[data.records == 3]) == {TEST}
    assert TRAIN in set(data.split[data.records == 1])
    no_split = Dataset("synth_nosplit", "no split", (1,), 250.0, "ECG1", {"N": 0})
    register(no_split)
    with pytest.raises(ConfigError, match="data.split=inter needs a dataset with an inter"):
        with_overrides(Params(), ["preprocess.dataset=synth_nosplit", "data.split=inter"])
