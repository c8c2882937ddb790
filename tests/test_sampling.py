"""Tests of keras_tfm.sampling: the samplers, their noise and options."""

import numpy as np
import pytest
from keras import ops

from keras_tfm import sampling
from keras_tfm.search import decode
from tests.helpers import markov, start_buffer


def test_gumbel_noise_matches_numpy_reference():
    # Same seeds, same samples on every backend: the hash is exact.
    def lowbias32(x):
        x = x.astype(np.uint32)
        x ^= x >> np.uint32(16)
        x = (x * np.uint32(0x7FEB352D)).astype(np.uint32)
        x ^= x >> np.uint32(15)
        x = (x * np.uint32(0x846CA68B)).astype(np.uint32)
        x ^= x >> np.uint32(16)
        return x

    seed, index, shape = 123456789, 37, (3, 11)
    with np.errstate(over="ignore"):
        key = lowbias32(
            lowbias32(np.array(seed))
            ^ (np.uint32(index) * np.uint32(0x27D4EB2F))
        )
        counter = np.arange(shape[0] * shape[1]).reshape(shape)
        bits = lowbias32(counter.astype(np.uint32) ^ key)
    uniform = ((bits >> np.uint32(9)).astype(np.float64) + 0.5) / 2**23
    expected = -np.log(-np.log(uniform))
    noise = sampling.gumbel_noise(
        ops.convert_to_tensor(np.int32(seed)),
        ops.convert_to_tensor(np.int32(index)),
        shape,
    )
    np.testing.assert_allclose(
        ops.convert_to_numpy(noise), expected, rtol=1e-5, atol=1e-5
    )


def test_top_k_and_top_p_sample_only_inside_the_set():
    probabilities = np.array([0.0, 0.4, 0.3, 0.2, 0.1])
    logits = np.log(np.maximum(probabilities, 1e-9)).astype("float32")
    batch = 400
    table = np.tile(logits, (5, 1))
    ids, lengths = start_buffer(batch, 2)
    cache = ops.zeros((batch, 1))

    def draw(**kwargs):
        out = decode(markov(table), ids, lengths, cache, seed=3, **kwargs)
        return ops.convert_to_numpy(out)[:, 1]

    top_k = draw(sampler=sampling.TopKSampler(2))
    top_p = draw(sampler=sampling.TopPSampler(0.65))  # 0.4 + 0.3 >= 0.65
    free = draw(sampler=sampling.TopKSampler(4))
    cold = draw(sampler=sampling.TopKSampler(4, temperature=1e-3))
    assert set(top_k.tolist()) == {1, 2}
    assert set(top_p.tolist()) == {1, 2}
    assert set(free.tolist()) == {1, 2, 3, 4}
    assert set(cold.tolist()) == {1}
    # The frequencies follow the distribution (binomial, 400 draws).
    assert abs((free == 1).mean() - 0.4) < 0.1
    assert abs((top_k == 1).mean() - 0.4 / 0.7) < 0.1


@pytest.mark.parametrize("temperature", [1e-10, 1e10])
def test_sampling_is_finite_at_extreme_temperatures(temperature):
    # The row maximum comes off before dividing: no NaN, never padding,
    # and a tiny temperature is greedy.
    rng = np.random.default_rng(5)
    logits = (rng.normal(size=(4, 7)) * 1e3).astype("float32")
    table = np.tile(logits[:1], (7, 1))
    ids, lengths = start_buffer(4, 3)
    for sampler in (
        sampling.TopPSampler(0.9, temperature=temperature),
        sampling.TopKSampler(3, temperature=temperature),
    ):
        out = ops.convert_to_numpy(
            decode(
                markov(table), ids, lengths, ops.zeros((4, 1)), sampler=sampler
            )
        )
        assert (out[:, 1:] > 0).all()
        if temperature < 1:
            best = int(np.argmax(logits[0, 1:])) + 1
            assert (out[:, 1:] == best).all()


def test_sampler_objects():
    assert sampling.get("greedy").get_config() == {}
    sampler = sampling.TopPSampler(0.5, temperature=0.7, seed=3, k=4)
    again = sampling.TopPSampler.from_config(sampler.get_config())
    assert again.get_config() == sampler.get_config()
    for make, match in (
        (lambda: sampling.TopKSampler(0), "`k`"),
        (lambda: sampling.TopPSampler(1.5), "`p`"),
        (lambda: sampling.TopKSampler(2, temperature=float("inf")), "temp"),
        (lambda: sampling.BeamSampler(2, return_all=1), "return_all"),
        (lambda: sampling.get("greedy", num_beams=2), "does not use"),
        (lambda: sampling.get(sampler, top_k=2), "sampler object"),
    ):
        with pytest.raises(ValueError, match=match):
            make()
