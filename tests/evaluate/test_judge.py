"""The judged suite (`kind: instructions`) and its judge (`ftcompare.evaluate.judge`), without vLLM: reading a
judge's reply, the instruction records, the metrics and calibration, the error paths of an endpoint (a real
HTTP server on 127.0.0.1, written here: a judge that times out, returns garbage or a score outside [0, 1]),
a local judge through ftcompare's own generation, and a study with a judged suite end to end. The judge
behind a real `vllm serve` is in test_judge_serve.py."""

import gzip
import itertools
import json
import random
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from ftcompare.cli import app
from ftcompare.config import ConfigError, parse_config
from ftcompare.data.instructions import load_instructions
from ftcompare.evaluate.calibrate import calibration_metrics, executed_records, roc_auc
from ftcompare.evaluate.judge import (
    DEFAULT_RUBRIC,
    EndpointJudge,
    JudgeItem,
    LocalJudge,
    judge_answers,
    judged_metrics,
    parse_judge_reply,
    render_rubric,
    rubric_sha256,
)
from ftcompare.report.tables import judged_tables
from ftcompare.schema import InputError
from tests.conftest import TINY_BUILTIN

EXAMPLE = Path(__file__).parents[2] / "examples" / "instructions" / "instructions.jsonl"
WIDE = {"COLUMNS": "200"}


# --- reading a verdict ---


@pytest.mark.parametrize(
    ("reply", "verdict", "score"),
    [
        ('{"score": 0.8}', "scored", 0.8),
        ('```json\n{"score": 1}\n```', "scored", 1.0),
        ('{"reason": "fine", "score": 0.25}', "scored", 0.25),
        ('first {"score": 0.1}, on reflection {"score": 0.9}', "scored", 0.9),  # the last object
        ("The answer is right.\nScore: 0.75", "scored", 0.75),
        ("**Score:** 1", "scored", 1.0),
        ("score = 3/4", "scored", 0.75),  # a fraction is read as one
        ("The score is 0.5.", "scored", 0.5),
        ("<think>Score: 0.1 at first</think>Score: 0.6", "scored", 0.6),  # reasoning is not the verdict
        ('{"score": 7}', "out_of_range", None),  # another scale: invalid, never clamped to 1
        ("Score: -0.5", "out_of_range", None),
        ("Score: 8/5", "out_of_range", None),
        ("It is quite good.", "unparseable", None),
        ('{"score": "high"}', "unparseable", None),
        ('{"score": true}', "unparseable", None),
        ("", "unparseable", None),
        ('{"score": NaN}', "unparseable", None),
    ],
)
def test_a_reply_gives_one_verdict(reply, verdict, score):
    result = parse_judge_reply(reply)
    assert (result.verdict, result.score) == (verdict, score)


def test_a_number_cut_by_the_token_budget_is_not_read():
    assert parse_judge_reply("Score: 0.5", cut=True).verdict == "unparseable"  # it may have been 0.55
    assert parse_judge_reply("Score: 0.5\nbecause the answer", cut=True).score == 0.5  # the number ended
    assert parse_judge_reply('{"score":0.5}', cut=True).score == 0.5  # a closed object ended it too
    assert parse_judge_reply('{"score":0.5', cut=True).verdict == "unparseable"


def test_the_rubric_shows_the_reference_only_when_there_is_one():
    with_reference = render_rubric(DEFAULT_RUBRIC, JudgeItem("math", "What is 2 plus 2?", "5", "4"))
    without = render_rubric(DEFAULT_RUBRIC, JudgeItem("math", "What is 2 plus 2?", "5"))
    assert "Reference answer:\n4\n" in with_reference and "Reference" not in without.replace("reference", "")
    assert "Instruction:\nWhat is 2 plus 2?\n\nAnswer to grade:\n5\n" in without
    assert "\n\n\n" not in with_reference + without


@pytest.mark.parametrize(
    ("rubric", "message"),
    [
        ("Grade {{ answer }}.", "must show the judge instruction"),
        ("{{ instruction }} {{ answer }} {{ gold }}", r"unknown variables \['gold'\]"),
        ("{{ instruction }} {% if answer %}", "not a valid Jinja template"),
    ],
)
def test_a_bad_rubric_fails_at_load_naming_the_field(tmp_path, rubric, message):
    config = _study(tmp_path, {"kind": "local", "model": "builtin:tiny-code", "rubric": rubric})
    with pytest.raises(ConfigError, match=rf"extra_suites\.0\.judge\.rubric: .*{message}"):
        parse_config(config, source="study.yaml")


# --- the instruction records ---


def _write_jsonl(path: Path, records) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


GOOD = {"category": "math", "instruction": "What is 2 plus 2?", "reference": "4"}


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"instruction": "x"}, "category: missing"),
        ({"category": "math"}, "instruction: missing"),
        ({"category": "math", "instruction": 3}, "instruction: must be text, got int"),
        ({"category": " ", "instruction": "x"}, "category: empty"),
        ({"category": "math", "instruction": "x", "reference": 4}, "reference: must be text or null, got int"),
        ({"category": "math", "instruction": "x", "id": [1]}, "id: must be text or an integer"),
        ({**GOOD, "id": "1"}, "id: '1' is also the id of line 1"),
        ("{not json", "not valid JSON"),
        ("[1, 2]", "not a JSON object but list"),
    ],
)
def test_a_bad_record_is_one_line_naming_file_line_and_field(tmp_path, record, message):
    path = _write_jsonl(tmp_path / "set.jsonl", [GOOD, record])  # GOOD is line 1, with id "1"
    with pytest.raises(InputError) as error:
        load_instructions(path)
    assert str(error.value).startswith(f"{path}:2: ") and message in str(error.value)
    assert "\n" not in str(error.value)
    # and the study's config refuses it when it loads, before anything is trained
    with pytest.raises(ConfigError, match=rf"extra_suites\.0\.data: {path}:2: .*{message[:12]}"):
        parse_config(_study(tmp_path, {"kind": "local", "model": "x"}, data=path), source="study.yaml")


def test_an_empty_instruction_set_is_refused(tmp_path):
    with pytest.raises(InputError, match="no instructions"):
        load_instructions(_write_jsonl(tmp_path / "empty.jsonl", [""]))


def test_records_load_with_their_defaults_and_the_example_set_is_valid(tmp_path):
    path = _write_jsonl(
        tmp_path / "set.jsonl", [GOOD, {"category": "qa", "instruction": "Sum them.", "input": "1 2", "reference": None, "x": 1}]
    )
    first, second = load_instructions(path)
    assert (first.task_id, first.reference, second.task_id, second.reference) == ("1", "4", "2", None)
    assert second.request == "Sum them.\n\nInput:\n1 2"  # Alpaca's input reaches the judge too
    example = load_instructions(EXAMPLE)
    counts = {c: sum(i.category == c for i in example) for c in dict.fromkeys(i.category for i in example)}
    assert counts == {"math": 4, "code": 4, "translation": 4, "generation": 4, "closed_qa": 4}
    assert all(item.reference for item in example)


# --- configs ---


def _study(tmp_path: Path, judge: dict, data: Path = EXAMPLE, **extra) -> dict:
    return {
        "experiment": "judged",
        "base": {"model": "builtin:tiny-code", "builtin": TINY_BUILTIN},
        "task": {"kind": "generated", "n_train": 16, "n_test": 2, "n_ood": 0},
        "extra_suites": [{"kind": "instructions", "data": str(data), "judge": judge}],
        "methods": [{"kind": "full", "lr": 1e-3}],
        "training": {"max_steps": 1, "batch_size": 8},
        "evaluation": {"n_samples": 0, "k": [1], "max_new_tokens": 8, "forgetting": None, "latency": None},
        "analyses": {"spectral": None},
        **extra,
    }


def test_a_missing_api_key_variable_is_one_line_naming_it(tmp_path, monkeypatch):
    monkeypatch.delenv("FTCOMPARE_TEST_JUDGE_KEY", raising=False)
    judge = {"kind": "endpoint", "url": "http://127.0.0.1:9/v1", "model": "m", "api_key_env": "FTCOMPARE_TEST_JUDGE_KEY"}
    with pytest.raises(ConfigError) as error:
        parse_config(_study(tmp_path, judge), source="study.yaml")
    assert str(error.value) == (
        "study.yaml: extra_suites.0.judge.api_key_env: environment variable FTCOMPARE_TEST_JUDGE_KEY is not set "
        "(the judge's API key is read from it)"
    )
    monkeypatch.setenv("FTCOMPARE_TEST_JUDGE_KEY", "sk-secret")
    config = parse_config(_study(tmp_path, judge), source="study.yaml")
    assert "sk-secret" not in json.dumps(config.model_dump(mode="json"))  # the name is configured, never the key


def test_a_judged_suite_is_neither_perturbed_nor_selected_on(tmp_path):
    judge = {"kind": "local", "model": "x"}
    robust = _study(tmp_path, judge, evaluation={"n_samples": 0, "k": [1], "robustness": {"suites": ["instructions"]}})
    with pytest.raises(ConfigError, match="scored by a judge; robustness perturbs code problems"):
        parse_config(robust)
    selected = _study(tmp_path, judge, training={"select_lr_on": "instructions"}, methods=[{"kind": "full", "lr": 1e-3}])
    with pytest.raises(ConfigError, match="training.select_lr_on: 'instructions' is scored by a judge"):
        parse_config(selected)


# --- metrics ---


def _record(task_id: str, category: str, verdict: str, score: float | None = None) -> dict:
    return {"task_id": task_id, "category": category, "judge_verdict": verdict, "judge_score": score}


def test_means_skip_every_verdict_that_is_not_a_score():
    records = [
        _record("a1", "a", "scored", 1.0),
        _record("a1", "a", "unparseable"),  # a second sample of a1: not a 0
        _record("a2", "a", "scored", 0.5),
        _record("b1", "b", "scored", 0.0),
        _record("b2", "b", "out_of_range"),
        _record("c1", "c", "error"),  # a category without any score
    ]
    metrics = judged_metrics(records)
    assert metrics["per_category"]["a"] == {
        "mean": 0.75,
        "items": 2,
        "items_scored": 2,
        "scored": 2,
        "unparseable": 1,
        "out_of_range": 0,
        "error": 0,
    }
    assert metrics["per_category"]["b"]["mean"] == 0.0 and metrics["per_category"]["b"]["out_of_range"] == 1
    assert metrics["per_category"]["c"]["mean"] is None
    assert metrics["macro_mean"] == pytest.approx((0.75 + 0.0) / 2)  # over the 2 categories that have a mean
    assert (metrics["categories"], metrics["categories_scored"]) == (3, 2)
    assert metrics["micro_mean"] == pytest.approx((1.0 + 0.5 + 0.0) / 3)
    assert metrics["verdict_counts"] == {"scored": 3, "unparseable": 1, "out_of_range": 1, "error": 1}
    assert metrics["per_problem_score"] == {"a1": 1.0, "a2": 0.5, "b1": 0.0}


def test_roc_auc_is_the_probability_a_pass_outscores_a_failure():
    rng = random.Random(0)
    for _ in range(50):
        scores = [rng.choice([0.0, 0.25, 0.5, 0.75, 1.0]) for _ in range(12)]  # ties on purpose
        labels = [rng.random() < 0.5 for _ in range(12)]
        pairs = [(p, n) for p, lp in zip(scores, labels) if lp for n, ln in zip(scores, labels) if not ln]
        if not pairs:
            assert roc_auc(scores, labels) is None
            continue
        expected = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in pairs) / len(pairs)
        assert roc_auc(scores, labels) == pytest.approx(expected)
    assert roc_auc([0.1, 0.9], [False, True]) == 1.0 and roc_auc([0.9, 0.1], [False, True]) == 0.0


def test_calibration_counts_agreement_over_scored_answers_only():
    records = [
        {"judge_verdict": "scored", "judge_score": 0.9, "passed": True},
        {"judge_verdict": "scored", "judge_score": 0.5, "passed": False},  # at the threshold: predicts passed
        {"judge_verdict": "scored", "judge_score": 0.2, "passed": False},
        {"judge_verdict": "unparseable", "judge_score": None, "passed": True},
    ]
    metrics = calibration_metrics(records)
    assert (metrics["samples"], metrics["scored"], metrics["unparseable"], metrics["passed"], metrics["failed"]) == (
        4,
        3,
        1,
        1,
        2,
    )
    assert metrics["accuracy"] == pytest.approx(2 / 3) and metrics["majority_accuracy"] == pytest.approx(2 / 3)
    assert (metrics["true_positives"], metrics["false_positives"], metrics["true_negatives"]) == (1, 1, 1)
    assert metrics["roc_auc"] == 1.0


# --- an endpoint's error paths, against a real HTTP server on 127.0.0.1 ---


class _Judge(BaseHTTPRequestHandler):
    """A chat-completions endpoint whose reply depends on the answer it is asked about."""

    calls: dict[str, int] = {}
    headers_seen: list[str] = []

    def do_POST(self):  # noqa: N802  (http.server's name)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        prompt = body["messages"][0]["content"]
        answer = prompt.split("Answer to grade:\n", 1)[1].split("\n", 1)[0]
        _Judge.headers_seen.append(self.headers.get("Authorization", ""))
        _Judge.calls[answer] = _Judge.calls.get(answer, 0) + 1
        if answer == "slow":
            time.sleep(1.0)  # past the judge's timeout
        if answer == "flaky" and _Judge.calls[answer] == 1:
            return self._send(503, b"overloaded")
        if answer == "body":
            return self._send(200, b"<html>not json</html>")
        content = {"garbage": "Looks fine to me!", "range": '{"score": 7}', "good": '{"score": 0.9}'}.get(
            answer, '{"score": 0.1}'
        )
        self._send(200, json.dumps({"choices": [{"message": {"content": content}, "finish_reason": "stop"}]}).encode())

    def _send(self, status: int, payload: bytes) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (the timeout case)
            pass

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def fake_endpoint():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Judge)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/v1"
    server.shutdown()
    server.server_close()


def _items(*answers: str) -> list[JudgeItem]:
    return [JudgeItem("c", f"instruction {i}", answer) for i, answer in enumerate(answers)]


def test_timeouts_garbage_and_out_of_range_are_counted_apart(fake_endpoint, monkeypatch):
    monkeypatch.setenv("FTCOMPARE_TEST_JUDGE_KEY", "sk-secret")
    _Judge.calls.clear()
    _Judge.headers_seen.clear()
    settings = EndpointJudge(
        url=fake_endpoint, model="m", timeout_s=0.3, retries=1, concurrency=3, api_key_env="FTCOMPARE_TEST_JUDGE_KEY"
    )
    answers = ("good", "slow", "garbage", "range", "body", "flaky", "other")
    fields, record = judge_answers(settings, _items(*answers))
    by_answer = dict(zip(answers, fields))
    assert [by_answer[a]["judge_verdict"] for a in answers] == [
        "scored",
        "error",
        "unparseable",
        "out_of_range",
        "error",
        "scored",
        "scored",
    ]
    assert by_answer["slow"]["judge_attempts"] == 2 and "timed out" in by_answer["slow"]["judge_error"]
    assert _Judge.calls["slow"] == 2  # retried once, then counted as a failed request
    assert by_answer["body"]["judge_attempts"] == 1 and "not an OpenAI chat completion" in by_answer["body"]["judge_error"]
    assert by_answer["flaky"]["judge_attempts"] == 2 and by_answer["flaky"]["judge_score"] == 0.1  # 503, then an answer
    assert by_answer["range"]["judge_value"] == 7 and by_answer["range"]["judge_score"] is None  # kept, never clamped
    assert by_answer["garbage"]["judge_text"] == "Looks fine to me!"
    assert set(_Judge.headers_seen) == {"Bearer sk-secret"}  # the key is sent, and recorded nowhere
    assert "sk-secret" not in json.dumps([fields, record])
    assert record["api_key_env"] == "FTCOMPARE_TEST_JUDGE_KEY" and record["rubric"] == DEFAULT_RUBRIC
    assert all(f["judge_rubric_sha256"] == rubric_sha256(DEFAULT_RUBRIC) == record["rubric_sha256"] for f in fields)
    assert all(f["judge"] == {"kind": "endpoint", "url": fake_endpoint, "model": "m"} for f in fields)
    metrics = judged_metrics([{**f, "task_id": str(i), "category": "c"} for i, f in enumerate(fields)])
    assert metrics["verdict_counts"] == {"scored": 3, "unparseable": 1, "out_of_range": 1, "error": 2}
    assert metrics["macro_mean"] == pytest.approx((0.9 + 0.1 + 0.1) / 3)


def test_a_judge_that_does_not_answer_fails_the_evaluation_at_once(fake_endpoint):
    _Judge.calls.clear()
    settings = EndpointJudge(url=fake_endpoint, model="m", timeout_s=0.2, retries=0)
    with pytest.raises(RuntimeError, match="the first request failed after 1 attempt.*: timed out after at most 0.2 s"):
        judge_answers(settings, _items("slow", "good", "good"))
    assert _Judge.calls == {"slow": 1}  # nothing more was asked
    closed = f"http://127.0.0.1:{_free_port()}/v1"  # nothing listens there
    with pytest.raises(RuntimeError, match=f"judge m at {closed}: the first request failed after 2 attempt.*connection failed"):
        judge_answers(EndpointJudge(url=closed, model="m", retries=1), _items("good"))


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_calibration_cli_reports_agreement_and_refuses_bad_input(tmp_path, fake_endpoint):
    run = tmp_path / "run"
    run.mkdir()
    outcomes = [("good", True), ("good", True), ("bad", False), ("good", False), ("bad", False), ("garbage", True)]
    _write_jsonl(
        run / "samples.jsonl",
        [
            {"suite": "test", "mode": "greedy", "task_id": f"t{i}", "family": "f", "sample": 0, "prompt": f"p{i}"}
            | {"extracted_code": answer, "status": "passed" if passed else "failed", "passed": passed}
            for i, (answer, passed) in enumerate(outcomes)
        ]
        + [{"suite": "instructions", "mode": "greedy", "task_id": "i0", "prompt": "p", "extracted_code": "x"}],
    )
    judge = tmp_path / "judge.yaml"
    judge.write_text(yaml.safe_dump({"kind": "endpoint", "url": fake_endpoint, "model": "m", "retries": 0}))
    result = CliRunner(env=WIDE).invoke(app, ["judge-calibrate", str(run), "--judge-config", str(judge)])
    assert result.exit_code == 0, result.output
    assert "6 answers, 2 passed and 3 failed among the 5 scored (1 unparseable" in result.stdout
    record = json.loads((run / "judge_calibration_test_greedy.json").read_text())
    # scores 0.9, 0.9, 0.1, 0.9, 0.1 against passed, passed, failed, failed, failed
    assert record["accuracy"] == pytest.approx(4 / 5) and record["roc_auc"] == pytest.approx(5 / 6)
    assert (record["true_positives"], record["false_positives"], record["true_negatives"]) == (2, 1, 2)
    assert record["judge"]["model"] == "m" and record["judge"]["rubric"] == DEFAULT_RUBRIC
    per_answer = [json.loads(line) for line in (run / "judge_calibration_test_greedy.jsonl").read_text().splitlines()]
    assert [(r["task_id"], r["passed"], r["judge_verdict"]) for r in per_answer][-1] == ("t5", True, "unparseable")
    for args, message in [
        (["--suite", "instructions"], "suite 'instructions' has no execution verdicts"),
        (["--suite", "ood"], "no greedy records of suite 'ood'"),
        (["--judge-config", str(tmp_path / "missing.yaml")], "judge config not found"),
    ]:
        refused = CliRunner(env=WIDE).invoke(app, ["judge-calibrate", str(run), "--judge-config", str(judge), *args])
        assert refused.exit_code == 2 and message in refused.output, refused.output
        assert len(refused.output.strip().splitlines()) == 1
    judge.write_text(yaml.safe_dump({"kind": "endpoint", "url": fake_endpoint, "model": "m", "timeout": 3}))
    refused = CliRunner(env=WIDE).invoke(app, ["judge-calibrate", str(run), "--judge-config", str(judge)])
    assert refused.exit_code == 2 and f"error: {judge}: timeout: unknown key" in refused.output


# --- a local judge, and a study with a judged suite ---


def test_a_local_judge_generates_through_ftcompare_and_its_verdicts_are_its_text(tiny_base):
    directory, _ = tiny_base
    settings = LocalJudge(model=str(directory), max_tokens=12, batch_size=2)
    items = _items("4", "", "def f(x): return x")
    fields, record = judge_answers(settings, items)
    assert len(fields) == 3 and record["weights"]["path"] == str(directory) and record["kind"] == "local"
    for field in fields:  # whatever the tiny model wrote, the verdict is exactly what its text gives
        expected = parse_judge_reply(field["judge_text"], cut=field["judge_finish_reason"] == "length")
        assert (field["judge_verdict"], field["judge_score"], field["judge_value"]) == (
            expected.verdict,
            expected.score,
            expected.value,
        )
    again, _ = judge_answers(settings, items)  # greedy at temperature 0: the same verdicts
    assert [f["judge_text"] for f in again] == [f["judge_text"] for f in fields]


def test_a_study_with_a_judged_suite_records_and_reports_it(tmp_path, tiny_base, cache_dir):
    directory, _ = tiny_base
    config = _study(tmp_path, {"kind": "local", "model": str(directory), "max_tokens": 8})
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(config))
    result = CliRunner(env=WIDE).invoke(
        app, ["run", str(tmp_path / "study.yaml"), "--output", str(tmp_path / "runs")], env={"FTCOMPARE_CACHE": str(cache_dir)}
    )
    assert result.exit_code == 0, result.output
    experiment = tmp_path / "runs" / "judged"
    for run in ("_base", "full-s0"):
        suite = json.loads((experiment / run / "eval.json").read_text())["suites"]["instructions"]
        samples = [json.loads(line) for line in (experiment / run / "samples.jsonl").read_text().splitlines()]
        judged = [s for s in samples if s["suite"] == "instructions"]
        greedy = suite["greedy"]
        assert len(judged) == greedy["problems"] == 20 and suite["in_domain"] is False
        assert suite["judge"]["rubric"] == DEFAULT_RUBRIC and suite["judge"]["weights"]["path"] == str(directory)
        assert all(s["judge_rubric_sha256"] == suite["judge"]["rubric_sha256"] for s in judged)
        assert all("program" not in s and s["status"] == s["judge_verdict"] for s in judged)
        assert greedy["status_counts"] == {k: v for k, v in greedy["verdict_counts"].items() if v}
        assert sum(c["items"] for c in greedy["per_category"].values()) == 20
        for category, counts in greedy["per_category"].items():
            mine = [s for s in judged if s["category"] == category]
            assert counts["scored"] == sum(s["judge_verdict"] == "scored" for s in mine)
            scores = [s["judge_score"] for s in mine if s["judge_verdict"] == "scored"]
            assert counts["mean"] == (pytest.approx(sum(scores) / len(scores)) if scores else None)
        assert "isolation_counts" not in greedy  # no program ran
    report = (experiment / "report.md").read_text()
    assert "## Judged suites (greedy)" in report and f"Judge: local {directory}" in report
    assert "| run | math | code | translation | generation | closed_qa | macro | scored | unparseable |" in report
    rescored = CliRunner(env=WIDE).invoke(app, ["rescore", str(experiment)])  # nothing to recompute, nothing breaks
    assert rescored.exit_code == 0 and rescored.stdout.count(": rescored") == 2, rescored.output


def test_the_judged_table_has_a_row_per_run_and_a_dash_for_no_score():
    greedy = judged_metrics([_record("a1", "a", "scored", 0.5), _record("b1", "b", "unparseable")])
    suite = {"greedy": greedy, "judge": {"kind": "endpoint", "model": "m", "url": "http://x/v1", "rubric_sha256": "ab" * 32}}
    tables = judged_tables([{"run_id": "base", "suites": {"ins": suite}}, {"run_id": "lora", "suites": {"ins": suite}}])
    assert [t["suite"] for t in tables] == ["ins"] and tables[0]["judge"] == "endpoint m at http://x/v1"
    assert tables[0]["body"] == [[run, "0.500", "–", "0.500", "1", "1", "0", "0"] for run in ("base", "lora")]


def test_replies_come_back_in_the_order_of_the_items(fake_endpoint):
    """Replies come back in the items' order whatever order the concurrent requests finish in."""
    answers = list(itertools.islice(itertools.cycle(["good", "other"]), 12))
    fields, _ = judge_answers(EndpointJudge(url=fake_endpoint, model="m", concurrency=6), _items(*answers))
    assert [f["judge_score"] for f in fields] == [0.9 if a == "good" else 0.1 for a in answers]


@pytest.mark.parametrize("module", ["ftcompare.evaluate.judge", "ftcompare.evaluate.calibrate", "ftcompare.data.instructions"])
def test_each_module_imports_first(module):
    """data/ imports the judge's config and the judge reads data/'s records: neither may import the other back
    while it loads, whichever a program imports first."""
    result = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]


def test_calibration_reads_committed_gzipped_samples_and_names_a_run_without_any(tmp_path):
    records = [{"suite": "test", "mode": "greedy", "task_id": "t0", "extracted_code": "x", "status": "passed", "passed": True}]
    (tmp_path / "samples.jsonl.gz").write_bytes(gzip.compress(json.dumps(records[0]).encode() + b"\n"))
    assert executed_records(tmp_path, "test", "greedy") == records
    with pytest.raises(InputError, match=r"no samples\.jsonl"):
        executed_records(tmp_path / "elsewhere", "test", "greedy")
