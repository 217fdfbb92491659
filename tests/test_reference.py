"""reference: the reference CNN's shapes and the Frechet distance."""
import numpy as np
import pytest
import torch

from tinyvlm.reference import ImageCNN, frechet_distance


def test_frechet_distance():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(4000, 5))
    assert abs(frechet_distance(a, a)) < 1e-6
    b = rng.normal(size=(4000, 5)) * 2 + 1  # N(1, 4I) vs N(0, I): 5 * 1 + 5 * (1 + 4 - 2 * 2) = 10
    assert abs(frechet_distance(a, b) - 10) < 0.5


@pytest.mark.parametrize('channels, size, classes', [(1, 28, 10), (3, 32, 4), (3, 20, 2)])
def test_reference_cnn_shapes(channels, size, classes):
    cnn = ImageCNN(channels, size, classes)
    x = torch.rand(3, channels, size, size)
    assert cnn(x).shape == (3, classes) and cnn.features(x).shape == (3, 128)
