"""The ``headscope`` command line: outputs on disk, printed summaries, and clear errors."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from headscope.cli import MAIN_LENGTHS, build_parser, main
from headscope.retrieval import DEFAULT_SUCCESS, RetrievalScores, Stability


def _scores(path, grid, model="m"):
    scores = RetrievalScores(torch.tensor(grid, dtype=torch.float64), 1, 1, model, "teacher_forced")
    scores.save(path)
    return path


def test_compare_writes_json_csv_and_report(tmp_path, capsys):
    a = _scores(tmp_path / "a.json", [[0.9, 0.0, 0.5], [0.0, 0.7, 0.1]])
    b = _scores(tmp_path / "b.json", [[0.8, 0.6, 0.0], [0.0, 0.2, 0.0]])
    out = tmp_path / "out"
    assert main(["compare", str(a), str(b), "--top-k", "2", "--out", str(out)]) == 0
    summary = json.loads((out / "comparison.json").read_text())
    # top-2 of a: L0H0, L1H1; top-2 of b: L0H0, L0H1 -> one shared head
    assert summary["recall"] == 0.5 and summary["jaccard"] == pytest.approx(1 / 3)
    assert summary["shared_heads"] == ["L0H0"]
    frame = pd.read_csv(out / "comparison.csv")
    assert list(frame["label"]) == ["L0H0", "L0H1", "L0H2", "L1H0", "L1H1", "L1H2"]
    html = (out / "report.html").read_text()
    assert html.startswith("<!DOCTYPE html>") and "Head-set comparison" in html
    assert "recall: 0.500" in capsys.readouterr().out


def test_compare_with_a_threshold_cuts_sets_by_score(tmp_path):
    a = _scores(tmp_path / "a.json", [[0.9, 0.05], [0.3, 0.0]])
    b = _scores(tmp_path / "b.json", [[0.2, 0.5], [0.0, 0.0]])
    assert main(["compare", str(a), str(b), "--threshold", "0.1", "--out", str(tmp_path / "o")]) == 0
    summary = json.loads((tmp_path / "o" / "comparison.json").read_text())
    assert summary["recall"] == 0.5  # reference {L0H0, L1H0}, candidate {L0H0, L0H1}


def test_unreadable_score_file_is_a_clear_error(tmp_path, capsys):
    missing = tmp_path / "nope.json"
    assert main(["compare", str(missing), str(missing), "--out", str(tmp_path / "o")]) == 2
    assert "nope.json" in capsys.readouterr().err


def test_paper_without_its_data_says_which_file_it_needs(tmp_path, capsys):
    missing = tmp_path / "nq-open-oracle.jsonl.gz"
    assert main(["paper", "--smoke", "--data", str(missing), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "--data" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_unknown_model_is_a_clear_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # 'gpt-5' is spelled like a hub id: look in an empty cache only
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    assert main(["detect", "--model", "gpt-5", "--out", str(tmp_path / "o")]) == 2
    assert "'gpt-5' (revision main) is not in the Hugging Face cache" in capsys.readouterr().err
    assert main(["detect", "--model", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    assert "is neither one of headscope's models" in capsys.readouterr().err


def test_bad_options_are_rejected_by_the_parser(capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["detect", "--mode", "fastest"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'fastest'" in capsys.readouterr().err


def test_every_option_has_help():
    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.dest == "command").choices
    for name, sub in subparsers.items():
        for action in sub._actions:
            assert action.help, f"headscope {name} {action.option_strings or action.dest} has no help"


def test_every_subcommand_prints_its_help(capsys):
    """argparse formats help strings with ``%``: a bare ``90%`` in one crashed ``--help``."""
    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.dest == "command").choices
    for name, sub in subparsers.items():
        text = sub.format_help()
        assert "--out" in text or name == "compare", name
    assert "90% of" in " ".join(subparsers["detect"].format_help().split())


def test_main_defaults_are_wu_et_al_setting_on_the_fused_route():
    """headscope main: generation, fused attention, whole-sentence answers, lengths up to SmolLM2's 8k, five depths."""
    main_args, detect_args = build_parser().parse_args(["main"]), build_parser().parse_args(["detect"])
    assert (main_args.mode, main_args.attention, main_args.answer) == ("generation", "fused", "sentence")
    assert main_args.lengths == list(MAIN_LENGTHS) and max(main_args.lengths) <= 8192 - 192
    assert main_args.depths == [0, 25, 50, 75, 100] and main_args.out == "headscope-results/main"
    assert (detect_args.mode, detect_args.attention, detect_args.answer) == ("teacher_forced", "auto", "value")
    assert detect_args.lengths == [500, 1000] and detect_args.depths == [0, 50, 100]


@pytest.mark.smollm2
def test_detect_then_knockout_on_smollm2(smollm2, tmp_path, capsys):
    task = ["--needle", "templated", "--lengths", "250", "--depths", "50", "--n-samples", "1"]
    out = tmp_path / "detect"
    assert main(["detect", *task, "--mode", "generation", "--max-new-tokens", "16", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "samples counted (answered correctly): 1 of 1" in printed and "heads above 0.1" in printed
    scores = RetrievalScores.load(out / "scores.json")
    wu = json.loads((out / "head_score.json").read_text())
    assert len(wu) == 270 and scores.n_counted == 1
    best, score = scores.top(1)[0]
    assert wu[f"{best[0]}-{best[1]}"] == [pytest.approx(score)]
    assert main(["knockout", *task, "--scores", str(out / "scores.json"), "--ks", "5", "--seeds", "0",
                 "--out", str(tmp_path / "ko")]) == 0  # fmt: skip
    frame = pd.read_csv(tmp_path / "ko" / "knockout.csv")
    assert set(frame["kind"]) == {"top", "random"} and set(frame["k"]) >= {5}


def test_patch_compares_shared_complement_and_random_heads(tmp_path, capsys):
    from headscope.models import tiny_folder

    source, target = tiny_folder("llama", seed=0), tiny_folder("llama", seed=1)
    a = _scores(tmp_path / "a.json", [[0.9, 0.0, 0.5, 0.0], [0.0, 0.7, 0.0, 0.2]])
    b = _scores(tmp_path / "b.json", [[0.8, 0.6, 0.0, 0.0], [0.0, 0.9, 0.0, 0.0]])
    out = tmp_path / "patch"
    args = ["patch", "--source", str(source), "--target", str(target), "--source-scores", str(a)]
    args += ["--target-scores", str(b), "--top-k", "3", "--n-random", "2", "--no-chat", "--needle", "symbolic"]
    args += ["--haystack", "symbolic", "--lengths", "80", "--depths", "50", "--n-samples", "1", "--out", str(out)]
    assert main(args) == 0
    # top-3 of a: L0H0, L1H1, L0H2; top-3 of b: L1H1, L0H0, L0H1 -> shared {L0H0, L1H1}
    assert "2 shared heads among the top 3 of each model" in capsys.readouterr().out
    frame = pd.read_csv(out / "patching.csv").set_index("set")
    assert list(frame.index) == ["target", "source", "shared", "complement", "random-0", "random-1"]
    assert frame.loc["shared", "n_heads"] == 2 and frame.loc["complement", "n_heads"] == 6
    assert frame.loc["source", "recovered"] == 1.0 and frame.loc["target", "recovered"] == 0.0
    assert (out / "patching.json").is_file() and (out / "report.html").is_file()


@pytest.mark.smollm2
def test_detect_with_its_defaults_counts_chat_needle_samples_on_smollm2(smollm2, tmp_path, capsys):
    """Teacher-forced detection on chat prompts: the samples' lead-ins make the gold answer the next token."""
    task = ["--lengths", "300", "--depths", "20", "80", "--n-samples", "1"]
    assert main(["detect", *task, "--out", str(tmp_path / "auto")]) == 0
    printed = capsys.readouterr().out
    scores = RetrievalScores.load(tmp_path / "auto" / "scores.json")
    assert scores.mode == "teacher_forced" and scores.n_counted > 0, printed
    assert scores.top(1)[0][1] > 0.1, printed
    assert main(["detect", *task, "--answer-prefix", "none", "--out", str(tmp_path / "none")]) == 1
    assert "samples counted (answered correctly): 0 of 2" in capsys.readouterr().out


def test_compare_sets_hold_only_positive_heads(tmp_path, capsys):
    """Issue 11's example: the maps share no positive head, so nothing is shared (was 2 of 3 zero-score heads)."""
    a = _scores(tmp_path / "a.json", [[0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.7]])
    b = _scores(tmp_path / "b.json", [[0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.6, 0.0]])
    with pytest.warns(UserWarning, match="the head set has 1 heads"):
        assert main(["compare", str(a), str(b), "--top-k", "3", "--out", str(tmp_path / "o")]) == 0
    summary = json.loads((tmp_path / "o" / "comparison.json").read_text())
    assert summary["shared_heads"] == [] and summary["top_k_overlap"] == 0.0 and summary["jaccard"] == 0.0
    assert summary["n_reference"] == 1 and summary["n_candidate"] == 1
    assert "shared heads: none" in capsys.readouterr().out


def test_knockout_options_default_to_answer_positions():
    args = build_parser().parse_args(["knockout", "--scores", "s.json"])
    assert args.positions == "answer" and args.span == "needle"
    args = build_parser().parse_args(["knockout", "--scores", "s.json", "--positions", "all", "--mode", "edge"])
    assert args.positions == "all" and args.mode == "edge"


def _tiny_scores(tmp_path):
    return _scores(tmp_path / "s.json", [[0.9, 0.0, 0.5, 0.0], [0.0, 0.7, 0.0, 0.2]])


TINY_TASK = ["--no-chat", "--needle", "symbolic", "--haystack", "symbolic", "--lengths", "80", "--depths", "50",
             "--n-samples", "1"]  # fmt: skip


def test_edge_knockout_runs_from_the_command_line(tmp_path, capsys):
    """`--mode edge` was an allowed choice with no --span: it died with a ValueError traceback."""
    from headscope.models import tiny_folder

    model = str(tiny_folder("llama"))
    out = tmp_path / "ko"
    args = ["knockout", "--model", model, *TINY_TASK, "--scores", str(_tiny_scores(tmp_path)), "--ks", "1", "6"]
    with pytest.warns(UserWarning, match="score is 0 on every sample"):  # a random model answers nothing
        assert main([*args, "--seeds", "0", "--mode", "edge", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "only 4 heads have a positive score; skipping k = 6" in captured.err
    frame = pd.read_csv(out / "knockout.csv")
    assert set(frame["k"]) == {0, 1}
    assert json.loads((out / "knockout.json").read_text())["positions"] == "answer"
    assert main([*args, "--mode", "edge", "--span", "nowhere", "--out", str(out)]) == 2
    last = capsys.readouterr().err.split("\n")[-2]  # after the progress bars: the error, on one line
    assert last == (
        "headscope: error: --span 'nowhere': the needle task's samples have no 'nowhere' span; "
        "they have ['answer', 'needle']"
    )


def test_every_error_is_one_line_with_exit_code_2(monkeypatch, capsys):
    import headscope.cli as cli

    def fail(args):
        raise ValueError("first line\n  second line")

    monkeypatch.setattr(cli, "_compare", fail)
    assert main(["compare", "a.json", "b.json"]) == 2
    assert capsys.readouterr().err == "headscope: error: first line second line\n"


@pytest.mark.smollm2
def test_main_on_a_small_grid_copies_needle_sentences_on_the_fused_route(smollm2, tmp_path, capsys):
    """The main job's code path (its defaults, a smaller grid): sentence answers, ROUGE-counted, graded scores."""
    out = tmp_path / "main"
    assert main(["main", "--lengths", "600", "--depths", "0", "50", "100", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "3 needle samples, generation detection (fused)" in printed and "heads above 0.1" in printed
    scores = RetrievalScores.load(out / "scores.json")
    assert scores.mode == "generation" and scores.settings["success"] == str(DEFAULT_SUCCESS)
    assert scores.n_counted >= 2, printed
    outcomes = pd.read_csv(out / "outcomes.csv")
    assert all(len(answer.split()) >= 5 for answer in outcomes["answer"])  # whole sentences, not values
    assert outcomes["success"].sum() == scores.n_counted
    # graded: a head that copies part of a sentence scores between 0 and 1
    per_sample = scores.per_sample.flatten()
    assert ((per_sample > 0) & (per_sample < 1)).any() and scores.top(1)[0][1] > 0.3, printed
    html = (out / "report.html").read_text()
    assert "Retrieval heads of smollm2-135m-instruct" in html and (out / "attention.json").is_file()
    # the bootstrap over the answered samples: printed, saved and plotted
    boot = Stability.load(out / "stability.json")
    assert boot.n_samples == scores.n_counted and boot.n_boot == 1000 and boot.top_k == 10
    assert f"heads in the top 10 in at least 90% of 1000 bootstrap resamples of the {scores.n_counted}" in printed
    assert all(f"  {head}  P=" in printed for head in boot.stable(0.9)) and 'id="figure-stability"' in html


def _walk_cases(tmp_path):
    """One bad option value per subcommand that argparse accepts but headscope must refuse."""
    from headscope.models import tiny_folder

    model = str(tiny_folder("llama"))
    scores = str(_tiny_scores(tmp_path))
    missing = str(tmp_path / "missing.json")
    tiny = ["--model", model, *TINY_TASK]
    pair = ["--source", model, "--target", model, "--source-scores", scores, "--target-scores", scores]
    return {
        "main": (["main", *tiny, "--lengths", "0"], "length must be a positive number of tokens; got 0"),
        "detect": (["detect", *tiny, "--span", "nowhere"], "'nowhere'"),
        "knockout": (["knockout", *tiny, "--scores", missing], "missing.json"),
        "patch": (["patch", *pair, "--top-k", "0", *TINY_TASK], "top_k must be at least 1; got 0"),
        "compare": (["compare", scores, missing], "missing.json"),
    }


@pytest.mark.parametrize("command", ["main", "detect", "knockout", "patch", "compare"])
def test_each_subcommand_rejects_a_bad_value_in_one_line_with_exit_code_2(command, tmp_path, capsys):
    argv, words = _walk_cases(tmp_path)[command]
    assert main([*argv, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("headscope: error: ")]
    assert len(lines) == 1 and lines[0] == err.splitlines()[-1] and words in lines[0], err
    assert "Traceback" not in err


_REQUIRED = {
    "knockout": ["--scores", "s.json"],
    "patch": ["--source", "a", "--target", "b", "--source-scores", "a.json", "--target-scores", "b.json"],
    "compare": ["a.json", "b.json"],
}


@pytest.mark.parametrize("command", ["main", "detect", "knockout", "patch", "compare"])
@pytest.mark.parametrize(
    "bad", [["--no-such-option"], ["--out"], ["--top-k", "many"]], ids=["unknown", "no-value", "type"]
)
def test_each_subcommand_rejects_a_bad_option_in_one_line_with_exit_code_2(command, bad, capsys):
    """argparse's own errors (unknown option, missing value, wrong type) are one line too, not usage + error."""
    if bad[0] == "--top-k" and command not in ("patch", "compare"):
        bad = ["--max-new-tokens", "many"] if command in ("main", "detect") else ["--ks", "many"]
    with pytest.raises(SystemExit) as exit_info:
        main([command, *_REQUIRED.get(command, []), *bad])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("headscope") and ": error: " in err, err
    assert err.rstrip().endswith("--help") and "usage:" not in err
