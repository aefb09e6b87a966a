import errno
import gzip
import os

import pytest

from ftcompare.runs import store
from ftcompare.runs.store import RunDir, atomic_write_text, read_json, read_jsonl, run_dirs, write_json, write_jsonl
from ftcompare.schema import InputError


def test_json_and_jsonl_round_trip(tmp_path):
    write_json(tmp_path / "a" / "m.json", {"x": 1.5})
    write_jsonl(tmp_path / "s.jsonl", [{"i": 1}, {"i": 2}])
    assert read_json(tmp_path / "a" / "m.json") == {"x": 1.5}
    assert read_jsonl(tmp_path / "s.jsonl") == [{"i": 1}, {"i": 2}]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "m.json"
    atomic_write_text(path, "old")

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(store.os, "replace", broken_replace)
    with pytest.raises(OSError):
        atomic_write_text(path, "new")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]


def test_run_dirs_follow_the_study_order(tmp_path):
    for run_id in ("b", "a", "_base"):
        (tmp_path / run_id).mkdir()
    assert [r.run_id for r in run_dirs(tmp_path)] == ["a", "b"]
    write_json(tmp_path / store.STUDY_FILE, {"runs": [{"run_id": "b"}, {"run_id": "a"}]})
    assert [r.run_id for r in run_dirs(tmp_path)] == ["b", "a"]
    run = RunDir(tmp_path / "a")
    assert not run.done
    write_json(run.file(store.DONE_FILE), {})
    assert run.done


def test_progress_names_the_last_stage_a_run_recorded(tmp_path):
    run = RunDir(tmp_path / "lora-r4-s0")
    assert run.progress == "not started"
    write_json(run.file("train.json"), {})
    assert run.progress == "weights lost"  # trained, and no weights folder came back
    (run.file("weights")).mkdir()
    run.file("weights/adapter_config.json").write_text("{}")
    assert run.progress == "weights lost"  # a weights folder without its tensors
    run.file("weights/adapter_model.safetensors").write_bytes(b"")
    assert run.progress == "trained"
    write_json(run.file("eval.json"), {})
    assert run.progress == "evaluated"
    write_json(run.file(store.DONE_FILE), {})
    assert run.progress == "done"


@pytest.mark.parametrize(
    "content, message",
    [
        (b'{"runs": [', "not valid JSON (Expecting value at line 1 column 11)"),
        (b"\xff{}", "not UTF-8 text (byte 0xff at offset 0)"),
    ],
)
def test_a_broken_record_is_named(tmp_path, content, message):
    path = tmp_path / "study.json"
    path.write_bytes(content)
    with pytest.raises(InputError) as error:
        read_json(path)
    assert str(error.value).startswith(f"{path}: {message}")
    (tmp_path / "s.jsonl").write_text('{"i": 1}\n{"i": \n')
    with pytest.raises(InputError, match=r"s\.jsonl:2: not valid JSON"):
        read_jsonl(tmp_path / "s.jsonl")


def test_a_full_disk_is_an_output_error_naming_the_file_and_other_os_errors_stay_as_they_are(tmp_path, monkeypatch):
    def replace_with(code):
        def broken(src, dst):
            raise OSError(code, os.strerror(code))

        return broken

    monkeypatch.setattr(store.os, "replace", replace_with(errno.ENOSPC))
    with pytest.raises(store.OutputError, match=r"m\.json: cannot write there: No space left on device"):
        atomic_write_text(tmp_path / "m.json", "x")
    monkeypatch.setattr(store.os, "replace", replace_with(errno.EIO))  # hardware: keeps its traceback
    with pytest.raises(OSError) as error:
        atomic_write_text(tmp_path / "m.json", "x")
    assert not isinstance(error.value, InputError)
    assert list(tmp_path.iterdir()) == []


def test_a_file_in_the_way_of_the_output_is_named_without_writing(tmp_path):
    (tmp_path / "runs").write_text("")
    with pytest.raises(store.OutputError, match=r"runs: cannot write there: a file is in the way"):
        store.check_writable(tmp_path / "runs" / "quickstart")
    with pytest.raises(store.OutputError, match=r"runs/sub: cannot write there: a file is in the way"):
        write_json(tmp_path / "runs" / "sub" / "m.json", {})
    store.check_writable(tmp_path / "new" / "deeper")  # a folder that can be made
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"]


def test_a_gzipped_record_is_read_in_place_of_the_plain_one(tmp_path):
    """Committed study records keep their large files gzipped (docs/findings): read as they are, the plain file
    first when both exist, a broken archive named."""
    run = RunDir(tmp_path / "lora-r1-s0")
    run.path.mkdir()
    run.file("samples.jsonl.gz").write_bytes(gzip.compress(b'{"i": 1}\n{"i": 2}\n'))
    run.file("spectral.json.gz").write_bytes(gzip.compress(b'{"summary": {"total_intruders": 3}}'))
    assert run.has("samples.jsonl") and run.has("spectral.json") and not run.has("eval.json")
    assert read_jsonl(run.file("samples.jsonl")) == [{"i": 1}, {"i": 2}]
    assert run.reuse("spectral.json", lambda: pytest.fail("recomputed"), key="summary") == {"total_intruders": 3}
    write_json(run.file("spectral.json"), {"summary": {"total_intruders": 4}})  # a newer plain record wins
    assert read_json(run.file("spectral.json"))["summary"]["total_intruders"] == 4
    run.file("samples.jsonl.gz").write_bytes(b"not gzip")
    with pytest.raises(InputError, match=r"samples\.jsonl\.gz: not a readable gzip file"):
        read_jsonl(run.file("samples.jsonl"))
    with pytest.raises(FileNotFoundError):
        read_json(run.file("eval.json"))


def test_a_session_is_recorded_as_it_starts_and_completed_as_it_ends(tmp_path):
    first = store.begin_session(tmp_path, {"executor": "ray", "started_at": "t0"})
    second = store.begin_session(tmp_path, {"executor": "local", "started_at": "t1"})
    assert (first, second) == (0, 1)
    assert store.read_sessions(tmp_path) == [{"executor": "ray", "started_at": "t0"}, {"executor": "local", "started_at": "t1"}]
    store.end_session(tmp_path, second, {"executor": "local", "started_at": "t1", "wall_s": 5.0})
    assert [session.get("wall_s") for session in store.read_sessions(tmp_path)] == [None, 5.0]  # the first: cut short
