"""Hugging Face hub ids, resolved to a local folder through ``huggingface_hub``'s cache.

A model downloaded once (``hf download ORG/NAME``, or any earlier ``from_pretrained``) sits in the
hub cache as ``models--ORG--NAME/snapshots/<commit>/``; :func:`hub_folder` returns that folder
without asking the hub when ``HF_HUB_OFFLINE=1``, and otherwise asks the hub for the newest commit
and downloads what is missing (only the config, tokenizer and ``*.safetensors`` files). The cache
is found from the environment at call time, as the hub's own tools find it: ``HF_HUB_CACHE``, else
``HF_HOME/hub``, else ``~/.cache/huggingface/hub``.
"""

from __future__ import annotations

import os
from pathlib import Path

from headscope.errors import ModelError

__all__ = ["hub_cache_dir", "hub_folder", "is_hub_id"]

#: What a model needs from its repository; other files (GGUF, ONNX, ``.bin`` copies of the
#: safetensors weights) are never downloaded, nor are the checkpoints some repositories keep in their
#: authors' own format beside the Hugging Face one (Llama's ``original/``, Mistral's ``consolidated``).
_NEEDED = ["*.json", "*.safetensors", "*.model", "*.tiktoken", "*.txt", "*.jinja"]
_SKIPPED = ["original/*", "consolidated*"]
_TRUE = {"1", "on", "yes", "true"}


def hub_cache_dir() -> Path:
    """The hub cache folder the environment names now: ``HF_HUB_CACHE``, else ``HF_HOME/hub``, else the default.

    Read at each call, so a notebook that sets ``os.environ["HF_HUB_CACHE"]`` after importing
    ``huggingface_hub`` is obeyed (the library itself reads these variables once, at import).
    """
    explicit = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if explicit:
        return Path(os.path.expandvars(explicit)).expanduser()
    home = os.environ.get("HF_HOME") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "huggingface"
    return Path(os.path.expandvars(str(home))).expanduser() / "hub"


def hub_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) forbids asking the hub, read now."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.strip().lower() in _TRUE


def is_hub_id(name: str) -> bool:
    """Whether ``name`` is spelled like a hub repository id (``ORG/NAME`` or a bare ``NAME``).

    >>> is_hub_id("Qwen/Qwen2.5-7B-Instruct"), is_hub_id("/data/models/qwen"), is_hub_id("a/b/c")
    (True, False, False)
    """
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def hub_folder(
    repo_id: str,
    *,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    offline: bool | None = None,
) -> Path:
    """The local snapshot folder of hub model ``repo_id`` (a branch, tag or commit ``revision``; default main).

    From the cache alone when ``offline`` (default: ``HF_HUB_OFFLINE=1`` in the environment); else
    the hub is asked for the revision's commit, and the cache answers when the hub cannot be reached.
    ``cache_dir`` defaults to :func:`hub_cache_dir`. Anything that leaves no folder is a
    :class:`~headscope.ModelError` naming the id, the cache folder searched, ``HF_HUB_OFFLINE`` and
    what to try.

    >>> import tempfile
    >>> hub_folder("someone/not-cached", cache_dir=tempfile.mkdtemp(), offline=True)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    headscope.ModelError: hub model 'someone/not-cached' (revision main) is not in the Hugging Face cache at ...
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    cache = Path(cache_dir).expanduser() if cache_dir is not None else hub_cache_dir()
    from_env = offline is None
    offline = hub_offline() if offline is None else offline
    quiet = "HF_HUB_OFFLINE=1" if from_env else "offline=True"
    where = f"hub model {repo_id!r} (revision {revision or 'main'})"
    get = f"hf download {repo_id}" + (f" --revision {revision}" if revision else "")
    try:
        folder = snapshot_download(
            repo_id,
            revision=revision,
            cache_dir=cache,
            local_files_only=offline,
            allow_patterns=_NEEDED,
            ignore_patterns=_SKIPPED,
        )
    except HFValidationError as error:
        raise ModelError(f"{repo_id!r} is not a hub id (ORG/NAME): {error}") from None
    except LocalEntryNotFoundError as error:
        snapshot = getattr(error, "snapshot_path", None)  # IncompleteSnapshotError (huggingface_hub 2.x)
        if snapshot is None:
            raise ModelError(_not_cached(repo_id, where, get, cache, quiet if offline else None, error)) from None
        raise ModelError(
            f"the cached snapshot of {where} at {snapshot} is missing files and the hub cannot complete "
            f"it now ({quiet if offline else 'the hub is not reachable'}); download it again with network "
            f"access: `{get}`"
        ) from None
    except GatedRepoError:
        raise ModelError(
            f"{where} is gated: accept its terms at https://huggingface.co/{repo_id}, log in with `hf auth login`, "
            "then load it again (or pass the folder of a saved copy)"
        ) from None
    except RevisionNotFoundError:
        raise ModelError(f"{where}: the hub has no such revision; pass a branch, tag or commit that exists") from None
    except RepositoryNotFoundError:
        raise ModelError(
            f"{where} is not on the Hugging Face hub, or is private (log in with `hf auth login`); "
            "check the spelling, or pass the folder of a saved model"
        ) from None
    folder = Path(folder)
    if not any(folder.glob("*.safetensors")) and not any(folder.glob("*.bin")):
        raise ModelError(
            f"the snapshot of {where} at {folder} holds no *.safetensors weights (headscope downloads only those); "
            f"download the whole repository once with `{get}`, then load it again"
        )
    return folder


def _not_cached(repo_id: str, where: str, get: str, cache: Path, quiet: str | None, error: Exception) -> str:
    seen = cache / f"models--{repo_id.replace('/', '--')}"
    found = "that folder does not exist" if not seen.is_dir() else "it holds no snapshot for that revision"
    if quiet:
        why = f"and the hub was not asked ({quiet})"
    else:
        cause = error.__cause__ or error.__context__
        reason = f"{type(cause).__name__}: {cause}" if cause is not None else "no answer"
        why = f"and the hub could not be reached ({' '.join(reason.split())[:200]}); HF_HUB_OFFLINE is not set"
    older = get.replace("hf ", "huggingface-cli ", 1)
    return (
        f"{where} is not in the Hugging Face cache at {cache} (looked for {seen.name}: {found}) {why}. "
        f"Download it once with network access: `{get}` (older huggingface_hub: `{older}`), "
        "or point HF_HUB_CACHE / HF_HOME at the cache that holds it, or pass the folder of a saved Hugging Face model"
    )
