"""Models shared on the Hugging Face Hub: ``hf:ORG/NAME[@REVISION]`` resolved to a local rome-bench model folder.

A folder written by ``rome-bench export-model`` is a run directory (``config.json``, ``model.json``,
``model.safetensors``) plus a model card (``README.md``). :func:`resolve_hub_source` turns ``hf:ORG/NAME`` into such a
folder (downloaded through ``huggingface_hub``, or taken from its cache when ``HF_HUB_OFFLINE=1``), or ``hf:PATH``
into an existing local folder; the caller then loads it as any run directory, so every loader shares one resolution.
"""

from __future__ import annotations

import re
from pathlib import Path

from rome_bench.errors import CheckpointError, ConfigError

PREFIX = "hf:"
MODEL_FILES = ("config.json", "model.json", "model.safetensors")  # what loading needs; the card is README.md
CARD_FILE = "README.md"
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def is_hub_source(source: object) -> bool:
    """Whether a model source names a Hugging Face model (``hf:…``)."""
    return isinstance(source, str) and source.startswith(PREFIX)


def parse_hub_source(source: str) -> tuple[str, str | None]:
    """``hf:ORG/NAME[@REVISION]`` split into (repository id, revision or None)."""
    text = source.removeprefix(PREFIX).strip()
    repo_id, _, revision = text.partition("@")
    if not _REPO_ID.match(repo_id) or (revision == "" and "@" in text):
        raise ConfigError(f"model source '{source}' is not of the form hf:ORG/NAME or hf:ORG/NAME@REVISION "
                          f"(or hf:PATH to a local folder written by rome-bench export-model)")
    return repo_id, revision or None


def resolve_hub_source(source: str) -> Path:
    """The local folder of a shared model: ``hf:PATH`` when PATH is a folder here, else the Hub repository
    ``ORG/NAME`` (at ``@REVISION``) from the Hugging Face cache, downloaded first unless ``HF_HUB_OFFLINE=1``.

    The folder must hold a rome-bench model (``config.json``, ``model.json``, ``model.safetensors``)."""
    local = Path(source.removeprefix(PREFIX)).expanduser()
    if local.is_dir():
        return checked_model_folder(local, source)
    repo_id, revision = parse_hub_source(source)
    return checked_model_folder(_snapshot(repo_id, revision, source), source)


def checked_model_folder(folder: Path, source: str) -> Path:
    """``folder`` if it holds every file a rome-bench model needs, else one line naming the first one missing."""
    missing = [name for name in MODEL_FILES if not (folder / name).is_file()]
    if missing:
        raise CheckpointError(f"'{source}' is not a rome-bench model folder: {folder} lacks {missing[0]} (share "
                              f"models with rome-bench export-model RUN --out DIR, then upload DIR)")
    return folder


def _snapshot(repo_id: str, revision: str | None, source: str) -> Path:
    """The repository's files through huggingface_hub (its cache, its offline mode), or one line saying why not."""
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import (
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )
    except ImportError as error:
        raise ConfigError(f"'{source}' needs huggingface_hub: pip install huggingface_hub") from error
    try:
        folder = snapshot_download(repo_id, revision=revision, allow_patterns=[*MODEL_FILES, CARD_FILE])
    except LocalEntryNotFoundError as error:  # offline (or unreachable) and not in the cache
        raise CheckpointError(f"'{source}' is not in the Hugging Face cache and the Hub cannot be reached "
                              f"(HF_HUB_OFFLINE=1, or no network); download it once online, or give hf:PATH to a "
                              f"local folder") from error
    except RepositoryNotFoundError as error:
        raise CheckpointError(f"'{source}': no model repository {repo_id} on the Hugging Face Hub (or it is "
                              f"private: log in with hf auth login)") from error
    except RevisionNotFoundError as error:
        raise CheckpointError(f"'{source}': the repository {repo_id} has no revision {revision}") from error
    except Exception as error:  # an HTTP error, a full disk, a proxy: its first line
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(f"'{source}' could not be fetched from the Hugging Face Hub: {first}") from error
    return Path(folder)
