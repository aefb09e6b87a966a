"""Forgetting on lm-evaluation-harness tasks (`evaluation.lm_eval`): a three-question multiple-choice task the test
writes itself (a task YAML over a local JSONL file) scored by the module on the built-in model and by a tiny study;
the recorded numbers are the harness's own (a direct `simple_evaluate`, and accuracies worked out by hand from the
model's log-likelihoods). CI installs lm-eval (.ci/run); elsewhere these tests are skipped without it."""

import importlib.util
import json
import os
import random
import sys

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from ftcompare.cli import app
from ftcompare.config import ConfigError, load_config, parse_config
from ftcompare.evaluate.lm_eval_forgetting import LmEvalConfig, check_tasks, harness_scores, require_lm_eval
from ftcompare.schema import InputError
from tests.conftest import TINY_BUILTIN

needs_lm_eval = pytest.mark.skipif(
    importlib.util.find_spec("lm_eval") is None and not os.environ.get("CI"),
    reason="lm-eval is not installed (CI installs it: pip install 'ftcompare[lm-eval]')",
)

TASK = "toy_mc"
DOCUMENTS = [
    {"question": "What is 1 + 1?", "choices": ["2", "3", "11"], "answer": 0},
    {"question": "Which word starts a function in Python?", "choices": ["class", "def", "import"], "answer": 1},
    {"question": "Which value is false?", "choices": ["True", "1", "None"], "answer": 2},
]


def write_task(folder, name=TASK, data_file=None):
    """A multiple-choice task YAML over a local JSONL file (the datasets cache kept inside `folder`)."""
    folder.mkdir(parents=True, exist_ok=True)
    data = data_file or folder / f"{name}.jsonl"
    if data_file is None:
        data.write_text("".join(json.dumps(document) + "\n" for document in DOCUMENTS))
    task = {
        "task": name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data)}, "cache_dir": str(folder / ".datasets")},
        "output_type": "multiple_choice",
        "test_split": "test",
        "doc_to_text": "Question: {{question}}\nAnswer:",
        "doc_to_target": "{{answer}}",
        "doc_to_choice": "{{choices}}",
        "metric_list": [{"metric": "acc", "aggregation": "mean"}, {"metric": "acc_norm", "aggregation": "mean"}],
        "metadata": {"version": 2.0},
    }
    (folder / f"{name}.yaml").write_text(yaml.safe_dump(task))
    return folder


@pytest.fixture(scope="module")
def task_folder(tmp_path_factory):
    """The test's task, and one whose data file is missing (indexed together: the harness indexes a folder once)."""
    folder = write_task(tmp_path_factory.mktemp("lm-eval") / "tasks")
    return write_task(folder, name="broken_mc", data_file=folder / "nowhere.jsonl")


def study_config(**lm_eval):
    return {"experiment": "x", "methods": [{"kind": "full"}], "evaluation": {"lm_eval": lm_eval}}


# --- the config ---


@needs_lm_eval
@pytest.mark.parametrize(
    "settings, field, message",
    [
        ({"tasks": []}, "evaluation.lm_eval.tasks", "at least 1 item"),
        ({"tasks": [TASK], "limit": 0}, "evaluation.lm_eval.limit", "greater than 0"),
        ({"tasks": [TASK], "batch_size": 0}, "evaluation.lm_eval.batch_size", "≥ 1"),
        ({"tasks": [TASK, TASK]}, "evaluation.lm_eval.tasks", "each task once"),
        ({"tasks": ["toy_mcq"]}, "evaluation.lm_eval.tasks", "item 0, 'toy_mcq': lm-evaluation-harness has no such task"),
        ({"tasks": [TASK], "include_path": "missing"}, "evaluation.lm_eval.include_path", "not a folder"),
    ],
)
def test_bad_settings_fail_at_load_naming_the_field(settings, field, message, task_folder, monkeypatch):
    monkeypatch.chdir(task_folder.parent)
    settings = {"include_path": "tasks", **settings}
    with pytest.raises(ConfigError) as caught:
        parse_config(study_config(**settings), "study.yaml")
    line = str(caught.value)
    assert line.startswith(f"study.yaml: {field}: ") and message in line and "\n" not in line


@needs_lm_eval
def test_an_unknown_task_names_the_close_ones(task_folder):
    with pytest.raises(ConfigError, match=r"'hellaswg'.*\(close: hellaswag"):
        parse_config(study_config(tasks=["hellaswg"]), "study.yaml")
    assert parse_config(study_config(tasks=["hellaswag", "arc_challenge", "winogrande"])).evaluation.lm_eval.limit is None


@needs_lm_eval
def test_a_folder_without_task_yamls_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="include_path: .* holds no task YAML"):
        parse_config(study_config(tasks=[TASK], include_path=str(tmp_path)), "study.yaml")


@needs_lm_eval
def test_include_path_resolves_against_the_config_folder(task_folder, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # not the config's folder
    config_file = task_folder.parent / "study.yaml"
    config_file.write_text(yaml.safe_dump(study_config(tasks=[TASK], include_path="tasks", limit=2)))
    assert load_config(config_file).evaluation.lm_eval.include_path == task_folder


def test_folders_recorded_before_lm_eval_existed_still_resume(monkeypatch):
    from pydantic import BaseModel

    from ftcompare.config import StudyConfig
    from ftcompare.matrix import expand
    from ftcompare.study import run_record

    config = parse_config({"experiment": "x", "methods": [{"kind": "full"}]})
    now = [run_record(run, config)["fingerprint"] for run in (None, expand(config)[0])]

    def dump_without_the_field(self, **arguments):  # what the config dumped to before evaluation.lm_eval existed
        dumped = BaseModel.model_dump(self, **arguments)
        dumped.get("evaluation", {}).pop("lm_eval", None)
        return dumped

    monkeypatch.setattr(StudyConfig, "model_dump", dump_without_the_field)
    assert [run_record(run, config)["fingerprint"] for run in (None, expand(config)[0])] == now


def test_a_missing_lm_eval_is_one_line_naming_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # what an absent package looks like to `import lm_eval`
    with pytest.raises(InputError, match=r"lm_eval is not installed.*ftcompare\[lm-eval\]"):
        require_lm_eval()
    with pytest.raises(ConfigError) as caught:
        parse_config(study_config(tasks=["hellaswag"]), "study.yaml")
    assert str(caught.value).startswith("study.yaml: evaluation.lm_eval: lm_eval is not installed")
    assert "pip install 'ftcompare[lm-eval]'" in str(caught.value)


@needs_lm_eval
def test_a_task_whose_data_cannot_load_is_refused_before_training(task_folder):
    settings = LmEvalConfig(tasks=["broken_mc"], include_path=task_folder)
    with pytest.raises(InputError) as caught:
        check_tasks(settings)
    assert str(caught.value).startswith("evaluation.lm_eval: tasks.0: cannot load 'broken_mc'") and "\n" not in str(caught.value)


# --- the module on the built-in model ---


@pytest.fixture(scope="module")
def builtin(tiny_base):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory, _ = tiny_base
    return AutoModelForCausalLM.from_pretrained(directory), AutoTokenizer.from_pretrained(directory)


def direct_evaluate(model, tokenizer, include_path, **arguments):
    """The harness run as its own documentation shows, on a model in memory (its own tasks left out of the index:
    they take seconds to index, and the test's task is not among them)."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    return lm_eval.simple_evaluate(
        model=HFLM(pretrained=model, tokenizer=tokenizer, batch_size=8),
        tasks=[TASK],
        task_manager=TaskManager(include_path=str(include_path), include_defaults=False),
        log_samples=True,
        **arguments,
    )


@torch.no_grad()
def loglikelihood(model, tokenizer, context: str, continuation: str) -> float:
    """log p(continuation | context), summed over the continuation's tokens (tokenized as part of the whole)."""
    whole = tokenizer(context + continuation)["input_ids"]
    start = len(tokenizer(context)["input_ids"])
    logits = model(input_ids=torch.tensor([whole[:-1]])).logits[0].float().log_softmax(-1)
    return sum(logits[position - 1, whole[position]].item() for position in range(start, len(whole)))


@needs_lm_eval
def test_the_recorded_accuracies_are_the_harness_own(builtin, task_folder):
    model, tokenizer = builtin
    record, samples = harness_scores(model, tokenizer, LmEvalConfig(tasks=[TASK], include_path=task_folder, seed=3))
    scores = record["tasks"][TASK]
    direct = direct_evaluate(model, tokenizer, task_folder, random_seed=3, numpy_random_seed=3, torch_random_seed=3)
    assert scores["acc"] == direct["results"][TASK]["acc,none"]
    assert scores["acc_stderr"] == direct["results"][TASK]["acc_stderr,none"]
    assert scores["acc_norm"] == direct["results"][TASK]["acc_norm,none"]
    assert scores["acc_norm_stderr"] == direct["results"][TASK]["acc_norm_stderr,none"]
    assert scores["version"] == 2.0 and scores["num_fewshot"] == 0 and scores["documents"] == 3
    assert record["lm_eval_version"] == importlib.import_module("lm_eval").__version__ and record["seed"] == 3
    # by hand: each choice's log-likelihood after " ", the argmax against the gold answer, over characters for acc_norm
    model.eval()
    by_hand = [
        [loglikelihood(model, tokenizer, f"Question: {d['question']}\nAnswer:", " " + c) for c in d["choices"]] for d in DOCUMENTS
    ]
    for sample, lls, document in zip(sorted(samples, key=lambda s: s["doc_id"]), by_hand, DOCUMENTS, strict=True):
        assert sample["loglikelihoods"] == pytest.approx(lls, abs=1e-4)
        assert sample["acc"] == float(np.argmax(lls) == document["answer"])
        assert sample["acc_norm"] == float(np.argmax(np.array(lls) / [len(c) for c in document["choices"]]) == document["answer"])
    accuracy = np.mean([np.argmax(lls) == d["answer"] for lls, d in zip(by_hand, DOCUMENTS)])
    assert scores["acc"] == pytest.approx(accuracy)
    assert scores["acc_stderr"] == pytest.approx(
        np.std([np.argmax(lls) == d["answer"] for lls, d in zip(by_hand, DOCUMENTS)], ddof=1) / np.sqrt(3)
    )
    assert scores["per_sample"]["acc"] == {str(s["doc_id"]): s["acc"] for s in samples}


@needs_lm_eval
def test_the_model_tokenizer_and_random_state_are_left_as_they_were(builtin, task_folder):
    model, tokenizer = builtin
    model.train()
    tokenizer.pad_token = None  # the harness sets one on the tokenizer it is given
    padding_side = tokenizer.padding_side
    random.seed(7), np.random.seed(7), torch.manual_seed(7)
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(7), np.random.seed(7), torch.manual_seed(7)
    record, _ = harness_scores(model, tokenizer, LmEvalConfig(tasks=[TASK], include_path=task_folder, limit=2, batch_size=1))
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected
    assert model.training and tokenizer.pad_token is None and tokenizer.padding_side == padding_side
    assert record["tasks"][TASK]["documents"] == 2 and record["limit"] == 2 and record["batch_size"] == 1
    model.eval()


# --- a tiny study ---

STUDY = {
    "experiment": "lm-eval",
    "base": {"model": "builtin:tiny-code", "builtin": TINY_BUILTIN},
    "task": {"kind": "generated", "n_train": 24, "n_test": 2, "n_ood": 0},
    "methods": [{"kind": "full", "lr": 1e-2}, {"kind": "lora", "rank": [2], "alpha_lr_product": 0.05}],
    "training": {"max_steps": 3, "batch_size": 8},
    "evaluation": {
        "n_samples": 0,
        "k": [1],
        "max_new_tokens": 8,
        "latency": None,
        "forgetting": {"n_chunks": 2, "chunk_tokens": 32},
        "lm_eval": {"include_path": "tasks", "tasks": [TASK], "limit": 3, "seed": 1},
    },
    "analyses": {"spectral": None},
}


@pytest.fixture(scope="module")
def experiment(task_folder, tiny_base, cache_dir):
    (task_folder.parent / "study.yaml").write_text(yaml.safe_dump(STUDY))
    output = task_folder.parent / "runs"
    result = CliRunner().invoke(
        app,
        ["run", str(task_folder.parent / "study.yaml"), "--output", str(output)],
        env={"FTCOMPARE_CACHE": str(cache_dir)},
    )
    assert result.exit_code == 0, result.output
    return output / "lm-eval"


def recorded(experiment, folder):
    return json.loads((experiment / folder / "metrics.json").read_text())["lm_eval"]


@needs_lm_eval
@pytest.mark.slow
def test_a_study_records_the_harness_accuracies_of_the_base_and_every_run(experiment):
    base = recorded(experiment, "_base")["tasks"][TASK]
    assert base["documents"] == 3 and 0 <= base["acc"] <= 1 and base["acc_stderr"] is not None and "change" not in base
    for run_id in ("full-s0", "lora-r2-s0"):
        record = recorded(experiment, run_id)
        assert record == json.loads((experiment / run_id / "eval.json").read_text())["lm_eval"]
        assert record["lm_eval_version"] and record["limit"] == 3 and record["seed"] == 1
        scores = record["tasks"][TASK]
        assert scores["base"] == {key: base[key] for key in ("acc", "acc_stderr", "acc_norm", "acc_norm_stderr")}
        for metric in ("acc", "acc_norm"):
            assert scores["change"][metric]["difference"] == pytest.approx(scores[metric] - base[metric])
            assert scores["change"][metric]["problems"] == 3
        samples = [json.loads(line) for line in (experiment / run_id / "lm_eval_samples.jsonl").read_text().splitlines()]
        assert sorted(s["doc_id"] for s in samples) == [0, 1, 2]


@needs_lm_eval
@pytest.mark.slow
def test_each_run_is_scored_as_the_harness_scores_its_saved_weights(experiment, tiny_base, task_folder):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory, _ = tiny_base
    models = {
        "_base": AutoModelForCausalLM.from_pretrained(directory),
        "full-s0": AutoModelForCausalLM.from_pretrained(experiment / "full-s0" / "weights"),
        "lora-r2-s0": PeftModel.from_pretrained(
            AutoModelForCausalLM.from_pretrained(directory), experiment / "lora-r2-s0" / "weights"
        ).merge_and_unload(),
    }
    loglikelihoods = {}
    for folder, model in models.items():
        direct = direct_evaluate(model, AutoTokenizer.from_pretrained(directory), task_folder, limit=3, random_seed=1)
        scores = recorded(experiment, folder)["tasks"][TASK]
        assert scores["acc"] == pytest.approx(direct["results"][TASK]["acc,none"])
        assert scores["acc_norm"] == pytest.approx(direct["results"][TASK]["acc_norm,none"])
        samples = {
            json.loads(line)["doc_id"]: json.loads(line) for line in (experiment / folder / "lm_eval_samples.jsonl").open()
        }
        for sample in direct["samples"][TASK]:
            lls = [response[0] for response in sample["filtered_resps"]]
            assert samples[sample["doc_id"]]["loglikelihoods"] == pytest.approx(lls, abs=1e-4)
        loglikelihoods[folder] = [ll for doc in sorted(samples) for ll in samples[doc]["loglikelihoods"]]
    # each record is of its own model: fine-tuning moved every model's log-likelihoods away from the base's
    assert loglikelihoods["full-s0"] != pytest.approx(loglikelihoods["_base"], abs=1e-3)
    assert loglikelihoods["lora-r2-s0"] != pytest.approx(loglikelihoods["_base"], abs=1e-3)


@needs_lm_eval
@pytest.mark.slow
def test_the_report_shows_each_accuracy_with_its_standard_error_and_change(experiment):
    markdown = (experiment / "report.md").read_text()
    html = (experiment / "report.html").read_text()
    assert (
        "## Forgetting on lm-evaluation-harness tasks" in markdown
        and "<h2>Forgetting on lm-evaluation-harness tasks</h2>" in html
    )
    assert "lm-eval 0.4" in markdown and "the first 3 documents of each task, seed 1" in markdown
    base = recorded(experiment, "_base")["tasks"][TASK]
    assert f"| base | {TASK} | 3 | 0 | {base['acc']:.3f} ± {base['acc_stderr']:.3f} | – |" in markdown
    for run_id in ("full-s0", "lora-r2-s0"):
        scores = recorded(experiment, run_id)["tasks"][TASK]
        change = scores["change"]["acc"]
        row = f"| {run_id} | {TASK} | 3 | 0 | {scores['acc']:.3f} ± {scores['acc_stderr']:.3f} | {change['difference']:+.3f} ± {change['stderr']:.3f} |"
        assert row in markdown, row
    header = next(line for line in markdown.splitlines() if line.startswith("| method |"))
    assert f"| forgetting (Δ loss) | {TASK} Δ acc |" in header
