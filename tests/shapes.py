"""
A small colour image set made from nothing: shapes of random colour, size, place and turn on a dark
background, one folder per class. The tests use a few of them; the README's colour row uses more:

    python tests/shapes.py data/shapes 1000      # 4 classes x 1000 images, 32x32 PNG files

The class is the shape, never the colour, so a model has to read and draw the shape. The class names
have a space and a non-ASCII letter, as people's own folders do.
"""
import math
import os
import sys

import numpy as np

CLASSES = ('circle', 'hollow square', 'triangle', 'étoile')


def draw(shape, rng, size=32):
    """One RGB picture (PIL image) of the shape."""
    from PIL import Image, ImageDraw
    scale = 4  # drawn large, then shrunk: smooth edges
    im = Image.new('RGB', (size * scale, size * scale), tuple(int(v) for v in rng.integers(0, 40, 3)))
    d = ImageDraw.Draw(im)
    colour = tuple(int(v) for v in rng.integers(80, 256, 3))
    r = rng.uniform(0.22, 0.38) * size * scale
    cx, cy = (rng.uniform(r, size * scale - r) for _ in range(2))
    turn = rng.uniform(0, 2 * math.pi)
    ring = lambda n, radius, start: [(cx + radius * math.cos(start + 2 * math.pi * k / n),
                                      cy + radius * math.sin(start + 2 * math.pi * k / n)) for k in range(n)]
    if shape == 'circle':
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
    elif shape == 'hollow square':
        d.polygon(ring(4, r, turn), outline=colour, width=int(r / 3))
    elif shape == 'triangle':
        d.polygon(ring(3, r, turn), fill=colour)
    else:  # a five-pointed star
        outer, inner = ring(5, r, turn), ring(5, r * 0.42, turn + math.pi / 5)
        d.polygon([p for pair in zip(outer, inner) for p in pair], fill=colour)
    return im.resize((size, size), Image.LANCZOS)


def make_shapes(root, per_class, size=32, seed=0, classes=CLASSES):
    """Write per_class PNG files of each class into root/CLASS/."""
    rng = np.random.default_rng(seed)
    for shape in classes:
        os.makedirs(os.path.join(root, shape), exist_ok=True)
        for i in range(per_class):
            draw(shape, rng, size).save(os.path.join(root, shape, f'{i:05d}.png'))
    return root


if __name__ == '__main__':
    if len(sys.argv) != 3 or not sys.argv[2].isdigit():
        raise SystemExit("usage: python tests/shapes.py FOLDER IMAGES_PER_CLASS")
    make_shapes(sys.argv[1], int(sys.argv[2]))
    print(f"wrote {int(sys.argv[2]) * len(CLASSES)} images of {', '.join(CLASSES)} in {sys.argv[1]}")
