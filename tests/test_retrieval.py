"""Retrieval-head detection on a GPT-2 whose weights are set by hand so that one head copies.

The copier model (a word-level vocabulary, one-hot embeddings, zero MLPs) has:
- L0H0: a previous-token head (by position), writing the previous token into its own subspace;
- L1H0: an induction head: it attends to the position whose previous token is the current
  token and writes that position's token into the logits, so the model copies a needle that
  follows ``key`` when the prompt ends in ``key``;
- L1H1: a decoy that attends to the earliest earlier copy of the current token (inside the
  needle while the needle is being copied) and writes nothing;
- L0H1: zero weights (uniform attention).
So L1H0 must score 1 and every other head 0, in both modes, on every model kind.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from pathlib import Path

import pytest
import torch
from _close import assert_close

import headscope as hs
from headscope.errors import ContextLengthError, SpanError
from headscope.hooks import capture
from headscope.retrieval import RetrievalScores, detect_retrieval_heads, greedy_steps, shard_samples
from headscope.tasks import Sample, Span

FILLER = "the of and to in is was for on with as by at from".split()
NEEDLE_WORDS = "red blue green gold silver seven nine apple river stone cloud tiger piano lemon".split()
WORDS = ["<bos>", "<eos>", "key", ".", *FILLER, *NEEDLE_WORDS]
COPIER = (1, 0)


def copier_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<bos>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", unk_token="<bos>", pad_token="<eos>"
    )


def build_copier(folder: Path) -> Path:
    """Save the hand-set copier GPT-2 and its tokenizer to ``folder``.

    Residual subspaces (each token is +1/-1 on a pair of dimensions, so every residual vector has
    zero mean and a constant norm and LayerNorm is a fixed rescaling): T current token, P previous
    token, OUT output token, POS = (cos, sin, -cos, -sin) of the position angle.
    """
    from transformers import GPT2Config, GPT2LMHeadModel

    V = len(WORDS)
    T, P, OUT, POS, D = 0, 2 * V, 4 * V, 6 * V, 6 * V + 4
    n_pos, theta = 64, 2 * math.pi / 80
    cfg = GPT2Config(
        vocab_size=V, n_embd=D, n_layer=2, n_head=2, n_positions=n_pos, tie_word_embeddings=False,
        attn_pdrop=0.0, resid_pdrop=0.0, embd_pdrop=0.0, bos_token_id=0, eos_token_id=1,
    )  # fmt: skip
    model = GPT2LMHeadModel(cfg).eval()
    sd = {k: torch.zeros_like(v) for k, v in model.state_dict().items()}
    for k in sd:
        if k.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")):
            sd[k] = torch.ones_like(sd[k])
    d_head = D // 2
    for v in range(V):
        sd["transformer.wte.weight"][v, T + 2 * v : T + 2 * v + 2] = torch.tensor([1.0, -1.0])
        sd["lm_head.weight"][v, OUT + 2 * v : OUT + 2 * v + 2] = torch.tensor([5.0, -5.0])
    for i in range(n_pos):
        c, s = math.cos(i * theta), math.sin(i * theta)
        sd["transformer.wpe.weight"][i, POS : POS + 4] = torch.tensor([c, s, -c, -s])
    # L0H0: query = position rotated back by one step, key = position; value = current token -> P.
    w = sd["transformer.h.0.attn.c_attn.weight"]  # [D, 3D]: q | k | v
    a = 2000.0
    w[POS, 0], w[POS + 1, 0] = a * math.cos(theta), a * math.sin(theta)
    w[POS, 1], w[POS + 1, 1] = -a * math.sin(theta), a * math.cos(theta)
    w[POS, D + 0], w[POS + 1, D + 1] = 1.0, 1.0
    for t in range(2 * V):
        w[T + t, 2 * D + t] = 1.0
        sd["transformer.h.0.attn.c_proj.weight"][t, P + t] = math.sqrt(4 / D)
    # L1H0: query = current token, key = previous token; value = token there -> OUT (the logits).
    w = sd["transformer.h.1.attn.c_attn.weight"]
    for t in range(2 * V):
        w[T + t, t] = 20.0
        w[P + t, D + t] = 1.0
        w[T + t, 2 * D + t] = 1.0
        sd["transformer.h.1.attn.c_proj.weight"][t, OUT + t] = math.sqrt(6 / D)
    # L1H1: query = current token, key = token, plus a constant query times cos(position) so the
    # earliest copy wins; no value.
    for t in range(2 * V):
        w[T + t, d_head + t] = 200.0
        w[T + t, D + d_head + t] = 1.0
    for v in range(V):
        w[T + 2 * v, d_head + 2 * V] = 100.0
    w[POS, D + d_head + 2 * V] = 1.0
    model.load_state_dict(sd)
    model.save_pretrained(folder)
    copier_tokenizer().save_pretrained(folder)
    return folder


def copy_sample(
    pre: list[str], needle: list[str], post: list[str], *, answer: list[str] | None = None, label: str = "needle"
) -> Sample:
    """``pre key NEEDLE post key`` with answer ``NEEDLE`` (or ``answer``) and a span on the needle."""
    head = " ".join(pre) + " key "
    text = " ".join(needle)
    prompt = head + text + " " + " ".join(post) + " key"
    return Sample(prompt, " " + " ".join(answer or needle), (Span(label, len(head), len(head) + len(text)),))


SAMPLES = [
    copy_sample(FILLER[:8], ["red", "blue", "seven", "apple"], FILLER[3:12]),
    copy_sample(FILLER[2:4], ["tiger", "piano", "lemon"], FILLER[:13]),
    copy_sample(FILLER[:12], ["stone", "cloud", "river", "nine", "gold"], FILLER[5:7]),
]


def no_hooks(model) -> bool:
    return not any(hp.fwd_hooks or hp.bwd_hooks for hp in model.hook_dict.values())


def always(sample: Sample, output: str) -> bool:
    return True


@pytest.fixture(scope="session")
def copier_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_copier(tmp_path_factory.mktemp("copier"))


@pytest.fixture
def copier(copier_folder: Path, model_kind: tuple[str, bool]):
    kind, compat = model_kind
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return hs.load_folder(copier_folder, kind=kind, compatibility_mode=compat)


@pytest.fixture(scope="module")
def copier_bridge(copier_folder: Path):
    return hs.load_folder(copier_folder)


@pytest.mark.parametrize("mode", ["teacher_forced", "generation"])
def test_hand_set_copying_head_scores_one_and_every_other_head_zero(copier, mode: str) -> None:
    scores = detect_retrieval_heads(copier, SAMPLES, mode=mode, max_new_tokens=7, progress=False)
    expected = torch.zeros(2, 2, dtype=torch.float64)
    expected[COPIER] = 1.0
    assert torch.equal(scores.scores, expected)
    assert (scores.n_counted, scores.n_samples, scores.mode) == (3, 3, mode)
    assert scores.above(0.1) == [(COPIER, 1.0)]
    assert no_hooks(copier)


def test_decoy_head_looks_inside_the_needle_while_it_is_copied(copier_bridge) -> None:
    """Makes the zero score of L1H1 meaningful: its top-1 key is in the needle, holding the wrong token."""
    enc = SAMPLES[0].encode(copier_bridge.tokenizer)
    seq = torch.cat([enc.input_ids, enc.answer_ids[:-1]])
    (start, end), n_prompt = enc.spans["needle"][0], enc.input_ids.numel()
    with capture(copier_bridge, ["blocks.1.attn.hook_pattern"]) as acts:
        copier_bridge(seq[None])
    top = acts["blocks.1.attn.hook_pattern"][0, :, n_prompt - 1 :].argmax(-1)  # rows predicting answer tokens
    assert torch.equal(top[0], torch.arange(start, end))  # the copier reads each needle token in turn
    assert torch.equal(top[1, 1:], torch.arange(start, end - 1))  # the decoy reads the token just copied


def test_teacher_forced_batches_with_right_padding_equal_one_sample_at_a_time(copier) -> None:
    samples = [*SAMPLES, copy_sample(FILLER[:5], ["red", "blue", "seven", "apple"], FILLER[:3], answer=["red", "gold"])]
    one = detect_retrieval_heads(copier, samples, success=always, require_prediction=False, progress=False)
    batched = detect_retrieval_heads(
        copier, samples, success=always, require_prediction=False, batch_size=3, progress=False
    )
    assert batched == one
    assert one.per_sample[3, 1, 0] == 0.25  # "red" copied, "gold" not: 1 hit / needle of 4


def test_require_prediction_decides_whether_a_head_is_credited_against_the_model(copier_bridge) -> None:
    # Gold " red red" after needle "red blue": at the second answer token the model says "blue",
    # while the decoy points at the needle's "red", which is the gold token.
    sample = copy_sample(FILLER[:6], ["red", "blue"], FILLER[:4], answer=["red", "red"])
    kept = detect_retrieval_heads(copier_bridge, [sample], success=always, require_prediction=False, progress=False)
    strict = detect_retrieval_heads(copier_bridge, [sample], success=always, require_prediction=True, progress=False)
    assert kept.scores[1].tolist() == [0.5, 0.5]
    assert strict.scores[1].tolist() == [0.5, 0.0]
    assert kept.settings["require_prediction"] is False


def test_span_answer_scores_the_union_of_labelled_spans(copier_bridge) -> None:
    base = SAMPLES[0]
    (needle,) = base.spans
    decoy = Span("answer", 0, len(FILLER[0]))  # the first filler word, never copied
    both = Sample(base.prompt, base.answer, (Span("answer", needle.start, needle.end), decoy))
    only_decoy = Sample(base.prompt, base.answer, (decoy,))
    for mode in ("teacher_forced", "generation"):
        union = detect_retrieval_heads(
            copier_bridge, [both], mode=mode, span="answer", max_new_tokens=5, progress=False
        )
        assert union.scores[COPIER] == 1.0 and union.settings["span"] == "answer"
    with pytest.warns(UserWarning, match="hold none of their gold answer tokens inside the 'answer' span"):
        missed = detect_retrieval_heads(copier_bridge, [only_decoy], span="answer", progress=False)
    assert missed.n_counted == 1 and missed.scores.abs().sum() == 0


@pytest.mark.parametrize("mode", ["teacher_forced", "generation"])
def test_unanswered_samples_are_seen_but_not_counted(copier_bridge, mode: str) -> None:
    wrong = copy_sample(FILLER[:6], ["red", "blue", "seven"], FILLER[:4], answer=["tiger", "piano", "lemon"])
    warns = pytest.warns(UserWarning, match="hold none") if mode == "teacher_forced" else contextlib.nullcontext()
    with warns:
        scores = detect_retrieval_heads(copier_bridge, [SAMPLES[1], wrong], mode=mode, max_new_tokens=4, progress=False)
    alone = detect_retrieval_heads(copier_bridge, [SAMPLES[1]], mode=mode, max_new_tokens=4, progress=False)
    assert (scores.n_counted, scores.n_samples) == (1, 2)
    assert torch.equal(scores.hit_sums, alone.hit_sums)
    assert scores.per_sample.shape == (1, 2, 2)


def test_generation_stops_at_the_eos_token(copier_bridge) -> None:
    sample = copy_sample(FILLER[:6], ["red", "blue", "seven", "<eos>"], FILLER[:4], answer=["red", "blue", "seven"])
    enc = sample.encode(copier_bridge.tokenizer)
    eos = copier_bridge.tokenizer.eos_token_id
    tokens = list(greedy_steps(copier_bridge, enc.input_ids, max_new_tokens=10, stop_ids={eos}))
    assert tokens == [*enc.answer_ids.tolist(), eos]
    scores = detect_retrieval_heads(copier_bridge, [sample], mode="generation", max_new_tokens=10, progress=False)
    assert scores.scores[COPIER] == 1.0  # 4 hits (the needle includes <eos>) / needle of 4
    assert scores.settings["stop_ids"] == [eos]


def test_scores_of_sample_shards_merge_to_the_scores_of_one_run(copier_bridge) -> None:
    samples = [*SAMPLES, copy_sample(FILLER[:3], ["red", "blue", "seven"], FILLER[:2], answer=["red", "blue", "gold"])]
    whole = detect_retrieval_heads(copier_bridge, samples, require_prediction=False, progress=False)
    parts = [
        detect_retrieval_heads(copier_bridge, shard_samples(samples, r, 2), require_prediction=False, progress=False)
        for r in range(2)
    ]
    merged = RetrievalScores.merge(parts)
    assert (merged.n_counted, merged.n_samples) == (whole.n_counted, whole.n_samples) == (4, 4)
    assert torch.equal(merged.per_sample, whole.per_sample)
    assert_close(merged.hit_sums, whole.hit_sums, short=True)
    assert merged.scores[COPIER] == pytest.approx((3 + 2 / 3) / 4)


def test_attention_is_read_on_a_bridge_that_computes_attention_inside_hugging_face(tmp_path: Path) -> None:
    """tiny-gpt-neo ignores pattern edits; reading must still see HF's own attention."""
    from transformers import AutoModelForCausalLM

    from headscope.models import tiny_folder
    from headscope.retrieval._top1 import pattern_readers, take_reads

    hf = AutoModelForCausalLM.from_pretrained(tiny_folder("gpt-neo"), attn_implementation="eager").eval()
    with torch.no_grad():  # sharper attention than the random init, so argmaxes are far from ties
        for block in hf.transformer.h:
            block.attn.attention.q_proj.weight.mul_(40.0)
    hf.save_pretrained(tmp_path)
    hs.models.tiny_tokenizer().save_pretrained(tmp_path)
    model = hs.load_folder(tmp_path)
    assert not hs.model_info(model).pattern_edits
    tokens = torch.tensor([[0, *range(40, 100, 3)]])
    hooks, store = pattern_readers(2, torch.arange(tokens.shape[1])[None], None)
    with torch.no_grad(), hs.attached(model, hooks):
        model(tokens)
        ours = take_reads(store, "hook_pattern did not fire").top1[:, 0]  # [layer, head, row]
        reference = torch.stack([a[0].argmax(-1) for a in hf(tokens, output_attentions=True).attentions])
    assert torch.equal(ours, reference)
    assert no_hooks(model)


# -- bad input ---------------------------------------------------------------------------------


def test_empty_sample_list_is_refused(copier_bridge) -> None:
    with pytest.raises(ValueError, match="samples is empty"):
        detect_retrieval_heads(copier_bridge, [], progress=False)


def test_samples_without_the_span_are_all_reported(copier_bridge) -> None:
    plain = Sample("the of key red", " red")
    other = Sample("the of key red", " red", (Span("gold_doc", 0, 6),))
    with pytest.raises(SpanError, match=r"2 of 3 samples .* sample 0 has no 'needle' span .*sample 2.*'gold_doc'"):
        detect_retrieval_heads(copier_bridge, [plain, SAMPLES[0], other], progress=False)
    assert no_hooks(copier_bridge)


def test_needle_span_over_no_token_is_reported(copier_bridge) -> None:
    blank = Sample("the of  key red", " red", (Span("needle", 6, 7),))  # a lone space
    with pytest.raises(SpanError, match="covers no token"):
        detect_retrieval_heads(copier_bridge, [blank], progress=False)


def test_contexts_longer_than_the_model_are_refused_before_any_forward(copier_bridge) -> None:
    long = copy_sample(FILLER * 4, ["red", "blue"], FILLER, answer=["red", "blue"])
    with pytest.raises(ContextLengthError, match=r"more than .* context of 64 tokens"):
        detect_retrieval_heads(copier_bridge, [SAMPLES[0], long], progress=False)
    with pytest.raises(ContextLengthError, match="max_new_tokens"):
        detect_retrieval_heads(copier_bridge, [SAMPLES[0]], mode="generation", max_new_tokens=60, progress=False)
    assert no_hooks(copier_bridge)


def test_hooks_are_removed_when_scoring_fails_midway(copier_bridge) -> None:
    def broken(sample: Sample, output: str) -> bool:
        raise RuntimeError("success rule failed")

    for mode in ("teacher_forced", "generation"):
        with pytest.raises(RuntimeError, match="success rule failed"):
            detect_retrieval_heads(copier_bridge, SAMPLES, mode=mode, success=broken, max_new_tokens=5, progress=False)
        assert no_hooks(copier_bridge)


def test_unknown_mode_is_refused(copier_bridge) -> None:
    with pytest.raises(ValueError, match="mode must be 'teacher_forced' or 'generation'; got 'greedy'"):
        detect_retrieval_heads(copier_bridge, SAMPLES, mode="greedy", progress=False)  # type: ignore[arg-type]


# -- two processes -----------------------------------------------------------------------------


def _distributed_worker(rank: int, folder: str, store: str, out: str) -> None:
    import torch.distributed as dist

    from headscope.retrieval import all_gather_scores

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        model = hs.load_folder(folder)
        samples = shard_samples(DISTRIBUTED_SAMPLES, rank, 2)
        mine = detect_retrieval_heads(model, samples, require_prediction=False, progress=False)
        merged = all_gather_scores(mine)
        merged.save(f"{out}/merged-{rank}.json")
        every = detect_retrieval_heads(
            model, DISTRIBUTED_SAMPLES, require_prediction=False, progress=False, distributed=True
        )  # the same switch: this rank scores its share, every rank gets the whole
        every.save(f"{out}/sharded-{rank}.json")
        dist.barrier()  # no rank tears gloo down while the other still has a send in flight (aborted once under load)
    finally:
        dist.destroy_process_group()


DISTRIBUTED_SAMPLES = [
    *SAMPLES,
    copy_sample(FILLER[:3], ["red", "blue", "seven"], FILLER[:2], answer=["red", "blue", "gold"]),
    copy_sample(FILLER[4:9], ["tiger", "nine", "piano", "lemon", "cloud"], FILLER[:2], answer=["tiger", "nine"]),
]


def test_two_processes_with_torch_distributed_give_the_totals_of_one(copier_folder: Path, tmp_path: Path) -> None:
    import torch.multiprocessing as mp

    mp.spawn(_distributed_worker, args=(str(copier_folder), str(tmp_path / "store"), str(tmp_path)), nprocs=2)
    one = detect_retrieval_heads(
        hs.load_folder(copier_folder), DISTRIBUTED_SAMPLES, require_prediction=False, progress=False
    )
    for rank in range(2):
        merged = RetrievalScores.load(tmp_path / f"merged-{rank}.json")
        assert (merged.n_counted, merged.n_samples) == (one.n_counted, one.n_samples) == (5, 5)
        assert torch.equal(merged.per_sample, one.per_sample)
        assert_close(merged.hit_sums, one.hit_sums, short=True)
        assert RetrievalScores.load(tmp_path / f"sharded-{rank}.json") == one  # bit for bit, in sample order
