"""Hub downloads through `huggingface_hub` (the `hub` extra), honouring its cache and HF_HUB_OFFLINE."""

from __future__ import annotations

import os
from pathlib import Path

_WEIGHT_PATTERNS = (
    ["model.safetensors", "model.safetensors.index.json", "model-*.safetensors"],
    ["pytorch_model.bin", "pytorch_model.bin.index.json", "pytorch_model-*.bin"],
)
_SIDE_FILES = ["config.json", "preprocessor_config.json"]


def download_checkpoint(repo_id: str, revision: str | None = None, cache_dir: str | os.PathLike | None = None) -> Path:
    """Local snapshot of a hub repo with its config and weights (safetensors when the repo has them)."""
    try:
        import huggingface_hub
        from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError
    except ImportError:
        raise ImportError(
            f"loading {repo_id} from the hub needs huggingface_hub: pip install 'focalnet[hub]'"
        ) from None
    for patterns in _WEIGHT_PATTERNS:
        try:
            snapshot = Path(
                huggingface_hub.snapshot_download(
                    repo_id, revision=revision, cache_dir=cache_dir, allow_patterns=patterns + _SIDE_FILES
                )
            )
        except LocalEntryNotFoundError:
            offline = huggingface_hub.constants.HF_HUB_OFFLINE
            why = "HF_HUB_OFFLINE is set" if offline else "the hub cannot be reached"
            raise FileNotFoundError(
                f"{repo_id} is not in the local Hugging Face cache and {why}. Fetch it once on a connected "
                f"machine (`hf download {repo_id}`, or `huggingface-cli download {repo_id}`), then copy the cache "
                "(HF_HOME) here, or pass a local directory or weights file instead"
            ) from None
        except RepositoryNotFoundError:
            raise FileNotFoundError(f"no hub repository {repo_id} (or it is private)") from None
        if any(snapshot.glob("*.safetensors")) or any(snapshot.glob("*.bin")):
            return snapshot
    raise FileNotFoundError(f"the hub repository {repo_id} holds no model.safetensors or pytorch_model.bin")
