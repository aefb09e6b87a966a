"""The run store: `<output>/<experiment>/<run_id>/`, every file written atomically.

A run's stages (train, evaluate, analyse) each leave one record file; a stage whose record exists is
done and is skipped when a sweep is re-run, so an interrupted sweep resumes where it stopped. The
`done.json` marker is written last.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Iterable

STUDY_FILE = "study.json"
DONE_FILE = "done.json"
BASE_DIR = "_base"  # the base model's own evaluation and cached SVDs, shared by every run


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temporary file in the same folder and os.replace: readers see old or new, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_json(path: Path, payload: object) -> None:
    atomic_write_text(path, json.dumps(payload, indent=2, default=str) + "\n")


def write_jsonl(path: Path, records: Iterable[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(record, default=str) + "\n" for record in records))


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


class RunDir:
    """The files of one run."""

    def __init__(self, path: Path):
        self.path = Path(path)

    @property
    def run_id(self) -> str:
        return self.path.name

    def file(self, name: str) -> Path:
        return self.path / name

    def has(self, name: str) -> bool:
        return self.file(name).is_file()

    @property
    def done(self) -> bool:
        return self.has(DONE_FILE)

    @property
    def has_trained_weights(self) -> bool:
        """Trained, with its weights saved: a weights folder copied without its tensors (configs only) is not."""
        return self.has("train.json") and any(self.file("weights").glob("*.safetensors"))

    @property
    def progress(self) -> str:
        """How far the run got, read from its records: what resuming the sweep will skip, and what it redoes."""
        if self.done:
            return "done"
        if not self.has("train.json"):
            return "not started"
        if not self.has_trained_weights:
            return "weights lost"  # resuming retrains it, discarding what was measured on the lost model
        return "evaluated" if self.has("eval.json") else "trained"


def experiment_dir(output: Path, experiment: str) -> Path:
    return Path(output) / experiment


def run_dirs(experiment: Path) -> list[RunDir]:
    """The runs recorded under an experiment folder, in the study's run order when known."""
    experiment = Path(experiment)
    study_file = experiment / STUDY_FILE
    if study_file.is_file():
        order = [run["run_id"] for run in read_json(study_file)["runs"]]
        return [RunDir(experiment / run_id) for run_id in order if (experiment / run_id).is_dir()]
    return sorted((RunDir(p) for p in experiment.iterdir() if p.is_dir() and not p.name.startswith(("_", "."))),
                  key=lambda run: run.run_id)
