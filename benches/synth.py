"""Write synthetic GGUF models: real tensor layouts, random weights, any quant type or mix.

For unit tests, architectures with no small real model, and large-model benchmarks.

    python benches/synth.py --arch llama --dim 256 --layers 2 --heads 4 --kv-heads 2 \\
        --ffn 512 --qtype Q8_0 --out x.gguf

The tokenizer (every ``tokenizer.*`` key) is copied from an existing GGUF
(``--vocab-from``, default SmolLM2's BPE vocab), truncated to ``--vocab-size`` tokens so
the embedding stays small: the first N tokens are kept, with only the merges whose
parts and result survive. The 256 byte tokens of a byte-level BPE vocab and the special
token ids must all lie below N.

Quantization: F32/F16/BF16 and the legacy block types (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0)
quantize Gaussian weights with ``gguf.quants``. The package cannot quantize k-quants, so
Q2_K..Q6_K blocks are filled with random bits and their f16 super-block scales set so
the dequantized weights have a small spread (``WEIGHT_STD``) around zero.
Norm weights are always F32, near 1 (llama.cpp's Gemma convention stores 1 + w).

``--qtype Q4_K_M`` writes llama.cpp's mixture of that name, per tensor as
``llama_tensor_get_type`` (src/llama-quant.cpp) picks for a dense model: Q4_K, but Q6_K
for ``attn_v`` and ``ffn_down`` on the layers ``use_more_bits`` marks (the first and last
eighth, and every third between), Q6_K for the LM head (``output.weight``, or the tied
embedding; Q8_0 if the row length is not a multiple of 256), Q5_K for the other
``attn_v`` of an 80-layer GQA llama (its "70B" rule). A row length the chosen type's
block does not divide falls back as there: Q4_K -> Q5_0, Q6_K -> Q8_0, then F16.
``general.file_type`` is the llama_ftype llama.cpp would write: the mix's (15), or for a
single type its ``MOSTLY_*`` (the ``_S`` variant for a k-quant).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from gguf import GGUFReader, GGUFValueType, GGUFWriter, quants
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType, LlamaFileType

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_VOCAB = ROOT / "tests" / ".models" / "smollm2-135m-q4_1.gguf"
WEIGHT_STD = 0.02

QT = GGMLQuantizationType
FLOAT_TYPES = {QT.F32, QT.F16, QT.BF16}
LEGACY_TYPES = {QT.Q4_0, QT.Q4_1, QT.Q5_0, QT.Q5_1, QT.Q8_0}

# k-quant block layouts: byte offsets of the f16 `d` and `dmin` fields, and the mean
# quant level, so that dmin = d * mean centres the dequantized weights on zero.
# (GGML block_q*_K structs; Q3_K and Q6_K have signed quants and no dmin.)
K_LAYOUT: dict[GGMLQuantizationType, tuple[int, int | None, float]] = {
    QT.Q2_K: (80, 82, 1.5),
    QT.Q3_K: (108, None, 0.0),
    QT.Q4_K: (0, 2, 7.5),
    QT.Q5_K: (0, 2, 15.5),
    QT.Q6_K: (208, None, 0.0),
}
SUPPORTED = FLOAT_TYPES | LEGACY_TYPES | set(K_LAYOUT)

# llama.cpp mixtures --qtype accepts, with their llama_ftype (llama.h) for file_type.
MIX_FTYPE = {"Q4_K_M": LlamaFileType.MOSTLY_Q4_K_M}
# The llama_ftype of a file of one tensor type.
SINGLE_FTYPE = {
    QT.F32: LlamaFileType.ALL_F32,
    QT.F16: LlamaFileType.MOSTLY_F16,
    QT.BF16: LlamaFileType.MOSTLY_BF16,
    QT.Q4_0: LlamaFileType.MOSTLY_Q4_0,
    QT.Q4_1: LlamaFileType.MOSTLY_Q4_1,
    QT.Q5_0: LlamaFileType.MOSTLY_Q5_0,
    QT.Q5_1: LlamaFileType.MOSTLY_Q5_1,
    QT.Q8_0: LlamaFileType.MOSTLY_Q8_0,
    QT.Q2_K: LlamaFileType.MOSTLY_Q2_K,
    QT.Q3_K: LlamaFileType.MOSTLY_Q3_K_S,
    QT.Q4_K: LlamaFileType.MOSTLY_Q4_K_S,
    QT.Q5_K: LlamaFileType.MOSTLY_Q5_K_S,
    QT.Q6_K: LlamaFileType.MOSTLY_Q6_K,
}
# llama.cpp's tensor_type_fallback for rows a 256-block does not divide.
K_FALLBACK = {
    QT.Q2_K: QT.Q4_0,
    QT.Q3_K: QT.Q4_0,
    QT.Q4_K: QT.Q5_0,
    QT.Q5_K: QT.Q5_1,
    QT.Q6_K: QT.Q8_0,
}


@dataclass(frozen=True)
class Config:
    arch: str  # "llama" or "gemma3"
    dim: int  # n_embd
    layers: int
    heads: int
    kv_heads: int
    ffn: int  # feed-forward hidden size
    head_dim: int
    ctx: int
    rope_base: float
    eps: float
    sliding_window: int  # gemma3 only
    qtype: GGMLQuantizationType | str  # one GGML type, or a mix named in MIX_FTYPE
    embd_qtype: GGMLQuantizationType | None  # None: as --qtype (or the mix) decides
    tied: bool  # no output.weight: the embedding doubles as the LM head
    vocab_size: int  # 0: keep the source vocab whole
    seed: int


def parse_qtype(name: str) -> GGMLQuantizationType:
    try:
        qt = GGMLQuantizationType[name.upper()]
    except KeyError:
        raise argparse.ArgumentTypeError(f"unknown quant type {name}") from None
    if qt not in SUPPORTED:
        ok = ", ".join(sorted(t.name for t in SUPPORTED))
        raise argparse.ArgumentTypeError(f"{qt.name} not supported (supported: {ok})")
    return qt


def parse_quant(name: str) -> GGMLQuantizationType | str:
    """A single type (parse_qtype) or a llama.cpp mixture name (MIX_FTYPE)."""
    if name.upper() in MIX_FTYPE:
        return name.upper()
    try:
        return parse_qtype(name)
    except argparse.ArgumentTypeError as e:
        raise argparse.ArgumentTypeError(f"{e} (or a mix: {', '.join(MIX_FTYPE)})") from None


def use_more_bits(i_layer: int, n_layers: int) -> bool:
    """llama.cpp's layers that get more bits in the _M mixes."""
    eighth = n_layers // 8
    return i_layer < eighth or i_layer >= 7 * n_layers // 8 or (i_layer - eighth) % 3 == 2


def fallback(qtype: GGMLQuantizationType, cols: int) -> GGMLQuantizationType:
    """llama.cpp's tensor_type_fallback: a type whose block divides the row length."""
    if cols % GGML_QUANT_SIZES[qtype][0] == 0:
        return qtype
    qtype = K_FALLBACK.get(qtype, qtype)
    return qtype if cols % GGML_QUANT_SIZES[qtype][0] == 0 else QT.F16


def tensor_qtype(cfg: Config, name: str, cols: int) -> GGMLQuantizationType:
    """The type of 2-D weight `name` with rows of `cols`, for --qtype and --embd-qtype."""
    role = name.removesuffix(".weight").rsplit(".", 1)[-1]
    if role == "token_embd" and cfg.embd_qtype is not None:
        return cfg.embd_qtype  # as llama-quantize --token-embedding-type: no fallback
    if isinstance(cfg.qtype, GGMLQuantizationType):
        return cfg.qtype
    # Q4_K_M. n_attention_wv and n_ffn_down are the layer count (one each per layer,
    # visited in layer order), so llama.cpp's counters are the layer index.
    layer = int(name.split(".")[1]) if name.startswith("blk.") else -1
    qtype = QT.Q4_K
    if role == "output" or (role == "token_embd" and cfg.tied):
        qtype = QT.Q8_0 if cols % GGML_QUANT_SIZES[QT.Q4_K][0] else QT.Q6_K
    elif role == "attn_v":
        if use_more_bits(layer, cfg.layers):
            qtype = QT.Q6_K
        elif cfg.arch == "llama" and cfg.layers == 80 and cfg.heads != cfg.kv_heads:
            qtype = QT.Q5_K  # LLM_TYPE_70B: 8x smaller than attn_q, worth the bits
    elif role == "ffn_down" and use_more_bits(layer, cfg.layers):
        qtype = QT.Q6_K
    return fallback(qtype, cols)


def quantize(rng: np.random.Generator, rows: int, cols: int, qtype: GGMLQuantizationType) -> npt.NDArray[Any]:
    """Random [rows, cols] weights in `qtype`: floats, or uint8 [rows, row_bytes]."""
    block, type_size = GGML_QUANT_SIZES[qtype]
    if cols % block:
        raise ValueError(f"{qtype.name} needs a row length divisible by {block}, got {cols}")
    if qtype in FLOAT_TYPES or qtype in LEGACY_TYPES:
        w = (rng.standard_normal((rows, cols)) * WEIGHT_STD).astype(np.float32)
        if qtype == QT.F32:
            return w
        if qtype == QT.F16:
            return w.astype(np.float16)
        return quants.quantize(w, qtype)
    d_off, dmin_off, mean_q = K_LAYOUT[qtype]
    n_blocks = rows * cols // block
    blocks = rng.integers(0, 256, size=(n_blocks, type_size), dtype=np.uint8)

    def set_scales(d: float) -> None:
        blocks[:, d_off : d_off + 2] = np.frombuffer(np.float16(d).tobytes(), np.uint8)
        if dmin_off is not None:
            dmin = np.float16(d * mean_q).tobytes()
            blocks[:, dmin_off : dmin_off + 2] = np.frombuffer(dmin, np.uint8)

    # Dequantization is linear in (d, dmin): measure the spread at d = 1, then rescale.
    set_scales(1.0)
    sample = blocks[: min(n_blocks, 64)].reshape(-1)
    std = float(quants.dequantize(sample, qtype).std())
    set_scales(WEIGHT_STD / std if std > 0 else 1.0)
    return blocks.reshape(rows, -1)


def norm_weight(rng: np.random.Generator, n: int) -> npt.NDArray[np.float32]:
    return (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32)


def _field_value(reader: GGUFReader, key: str) -> tuple[Any, GGUFValueType, Any]:
    field = reader.fields[key]
    vtype = field.types[0]
    sub = field.types[1] if vtype == GGUFValueType.ARRAY else None
    return field.contents(), vtype, sub


def _byte_level_chars() -> set[str]:
    """The 256 printable stand-ins GPT-2 byte-level BPE uses for raw bytes."""
    keep = [
        *range(ord("!"), ord("~") + 1),
        *range(0xA1, 0xAC + 1),
        *range(0xAE, 0xFF + 1),
    ]
    out = {chr(b) for b in keep}
    n = 0
    for b in range(256):
        if b not in keep:
            out.add(chr(256 + n))
            n += 1
    return out


def copy_tokenizer(writer: GGUFWriter, src: Path, vocab_size: int) -> int:
    """Copy `tokenizer.*` keys from `src`, cut to `vocab_size` tokens (-> n_vocab)."""
    reader = GGUFReader(src)
    keys = [k for k in reader.fields if k.startswith("tokenizer.")]
    if "tokenizer.ggml.tokens" not in keys:
        raise ValueError(f"{src} has no tokenizer.ggml.tokens")
    tokens: list[str] = reader.fields["tokenizer.ggml.tokens"].contents()
    n = len(tokens) if vocab_size <= 0 else min(vocab_size, len(tokens))
    kept = set(tokens[:n])
    if reader.fields["tokenizer.ggml.model"].contents() == "gpt2":
        # Byte-level BPE falls back to byte tokens; a vocab may lack bytes that never
        # occur in UTF-8 (0xC0, 0xF5..), but those it has must survive the cut.
        dropped = (_byte_level_chars() & set(tokens)) - kept
        if dropped:
            raise ValueError(f"--vocab-size {n} drops {len(dropped)} byte tokens of {src}")
    for key in keys:
        value, vtype, sub = _field_value(reader, key)
        if key in (
            "tokenizer.ggml.tokens",
            "tokenizer.ggml.scores",
            "tokenizer.ggml.token_type",
        ):
            value = value[:n]
        elif key == "tokenizer.ggml.merges":
            pairs = (m.split(" ", 1) for m in value)
            value = [f"{a} {b}" for a, b in pairs if a in kept and b in kept and a + b in kept]
        elif key.endswith("_token_id") and value >= n:
            raise ValueError(f"{key} = {value} is outside a vocab of {n} tokens")
        writer.add_key_value(key, value, vtype, sub)
    return n


def write_model(cfg: Config, vocab_from: Path, out: Path) -> None:
    rng = np.random.default_rng(cfg.seed)
    arch = cfg.arch
    w = GGUFWriter(out, arch)
    if isinstance(cfg.qtype, str):
        qname, file_type = cfg.qtype, MIX_FTYPE[cfg.qtype]
    else:
        qname, file_type = cfg.qtype.name, SINGLE_FTYPE[cfg.qtype]
    w.add_name(f"synthetic {arch} d{cfg.dim} L{cfg.layers} {qname}")
    w.add_file_type(file_type)  # nominal only: llama.cpp reads per-tensor types
    w.add_quantization_version(2)
    n_vocab = copy_tokenizer(w, vocab_from, cfg.vocab_size)
    w.add_context_length(cfg.ctx)
    w.add_embedding_length(cfg.dim)
    w.add_block_count(cfg.layers)
    w.add_feed_forward_length(cfg.ffn)
    w.add_head_count(cfg.heads)
    w.add_head_count_kv(cfg.kv_heads)
    w.add_layer_norm_rms_eps(cfg.eps)
    w.add_rope_freq_base(cfg.rope_base)
    w.add_vocab_size(n_vocab)
    if arch == "llama":
        w.add_rope_dimension_count(cfg.head_dim)
    else:
        w.add_key_length(cfg.head_dim)
        w.add_value_length(cfg.head_dim)
        w.add_sliding_window(cfg.sliding_window)

    q_out = cfg.heads * cfg.head_dim
    kv_out = cfg.kv_heads * cfg.head_dim

    def add(name: str, rows: int, cols: int) -> None:
        # numpy arrays here are [rows, cols]; GGUF lists dims as ne = [cols, rows].
        qtype = tensor_qtype(cfg, name, cols)
        data = quantize(rng, rows, cols, qtype)
        raw = None if qtype in (QT.F32, QT.F16) else qtype
        w.add_tensor(name, data, raw_dtype=raw)

    add("token_embd.weight", n_vocab, cfg.dim)  # [n_vocab, dim]
    w.add_tensor("output_norm.weight", norm_weight(rng, cfg.dim))
    if not cfg.tied:
        add("output.weight", n_vocab, cfg.dim)  # [n_vocab, dim]
    for i in range(cfg.layers):
        p = f"blk.{i}."
        w.add_tensor(p + "attn_norm.weight", norm_weight(rng, cfg.dim))
        add(p + "attn_q.weight", q_out, cfg.dim)  # [n_head*head_dim, dim]
        add(p + "attn_k.weight", kv_out, cfg.dim)  # [n_kv*head_dim, dim]
        add(p + "attn_v.weight", kv_out, cfg.dim)  # [n_kv*head_dim, dim]
        add(p + "attn_output.weight", cfg.dim, q_out)  # [dim, n_head*hd]
        w.add_tensor(p + "ffn_norm.weight", norm_weight(rng, cfg.dim))
        add(p + "ffn_gate.weight", cfg.ffn, cfg.dim)  # [ffn, dim]
        add(p + "ffn_up.weight", cfg.ffn, cfg.dim)  # [ffn, dim]
        add(p + "ffn_down.weight", cfg.dim, cfg.ffn)  # [dim, ffn]
        if arch == "gemma3":
            w.add_tensor(p + "attn_q_norm.weight", norm_weight(rng, cfg.head_dim))
            w.add_tensor(p + "attn_k_norm.weight", norm_weight(rng, cfg.head_dim))
            w.add_tensor(p + "post_attention_norm.weight", norm_weight(rng, cfg.dim))
            w.add_tensor(p + "post_ffw_norm.weight", norm_weight(rng, cfg.dim))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def parse_args(argv: list[str] | None) -> tuple[Config, Path, Path]:
    ap = argparse.ArgumentParser(description="Write a synthetic GGUF model.")
    ap.add_argument("--arch", choices=["llama", "gemma3"], default="llama")
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--ffn", type=int, default=512)
    ap.add_argument("--head-dim", type=int, default=0, help="default: dim / heads")
    ap.add_argument("--ctx", type=int, default=2048, help="context_length")
    ap.add_argument("--rope-base", type=float, default=None)
    ap.add_argument("--eps", type=float, default=1e-6)
    ap.add_argument("--sliding-window", type=int, default=512, help="gemma3 only")
    ap.add_argument("--qtype", type=parse_quant, default=QT.Q8_0, help="a type or Q4_K_M")
    ap.add_argument("--embd-qtype", type=parse_qtype, default=None, help="default: per --qtype")
    ap.add_argument("--untied", action="store_true", help="write a separate output.weight")
    ap.add_argument("--vocab-from", type=Path, default=DEFAULT_VOCAB)
    ap.add_argument("--vocab-size", type=int, default=1024, help="0 = whole source vocab")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args(argv)
    for name in ("dim", "layers", "heads", "kv_heads", "ffn", "ctx"):
        if getattr(a, name) <= 0:
            ap.error(f"--{name.replace('_', '-')} must be positive")
    if a.heads % a.kv_heads:
        ap.error("--heads must be a multiple of --kv-heads")
    head_dim = a.head_dim or a.dim // a.heads
    if a.head_dim <= 0 and a.dim % a.heads:
        ap.error("--dim must be divisible by --heads (or pass --head-dim)")
    if head_dim % 2:
        ap.error("head dim must be even (RoPE rotates pairs)")
    rope_base = a.rope_base or (1e6 if a.arch == "gemma3" else 1e4)
    cfg = Config(
        arch=a.arch,
        dim=a.dim,
        layers=a.layers,
        heads=a.heads,
        kv_heads=a.kv_heads,
        ffn=a.ffn,
        head_dim=head_dim,
        ctx=a.ctx,
        rope_base=rope_base,
        eps=a.eps,
        sliding_window=a.sliding_window,
        qtype=a.qtype,
        embd_qtype=a.embd_qtype,
        tied=not a.untied,
        vocab_size=a.vocab_size,
        seed=a.seed,
    )
    return cfg, a.vocab_from, a.out


def main(argv: list[str] | None = None) -> int:
    cfg, vocab_from, out = parse_args(argv)
    if not vocab_from.is_file():
        print(f"error: --vocab-from {vocab_from} not found", file=sys.stderr)
        return 1
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    try:
        write_model(cfg, vocab_from, tmp)
        tmp.replace(out)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        tmp.unlink(missing_ok=True)
    print(f"wrote {out} ({out.stat().st_size} bytes)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
