"""load_model by name, folder or Hugging Face hub id (offline, from a cache in the hub's own layout), device and dtype.

No test asks the hub: each sets ``HF_HUB_OFFLINE=1``, or points ``huggingface_hub`` at a closed local port.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

import headscope as hs
from headscope.cli import main
from headscope.models import available_kinds, hub_cache_dir, load_folder, tiny_folder
from headscope.retrieval import RetrievalScores

REPO = "tiny-org/tiny-llama-hub"
TOKENS = torch.randint(0, 1024, (2, 24), generator=torch.Generator().manual_seed(0))
#: rtol and atol (scaled by the largest |logit|) of two runs of the same weights in one dtype
CLOSE = {torch.float32: (1e-5, 1e-5), torch.bfloat16: (2e-2, 2e-2)}


def _cache_model(cache: Path, repo: str, folder: Path, ref: str = "main", commit: str | None = None) -> str:
    """Write ``folder`` into ``cache`` as ``huggingface_hub`` does: blobs named by hash, snapshot symlinks, a ref."""
    files = sorted(p for p in folder.iterdir() if p.is_file())
    commit = commit or hashlib.sha1(b"".join(p.read_bytes() for p in files)).hexdigest()
    root = cache / f"models--{repo.replace('/', '--')}"
    snapshot = root / "snapshots" / commit
    for directory in (root / "blobs", root / "refs", snapshot):
        directory.mkdir(parents=True, exist_ok=True)
    for path in files:
        data = path.read_bytes()
        blob = root / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / path.name).symlink_to(Path("..", "..", "blobs", blob.name))
    (root / "refs" / ref).write_text(commit)
    return commit


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """A hub cache holding the tiny Llama as REPO (main) and a differently seeded copy on branch ``dev``."""
    cache = tmp_path / "hub"
    main_commit = _cache_model(cache, REPO, tiny_folder("llama"))
    dev_commit = _cache_model(cache, REPO, tiny_folder("llama", seed=1), ref="dev")
    assert main_commit != dev_commit and len(main_commit) == 40
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    return cache


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(TOKENS).float()


def _assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype) -> None:
    rtol, atol = CLOSE[dtype]
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol * expected.abs().max().item())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_a_hub_id_loads_offline_from_the_cache_with_the_logits_of_its_folder(hub_cache, dtype):
    by_id = hs.load_model(REPO, dtype=dtype)
    by_path = load_folder(tiny_folder("llama"), dtype=dtype)
    assert hs.model_info(by_id).name == REPO
    assert Path(by_id.cfg.model_name).parent == (hub_cache / "models--tiny-org--tiny-llama-hub" / "snapshots")
    assert {p.dtype for p in by_id.parameters()} == {dtype}
    _assert_close(_logits(by_id), _logits(by_path), dtype)


def test_hf_home_locates_the_cache_when_hf_hub_cache_is_unset(hub_cache, monkeypatch):
    home = hub_cache.parent / "home"
    home.mkdir()
    hub_cache.rename(home / "hub")
    monkeypatch.delenv("HF_HUB_CACHE")
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(home))
    assert hub_cache_dir() == home / "hub"
    _assert_close(_logits(hs.load_model(REPO)), _logits(load_folder(tiny_folder("llama"))), torch.float32)


def test_revision_picks_a_branch_or_a_commit(hub_cache):
    dev = _logits(load_folder(tiny_folder("llama", seed=1)))
    main_logits = _logits(load_folder(tiny_folder("llama")))
    assert not torch.allclose(dev, main_logits, rtol=1e-2, atol=1e-2)  # the two snapshots differ
    _assert_close(_logits(hs.load_model(REPO, revision="dev")), dev, torch.float32)
    commit = (hub_cache / "models--tiny-org--tiny-llama-hub" / "refs" / "main").read_text()
    model = hs.load_model(REPO, revision=commit)
    assert hs.model_info(model).name == f"{REPO}@{commit}"
    _assert_close(_logits(model), main_logits, torch.float32)


def test_an_uncached_id_names_the_id_the_cache_and_hf_hub_offline(hub_cache):
    with pytest.raises(hs.ModelError) as error:
        hs.load_model("Qwen/Qwen2.5-7B-Instruct")
    message = str(error.value)
    assert "'Qwen/Qwen2.5-7B-Instruct'" in message and str(hub_cache) in message
    assert "models--Qwen--Qwen2.5-7B-Instruct: that folder does not exist" in message
    assert "HF_HUB_OFFLINE=1" in message and "`hf download Qwen/Qwen2.5-7B-Instruct`" in message
    assert "pass the folder" in message and "tiny-llama" in message
    with pytest.raises(
        hs.ModelError, match=r"revision nope.*holds no snapshot.*hf download tiny-org/tiny-llama-hub --revision nope"
    ):
        hs.load_model(REPO, revision="nope")


def test_an_unreachable_hub_falls_back_to_the_cache_or_says_it_could_not_be_reached(hub_cache, monkeypatch):
    import huggingface_hub.constants as constants

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # the discard port: connection refused
    model = hs.load_model(REPO)  # cached: the failed look-up falls back to the cache
    _assert_close(_logits(model), _logits(load_folder(tiny_folder("llama"))), torch.float32)
    with pytest.raises(hs.ModelError) as error:
        hs.load_model("someone/elsewhere")
    message = str(error.value)
    assert "'someone/elsewhere'" in message and str(hub_cache) in message
    assert "could not be reached (ConnectError" in message and "HF_HUB_OFFLINE is not set" in message


def test_names_and_folders_come_before_hub_ids_and_other_strings_are_refused(hub_cache, tmp_path):
    assert hs.model_info(hs.load_model("Tiny-Llama")).name == "tiny-llama"
    folder = tiny_folder("gpt2")
    assert hs.model_info(hs.load_model(folder)).n_kv_heads == hs.model_info(load_folder(folder)).n_kv_heads
    with pytest.raises(
        hs.ModelError, match=r"neither one of headscope's models .*tiny-llama.*nor a folder, nor a Hugging"
    ):
        hs.load_model(str(tmp_path / "no" / "such" / "folder"))
    with pytest.raises(hs.ConfigError, match=r"revision='dev' applies to hub ids; 'tiny-llama'"):
        hs.load_model("tiny-llama", revision="dev")


def test_a_snapshot_without_weights_says_how_to_download_them(hub_cache, tmp_path):
    folder = tmp_path / "no-weights"
    folder.mkdir()
    for path in tiny_folder("llama").iterdir():
        if path.suffix != ".safetensors":
            (folder / path.name).write_bytes(path.read_bytes())
    _cache_model(hub_cache, "tiny-org/bin-only", folder)
    with pytest.raises(hs.ModelError, match=r"holds no \*\.safetensors weights.*`hf download tiny-org/bin-only`"):
        hs.load_model("tiny-org/bin-only")


def test_a_snapshot_the_hub_lists_more_files_for_is_an_incomplete_download(hub_cache):
    """huggingface_hub 2.x keeps each commit's file listing beside the snapshot and refuses a partial one."""
    tree_cache = pytest.importorskip("huggingface_hub._tree_cache")
    root = hub_cache / "models--tiny-org--tiny-llama-hub"
    commit = (root / "refs" / "main").read_text()
    files = {
        p.name: tree_cache.TreeCacheEntry(size=p.stat().st_size, blob_id="0" * 40)
        for p in tiny_folder("llama").iterdir()
    }
    files["model-00002-of-00002.safetensors"] = tree_cache.TreeCacheEntry(size=1, blob_id="1" * 40)  # never downloaded
    tree_cache.write_tree_cache(str(root), commit, files)
    with pytest.raises(hs.ModelError, match=r"snapshot of hub model 'tiny-org/tiny-llama-hub' \(revision main\) at .*"
                       r"is missing files .*HF_HUB_OFFLINE=1.*`hf download tiny-org/tiny-llama-hub`"):  # fmt: skip
        hs.load_model(REPO)


def test_a_download_takes_the_hf_weights_config_and_tokenizer_and_nothing_else():
    """The files snapshot_download keeps under headscope's patterns, on the listings of two real repositories."""
    from huggingface_hub.utils import filter_repo_objects

    from headscope.models import _hub

    shards = [f"model-0000{i}-of-00004.safetensors" for i in range(1, 5)]
    hf_format = ["config.json", "generation_config.json", "model.safetensors.index.json", "special_tokens_map.json",
                 "tokenizer.json", "tokenizer_config.json", *shards]  # fmt: skip
    llama3 = [".gitattributes", "LICENSE", "README.md", "USE_POLICY.md", "original/consolidated.00.pth",
              "original/params.json", "original/tokenizer.model", *hf_format]  # fmt: skip
    mistral = ["consolidated.safetensors", "tokenizer.model", "pytorch_model.bin", "model.gguf", "onnx/model.onnx",
               *hf_format]  # fmt: skip
    for listing, extra in ((llama3, []), (mistral, ["tokenizer.model"])):
        kept = filter_repo_objects(listing, allow_patterns=_hub._NEEDED, ignore_patterns=_hub._SKIPPED)
        assert sorted(kept) == sorted(hf_format + extra)


@pytest.mark.parametrize("kind", available_kinds())
def test_bf16_weights_are_read_from_disk_in_bf16_and_the_model_runs_in_bf16(kind, monkeypatch):
    """No float32 copy on the way: the HF model comes out of from_pretrained already in bf16."""
    from transformers import PreTrainedModel

    loaded = []
    real = PreTrainedModel.from_pretrained.__func__

    def spy(cls, *args, **kwargs):
        model = real(cls, *args, **kwargs)
        loaded.append({p.dtype for p in model.parameters()})
        return model

    monkeypatch.setattr(PreTrainedModel, "from_pretrained", classmethod(spy))
    model = hs.load_model("tiny-llama", kind=kind, dtype="bfloat16")
    assert loaded == [{torch.bfloat16}]
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    with torch.no_grad():
        logits = model(TOKENS)
    assert logits.dtype == torch.bfloat16
    reference = _logits(hs.load_model("tiny-llama", kind=kind))
    # bf16 keeps 8 bits of mantissa: rounding the weights and every activation moves logits by about 1% of their scale
    torch.testing.assert_close(logits.float(), reference, rtol=3e-2, atol=3e-2 * reference.abs().max().item())


@pytest.mark.parametrize(
    ("given", "expected"),
    [("float32", torch.float32), ("FP32", torch.float32), ("bf16", torch.bfloat16), ("bfloat16", torch.bfloat16),
     ("fp16", torch.float16), ("float16", torch.float16), (torch.float64, torch.float64)],
)  # fmt: skip
def test_dtype_names_and_torch_dtypes_are_accepted(given, expected):
    from headscope.models._placement import resolve_dtype

    assert resolve_dtype(given) is expected


@pytest.mark.parametrize("bad", ["int8", "fp8", torch.int64, "auto"])
def test_a_bad_dtype_lists_what_is_accepted(bad):
    with pytest.raises(
        hs.ConfigError, match=r"floating torch.dtype or one of float32, fp32, bfloat16, bf16, float16, fp16; got"
    ):
        hs.load_model("tiny-llama", dtype=bad)


def test_devices_resolve_and_a_missing_one_is_a_clear_error():
    from headscope.models._placement import resolve_device

    assert resolve_device("CPU") == torch.device("cpu") and resolve_device(torch.device("cpu")) == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(hs.ConfigError, match=r"device must be 'cpu', 'cuda', 'cuda:N', 'mps' or 'auto' .*got 'tpu'"):
        hs.load_model("tiny-llama", device="tpu")
    with pytest.raises(hs.ConfigError, match=r"got 'meta'"):
        resolve_device("meta")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    with pytest.raises(hs.ConfigError, match=f"'cuda:{count}'"):
        resolve_device(f"cuda:{count}")
    if count == 0:
        with pytest.raises(hs.ConfigError, match=r"'cuda' needs CUDA, and torch.cuda.is_available\(\) is False"):
            hs.load_model("tiny-llama", device="cuda")


# --- the command line ---------------------------------------------------------------------------------------------

TINY_TASK = ["--no-chat", "--needle", "symbolic", "--haystack", "symbolic", "--lengths", "80", "--depths", "50",
             "--n-samples", "1"]  # fmt: skip


def test_detect_loads_a_hub_id_from_the_cache_in_the_dtype_asked(hub_cache, tmp_path, monkeypatch, capsys):
    import headscope.models

    loaded = []
    real = headscope.models.load_model
    monkeypatch.setattr(headscope.models, "load_model", lambda *a, **k: loaded.append(real(*a, **k)) or loaded[-1])
    out = tmp_path / "out"
    argv = ["detect", "--model", REPO, "--device", "auto", "--dtype", "BF16", *TINY_TASK, "--out", str(out)]
    assert main(argv) in (0, 1)  # 1: the random model answered nothing, so no head has a score
    (model,) = loaded
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert RetrievalScores.load(out / "scores.json").model == REPO
    assert f"{REPO}: 1 needle samples" in capsys.readouterr().out


def test_an_uncached_hub_id_on_the_command_line_is_one_line_with_exit_code_2(hub_cache, tmp_path, capsys):
    assert main(["detect", "--model", "Qwen/Qwen2.5-7B-Instruct", *TINY_TASK, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("headscope: error: hub model 'Qwen/Qwen2.5-7B-Instruct'")
    assert str(hub_cache) in err and "HF_HUB_OFFLINE=1" in err and not (tmp_path / "o").exists()


_LOADING = {
    "main": [],
    "detect": [],
    "knockout": ["--scores", "s.json"],
    "patch": ["--source", "a", "--target", "b", "--source-scores", "a.json", "--target-scores", "b.json"],
}


@pytest.mark.parametrize("command", list(_LOADING))
@pytest.mark.parametrize(
    ("bad", "words"),
    [(["--dtype", "int8"], "argument --dtype: invalid choice: 'int8'"),
     (["--device", "tpu"], "argument --device: device must be 'cpu', 'cuda', 'cuda:N', 'mps' or 'auto'")],
    ids=["dtype", "device"],
)  # fmt: skip
def test_every_subcommand_that_loads_a_model_refuses_a_bad_device_or_dtype_in_one_line(command, bad, words, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, *_LOADING[command], *bad])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"headscope {command}: error: ") and words in err, err


def test_a_missing_gpu_on_the_command_line_is_one_line_with_exit_code_2(capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(SystemExit) as exit_info:
        main(["detect", "--device", "cuda:0"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'cuda:0' needs CUDA, and torch.cuda.is_available() is False" in err
