import pytest
from conftest import REPO

from sibeatgan.config import ConfigError, Params, load_params, with_overrides


def test_repo_params_load_with_the_44_records():
    p = load_params(REPO / "params.yaml")
    assert len(p.preprocess.records) == 44
    assert not {102, 104, 107, 217} & set(p.preprocess.records)
    assert p.data.fold == 0 and p.student.kd is True


def test_overrides_are_typed():
    p = with_overrides(
        Params(),
        ["train.epochs=7", "student.kd=false", "train.lr=2e-4", "preprocess.records=[100, 101]"],
    )
    assert p.train.epochs == 7 and p.student.kd is False
    assert p.train.lr == pytest.approx(2e-4) and p.preprocess.records == [100, 101]


@pytest.mark.parametrize("text", ["True", "true", "1", "yes"])
def test_boolean_strings_parse(text):
    assert with_overrides(Params(), [f"student.fd={text}"]).student.fd is True


@pytest.mark.parametrize(
    "override,message",
    [
        ("train.epoch=3", "unknown parameter.*train.epoch"),
        ("train.epochs=two", "train.epochs must be an integer"),
        ("data.fold=5", "data.fold must be 0-4"),
        ("student.kd=maybe", "student.kd must be true or false"),
        ("train.selection=best", "train.selection must be"),
        ("train.w_adv=-0.5", "train.w_adv must be >= 0"),
        ("train.d_noise=0.1", "unknown parameter.*train.d_noise"),
        ("preprocess.qrs_detector=pan", "preprocess.qrs_detector must be xqrs or hamilton"),
        ("epochs", "must look like section.key=value"),
    ],
)
def test_bad_values_are_named(override, message):
    with pytest.raises(ConfigError, match=message):
        with_overrides(Params(), [override])


def test_init_from_teacher_needs_same_width():
    with pytest.raises(ConfigError, match="width_mult 1.0"):
        with_overrides(Params(), ["student.init_from_teacher=true", "student.width_mult=0.5"])


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_params(tmp_path / "params.yaml")


def test_params_yaml_is_the_one_source_of_defaults():
    """The code's defaults are params.yaml's values: no second set of defaults to drift."""
    from pathlib import Path

    assert Params() == load_params(Path(__file__).resolve().parents[1] / "params.yaml")


def test_student_epochs_default_and_runs_written_before_the_knob():
    """A student trains student.epochs (0 = the teacher's train.epochs); params written before
    the knob existed read as 0, the training they had, so their runs stay current."""
    from sibeatgan.config import params_from_dict, role_train
    from sibeatgan.tracking import same_recipe

    p = Params()
    assert role_train(p, "teacher").epochs == p.train.epochs
    assert role_train(p, "student").epochs == p.student.epochs != p.train.epochs
    old = p.to_dict()
    del old["student"]["epochs"]
    assert params_from_dict(old).student.epochs == p.train.epochs  # trained as the teacher
    assert role_train(params_from_dict(old), "student").epochs == p.train.epochs
    as_teacher = with_overrides(p, [f"student.epochs={p.train.epochs}"])
    assert same_recipe(old, as_teacher, "student")
    assert not same_recipe(old, p, "student")
    with pytest.raises(ConfigError, match="student.epochs must be at least 1"):
        with_overrides(p, ["student.epochs=0"])


PARAMS_TEXT = """\
seed: 0
preprocess:
  records: [100]
  taps: 109
{extra}
"""


@pytest.mark.parametrize(
    "extra, message",
    [
        # a duplicated key: YAML keeps the last value, so 119 was preprocessed, silently
        ("  records: [119]", r"key preprocess.records is given twice \(lines 3 and 5\)"),
        # a duplicated section: YAML drops the first one, seed and all
        ("preprocess:\n  taps: 99", r"section preprocess is given twice \(lines 2 and 5\)"),
        ("train:\n  epochs: 3\ntrain:\n  lr: 1.0e-3", r"section train is given twice"),
    ],
)
def test_a_key_or_section_given_twice_is_refused_naming_its_lines(tmp_path, extra, message):
    path = tmp_path / "params.yaml"
    path.write_text(PARAMS_TEXT.format(extra=extra))
    with pytest.raises(ConfigError, match=message) as caught:
        load_params(path)
    assert str(caught.value).startswith(f"{path}: ") and "\n" not in str(caught.value)


def test_a_merge_key_may_repeat_what_it_merges_but_not_a_key_twice(tmp_path):
    """`<<: *base` then `epochs: 5` overrides the merged value (YAML's meaning, kept); a key
    written twice beside it is still refused, with its own lines."""
    path = tmp_path / "params.yaml"
    path.write_text(
        "x: &base\n  epochs: 3\n  lr: 1.0e-3\ntrain:\n  <<: *base\n  epochs: 5\n  lr: 2.0e-4\n"
        "  lr: 3.0e-4\n"
    )
    with pytest.raises(ConfigError, match=r"key train.lr is given twice \(lines 7 and 8\)"):
        load_params(path)


@pytest.mark.parametrize("text", ["", "\n", "# every knob was here\n"])
def test_an_empty_params_file_is_refused_not_read_as_the_defaults(tmp_path, text):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=f"{path} is empty"):
        load_params(path)


def test_runtime_settings_moved_out_of_the_recipe():
    """Old names are refused in one line naming the new one; runs that wrote them read back."""
    from sibeatgan.config import MOVED_KNOBS, ConfigError, Params, params_from_dict, with_overrides

    with pytest.raises(ConfigError, match=r"train.threads is now runtime.threads"):
        with_overrides(Params(), ["train.threads=1"])
    old = Params().to_dict()
    del old["runtime"]
    for name in MOVED_KNOBS:
        section, key = name.split(".")
        if section != "runtime":
            old[section][key] = {"threads": 3, "workers": 5, "log_every": 7}.get(key, "x")
    old["data"]["mitdb_dir"], old["train"]["score_batch_size"] = "m", 9
    runtime = params_from_dict(old).runtime
    assert (runtime.threads, runtime.workers, runtime.log_every) == (3, 5, 7)
    assert (runtime.records_dir, runtime.score_batch_size) == ("m", 9)
    # a runtime setting renamed since (it holds any dataset's records, not only MIT-BIH's)
    with pytest.raises(ConfigError, match=r"^runtime.mitdb_dir is now runtime.records_dir; "):
        with_overrides(Params(), ["runtime.mitdb_dir=d"])
    renamed = {**Params().to_dict(), "runtime": {"mitdb_dir": "d"}}
    assert params_from_dict(renamed).runtime.records_dir == "d"
