"""What the pipeline needs to know about an ECG database: its records, their rate and lead,
how its beat symbols map to the AAMI classes, its checksums and its inter-patient split."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources

CLASSES = ("N", "S", "V", "F", "Q")  # AAMI beat classes: a dataset maps its symbols onto these


@dataclass(frozen=True)
class InterPatient:
    """Patients whose beats train and validate (`train`), and those kept for test (`test`)."""

    train: tuple[int, ...]
    test: tuple[int, ...]
    source: str  # who defined the split


@dataclass(frozen=True)
class Dataset:
    """One database of WFDB records (`<record>.hea/.dat` and beat annotations)."""

    name: str  # what `preprocess.dataset` names
    title: str  # for messages: "MIT-BIH Arrhythmia Database 1.0.0"
    records: tuple[int, ...]  # the records `preprocess.records` defaults to
    fs: float  # the records' sampling rate (Hz); beats are resampled to the networks' rate
    lead: str  # the lead beats are cut from (channel 0); the record's next lead is channel 1
    class_of_symbol: Mapping[str, int]  # annotation symbol -> CLASSES index; others are skipped
    annotator: str = "atr"  # annotation file extension
    inter_patient: InterPatient | None = None  # data.split=inter needs one
    physionet: str | None = None  # PhysioNet database name, for downloads
    checksums: str | None = None  # "sha256  file" list shipped in this package

    def digests(self) -> dict[str, str]:
        """File name -> sha256 of every file of the database (empty without a list)."""
        if self.checksums is None:
            return {}
        text = resources.files(__package__).joinpath(self.checksums).read_text()
        pairs = (line.split() for line in text.splitlines() if line.strip())
        return {name: digest for digest, name in pairs}
