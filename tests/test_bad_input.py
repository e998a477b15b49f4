"""Bad input that used to fall through as a raw traceback: unreadable result files, non-model objects,
and command-line arguments checked only after a model had been loaded (issue 22, finding 8)."""

from __future__ import annotations

import json

import pytest
import torch

import headscope as hs
from headscope.ablation import Knockout, KnockoutCurve
from headscope.cli import main
from headscope.compare import Correlation, RankAgreement
from headscope.patching import PatchingComparison, PatchingResult
from headscope.pipeline._result import VariantResult
from headscope.retrieval import AttentionRows, RetrievalScores
from headscope.tasks import Sample, Span
from headscope.training import FinetuneResult

RESULTS = [
    RetrievalScores,
    KnockoutCurve,
    Knockout,
    PatchingResult,
    PatchingComparison,
    FinetuneResult,
    Correlation,
    RankAgreement,
    AttentionRows,
    VariantResult,
]

BAD_FILES = {
    "text": b"this is not JSON",
    "empty": b"",
    "binary": b"\xff\xfe\x00\x81 not text",
    "list": b"[1, 2, 3]",
    "number": b"3.5",
}


@pytest.mark.parametrize("content", BAD_FILES.values(), ids=BAD_FILES.keys())
@pytest.mark.parametrize("cls", RESULTS, ids=lambda c: c.__name__)
def test_loading_a_file_that_is_no_saved_result_names_the_file_and_the_format(cls, content, tmp_path) -> None:
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    with pytest.raises(hs.ConfigError) as caught:
        cls.load(path)
    message = str(caught.value)
    assert str(path) in message and cls.__name__ in message, message
    assert "save" in message  # says which file it expected: one written by <cls>.save


@pytest.mark.parametrize("cls", RESULTS, ids=lambda c: c.__name__)
def test_a_saved_result_with_missing_or_malformed_fields_is_a_clear_error(cls, tmp_path) -> None:
    path = tmp_path / "half.json"
    path.write_text(json.dumps({"headscope": cls.__name__}))  # the right class, no fields
    with pytest.raises(hs.ConfigError) as caught:
        cls.load(path)
    assert str(path) in str(caught.value) and cls.__name__ in str(caught.value)


def test_a_score_file_with_a_malformed_tensor_is_a_clear_error(tmp_path) -> None:
    good = RetrievalScores(torch.ones(2, 3, dtype=torch.float64), 1, 1, "m", "teacher_forced").to_dict()
    good["hit_sums"] = "0.5"
    path = tmp_path / "scores.json"
    path.write_text(json.dumps({"headscope": "RetrievalScores", **good}))
    with pytest.raises(hs.ConfigError, match=r"scores\.json"):
        RetrievalScores.load(path)


@pytest.mark.parametrize("content", [b"{not json", b"[0.5, 0.25]", b'{"0-0": "high"}', b'{"0-0": [0.5], "x": [1]}'])
def test_a_bad_wu_score_file_is_a_clear_error(content, tmp_path) -> None:
    path = tmp_path / "head_score.json"
    path.write_bytes(content)
    with pytest.raises(hs.ConfigError, match=r"head_score\.json"):
        RetrievalScores.from_wu_json(path)


def test_a_missing_result_file_is_file_not_found_naming_it(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nowhere\.json"):
        RetrievalScores.load(tmp_path / "nowhere.json")


def test_compare_on_a_file_that_is_not_json_says_which_file_and_what_it_expected(tmp_path, capsys) -> None:
    good = RetrievalScores(torch.ones(2, 3, dtype=torch.float64), 1, 1, "m", "teacher_forced").save(tmp_path / "a.json")
    bad = tmp_path / "notes.txt"
    bad.write_text("retrieval heads: L1H2, L3H4")
    assert main(["compare", str(good), str(bad), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(bad) in err and "RetrievalScores" in err, err
    assert "Expecting value" not in err.split(":", 2)[-1][:20]  # not json's raw message alone


# -- objects that are not models ------------------------------------------------------------------


def _sample() -> Sample:
    return Sample("The code is 4712. The code is", " 4712", (Span("needle", 12, 16),))


def _entry_points(model):
    """Every public function that takes a model, called with ``model`` where the model goes."""
    sample, tokens = _sample(), torch.tensor([[0, 5, 9, 3]])
    real = hs.load_model("tiny-llama")

    def knockout():
        with hs.knockout(model, [(0, 0)]):
            pass

    def patched():
        with hs.patched(model, {}, [(0, 0)]):
            pass

    return {
        "model_info": lambda: hs.model_info(model),
        "to_tokens": lambda: hs.to_tokens(model, "text"),
        "detect_retrieval_heads": lambda: hs.detect_retrieval_heads(model, [sample], progress=False),
        "record_attention": lambda: hs.record_attention(model, sample, [(0, 0)]),
        "knockout": knockout,
        "knockout_curve": lambda: hs.knockout_curve(
            model, [sample], [(0, 0)], hs.answer_accuracy, ks=[1], seeds=[0], progress=False
        ),
        "head_means": lambda: hs.ablation.head_means(model, [tokens]),
        "patch_heads (target)": lambda: hs.patch_heads(model, real, tokens, [(0, 0)]),
        "patch_heads (source)": lambda: hs.patch_heads(real, model, tokens, [(0, 0)]),
        "patched": patched,
        "head_patching_sweep": lambda: hs.head_patching_sweep(model, tokens, tokens, lambda logits: logits.sum()),
        "attribution_patching": lambda: hs.attribution_patching(model, tokens, tokens, lambda logits: logits.sum()),
        "compare_patching": lambda: hs.compare_patching(model, real, [sample.encode(real.tokenizer)], [(0, 0)]),
        "generate_answer": lambda: hs.generate_answer(model, sample),
        "retrieval_success": lambda: hs.retrieval_success(model, sample),
        "answer_accuracy": lambda: hs.answer_accuracy(model, sample),
        "finetune": lambda: hs.finetune(model, [sample], steps=1, progress=False),
        "answer_loss": lambda: hs.answer_loss(model, [sample]),
        "select_parameters": lambda: hs.select_parameters(model),
        "save_weights": lambda: hs.save_weights(model, "never-written.safetensors", ["x"]),
        "load_weights": lambda: hs.load_weights(model, "never-read.safetensors"),
        "attached": lambda: hs.attached(model, []).__enter__(),
        "capture": lambda: hs.capture(model, ["blocks.0.attn.hook_z"]).__enter__(),
    }


NOT_MODELS = {
    "object": object,
    "name": lambda: "smollm2-135m-instruct",
    "torch module": lambda: torch.nn.Linear(2, 2),
}
ENTRY_POINTS = list(_entry_points(None))


@pytest.mark.parametrize("entry", ENTRY_POINTS)
@pytest.mark.parametrize("what", NOT_MODELS, ids=NOT_MODELS.keys())
def test_a_non_model_where_a_model_goes_is_a_model_error_naming_what_was_expected(entry, what) -> None:
    thing = NOT_MODELS[what]()
    with pytest.raises(hs.ModelError) as caught:
        _entry_points(thing)[entry]()
    message = str(caught.value)
    assert "HookedTransformer" in message and "TransformerBridge" in message, message
    assert type(thing).__name__ in message, message
    if isinstance(thing, str):
        assert "load_model" in message, message


def test_a_non_model_leaves_no_hook_on_the_real_model_it_came_with() -> None:
    real = hs.load_model("tiny-llama")
    with pytest.raises(hs.ModelError):
        hs.patch_heads(real, object(), torch.tensor([[0, 5, 9, 3]]), [(0, 0)])
    assert not any(hp.fwd_hooks or hp.bwd_hooks for hp in real.hook_dict.values())


# -- the command line checks every argument and file before it loads a model ----------------------


@pytest.fixture
def no_model_loads(monkeypatch):
    """Fail the test if the CLI loads (or starts to load) a model."""
    import headscope.cli as cli
    import headscope.models as models

    def loader(*args, **kwargs):
        pytest.fail(f"a model was loaded before the arguments were checked: {args}")

    monkeypatch.setattr(cli, "_load_model", loader)
    monkeypatch.setattr(models, "load_model", loader)
    monkeypatch.setattr(models, "load_folder", loader)


@pytest.fixture
def files(tmp_path):
    """Input files for the command line: a good score file, a missing one, a text file, another result."""
    grid = torch.tensor([[0.9, 0.0, 0.5, 0.0], [0.0, 0.7, 0.0, 0.2]], dtype=torch.float64)
    text = tmp_path / "notes.txt"
    text.write_text("L0H1 L1H2")
    return {
        "scores": str(RetrievalScores(grid, 1, 1, "m", "teacher_forced").save(tmp_path / "scores.json")),
        "missing": str(tmp_path / "missing.json"),
        "text": str(text),
        "other": str(Knockout([(0, 1)], "zero").save(tmp_path / "knockout.json")),
        "weights": str(tmp_path / "ft.safetensors"),
    }


def _model_cases(command):
    return {
        f"{command} --weights missing": (lambda f: [command, "--weights", f["weights"]], "ft.safetensors"),
        f"{command} --weights not weights": (lambda f: [command, "--weights", f["text"]], "save_weights"),
        f"{command} --lengths 0": (lambda f: [command, "--lengths", "0"], "length must be a positive number"),
        f"{command} --depths 150": (lambda f: [command, "--depths", "150"], "depth must be a percentage"),
        f"{command} --n-samples 0": (lambda f: [command, "--n-samples", "0"], "--n-samples"),
        f"{command} --max-new-tokens 0": (lambda f: [command, "--max-new-tokens", "0"], "--max-new-tokens"),
        f"{command} --top -1": (lambda f: [command, "--top", "-1"], "--top"),
        f"{command} --span": (lambda f: [command, "--span", "nowhere"], "'nowhere'"),
    }


def _knock(f):
    return ["knockout", "--scores", f["scores"]]


def _pair(f, source="scores", target="scores"):
    models = ["--source", "tiny-llama", "--target", "tiny-llama"]
    return ["patch", *models, "--source-scores", f[source], "--target-scores", f[target]]


#: name: (argv from the input files, words the one-line error must hold); each subcommand, argument and file.
CLI_CASES = {
    **_model_cases("main"),
    **_model_cases("detect"),
    "detect --task mdqa --n-docs 0": (lambda f: ["detect", "--task", "mdqa", "--n-docs", "0"], "n_docs must be"),
    "detect --task kv --span": (lambda f: ["detect", "--task", "kv", "--span", "gold_doc_x"], "'gold_doc_x'"),
    "knockout --scores missing": (lambda f: ["knockout", "--scores", f["missing"]], "missing.json"),
    "knockout --scores not json": (lambda f: ["knockout", "--scores", f["text"]], "notes.txt"),
    "knockout --scores another result": (lambda f: ["knockout", "--scores", f["other"]], "holds a Knockout"),
    "knockout --weights missing": (lambda f: [*_knock(f), "--weights", f["weights"]], "ft.safetensors"),
    "knockout --ks 0": (lambda f: [*_knock(f), "--ks", "0"], "--ks"),
    "knockout --ks too many": (lambda f: [*_knock(f), "--ks", "9"], "fewer than every k"),
    "knockout --lengths": (lambda f: [*_knock(f), "--lengths", "-5"], "length must be a positive"),
    "knockout --mode edge --span": (lambda f: [*_knock(f), "--mode", "edge", "--span", "nowhere"], "'nowhere'"),
    "patch --source-scores missing": (lambda f: _pair(f, source="missing"), "missing.json"),
    "patch --target-scores not json": (lambda f: _pair(f, target="text"), "notes.txt"),
    "patch --source-weights missing": (lambda f: [*_pair(f), "--source-weights", f["weights"]], "ft.safetensors"),
    "patch --target-weights missing": (lambda f: [*_pair(f), "--target-weights", f["weights"]], "ft.safetensors"),
    "patch --top-k 0": (lambda f: [*_pair(f), "--top-k", "0"], "top_k must be at least 1"),
    "patch --n-random -1": (lambda f: [*_pair(f), "--n-random", "-1"], "--n-random"),
    "patch --depths": (lambda f: [*_pair(f), "--depths", "-1"], "depth must be a percentage"),
    "paper --data missing": (lambda f: ["paper", "--data", f["missing"]], "missing.json"),
    "paper --threads -1": (lambda f: ["paper", "--data", f["scores"], "--threads", "-1"], "--threads"),
    **{f"{c} --out a file": (lambda f, c=c: [c, "--out", f["text"]], "--out") for c in ("main", "detect", "paper")},
    "knockout --out a file": (lambda f: [*_knock(f), "--out", f["text"]], "--out"),
    "patch --out a file": (lambda f: [*_pair(f), "--out", f["text"]], "--out"),
    "compare --out a file": (lambda f: ["compare", f["scores"], f["scores"], "--out", f["text"]], "--out"),
}


@pytest.mark.parametrize("case", CLI_CASES)
def test_every_cli_argument_and_file_is_checked_before_a_model_loads(case, files, no_model_loads, tmp_path, capsys):
    argv, words = CLI_CASES[case]
    argv = argv(files)
    assert main(argv if "--out" in argv else [*argv, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("headscope: error: ") and words in err, err
    assert not (tmp_path / "out").exists()


def test_the_cli_knows_the_needle_span_labels_before_the_model_loads() -> None:
    """Needle samples need the tokenizer, so --span is checked against a table: the labels needle_grid gives."""
    from headscope import cli, tasks
    from headscope.models import tiny_tokenizer

    for needle in cli.KINDS:
        for answer in ("value", "sentence"):
            grid = tasks.needle_grid(tiny_tokenizer(), [150], [0, 50, 100], needle=needle, answer=answer)
            assert {label for s in grid for label in s.labels()} == set(cli.NEEDLE_SPANS), (needle, answer)
