from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from ftcompare.cli import app
from ftcompare.config import ConfigError, load_config, parse_config
from ftcompare.matrix import expand
from ftcompare.runs.store import write_json

MINIMAL = {"experiment": "t", "methods": [{"kind": "full"}, {"kind": "lora", "rank": [1, 4, 16], "alpha_lr_product": 2.4e-3}]}


def test_expansion_crosses_methods_ranks_and_seeds():
    config = parse_config({**MINIMAL, "seeds": [0, 1]})
    runs = expand(config)
    assert [r.run_id for r in runs] == [
        "full-s0",
        "full-s1",
        "lora-r1-s0",
        "lora-r4-s0",
        "lora-r16-s0",
        "lora-r1-s1",
        "lora-r4-s1",
        "lora-r16-s1",
    ]


def test_alpha_defaults_to_twice_rank_and_alpha_lr_product_is_held_fixed():
    lora = [r for r in expand(parse_config(MINIMAL)) if r.method == "lora"]
    assert [r.alpha for r in lora] == [2.0, 8.0, 32.0]
    assert [r.alpha * r.lr for r in lora] == pytest.approx([2.4e-3] * 3)


def test_explicit_lr_is_used_as_given():
    config = parse_config({"experiment": "t", "methods": [{"kind": "lora", "rank": 8, "alpha": 16, "lr": 1e-4}]})
    (run,) = expand(config)
    assert (run.rank, run.alpha, run.lr) == (8, 16, 1e-4)


@pytest.mark.parametrize(
    "data, field",
    [
        ({**MINIMAL, "unknown_key": 1}, "unknown_key: unknown key"),
        ({"experiment": "t", "methods": [{"kind": "lora", "rank": 0}]}, "methods.0.rank"),
        ({"experiment": "t", "methods": [{"kind": "lora", "rank": [4, -2]}]}, "methods.0.rank"),
        ({"experiment": "t", "methods": [{"kind": "full", "lr": -1}]}, "methods.0.lr"),
        ({"experiment": "t", "methods": [{"kind": "qqq"}]}, "methods.0"),
        ({"experiment": "t", "methods": []}, "methods"),
        ({"experiment": "t", "methods": [{"kind": "full"}], "training": {"batchsize": 3}}, "training.batchsize: unknown key"),
        (
            {"experiment": "t", "methods": [{"kind": "full"}], "evaluation": {"n_samples": 2, "k": [1, 5]}},
            "evaluation: k: pass@5 needs",
        ),
        ({"experiment": "t", "methods": [{"kind": "full"}, {"kind": "full"}]}, "same run id"),
        ({"experiment": "t", "base": {"model": "builtin:nope"}, "methods": [{"kind": "full"}]}, "base.model"),
        (
            {"experiment": "t", "methods": [{"kind": "lora", "lr": 1e-3, "alpha_lr_product": 1e-2}]},
            "either lr or alpha_lr_product",
        ),
        ({"experiment": "a b", "methods": [{"kind": "full"}]}, "experiment"),
        ({"experiment": "t", "methods": [{"kind": "full"}], "evaluation": {"compile": True}}, "compile: needs cache: static"),
        (
            {"experiment": "t", "methods": [{"kind": "full"}], "evaluation": {"backend": "continuous", "round_tokens": 64}},
            "backend: continuous schedules",
        ),
        ({"experiment": "t", "methods": [{"kind": "full"}], "evaluation": {"backend": "tgi"}}, "evaluation.backend"),
        ({"experiment": "t", "methods": [{"kind": "full"}], "evaluation": {"round_tokens": 0}}, "evaluation.round_tokens"),
        (
            {"experiment": "t", "methods": [{"kind": "full"}], "evaluation": {"round_tokens": 8, "cache": "static"}},
            "round_tokens: decoding in rounds",
        ),
        (
            {"experiment": "t", "methods": [{"kind": "full"}], "evaluation": {"robustness": {"suites": ["nope"]}}},
            "unknown suites ['nope']",
        ),
        (
            {"experiment": "t", "methods": [{"kind": "full"}], "evaluation": {"robustness": {"perturbations": ["typo"]}}},
            "evaluation.robustness.perturbations.0",
        ),
        ({"experiment": "t", "methods": [{"kind": "full"}], "base": {"dtype": "float16"}}, "training.master_weights: fp32"),
        ({"experiment": "t", "methods": [{"kind": "full"}], "training": {"master_weights": "fp8"}}, "training.master_weights"),
    ],
)
def test_invalid_configs_name_the_field(data, field):
    with pytest.raises(ConfigError) as error:
        parse_config(data, source="study.yaml")
    message = str(error.value)
    assert message.startswith("study.yaml: ")
    assert field in message
    assert "\n" not in message


PROBLEM = '{"prompt": "def f(x):\\n", "completion": "    return x\\n", "tests": ["assert f(1) == 1"]}\n'


def test_missing_data_file_is_named(tmp_path):
    (tmp_path / "test.jsonl").write_text(PROBLEM)
    path = tmp_path / "study.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "experiment": "t",
                "methods": [{"kind": "full"}],
                "task": {"kind": "jsonl", "train": "missing.jsonl", "test": "test.jsonl"},
            }
        )
    )
    with pytest.raises(ConfigError, match=r"task\.train: file not found: .*missing\.jsonl"):
        load_config(path)


def test_relative_data_paths_resolve_against_the_config(tmp_path):
    for name in ("train.jsonl", "test.jsonl"):
        (tmp_path / name).write_text(PROBLEM)
    path = tmp_path / "study.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "experiment": "t",
                "methods": [{"kind": "full"}],
                "task": {"kind": "jsonl", "train": "train.jsonl", "test": "test.jsonl"},
            }
        )
    )
    assert load_config(path).task.train == tmp_path / "train.jsonl"


@pytest.mark.parametrize("content, expected", [("methods: [", "not valid YAML"), ("- 1\n- 2\n", "must be a mapping")])
def test_unreadable_files_fail_clearly(tmp_path, content, expected):
    path = tmp_path / "study.yaml"
    path.write_text(content)
    with pytest.raises(ConfigError, match=expected):
        load_config(path)


def test_cli_bad_config_exits_nonzero_with_one_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"experiment": "t", "methods": [{"kind": "lora", "rank": 0}]}))
    result = CliRunner().invoke(app, ["run", str(path)])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "methods.0.rank" in lines[0]


def test_cli_dry_run_prints_the_matrix_and_trains_nothing(tmp_path):
    quickstart = Path(__file__).parents[1] / "examples" / "quickstart.yaml"
    result = CliRunner().invoke(app, ["run", str(quickstart), "--dry-run", "--output", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "lora-r16-s0" in result.output and "full-s0" in result.output
    assert not any(tmp_path.iterdir())
    assert "progress" not in result.output  # nothing to resume


def test_cli_dry_run_over_an_experiment_folder_shows_each_runs_progress(tmp_path):
    quickstart = Path(__file__).parents[1] / "examples" / "quickstart.yaml"
    runs = expand(load_config(quickstart))
    write_json(tmp_path / "quickstart" / runs[0].run_id / "done.json", {})
    write_json(tmp_path / "quickstart" / runs[1].run_id / "train.json", {})
    write_json(tmp_path / "quickstart" / runs[3].run_id / "done.json", {})  # finished under another config
    write_json(tmp_path / "quickstart" / runs[3].run_id / "run.json", {"fingerprint": "another"})
    result = CliRunner(env={"COLUMNS": "200"}).invoke(app, ["run", str(quickstart), "--dry-run", "--output", str(tmp_path)])
    assert result.exit_code == 0, result.output
    rows = {
        line.split("│")[1].strip(): line.split("│")[-2].strip() for line in result.output.splitlines() if line.startswith("│")
    }
    assert rows[runs[0].run_id] == "done" and rows[runs[1].run_id] == "weights lost"
    assert rows[runs[2].run_id] == "not started" and rows[runs[3].run_id] == "another config's"
    assert f"1 of {len(runs)} runs done" in result.output


def test_sweep_axes_expand_and_name_only_the_axes_that_vary():
    config = parse_config(
        {
            "experiment": "t",
            "training": {"data_fraction": [0.5, 1.0]},
            "methods": [
                {"kind": "full"},
                {"kind": "rslora", "rank": 4, "alpha": [4, 16], "alpha_lr_product": 1e-2},
                {"kind": "lora", "rank": 8, "layer_fraction": [0.25, 1.0]},
            ],
        }
    )
    ids = [r.run_id for r in expand(config)]
    assert ids == [
        "full-d0.5-s0",
        "full-d1-s0",
        "rslora-r4-a4-d0.5-s0",
        "rslora-r4-a16-d0.5-s0",
        "rslora-r4-a4-d1-s0",
        "rslora-r4-a16-d1-s0",
        "lora-r8-l25-d0.5-s0",
        "lora-r8-l100-d0.5-s0",
        "lora-r8-l25-d1-s0",
        "lora-r8-l100-d1-s0",
    ]
    runs = {r.run_id: r for r in expand(config)}
    rs = runs["rslora-r4-a16-d1-s0"]
    assert rs.scaling == pytest.approx(16 / 2) and rs.lr == pytest.approx(1e-2 / 16) and rs.data_fraction == 1.0
    assert runs["lora-r8-l25-d0.5-s0"].scaling == pytest.approx(2.0) and runs["lora-r8-l25-d0.5-s0"].layer_fraction == 0.25
    assert runs["full-d0.5-s0"].scaling is None and "50% data" in runs["full-d0.5-s0"].label


@pytest.mark.parametrize("kind", ["lora", "qlora", "dora", "rslora", "pissa"])
def test_every_adapter_kind_is_a_method_with_its_own_run_ids(kind):
    (run,) = expand(parse_config({"experiment": "t", "methods": [{"kind": kind, "rank": 4}]}))
    assert (run.run_id, run.method, run.is_adapter) == (f"{kind}-r4-s0", kind, True)


@pytest.mark.parametrize(
    "data, field",
    [
        ({"experiment": "t", "methods": [{"kind": "lora", "alpha": [8, 0]}]}, "methods.0.alpha: alpha must be positive"),
        ({"experiment": "t", "methods": [{"kind": "dora", "layer_fraction": 1.5}]}, "methods.0.layer_fraction"),
        ({"experiment": "t", "methods": [{"kind": "full"}], "training": {"data_fraction": [0.5, 0]}}, "training.data_fraction"),
        (
            {"experiment": "t", "methods": [{"kind": "full"}], "task": {"kind": "generated", "families": ["add", "nope"]}},
            "task.families: unknown families ['nope']",
        ),
        (
            {"experiment": "t", "methods": [{"kind": "full"}], "sequence": [{"name": "a", "task": {"kind": "generated"}}]},
            "sequence: a sequential study needs at least two tasks",
        ),
        (
            {
                "experiment": "t",
                "methods": [{"kind": "full"}],
                "task": {"kind": "generated"},
                "sequence": [{"name": "a", "task": {"kind": "generated"}}, {"name": "b", "task": {"kind": "generated"}}],
            },
            "give either task or sequence",
        ),
        (
            {
                "experiment": "t",
                "methods": [{"kind": "full"}],
                "sequence": [{"name": "a", "task": {"kind": "generated"}}, {"name": "a", "task": {"kind": "generated"}}],
            },
            "task names must be distinct",
        ),
        (
            {
                "experiment": "t",
                "methods": [{"kind": "full"}],
                "evaluation": {"robustness": {"suites": ["test"]}},
                "sequence": [{"name": "a", "task": {"kind": "generated"}}, {"name": "b", "task": {"kind": "generated"}}],
            },
            "evaluation.robustness.suites: unknown suites ['test']",
        ),
        (
            {"experiment": "t", "methods": [{"kind": "full"}], "analyses": {"intervene": {"lambdas": [1, -0.5]}}},
            "analyses.intervene.lambdas",
        ),
    ],
)
def test_invalid_sweeps_sequences_and_analyses_name_the_field(data, field):
    with pytest.raises(ConfigError) as error:
        parse_config(data, source="study.yaml")
    assert field in str(error.value)


def test_a_sequence_names_its_suites_by_task_and_trains_on_the_last_task_last():
    config = parse_config(
        {
            "experiment": "t",
            "methods": [{"kind": "full"}],
            "sequence": [
                {"name": "ints", "task": {"kind": "generated", "families": ["add", "sub"]}},
                {"name": "strings", "task": {"kind": "generated", "families": ["str_upper"], "n_ood": 10}},
            ],
        }
    )
    assert [s.name for s in config.stages] == ["ints", "strings"]
    assert config.suite_names == ["ints/test", "ints/ood", "strings/test", "strings/ood"]
    assert config.primary_suite == "strings/test"
    single = parse_config(MINIMAL)
    assert [s.name for s in single.stages] == ["task"] and single.primary_suite == "test"


@pytest.mark.parametrize(
    "run_id, axes, group",
    [
        ("lora-r4-a16-x10-s0", ("rank",), "lora-a16-x10"),
        ("lora-r4-a16-x10-s0", ("lr_multiplier",), "lora-r4-a16"),
        ("lora-r4-l50-d0.25-s3", ("layer_fraction", "data_fraction"), "lora-r4"),
        ("full-x0.1-s0", ("lr_multiplier",), "full"),
        ("lora-r16-s12", (), "lora-r16"),
    ],
)
def test_a_run_id_without_some_axes_names_the_runs_that_differ_only_along_them(run_id, axes, group):
    from ftcompare.matrix import run_id_without

    assert run_id_without(run_id, *axes) == group


MBPP = {"kind": "mbpp", "data": None, "format": "chat"}


@pytest.mark.parametrize(
    "overrides, field, message",
    [
        ({"task": {**MBPP, "train_split": "test"}}, "task.train_split", "training on the test split leaks it"),
        ({"task": {**MBPP, "validation_split": "test"}}, "task.validation_split", "choosing learning rates on 'test'"),
        (
            {"task": {**MBPP, "eval_split": "validation", "validation_split": "validation"}},
            "task.validation_split",
            "the split that is reported",
        ),
        ({"task": {**MBPP, "validation_split": "train"}}, "task.validation_split", "is also the train_split"),
        (
            {"task": {**MBPP, "train_split": "validation", "eval_split": "validation"}},
            "task.eval_split",
            "is also the train_split",
        ),
        ({"training": {"select_lr_on": "test"}}, "training.select_lr_on", "choosing learning rates on 'test'"),
        (
            {"task": {**MBPP, "validation_split": "validation"}, "training": {"select_lr_on": "test"}},
            "training.select_lr_on",
            "a test suite that is reported",
        ),
        (
            {"sequence": [{"name": "a", "task": {"kind": "generated"}}, {"name": "b", "task": {**MBPP, "train_split": "test"}}]},
            "sequence.1.task.train_split",
            "leaks",
        ),
        (
            {
                "sequence": [{"name": "a", "task": {"kind": "generated"}}, {"name": "b", "task": {"kind": "generated"}}],
                "training": {"select_lr_on": "b/test"},
            },
            "training.select_lr_on",
            "choosing learning rates on 'b/test'",
        ),
    ],
)
def test_leaking_the_test_split_into_training_or_selection_is_refused(overrides, field, message):
    with pytest.raises(ConfigError) as error:
        parse_config({"experiment": "t", "methods": [{"kind": "full"}], **overrides}, source="study.yaml")
    assert str(error.value).startswith(f"study.yaml: {field}: ") and message in str(error.value), str(error.value)
    assert "\n" not in str(error.value)


def test_the_mbpp_study_layout_is_accepted():
    config = parse_config(
        {
            "experiment": "t",
            "methods": [{"kind": "full"}],
            "training": {"select_lr_on": "validation"},
            "task": {**MBPP, "train_split": "train", "eval_split": "test", "validation_split": "validation"},
        }
    )
    assert config.training.select_lr_on == "validation"


def test_a_jsonl_suite_that_is_the_train_file_is_refused(tmp_path):
    (tmp_path / "train.jsonl").write_text(PROBLEM)
    path = tmp_path / "study.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "experiment": "t",
                "methods": [{"kind": "full"}],
                "task": {"kind": "jsonl", "train": "train.jsonl", "test": "./train.jsonl"},
            }
        )
    )
    with pytest.raises(ConfigError, match=r"study\.yaml: task\.test: .*train\.jsonl is also the train file"):
        load_config(path)


def test_a_leaking_config_fails_the_cli_in_one_line(tmp_path):
    path = tmp_path / "leak.yaml"
    path.write_text(yaml.safe_dump({"experiment": "t", "methods": [{"kind": "full"}], "training": {"select_lr_on": "test"}}))
    result = CliRunner().invoke(app, ["run", str(path), "--dry-run"])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and f"{path}: training.select_lr_on:" in lines[0]


def test_evaluating_every_learning_rate_needs_a_choice_to_mark_and_fails_in_one_line(tmp_path):
    training = {"lr_multipliers": [1, 10], "evaluate_all_lrs": True}
    path = tmp_path / "all-rates.yaml"
    path.write_text(yaml.safe_dump({**MINIMAL, "training": training}))
    result = CliRunner().invoke(app, ["run", str(path), "--dry-run"])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert f"{path}: training.evaluate_all_lrs: needs training.select_lr_on" in " ".join(result.output.split())
    config = parse_config({**MINIMAL, "training": {**training, "select_lr_on": "ood"}})
    assert config.training.evaluate_all_lrs and not parse_config(MINIMAL).training.evaluate_all_lrs


@pytest.mark.parametrize("betas", [[0.9, 1.0], [-0.1, 0.9], [0.9]])
def test_adam_betas_are_checked(betas):
    with pytest.raises(ConfigError, match="training.adam_betas"):
        parse_config({"experiment": "t", "methods": [{"kind": "full"}], "training": {"adam_betas": betas}})


def test_the_recipe_fields_are_documented_in_the_schema():
    from ftcompare.config import TrainingConfig

    fields = TrainingConfig.model_fields
    for name in ("schedule", "warmup_ratio", "weight_decay", "adam_betas", "adam_eps"):
        assert fields[name].description, name
    assert "Illusion-of-Equivalence" in fields["schedule"].description and "0.06" in fields["warmup_ratio"].description
    assert fields["adam_betas"].default == (0.9, 0.95)  # what train/loop.py fixed before: recorded runs stay comparable


def test_the_causal_tests_control_is_on_by_default_documented_and_checked():
    from ftcompare.config import InterveneConfig

    assert InterveneConfig().control is True
    assert "not intruders" in InterveneConfig.model_fields["control"].description
    study = {"experiment": "t", "methods": [{"kind": "full"}]}
    config = parse_config({**study, "analyses": {"intervene": {"control": False}}})
    assert config.analyses.intervene.control is False
    for wrong in ("maybe", [True]):
        with pytest.raises(ConfigError, match="analyses.intervene.control"):
            parse_config({**study, "analyses": {"intervene": {"control": wrong}}}, source="study.yaml")


EXAMPLES = Path(__file__).parents[1] / "examples"
PACKAGE_QUICKSTART = Path(__file__).parents[1] / "src" / "ftcompare" / "configs" / "quickstart.yaml"
RECIPE_KEYS = {"schedule", "warmup_ratio", "weight_decay", "adam_betas", "adam_eps"}


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")) + [PACKAGE_QUICKSTART], ids=lambda p: p.name)
def test_every_example_writes_its_recipe_out(path):
    training = yaml.safe_load(path.read_text())["training"]
    assert RECIPE_KEYS <= set(training), sorted(RECIPE_KEYS - set(training))


def test_the_smollm2_study_trains_with_the_papers_recipe_and_the_demo_keeps_its_own():
    for name in ("smollm2-mbpp.yaml", "smollm2-mbpp-cpu.yaml"):
        training = yaml.safe_load((EXAMPLES / name).read_text())["training"]
        assert (training["schedule"], training["warmup_ratio"]) == ("linear", 0.06), name
    quickstart = yaml.safe_load(PACKAGE_QUICKSTART.read_text())["training"]
    assert (quickstart["schedule"], quickstart["warmup_ratio"]) == ("cosine", 0.05)


def test_the_demo_config_and_the_example_are_one_file():
    example = EXAMPLES / "quickstart.yaml"
    assert example.read_bytes() == PACKAGE_QUICKSTART.read_bytes()
    assert example.resolve() == PACKAGE_QUICKSTART.resolve()  # a link: there is one file to edit


def test_a_config_that_cannot_be_decoded_names_the_byte(tmp_path):
    path = tmp_path / "study.yaml"
    path.write_bytes(b"experiment: t\nmethods: [{kind: full}]\nnote: \xe9t\xe9\n")
    with pytest.raises(ConfigError, match=r"study\.yaml: not UTF-8 text \(byte 0xe9 on line 3\)"):
        load_config(path)
