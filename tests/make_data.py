"""
What makes the tests' data, made from nothing (no network, no files from elsewhere): small IDX files,
folders of class folders, colour shapes, images as people have them, a tiny prepared data folder, and
drawings as the page sends them. The colour shapes and glyphs also make the README's own-images rows:

    python tests/make_data.py data/shapes 1000          # 4 shapes x 1000 images, 32x32 PNG files
    python tests/make_data.py data/glyphs 700 glyphs    # 10 glyphs x 700 images, 40x40 PNG files

The class is the shape or the glyph, never the colour, so a model has to read and draw the shape; the
class names have a space and a non-ASCII letter, as people's own folders do. Glyphs are harder: letters
that differ in a stroke (E and F, P and R, O and Q) in several fonts, moved, turned and scaled, in ink of
any colour on paper of any other (shaded, sometimes of the same brightness), with specks of dust.
"""
import base64
import gzip
import hashlib
import io
import math
import os
import struct
import sys
import zlib

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from tinyvlm.datasets import IDX_NAMES  # noqa: E402
from tinyvlm.plumbing import FORMAT, write_json  # noqa: E402
from tinyvlm.sequences import Codec  # noqa: E402

DIGITS = list('0123456789')


# codecs and prepared data --------------------------------------------------------------------------------

def mnist_codec(codebook_size=26, tokens=8, block=32):
    return Codec(DIGITS, 'number', codebook_size, tokens, block)


def tiny_prepared(d, codec=None, sizes=(('train', 200), ('val', 50))):
    """A prepared data folder (random codes in MNIST's sequences, no images or tokenizer), enough for
    train.py to run on."""
    codec = codec or mnist_codec(26, 8, 32)
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    files = {}
    for split, n in sizes:
        codes, labels, tasks = rng.integers(0, 26, (n, 8)), rng.integers(0, 10, n), rng.integers(0, 2, n)
        ids = np.array([codec.line(list(codec.tasks)[t], y, c)[1] for c, y, t in zip(codes, labels, tasks)], dtype=np.uint16)
        for name, write in ((f'{split}.bin', lambda p: ids.tofile(p)), (f'{split}_codes.npy', lambda p: np.save(p, codes)),
                            (f'{split}_labels.npy', lambda p: np.save(p, labels)), (f'{split}_tasks.npy', lambda p: np.save(p, tasks))):
            write(str(d / name))
            files[name] = hashlib.sha256((d / name).read_bytes()).hexdigest()
    write_json(str(d / 'meta.json'), dict(format=FORMAT, dataset={}, classes=codec.classes, key=codec.key, tasks=codec.tasks,
                                          vocab=codec.itos, block_size=codec.block_size, grid=0, lead=0, tokens_per_image=8,
                                          codebook_size=26, tokenizer='none', tokenizer_sha256='', dtype='uint16',
                                          moves=dict(flip=False), shares={t: 1.0 for t in codec.tasks}, files=files))
    return d


# IDX files ----------------------------------------------------------------------------------------------

def write_idx(path, arr, magic_type=0x08):
    header = bytes([0, 0, magic_type, arr.ndim]) + b''.join(int(d).to_bytes(4, 'big') for d in arr.shape)
    with gzip.open(path, 'wb') as f:
        f.write(header + arr.astype(np.uint8).tobytes())


def small_fashion(folder, n_train=60, n_test=20):
    """A small Fashion-MNIST in IDX files, and the SHA-256 of its decompressed contents."""
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 256, (n_train, 28, 28)), np.arange(n_train) % 10,
              rng.integers(0, 256, (n_test, 28, 28)), np.arange(n_test) % 10]
    shas = []
    folder.mkdir(exist_ok=True)
    for name, a in zip(IDX_NAMES, arrays):
        write_idx(folder / (name + '.gz'), a)
        shas.append(hashlib.sha256(gzip.decompress((folder / (name + '.gz')).read_bytes())).hexdigest())
    return arrays, shas


# folders of class folders ------------------------------------------------------------------------------

def draw_blob(shape, colour, size=40, seed=0):
    """An RGB picture of a filled circle or square at a random place."""
    rng = np.random.default_rng(seed)
    a = np.zeros((size, size, 3), dtype=np.uint8)
    c, r = rng.integers(size // 3, 2 * size // 3, 2), size // 5
    yy, xx = np.mgrid[:size, :size]
    inside = ((yy - c[0]) ** 2 + (xx - c[1]) ** 2 < r * r) if shape == 'circle' else (
        (abs(yy - c[0]) < r) & (abs(xx - c[1]) < r))
    a[inside] = colour
    return a


def make_folder(root, classes, n=6, size=40, grey=False, extra=None):
    from PIL import Image
    for k, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            a = draw_blob('circle' if k % 2 else 'square', (200, 60 * k % 255, 40), size, seed=10 * k + i)
            im = Image.fromarray(a).convert('L') if grey else Image.fromarray(a)
            im.save(root / name / f'{i}.{"jpg" if i % 3 == 0 else "png"}')
    return root



CLASSES = ('circle', 'hollow square', 'triangle', 'étoile')


def draw_shape(shape, rng, size=32):
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
            draw_shape(shape, rng, size).save(os.path.join(root, shape, f'{i:05d}.png'))
    return root


GLYPHS = {'A': 'A', 'B': 'B', 'E': 'E', 'F': 'F', 'O': 'O', 'Q': 'Q', 'P': 'P', 'R': 'R', 'é': 'é',
          'grand Ω': 'Ω'}


def glyph_fonts():
    """Font files with every glyph: the machine's DejaVu and Liberation fonts, else PIL's own font."""
    found = []
    for folder in ('/usr/share/fonts/truetype/dejavu', '/usr/share/fonts/truetype/liberation'):
        if os.path.isdir(folder):
            found += [os.path.join(folder, f) for f in sorted(os.listdir(folder))
                      if f.endswith('.ttf') and 'Math' not in f and 'ExtraLight' not in f]
    return found or [None]


def draw_glyph(char, rng, fonts, size=40):
    """One RGB picture (PIL image) of the character: a random font, size, place and turn, ink and paper
    of random colours at least a clear step apart, a shaded paper and specks."""
    from PIL import Image, ImageDraw, ImageFont
    scale = 4
    big = size * scale
    while True:  # ink and paper clearly apart in colour, if not always in brightness
        paper, ink = rng.uniform(0, 1, 3), rng.uniform(0, 1, 3)
        if np.linalg.norm(paper - ink) > 0.6:
            break
    font_file = fonts[rng.integers(len(fonts))]
    px = int(rng.uniform(0.45, 0.75) * big)
    font = ImageFont.truetype(font_file, px) if font_file else ImageFont.load_default(px)
    mask = Image.new('L', (2 * big, 2 * big), 0)
    ImageDraw.Draw(mask).text((big, big), char, fill=255, font=font, anchor='mm')
    mask = mask.rotate(rng.uniform(-25, 25), resample=Image.BICUBIC, center=(big, big))
    l, t, r, b = mask.getbbox()
    glyph = mask.crop((l, t, r, b))
    x0 = int(rng.uniform(0, max(1, big - glyph.width)))
    y0 = int(rng.uniform(0, max(1, big - glyph.height)))
    m = np.zeros((big, big), dtype=np.float32)
    g = np.asarray(glyph, dtype=np.float32)[:big - y0, :big - x0] / 255
    m[y0:y0 + g.shape[0], x0:x0 + g.shape[1]] = g
    ramp = np.linspace(-1, 1, big)
    angle = rng.uniform(0, 2 * math.pi)
    shade = (np.cos(angle) * ramp[None, :] + np.sin(angle) * ramp[:, None])[..., None] * rng.uniform(0, 0.12)
    a = np.clip(paper + shade, 0, 1) * (1 - m[..., None]) + ink * m[..., None]
    im = Image.fromarray((a * 255).round().astype(np.uint8)).resize((size, size), Image.LANCZOS)
    a = np.asarray(im, dtype=np.float32) / 255
    for _ in range(rng.integers(0, 4)):  # specks of dust
        y, x = rng.integers(0, size, 2)
        a[y, x] = rng.uniform(0, 1, 3)
    return Image.fromarray((a * 255).round().astype(np.uint8))


def make_glyphs(root, per_class, size=40, seed=0, classes=GLYPHS):
    """Write per_class PNG files of each glyph class into root/CLASS/."""
    rng, fonts = np.random.default_rng(seed), glyph_fonts()
    for name, char in classes.items():
        os.makedirs(os.path.join(root, name), exist_ok=True)
        for i in range(per_class):
            draw_glyph(char, rng, fonts, size).save(os.path.join(root, name, f'{i:05d}.png'))
    return root


# images as people have them ----------------------------------------------------------------------------

def stroke(size=(60, 80), dark=True):
    """A grey picture of a vertical bar: dark on light paper, or light on black."""
    a = np.full(size[::-1], 235 if dark else 10, dtype=np.uint8)
    half = max(1, size[0] // 15)
    a[size[1] // 5: 4 * size[1] // 5, size[0] // 2 - half: size[0] // 2 + half] = 20 if dark else 240
    return a


def make_kind(kind, path):
    from PIL import Image
    bar = stroke()
    if kind == 'alpha, dark strokes':
        rgba = np.zeros(bar.shape + (4,), dtype=np.uint8)
        rgba[..., 3] = np.where(bar < 128, 255, 0)  # strokes opaque black, the rest transparent
        Image.fromarray(rgba, 'RGBA').save(path)
    elif kind == 'alpha, light strokes':
        rgba = np.full(bar.shape + (4,), 255, dtype=np.uint8)
        rgba[..., 3] = np.where(bar < 128, 255, 0)  # white strokes on transparency
        Image.fromarray(rgba, 'RGBA').save(path)
    elif kind == 'palette':
        Image.fromarray(np.stack([bar] * 3, 2)).convert('P', palette=Image.ADAPTIVE, colors=4).save(path)
    elif kind == '16-bit':
        Image.fromarray((255 - bar).astype(np.uint16) * 257).save(path)  # light bar on black, 0..65535
    elif kind == 'CMYK JPEG':
        Image.fromarray(np.stack([bar] * 3, 2)).convert('CMYK').save(path, quality=95)
    elif kind == 'EXIF-rotated photo':
        exif = Image.Exif()
        exif[0x0112] = 6  # shown turned 90 degrees clockwise: the lying bar stands
        Image.fromarray(np.ascontiguousarray(np.rot90(bar))).convert('RGB').save(path, exif=exif, quality=95)
    elif kind == 'animated GIF':
        frames = [Image.fromarray(bar), Image.fromarray(np.full_like(bar, 235))]
        frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    elif kind == 'large JPEG scan':
        a = np.full((9000, 12000), 235, dtype=np.uint8)  # 108 MP: read at 1/8
        a[1500:7500, 5800:6200] = 20
        Image.fromarray(a).save(path, quality=70)
    elif kind == 'tiny':
        Image.fromarray(stroke((6, 8))).save(path)


def huge_png(path, w, h):
    """A PNG whose header claims w x h pixels (its data is a few bytes: a decompression bomb's header)."""
    chunk = lambda kind, data: struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data))
    with open(path, 'wb') as f:
        f.write(b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', w, h, 8, 0, 0, 0, 0))
                + chunk(b'IDAT', zlib.compress(b'\x00' * 100)) + chunk(b'IEND', b''))


def drawing_url(vertical=True):
    from PIL import Image, ImageDraw
    im = Image.new('RGB', (280, 280))
    ImageDraw.Draw(im).line([(140, 40), (140, 240)] if vertical else [(40, 140), (240, 140)], fill='white', width=20)
    buf = io.BytesIO()
    im.save(buf, 'PNG')
    return 'data:image/png;base64,' + base64.b64encode(buf.getvalue()).decode()


if __name__ == '__main__':
    if len(sys.argv) not in (3, 4) or not sys.argv[2].isdigit() or sys.argv[3:] not in ([], ['shapes'], ['glyphs']):
        raise SystemExit("usage: python tests/make_data.py FOLDER IMAGES_PER_CLASS [shapes|glyphs]")
    glyphs = sys.argv[3:] == ['glyphs']
    (make_glyphs if glyphs else make_shapes)(sys.argv[1], int(sys.argv[2]))
    names = list(GLYPHS) if glyphs else CLASSES
    print(f"wrote {int(sys.argv[2]) * len(names)} images of {', '.join(names)} in {sys.argv[1]}")
