"""Small builders shared by tests."""

import os
import time
import uuid

import torch
from tokenizers import Tokenizer, models
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from ftcompare.train.loop import IGNORE_INDEX


def tiny_llama(vocab: int = 32, seed: int = 0, dtype: torch.dtype = torch.float32, **config) -> LlamaForCausalLM:
    """A random two-layer Llama; `config` overrides its LlamaConfig fields (e.g. num_key_value_heads for GQA)."""
    torch.manual_seed(seed)
    settings = dict(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=64,
        pad_token_id=0,
    )
    return LlamaForCausalLM(LlamaConfig(**(settings | config))).to(dtype)


def copy_examples(n: int = 32) -> list[tuple[list[int], list[int]]]:
    """Prompt: a token; completion: that token repeated (learnable only through the completion loss)."""
    examples = []
    for i in range(n):
        token = 2 + i % 10
        ids = [1, token, token, token, token]
        examples.append((ids, [IGNORE_INDEX, IGNORE_INDEX] + ids[2:]))
    return examples


def chat_tokenizer():
    """A word-level tokenizer built in memory, with a simple chat template: no download."""
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel({"<unk>": 0}, unk_token="<unk>")), unk_token="<unk>"
    )
    tokenizer.chat_template = (
        "{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}<|end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
    )
    return tokenizer


def sleeper_marker() -> str:
    """A `sleep` argument no other process has (a sandboxed program's pids are its own namespace's, so its
    processes are found by command line)."""
    return f"300.{uuid.uuid4().int % 10**9:09d}"


def processes_with(marker: str) -> list[int]:
    """Pids of live (not zombie) processes whose command line holds `marker`."""
    found = []
    for name in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{name}/cmdline", "rb") as file:
                cmdline = file.read()
            with open(f"/proc/{name}/stat") as file:
                zombie = file.read().rpartition(")")[2].split()[0] == "Z"
        except OSError:
            continue
        if marker.encode() in cmdline and not zombie:
            found.append(int(name))
    return found


def assert_gone(marker: str, grace_s: float = 2.0) -> None:
    """No live process holds `marker` in its command line within grace_s; a zombie counts as gone."""
    deadline = time.monotonic() + grace_s
    while alive := processes_with(marker):
        assert time.monotonic() < deadline, f"processes {alive} are still running"
        time.sleep(0.05)


def python_folders_in_tmp() -> list[str]:
    """The entries a bubblewrap sandbox's /tmp holds besides the program's own files: the top folders of a
    Python installed below /tmp (a CI virtual environment), bound read-only so the program can run."""
    from ftcompare.evaluate.sandbox import _readable_paths

    return sorted({path.split("/")[2] for path in _readable_paths() if path.startswith("/tmp/")})
