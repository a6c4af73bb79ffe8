"""One thin entry module per DVC stage, run as `python -m sibeatgan.stages.NAME [-S k=v]`.

dvc.yaml lists as a stage's code dependencies exactly the modules its entry module imports,
directly or not (tests/test_stage_deps.py derives them), so a change to code a stage does not
run (a help text of the `sibeatgan` command line, the study) reruns nothing."""
