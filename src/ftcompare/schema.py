"""What every config class is built from: the strict frozen base, the errors that name a file and a field,
and the field checks several sections share. Config classes live with the code they configure (a method in
`models/methods/`, a suite in `data/`); `config.py` assembles them into the study's schema."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Generic, TypeVar

from pydantic import BaseModel, ConfigDict

T = TypeVar("T")


class InputError(ValueError):
    """Input the user can fix (a config, a data file, an output folder, a record left on disk): one line
    naming the file, the field where there is one, and what is wrong. The CLI prints it and exits 2."""

    def __init__(self, path: object, message: str, field: str | None = None):
        self.path, self.field, self.message = str(path), field, message
        line = f"{self.path}: " + (f"{field}: " if field else "") + message
        super().__init__(line.replace("\n", " "))  # one line, whatever the message held


class ConfigError(InputError):
    """An invalid config: the message is one line naming the file and the field."""


class Strict(BaseModel):
    """A config section: unknown keys are errors, and a loaded config is never mutated."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def as_list(value):
    """A sweepable field's values: the list, or the single value as a list of one."""
    return value if isinstance(value, list) else [value]


def existing_file(path: Path | None) -> Path | None:
    """A field check: the path, if given, names a file."""
    if path is not None and not path.is_file():
        raise ValueError(f"file not found: {path}")
    return path


def check_data_fractions(value: float | list[float] | None) -> float | list[float] | None:
    """A field check: one or more fractions of the training set, each in (0, 1]."""
    if value is not None:
        if not as_list(value):
            raise ValueError("give at least one fraction")
        for fraction in as_list(value):
            if not 0 < fraction <= 1:
                raise ValueError(f"a fraction of the training set must be in (0, 1], got {fraction}")
    return value


class Registry(Generic[T]):
    """Things by kind (methods, tasks, suites): an unknown kind raises, naming the known ones, and listeners
    hear of every addition (the config rebuilds its unions of sections from these)."""

    def __init__(self, what: str):
        self.what = what
        self._items: dict[str, T] = {}
        self._listeners: list[Callable[[], None]] = []

    def add(self, kind: str, item: T, same: Callable[[T, T], bool] = lambda a, b: a is b) -> None:
        """Register `item` as `kind`; a kind taken by something else is an error (registering it again is not)."""
        if kind in self._items and not same(self._items[kind], item):
            raise ValueError(f"{self.what} kind {kind!r} is already registered")
        self._items[kind] = item
        for listener in self._listeners:
            listener()

    def on_change(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)

    def __getitem__(self, kind: str) -> T:
        if kind not in self._items:
            raise ValueError(f"unknown {self.what} kind {kind!r}; known: {', '.join(self._items)}")
        return self._items[kind]

    def __contains__(self, kind: object) -> bool:
        return kind in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def values(self) -> list[T]:
        return list(self._items.values())


def kind_of(settings: type[BaseModel]) -> str:
    """The `kind` a config class declares (`kind: Literal["mbpp"] = "mbpp"`): the tag the config's unions use."""
    field = settings.model_fields.get("kind")
    kinds = getattr(field.annotation, "__args__", ()) if field is not None else ()
    if len(kinds) != 1 or field.default != kinds[0]:
        raise TypeError(f"{settings.__qualname__} needs `kind: Literal[<kind>] = <kind>` to be registered")
    return kinds[0]
