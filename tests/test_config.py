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
    assert params_from_dict(old).student.epochs == 0
    assert role_train(params_from_dict(old), "student").epochs == p.train.epochs
    as_teacher = with_overrides(p, [f"student.epochs={p.train.epochs}"])
    assert same_recipe(old, as_teacher, "student")
    assert not same_recipe(old, p, "student")
    with pytest.raises(ConfigError, match="student.epochs must be >= 0"):
        with_overrides(p, ["student.epochs=-1"])
