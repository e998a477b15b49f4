"""One teacher-forced forward: the batch layout by hand, and the answer rows against a full forward."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _close import assert_close

from headscope.errors import ConfigError
from headscope.tasks import EncodedSample, Sample
from headscope.tasks._forced import answer_logits, forced_batch
from headscope.training import answer_loss


def _enc(prompt: list[int], answer: list[int]) -> EncodedSample:
    return EncodedSample(torch.tensor(prompt, dtype=torch.long), torch.tensor(answer, dtype=torch.long), {}, {})


def test_forced_batch_right_pads_and_points_each_answer_token_at_its_row():
    batch = forced_batch([_enc([5, 6, 7], [8, 9, 10]), _enc([3], [4])])
    assert batch.tokens.tolist() == [[5, 6, 7, 8, 9], [3, 0, 0, 0, 0]]
    assert batch.attention_mask.tolist() == [[1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]
    assert batch.rows.tolist() == [[2, 3, 4], [0, 0, 0]]  # a short answer repeats its last row
    assert batch.targets.tolist() == [[8, 9, 10], [4, -100, -100]]
    assert batch.lengths == (3, 1)
    with pytest.raises(ConfigError, match="empty answer"):
        forced_batch([_enc([1, 2], [])])


def test_answer_logits_are_the_full_forward_rows_that_predict_the_answer(tiny_llama):
    enc = Sample("The key is 4712. The key is", " 4712 and more").encode(tiny_llama.tokenizer)
    n_prompt, n = len(enc.input_ids), len(enc.answer_ids)
    assert n > 1
    with torch.no_grad():
        full = tiny_llama(torch.cat([enc.input_ids, enc.answer_ids])[None])[0]
    assert_close(answer_logits(tiny_llama, enc), full[n_prompt - 1 : n_prompt - 1 + n], short=True)


def test_answer_loss_is_the_mean_answer_token_nll_of_each_sample_run_alone(tiny_llama):
    samples = [Sample("The key is red. The key is", " red"), Sample("A code: 91. The code is", " 91 ok")]
    by_hand = []
    for sample in samples:
        enc = sample.encode(tiny_llama.tokenizer)
        with torch.no_grad():
            full = tiny_llama(torch.cat([enc.input_ids, enc.answer_ids])[None])[0].float()
        rows = full[len(enc.input_ids) - 1 : -1].log_softmax(-1)
        by_hand += (-rows[torch.arange(len(enc.answer_ids)), enc.answer_ids]).tolist()
    with torch.no_grad():
        loss = answer_loss(tiny_llama, samples)
    assert_close(loss.item(), sum(by_hand) / len(by_hand), dtype=torch.float32, short=True)


def test_importing_headscope_loads_neither_pandas_nor_scipy():
    code = "import sys, headscope; print(sorted(m for m in ('pandas', 'scipy') if m in sys.modules))"
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    assert out.stdout.strip() == "[]"
