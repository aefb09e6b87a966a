"""The command line's conventions: results on stdout, progress and logs on stderr (a plain periodic line when
stderr is not a terminal); exit 1 for a failed run, 2 for a usage or config error; enums for closed choices;
`--version`; dot-list overrides of any config key. Nothing here trains."""

import io
import json
import re
import subprocess
import sys
import types
from importlib.metadata import version
from pathlib import Path
from typing import get_args

import pytest
import yaml
from rich.console import Console
from typer.testing import CliRunner

import ftcompare
from ftcompare import cli
from ftcompare.cli import app
from ftcompare.config import ConfigError, EvaluationConfig, StudyConfig, load_config
from ftcompare.console import step_progress
from ftcompare.overrides import apply_overrides

QUICKSTART = Path(__file__).parents[1] / "examples" / "quickstart.yaml"
WIDE = {"COLUMNS": "200"}  # rich tables and Typer's error panels unwrapped


def _invoke(*args: str, env: dict | None = None):
    return CliRunner(env={**WIDE, **(env or {})}).invoke(app, [str(arg) for arg in args])


def _run_ids(stdout: str) -> list[str]:
    """The first cell of each row of the run matrix table."""
    return [
        line.split("│")[1].strip()
        for line in stdout.splitlines()
        if line.startswith("│") and re.fullmatch(r"(full|lora)\S*-s\d+", line.split("│")[1].strip())
    ]


class StudyMismatch(RuntimeError):
    pass


@pytest.fixture
def study(monkeypatch):
    """A stand-in for `ftcompare.study` (what the CLI imports from it), so these tests exercise the CLI's
    handling of what the study raises without importing, or training with, the real one."""
    module = types.ModuleType("ftcompare.study")
    module.StudyMismatch = StudyMismatch
    module.check_runs_match = lambda config, output: output / config.experiment
    module.run_progress = lambda run, run_dir, config: run_dir.progress
    module.run_study = lambda config, output, worker=None: pytest.fail("the test did not say what run_study does")
    monkeypatch.setitem(sys.modules, "ftcompare.study", module)
    return module


def _usage_error(result, *names: str) -> str:
    """Exit 2, nothing on stdout, one line on stderr: `error: ...` naming each of `names`."""
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert all(name in lines[0] for name in names), lines[0]
    return lines[0]


# --- --version ---


def test_version_prints_the_installed_distributions_version():
    result = _invoke("--version")
    assert result.exit_code == 0, result.output
    assert result.stdout == f"ftcompare {version('ftcompare')}\n"
    assert ftcompare.__version__ == version("ftcompare")


def test_python_dash_m_runs_the_cli():
    result = subprocess.run([sys.executable, "-m", "ftcompare.cli", "--version"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"ftcompare {version('ftcompare')}\n"


# --- streams ---


def test_dry_run_puts_the_matrix_and_cost_on_stdout_and_nothing_of_them_on_stderr(tmp_path):
    result = _invoke("run", QUICKSTART, "--dry-run", "--output", tmp_path)
    assert result.exit_code == 0, result.output
    runs = [run.run_id for run in cli.expand(load_config(QUICKSTART))]
    assert _run_ids(result.stdout) == runs
    assert "run matrix: quickstart" in result.stdout and "estimated cost" in result.stdout
    assert "run matrix" not in result.stderr and "estimated cost" not in result.stderr
    assert not any(run in result.stderr for run in runs)
    assert not any(tmp_path.iterdir())


# --- overrides through the CLI ---


def test_an_override_changes_the_dry_run_matrix(tmp_path):
    baseline = _run_ids(_invoke("run", QUICKSTART, "--dry-run", "--output", tmp_path).stdout)
    doubled = _invoke("run", QUICKSTART, "seeds=[0,1]", "--dry-run", "--output", tmp_path)
    assert doubled.exit_code == 0, doubled.output
    assert sorted(_run_ids(doubled.stdout)) == sorted(baseline + [run.replace("-s0", "-s1") for run in baseline])
    ranks = _invoke("run", QUICKSTART, "--dry-run", "methods.1.rank=[2]", "--output", tmp_path)  # options either side
    assert ranks.exit_code == 0, ranks.output
    assert _run_ids(ranks.stdout) == ["full-s0", "lora-r2-s0"]


@pytest.mark.parametrize(
    "override, names",
    [
        ("training.epochs", ["training.epochs", "KEY=VALUE"]),  # no '='
        ("nokey=1", ["nokey"]),  # unknown key: the schema names it
        ("methods.9.rank=1", ["methods.9.rank", "past the end"]),
        ("training.epochs.x=1", ["training.epochs.x", "not a mapping or a list"]),
        ("training.epochs=", ["training.epochs", "no value"]),
    ],
)
def test_a_bad_override_is_one_line_naming_the_key_and_exit_2(tmp_path, override, names):
    _usage_error(_invoke("run", QUICKSTART, override, "--dry-run", "--output", tmp_path), str(QUICKSTART), *names)


def test_a_config_error_exits_2_in_one_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"experiment": "t", "methods": [{"kind": "lora", "rank": 0}]}))
    _usage_error(_invoke("run", path, "--dry-run"), str(path), "methods.0.rank")
    _usage_error(_invoke("run", tmp_path / "missing.yaml"), "missing.yaml", "not found")


def test_an_unexpected_exception_during_a_run_exits_1_in_one_line(tmp_path, monkeypatch, study):
    def crash(*args, **kwargs):
        raise RuntimeError("the GPU caught fire\nsecond line")

    study.run_study = crash
    monkeypatch.delenv(cli.DEBUG_ENV, raising=False)
    result = _invoke("run", QUICKSTART, "--output", tmp_path)
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit)  # handled, not a crash
    assert "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: RuntimeError: the GPU caught fire second line ({cli.DEBUG_ENV}=1 shows the traceback)"]
    assert "error" not in result.stdout

    debug = _invoke("run", QUICKSTART, "--output", tmp_path, env={cli.DEBUG_ENV: "1"})
    assert debug.exit_code == 1 and "Traceback" in debug.stderr and "crash" in debug.stderr
    assert [line for line in debug.stderr.splitlines() if line.startswith("error:")] == [
        "error: RuntimeError: the GPU caught fire second line"
    ]


def test_an_experiment_folder_of_another_config_exits_2(tmp_path, study):
    def mismatch(*args, **kwargs):
        raise StudyMismatch(f"{tmp_path}/quickstart/full-s0 holds a run of a different config")

    study.run_study = mismatch
    result = _invoke("run", QUICKSTART, "--output", tmp_path)
    assert result.exit_code == 2, result.output
    assert [line for line in result.stderr.splitlines() if line.startswith("error:")] == [
        f"error: {tmp_path}/quickstart/full-s0 holds a run of a different config"
    ]


# --- enums ---


def test_eval_refuses_an_unknown_benchmark_listing_the_choices(tmp_path):
    result = _invoke("eval", "builtin:tiny-code", "--benchmark", "nope", "--output", tmp_path)
    assert result.exit_code == 2
    choices = [choice.value for choice in cli.Benchmark]
    assert {"mbpp", "mbpp-sanitized", "humaneval"} <= set(choices)
    assert "nope" in result.stderr and all(repr(choice) in result.stderr for choice in choices), result.stderr


@pytest.mark.parametrize(
    "benchmark, prompt_format",
    [("humaneval", "zeroshot"), ("humaneval", "austin3shot"), ("mbpp", "completion"), ("mbpp-sanitized", "completion")],
)
def test_eval_refuses_a_format_the_benchmark_has_not(tmp_path, benchmark, prompt_format):
    _usage_error(
        _invoke("eval", "builtin:tiny-code", "-b", benchmark, "--format", prompt_format, "--output", tmp_path),
        "--format",
        benchmark,
        prompt_format,
    )
    assert not any(tmp_path.iterdir())


def test_eval_formats_follow_the_schema():
    assert (
        set(cli.benchmark_formats("mbpp")) == set(cli.benchmark_formats("mbpp-sanitized")) == {"chat", "zeroshot", "austin3shot"}
    )
    assert set(cli.benchmark_formats("humaneval")) == {"chat", "completion"}
    assert {choice.value for choice in cli.PromptFormat} == {"chat", "zeroshot", "austin3shot", "completion"}


def test_eval_help_lists_every_closed_choice_from_the_schema():
    result = _invoke("eval", "--help")
    assert result.exit_code == 0, result.output
    assert [c.value for c in cli.Backend] == list(get_args(EvaluationConfig.model_fields["backend"].annotation))
    assert [c.value for c in cli.Cache] == list(get_args(EvaluationConfig.model_fields["cache"].annotation))
    assert [c.value for c in cli.Device] == list(get_args(StudyConfig.model_fields["device"].annotation))
    for enum in (cli.Benchmark, cli.PromptFormat, cli.Backend, cli.Cache, cli.Device):
        assert "|".join(choice.value for choice in enum) in result.stdout, enum


def test_eval_refuses_a_backend_outside_the_schema(tmp_path):
    result = _invoke("eval", "builtin:tiny-code", "-b", "mbpp", "--backend", "tgi", "--output", tmp_path)
    assert result.exit_code == 2 and all(f"'{b}'" in result.stderr for b in ("generate", "continuous", "vllm"))


def test_verify_benchmark_refuses_an_unknown_benchmark_listing_the_choices():
    result = _invoke("verify-benchmark", "nope")
    assert result.exit_code == 2
    assert all(repr(choice.value) in result.stderr for choice in cli.Benchmark), result.stderr
    assert {"mbpp", "quixbugs", "humaneval"} <= {choice.value for choice in cli.Benchmark}


# --- progress when stderr is not a terminal ---


def test_plain_progress_lines_when_not_a_terminal(monkeypatch):
    monkeypatch.setenv("FTCOMPARE_PROGRESS_S", "0")  # a line at every step
    log = io.StringIO()
    console = Console(file=log, width=200)
    assert not console.is_terminal
    with step_progress(console, "  train", 4) as advance:
        advance(1, loss=2.0)
        advance(loss=1.5)  # no step: one more
        advance(4)
    lines = log.getvalue().splitlines()
    assert len(lines) == 3, lines
    assert re.fullmatch(r"  train 1/4 loss 2\.000 \(25%, \d+ s elapsed, ~\d+ s left\)", lines[0]), lines[0]
    assert re.fullmatch(r"  train 2/4 loss 1\.500 \(50%, \d+ s elapsed, ~\d+ s left\)", lines[1]), lines[1]
    assert re.fullmatch(r"  train 4/4 loss 1\.500 \(100%, \d+ s elapsed\)", lines[2]), lines[2]  # done: no line repeated


def test_plain_progress_is_periodic_with_one_line_at_the_end(monkeypatch):
    monkeypatch.delenv("FTCOMPARE_PROGRESS_S", raising=False)  # the default: every 30 s
    times = iter([100.0, 110.0, 131.0, 140.0, 161.0, 165.0, 170.0])  # start, 5 steps, the end
    log = io.StringIO()
    with step_progress(Console(file=log, width=200), "  test greedy", 10, clock=lambda: next(times)) as advance:
        for _ in range(5):
            advance()
    assert log.getvalue().splitlines() == [
        "  test greedy 2/10 (20%, 31 s elapsed, ~124 s left)",
        "  test greedy 4/10 (40%, 61 s elapsed, ~92 s left)",
        "  test greedy 5/10 (50%, 70 s elapsed, ~70 s left)",
    ]


def test_a_terminal_gets_the_bar_not_plain_lines(monkeypatch):
    monkeypatch.setenv("FTCOMPARE_PROGRESS_S", "0")
    log = io.StringIO()
    console = Console(file=log, force_terminal=True, width=120)
    with step_progress(console, "  train", 2) as advance:
        advance(1, loss=1.0)
        advance(2, loss=0.5)
    assert "elapsed" not in log.getvalue() and "2/2" in log.getvalue()


# --- apply_overrides ---

DATA = {
    "training": {"epochs": 5, "adam_betas": [0.9, 0.95]},
    "methods": [{"kind": "full"}, {"kind": "lora", "rank": [1, 4]}],
    "evaluation": {"forgetting": None},
    "seeds": [0],
}


def test_overrides_set_nested_keys_and_list_items_in_a_new_dict():
    before = json.dumps(DATA)
    result = apply_overrides(
        DATA,
        ["training.epochs=3", "methods.1.rank=[2, 8]", "training.adam_betas.1=0.99", "seeds=[0,1]", "training.epochs=4"],
        source="cfg.yaml (command line)",
    )
    assert result["training"] == {"epochs": 4, "adam_betas": [0.9, 0.99]}  # a later override wins
    assert result["methods"] == [{"kind": "full"}, {"kind": "lora", "rank": [2, 8]}]
    assert result["seeds"] == [0, 1]
    assert json.dumps(DATA) == before  # the input is left as it was


def test_overrides_create_missing_mapping_keys():
    result = apply_overrides(DATA, ["evaluation.forgetting.n_chunks=8", "analyses.spectral.k=4", "experiment=x"], source="s")
    assert result["evaluation"]["forgetting"] == {"n_chunks": 8}  # a null section becomes a mapping
    assert result["analyses"] == {"spectral": {"k": 4}} and result["experiment"] == "x"


@pytest.mark.parametrize(
    "text, value",
    [
        ("3", 3),
        ("1.5", 1.5),
        ("[1,4]", [1, 4]),
        ("null", None),
        ("'text'", "text"),
        ("text", "text"),
        ("'3'", "3"),
        ("true", True),
        ('""', ""),
        ("{a: 1}", {"a": 1}),
        ("a=b", "a=b"),
    ],
)
def test_override_values_are_read_as_yaml(text, value):
    assert apply_overrides({}, [f"key={text}"], source="s")["key"] == value


@pytest.mark.parametrize(
    "item, field, message",
    [
        ("training.epochs", "training.epochs", "not KEY=VALUE"),
        ("=3", None, "no key"),
        ("training.epochs=", "training.epochs", "no value"),
        ("training.epochs=  ", "training.epochs", "no value"),
        ("training..epochs=3", "training..epochs", "empty segment"),
        ("methods.9.rank=1", "methods.9.rank", "index 9 is past the end of methods (2 items)"),
        ("methods.2=1", "methods.2", "index 2 is past the end of methods"),
        ("methods.first.rank=1", "methods.first.rank", "methods is a list"),
        ("training.epochs.x=1", "training.epochs.x", "training.epochs is 5, not a mapping or a list"),
        ("seeds.0.x=1", "seeds.0.x", "seeds.0 is 0, not a mapping or a list"),
        ("training.epochs=[1", "training.epochs", "not valid YAML"),
    ],
)
def test_bad_overrides_raise_a_config_error_naming_the_key(item, field, message):
    with pytest.raises(ConfigError) as caught:
        apply_overrides(DATA, [item], source="cfg.yaml (command line)")
    error = caught.value
    assert error.field == field and message in error.message, str(error)
    assert str(error).startswith("cfg.yaml (command line): ") and "\n" not in str(error)


def test_relative_data_paths_in_overrides_resolve_against_the_configs_folder(tmp_path, monkeypatch):
    problem = {"prompt": "def f(x):\n", "completion": "    return x\n", "tests": ["assert f(1) == 1"]}
    folder = tmp_path / "study"
    folder.mkdir()
    for name in ("train.jsonl", "test.jsonl", "other.jsonl"):
        (folder / name).write_text(json.dumps({**problem, "task_id": name}) + "\n")
    path = folder / "study.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "experiment": "t",
                "methods": [{"kind": "full"}],
                "task": {"kind": "jsonl", "train": "train.jsonl", "test": "test.jsonl"},
            }
        )
    )
    monkeypatch.chdir(tmp_path)  # not the config's folder
    config = load_config(path, overrides=["task.test=other.jsonl"])
    assert Path(config.task.test) == folder / "other.jsonl"


def test_eval_of_a_benchmark_that_needs_its_file_says_so(tmp_path):
    result = _invoke("eval", "builtin:tiny-code", "-b", "quixbugs", "--output", tmp_path)
    assert result.exit_code == 2 and "data: Field required" in result.stderr


def test_eval_refuses_a_format_for_a_benchmark_without_formats(tmp_path):
    result = _invoke("eval", "builtin:tiny-code", "-b", "quixbugs", "--format", "chat", "--output", tmp_path)
    assert result.exit_code == 2 and "quixbugs takes no format" in result.stderr
