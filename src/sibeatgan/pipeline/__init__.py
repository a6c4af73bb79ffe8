"""The pipeline: the stages `dvc repro` runs, where outputs go, `mlflow run`."""
