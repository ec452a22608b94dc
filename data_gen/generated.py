"""Reading the generated dataset: only the shards its manifest lists, each checked first.

``generate`` writes ``_manifest.json`` last, with every shard's file, row count and sha256.
Readers take their shard list from it and check each shard's sha256 before reading, so an
edited, truncated, missing or stray shard stops the stage with one line naming the file
instead of flowing, changed, into curated or SFT data.
"""

from __future__ import annotations

import json
from pathlib import Path

from dasi.integrity import IntegrityError
from dasi.provenance import sha256_file

MANIFEST_FILE = "_manifest.json"  # data_gen.generate writes it
FORMATS = {"generated-manifest/2"}
FIX = "Re-run generate (dasi generate --restart, or DVC: dvc checkout data/generated)"


def verified_shards(generated_dir: Path) -> list[Path]:
    """The manifest's shards, in its order, after checking the sha256 of every one and that
    no other shard file lies in the folder."""
    generated_dir = Path(generated_dir)
    manifest_file = generated_dir / MANIFEST_FILE
    if not manifest_file.is_file():
        raise IntegrityError(f"{manifest_file}: missing; generate writes it when every shard is "
                             f"done. {FIX}")
    manifest = json.loads(manifest_file.read_text())
    if manifest.get("format") not in FORMATS:
        raise IntegrityError(f"{manifest_file}: format {manifest.get('format')!r}, readable: "
                             f"{', '.join(sorted(FORMATS))}")
    listed = [(generated_dir / s["file"], s) for s in manifest["shards"]]
    stray = sorted(set(generated_dir.glob("*/shard-*.parquet")) - {p for p, _ in listed})
    if stray:
        raise IntegrityError(f"{stray[0]}: a shard not listed in {manifest_file}; nothing was "
                             f"changed. {FIX}")
    for path, shard in listed:
        if not path.is_file():
            raise IntegrityError(f"{path}: missing (listed in {manifest_file}); nothing was changed. {FIX}")
        if sha256_file(path) != shard["sha256"]:
            raise IntegrityError(f"{path}: sha256 differs from the one recorded in {manifest_file}; "
                                 f"nothing was changed. {FIX}")
    return [p for p, _ in listed]
