"""Property tests of ``tallow.Sampler``: invariants S1-S16 of docs/reliability.md section 6.2.

The Rust side checks the same invariants with proptest (rust/tallow-core/tests/sampler_props.rs);
this file covers them through the Python API, including parameter validation.

Semantics under test (llama.cpp's chain: penalties -> top_k -> top_p -> min_p -> temperature):
- temperature 0 or top_k 1 is greedy: argmax, lowest id wins ties;
- top_k <= 0, top_p == 1 and min_p == 0 switch their filter off; every filter keeps >= 1 token;
- repeat_last_n: 0 disables the penalties, -1 uses the whole history;
- -inf and NaN logits are never sampled; a +inf logit forces the lowest such id;
- no samplable logit raises ``tallow.TallowError``; bad parameters raise ``ValueError`` naming them.
"""

from __future__ import annotations

import contextlib
import math

import numpy as np
import pytest
import tallow
from hypothesis import example, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

NEG_INF = float("-inf")

# Every filter off, temperature 1.
NEUTRAL = dict(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0)


def sampler(**kw: object) -> tallow.Sampler:
    return tallow.Sampler(**{**NEUTRAL, "seed": 0, **kw})


# ---------------------------------------------------------------- strategies (section 6.2)

finite = st.floats(-1e4, 1e4, width=32)
tie_alphabet = st.sampled_from([-1.0, 0.0, 0.5, 2.0])


@st.composite
def logits_st(draw: st.DrawFn, max_v: int = 512, allow_neg_inf: bool = True) -> np.ndarray:
    """float32 logits, V in [1, max_v], with ties and -inf; at least one finite value."""
    v = draw(st.integers(1, max_v))
    elems = (
        st.one_of(finite, tie_alphabet, st.just(NEG_INF))
        if allow_neg_inf
        else st.one_of(finite, tie_alphabet)
    )
    a = draw(arrays(np.float32, v, elements=elems))
    if not np.isfinite(a).any():
        a[draw(st.integers(0, v - 1))] = draw(finite)
    return a


@st.composite
def wild_logits_st(draw: st.DrawFn) -> np.ndarray:
    """Any mix of finite values, NaN and infinities."""
    v = draw(st.integers(1, 64))
    elems = st.one_of(finite, st.sampled_from([NEG_INF, float("inf"), float("nan"), 3.4e38, -3.4e38]))
    return draw(arrays(np.float32, v, elements=elems))


temperatures = st.one_of(st.sampled_from([0.0, 1e-8, 1.0, 1e4]), st.floats(0.05, 3.0))
top_ps = st.one_of(
    st.sampled_from([0.0, 1e-6, float(np.nextafter(np.float32(1), np.float32(0))), 1.0]), st.floats(0, 1)
)
min_ps = st.one_of(st.sampled_from([0.0, 1.0]), st.floats(0, 1))
seeds = st.integers(0, 2**64 - 1)


def top_ks(v: int) -> st.SearchStrategy[int]:
    return st.sampled_from(sorted({0, -1, 1, max(v - 1, 0), v, v + 1, 2**31 - 1}))


@st.composite
def params_st(draw: st.DrawFn, v: int) -> dict:
    return dict(
        temperature=draw(temperatures),
        top_k=draw(top_ks(v)),
        top_p=draw(top_ps),
        min_p=draw(min_ps),
        seed=draw(seeds),
    )


# ---------------------------------------------------------------- numpy reference of the filters


def order_desc(logits: np.ndarray) -> np.ndarray:
    """Token ids by descending logit, ties by ascending id (the sampler's total order)."""
    return np.lexsort((np.arange(len(logits)), -logits.astype(np.float64)))


def greedy_ref(logits: np.ndarray) -> int:
    return int(np.argmax(np.where(np.isnan(logits), -np.inf, logits)))  # first max = lowest id


def kept_superset(
    logits: np.ndarray, top_k: int, top_p: float, min_p: float, slack: float = 1e-6
) -> set[int]:
    """Tokens the chain may keep. top_p's cut is taken with `slack` extra mass, so rounding at the
    boundary can only make this set larger than the sampler's, never smaller."""
    ids = [int(i) for i in order_desc(logits) if np.isfinite(logits[i])]
    if 0 < top_k < len(ids):
        ids = ids[:top_k]
    if top_p < 1.0 and len(ids) > 1:
        lg = logits[ids].astype(np.float64)
        p = np.exp(lg - lg.max())
        p /= p.sum()
        cum = np.cumsum(p)
        n = int(np.searchsorted(cum, min(top_p + slack, 1.0))) + 1
        # Ties at the cut: the sampler keeps by id order, so keep every token tied with the last.
        while n < len(ids) and logits[ids[n]] == logits[ids[n - 1]]:
            n += 1
        ids = ids[: min(n, len(ids))]
    # The sampler holds min_p as f32, like llama.cpp: a value below f32's range is 0 (off).
    min_p = float(np.float32(min_p))
    if min_p > 0.0:
        mx = max(float(logits[i]) for i in ids)
        ids = [i for i in ids if float(logits[i]) >= mx + math.log(min_p) - 1e-9]
    return set(ids)


def penalized_ref(
    logits: np.ndarray, history: list[int], last_n: int, rep: float, freq: float, pres: float
) -> np.ndarray:
    """llama.cpp's penalties in float32, like the engine."""
    out = logits.copy()
    # A window longer than the history covers all of it (a negative slice start would wrap).
    window = history if last_n == -1 else (history[max(0, len(history) - last_n) :] if last_n > 0 else [])
    counts: dict[int, int] = {}
    for t in window:
        if 0 <= t < len(out):
            counts[t] = counts.get(t, 0) + 1
    rep32, f32, p32 = np.float32(rep), np.float32(freq), np.float32(pres)
    for t, c in counts.items():
        x = out[t]
        x = x * rep32 if x <= 0 else x / rep32
        out[t] = np.float32(x - (np.float32(c) * f32 + p32))
    return out


# ---------------------------------------------------------------- S1, S5, S6


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_s1_s5_sample_in_range_and_in_kept_set(data: st.DataObject) -> None:
    logits = data.draw(logits_st())
    params = data.draw(params_st(len(logits)))
    s = tallow.Sampler(**params)
    if params["temperature"] == 0.0 or params["top_k"] == 1:
        allowed = {greedy_ref(logits)}
    else:
        allowed = kept_superset(logits, params["top_k"], params["top_p"], params["min_p"])
    for _ in range(5):
        t = s.sample(logits, [])
        assert isinstance(t, int)
        assert 0 <= t < len(logits)
        assert np.isfinite(logits[t])
        assert t in allowed


# ---------------------------------------------------------------- S2


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_s2_top_k_1_equals_temperature_0_equals_argmax(data: st.DataObject) -> None:
    logits = data.draw(logits_st())
    params = data.draw(params_st(len(logits)))
    want = greedy_ref(logits)
    assert tallow.Sampler(**{**params, "top_k": 1}).sample(logits, []) == want
    assert tallow.Sampler(**{**params, "temperature": 0.0}).sample(logits, []) == want


def test_s2_ties_go_to_lowest_id() -> None:
    logits = np.array([1.0, 3.0, 3.0, 3.0, -2.0], dtype=np.float32)
    for seed in range(20):
        assert sampler(temperature=0.0, seed=seed).sample(logits, []) == 1
        assert sampler(top_k=1, temperature=5.0, seed=seed).sample(logits, []) == 1


# ---------------------------------------------------------------- S3, S14


@settings(max_examples=100, deadline=None)
@given(logits=logits_st(max_v=64, allow_neg_inf=False), data=st.data())
def test_s3_top_k_keeps_the_k_largest(logits: np.ndarray, data: st.DataObject) -> None:
    k = data.draw(top_ks(len(logits)))
    top = set(int(i) for i in order_desc(logits)[: k if k > 0 else len(logits)])
    s = sampler(top_k=k, seed=data.draw(seeds))
    for _ in range(10):
        assert s.sample(logits, []) in top


def test_s3_k_zero_and_huge_are_no_ops() -> None:
    logits = np.zeros(4, dtype=np.float32)
    for k in (0, -3, 4, 5, 2**31 - 1):
        s = sampler(top_k=k, seed=1)
        assert {s.sample(logits, []) for _ in range(200)} == {0, 1, 2, 3}


def test_s14_top_k_then_top_p_1_equals_top_k() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=100).astype(np.float32)
    for k in (1, 5, 50):
        a = sampler(top_k=k, seed=9)
        b = sampler(top_k=k, top_p=1.0, min_p=0.0, seed=9)
        assert [a.sample(logits, []) for _ in range(50)] == [b.sample(logits, []) for _ in range(50)]


def test_s14_stage_sizes_on_a_ramp() -> None:
    # llama.cpp's test_sampler_queue shape: logit = ln(id) (p proportional to id); token 0 is -inf.
    n = 1000
    with np.errstate(divide="ignore"):
        logits = np.log(np.arange(n, dtype=np.float32))
    seen = {sampler(top_k=10, seed=s).sample(logits, []) for s in range(400)}
    assert seen <= set(range(n - 10, n)) and len(seen) >= 8
    # min_p = 0.9 keeps ids >= 0.9 * 999.
    seen = {sampler(min_p=0.9, seed=s).sample(logits, []) for s in range(400)}
    assert seen <= set(range(900, n))
    # top_p = 0.1: the shortest run of top ids holding 10% of the mass.
    total, cum, lo = n * (n - 1) / 2, 0.0, n
    while cum < 0.1 * total:
        lo -= 1
        cum += lo
    seen = {sampler(top_p=0.1, seed=s).sample(logits, []) for s in range(400)}
    assert seen <= set(range(lo, n))


# ---------------------------------------------------------------- S4


@settings(max_examples=100, deadline=None)
@given(logits=logits_st(max_v=128), p=top_ps, seed=seeds)
def test_s4_top_p_keeps_the_minimal_prefix(logits: np.ndarray, p: float, seed: int) -> None:
    allowed = kept_superset(logits, 0, p, 0.0)
    s = sampler(top_p=p, seed=seed)
    for _ in range(10):
        assert s.sample(logits, []) in allowed


def test_s4_boundaries() -> None:
    # llama.cpp test_top_p: probs {0.1, 0.2, 0.3, 0.4}; p = 0 keeps 1, 0.7 keeps 2, 1 keeps all.
    logits = np.log(np.array([0.1, 0.2, 0.3, 0.4], dtype=np.float32))
    draws = lambda p: {sampler(top_p=p, seed=s).sample(logits, []) for s in range(300)}  # noqa: E731
    assert draws(0.0) == {3}
    assert draws(0.7) == {2, 3}
    assert draws(0.8) == {1, 2, 3}
    assert draws(1.0) == {0, 1, 2, 3}


# ---------------------------------------------------------------- S6, S16: frequencies match p


# Chi-square critical values at alpha = 1e-3 for 1..9 degrees of freedom.
CHI2_CRIT = [10.83, 13.82, 16.27, 18.47, 20.52, 22.46, 24.32, 26.12, 27.88]


def expected_probs(
    logits: np.ndarray, temperature: float, top_k: int, top_p: float, min_p: float
) -> dict[int, float]:
    kept = sorted(kept_superset(logits, top_k, top_p, min_p, slack=0.0))
    lg = logits[kept].astype(np.float64)
    w = np.exp((lg - lg.max()) / temperature)
    return dict(zip(kept, w / w.sum(), strict=False))


@pytest.mark.parametrize(
    "cfg",
    [
        dict(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0),
        dict(temperature=1.0, top_k=4, top_p=1.0, min_p=0.0),
        dict(temperature=1.0, top_k=0, top_p=0.8, min_p=0.0),
        dict(temperature=1.0, top_k=0, top_p=1.0, min_p=0.2),
        dict(temperature=0.6, top_k=0, top_p=1.0, min_p=0.0),
        dict(temperature=1.7, top_k=6, top_p=0.9, min_p=0.05),
    ],
)
def test_s16_chi_square(cfg: dict) -> None:
    logits = np.array([0.3, 1.2, -0.5, 2.0, 0.0, 1.0, -1.5, 0.7], dtype=np.float32)
    probs = expected_probs(logits, **cfg)
    assert abs(sum(probs.values()) - 1.0) < 1e-9
    n = 20_000
    s = tallow.Sampler(**cfg, seed=1234)
    counts = np.bincount([s.sample(logits, []) for _ in range(n)], minlength=len(logits))
    outside = sum(int(c) for i, c in enumerate(counts) if i not in probs)
    assert outside == 0
    if len(probs) > 1:
        chi2 = sum((counts[i] - n * p) ** 2 / (n * p) for i, p in probs.items())
        assert chi2 < CHI2_CRIT[len(probs) - 2], (chi2, counts, probs)


# ---------------------------------------------------------------- S7


def test_s7_tiny_temperature_is_argmax() -> None:
    logits = np.array([1.0, 2.0, 1.999, -5.0], dtype=np.float32)
    for seed in range(50):
        assert sampler(temperature=1e-8, seed=seed).sample(logits, []) == 1


def test_s7_higher_temperature_spreads_mass() -> None:
    logits = np.array([0.0, 1.0, 2.0, 3.0], dtype=np.float32)
    top_share = []
    for t in (0.3, 1.0, 3.0):
        s = sampler(temperature=t, seed=5)
        top_share.append(sum(s.sample(logits, []) == 3 for _ in range(3000)) / 3000)
    assert top_share[0] > top_share[1] > top_share[2]


# ---------------------------------------------------------------- S8


@settings(max_examples=50, deadline=None)
@given(logits=logits_st(max_v=256), data=st.data())
def test_s8_same_seed_same_sequence(logits: np.ndarray, data: st.DataObject) -> None:
    params = data.draw(params_st(len(logits)))
    a, b = tallow.Sampler(**params), tallow.Sampler(**params)
    assert [a.sample(logits, []) for _ in range(10)] == [b.sample(logits, []) for _ in range(10)]


def test_s8_different_seeds_differ() -> None:
    logits = np.zeros(1000, dtype=np.float32)

    def run(seed: int) -> list[int]:
        s = sampler(seed=seed)
        return [s.sample(logits, []) for _ in range(20)]

    assert run(1) == run(1)
    assert run(1) != run(2)


# ---------------------------------------------------------------- S9, S10, S11 via greedy decoding

histories = st.lists(st.integers(0, 80), max_size=40)
last_ns = st.one_of(st.sampled_from([-1, 0, 1]), st.integers(0, 50))


@settings(max_examples=200, deadline=None)
@given(
    logits=logits_st(max_v=64, allow_neg_inf=False),
    history=histories,
    last_n=last_ns,
    rep=st.one_of(st.just(1.0), st.floats(0.125, 5.0, width=32)),
    freq=st.one_of(st.just(0.0), st.floats(-2, 2, width=32)),
    pres=st.one_of(st.just(0.0), st.floats(-2, 2, width=32)),
)
# A repeat_last_n longer than the history penalizes all of it (found by Hypothesis).
@example(logits=np.array([2.0, 2.0], np.float32), history=[0, 0, 1, 0], last_n=5, rep=2.0, freq=0.0, pres=0.0)
def test_s9_s10_penalties_match_llama_cpp_rule(
    logits: np.ndarray, history: list[int], last_n: int, rep: float, freq: float, pres: float
) -> None:
    # With temperature 0 the pick is the argmax of the penalized logits, so it exposes them exactly.
    s = sampler(
        temperature=0.0,
        repeat_penalty=rep,
        repeat_last_n=last_n,
        frequency_penalty=freq,
        presence_penalty=pres,
    )
    want = greedy_ref(penalized_ref(logits, history, last_n, rep, freq, pres))
    assert s.sample(logits, history) == want


def test_s9_window_and_dedup() -> None:
    logits = np.array([2.0, 1.9, 0.0], dtype=np.float32)
    pen = dict(temperature=0.0, repeat_penalty=2.0)
    assert sampler(**pen, repeat_last_n=2).sample(logits, [0, 1, 1]) == 0  # token 0 left the window
    assert sampler(**pen, repeat_last_n=3).sample(logits, [0, 1, 1]) == 0  # both halved: 1.0 > 0.95
    assert sampler(**pen, repeat_last_n=-1).sample(logits, [0]) == 1
    assert sampler(**pen, repeat_last_n=0).sample(logits, [0]) == 0  # 0 disables
    assert sampler(temperature=0.0, repeat_penalty=1.0).sample(logits, [0, 0, 0]) == 0  # 1 is the identity
    # Counting a token many times equals counting it once for the repeat penalty.
    many = sampler(temperature=1.0, repeat_penalty=1.7, repeat_last_n=-1, seed=3)
    once = sampler(temperature=1.0, repeat_penalty=1.7, repeat_last_n=-1, seed=3)
    assert [many.sample(logits, [0, 0, 0, 1]) for _ in range(30)] == [
        once.sample(logits, [0, 1]) for _ in range(30)
    ]


@settings(max_examples=100, deadline=None)
@given(
    logits=logits_st(max_v=64),
    extra=st.lists(st.integers(64, 2**32 - 1), min_size=1, max_size=10),
    seed=seeds,
)
def test_s11_out_of_vocab_history_is_ignored(logits: np.ndarray, extra: list[int], seed: int) -> None:
    kw = dict(repeat_penalty=1.5, frequency_penalty=0.5, presence_penalty=0.5, repeat_last_n=-1, seed=seed)
    a, b = sampler(**kw), sampler(**kw)
    assert [a.sample(logits, []) for _ in range(5)] == [b.sample(logits, extra) for _ in range(5)]


# ---------------------------------------------------------------- S12, S13


@settings(max_examples=100, deadline=None)
@given(v=st.integers(1, 300), data=st.data())
def test_s12_single_finite_logit_is_always_chosen(v: int, data: st.DataObject) -> None:
    i = data.draw(st.integers(0, v - 1))
    logits = np.full(v, -np.inf, dtype=np.float32)
    logits[::3] = np.nan
    logits[i] = data.draw(finite)
    assert tallow.Sampler(**data.draw(params_st(v))).sample(logits, []) == i


@pytest.mark.parametrize("fill", [-np.inf, np.nan])
def test_s12_nothing_samplable_raises(fill: float) -> None:
    for v in (1, 7, 512):
        with pytest.raises(tallow.TallowError):
            sampler().sample(np.full(v, fill, dtype=np.float32), [])
        with pytest.raises(tallow.TallowError):
            sampler(temperature=0.0).sample(np.full(v, fill, dtype=np.float32), [])


@settings(max_examples=200, deadline=None)
@given(logits=wild_logits_st(), data=st.data())
def test_s13_non_finite_mixes(logits: np.ndarray, data: st.DataObject) -> None:
    s = tallow.Sampler(**data.draw(params_st(len(logits))))
    samplable = ~np.isnan(logits) & (logits != -np.inf)
    if not samplable.any():
        with pytest.raises(tallow.TallowError):
            s.sample(logits, [])
        return
    t = s.sample(logits, [])
    assert 0 <= t < len(logits) and samplable[t]
    pos_inf = np.flatnonzero(logits == np.inf)
    if len(pos_inf):
        assert t == pos_inf[0]  # +inf forces its token, lowest id first


# ---------------------------------------------------------------- S15


@settings(max_examples=100, deadline=None)
@given(logits=wild_logits_st(), data=st.data())
def test_s15_logits_are_not_mutated(logits: np.ndarray, data: st.DataObject) -> None:
    before = logits.copy()
    s = tallow.Sampler(**data.draw(params_st(len(logits))), repeat_penalty=1.3, presence_penalty=0.5)
    with contextlib.suppress(tallow.TallowError):
        s.sample(logits, [0, 1, 0])
    np.testing.assert_array_equal(logits, before)  # NaN == NaN here


# ---------------------------------------------------------------- validation (S7 and friends)

BAD = [
    ("temperature", float("nan")),
    ("temperature", -1.0),
    ("temperature", float("inf")),
    ("top_p", 1.0001),  # the binding stores float32: 1 + 2**-52 would round to a valid 1.0
    ("top_p", 1.5),
    ("top_p", -0.1),
    ("top_p", float("nan")),
    ("min_p", 1.05),
    ("min_p", -0.01),
    ("min_p", float("nan")),
    ("repeat_penalty", 0.0),
    ("repeat_penalty", -1.0),
    ("repeat_penalty", float("nan")),
    ("repeat_penalty", float("inf")),
    ("repeat_last_n", -2),
    ("frequency_penalty", float("nan")),
    ("frequency_penalty", float("inf")),
    ("presence_penalty", float("nan")),
    ("presence_penalty", float("-inf")),
]


@pytest.mark.parametrize(("name", "value"), BAD)
def test_bad_parameter_raises_value_error_naming_it(name: str, value: float) -> None:
    with pytest.raises(ValueError, match=name):
        tallow.Sampler(**{name: value})


@settings(max_examples=100, deadline=None)
@given(
    name=st.sampled_from(["top_p", "min_p"]),
    value=st.one_of(st.floats(max_value=-1e-6), st.floats(min_value=1.0001), st.just(float("nan"))),
)
def test_out_of_range_probabilities_rejected(name: str, value: float) -> None:
    with pytest.raises(ValueError, match=name):
        tallow.Sampler(**{name: value})


@pytest.mark.parametrize(
    "kw",
    [
        {},
        dict(temperature=0.0),
        dict(top_k=0),
        dict(top_k=-7),
        dict(top_k=2**31 - 1),
        dict(top_p=0.0, min_p=1.0),
        dict(repeat_last_n=-1),
        dict(seed=0),
        dict(seed=2**64 - 1),
    ],
)
def test_valid_extremes_accepted(kw: dict) -> None:
    s = tallow.Sampler(**kw)
    assert 0 <= s.sample(np.array([0.5, 1.0, -1.0], dtype=np.float32), [0, 1]) < 3


def test_default_history_is_optional() -> None:
    assert tallow.Sampler(temperature=0.0).sample(np.array([0.0, 1.0], dtype=np.float32)) == 1


@given(v=st.integers(1, 512), seed=seeds)
@settings(max_examples=30, deadline=None)
def test_default_params_any_vocab_size(v: int, seed: int) -> None:
    logits = np.linspace(-3, 3, v, dtype=np.float32)
    t = tallow.Sampler(seed=seed).sample(logits, list(range(min(v, 70))))
    assert 0 <= t < v
