"""reference: the reference CNN's shapes, the one shipped for MNIST, the Frechet distance, precision and
recall."""
import os

import numpy as np
import pytest
import torch

from tinyvlm.reference import ASSETS, ImageCNN, frechet_distance, precision_recall, shipped_or_trained


def test_frechet_distance():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(4000, 5))
    assert abs(frechet_distance(a, a)) < 1e-6
    b = rng.normal(size=(4000, 5)) * 2 + 1  # N(1, 4I) vs N(0, I): 5 * 1 + 5 * (1 + 4 - 2 * 2) = 10
    assert abs(frechet_distance(a, b) - 10) < 0.5


def test_precision_and_recall_tell_faithful_from_diverse():
    """Samples of the data itself are faithful and cover it; samples that all sit at one corner of it
    are faithful but cover little; samples elsewhere are neither."""
    rng = np.random.default_rng(0)
    real = rng.normal(size=(2000, 4))
    precision, recall = precision_recall(real, rng.normal(size=(2000, 4)))
    assert precision > 0.9 and recall > 0.9
    precision, recall = precision_recall(real, rng.normal(size=(2000, 4)) * 0.05 + 0.3)  # all alike
    assert precision > 0.9 and recall < 0.2
    precision, recall = precision_recall(real, rng.normal(size=(2000, 4)) + 10)
    assert precision == 0 and recall == 0


@pytest.mark.parametrize('channels, size, classes', [(1, 28, 10), (3, 32, 4), (3, 20, 2)])
def test_reference_cnn_shapes(channels, size, classes):
    cnn = ImageCNN(channels, size, classes)
    x = torch.rand(3, channels, size, size)
    assert cnn(x).shape == (3, classes) and cnn.features(x).shape == (3, 128)


def test_the_shipped_reference_judges_only_the_images_it_learned():
    """MNIST's reference comes with the repo and judges MNIST's images; other images (another
    fingerprint, another shape) get one trained in out/."""
    ck = torch.load(os.path.join(ASSETS, 'reference_mnist.pt'), weights_only=True)
    assert ck['dataset'] == 'MNIST' and ck['test_accuracy'] > 0.99
    meta = dict(dataset=dict(name='mnist', channels=1, image_size=28, fingerprint=ck['fingerprint']),
                classes=list('0123456789'))
    assert os.path.abspath(shipped_or_trained(meta)) == os.path.join(ASSETS, 'reference_mnist.pt')
    other = dict(meta, dataset=dict(meta['dataset'], fingerprint='0' * 64))
    assert shipped_or_trained(other) == os.path.join('out', 'reference_mnist.pt')
    assert shipped_or_trained(dict(meta, classes=list('01234'))) == os.path.join('out', 'reference_mnist.pt')


def test_a_shipped_reference_is_never_trained_over(tmp_path):
    """--reference=assets/reference_mnist.pt over other images: a one-line error, the file kept."""
    from tinyvlm import Error
    from tinyvlm.reference import reference_classifier
    path = os.path.join(ASSETS, 'reference_mnist.pt')
    before = open(path, 'rb').read()
    meta = dict(dataset=dict(name='mnist', title='my images', channels=1, image_size=28, fingerprint='0' * 64),
                classes=list('0123456789'))
    with pytest.raises(Error, match="shipped for other images than my images's"):
        reference_classifier(path, meta, str(tmp_path), 'cpu')
    assert open(path, 'rb').read() == before
