"""The Python standard library's source as a pre-training corpus, with a fixed held-out set of files.

It is on every machine that runs Python, so the built-in base model and the forgetting measure need
no download. Which files are held out is a function of the file's relative path alone (a hash), so
the split is the same on every machine with the same Python version.
"""

from __future__ import annotations

import hashlib
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

# test suites are huge and repetitive; idlelib/tkinter are GUI code; none of them help a code model
EXCLUDED_PARTS = frozenset({"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__", "lib2to3"})
HELD_OUT_MODULUS = 10  # one file in ten is held out
FILE_SEPARATOR = "\n\n"


@dataclass(frozen=True)
class Corpus:
    train_files: tuple[Path, ...]
    held_out_files: tuple[Path, ...]
    root: Path
    python_version: str


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def is_held_out(relative_path: str) -> bool:
    digest = hashlib.sha256(relative_path.encode()).digest()
    return digest[0] % HELD_OUT_MODULUS == 0


def stdlib_corpus(root: Path | None = None) -> Corpus:
    """The standard library's .py files, split into train and held-out by path hash, sorted."""
    root = root or stdlib_root()
    files = sorted(path for path in root.rglob("*.py") if not EXCLUDED_PARTS.intersection(path.relative_to(root).parts))
    if not files:
        raise FileNotFoundError(f"no Python source found under {root}")
    held = tuple(p for p in files if is_held_out(p.relative_to(root).as_posix()))
    train = tuple(p for p in files if not is_held_out(p.relative_to(root).as_posix()))
    return Corpus(train_files=train, held_out_files=held, root=root, python_version=sys.version.split()[0])


def prose_text() -> str:
    """English prose that ships with Python: the language reference topics behind `help()`
    (`pydoc_data.topics`), in sorted topic order. Technical English, not code; for the built-in base it
    is not held out (pydoc_data/topics.py is a standard-library file), so it measures forgetting of text
    the base saw, for a hub model of text it most likely saw."""
    from pydoc_data.topics import topics

    return FILE_SEPARATOR.join(topics[name] for name in sorted(topics))


def read_files(files: tuple[Path, ...], max_chars: int | None = None) -> list[str]:
    """The files' texts (undecodable bytes replaced), stopping once `max_chars` have been read."""
    texts: list[str] = []
    total = 0
    for path in files:
        texts.append(path.read_text(encoding="utf-8", errors="replace"))
        total += len(texts[-1])
        if max_chars is not None and total >= max_chars:
            break
    return texts


def read_text(files: tuple[Path, ...], max_chars: int | None = None) -> str:
    """The files concatenated, cut at `max_chars`."""
    joined = FILE_SEPARATOR.join(read_files(files, max_chars))
    return joined if max_chars is None else joined[:max_chars]
