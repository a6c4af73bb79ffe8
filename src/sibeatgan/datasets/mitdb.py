"""The MIT-BIH Arrhythmia Database (Moody & Mark 2001; PhysioNet, ODC-By 1.0): the only
place that knows its records, rate, lead, symbols, checksums and inter-patient split."""

from __future__ import annotations

from sibeatgan.datasets.base import Dataset, InterPatient

# the 44 non-paced records (102, 104, 107 and 217 hold paced beats)
NON_PACED_RECORDS = (
    100, 101, 103, 105, 106, 108, 109, 111, 112, 113, 114, 115, 116, 117, 118, 119, 121, 122,
    123, 124, 200, 201, 202, 203, 205, 207, 208, 209, 210, 212, 213, 214, 215, 219, 220, 221,
    222, 223, 228, 230, 231, 232, 233, 234,
)  # fmt: skip

# de Chazal et al. (2004): DS1 trains, DS2 tests
DS1 = (101, 106, 108, 109, 112, 114, 115, 116, 118, 119, 122, 124, 201, 203, 205, 207, 208,
       209, 215, 220, 223, 230)  # fmt: skip
DS2 = (100, 103, 105, 111, 113, 117, 121, 123, 200, 202, 210, 212, 213, 214, 219, 221, 222,
       228, 231, 232, 233, 234)  # fmt: skip

# WFDB beat symbols -> AAMI class (N, S, V, F, Q)
CLASS_OF_SYMBOL = {
    **dict.fromkeys("NLR", 0),
    **dict.fromkeys("AaJSje", 1),
    **dict.fromkeys("VE", 2),
    "F": 3,
    **dict.fromkeys("/fQ", 4),
}

MITDB = Dataset(
    name="mitdb",
    title="MIT-BIH Arrhythmia Database 1.0.0",
    records=NON_PACED_RECORDS,
    fs=360.0,
    lead="MLII",
    class_of_symbol=CLASS_OF_SYMBOL,
    inter_patient=InterPatient(train=DS1, test=DS2, source="de Chazal et al. (2004)"),
    physionet="mitdb",
    checksums="mitdb_sha256.txt",
)
