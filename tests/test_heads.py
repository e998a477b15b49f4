"""One head vocabulary: the ``Head`` value, frozen ``HeadSet``s, and every function reading heads alike."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from _close import assert_differs

import headscope as hs
from headscope.cli import main
from headscope.compare import head_set, jaccard, recall
from headscope.errors import HeadIndexError, ModelMismatchError
from headscope.heads import Head, HeadSet, as_heads, random_heads
from headscope.models import tiny_folder
from headscope.patching import LogitDiff, compare_patching, patched, record_heads


def test_head_is_a_labelled_pair_equal_to_the_plain_tuple():
    h = Head(3, 7)
    assert str(h) == "L3H7" and repr(h) == "(3, 7)" and (h.layer, h.head) == (3, 7)
    assert h == (3, 7) and hash(h) == hash((3, 7)) and {(3, 7): "x"}[h] == "x"
    assert Head.parse("L3H7") == Head.parse("3-7") == h and isinstance(Head.parse("l3h7"), Head)
    assert json.loads(json.dumps([h])) == [[3, 7]]
    assert all(type(x) is Head for x in as_heads([(1, 0), "L2H3", np.array([0, 1])]))
    with pytest.raises(HeadIndexError, match="expected a label like 'L3H7'"):
        Head.parse("head 3")


def test_head_set_is_sorted_distinct_frozen_and_checked_once():
    info = hs.model_info(hs.load_model("tiny-llama"))  # 2 layers x 4 heads
    s = HeadSet.of(["L1H0", (0, 2), Head(1, 0)], info)
    assert s.heads == ((0, 2), (1, 0)) and s.labels == ("L0H2", "L1H0") and s.shape == (2, 4)
    assert len(s) == 2 and list(s) == [(0, 2), (1, 0)] and "L0H2" in s and (1, 0) in s and (1, 1) not in s
    assert "not a head" not in s
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.heads = ()  # type: ignore[misc]
    with pytest.raises(HeadIndexError, match=r"within a 2x4 model.*got L0H4, L2H0"):
        HeadSet.of([(2, 0), (0, 4)], info)
    other = HeadSet.of([(1, 0), (1, 3)], info)
    assert (s & other).labels == ("L1H0",) and (s | other).labels == ("L0H2", "L1H0", "L1H3")
    assert s.recall(other) == 0.5 and other.recall(s) == 0.5 and s.jaccard(other) == pytest.approx(1 / 3)
    with pytest.raises(HeadIndexError, match="within a 2x4 model"):
        s | [(5, 5)]
    with pytest.raises(ModelMismatchError, match="2x4 and a 3x3 model"):
        s & HeadSet([(0, 0)], (3, 3))


def test_random_like_draws_outside_exclude_like_random_heads():
    info = hs.model_info(hs.load_model("tiny-llama"))
    shared = HeadSet.of([(0, 0), (1, 1)], info)
    drawn = HeadSet.random_like(info, 3, seed=4, exclude=shared)
    assert len(drawn) == 3 and not (drawn & shared) and drawn.shape == info.shape
    assert list(drawn) == random_heads(info, 3, exclude=[(0, 0), (1, 1)], seed=4)
    with pytest.raises(HeadIndexError, match="only 6 heads remain"):
        HeadSet.random_like(info, 7, exclude=shared)


def _forms(info):
    """The same two heads, (0, 2) and (1, 0), in each form a caller may hold."""
    return {
        "tuples": [(1, 0), (0, 2)],
        "labels": ["L1H0", "L0H2"],
        "heads": [Head(1, 0), Head(0, 2)],
        "head set": HeadSet.of([(1, 0), (0, 2)], info),
    }


def test_every_head_form_gives_the_same_result_everywhere(tmp_path):
    model = hs.load_model("tiny-llama")
    info = hs.model_info(model)
    forms = _forms(info)
    tokens = torch.tensor([[0, 5, 9, 11, 7]])
    clean, corrupt = tokens, torch.tensor([[0, 5, 8, 11, 7]])
    with torch.no_grad():
        plain, plain_corrupt = model(tokens), model(corrupt)
    acts = record_heads(model, clean)
    source = hs.load_folder(tiny_folder("llama", seed=1))
    sample = hs.needle_grid(model.tokenizer, [60], [50], needle="symbolic", haystack="symbolic")[0]

    def outcome(form):
        with torch.no_grad(), hs.knockout(model, form, mode="zero"):
            knocked = model(tokens)
        with torch.no_grad(), patched(model, acts, form):
            patched_logits = model(corrupt)
        cmp = compare_patching(model, source, [tokens], form, LogitDiff(5, 6), n_random=1, progress=False)
        rows = hs.record_attention(model, sample, form, window=4)
        by_head = {str(head): rows.pattern[i] for i, head in enumerate(rows.heads)}
        return knocked, patched_logits, cmp.values, cmp.sets["shared"], by_head

    want = outcome(forms["tuples"])
    # not vacuous: knocking out and patching the two heads change the logits
    assert_differs(plain, want[0], short=True)
    assert_differs(plain_corrupt, want[1], short=True)
    assert want[3] == [(0, 2), (1, 0)] and sorted(want[4]) == ["L0H2", "L1H0"]
    for name, form in forms.items():
        got = outcome(form)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1]), name
        assert got[2] == want[2] and got[3] == want[3], name
        assert got[4].keys() == want[4].keys() and all(torch.equal(got[4][k], want[4][k]) for k in want[4]), name
        assert recall(form, ["L1H0", (1, 3)]) == 0.5 and jaccard(form, [Head(0, 2)]) == 0.5, name
        assert recall([(1, 0)], form) == 1.0, name
        assert HeadSet.of(form, info) == forms["head set"], name
        assert random_heads(info, 2, exclude=form, seed=3) == random_heads(info, 2, exclude=[(0, 2), (1, 0)], seed=3)

    # head_set's output feeds every consumer as is; the CLI's comparison agrees with recall on each form
    grid = torch.zeros(2, 4)
    grid[1, 0], grid[0, 2], grid[1, 1] = 0.9, 0.8, 0.1
    assert (
        head_set(grid, top_k=2) == [(1, 0), (0, 2)] and HeadSet.of(head_set(grid, top_k=2), info) == forms["head set"]
    )
    candidate = torch.zeros(2, 4)
    candidate[1, 0], candidate[1, 3] = 0.7, 0.6
    paths = []
    for name, scores in (("ref", grid), ("cand", candidate)):
        paths.append(tmp_path / f"{name}.json")
        hs.RetrievalScores(scores.double(), 1, 1, "m", "teacher_forced").save(paths[-1])
    assert main(["compare", *map(str, paths), "--top-k", "2", "--out", str(tmp_path / "o")]) == 0
    summary = json.loads((tmp_path / "o" / "comparison.json").read_text())
    for name, form in forms.items():
        assert summary["recall"] == recall(form, head_set(candidate, top_k=2)) == 0.5, name
        assert summary["shared_heads"] == list((HeadSet.of(form, info) & [(1, 0), (1, 3)]).labels) == ["L1H0"]
