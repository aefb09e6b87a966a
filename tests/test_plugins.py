"""A method and a suite added from outside the package (tests/plugins/vera_and_doubling.py, one class each)
run a tiny study end to end, named in the config's `plugins:`."""

import json
import shutil

import pytest
import yaml
from typer.testing import CliRunner

from ftcompare.cli import app
from ftcompare.config import load_config
from ftcompare.matrix import expand
from tests.conftest import TINY_BUILTIN

pytestmark = pytest.mark.slow

PLUGIN = "vera_and_doubling.py"
LAYERS = 4  # the small built-in base
STUDY = {
    "experiment": "plugins",
    "plugins": [PLUGIN],
    "base": {"model": "builtin:tiny-code", "builtin": TINY_BUILTIN},
    "task": {"kind": "generated", "n_train": 24, "n_test": 2, "n_ood": 0},
    "extra_suites": [{"kind": "doubling", "sleep_s": 2.0, "timeout_s": 1.0}],
    "methods": [{"kind": "vera", "rank": 4, "lr": 1e-2}],
    "training": {"max_steps": 2, "batch_size": 8},
    "evaluation": {
        "n_samples": 0,
        "k": [1],
        "max_new_tokens": 8,
        "timeout_s": 10,
        "latency": None,
        "forgetting": {"n_chunks": 2, "chunk_tokens": 32},
    },
    "analyses": {"spectral": {"k": 2, "epsilons": [0.5]}},
}


@pytest.fixture(scope="module")
def study_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("plugin-study")
    shutil.copy(__file__.replace("test_plugins.py", f"plugins/{PLUGIN}"), folder / PLUGIN)
    (folder / "study.yaml").write_text(yaml.safe_dump(STUDY))
    return folder


def test_a_plugin_method_and_suite_join_the_config(study_folder):
    config = load_config(study_folder / "study.yaml")
    assert [run.run_id for run in expand(config)] == ["vera-r4-s0"]
    assert expand(config)[0].label == "VeRA r=4" and config.suite_names == ["test", "doubling"]


def test_a_plugin_that_does_not_import_is_one_line_naming_it(tmp_path):
    (tmp_path / "study.yaml").write_text(yaml.safe_dump({**STUDY, "plugins": ["missing.py"]}))
    result = CliRunner().invoke(app, ["run", str(tmp_path / "study.yaml"), "--dry-run"])
    assert result.exit_code == 2
    assert "plugins.0: cannot import" in result.output and "missing.py" in result.output


def test_a_tiny_study_runs_with_them(study_folder, tiny_base, cache_dir, monkeypatch):
    import ftcompare.evaluate.stage as stage

    limits = {}  # suite → the sandbox settings its programs ran under

    def recording(records, sandbox):
        limits[records[0]["suite"]] = sandbox
        return execute_records(records, sandbox)

    execute_records = stage.execute_records
    monkeypatch.setattr(stage, "execute_records", recording)
    output = study_folder / "runs"
    result = CliRunner().invoke(
        app, ["run", str(study_folder / "study.yaml"), "--output", str(output)], env={"FTCOMPARE_CACHE": str(cache_dir)}
    )
    assert result.exit_code == 0, result.output
    run_dir = output / "plugins" / "vera-r4-s0"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["label"] == "VeRA r=4" and metrics["train"]["method"]["saved_adapter"] == "PEFT VeRA adapter"
    assert json.loads((run_dir / "weights" / "adapter_config.json").read_text())["peft_type"] == "VERA"
    # the spectral analysis read VeRA's own update of every adapted matrix (q_proj and v_proj of each layer)
    assert metrics["spectral"]["matrices"] == 2 * LAYERS and metrics["spectral"]["mean_delta_fro_norm"] > 0
    # the suite's own time limit, the evaluation's elsewhere; both suites were scored
    assert limits["doubling"].timeout_s == 1.0 and limits["test"].timeout_s == 10
    assert limits["doubling"].memory_mb == limits["test"].memory_mb == 512
    samples = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
    assert {s["suite"] for s in samples} == {"test", "doubling"}
