"""Save Hugging Face tokenizers without how they happened to be loaded.

transformers writes a tokenizer's init kwargs into ``tokenizer_config.json``, including the
ones that describe this machine's loading (``local_files_only`` follows ``HF_HUB_OFFLINE``): the
same tokenizer then hashes differently on two machines, and every output downstream with it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

# How a tokenizer was fetched, not what it is.
LOADING_KWARGS = ("local_files_only", "cache_dir", "force_download", "proxies", "token",
                  "use_auth_token", "revision", "subfolder", "_commit_hash")


def save_tokenizer(tok: Any, out: Path) -> None:
    for key in LOADING_KWARGS:
        tok.init_kwargs.pop(key, None)
    tok.save_pretrained(str(out))
