"""The dataset seam: every ECG database the pipeline can read, by name. Code outside this
package asks `dataset(name)` for records, rate, lead, class map, checksums and splits; adding
a database is one `Dataset` and one `register` call."""

from __future__ import annotations

from sibeatgan.datasets.base import CLASSES, Dataset, InterPatient
from sibeatgan.datasets.mitdb import MITDB

DEFAULT_DATASET = MITDB.name
_REGISTRY: dict[str, Dataset] = {}


def register(ds: Dataset) -> Dataset:
    """Make `ds` known under its name (a name already taken by another dataset is refused)."""
    known = _REGISTRY.get(ds.name)
    if known is not None and known != ds:
        raise ValueError(f"dataset name {ds.name!r} is taken; pick another name")
    _REGISTRY[ds.name] = ds
    return ds


def dataset(name: str) -> Dataset:
    """The dataset of that name; an unknown name is a one-line error listing the known ones."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown dataset {name!r}; known: {', '.join(sorted(_REGISTRY))}"
        ) from None


def names() -> list[str]:
    return sorted(_REGISTRY)


register(MITDB)

__all__ = ["CLASSES", "DEFAULT_DATASET", "Dataset", "InterPatient", "dataset", "names", "register"]
