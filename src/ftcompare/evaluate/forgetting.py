"""Forgetting: the language-modelling loss on held-out pre-training text, before and after fine-tuning.

This is the pseudo-loss measure of "LoRA vs Full Fine-tuning: An Illusion of Equivalence" (§5): a
tuned model that forgot more of its pre-training distribution has a higher loss there. The chunks
are fixed (first `n_chunks` windows of the held-out files, in sorted order), so base and every run
are scored on identical tokens.

`forgetting_matrix` measures the other kind of forgetting: of earlier tasks, in sequential fine-tuning.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ftcompare.data.corpus import prose_text, read_text, stdlib_corpus

CORPORA = ("stdlib", "prose")


def heldout_chunks(tokenizer, *, n_chunks: int, chunk_tokens: int, corpus: str = "stdlib") -> torch.Tensor:
    """(n_chunks, chunk_tokens) token ids: consecutive windows of the standard library's held-out files
    ("stdlib") or of the prose shipped with Python ("prose", see `corpus.prose_text`)."""
    needed = n_chunks * chunk_tokens
    # ~3 characters per token for code under a small BPE: read generously, then trim
    if corpus == "stdlib":
        text = read_text(stdlib_corpus().held_out_files, max_chars=needed * 8)
    elif corpus == "prose":
        text = prose_text()[: needed * 8]
    else:
        raise ValueError(f"unknown corpus {corpus!r}; known: {', '.join(CORPORA)}")
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) < needed:
        raise ValueError(f"held-out {corpus} corpus has {len(ids)} tokens, fewer than the {needed} asked for")
    return torch.tensor(ids[:needed], dtype=torch.long).view(n_chunks, chunk_tokens)


@torch.no_grad()
def mean_token_loss(model, chunks: torch.Tensor, *, batch_size: int = 8) -> float:
    """Mean next-token cross-entropy (nats) over every predicted token of `chunks` (n, length)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for start in range(0, chunks.shape[0], batch_size):
        batch = chunks[start : start + batch_size].to(device)
        logits = model(input_ids=batch).logits.float()
        loss = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1), reduction="sum"
        )
        total += loss.item()
        count += batch[:, 1:].numel()
    model.train(was_training)
    result = total / count
    if not math.isfinite(result):
        raise FloatingPointError("held-out loss is not finite")
    return result


def forgetting_matrix(tasks: Sequence[str], rows: Sequence[dict]) -> dict:
    """Interference in sequential fine-tuning, from the scores after each stage.

    `rows[0]` is the base and `rows[i]` the model after stage i (trained on tasks[i-1]); each row is
    {"pass@1": {task: score}, "heldout_loss": float | None}. R[i][j] is rows[i]'s score on tasks[j].
    For each task j but the last, with T = len(tasks):
    - forgetting (Chaudhry et al. 2018): the best score on j after it was learned and before the end,
      minus the final score: max over i in [j+1, T-1] of R[i][j] - R[T][j];
    - backward transfer (Lopez-Paz & Ranzato 2017): the final score minus the score right after
      learning j: R[T][j] - R[j+1][j].
    Both are averaged over those tasks; positive forgetting and negative backward transfer mean the
    later stages interfered with the earlier tasks.
    """
    if len(rows) != len(tasks) + 1:
        raise ValueError(f"need the base and one row per stage: {len(tasks) + 1} rows, got {len(rows)}")
    scores = [[row["pass@1"][task] for task in tasks] for row in rows]
    final = scores[-1]
    last = len(tasks)
    forgetting = {task: max(scores[i][j] for i in range(j + 1, last)) - final[j] for j, task in enumerate(tasks[:-1])}
    backward = {task: final[j] - scores[j + 1][j] for j, task in enumerate(tasks[:-1])}
    losses = [row.get("heldout_loss") for row in rows]
    return {
        "tasks": list(tasks),
        "rows": ["base"] + [f"after {task}" for task in tasks],
        "pass@1": scores,
        "heldout_loss": losses,
        "forgetting": forgetting,
        "mean_forgetting": sum(forgetting.values()) / len(forgetting),
        "backward_transfer": backward,
        "mean_backward_transfer": sum(backward.values()) / len(backward),
    }
