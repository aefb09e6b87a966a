"""`builtin:tiny-code`: a small Llama-architecture code model that ftcompare pre-trains itself on the
Python standard library, so that a study runs with no download.

A byte-level BPE tokenizer is trained on the same corpus. The model is cached under the user cache
directory keyed by everything that determines it (architecture, tokenizer, pre-training settings,
Python version: the corpus is that version's standard library), so a machine pays for it once.
"""

from __future__ import annotations

import fcntl
import json
import os
import random
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from accelerate import Accelerator
from rich.console import Console
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from ftcompare.config import BuiltinPretraining, fingerprint
from ftcompare.console import step_progress
from ftcompare.data.corpus import read_files, read_text, stdlib_corpus
from ftcompare.evaluate.forgetting import heldout_chunks, mean_token_loss
from ftcompare.train.loop import TrainSettings, seed_everything, train

EOS = "<|endoftext|>"
PAD = "<|pad|>"
TOKENIZER_TRAINING_CHARS = 3_000_000


@dataclass(frozen=True)
class BuiltinSpec:
    """Architecture and default pre-training budget of one size of the built-in model."""

    vocab_size: int
    hidden_size: int
    layers: int
    heads: int
    intermediate_size: int
    steps: int
    batch_size: int
    seq_len: int


SIZES = {
    # ~1.1M parameters: pre-trains in a few minutes on 2 CPU cores
    "small": BuiltinSpec(
        vocab_size=2048, hidden_size=128, layers=4, heads=4, intermediate_size=384, steps=400, batch_size=16, seq_len=256
    ),
    # ~30M parameters: for a GPU
    "large": BuiltinSpec(
        vocab_size=8192, hidden_size=512, layers=8, heads=8, intermediate_size=1536, steps=4000, batch_size=32, seq_len=512
    ),
}


def cache_root() -> Path:
    """`$FTCOMPARE_CACHE`, else `$XDG_CACHE_HOME/ftcompare`, else `~/.cache/ftcompare`."""
    if os.environ.get("FTCOMPARE_CACHE"):
        return Path(os.environ["FTCOMPARE_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ftcompare"


def resolve_spec(settings: BuiltinPretraining, device: torch.device) -> tuple[str, BuiltinSpec]:
    size = settings.size if settings.size != "auto" else ("large" if device.type == "cuda" else "small")
    spec = SIZES[size]
    overrides = {k: getattr(settings, k) for k in ("steps", "batch_size", "seq_len") if getattr(settings, k) is not None}
    return size, replace(spec, **overrides)


def build_tokenizer(text: str, vocab_size: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on `text` (deterministic for a given text and size)."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator([text], trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=EOS, pad_token=PAD)


def build_model(spec: BuiltinSpec, tokenizer: PreTrainedTokenizerFast) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads,
        num_key_value_heads=spec.heads,
        max_position_embeddings=max(1024, spec.seq_len),
        tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
    )
    return LlamaForCausalLM(config)


def window_batches(ids: torch.Tensor, *, batch_size: int, seq_len: int, seed: int) -> Iterator[dict[str, torch.Tensor]]:
    """Endless batches of random `seq_len` windows of a token stream, every token carrying the loss."""
    generator = torch.Generator().manual_seed(seed)
    while True:
        starts = torch.randint(0, len(ids) - seq_len, (batch_size,), generator=generator)
        input_ids = torch.stack([ids[s : s + seq_len] for s in starts.tolist()])
        yield {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": input_ids.clone()}


def pretrain_builtin(settings: BuiltinPretraining, device: torch.device, console: Console) -> Path:
    """Return the cached directory of the built-in model, pre-training it first if needed (once per machine:
    concurrent processes wait for the first, see `build_once`)."""
    size, spec = resolve_spec(settings, device)
    target = builtin_dir(settings, device)
    return build_once(target, lambda folder: _pretrain_into(folder, settings, size, spec, device, console), console)


def builtin_dir(settings: BuiltinPretraining, device: torch.device) -> Path:
    """The cache folder of the built-in model these settings make (complete once it holds READY_FILE)."""
    size, spec = resolve_spec(settings, device)
    corpus = stdlib_corpus()
    key = fingerprint({"spec": asdict(spec), "lr": settings.lr, "seed": settings.seed, "python": corpus.python_version, "v": 1})
    return cache_root() / "builtin" / f"tiny-code-{size}-{key}"


def _pretrain_into(
    folder: Path, settings: BuiltinPretraining, size: str, spec: BuiltinSpec, device: torch.device, console: Console
) -> None:
    """Pre-train the built-in model and save it, its tokenizer, log and provenance.json into `folder`."""
    corpus = stdlib_corpus()
    console.print(
        f"[bold]Pre-training builtin:tiny-code ({size})[/] on the standard library of Python {corpus.python_version} "
        f"({len(corpus.train_files)} files; {len(corpus.held_out_files)} held out) — once, cached in {cache_root()}"
    )
    started = time.perf_counter()
    seed_everything(settings.seed)
    # a deterministic sample of files for the tokenizer: training BPE on all of it costs more than it gains
    sample_files = random.Random(settings.seed).sample(list(corpus.train_files), k=len(corpus.train_files))
    tokenizer = build_tokenizer(read_text(tuple(sample_files), max_chars=TOKENIZER_TRAINING_CHARS), spec.vocab_size)
    # one stream of every training file, EOS between files (tokenized as a batch: parallel in Rust)
    encoded = tokenizer(read_files(corpus.train_files), add_special_tokens=False)["input_ids"]
    ids = torch.tensor([t for file_ids in encoded for t in (*file_ids, tokenizer.eos_token_id)], dtype=torch.long)
    model = build_model(spec, tokenizer)
    accelerator = Accelerator(cpu=device.type == "cpu", mixed_precision="bf16" if device.type == "cuda" else "no")
    batches = window_batches(ids, batch_size=spec.batch_size, seq_len=spec.seq_len, seed=settings.seed)
    pretrain_settings = TrainSettings(
        lr=settings.lr,
        steps=spec.steps,
        warmup_steps=spec.steps // 20,
        schedule="cosine",
        weight_decay=0.1,
        grad_clip=1.0,
        log_every=50,
        seed=settings.seed,
    )
    with step_progress(console, "pre-training", spec.steps) as advance:
        result = train(
            model, batches, pretrain_settings, accelerator=accelerator, log_path=folder / "pretrain_log.jsonl", on_step=advance
        )
    model = accelerator.unwrap_model(model).to("cpu")
    chunks = heldout_chunks(tokenizer, n_chunks=32, chunk_tokens=256)
    heldout_loss = mean_token_loss(model, chunks)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    provenance = {
        "name": "builtin:tiny-code",
        "size": size,
        "spec": asdict(spec),
        "parameters": sum(p.numel() for p in model.parameters()),
        "corpus": f"Python {corpus.python_version} standard library at {corpus.root}",
        "train_files": len(corpus.train_files),
        "held_out_files": len(corpus.held_out_files),
        "train_tokens": len(ids),
        "pretrain_steps": result.steps,
        "pretrain_tokens": result.tokens,
        "pretrain_tokens_per_s": result.tokens_per_s,
        "pretrain_steady_tokens_per_s": result.steady_tokens_per_s,
        "pretrain_steady_skipped_steps": result.steady_skipped_steps,
        "pretrain_recipe": result.recipe,
        "final_train_loss": result.final_loss,
        "heldout_loss": heldout_loss,
        "device": str(device),
        "wall_s": time.perf_counter() - started,
    }
    (folder / "provenance.json").write_text(json.dumps(provenance, indent=2))
    console.print(
        f"builtin:tiny-code ready: held-out loss {heldout_loss:.3f} nats/token after {result.steps} steps "
        f"({provenance['wall_s']:.0f} s, {result.steady_tokens_per_s:,.0f} tokens/s after the first "
        f"{result.steady_skipped_steps} steps)"
    )


READY_FILE = "provenance.json"  # written last into a cached folder: its presence means the folder is complete
TEMP_MARK = ".tmp-"  # <target>.tmp-<host>-<pid>-<random>: a folder being built, and who builds it


def build_once(target: Path, build: Callable[[Path], None], console: Console) -> Path:
    """The cached folder `target`, made by `build(folder)` (which must write READY_FILE last) if it is not there.

    One process builds while the others wait on a lock beside it (fcntl.flock, released by the kernel when
    its holder dies), then find it built. The build writes into a temporary folder named after its host and
    process, moved into place in one rename; temporaries whose process is gone (a kill mid-build) are removed
    the next time any build starts here."""
    if (target / READY_FILE).is_file():
        return target
    cache = _ensure(target.parent)
    with open(cache / f"{target.name}.lock", "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            console.print(f"waiting for another process that is building {target} ...")
            fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if (target / READY_FILE).is_file():  # built by the process we waited for
                return target
            remove_stale_temporaries(cache, holding=target.name)
            shutil.rmtree(target, ignore_errors=True)  # incomplete (no READY_FILE): from before builds were atomic
            tmp = Path(tempfile.mkdtemp(prefix=f"{target.name}{TEMP_MARK}{socket.gethostname()}-{os.getpid()}-", dir=cache))
            try:
                build(tmp)
                if not (tmp / READY_FILE).is_file():
                    raise RuntimeError(f"building {target} wrote no {READY_FILE}")
                os.replace(tmp, target)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return target


def remove_stale_temporaries(cache: Path, holding: str | None = None) -> list[Path]:
    """Remove the temporary build folders in `cache` whose builder is gone: those of this host whose process
    no longer runs, and, under the lock of the target named `holding`, every one of that target (only the
    lock's holder builds it; this also catches an older ftcompare's `<target>.<random>`). Returns them."""
    removed = []
    for folder in cache.iterdir():
        _, _, owner = folder.name.partition(TEMP_MARK)
        host, pid, _ = owner.rsplit("-", 2) if owner.count("-") >= 2 else ("", "", "")  # mkdtemp's suffix has no "-"
        orphan = host == socket.gethostname() and pid.isdigit() and not _process_alive(int(pid))
        if folder.is_dir() and ((holding and folder.name.startswith(holding + ".")) or orphan):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _ensure(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path
