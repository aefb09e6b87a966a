"""Small builders shared by tests."""

import torch
from tokenizers import Tokenizer, models
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from ftcompare.train.loop import IGNORE_INDEX


def tiny_llama(vocab: int = 32, seed: int = 0, dtype: torch.dtype = torch.float32) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64, pad_token_id=0)
    return LlamaForCausalLM(config).to(dtype)


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
