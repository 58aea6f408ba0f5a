"""LACLIP: crop layouts, weights, and the exact reduction to the global score with one full-image crop."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from artray.evaluate.laclip import LaclipOptions, crop_boxes, crop_weights, crops_of, laclip_scores


def _unit(a: np.ndarray) -> np.ndarray:
    return a / np.linalg.norm(a, axis=-1, keepdims=True)


@pytest.fixture
def emb():
    rng = np.random.default_rng(0)
    return _unit(rng.normal(size=(6, 4, 8))), _unit(rng.normal(size=(6, 8))), _unit(rng.normal(size=(9, 8)))


@pytest.mark.parametrize("weighting", ["similarity", "softmax", "sum"])
def test_one_full_crop_no_mixing_is_the_global_score(emb, weighting):
    _, image, text = emb
    opts = LaclipOptions(crops=1, scale=1.0, weighting=weighting)
    im = Image.new("RGB", (40, 30))
    assert crop_boxes(40, 30, opts) == [(0, 0, 40, 30)] and crops_of(im, opts)[0] is im
    scores = laclip_scores(image[:, None, :], image, text, opts)
    assert np.allclose(scores, image.astype(np.float64) @ text.astype(np.float64).T, rtol=0, atol=1e-12)


def test_weights_and_mixing(emb):
    crops, image, text = emb
    soft = crop_weights(crops, image, LaclipOptions(crops=4, weighting="softmax", temperature=0.05))
    assert np.allclose(soft.sum(1), 1) and (soft > 0).all()
    summed = crop_weights(crops, image, LaclipOptions(crops=4, weighting="sum"))
    assert np.allclose(summed.sum(1), 1) and (summed >= 0).all()
    opts = LaclipOptions(crops=4, global_weight=0.25)
    local = laclip_scores(crops, image, text, opts.model_copy(update={"global_weight": 0.0}))
    assert np.allclose(laclip_scores(crops, image, text, opts), 0.75 * local + 0.25 * image @ text.T)
    # a crop identical to the global embedding dominates a sharp softmax
    crops2 = crops.copy()
    crops2[:, 2] = image
    w = crop_weights(crops2, image, LaclipOptions(crops=4, weighting="softmax", temperature=0.01))
    assert (w.argmax(1) == 2).all()


def test_default_is_the_papers_method_random_crops_raw_similarity_weights_no_global_term(emb):
    """CulTi's figure: score = Σ_j (u_j·u_I)(u_j·u_T) over random crops, unnormalised, no global term."""
    crops, image, text = emb
    opts = LaclipOptions()
    assert (opts.layout, opts.weighting, opts.global_weight) == ("random", "similarity", 0.0)
    expected = np.zeros((len(image), len(text)))
    for i in range(len(image)):
        for t in range(len(text)):
            expected[i, t] = sum(float(crops[i, j] @ image[i]) * float(crops[i, j] @ text[t]) for j in range(4))
    assert np.allclose(laclip_scores(crops, image, text, opts), expected)
    weights = crop_weights(crops, image, opts)
    assert not np.allclose(weights.sum(1), 1), "the paper's weights are not normalised"
    boxes = crop_boxes(100, 60, opts, "art1")
    assert boxes == crop_boxes(100, 60, opts, "art1") != crop_boxes(100, 60, opts, "art2")


def test_crop_layouts_are_deterministic_and_inside():
    grid = crop_boxes(100, 60, LaclipOptions(crops=4, scale=0.5, layout="grid"))
    assert grid == [(0, 0, 50, 30), (50, 0, 100, 30), (0, 30, 50, 60), (50, 30, 100, 60)]
    rnd = LaclipOptions(crops=5, scale=0.4, layout="random", seed=3)
    a, b = crop_boxes(100, 60, rnd, "art1"), crop_boxes(100, 60, rnd, "art1")
    assert a == b != crop_boxes(100, 60, rnd, "art2")
    assert all(0 <= l < r <= 100 and 0 <= t < bt <= 60 and r - l == 40 for l, t, r, bt in a)


def test_shape_mismatch_is_an_error(emb):
    crops, image, text = emb
    with pytest.raises(ValueError, match="do not fit"):
        laclip_scores(crops, image[:, :4], text, LaclipOptions())
