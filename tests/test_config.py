from pathlib import Path

import pytest

from raydistill.config import ConfigError, RunConfig, load_config, parse_overrides

RECIPE_DIR = Path(__file__).resolve().parents[1] / "recipes"
RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.yaml"))


def test_there_are_recipes():
    names = {p.name for p in RECIPES}
    assert {"sst2-cod.yaml", "smoke-cod.yaml"} <= names


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_every_recipe_loads(recipe):
    cfg = load_config(recipe)
    assert isinstance(cfg, RunConfig)
    from raydistill.methods import get_method

    get_method(cfg.method.name).validate(cfg)


def test_overrides_are_typed():
    cfg = load_config(
        None, ["student.alpha=0.5", "experiment.ks=[8,16]", "out_dir=runs/x", "data.test_rows=null"]
    )
    assert cfg.student.alpha == 0.5
    assert cfg.experiment.ks == [8, 16]
    assert cfg.out_dir == "runs/x"
    assert cfg.data.test_rows is None


def test_int_accepted_for_float():
    assert load_config(None, ["student.alpha=1"]).student.alpha == 1.0


def test_unknown_key_names_it_and_lists_known():
    with pytest.raises(ConfigError, match=r"student\.alpah.*known: .*alpha"):
        load_config(None, ["student.alpah=0.5"])


def test_wrong_type_named():
    with pytest.raises(ConfigError, match="student.epochs"):
        load_config(None, ["student.epochs=many"])


def test_bad_override_syntax():
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["student.alpha"])


def test_missing_recipe(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_student_signature_ignores_execution_knobs_only():
    """Reruns reuse students across ZeRO stages/placements, never across learning changes."""
    from raydistill.cluster.ledger import student_signature

    base = load_config(RECIPE_DIR / "sst2-cod.yaml", [])
    sig = student_signature(base, "/t/a")
    same = load_config(
        RECIPE_DIR / "sst2-cod.yaml", ["student.zero_stage=3", "student.placement_strategy=SPREAD"]
    )
    assert student_signature(same, "/t/a") == sig
    assert (
        student_signature(load_config(RECIPE_DIR / "sst2-cod.yaml", ["student.lr=0.5"]), "/t/a")
        != sig
    )
    assert student_signature(base, "/t/b") != sig
    # Pinned before student.precision existed: runs finished then still resume at "auto";
    # bf16 arithmetic is another student.
    assert student_signature(base, "/teacher") == "ee4fcd6ff95f3193"
    bf16 = load_config(RECIPE_DIR / "sst2-cod.yaml", ["student.precision=bf16"])
    assert student_signature(bf16, "/t/a") != sig
    # New generations (another prompt version or generator) retrain the CoD students.
    gen1 = student_signature(base, "/t/a", {"counterfactuals": "gen-1"})
    assert gen1 != student_signature(base, "/t/a", {"counterfactuals": "gen-2"})
    # Every data setting that picks rows changes the result; where files live does not.
    for change in ("data.dev_rows=100", "data.test_rows=50", "data.teacher_train_rows=10"):
        other = load_config(RECIPE_DIR / "sst2-cod.yaml", [change])
        assert student_signature(other, "/t/a") != sig, change
    moved = load_config(RECIPE_DIR / "sst2-cod.yaml", ["data.data_dir=/elsewhere"])
    assert student_signature(moved, "/t/a") == sig


@pytest.mark.parametrize(
    ("override", "new_place"),
    [
        ("generation.rounds=1", "method.counterfactuals"),
        ("experiment.methods=[kd]", "experiment.arms"),
        ("data.human_counterfactuals=true", "method.human_counterfactuals"),
    ],
)
def test_moved_keys_name_their_new_place(override, new_place):
    with pytest.raises(ConfigError, match=rf"has moved to {new_place}"):
        load_config(None, [override])


def test_method_section_is_tagged():
    from raydistill.config import CodConfig

    cfg = load_config(None, ["method.counterfactuals.rounds=3"])
    assert isinstance(cfg.method, CodConfig) and cfg.method.counterfactuals.rounds == 3
    with pytest.raises(ConfigError, match=r"method\.name: 'nope' is not one of cod"):
        load_config(None, ["method.name=nope"])
    with pytest.raises(ConfigError, match=r"unknown key\(s\) method\.rounds"):
        load_config(None, ["method.rounds=3"])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "method.counterfactuals.strategy=paraphrase",
            r"method\.counterfactuals\.strategy: 'paraphrase' is not one of rewrite, swap",
        ),
        ("method.counterfactuals.swap_words=[]", r"method\.counterfactuals\.swap_words"),
        ("method.counterfactuals.swap_words=[3, 0]", r"method\.counterfactuals\.swap_words"),
        ("method.counterfactuals.shown_paragraphs=0", r"counterfactuals\.shown_paragraphs"),
        ("student.pooling=max", r"student\.pooling: 'max' is not one of mean, native"),
        ("teacher.pooling=cls", r"teacher\.pooling"),
        ("teacher.num_cpus=-1", r"teacher\.num_cpus"),
        ("pool.backend=tgi", r"pool\.backend: 'tgi' is not one of vllm, hf, openai"),
        ("out_dir=../../etc/x", r"out_dir: '\.\./\.\./etc/x' climbs out"),
        ("out_dir=runs/../../x", r"climbs out"),
        ("out_dir=/", r"filesystem root"),
        ("out_dir=''", r"out_dir: a folder path is required"),
    ],
)
def test_bad_choices_are_named(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_ordinary_out_dirs_and_uris_pass(tmp_path):
    for ok in ("runs/x", "./runs/x", str(tmp_path / "a" / ".." / "b"), "s3://bucket/run"):
        assert load_config(None, [f"out_dir={ok}"]).out_dir == ok


def test_model_names_are_checked_without_loading_anything(tmp_path):
    from raydistill.registry import UnknownModelError, check_model_name

    for ok in ("all-minilm-l6-v2", "tiny-llama", "google/flan-t5-base", str(tmp_path)):
        check_model_name(ok, "student.backbone")
    for bad in ("nosuchmodel", "", "a/b/c", None):
        with pytest.raises(UnknownModelError, match="student.backbone"):
            check_model_name(bad, "student.backbone")


def test_ledger_append_after_a_torn_line_keeps_every_new_row(tmp_path):
    """A driver killed mid-append leaves a last line with no newline; the next append
    must start a line of its own, or its first row is glued to the torn one and lost."""
    from raydistill.cluster.ledger import Ledger

    led = Ledger(tmp_path)
    led.append([{"job": "a", "signature": "s"}])
    with led.path.open("a") as f:
        f.write('{"job": "b", "sig')  # torn
    led.append([{"job": "c", "signature": "s"}, {"job": "d", "signature": "s"}])
    assert led.done("s") == {"a", "c", "d"}
    assert led.torn == 1
    led.append([{"job": "e", "signature": "s"}])  # a clean end: no blank line added
    assert led.path.read_text().endswith('"d", "signature": "s"}\n{"job": "e", "signature": "s"}\n')


def test_teacher_key_pinned_and_changed_by_bf16_and_batching():
    """Cached teachers stay valid at the defaults (random batches, precision=auto: the key
    was pinned before either field existed); a bf16 teacher and a length-grouped one are
    other teachers."""
    from raydistill.pipelines.tasks import TASKS
    from raydistill.training.teacher import teacher_key

    old = "9097964754244851"
    cfg = load_config(RECIPE_DIR / "sst2-cod.yaml", [])
    assert not cfg.teacher.group_by_length
    assert teacher_key(cfg.data, cfg.teacher, TASKS["sst2"]) == old
    grouped_cfg = load_config(RECIPE_DIR / "sst2-cod.yaml", ["teacher.group_by_length=true"])
    grouped = teacher_key(grouped_cfg.data, grouped_cfg.teacher, TASKS["sst2"])
    assert grouped != old
    bf16 = load_config(RECIPE_DIR / "sst2-cod.yaml", ["teacher.precision=bf16"])
    assert teacher_key(bf16.data, bf16.teacher, TASKS["sst2"]) not in (old, grouped)
    with pytest.raises(ConfigError, match="student.precision"):
        load_config(RECIPE_DIR / "sst2-cod.yaml", ["student.precision=half"])
