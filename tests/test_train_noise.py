"""Noise generators of the trainer: realised rates, mappings, determinism, caching."""
import numpy as np
import pytest

from anm_fast.train import noise


def labels(n=20000, k=10, seed=0):
    return np.random.default_rng(seed).integers(0, k, n)


@pytest.mark.parametrize("rate", [0.2, 0.5, 0.8])
def test_symmetric_dividemix_convention(rate):
    y = labels()
    out = noise.symmetric(y, rate, 10, seed=1)
    # a fraction `rate` is redrawn uniformly, the true class included: realised = rate * 9/10
    assert abs(noise.realised_rate(y, out) - rate * 0.9) < 0.01
    assert out.min() >= 0 and out.max() < 10


@pytest.mark.parametrize("rate", [0.0, 0.3, 0.8, 1.0])
def test_symmetric_exact_rate(rate):
    y = labels(1000)
    out = noise.symmetric_exact(y, rate, 10, seed=3)
    assert (out != y).sum() == round(rate * 1000)
    # the flipped classes are spread over all the other classes
    if rate >= 0.8:
        flipped = out[out != y]
        assert len(np.unique(flipped)) == 10


def test_asym_cifar10_map():
    y = labels(50000)
    out = noise.make_noisy_labels("asym", 0.4, y, num_classes=10, dataset="cifar10", seed=0).noisy
    changed = out != y
    for src in np.unique(y[changed]):
        assert src in noise.CIFAR10_ASYM
        assert set(out[changed & (y == src)]) == {noise.CIFAR10_ASYM[src]}
    for src in noise.CIFAR10_ASYM:  # each source class flips with probability 0.4
        assert abs(changed[y == src].mean() - 0.4) < 0.02
    assert noise.CIFAR10_ASYM == {9: 1, 2: 0, 4: 7, 3: 5, 5: 3}


def test_asym_digits_map_is_documented_and_applied():
    y = labels(20000)
    res = noise.make_noisy_labels("asym", 0.4, y, num_classes=10, dataset="digits", seed=0)
    changed = res.noisy != y
    assert set(np.unique(y[changed])) == set(noise.DIGITS_ASYM)
    for src, dst in noise.DIGITS_ASYM.items():
        assert set(res.noisy[changed & (y == src)]) == {dst}
    # 5 of 10 classes are sources: realised ~ 0.4 * 0.5
    assert abs(res.realised_rate - 0.2) < 0.02


def test_asym_cifar100_within_superclass():
    coarse = np.asarray(noise.CIFAR100_COARSE)
    assert np.bincount(coarse).tolist() == [5] * 20
    m = noise.asym_map("cifar100", 100)
    assert sorted(m) == list(range(100))
    for c, d in m.items():
        assert d != c and coarse[d] == coarse[c]
    # cyclic: following the map from any class returns to it after 5 steps
    c = 0
    for _ in range(5):
        c = m[c]
    assert c == 0


def test_idn_rate_and_determinism():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 10, 3000)
    x = rng.normal(size=(3000, 16)) + y[:, None]
    a = noise.instance_dependent(y, x, 0.4, 10, seed=5)
    b = noise.instance_dependent(y, x, 0.4, 10, seed=5)
    c = noise.instance_dependent(y, x, 0.4, 10, seed=6)
    assert (a == b).all() and (a != c).any()
    assert abs(noise.realised_rate(y, a) - 0.4) < 0.03


def test_human_labels_passthrough_and_length_check():
    y = labels(100)
    h = (y + 1) % 10
    res = noise.make_noisy_labels("human", 0.0, y, num_classes=10, dataset="cifar10", seed=0,
                                  human=h)
    assert res.realised_rate == 1.0 and (res.noisy == h).all()
    with pytest.raises(ValueError, match="99 labels"):
        noise.make_noisy_labels("human", 0.0, y, num_classes=10, dataset="cifar10", seed=0,
                                human=h[:99])


def test_fixed_by_seed():
    y = labels(1000)
    for kind in ("sym", "sym-exact", "asym"):
        a = noise.make_noisy_labels(kind, 0.5, y, num_classes=10, dataset="digits", seed=1).noisy
        b = noise.make_noisy_labels(kind, 0.5, y, num_classes=10, dataset="digits", seed=1).noisy
        c = noise.make_noisy_labels(kind, 0.5, y, num_classes=10, dataset="digits", seed=2).noisy
        assert (a == b).all() and (a != c).any()


def test_parse_noise_errors():
    assert noise.parse_noise("human:worse_label") == ("human", "worse_label")
    assert noise.parse_noise("sym") == ("sym", None)
    with pytest.raises(ValueError, match="unknown noise"):
        noise.parse_noise("gaussian")
    assert noise.parse_noise("human") == ("human", None)
    with pytest.raises(ValueError, match="takes no"):
        noise.parse_noise("sym:abc")
    with pytest.raises(ValueError, match="rate"):
        noise.symmetric(labels(10), 1.5, 10, 0)


def test_cache_roundtrip(tmp_path):
    y = labels(500)
    res = noise.make_noisy_labels("sym", 0.5, y, num_classes=10, dataset="digits", seed=0)
    meta = {"noise": "sym", "rate": 0.5, "seed": 0}
    path = str(tmp_path / "noise" / "seed0.npz")
    noise.save_cached(path, res, meta)
    back = noise.load_cached(path, meta)
    assert (back.noisy == res.noisy).all() and back.realised_rate == res.realised_rate
    with pytest.raises(ValueError, match="other settings"):
        noise.load_cached(path, {**meta, "rate": 0.8})
