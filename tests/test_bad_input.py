"""Bad invocations end in one line naming the file and what is wrong, exit non-zero, and leave nothing that
blocks the corrected run; the built-in base's cache survives concurrent builders and kills."""

import errno
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from ftcompare.cli import app
from ftcompare.console import console
from ftcompare.models.builtin import TEMP_MARK, build_once, remove_stale_temporaries
from ftcompare.runs import store
from tests.conftest import TINY_BUILTIN

PROBLEMS = [
    {
        "task_id": f"p{i}",
        "prompt": f'def f(x):\n    """Return x plus {i}."""\n',
        "completion": f"    return x + {i}\n",
        "tests": [f"assert f(1) == {1 + i}"],
    }
    for i in range(4)
]
# a study on a user task small enough to run in seconds on the session's tiny base
STUDY = {
    "experiment": "bad",
    "base": {"model": "builtin:tiny-code", "builtin": TINY_BUILTIN},
    "task": {"kind": "jsonl", "train": "train.jsonl", "test": "test.jsonl"},
    "methods": [{"kind": "full", "lr": 1e-3}],
    "training": {"max_steps": 2, "batch_size": 2},
    "evaluation": {"n_samples": 0, "k": [1], "max_new_tokens": 8, "timeout_s": 3, "forgetting": None, "latency": None},
    "analyses": {"spectral": None},
}


def _write_jsonl(path: Path, records) -> None:
    path.write_text("".join(json.dumps(record) + "\n" for record in records))


@pytest.fixture
def study(tmp_path) -> Path:
    """A valid study config beside its data files; its output goes to tmp_path / "runs"."""
    _write_jsonl(tmp_path / "train.jsonl", PROBLEMS)
    _write_jsonl(tmp_path / "test.jsonl", PROBLEMS[:2])
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(STUDY))
    return path


def _invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def _one_error_line(result, *names: str) -> str:
    """The command failed cleanly: non-zero, no traceback, exactly one line, naming each of `names`."""
    assert result.exit_code != 0
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)  # not a crash
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1, result.output
    assert all(name in errors[0] for name in names), errors[0]
    return errors[0]


def _runs_cleanly(study: Path) -> None:
    result = _invoke("run", str(study), "--output", str(study.parent / "runs"))
    assert result.exit_code == 0, result.output
    assert (study.parent / "runs" / "bad" / "full-s0" / "done.json").is_file()


def test_a_config_that_is_not_utf8_is_named(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("experiment: café\nmethods: [{kind: full}]\n".encode("latin-1"))
    _one_error_line(_invoke("run", str(path)), str(path), "not UTF-8")


BAD_TASK_FILES = {
    "empty": (b"", "no problems"),
    "not JSON": (b'{"prompt": "x", "completion": \n', "train.jsonl:1: not valid JSON"),
    "not UTF-8": (b'{"prompt": "caf\xe9", "completion": "x"}\n', "train.jsonl:1: not UTF-8"),
    "mistyped": (b'{"prompt": ["x"], "completion": "y"}\n', "train.jsonl:1: prompt: must be text"),
    "tests as one string": (
        b'{"prompt": "x", "completion": "y", "tests": "assert f(1) == 2"}\n',
        "train.jsonl:1: tests: must be a list of assert statements, got one string",
    ),
    "tests not text": (b'{"prompt": "x", "completion": "y", "tests": [1, 2]}\n', "train.jsonl:1: tests: must be a list"),
    "a list, not an object": (b'["x", "y"]\n', "train.jsonl:1: not a JSON object"),
    "repeated task id": (
        b'{"task_id": 1, "prompt": "x", "completion": "y"}\n{"task_id": "1", "prompt": "z", "completion": "y"}\n',
        "train.jsonl:2: task_id: '1' is also the task_id of line 1",
    ),
}


@pytest.mark.slow
def test_bad_task_files_fail_naming_file_line_and_field_and_leave_nothing_behind(study, tiny_base, cache_dir):
    output = study.parent / "runs"
    good = (study.parent / "train.jsonl").read_bytes()
    for content, message in BAD_TASK_FILES.values():
        (study.parent / "train.jsonl").write_bytes(content)
        for command in (["run", str(study), "--output", str(output)], ["run", str(study), "--dry-run", "--output", str(output)]):
            _one_error_line(_invoke(*command), str(study), "task.train", message)
        assert not output.exists()  # failed at load: nothing written that a corrected run could trip on
    (study.parent / "train.jsonl").write_bytes(good)
    _runs_cleanly(study)


def test_a_test_problem_without_asserts_is_refused(study):
    _write_jsonl(study.parent / "test.jsonl", [{k: v for k, v in PROBLEMS[0].items() if k != "tests"}])
    _one_error_line(_invoke("run", str(study), "--dry-run"), "test.jsonl:1", "tests: a problem of the test suite needs")


@pytest.mark.slow
def test_a_stub_left_by_an_earlier_crash_does_not_block_the_corrected_config(study, tiny_base):
    # what an older ftcompare left when a bad task file crashed it after binding the run directories
    stub = study.parent / "runs" / "bad" / "full-s0"
    store.write_json(stub / "run.json", {"run": "an earlier config", "fingerprint": "0" * 16})
    store.write_json(stub.parent / "_base" / "run.json", {"run": "base", "fingerprint": "0" * 16})
    _runs_cleanly(study)


@pytest.mark.parametrize("parent", ["a file", "read-only"])
def test_an_output_folder_that_cannot_be_made_is_named_before_anything_runs(study, monkeypatch, parent):
    blocker = study.parent / "blocker"
    if parent == "a file":
        blocker.write_text("")
        message = "a file is in the way"
    else:  # as root a chmod would not stop the write, so the check's answer is what is simulated
        blocker.mkdir()
        real_access = os.access
        monkeypatch.setattr(store.os, "access", lambda path, mode: Path(path) != blocker and real_access(path, mode))
        message = "permission denied"
    line = _one_error_line(_invoke("run", str(study), "--output", str(blocker / "runs")), str(blocker), message)
    assert "cannot write there" in line


@pytest.mark.parametrize(
    "code, reason",
    [(errno.ENOSPC, "No space left on device"), (errno.EROFS, "Read-only file system"), (errno.EACCES, "Permission denied")],
)
def test_write_errors_the_user_can_fix_become_one_line_naming_the_file(tmp_path, monkeypatch, code, reason):
    def fail(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(store.os, "fsync", fail)
    with pytest.raises(store.OutputError, match=rf"m\.json: cannot write there: {reason}"):
        store.write_json(tmp_path / "m.json", {})
    assert list(tmp_path.iterdir()) == []  # the temporary file went with the error


@pytest.mark.slow
def test_a_full_disk_fails_in_one_line_and_the_same_command_then_runs(study, monkeypatch, tiny_base):
    real_fsync = os.fsync

    def full_disk(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(store.os, "fsync", full_disk)
    _one_error_line(_invoke("run", str(study), "--output", str(study.parent / "runs")), "run.json", "No space left on device")
    monkeypatch.setattr(store.os, "fsync", real_fsync)  # space freed
    _runs_cleanly(study)


@pytest.mark.slow
def test_a_corrupt_study_json_is_named_and_a_run_writes_it_again(study, tiny_base):
    _runs_cleanly(study)
    study_json = study.parent / "runs" / "bad" / "study.json"
    for corruption in (b'{"runs": [', b"\xff\xfe{}"):
        study_json.write_bytes(corruption)
        for command in ("report", "rescore"):
            _one_error_line(_invoke(command, str(study_json.parent)), str(study_json))
    _runs_cleanly(study)  # finished runs are skipped, the record is written again
    assert json.loads(study_json.read_text())["runs"][0]["run_id"] == "full-s0"


def test_a_corrupt_run_record_is_named(study):
    run_json = study.parent / "runs" / "bad" / "full-s0" / "run.json"
    run_json.parent.mkdir(parents=True)
    run_json.write_text("{")
    _one_error_line(_invoke("run", str(study), "--output", str(study.parent / "runs")), str(run_json), "not valid JSON")


# ---- the built-in base's cache: one builder at a time, atomic, no temporaries left by a kill


def _slow_build(seconds: float, calls: list):
    def build(folder: Path) -> None:
        calls.append(folder)
        time.sleep(seconds)
        (folder / "weights.bin").write_text("w")
        (folder / "provenance.json").write_text("{}")

    return build


def test_concurrent_builders_build_once_and_the_waiter_uses_the_cache(tmp_path):
    target, calls, results = tmp_path / "builtin" / "tiny-code-small-k", [], []
    threads = [
        threading.Thread(target=lambda: results.append(build_once(target, _slow_build(0.5, calls), console))) for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1 and results == [target, target]
    assert sorted(p.name for p in target.parent.iterdir()) == ["tiny-code-small-k", "tiny-code-small-k.lock"]


def test_a_build_killed_midway_leaves_a_temporary_that_the_next_start_removes(tmp_path):
    target = tmp_path / "builtin" / "tiny-code-small-k"
    script = (
        "import sys, time; from pathlib import Path; from ftcompare.console import console; "
        "from ftcompare.models.builtin import build_once; "
        "build_once(Path(sys.argv[1]), lambda folder: ((folder / 'half').write_text('x'), time.sleep(60)), console)"
    )
    process = subprocess.Popen([sys.executable, "-c", script, str(target)], cwd=Path(__file__).parents[1])
    try:
        deadline = time.monotonic() + 60
        while not list(target.parent.glob(f"*{TEMP_MARK}*/half")):
            assert time.monotonic() < deadline and process.poll() is None, "the builder did not start"
            time.sleep(0.1)
    finally:
        process.kill()
        process.wait()
    (orphan,) = target.parent.glob(f"*{TEMP_MARK}*")
    assert remove_stale_temporaries(target.parent) == [orphan]  # its process is gone: stale, for any target
    process_alive = target.parent / f"other{TEMP_MARK}{socket.gethostname()}-{os.getpid()}-abc"
    process_alive.mkdir()
    assert remove_stale_temporaries(target.parent) == [] and process_alive.is_dir()  # a live builder's is kept
    assert build_once(target, _slow_build(0, []), console) == target and (target / "weights.bin").is_file()


def test_the_session_base_was_built_atomically(tiny_base):
    directory, provenance = tiny_base
    assert not list(directory.parent.glob(f"{directory.name}{TEMP_MARK}*"))
    assert provenance["pretrain_recipe"]["optimizer"] == "AdamW" and provenance["pretrain_steady_tokens_per_s"] > 0
