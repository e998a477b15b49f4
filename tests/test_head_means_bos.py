"""``head_means(exclude=("bos",))`` leaves out position 0 only where it holds BOS (issue 22, finding 9)."""

from __future__ import annotations

import torch

from headscope.ablation import head_means
from headscope.hooks import attn_hook, capture
from headscope.tasks import Sample


def _z(model, tokens: torch.Tensor, layer: int = 1) -> torch.Tensor:
    """hook_z of ``layer`` for ``[batch, pos]`` tokens (``[batch, pos, head, d_head]``), read apart from head_means."""
    with torch.no_grad(), capture(model, [attn_hook(layer, "z")]) as acts:
        model(tokens)
    return acts[attn_hook(layer, "z")].double()


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a.double(), b.double(), rtol=1e-5, atol=1e-6)


def test_a_sample_without_bos_keeps_its_first_position(tiny_llama) -> None:
    bos = tiny_llama.tokenizer.bos_token_id
    tokens = torch.tensor([5, 9, 2, 77])
    assert tokens[0] != bos
    means = head_means(tiny_llama, [tokens], exclude=("bos",), layers=[1])
    _close(means[1], _z(tiny_llama, tokens[None])[0].mean(0))  # every position: was positions 1..3


def test_a_sample_with_bos_drops_it(tiny_llama) -> None:
    bos = tiny_llama.tokenizer.bos_token_id
    tokens = torch.tensor([bos, 5, 9, 2, 77])
    means = head_means(tiny_llama, [tokens], exclude=("bos",), layers=[1])
    _close(means[1], _z(tiny_llama, tokens[None])[0, 1:].mean(0))


def test_bos_is_judged_per_row_and_per_input(tiny_llama) -> None:
    bos = tiny_llama.tokenizer.bos_token_id
    batch = torch.tensor([[bos, 5, 9, 2], [7, 5, 9, 2]])
    chat = Sample("The river was quiet. The code is 4712.", " 4712", bos=False)  # a chat prompt brings no BOS
    chat_ids = chat.encode(tiny_llama.tokenizer).input_ids
    assert chat_ids[0] != bos
    means = head_means(tiny_llama, [batch, chat], exclude="bos", layers=[1])
    z_batch, z_chat = _z(tiny_llama, batch), _z(tiny_llama, chat_ids[None])[0]
    kept = torch.cat([z_batch[0, 1:], z_batch[1], z_chat])  # row 0 loses its BOS; row 1 and the chat prompt keep all
    _close(means[1], kept.mean(0))
    with_bos = Sample(chat.prompt, chat.answer)  # bos=True: headscope prepends BOS, which is left out
    ids = with_bos.encode(tiny_llama.tokenizer).input_ids
    assert ids[0] == bos
    _close(head_means(tiny_llama, [with_bos], exclude="bos", layers=[1])[1], _z(tiny_llama, ids[None])[0, 1:].mean(0))
