"""plots: the sequence logo and accuracy against iteration are PNG files."""
import numpy as np

from make_data import mnist_codec
from tinyvlm.plots import draw_logo, plot_accuracy
from tinyvlm.sequences import Codec

PNG = b'\x89PNG\r\n\x1a\n'


def test_logo_and_accuracy_plot(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.arange(200) % 10
    draw_logo(rng.integers(0, 26, (200, 8)), labels, mnist_codec(), 'MNIST', tmp_path / 'letters.png')
    grid = Codec(list('0123456789'), 'number', 125, 16, grid=4)
    draw_logo(rng.integers(0, 125, (200, 16)), labels, grid, 'MNIST', tmp_path / 'grid.png')
    lead = Codec(list('0123456789'), 'number', 512, 4 + 16, grid=4, lead=4)  # an ink tokenizer's colours and place, then the grid
    draw_logo(rng.integers(0, 512, (200, 20)), labels, lead, 'glyphs', tmp_path / 'lead.png')
    assert (tmp_path / 'lead.png').read_bytes()[:8] == PNG
    plot_accuracy([dict(iter=i, classification_accuracy=0.9 + i / 1e4, classification_stderr=0.003) for i in (400, 800)],
                  tmp_path / 'accuracy.png', 'MNIST')
    assert all((tmp_path / f).read_bytes()[:8] == PNG for f in ('letters.png', 'grid.png', 'accuracy.png'))
