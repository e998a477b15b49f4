"""Read published head sets: Wu et al.'s and HeadKV's scores, DuoAttention's TSV, QRHead's strings.

=============  ==========================================  =========================================
format         what the file holds                         the set :func:`load_heads` cuts by default
=============  ==========================================  =========================================
``wu``         ``{"3-7": [score per sample], ...}`` JSON   heads whose mean score is above 0.1
``headkv``     the same layout (HeadKV reads Wu's files)   as ``wu``
``duo``        ``full_attention_heads.tsv``: one row per   KV heads at or above 0.5 (DuoAttention's
               layer, one tab-separated value in [0, 1]    ``sparsify_attention_heads``), as every
               per KV head                                 query head they serve
``qrhead``     ``attn_head_set``: ``"14-22,13-16,..."``    the listed heads, in their order
               (or a QRHead YAML config holding it)
``headscope``  ``RetrievalScores.save``'s JSON              as ``wu``
=============  ==========================================  =========================================

A head's score in Wu's and HeadKV's files is the mean of its list (``np.mean``, as both rank
heads); a single number stands for itself. Under grouped-query attention DuoAttention scores KV
heads: query head ``h`` reads KV head ``h // kv_group``, so each value maps to every query head of
its group, and the loaded ``scores`` give all of them that value. Values outside [0, 1] are
clipped, as DuoAttention's ``load_attn_pattern`` does.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from headscope._types import Choice
from headscope.compare._loaded import LoadedHeads, cut, expand_kv
from headscope.errors import ConfigError, HeadIndexError, HeadscopeError
from headscope.heads import Head, parse_head
from headscope.results import read_json

__all__ = ["Format", "detect_format", "load_heads"]

#: The formats :func:`load_heads` reads; ``"auto"`` detects it from the suffix and the content.
Format = Choice["auto", "wu", "headkv", "duo", "qrhead", "headscope"]
_FORMATS = ("auto", "wu", "headkv", "duo", "qrhead", "headscope")
_DUO_FILE = "full_attention_heads.tsv"
_QR_CHARS = re.compile(r"^[\d\s,\-]*-[\d\s,\-]*$")  # only digits, commas, dashes and spaces, with a dash
_NUMBERS = re.compile(r"^\s*[-+.\deE]+(\s+[-+.\deE]+)*\s*$")  # a row of numbers, as DuoAttention's TSV holds
_QR_YAML = re.compile(r"^\s*attn_head_set\s*:\s*[\"']?([^\"'#\n]*)", re.M)


def load_heads(
    source: str | Path,
    model: Any = None,
    *,
    format: Format = "auto",
    top_k: int | None = None,
    threshold: float | None = None,
    fraction: float | None = None,
) -> LoadedHeads:
    """Read a published head set (a file, or a QRHead string) and check it against ``model``.

    ``model`` is a model, its :class:`~headscope.models.ModelInfo`, or a shape
    ``(n_layers, n_heads[, n_kv_heads])``; Wu's and headscope's JSON say their own shape, so it may
    be ``None`` for them. The table in :mod:`headscope.compare._formats` says which set each format
    gives by default; ``top_k=``, ``threshold=`` or ``fraction=`` cut another (DuoAttention's by KV
    heads; a QRHead string by ``top_k`` only: its first ``k`` heads).

    >>> import tempfile, pathlib
    >>> from headscope import load_model, model_info
    >>> info = model_info(load_model("tiny-llama"))   # 2 layers, 4 query heads on 2 KV heads
    >>> load_heads("1-3,0-0", info).ranked
    ((1, 3), (0, 0))
    >>> tsv = pathlib.Path(tempfile.mkdtemp()) / "full_attention_heads.tsv"
    >>> _ = tsv.write_text("0.9\\t0.1\\n0.0\\t0.6\\n")
    >>> duo = load_heads(tsv, info)
    >>> duo.heads.labels, duo.scores[1].tolist()
    (('L0H0', 'L0H1', 'L1H2', 'L1H3'), [0.0, 0.0, 0.6, 0.6])
    """
    if format not in _FORMATS:
        raise ConfigError(f"format must be one of {', '.join(map(repr, _FORMATS))}; got {format!r}")
    name, text = _open(source)
    kind = _kind(name, text) if format == "auto" else format
    shape = _shape(model)
    rules = dict(top_k=top_k, threshold=threshold, fraction=fraction)
    if kind == "duo":
        return _duo(name, text, shape, rules)
    if kind == "qrhead":
        return _qrhead(name, text, shape, rules)
    return _scored(name, kind, shape, rules)


def detect_format(source: str | Path) -> str:
    """Which reader :func:`load_heads` uses for ``source`` (``"wu"``, ``"duo"``, ``"qrhead"`` or ``"headscope"``).

    A folder holding ``full_attention_heads.tsv`` or a ``.tsv`` file is DuoAttention's; a ``.yaml``
    file, or a string of ``layer-head`` pairs, QRHead's; JSON is headscope's when
    ``RetrievalScores.save`` wrote it, Wu's otherwise. Other files are told by their content.

    >>> detect_format("14-22,13-16"), detect_format("full_heads")
    ('qrhead', 'qrhead')
    """
    return _kind(*_open(source))


def _kind(name: str, text: str) -> str:
    path = Path(name)
    suffix = path.suffix.lower() if path.exists() else ""
    if suffix == ".tsv":
        return "duo"
    if suffix in (".yaml", ".yml") or not path.exists():
        return "qrhead"
    start = text.lstrip()[:1]
    if suffix == ".json" or start in ("{", "["):
        data = read_json(name, "a head score file (Wu et al.'s or headscope's JSON)")
        return "headscope" if isinstance(data, dict) and ("headscope" in data or "format" in data) else "wu"
    if _QR_YAML.search(text) or _QR_CHARS.match(text):
        return "qrhead"
    if _NUMBERS.match(text.strip().splitlines()[0] if text.strip() else ""):
        return "duo"
    raise ConfigError(
        f"{name} is not a head file headscope reads: expected the JSON file RetrievalScores.save writes, "
        "Wu et al.'s or HeadKV's head_score JSON, DuoAttention's full_attention_heads.tsv or a QRHead "
        "attn_head_set (a string like '14-22,13-16' or its YAML config)"
    )


def _open(source: str | Path) -> tuple[str, str]:
    """``(name, text)``: a file's path and text, a DuoAttention folder's TSV, or a string as itself."""
    if not isinstance(source, (str, Path)):
        raise ConfigError(f"source must be a path or a QRHead string; got a {type(source).__name__}")
    path = Path(source)
    if isinstance(source, str) and not path.exists():
        if source.strip() == "full_heads" or _QR_CHARS.match(source):
            return source, source
        raise FileNotFoundError(
            f"no file at {source!r}, and it is not a QRHead attn_head_set string like '14-22,13-16'"
        )
    if path.is_dir():
        path = path / _DUO_FILE
        if not path.is_file():
            raise ConfigError(f"{source} is a folder without {_DUO_FILE}; give DuoAttention's attention-pattern folder")
    try:
        return str(path), path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not a head file: it is not UTF-8 text") from None


def _shape(model: Any) -> tuple[int, int, int | None] | None:
    """``(n_layers, n_heads, n_kv_heads or None)`` of a model, a ModelInfo or a shape tuple."""
    from headscope.models import ModelInfo, model_info

    if model is None:
        return None
    if isinstance(model, (tuple, list)):
        if len(model) not in (2, 3) or not all(isinstance(n, int) and n > 0 for n in model):
            raise ConfigError(f"a model shape is (n_layers, n_heads) or (n_layers, n_heads, n_kv_heads); got {model}")
        return (model[0], model[1], model[2] if len(model) == 3 else None)
    info = model if isinstance(model, ModelInfo) else model_info(model)
    return (info.n_layers, info.n_heads, info.n_kv_heads)


def _set_rule(rules: dict[str, Any], default: dict[str, Any], words: str) -> tuple[dict[str, Any], str]:
    given = {k: v for k, v in rules.items() if v is not None}
    return (given, ", ".join(f"{k}={v}" for k, v in given.items())) if given else (default, words)


def _scored(name: str, kind: str, shape: tuple[int, int, int | None] | None, rules: dict[str, Any]) -> LoadedHeads:
    """Wu's, HeadKV's or headscope's JSON: a score per query head."""
    grid = _headscope_grid(name) if kind == "headscope" else _wu_grid(name, shape)
    if shape is not None and grid.shape != shape[:2]:
        raise ConfigError(
            f"{name} scores a {grid.shape[0]}x{grid.shape[1]} model (layers x heads); the model is "
            f"{shape[0]}x{shape[1]}: give the file of this model"
        )
    chosen, rule = _set_rule(rules, {"threshold": 0.1}, "mean score above 0.1 (Wu et al.'s retrieval heads)")
    ranked = cut(grid, **chosen)
    return LoadedHeads(kind, name, grid.shape, tuple(ranked), torch.from_numpy(grid), None, rule)


def _headscope_grid(name: str) -> np.ndarray:
    from headscope.retrieval import RetrievalScores

    return RetrievalScores.load(name).scores.numpy()


def _wu_grid(name: str, shape: tuple[int, int, int | None] | None) -> np.ndarray:
    expected = "a Wu et al. / HeadKV score file: a non-empty JSON object {'layer-head': [score per sample] or score}"
    data = read_json(name, expected)
    if not isinstance(data, dict) or not data:
        raise ConfigError(f"{name} is not {expected}")
    heads: dict[Head, float] = {}
    bad_keys, bad_values = [], []
    for key, values in data.items():
        try:
            head = parse_head(key)
        except HeadscopeError:
            bad_keys.append(key)
            continue
        if _number(values):
            heads[head] = float(values)
        elif isinstance(values, list) and values and all(map(_number, values)):
            heads[head] = float(np.mean(np.asarray(values, dtype=np.float64)))
        else:
            bad_values.append(key)
    if bad_keys or bad_values:
        raise ConfigError(
            f"{name} is not {expected}: "
            + "; ".join(
                part
                for part in (
                    bad_keys and f"keys {bad_keys[:5]} are not 'layer-head' pairs",
                    bad_values and f"the values of {bad_values[:5]} are not numbers or non-empty lists of numbers",
                )
                if part
            )
        )
    n_layers, n_heads = (
        (1 + max(h.layer for h in heads), 1 + max(h.head for h in heads)) if shape is None else shape[:2]
    )
    outside = [str(h) for h in sorted(heads) if h.layer >= n_layers or h.head >= n_heads]
    if outside:
        raise HeadIndexError(
            f"{name} scores heads outside a {n_layers}x{n_heads} model (layers 0-{n_layers - 1}, heads "
            f"0-{n_heads - 1}): {', '.join(outside[:8])}; is it the file of another model?"
        )
    missing = [str(Head(l_, h)) for l_ in range(n_layers) for h in range(n_heads) if (l_, h) not in heads]
    if missing:
        raise ConfigError(
            f"{name} scores {len(heads)} of the {n_layers * n_heads} heads of a {n_layers}x{n_heads} model; "
            f"missing {', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''} (Wu et al.'s files score every head)"
        )
    grid = np.empty((n_layers, n_heads))
    for (layer, head), value in heads.items():
        grid[layer, head] = value
    return grid


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _duo(name: str, text: str, shape: tuple[int, int, int | None] | None, rules: dict[str, Any]) -> LoadedHeads:
    """DuoAttention's TSV: values per KV head, each mapped to the query heads of its group."""
    kv = _duo_grid(name, text)
    if shape is None:
        raise ConfigError(
            f"{name} holds one value per layer and KV head, not how many query heads share a KV head; "
            "pass the model (or its shape (n_layers, n_heads, n_kv_heads))"
        )
    n_layers, n_heads, n_kv = shape
    rows, cols = kv.shape
    if rows != n_layers:
        raise ConfigError(
            f"{name} has {rows} rows (layers); the model has {n_layers} layers: give the file of this model"
        )
    if n_kv is None and n_heads % cols == 0:
        n_kv = cols
    if cols != n_kv:
        hint = " (one per query head: DuoAttention writes one per KV head)" if cols == n_heads else ""
        raise ConfigError(
            f"{name} has {cols} columns{hint}; the model has {n_kv or 'a divisor of ' + str(n_heads)} KV heads "
            f"({n_heads} query heads): give the file of this model"
        )
    group = n_heads // n_kv
    chosen, rule = _set_rule(rules, {"threshold": 0.5}, "KV heads at or above 0.5 (DuoAttention's threshold)")
    ranked = [
        Head(layer, kv_head * group + i)
        for layer, kv_head in cut(kv, **chosen, inclusive="threshold" in chosen)
        for i in range(group)
    ]
    scores = torch.from_numpy(expand_kv(kv, group))
    return LoadedHeads("duo", name, (n_layers, n_heads), tuple(ranked), scores, torch.from_numpy(kv), rule)


def _duo_grid(name: str, text: str) -> np.ndarray:
    expected = "DuoAttention's full_attention_heads.tsv (one row per layer, tab-separated values per KV head)"
    rows: list[list[float]] = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append([float(v) for v in (line.split("\t") if "\t" in line else line.split())])
        except ValueError:
            raise ConfigError(f"{name} line {number} is not numbers: {line[:60]!r}; expected {expected}") from None
        if len(rows[-1]) != len(rows[0]):
            raise ConfigError(
                f"{name} line {number} has {len(rows[-1])} values, line 1 {len(rows[0])}; expected {expected}"
            )
    if not rows:
        raise ConfigError(f"{name} is empty; expected {expected}")
    grid = np.asarray(rows, dtype=np.float64)
    if np.isnan(grid).any():
        raise ConfigError(f"{name} holds NaN values; expected {expected} in [0, 1]")
    return np.clip(grid, 0.0, 1.0)


def _qrhead(name: str, text: str, shape: tuple[int, int, int | None] | None, rules: dict[str, Any]) -> LoadedHeads:
    """QRHead's ``attn_head_set``: query heads, best first (``"full_heads"``: every head)."""
    found = _QR_YAML.search(text)
    listed = (found.group(1) if found else text).strip()
    label = name if name != text else f"QRHead string {_short(text)!r}"
    if shape is None:
        raise ConfigError(f"{label} lists heads without the model's shape; pass the model (or (n_layers, n_heads))")
    n_layers, n_heads = shape[:2]
    if listed == "full_heads":
        ranked = [Head(layer, head) for layer in range(n_layers) for head in range(n_heads)]
    else:
        ranked = _qr_heads(label, listed, n_layers, n_heads)
    if rules["threshold"] is not None or rules["fraction"] is not None:
        raise ConfigError(f"{label} lists heads without scores; cut it with top_k= (its first k heads) only")
    rule = "as listed"
    if rules["top_k"] is not None:
        ranked, rule = ranked[: max(rules["top_k"], 0)], f"the first {rules['top_k']} listed"
    return LoadedHeads("qrhead", name, (n_layers, n_heads), tuple(ranked), None, None, rule)


def _qr_heads(label: str, listed: str, n_layers: int, n_heads: int) -> list[Head]:
    items = [item.strip() for item in listed.split(",") if item.strip()]  # trailing commas are harmless
    if not items:
        raise ConfigError(f"{label} lists no heads; expected 'layer-head' pairs like '14-22,13-16'")
    heads, bad = [], []
    for item in items:
        try:
            heads.append(parse_head(item))
        except HeadscopeError:
            bad.append(item)
    if bad:
        raise ConfigError(f"{label}: {bad[:5]} are not 'layer-head' pairs like '14-22'")
    outside = [f"{h.layer}-{h.head}" for h in heads if h.layer >= n_layers or h.head >= n_heads]
    if outside:
        raise HeadIndexError(
            f"{label} lists heads outside a {n_layers}x{n_heads} model (layers 0-{n_layers - 1}, heads "
            f"0-{n_heads - 1}): {', '.join(outside[:8])}; is it the set of another model?"
        )
    return list(dict.fromkeys(heads))  # a repeated head keeps its first place


def _short(text: str, width: int = 40) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."
