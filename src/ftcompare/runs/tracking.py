"""Experiment trackers: every run of a study is a tracked run, named by its run id, in the trackers accelerate
supports (TensorBoard by default, MLflow or W&B by config), with its run spec and the study's config as
parameters, each training log record as it is written (loss, learning rate, gradient norm, tokens/s, peak
memory) and its final metrics (`metrics.json`, flattened to scalars) once it is done.

accelerate does the logging (`Accelerator(log_with=...)`, `init_trackers`, `log`); this module names the runs,
flattens the records and decides what a session logs. A tracked run starts at the first value a session logs for
it, so a run reused from its records logs nothing of its training, and a finished run nothing at all; a session
that trains (again) from some step on starts TensorBoard's writer with `purge_step` there, which hides what an
interrupted session had logged from that step on; W&B resumes the same run id and drops steps it has already seen.

Records: TensorBoard's event files in `<tracking dir>/<run_id>/` (by default `<experiment>/_tracking/`);
`tracking` in `study.json` names the trackers a session logged to, or says "none (...)" and why.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field, field_validator

from ftcompare.schema import Strict

if TYPE_CHECKING:
    from accelerate import Accelerator

    from ftcompare.config import StudyConfig
    from ftcompare.context import StudyContext
    from ftcompare.matrix import RunSpec
    from ftcompare.runs.store import RunDir

TrackerName = Literal["tensorboard", "mlflow", "wandb"]
INSTALL_HINTS = {"tensorboard": "pip install 'ftcompare[tracking]'", "mlflow": "pip install mlflow", "wandb": "pip install wandb"}
DEFAULT_DIR = "_tracking"  # under the experiment folder; "_" keeps it out of the folders taken for runs
TRAINING_SCALARS = ("loss", "lr", "grad_norm", "tokens_per_s", "peak_memory_mb")  # of each train_log.jsonl record
FINAL_PREFIX = "final/"


class TrackingConfig(Strict):
    """Experiment trackers (accelerate's): each run is a tracked run named by its run id, with the run spec and
    the study's config as parameters, its training log as it is written (loss, lr, gradient norm, tokens/s,
    peak memory at every logging step) and its final metrics (metrics.json, flattened to scalars) when it is
    done. Watch a sweep with `tensorboard --logdir <output>/<experiment>/_tracking`."""

    trackers: list[TrackerName] | None = Field(
        default=None,
        description="The trackers to log to: tensorboard (event files, no account), mlflow (its tracking URI: "
        "$MLFLOW_TRACKING_URI or MLflow's local default), wandb (needs `wandb login`, or WANDB_MODE=offline for local "
        "files). A named tracker that is not installed fails at load, naming what to install. None, the default: "
        "tensorboard when it is installed (the `tracking` extra), otherwise nothing, with a warning and "
        '"none (tensorboard not installed)" in study.json. `[]`: no tracking.',
    )
    project: str | None = Field(
        default=None,
        description="The project the runs are logged under (MLflow's experiment, W&B's project); None: the "
        "study's experiment name.",
    )
    dir: Path | None = Field(
        default=None,
        description="Where local trackers write: TensorBoard's event files go to `<dir>/<run_id>/`, W&B's files to "
        "`<dir>/wandb/`. A relative path resolves against the experiment folder (not the config's). None: "
        "`<experiment folder>/_tracking`.",
    )

    @field_validator("trackers")
    @classmethod
    def _installed(cls, value: list[str] | None) -> list[str] | None:
        if value is not None:
            if len(set(value)) != len(value):
                raise ValueError(f"name each tracker once, got {value}")
            for name in value:
                if not tracker_installed(name):
                    raise ValueError(f"{name} is not installed: {INSTALL_HINTS[name]} (or leave it out of tracking.trackers)")
        return value


def tracker_installed(name: str) -> bool:
    """Whether accelerate finds `name`'s package (accelerate itself skips a missing one without a word)."""
    from accelerate.utils import is_mlflow_available, is_tensorboard_available, is_wandb_available

    return {"tensorboard": is_tensorboard_available, "mlflow": is_mlflow_available, "wandb": is_wandb_available}[name]()


def active_trackers(config: TrackingConfig) -> tuple[list[str], str | None]:
    """The trackers a session logs to, and, where there are none, why."""
    if config.trackers is None:
        if tracker_installed("tensorboard"):
            return ["tensorboard"], None
        return [], "none (tensorboard not installed)"
    return list(config.trackers), None if config.trackers else "none (tracking.trackers: [])"


def tracking_dir(config: TrackingConfig, experiment: Path) -> Path:
    return Path(experiment) / (config.dir if config.dir is not None else DEFAULT_DIR)  # an absolute dir replaces it


def announce_tracking(config: StudyConfig, experiment: Path, console) -> dict | str:
    """Say where this session's runs are tracked (a warning where TensorBoard, the default, is missing); the
    record `study.json` keeps of it."""
    from rich.markup import escape

    trackers, none = active_trackers(config.tracking)
    if none:
        if config.tracking.trackers is None:
            hint = f"{INSTALL_HINTS['tensorboard']} to watch the runs in TensorBoard"
            console.print(f"[yellow]warning:[/] tracking: {none}; {escape(hint)}", highlight=False, soft_wrap=True)
        return none
    folder = tracking_dir(config.tracking, experiment)
    where = f" (tensorboard --logdir {folder})" if "tensorboard" in trackers else ""
    console.print(escape(f"tracking: {', '.join(trackers)}{where}"), highlight=False, soft_wrap=True)
    return {"trackers": trackers, "project": config.tracking.project or config.experiment, "dir": str(folder)}


def scalar_name(key: str) -> str:
    """A name every tracker accepts (MLflow allows only letters, digits, `_ - . / :` and spaces): pass@1 → pass_at_1."""
    return re.sub(r"[^\w./ :-]", "_", key.replace("@", "_at_"))


def flatten(record: object, prefix: str = "") -> Iterator[tuple[str, object]]:
    """(`a/b/0/c`, value) for every leaf of nested dicts and lists."""
    if isinstance(record, dict):
        for key, value in record.items():
            yield from flatten(value, f"{prefix}{key}/")
    elif isinstance(record, (list, tuple)):
        for index, value in enumerate(record):
            yield from flatten(value, f"{prefix}{index}/")
    else:
        yield prefix.removesuffix("/"), record


def hyperparameters(run: RunSpec, config: StudyConfig) -> dict[str, str | int | float | bool]:
    """A run's parameters for the trackers: its spec (`run/...`) and the study's config (`config/...`), as
    scalars and strings (a list of scalars as its JSON text; unset fields left out)."""

    def leaves(record: object, prefix: str) -> Iterator[tuple[str, object]]:
        if isinstance(record, list) and all(not isinstance(v, (dict, list)) for v in record):
            yield prefix.removesuffix("/"), json.dumps(record)
        elif isinstance(record, (dict, list)):
            for key, value in record.items() if isinstance(record, dict) else enumerate(record):
                yield from leaves(value, f"{prefix}{key}/")
        else:
            yield prefix.removesuffix("/"), record

    spec = {**run.model_dump(mode="json"), "label": run.label}
    pairs = [*leaves(spec, "run/"), *leaves(config.model_dump(mode="json", exclude={"tracking"}), "config/")]
    return {scalar_name(key): value for key, value in pairs if value is not None}


def final_scalars(metrics: dict, leave_out: set[str] = frozenset()) -> dict[str, float]:
    """The numbers of a run's `metrics.json` as `final/<path>` scalars: every number but the per-problem scores
    (the samples' records, not a summary) and the top-level keys in `leave_out` (the run spec: parameters)."""
    summary = {key: value for key, value in metrics.items() if key not in leave_out}
    return {
        scalar_name(FINAL_PREFIX + key): float(value)
        for key, value in flatten(summary)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and "per_problem" not in key
    }


class RunTracker:
    """One run's tracked run in this session's trackers; nothing starts until a value is logged (see the module's
    docstring for what that buys on a resume). With no trackers every call does nothing."""

    def __init__(self, trackers: list[str], project: str, folder: Path, run: RunSpec, hparams: dict, wandb_id: str, cpu: bool):
        self.trackers, self.project, self.folder, self.run = trackers, project, folder, run
        self.hparams, self.wandb_id, self.cpu = hparams, wandb_id, cpu
        self.accelerator: Accelerator | None = None

    def log_training(self, record: dict, step_offset: int = 0) -> None:
        """One `train_log.jsonl` record as `train/<name>` at its step (plus the steps of a sequence's earlier stages)."""
        values = {f"train/{name}": record[name] for name in TRAINING_SCALARS if record.get(name) is not None}
        self._log(values, step_offset + record["step"], retraining=True)

    def log_final(self, metrics: dict) -> None:
        """The run's `metrics.json` numbers as `final/...`, at its last training step."""
        self._log(final_scalars(metrics, set(self.run.model_dump())), metrics["train"]["steps"], retraining=False)

    def _log(self, values: dict, step: int, retraining: bool) -> None:
        if not self.trackers:
            return
        if self.accelerator is None:
            self.accelerator = self._start(purge_step=step if retraining else None)
        self.accelerator.log(values, step=step)

    def _start(self, purge_step: int | None) -> Accelerator:
        from accelerate import Accelerator
        from accelerate.tracking import TensorBoardTracker

        run_id = self.run.run_id
        # TensorBoard's run is a folder: an instance names it by the run id (by name, accelerate would use the project)
        log_with = [
            TensorBoardTracker(run_id, self.folder, purge_step=purge_step) if n == "tensorboard" else n for n in self.trackers
        ]
        if "wandb" in self.trackers:
            (self.folder / "wandb").mkdir(parents=True, exist_ok=True)
        accelerator = Accelerator(cpu=self.cpu, log_with=log_with)
        accelerator.init_trackers(
            self.project,
            config=self.hparams,
            init_kwargs={
                "mlflow": {"run_name": run_id},
                "wandb": {"name": run_id, "id": self.wandb_id, "resume": "allow", "dir": str(self.folder)},
            },
        )
        return accelerator

    def close(self) -> None:
        if self.accelerator is not None:
            # not accelerator.end_training(): it also ends torch.distributed, which the study's next run still needs
            for tracker in self.accelerator.trackers:
                tracker.finish()
            self.accelerator = None


@contextmanager
def tracked_run(run: RunSpec, run_dir: RunDir, context: StudyContext) -> Iterator[RunTracker]:
    """The run's tracker for this session's work on it, closed however the work ends (one that tracks nothing on
    the ranks of a distributed launch but rank 0)."""
    config = context.config
    trackers, _ = active_trackers(config.tracking) if context.writes else ([], None)
    folder = tracking_dir(config.tracking, context.experiment)
    # a W&B id per experiment folder and config of the run: a resumed session continues the same W&B run
    identity = f"{Path(context.experiment).resolve()}:{run_dir.file('run.json').read_text() if run_dir.has('run.json') else ''}"
    wandb_id = f"{run.run_id}-{hashlib.sha256(identity.encode()).hexdigest()[:12]}"
    tracker = RunTracker(
        trackers,
        config.tracking.project or config.experiment,
        folder,
        run,
        hyperparameters(run, config) if trackers else {},
        wandb_id,
        cpu=context.device.type == "cpu",
    )
    try:
        yield tracker
    finally:
        tracker.close()
