"""images: files read as a person sees them and prepared as the data set's images are; moving images;
grids."""
import numpy as np
import pytest
import torch

from make_data import huge_png, make_kind
from tinyvlm.datasets import IDX_SETS
from tinyvlm.images import ImageError, augmented, read_image_file, save_image_grid, shifted

MNIST_INFO = dict(image_size=28, channels=1, fit=IDX_SETS['mnist']['fit'])


def is_bar(a, vertical=True):
    """A prepared image (1, 28, 28) holds one light bar on black, standing (or lying)."""
    ys, xs = np.nonzero(a[0] > 0.5)
    assert len(ys) and a[0, 0, 0] < 0.1
    return (np.ptp(ys) > 2 * np.ptp(xs)) if vertical else (np.ptp(xs) > 2 * np.ptp(ys))


def test_prepare_image_as_the_data_set_was_made(tmp_path):
    """A dark drawing on light paper, any size, becomes MNIST's light digit on black in 28x28; a
    transparent background is seen as paper; a folder image is centre-cropped and resized."""
    from PIL import Image
    canvas = np.full((90, 70, 3), 240, dtype=np.uint8)
    canvas[20:70, 30:38] = 20  # a thick vertical stroke
    Image.fromarray(canvas).save(tmp_path / 'one.png')
    mnist = dict(image_size=28, channels=1, fit=IDX_SETS['mnist']['fit'])
    a = read_image_file(str(tmp_path / 'one.png'), mnist)
    assert a.shape == (1, 28, 28) and a.max() > 0.8 and a[0, :4].max() == 0  # light on black, in the 20x20 box
    assert a[0, 4:24].max(1).min() > 0.5  # the stroke fills the box's height
    rgba = np.zeros((60, 60, 4), dtype=np.uint8)
    rgba[10:50, 28:32] = (0, 0, 0, 255)  # dark strokes, transparent elsewhere
    Image.fromarray(rgba, 'RGBA').save(tmp_path / 'alpha.png')
    b = read_image_file(str(tmp_path / 'alpha.png'), mnist)
    assert b.max() > 0.8 and b[0, 14, 14] > 0.5
    colour = read_image_file(str(tmp_path / 'one.png'), dict(image_size=16, channels=3, fit=None))
    assert colour.shape == (3, 16, 16)
    Image.new('L', (40, 40), 255).save(tmp_path / 'blank.png')
    with pytest.raises(ImageError, match='is blank'):
        read_image_file(str(tmp_path / 'blank.png'), mnist)
    (tmp_path / 'noise.png').write_text('not an image')
    with pytest.raises(ImageError, match='cannot read image'):
        read_image_file(str(tmp_path / 'noise.png'), mnist)


def test_shifted_moves_pixels():
    x = torch.zeros(2, 1, 28, 28)
    x[:, 0, 10, 12] = 1
    assert shifted(x, 1, 0)[0, 0, 10, 13] == 1 and shifted(x, 0, -1)[0, 0, 9, 12] == 1 and shifted(x, 0, 0).equal(x)
    y = shifted(x, torch.tensor([1, -2]), torch.tensor([0, 1]))  # one move per image
    assert y[0, 0, 10, 13] == 1 and y[1, 0, 11, 10] == 1 and y.sum() == 2


def test_augmented_images_move_but_keep_ink():
    x = torch.zeros(200, 3, 28, 28)
    x[:, :, 10:18, 12:16] = 1
    y = augmented(x, torch.Generator().manual_seed(0))
    assert y.shape == x.shape and 0 <= y.min() <= y.max() <= 1
    assert not torch.equal(x, y)
    assert (y.sum((1, 2, 3)) / x.sum((1, 2, 3)) - 1).abs().max() < 0.3  # moved, rotated, scaled a little
    assert torch.equal(augmented(x, torch.Generator().manual_seed(0)), y)
    assert torch.allclose(augmented(x, torch.Generator(), 0, 0, 0), x, atol=1e-5)  # no moves: the image itself
    small = augmented(x, torch.Generator().manual_seed(0), 1.0, 5.0, 0.05)  # config/prepare_fashion.py's
    assert 0 < (small - x).abs().mean() < (y - x).abs().mean()


def test_augmented_flip_mirrors_half():
    x = torch.rand(200, 3, 28, 28)
    y = augmented(x, torch.Generator().manual_seed(0), 0, 0, 0, flip=True)
    same = (y - x).abs().amax((1, 2, 3)) < 1e-5
    mirrored = (y - x.flip(3)).abs().amax((1, 2, 3)) < 1e-5
    assert bool((same ^ mirrored).all()) and 60 < int(mirrored.sum()) < 140
    plain = augmented(x, torch.Generator().manual_seed(0))
    assert torch.equal(augmented(x, torch.Generator().manual_seed(0), flip=False), plain)  # MNIST's data unchanged


def test_image_grid_with_row_labels(tmp_path):
    from PIL import Image
    images = torch.rand(6, 3, 12, 12)
    save_image_grid(images, tmp_path / 'g.png', 3, row_labels=['T-shirt/top', 'Ünïcode'])
    im = Image.open(tmp_path / 'g.png')
    plain = Image.open((save_image_grid(images, tmp_path / 'p.png', 3), tmp_path / 'p.png')[1])
    assert im.mode == 'RGB' and im.height == plain.height and im.width > plain.width + 40


# images as people have them ----------------------------------------------------------------------------

@pytest.mark.parametrize('kind, suffix', [('alpha, dark strokes', 'png'), ('alpha, light strokes', 'png'),
                                          ('palette', 'png'), ('16-bit', 'png'), ('CMYK JPEG', 'jpg'),
                                          ('EXIF-rotated photo', 'jpg'), ('animated GIF', 'gif'),
                                          ('large JPEG scan', 'jpg'), ('tiny', 'png')])
def test_image_kinds_read_correctly(kind, suffix, tmp_path):
    path = str(tmp_path / f'img.{suffix}')
    make_kind(kind, path)
    a = read_image_file(path, MNIST_INFO)
    assert a.shape == (1, 28, 28) and 0 <= a.min() <= a.max() <= 1 and is_bar(a)
    rgb = read_image_file(path, dict(image_size=16, channels=3, fit=None))
    assert rgb.shape == (3, 16, 16)


@pytest.mark.parametrize('make, message', [
    (lambda p: huge_png(p, 30000, 20000), 'is 30000x20000 pixels (600 MP); the limit is 100 MP'),
    (lambda p: huge_png(p, 300, 200), 'the file is damaged'),  # its pixels are cut short
    (lambda p: open(p, 'wb').write(b''), 'cannot read image'),
    (lambda p: open(p, 'w').write('<html>not an image</html>'), 'cannot read image'),
    (lambda p: __import__('PIL.Image').Image.new('L', (1, 1), 255).save(p, format='PNG'), 'is blank'),
    (lambda p: __import__('PIL.Image').Image.new('RGBA', (30, 30), (0, 0, 0, 0)).save(p, format='PNG'), 'is blank'),
])
def test_image_files_that_cannot_be_read_get_one_line(make, message, tmp_path):
    path = str(tmp_path / 'bad.png')
    make(path)
    with pytest.raises(ImageError) as e:
        read_image_file(path, MNIST_INFO)
    assert message in str(e.value) and '\n' not in str(e.value)


@pytest.mark.parametrize('paper, ink', [((220, 30, 30), (0, 0, 0)),       # black ink on red paper
                                        ((40, 160, 40), (200, 60, 60)),    # red on green, of about one brightness
                                        ((250, 250, 250), (20, 20, 20)),   # dark on white
                                        ((0, 0, 0), (255, 255, 255))])     # light on black
def test_a_drawing_is_what_differs_from_the_paper_in_colour(paper, ink, tmp_path):
    """What is drawn is what differs from the paper in colour, not only in brightness: MNIST sees every
    one of these as a light stroke on black."""
    from PIL import Image
    canvas = np.zeros((90, 70, 3), dtype=np.uint8) + np.array(paper, dtype=np.uint8)
    canvas[20:70, 30:38] = ink
    Image.fromarray(canvas).save(tmp_path / 'one.png')
    assert is_bar(read_image_file(str(tmp_path / 'one.png'), MNIST_INFO))


def test_moved_images_bring_in_their_paper():
    """Moving a drawing on coloured paper brings in its paper's colour, not black corners; on black
    (MNIST) it brings in black, exactly as before."""
    paper = torch.tensor([0.8, 0.3, 0.1])[None, :, None, None]
    x = paper.repeat(50, 1, 28, 28)
    x[:, :, 10:18, 12:16] = torch.tensor([0.1, 0.1, 0.9])[None, :, None, None]
    y = augmented(x, torch.Generator().manual_seed(0), 3.0, 30.0, 0.2)
    corners = torch.cat([y[..., :2, :2], y[..., -2:, -2:]], -1)
    assert (corners - paper).abs().max() < 1e-5
    assert (shifted(x, 2, -2)[..., :, :2] - paper).abs().max() < 1e-6
    black = torch.zeros(4, 1, 28, 28)
    black[:, :, 10:18, 12:16] = 1
    assert shifted(black, 1, 0)[..., :, 0].abs().max() == 0
