"""Attention records and views: which tokens they keep, that the numbers are the model's, and bad input.

``record_attention`` (analysis) runs the model; ``attention_view`` (viz) only draws the record.
"""

from __future__ import annotations

import json
import re

import pytest
import torch
from _close import assert_close

import headscope as hs
from headscope.retrieval import AttentionRows, record_attention
from headscope.tasks import Sample, Span
from headscope.viz import AttentionView, attention_view, attention_window

PROMPT = "filler " * 30 + "The key is 4712. " + "filler " * 30 + "Key?"
SAMPLE = Sample(PROMPT, " 4712", spans=(Span("needle", PROMPT.index("4712"), PROMPT.index("4712") + 4),))


def _hooks_left(model) -> bool:
    return any(hp.fwd_hooks or hp.bwd_hooks for hp in model.hook_dict.values())


def _shown_props(view: AttentionView) -> dict:
    """The props the HTML hands to circuitsvis, parsed back from the page."""
    match = re.search(r"CircuitsVis\.AttentionHeads, (\{.*\})\);</script>", view.html(include_js=False))
    assert match is not None
    return json.loads(match.group(1).replace("<\\/", "</"))


def test_view_window_holds_needle_answer_rows_and_bos(tiny_llama, tokenizer):
    enc = SAMPLE.encode(tokenizer)
    (needle_start, needle_end), n_prompt, n_answer = enc.spans["needle"][0], len(enc.input_ids), len(enc.answer_ids)
    view = record_attention(tiny_llama, SAMPLE, [(1, 2)], window=3)
    answer_rows = list(range(n_prompt - 1, n_prompt - 1 + n_answer))
    expected = sorted({0, *range(needle_start - 3, needle_end + 3), *answer_rows})
    assert list(view.positions) == expected
    assert list(view.query_positions) == answer_rows
    assert view.n_tokens == n_prompt + n_answer
    ids = torch.cat([enc.input_ids, enc.answer_ids])
    assert list(view.tokens) == [tokenizer.decode([int(ids[p])]) for p in expected]
    assert not _hooks_left(tiny_llama)


def test_record_numbers_and_top_keys_equal_directly_captured_pattern(tiny_llama, tokenizer):
    heads = [(1, 3), (0, 1), (1, 0)]  # unsorted, two heads of one layer
    rows = record_attention(tiny_llama, SAMPLE, heads, window=4)
    view = attention_view(rows)
    enc = SAMPLE.encode(tokenizer)
    ids = torch.cat([enc.input_ids, enc.answer_ids]).unsqueeze(0)
    names = [f"blocks.{layer}.attn.hook_pattern" for layer in (0, 1)]
    with torch.no_grad(), hs.capture(tiny_llama, names) as acts:
        tiny_llama(ids)
    index = torch.tensor(view.positions)
    for h, (layer, head) in enumerate(heads):
        full = acts[names[layer]][0, head]
        assert_close(view.pattern[h], full[index][:, index], short=True)
        # the top key of each answer row is the argmax over the whole row, not only the kept keys
        answer_rows = full[list(rows.query_positions)]
        assert rows.top_keys[h].tolist() == answer_rows.argmax(-1).tolist()
        assert_close(rows.top_values[h], answer_rows.max(-1).values, short=True)
    shown = torch.tensor(_shown_props(view)["attention"], dtype=torch.float64)
    # the page shows each weight rounded to 4 decimals: an absolute step of 5e-5, whatever the weight's size
    torch.testing.assert_close(shown, view.pattern.double(), rtol=0, atol=5.1e-5)
    assert view.heads == ("L1H3", "L0H1", "L1H0")


def test_view_of_raw_tokens_uses_the_given_positions(tiny_gpt2):
    ids = torch.arange(1, 41)
    view = record_attention(tiny_gpt2, ids, [(0, 1)], window=2, around=[10], queries=[20, 25])
    assert view.positions == (0, 8, 9, 10, 11, 12, 20, 25)
    last = record_attention(tiny_gpt2, ids, [(0, 1)], window=0, around=[5], queries="last", include_bos=False)
    assert last.positions == (5, 39)


def test_record_stops_after_the_last_needed_layer_and_keeps_user_hooks(tiny_llama):
    hs.model_info(tiny_llama)  # probed (with full forward passes) before the user's hook goes on
    calls = []
    with hs.attached(tiny_llama, [("blocks.1.attn.hook_pattern", lambda p, hook: calls.append(1))]):
        record_attention(tiny_llama, torch.arange(1, 30), [(0, 0)], around=[10], queries="last")
        assert calls == []  # layer 1 never ran
        record_attention(tiny_llama, torch.arange(1, 30), [(1, 0)], around=[10], queries="last")
        assert calls == [1]
        assert tiny_llama.hook_dict["blocks.1.attn.hook_pattern"].fwd_hooks  # the user's hook is still there
    assert not _hooks_left(tiny_llama)


def test_record_rejects_bad_heads_and_positions_and_leaves_no_hooks(tiny_llama):
    with pytest.raises(hs.HeadIndexError, match=r"within a 2x4 model; got \(2, 0\), \(0, 9\)"):
        record_attention(tiny_llama, SAMPLE, [(2, 0), (0, 9), (1, 1)])
    with pytest.raises(hs.SpanError, match="need a Sample"):
        record_attention(tiny_llama, torch.arange(1, 30), [(0, 0)])
    with pytest.raises(hs.SpanError, match=r"query positions \[30\] are outside the input of 29 tokens"):
        record_attention(tiny_llama, torch.arange(1, 30), [(0, 0)], around=[3], queries=[4, 30])
    with pytest.raises(ValueError, match="window must be >= 0"):
        record_attention(tiny_llama, SAMPLE, [(0, 0)], window=-1)
    with pytest.raises(ValueError, match="queries must be 'answer', 'last' or positions; got 'first'"):
        record_attention(tiny_llama, SAMPLE, [(0, 0)], queries="first")
    no_needle = Sample(PROMPT, " 4712")
    with pytest.raises(hs.SpanError, match="sample has no 'needle' span"):
        record_attention(tiny_llama, no_needle, [(0, 0)])
    with pytest.raises(ValueError, match=r"the record would keep 1026 tokens, more than 1024; pass a smaller window"):
        record_attention(
            tiny_llama,
            torch.arange(1, 1101) % 200,
            [(0, 0)],
            window=512,
            around=[520],
            queries="last",
            include_bos=False,
        )
    assert not _hooks_left(tiny_llama)


def test_record_keeps_the_span_detection_names(tiny_llama, tokenizer):
    """``span`` picks the span the window surrounds, as in detection."""
    start = PROMPT.index("filler", 100)
    sample = Sample(PROMPT, " 4712", spans=(*SAMPLE.spans, Span("answer", start, start + 6)))
    rows = record_attention(tiny_llama, sample, [(0, 0)], span="answer", window=0, include_bos=False)
    (a, b) = sample.encode(tokenizer).spans["answer"][0]
    assert rows.focus == tuple(range(a, b)) and rows.span == "answer"
    assert set(rows.positions) == set(range(a, b)) | set(rows.query_positions)


def test_record_round_trips_and_frames_agree_with_its_pattern(tiny_llama, tmp_path):
    rows = record_attention(tiny_llama, SAMPLE, [(1, 2), (0, 3)], window=2)
    again = AttentionRows.load(rows.save(tmp_path / "rows.json"))
    assert torch.equal(again.pattern, rows.pattern) and torch.equal(again.top_keys, rows.top_keys)
    assert torch.equal(again.top_values, rows.top_values)
    assert (again.positions, again.tokens, again.heads, again.top_tokens, again.focus, again.meta) == (
        rows.positions, rows.tokens, rows.heads, rows.top_tokens, rows.focus, rows.meta,
    )  # fmt: skip
    frame = rows.to_frame()
    i, q = 1, rows.query_positions[-1]
    row = frame[(frame["label"] == "L0H3") & (frame["query"] == q) & (frame["key"] == rows.positions[i])].iloc[0]
    assert row.value == pytest.approx(float(rows.pattern[1, rows.positions.index(q), i]))
    assert set(frame.loc[frame["in_span"], "key"]) == set(rows.focus)
    top = rows.top_frame()
    assert len(top) == 2 * len(rows.query_positions)
    assert top["key"].tolist() == rows.top_keys.flatten().tolist()


def test_view_draws_exactly_the_record_with_its_top_keys(tiny_llama):
    rows = record_attention(tiny_llama, SAMPLE, [(1, 2), (0, 3)], window=2)
    view = rows.plot()
    assert isinstance(view, AttentionView) and view.positions == rows.positions and view.heads == rows.labels
    props = _shown_props(view)
    torch.testing.assert_close(torch.tensor(props["attention"]), rows.pattern, rtol=0, atol=5.1e-5)  # 4 decimals
    assert props["attentionHeadNames"] == ["L1H2", "L0H3"]
    page = view.html(include_js=False)
    assert page.count("<tr><td>L") == 2 * len(rows.query_positions)  # one table row per (head, answer row)
    key = int(rows.top_keys[0, 0])
    assert f"<td>{key}</td>" in page


def test_attention_window_slices_the_given_pattern():
    pattern = torch.softmax(torch.randn(3, 12, 12), -1)
    tokens = [f"t{i}" for i in range(12)]
    view = attention_window(pattern, tokens, (4, 7), [10, 11], head_names=["a", "b", "c"])
    assert view.positions == (0, 4, 5, 6, 10, 11)
    assert view.tokens == ("t0", "t4", "t5", "t6", "t10", "t11")
    for i, q in enumerate(view.positions):
        for j, k in enumerate(view.positions):
            assert torch.equal(view.pattern[:, i, j], pattern[:, q, k])
    frame = view.to_frame()
    assert len(frame) == 3 * (5 + 6)  # per head: query 10 sees 5 shown keys, query 11 sees 6
    row = frame[(frame["label"] == "b") & (frame["query"] == 11) & (frame["key"] == 5)].iloc[0]
    assert row.value == pytest.approx(float(pattern[1, 11, 5]))
    assert (row.query_token, row.key_token) == ("t11", "t5")


def test_attention_window_checks_shapes_against_tokens():
    pattern = torch.rand(2, 8, 8)
    with pytest.raises(ValueError, match=r"square \[head, query, key\] tensor; got shape \(2, 8, 7\)"):
        attention_window(pattern[..., :7], list("abcdefgh"), (0, 2), [7])
    with pytest.raises(ValueError, match="pattern covers 8 tokens but 7 str_tokens were given"):
        attention_window(pattern, list("abcdefg"), (0, 2), [7])
    with pytest.raises(ValueError, match="pattern has 2 heads but 1 head_names"):
        attention_window(pattern, list("abcdefgh"), (0, 2), [7], head_names=["x"])
    with pytest.raises(hs.SpanError, match=r"0 <= start < end <= 8 .*got \(3, 9\)"):
        attention_window(pattern, list("abcdefgh"), (3, 9), [7])
    with pytest.raises(hs.SpanError, match=r"query positions \[8\] are outside"):
        attention_window(pattern, list("abcdefgh"), (0, 2), [8])


def test_view_html_is_offline_and_survives_script_tags_in_tokens():
    tokens = ["<s>", "</script><b>x", "a", "b"]
    view = attention_window(torch.rand(1, 4, 4), tokens, (1, 2), [3])
    page = view.html()
    assert "unpkg" not in page and not re.search(r"<script[^>]*\ssrc=", page)  # no script is fetched
    assert page.count("var CircuitsVis=") == 1
    assert page.count("</script") == 2  # only the real ends of the two scripts: the bundle and the render call
    assert _shown_props(view)["tokens"][1] == "</script><b>x@1"
    same = lambda html: re.sub(r"hs-attn-\w+", "ID", html)  # noqa: E731  (each rendering gets a fresh div id)
    assert same(str(view)) == same(view._repr_html_()) == same(page)
    assert "var CircuitsVis=" not in view.html(include_js=False)


@pytest.mark.smollm2
def test_view_matches_hugging_face_attentions_on_smollm2(smollm2, smollm2_hf, smollm2_tokenizer):
    haystack = " ".join(f"Line {i} is about the river and the stone." for i in range(12))
    prompt = haystack[:200] + " The code of the blue door is 7381. " + haystack[200:] + "\nThe code of the blue door is"
    start = prompt.index("7381")
    sample = Sample(prompt, " 7381", spans=(Span("needle", start, start + 4),))
    heads = [(14, 3), (15, 6)]  # two of its heads that copy the needle
    view = record_attention(smollm2, sample, heads, window=8)
    enc = sample.encode(smollm2_tokenizer)
    ids = torch.cat([enc.input_ids, enc.answer_ids]).unsqueeze(0)
    with torch.no_grad():
        attentions = smollm2_hf(ids, output_attentions=True).attentions
    index = torch.tensor(view.positions)
    for h, (layer, head) in enumerate(heads):
        reference = attentions[layer][0, head][index][:, index]
        assert_close(view.pattern[h], reference)
    assert set(range(*enc.spans["needle"][0])) <= set(view.positions)
