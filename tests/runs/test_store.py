import pytest

from ftcompare.runs import store
from ftcompare.runs.store import RunDir, atomic_write_text, read_json, read_jsonl, run_dirs, write_json, write_jsonl


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
