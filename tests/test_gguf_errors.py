"""Malformed GGUF files raise GGUFError from Python, never crash the interpreter.

Each file is loaded in a subprocess, so an abort or segfault fails the test instead of pytest."""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path

import pytest
import tallow


def _str(s: bytes) -> bytes:
    return struct.pack("<Q", len(s)) + s


def header(n_tensors: int, n_kv: int, version: int = 3) -> bytes:
    return b"GGUF" + struct.pack("<IQQ", version, n_tensors, n_kv)


CASES: dict[str, bytes] = {
    "empty": b"",
    "bad_magic": b"GGML" + b"\0" * 20,
    "big_endian": b"FUGG" + b"\0" * 20,
    "version_0": header(0, 0, version=0),
    "version_future": header(0, 0, version=4),
    "truncated_header": b"GGUF\x03\x00",
    "n_kv_huge": header(0, 2**63),
    "n_tensors_huge": header(2**62, 0),
    "string_len_huge": header(0, 1) + struct.pack("<Q", 2**64 - 1),
    "bad_value_type": header(0, 1) + _str(b"a.key") + struct.pack("<I", 99),
    "bool_2": header(0, 1) + _str(b"a.flag") + struct.pack("<I", 7) + b"\x02",
    "duplicate_key": header(0, 2) + (_str(b"k") + struct.pack("<II", 4, 1)) * 2,
    "alignment_zero": header(0, 1) + _str(b"general.alignment") + struct.pack("<II", 4, 0),
    "nested_array": header(0, 1) + _str(b"arr") + struct.pack("<II", 9, 9) + struct.pack("<Q", 1),
    "dims_overflow": header(1, 0)
    + _str(b"t")
    + struct.pack("<I", 2)
    + struct.pack("<QQ", 2**32, 2**32)
    + struct.pack("<IQ", 0, 0),
    "offset_past_eof": header(1, 0)
    + _str(b"t")
    + struct.pack("<I", 1)
    + struct.pack("<Q", 32)
    + struct.pack("<IQ", 0, 0),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_malformed_file_raises_gguf_error(name: str, tmp_path: Path) -> None:
    path = tmp_path / f"{name}.gguf"
    path.write_bytes(CASES[name])
    code = (
        "import sys, tallow\n"
        "try:\n"
        f"    tallow.Model({str(path)!r})\n"
        "except tallow.GGUFError as e:\n"
        "    assert isinstance(e, ValueError) and 'offset' in str(e), e\n"
        "    print('GGUFError:', e)\n"
        "    sys.exit(0)\n"
        "sys.exit('loaded a malformed file')\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, f"exit {r.returncode}\nstdout: {r.stdout}\nstderr: {r.stderr}"
    assert "PanicException" not in r.stderr


def test_gguf_error_hierarchy() -> None:
    assert issubclass(tallow.GGUFError, tallow.TallowError)
    assert issubclass(tallow.GGUFError, ValueError)


def test_directory_is_not_a_model(tmp_path: Path) -> None:
    with pytest.raises(IsADirectoryError):
        tallow.Model(tmp_path)


def test_truncated_real_model(smollm2_path: Path, tmp_path: Path) -> None:
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(smollm2_path.read_bytes()[:5_000_000])
    with pytest.raises(tallow.GGUFError, match="tensor data"):
        tallow.Model(cut)


def test_inspect_escapes_control_characters(tmp_path: Path) -> None:
    evil = header(0, 1) + _str(b"general.name") + struct.pack("<I", 8) + _str(b"\x1b[31mred\x1b[0m\nline")
    path = tmp_path / "evil.gguf"
    path.write_bytes(evil)
    text = tallow._tallow.inspect(str(path))
    assert "\x1b" not in text
    assert "red" in text
