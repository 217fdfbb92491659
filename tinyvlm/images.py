"""
Images: files read as a person sees them and prepared as a data set's images are, images moved
(test-time views, augmentation), and images written as PNG files, grids and data URLs.
"""
import base64
import io
import os
import threading
import warnings

import numpy as np
import torch
import torch.nn.functional as F

from tinyvlm import Error
from tinyvlm.plumbing import atomic_write

MAX_PIXELS = 100_000_000         # larger image files are refused (JPEGs are first read at a reduced size)
_HEADER_ONLY = threading.Lock()  # PIL's pixel limit is lifted for one header at a time (the server's threads)


# ----------------------------------------------------------------------------------------------------
# image files

class ImageError(Error):
    """An image file that cannot be used, with the reason in one line (a folder skips and counts them)."""

def open_image(path, name=None, max_pixels=MAX_PIXELS):
    """A PIL image as a person sees the file (a path or a file object, called name in messages): its
    first frame, turned upright by its EXIF orientation, at most max_pixels (large JPEGs are read
    reduced; other large files are refused from their header, before any pixel is decoded)."""
    from PIL import Image, ImageOps, UnidentifiedImageError
    name = name or f"image {path}"
    try:
        with _HEADER_ONLY:
            limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None  # the size is checked below
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter('ignore')
                    im = Image.open(path)
            finally:
                Image.MAX_IMAGE_PIXELS = limit
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as e:
        raise ImageError(f"cannot read {name} ({type(e).__name__}): expected a PNG, JPEG, GIF, BMP, WebP or TIFF file")
    w, h = im.size
    if w * h > max_pixels and im.format == 'JPEG':
        im.draft(im.mode, (max(1, w // 8), max(1, h // 8)))  # decode at 1/8 scale
        w, h = im.size
    if w * h > max_pixels:
        mp = lambda n: f"{n / 1e6:.{0 if n >= 1e7 else 1}f} MP"
        raise ImageError(f"{name} is {im.size[0]}x{im.size[1]} pixels ({mp(w * h)}); the limit is {mp(max_pixels)}: "
                         f"scale it down first")
    if w == 0 or h == 0:
        raise ImageError(f"{name} is empty ({w}x{h} pixels)")
    try:
        im.seek(0)
        im.load()
        return ImageOps.exif_transpose(im)
    except Exception as e:  # a truncated or corrupt file fails only when its pixels are read
        raise ImageError(f"cannot read {name} ({type(e).__name__}: {str(e)[:80]}): the file is damaged")


def image_array(im, channels):
    """A PIL image -> float32 (H, W, channels) in [0, 1]. Transparent parts become the background that
    contrasts with what is drawn (white behind dark strokes, black behind light ones); 16-bit and float
    images are scaled by their range, not clipped."""
    if im.mode in ('I', 'I;16', 'I;16B', 'I;16L', 'F'):
        a = np.asarray(im, dtype=np.float32)
        top = 65535.0 if im.mode.startswith('I;16') or a.max() > 255 else 255.0
        a = np.clip(a / top, 0, 1)[..., None]
        return np.repeat(a, channels, 2) if channels == 3 else a
    has_alpha = im.mode in ('RGBA', 'LA', 'PA') or (im.mode == 'P' and 'transparency' in im.info)
    rgba = np.asarray(im.convert('RGBA'), dtype=np.float32) / 255.0
    rgb, alpha = rgba[..., :3], rgba[..., 3:]
    if has_alpha and alpha.min() < 1:
        ink = alpha[..., 0] > 0.5
        dark = rgb[ink].mean() < 0.5 if ink.any() else True
        rgb = rgb * alpha + (1.0 if dark else 0.0) * (1 - alpha)
    if channels == 1:  # ITU-R 601 luma, as PIL's convert('L')
        return (rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32))[..., None]
    return rgb


def _resize(a, size):
    """float (H, W, C) -> (size[1], size[0], C), area-averaged when shrinking (Lanczos)."""
    from PIL import Image
    return np.stack([np.asarray(Image.fromarray(a[..., c]).resize(size, Image.LANCZOS), dtype=np.float32)
                     for c in range(a.shape[2])], 2)


def centre_crop(a):
    h, w = a.shape[:2]
    s = min(h, w)
    return a[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]


def fit_object(a, size, box, centre, name='image'):
    """A drawing or photo (H, W, 3) -> how MNIST and Fashion-MNIST were made: the object light on black,
    cropped to what is drawn, resized to fit a box x box square keeping its shape, and placed in
    size x size by its centre of mass ('mass') or its bounding box ('box'). What is drawn is what differs
    from the paper (its background) in colour, not only in brightness: black ink on red paper and red ink
    on green paper of the same brightness are drawings as much as white on black."""
    paper = background(torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1)))[None])[0].numpy().transpose(1, 2, 0)
    a = np.sqrt(((a - paper) ** 2).mean(2))  # the distance from the paper, 0 to 1
    if a.max() < 0.1:
        raise ImageError(f"{name} is blank: expected a drawing or an object on a plain background")
    a = a / a.max()
    ys, xs = np.nonzero(a > 0.1)
    a = a[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
    h, w = a.shape
    s = box / max(h, w)
    a = np.clip(_resize(a[..., None], (max(1, round(w * s)), max(1, round(h * s))))[..., 0], 0, 1)
    out = np.zeros((size, size), dtype=np.float32)
    if centre == 'mass':
        total = a.sum()
        cy, cx = (np.arange(a.shape[0]) @ a.sum(1)) / total, (np.arange(a.shape[1]) @ a.sum(0)) / total
    else:
        cy, cx = (a.shape[0] - 1) / 2, (a.shape[1] - 1) / 2
    top = int(np.clip(round(size / 2 - cy), 0, size - a.shape[0]))
    left = int(np.clip(round(size / 2 - cx), 0, size - a.shape[1]))
    out[top:top + a.shape[0], left:left + a.shape[1]] = a
    return out[None]


def prepare_image(im, info, name='image'):
    """A PIL image -> float32 (C, S, S) in [0, 1], as the data set's images are: for MNIST and
    Fashion-MNIST as they were made (fit_object), for a folder centre-cropped to a square and resized.
    The one preparation for image files, folders and drawings on the web page."""
    size, channels = info['image_size'], info['channels']
    if info.get('fit'):
        return fit_object(image_array(im, 3), size, name=name, **info['fit'])
    a = image_array(im, channels)
    return np.clip(_resize(centre_crop(a), (size, size)), 0, 1).transpose(2, 0, 1)


def read_image_file(path, info):
    """An image file prepared as the data set's images are (prepare_image), or an ImageError."""
    if not os.path.isfile(path):
        raise ImageError(f"image file {path} not found")
    return prepare_image(open_image(path), info, name=f"image {path}")


def as_float(images, device='cpu'):
    """uint8 images (numpy or torch) -> float32 tensor in [0, 1]."""
    return torch.as_tensor(images).to(device).float() / 255.0


# ----------------------------------------------------------------------------------------------------

# ----------------------------------------------------------------------------------------------------
# moving images


def background(images):
    """The colour of what lies around each image (N, C, H, W): the median of its border, per channel
    (N, C, 1, 1). What moving an image brings in from outside: black for MNIST, the paper's colour
    for a drawing on coloured paper, never black corners there."""
    border = torch.cat([images[..., 0, :], images[..., -1, :], images[..., 1:-1, 0], images[..., 1:-1, -1]], -1)
    return border.median(-1).values[..., None, None]


def shifted(images, dx, dy, fill=None):
    """images (N, C, H, W) moved dx pixels right and dy down (ints, or one per image), the background
    coming in (or the value fill)."""
    n, c, h, w = images.shape
    bg = background(images) if fill is None else torch.full((n, c, 1, 1), fill, dtype=images.dtype, device=images.device)
    images = images - bg
    dx, dy = (torch.as_tensor(d, device=images.device).long().expand(n) for d in (dx, dy))
    m = int(max(dx.abs().max(), dy.abs().max(), 0)) if n else 0
    padded = F.pad(images, (m, m, m, m))
    rows = torch.arange(h, device=images.device) + m - dy[:, None]
    cols = torch.arange(w, device=images.device) + m - dx[:, None]
    return padded[torch.arange(n, device=images.device)[:, None, None, None], torch.arange(c, device=images.device)[None, :, None, None],
                  rows[:, None, :, None], cols[:, None, None, :]] + bg


def augmented(images, generator, shift=2.0, rotate=10.0, scale=0.1, flip=False):
    """Randomly moved copies of images (N, C, H, W): shifted up to shift pixels, rotated up to rotate
    degrees, scaled by up to 1 +- scale (the usual MNIST augmentation, e.g. Simard et al. 2003), and with
    flip, half of them mirrored left to right (for images whose mirror image is as likely; not digits).
    What comes in from outside the image is its background."""
    n, c, h, w = images.shape
    bg = background(images)
    u = lambda: torch.rand(n, generator=generator) * 2 - 1
    a, s = u() * np.radians(rotate), 1 + u() * scale
    m = torch.where(u() < 0, -1.0, 1.0) if flip else torch.ones(n)  # -1: source columns read right to left
    theta = torch.stack([torch.stack([m * torch.cos(a) / s, -torch.sin(a) / s, u() * 2 * shift / w], 1),
                         torch.stack([m * torch.sin(a) / s, torch.cos(a) / s, u() * 2 * shift / h], 1)], 1)
    grid = F.affine_grid(theta, (n, c, h, w), align_corners=False)
    return (F.grid_sample(images - bg, grid, align_corners=False) + bg).clamp(0, 1)


# ----------------------------------------------------------------------------------------------------
# writing images

def _font(size):
    """DejaVu Sans (shipped with matplotlib: Latin, Greek, Cyrillic and more), else PIL's own."""
    from PIL import ImageFont
    try:
        from matplotlib import font_manager
        return ImageFont.truetype(font_manager.findfont(font_manager.FontProperties(family='DejaVu Sans')), size)
    except Exception:
        return ImageFont.load_default()


def to_pil(image, size=None):
    """float (C, H, W) in [0, 1] -> a PIL image (grey or RGB), resized to size x size if given."""
    from PIL import Image
    a = (np.clip(np.asarray(image, dtype=np.float32), 0, 1) * 255).round().astype(np.uint8)
    im = Image.fromarray(a[0] if a.shape[0] == 1 else a.transpose(1, 2, 0))
    return im.resize((size, size), Image.BICUBIC) if size else im


def save_png(image, path, size=None):
    im = to_pil(image, size)
    atomic_write(path, lambda tmp: im.save(tmp, format='PNG'))


def save_image_grid(images, path, nrow, scale=2, pad=2, row_labels=None):
    """images (N, C, H, W) in [0, 1] -> one PNG, nrow images a row on grey, a label left of each row."""
    from PIL import Image, ImageDraw
    images = np.clip(np.asarray(images, dtype=np.float32), 0, 1)
    n, c, h, w = images.shape
    rows = (n + nrow - 1) // nrow
    grid = np.full((c, rows * (h + pad) + pad, nrow * (w + pad) + pad), 0.5, dtype=np.float32)
    for i in range(n):
        r, col = divmod(i, nrow)
        grid[:, pad + r * (h + pad): pad + r * (h + pad) + h, pad + col * (w + pad): pad + col * (w + pad) + w] = images[i]
    img = to_pil(grid).resize((grid.shape[2] * scale, grid.shape[1] * scale), Image.NEAREST)
    if row_labels:
        font = _font(max(10, min(16, (h + pad) * scale // 3)))
        margin = max(int(font.getlength(str(t))) for t in row_labels) + 8
        out = Image.new(img.mode, (img.width + margin, img.height), 255 if img.mode == 'L' else (255, 255, 255))
        out.paste(img, (margin, 0))
        draw = ImageDraw.Draw(out)
        for r, text in enumerate(row_labels[:rows]):
            y = (pad + r * (h + pad) + h / 2) * scale
            draw.text((margin - 4, y), str(text), fill=0 if img.mode == 'L' else (0, 0, 0), font=font, anchor='rm')
        img = out
    atomic_write(path, lambda tmp: img.save(tmp, format='PNG'))


def data_url(image, size=None):
    """An image (C, S, S) in [0, 1] as a PNG data URL."""
    buf = io.BytesIO()
    to_pil(image, size).save(buf, format='PNG')
    return 'data:image/png;base64,' + base64.b64encode(buf.getvalue()).decode()
