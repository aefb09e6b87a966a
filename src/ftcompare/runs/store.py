"""The run store: `<output>/<experiment>/<run_id>/`, every file written atomically.

A run's stages (train, evaluate, analyse) each leave one record file; a stage whose record exists is
done and is skipped when a sweep is re-run, so an interrupted sweep resumes where it stopped. The
`done.json` marker is written last.

A record may also be kept gzipped, as `<name>.gz` (how a study's records are committed, e.g. docs/findings): it is
read in place of `<name>` when that is absent, so `ftcompare report`, `rescore` and `judge-calibrate` run on
committed records as they are.
"""

from __future__ import annotations

import errno
import gzip
import json
import os
import tempfile
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path

from ftcompare.schema import InputError

STUDY_FILE = "study.json"
DONE_FILE = "done.json"
BASE_DIR = "_base"  # the base model's own evaluation and cached SVDs, shared by every run
EXECUTOR_FILE = "executor.json"  # each session of the study: its executor, when it ran, what it did


# why a folder cannot be written that the user can fix (a full disk, no permission, a file where a folder
# should be); other OS errors are bugs or hardware and keep their traceback
FIXABLE_WRITE_ERRORS = {
    errno.ENOSPC,
    errno.EDQUOT,
    errno.EACCES,
    errno.EPERM,
    errno.EROFS,
    errno.ENOTDIR,
    errno.EEXIST,
    errno.EISDIR,
}


class OutputError(InputError):
    """A record or folder of the output could not be written, for a reason the user can fix."""


def writable_folder(folder: Path) -> Path:
    """Create `folder` (and its parents) if needed; OutputError, naming it, if that cannot be done."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        _raise_if_fixable(folder, error)
        raise
    return folder


def check_writable(folder: Path) -> None:
    """OutputError if `folder` could not be created and written, judged without writing anything (a full disk
    shows only when writing): its nearest existing ancestor must be a folder this process may write in."""
    existing = Path(folder).absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise OutputError(existing, "cannot write there: a file is in the way of a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputError(existing, "cannot write there: permission denied (or a read-only file system)")


def _raise_if_fixable(path: Path, error: OSError) -> None:
    """Raise OutputError naming `path` when `error` is one the user can fix; return otherwise."""
    if error.errno in FIXABLE_WRITE_ERRORS:
        reason = "a file is in the way of a folder" if error.errno in (errno.ENOTDIR, errno.EEXIST) else os.strerror(error.errno)
        raise OutputError(
            path,
            f"cannot write there: {reason} ({error.filename or path}); fix that and run the same "
            "command again (what was finished is kept)",
        ) from None


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temporary file in the same folder and os.replace: readers see old or new, never half.
    A full disk, a read-only folder or a file in the way raise OutputError naming the path."""
    writable_folder(path.parent)
    temporary = None
    try:
        handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        with os.fdopen(handle, "w") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException as error:
        if temporary is not None:
            Path(temporary).unlink(missing_ok=True)
        if isinstance(error, OSError):
            _raise_if_fixable(path, error)
        raise


def write_json(path: Path, payload: object) -> None:
    atomic_write_text(path, json.dumps(payload, indent=2, default=str) + "\n")


def write_jsonl(path: Path, records: Iterable[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(record, default=str) + "\n" for record in records))


def read_json(path: Path) -> dict:
    """A record; InputError naming the file if it is not JSON (records are written atomically, so a broken one
    was changed by something else)."""
    text = _read_record_text(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise InputError(
            path,
            f"not valid JSON ({error.msg} at line {error.lineno} column {error.colno}); "
            "repair it or delete it (and what was recorded with it)",
        ) from None


def read_jsonl(path: Path) -> list[dict]:
    records = []
    for number, line in enumerate(_read_record_text(path).splitlines(), start=1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise InputError(f"{path}:{number}", f"not valid JSON ({error.msg} at column {error.colno})") from None
    return records


def stored(path: Path) -> Path:
    """The file that holds record `path`: itself, or `path.gz` when only the gzipped copy exists."""
    path = Path(path)
    compressed = path.with_name(path.name + ".gz")
    return compressed if not path.is_file() and compressed.is_file() else path


def _read_record_text(path: Path) -> str:
    source = stored(path)
    data = source.read_bytes()
    if source != Path(path):
        try:
            data = gzip.decompress(data)
        except (gzip.BadGzipFile, EOFError, zlib.error) as error:
            raise InputError(source, f"not a readable gzip file ({error}); repair it or delete it") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise InputError(
            path, f"not UTF-8 text (byte {error.object[error.start]:#04x} at offset {error.start}); repair it or delete it"
        ) from None


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
        """Whether the run holds record `name`, plain or gzipped (`stored`)."""
        return stored(self.file(name)).is_file()

    def reuse(self, name: str, compute: Callable[[], dict], key: str | None = None) -> dict:
        """The record `name` if an earlier session wrote it, else what `compute()` returns (it writes the
        record): a stage that left its record is not done again. `key`: that part of the record only."""
        record = read_json(self.file(name)) if self.has(name) else compute()
        return record if key is None else record[key]

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


def begin_session(experiment: Path, session: dict) -> int:
    """Add a session of the study (its executor and start) to the experiment's `executor.json` as it starts: one cut
    short (its driver killed, its machine taken back) keeps that much, and the report reads how far it got from the
    runs it finished. Its index, for `end_session`."""
    sessions = read_sessions(experiment)
    write_json(experiment / EXECUTOR_FILE, {"sessions": [*sessions, session]})
    return len(sessions)


def end_session(experiment: Path, index: int, session: dict) -> None:
    """Record session `index` as it ended: its wall time and what it did."""
    sessions = read_sessions(experiment)
    sessions[index] = session
    write_json(experiment / EXECUTOR_FILE, {"sessions": sessions})


def read_sessions(experiment: Path) -> list[dict]:
    record = experiment / EXECUTOR_FILE
    return read_json(record)["sessions"] if record.is_file() else []


def experiment_dir(output: Path, experiment: str) -> Path:
    return Path(output) / experiment


def run_dirs(experiment: Path) -> list[RunDir]:
    """The runs recorded under an experiment folder, in the study's run order when known."""
    experiment = Path(experiment)
    study_file = experiment / STUDY_FILE
    if study_file.is_file():
        order = [run["run_id"] for run in read_json(study_file)["runs"]]
        return [RunDir(experiment / run_id) for run_id in order if (experiment / run_id).is_dir()]
    return sorted(
        (RunDir(p) for p in experiment.iterdir() if p.is_dir() and not p.name.startswith(("_", "."))), key=lambda run: run.run_id
    )
