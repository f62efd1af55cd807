"""Checksum of llama.cpp's GELU lookup table (ggml_table_gelu_f16), for model/layers.rs's test.

llama.cpp's CPU backend computes GELU through a table of all 65536 f16 inputs, filled at start-up
by ggml_gelu_f32 as GCC compiles it (with -ffp-contract=fast the inner 1 + a*x*x becomes one fma).
tallow rebuilds that table; this prints the checksum its test compares against:
Σ (i + 1) · table[i] over the finite f16 inputs i, modulo 2^64.

    pip install llama-cpp-python==0.3.36 numpy
    python rust/tallow-core/tests/data/gelu_table_ref.py
"""

import ctypes
import pathlib

import llama_cpp
import numpy as np

lib = ctypes.CDLL(str(pathlib.Path(llama_cpp.__file__).parent / "lib" / "libggml-cpu.so"))
lib.ggml_cpu_init()
table = np.frombuffer((ctypes.c_uint16 * 65536).in_dll(lib, "ggml_table_gelu_f16"), dtype=np.uint16)
finite = np.isfinite(np.arange(65536, dtype=np.uint16).view(np.float16))
checksum = 0
for i in np.nonzero(finite)[0].tolist():
    checksum = (checksum + (i + 1) * int(table[i])) % (1 << 64)
print(f"llama-cpp-python {llama_cpp.__version__}: checksum {checksum}")
