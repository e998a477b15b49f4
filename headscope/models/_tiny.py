"""Small offline models for tests and doctests: a byte-level BPE tokenizer and tiny Llama / GPT-2 models.

Everything is built from code, seeded, and cached in the user cache folder, so no hub is needed.
The tokenizer is a real byte-level BPE (the GPT-2 scheme) trained on generated English, so token
boundaries fall inside words and numbers as they do for real models.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

from headscope._types import Choice
from headscope.errors import ConfigError
from headscope.models._cache import cache_dir, publish

_WORDS = (
    "the a an of to in on at by for with from and or but is was are were be been has had have "
    "city river mountain village forest ocean island valley castle garden library museum market "
    "key value needle haystack magic number secret code name answer question document passage "
    "red blue green yellow purple orange silver golden black white small large old new quiet "
    "apple bread cheese coffee tea honey salt sugar water wine "
    "john mary alice bob paris london berlin tokyo cairo lima oslo rome "
    "said wrote found built visited moved lived worked studied painted sailed opened "
    "first second third last next every many few some most "
    "year day night summer winter morning evening century "
    "because although while after before during when where which who what how"
).split()
_SPECIAL = "<|endoftext|>"


Arch = Choice["llama", "qwen2", "mistral", "gpt2", "gpt-neo"]


def _corpus(n_sentences: int = 3000, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    lines = []
    for _ in range(n_sentences):
        words = [rng.choice(_WORDS) for _ in range(rng.randint(6, 16))]
        if rng.random() < 0.4:
            words.insert(rng.randrange(len(words)), str(rng.randint(0, 99999)))
        sentence = " ".join(words)
        lines.append(sentence[0].upper() + sentence[1:] + rng.choice([".", ".", "?", "!", ","]))
    return lines


def tiny_tokenizer(vocab_size: int = 1024) -> Any:
    """A byte-level BPE ``PreTrainedTokenizerFast`` with ``<|endoftext|>`` as BOS, EOS and padding.

    >>> tok = tiny_tokenizer()
    >>> tok.decode(tok("The magic number is 4712.")["input_ids"])
    'The magic number is 4712.'
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[_SPECIAL],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(_corpus(), trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token=_SPECIAL,
        eos_token=_SPECIAL,
        unk_token=_SPECIAL,
        pad_token=_SPECIAL,
        clean_up_tokenization_spaces=False,
    )


def _cached_folder(prefix: str, spec: dict[str, Any], build: Any) -> Path:
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]
    folder = cache_dir() / f"{prefix}-{digest}"
    if (folder / "config.json").is_file():
        return folder
    staging = Path(tempfile.mkdtemp(prefix=f".{prefix}-", dir=folder.parent))
    try:
        model, tokenizer = build()
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        publish(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def _config(arch: str, vocab: int, bos: int, n_layers: int, d_model: int, n_heads: int, n_kv_heads: int, n_ctx: int):
    from transformers import GPT2Config, GPTNeoConfig, LlamaConfig, MistralConfig, Qwen2Config

    if arch in ("llama", "qwen2", "mistral"):
        config_class = {"llama": LlamaConfig, "qwen2": Qwen2Config, "mistral": MistralConfig}[arch]
        extra = {"sliding_window": None} if arch == "mistral" else {}
        return config_class(
            vocab_size=vocab,
            hidden_size=d_model,
            intermediate_size=2 * d_model,
            num_hidden_layers=n_layers,
            num_attention_heads=n_heads,
            num_key_value_heads=n_kv_heads,
            max_position_embeddings=n_ctx,
            bos_token_id=bos,
            eos_token_id=bos,
            tie_word_embeddings=False,
            **extra,
        )
    if arch == "gpt2":
        return GPT2Config(
            vocab_size=vocab,
            n_embd=d_model,
            n_layer=n_layers,
            n_head=n_heads,
            n_positions=n_ctx,
            bos_token_id=bos,
            eos_token_id=bos,
        )
    return GPTNeoConfig(
        vocab_size=vocab,
        hidden_size=d_model,
        num_layers=n_layers,
        num_heads=n_heads,
        attention_types=[[["global"], n_layers]],
        max_position_embeddings=n_ctx,
        bos_token_id=bos,
        eos_token_id=bos,
    )


def tiny_folder(
    arch: Arch = "llama",
    *,
    n_layers: int = 2,
    d_model: int = 64,
    n_heads: int = 4,
    n_kv_heads: int | None = None,
    n_ctx: int = 2048,
    seed: int = 0,
) -> Path:
    """Cached HF folder of a small random model with :func:`tiny_tokenizer`.

    ``"llama"``: rotary positions and grouped-query attention (``n_kv_heads`` defaults to half the
    heads); ``"qwen2"`` (biased q/k/v projections) and ``"mistral"`` (no sliding window) likewise.
    ``"gpt2"``: learned positions, full multi-head attention. ``"gpt-neo"``: a model whose
    bridge computes attention inside Hugging Face code, so edits of ``hook_pattern`` are discarded
    there (the case headscope's interventions must detect).
    """
    if arch not in ("llama", "qwen2", "mistral", "gpt2", "gpt-neo"):
        raise ConfigError(f"arch must be 'llama', 'qwen2', 'mistral', 'gpt2' or 'gpt-neo'; got {arch!r}")
    rotary = arch in ("llama", "qwen2", "mistral")
    kv = n_kv_heads if n_kv_heads is not None else (max(1, n_heads // 2) if rotary else n_heads)
    spec = dict(arch=arch, n_layers=n_layers, d_model=d_model, n_heads=n_heads, n_kv_heads=kv, n_ctx=n_ctx, seed=seed)
    spec["init"] = "generator"  # weights drawn by _initialise (older caches drew them from the global RNG)

    def build() -> tuple[Any, Any]:
        import torch
        from transformers import AutoModelForCausalLM

        tokenizer = tiny_tokenizer()
        config = _config(arch, len(tokenizer), tokenizer.bos_token_id, n_layers, d_model, n_heads, kv, n_ctx)
        with torch.random.fork_rng(devices=[]):  # HF's init draws from the global RNG: leave the caller's as it was
            model = AutoModelForCausalLM.from_config(config).eval()
        _initialise(model, config.initializer_range, torch.Generator().manual_seed(seed))
        return model, tokenizer

    return _cached_folder(f"tiny-{arch}", spec, build)


def _initialise(model: Any, std: float, generator: Any) -> None:
    """Every weight from ``generator`` alone: matrices ~ N(0, std), biases 0, norm scales 1 (Hugging Face's scheme)."""
    import torch

    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.ndim >= 2:
                param.copy_(torch.randn(param.shape, generator=generator) * std)
            else:
                param.fill_(0.0 if name.endswith("bias") else 1.0)
