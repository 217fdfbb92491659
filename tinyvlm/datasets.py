"""
Data sets: where images come from, their class names and splits.

    dataset = 'mnist'     MNIST (LeCun et al. 1998): 28x28 grey digits, classes '0'..'9'
    dataset = 'fashion'   Fashion-MNIST (Xiao et al. 2017): 28x28 grey clothes, 10 named classes
    dataset = PATH        a folder of images with one subfolder per class (PATH/cat/*.png), or with
                          train/, test/ and optionally val/ subfolders that each hold the class folders

MNIST and Fashion-MNIST are the original IDX files: taken from idx_dir when given (../shared/... on a
machine without network; Debian's dataset-fashion-mnist package installs the same files), else
downloaded from the public mirrors; checked against the SHA-256 of their decompressed contents and
cached in data/NAME/. Their splits are as published: train[:50000] trains, train[50000:] validates,
test is held out. A folder is split 80/10/10 per class by a fixed seed unless it has its own splits.

load_dataset returns the splits as uint8 arrays (N, C, H, W) with int64 labels (and a folder's own
captions, tinyvlm/captions.py), and `info`: a small JSON dict that travels in the tokenizer checkpoint
and in meta.json, so that later scripts load the same data, show the same class names and prepare a
new image file the same way.
"""
import gzip
import hashlib
import os
import shutil
import unicodedata
import urllib.request
import zlib

import numpy as np

from tinyvlm import Error
from tinyvlm.captions import read_metadata
from tinyvlm.images import ImageError, open_image, prepare_image
from tinyvlm.plumbing import atomic_write
from tinyvlm.sequences import check_class_name

IDX_NAMES = ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte', 't10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte')
IDX_SETS = {
    # SHA-256 of the decompressed IDX files, which are the same for every faithful copy whatever its gzip compression
    'mnist': dict(
        title='MNIST', key='number', classes=list('0123456789'),
        fit=dict(box=20, centre='mass'),  # as MNIST was made: the digit fitted into 20x20, centred by centre of mass
        mirrors=['https://ossci-datasets.s3.amazonaws.com/mnist/', 'https://storage.googleapis.com/cvdf-datasets/mnist/',
                 'http://yann.lecun.com/exdb/mnist/'],
        sha256=['ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db',
                '65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5',
                '0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7',
                'ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2']),
    'fashion': dict(
        title='Fashion-MNIST', key='class',
        classes=['T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal', 'Shirt', 'Sneaker', 'Bag', 'Ankle boot'],
        fit=dict(box=28, centre='box'),  # as Fashion-MNIST was made: the longest edge resized to 28, centred
        mirrors=['http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/',
                 'https://github.com/zalandoresearch/fashion-mnist/raw/master/data/fashion/'],
        sha256=['c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888',
                'bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9',
                '5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b',
                '0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34']),
}
N_TRAIN = 50000                  # IDX sets: train[:50000] trains, train[50000:] validates, as published
SPLIT_SEED = 1337                # a folder without splits of its own: the same split in every script
VAL_FRACTION = TEST_FRACTION = 0.1
IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.gif', '.bmp', '.webp', '.tif', '.tiff')
MAX_SIDE = 64                    # a folder's own size is used up to this; larger images are resized to 32
CACHE = 'data'


# ----------------------------------------------------------------------------------------------------
# IDX files: MNIST and Fashion-MNIST

def read_idx(path, sha256=None):
    """Read one gzipped IDX file into a numpy array (uint8 data only). With sha256, return None if the
    file does not decompress or its bytes do not match it (a bad download)."""
    try:
        with gzip.open(path, 'rb') as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as e:
        if sha256 is not None:
            return None
        raise Error(f"{path} is not a complete gzip file ({type(e).__name__}: {e}); "
                    f"expected a gzipped IDX file")
    if sha256 is not None and hashlib.sha256(raw).hexdigest() != sha256:
        return None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise Error(f"{path} is not an IDX file of unsigned bytes (expected magic 0x0000080N)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise Error(f"{path} is truncated: its IDX header needs {header} bytes, has {len(raw)}")
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], 'big') for i in range(ndim)]
    size = int(np.prod(dims)) if dims else 0
    if len(raw) != header + size:
        raise Error(f"{path} holds {len(raw) - header} data bytes, expected {size} for shape "
                    f"{tuple(dims)}: the file is truncated or corrupted")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _fetch(name, file, idx_dir, dest):
    """Put FILE.gz of data set NAME at dest: copied from idx_dir when given, else downloaded."""
    if idx_dir:
        src = os.path.join(idx_dir, file + '.gz')
        if not os.path.isfile(src):
            raise Error(f"{src} not found: idx_dir must hold the four {IDX_SETS[name]['title']} files "
                        f"({', '.join(n + '.gz' for n in IDX_NAMES)})")
        atomic_write(dest, lambda tmp: shutil.copyfile(src, tmp))
        return
    errors = []
    for mirror in IDX_SETS[name]['mirrors']:
        url = mirror + file + '.gz'
        try:
            print(f"downloading {url}")
            with urllib.request.urlopen(url, timeout=30) as r:
                data = r.read()
            atomic_write(dest, data)
            return
        except Exception as e:  # any network failure: try the next mirror
            errors.append(f"{mirror}: {type(e).__name__}")
    raise Error(f"{IDX_SETS[name]['title']} file {file}.gz is not in {os.path.join(CACHE, name)} and "
                f"could not be downloaded ({'; '.join(errors)}); with no network, pass --idx_dir=DIR, a folder "
                f"with the four .gz files")


def load_idx(name, idx_dir=''):
    """The four arrays of an IDX data set, from the cache data/NAME/ (filled from idx_dir or the mirrors
    on first use). Every file is checked against its SHA-256; a bad one is removed and fetched once more.
    -> dict of uint8 arrays: train_images (60000, 28, 28), train_labels, test_images, test_labels."""
    out = {}
    for file, sha in zip(IDX_NAMES, IDX_SETS[name]['sha256']):
        path = os.path.join(CACHE, name, file + '.gz')
        for attempt in range(2):
            if not os.path.isfile(path):
                _fetch(name, file, idx_dir, path)
            arr = read_idx(path, sha)
            if arr is not None:
                break
            os.remove(path)
            print(f"{path} is corrupted (SHA-256 or gzip check failed): removed" + (", fetching it again" if attempt == 0 else ''))
        else:
            raise Error(f"{file}.gz from {idx_dir or 'the mirrors'} does not match the SHA-256 of "
                        f"{IDX_SETS[name]['title']} ({sha[:16]}...): the file is corrupted or of another data set")
        out[('train_' if file.startswith('train') else 'test_') + file.split('-')[1]] = arr
    return out


def idx_splits(name, idx_dir=''):
    """{'train', 'val', 'test'} -> (images uint8 (N, 1, 28, 28), labels int64 (N,), None: no captions of
    their own)."""
    m = load_idx(name, idx_dir)
    to = lambda im, lb: (im[:, None].copy(), lb.astype(np.int64), None)
    return {'train': to(m['train_images'][:N_TRAIN], m['train_labels'][:N_TRAIN]),
            'val': to(m['train_images'][N_TRAIN:], m['train_labels'][N_TRAIN:]),
            'test': to(m['test_images'], m['test_labels'])}


# ----------------------------------------------------------------------------------------------------
# a folder of class folders

def _class_folders(root):
    return sorted(d for d in os.listdir(root) if not d.startswith('.') and os.path.isdir(os.path.join(root, d)))


def _image_files(folder):
    out = []
    for dirpath, dirnames, files in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith('.'))
        out += [os.path.join(dirpath, f) for f in sorted(files)
                if not f.startswith('.') and f.lower().endswith(IMAGE_EXTENSIONS)]
    return out


def folder_splits(root, image_size=0):
    """A folder of class folders -> ({split: (uint8 (N, C, S, S), int64 labels, captions)}, class names,
    notes). Colour is kept when any image has it; unreadable files are skipped and counted in notes.
    captions: a list of each image's caption where the folder (or a split's folder) has a metadata.jsonl
    or metadata.csv (captions.read_metadata), an image it does not name captioned by its class name and
    counted in notes; else None."""
    root = os.path.abspath(root)
    if not os.path.isdir(root):
        raise Error(f"dataset must be 'mnist', 'fashion' or a folder of class folders; {root} is not a folder")
    top = _class_folders(root)
    if {'train', 'test'} <= set(top):
        parts = {s: os.path.join(root, s) for s in ('train', 'val', 'test') if s in top}
    elif set(top) & {'train', 'val', 'test'} and len(set(top) & {'train', 'val', 'test'}) < 3 and 'train' in top:
        raise Error(f"{root} has {', '.join(sorted(set(top) & {'train', 'val', 'test'}))}/ but not test/: "
                    f"a folder with its own splits needs train/ and test/ (val/ is optional)")
    else:
        parts = {None: root}
    classes = sorted({check_class_name(c, f'class folder {os.path.join(p, c)}') for p in parts.values() for c in _class_folders(p)})
    if len(classes) < 2:
        raise Error(f"{root} has {len(classes)} class folder{'s' if len(classes) != 1 else ''}"
                    f"{' (' + classes[0] + ')' if classes else ''}: expected one subfolder of images per class, "
                    f"at least two (PATH/cat/*.png, PATH/dog/*.png)")
    files = {}  # split -> [(path, label)]
    for split, folder in parts.items():
        for label, c in enumerate(classes):
            found = [p for d in _class_folders(folder) if unicodedata.normalize('NFC', d) == c
                     for p in _image_files(os.path.join(folder, d))]
            files.setdefault(split, []).extend((p, label) for p in found)

    # sizes from the headers first (no pixels read), then every image read once at the chosen size
    from PIL import Image
    sizes = {}
    for items in files.values():
        for path, _ in items:
            try:
                with Image.open(path) as im:
                    sizes[im.size] = sizes.get(im.size, 0) + 1
            except Exception:
                pass  # counted below, when it is read
    notes = []
    if image_size == 0:
        square = [s for s in sizes if s[0] == s[1]]
        if len(sizes) == 1 and square and square[0][0] <= MAX_SIDE:
            image_size = square[0][0]
        else:
            image_size = 32
            common = ', '.join(f"{w}x{h} ({n})" for (w, h), n in sorted(sizes.items(), key=lambda kv: -kv[1])[:3])
            notes.append(f"resized every image to 32x32 (sizes found: {common}{', ...' if len(sizes) > 3 else ''}); "
                         f"set --image_size=S for another size")
    not_square = sum(n for (w, h), n in sizes.items() if w != h)
    if not_square:
        notes.append(f"{not_square} image{'s' if not_square > 1 else ''} not square: centre-cropped")
    pix, bad, colour = {}, [], False
    for items in files.values():
        for path, _ in items:
            try:
                a = prepare_image(open_image(path), dict(image_size=image_size, channels=3))
            except ImageError as e:
                bad.append(str(e))
                continue
            colour = colour or ((a.max(0) - a.min(0)) > 0.1).mean() > 0.01  # more than a trace of colour
            pix[path] = (a * 255).round().astype(np.uint8)
    if bad:
        notes.insert(0, f"skipped {len(bad)} unreadable image file{'s' if len(bad) > 1 else ''} ({bad[0]})")
    if not colour:  # grey images: the three channels are equal, keep one
        pix = {p: a[:1] for p, a in pix.items()}
    for split, items in files.items():
        kept = [(p, y) for p, y in items if p in pix]
        counts = np.bincount([y for _, y in kept], minlength=len(classes))
        if split in (None, 'train') and (counts == 0).any():
            raise Error(f"class folder {classes[int(np.argmin(counts))]!r} in {parts[split]} has no readable "
                        f"images: every class needs images ({', '.join(IMAGE_EXTENSIONS)})")
        files[split] = kept

    if None in files:  # split each class by a fixed seed
        rng = np.random.default_rng(SPLIT_SEED)
        split_items = {'train': [], 'val': [], 'test': []}
        for label in range(len(classes)):
            items = [it for it in files[None] if it[1] == label]
            if len(items) < 3:
                raise Error(f"class {classes[label]!r} has {len(items)} readable image"
                            f"{'s' if len(items) != 1 else ''}: each class needs at least 3 (train, val, test)")
            order = rng.permutation(len(items))
            n_val, n_test = (max(1, round(f * len(items))) for f in (VAL_FRACTION, TEST_FRACTION))
            split_items['val'] += [items[i] for i in order[:n_val]]
            split_items['test'] += [items[i] for i in order[n_val:n_val + n_test]]
            split_items['train'] += [items[i] for i in order[n_val + n_test:]]
        files = split_items
    elif 'val' not in files:  # train/ and test/ only: validate on a tenth of train
        rng = np.random.default_rng(SPLIT_SEED)
        order = rng.permutation(len(files['train']))
        n_val = max(1, round(VAL_FRACTION * len(order)))
        files['val'] = [files['train'][i] for i in order[:n_val]]
        files['train'] = [files['train'][i] for i in order[n_val:]]
    for split in ('train', 'val', 'test'):
        if not files[split]:
            raise Error(f"the {split} split of {root} has no readable images")
    texts = {}
    for folder in dict.fromkeys([root] + list(parts.values())):
        texts.update(read_metadata(folder))
    uncaptioned = sum(p not in texts for items in files.values() for p, _ in items)
    if texts and uncaptioned:
        notes.append(f"{uncaptioned} image{'s' if uncaptioned > 1 else ''} without a caption in metadata.jsonl/.csv: "
                     "captioned by their class names")
    splits = {s: (np.stack([pix[p] for p, _ in files[s]]), np.array([y for _, y in files[s]], dtype=np.int64),
                  [texts.get(p, classes[y]) for p, y in files[s]] if texts else None)
              for s in ('train', 'val', 'test')}
    return splits, classes, notes


# ----------------------------------------------------------------------------------------------------
# any data set

def load_dataset(dataset, idx_dir='', image_size=0, quiet=False):
    """-> ({'train', 'val', 'test'}: (images uint8 (N, C, S, S), labels int64 (N,), captions or None)),
    info). info: the data set as later scripts need it (its name, class names, the sequences' label key,
    image size and channels, how an image file is prepared, where its captions come from, where it came
    from, and a fingerprint of the images)."""
    if dataset in IDX_SETS:
        if image_size not in (0, 28):
            raise Error(f"{IDX_SETS[dataset]['title']} images are 28x28; image_size must be 0 (their own) "
                        f"or 28, got {image_size}")
        s = IDX_SETS[dataset]
        splits = idx_splits(dataset, idx_dir)
        info = dict(dataset=dataset, name=dataset, title=s['title'], classes=s['classes'], key=s['key'], captions='style',
                    image_size=28, channels=1, fit=s['fit'], idx_dir=os.path.abspath(idx_dir) if idx_dir else '')
    else:
        splits, classes, notes = folder_splits(dataset, image_size)
        path = os.path.abspath(dataset)
        info = dict(dataset=path, name=os.path.basename(path.rstrip(os.sep)) or 'images', title=path, classes=classes,
                    key='class', captions='metadata' if splits['train'][2] is not None else 'class names', image_size=int(splits['train'][0].shape[-1]), channels=int(splits['train'][0].shape[1]),
                    fit=None, idx_dir='')
        if not quiet:
            for n in notes:
                print(f"warning: {n}")
    h = hashlib.sha256()
    for s in ('train', 'val', 'test'):
        h.update(splits[s][0].tobytes())
        h.update(splits[s][1].tobytes())
    info['fingerprint'] = h.hexdigest()
    if not quiet:
        counts = ', '.join(f"{s} {len(splits[s][1]):,}" for s in ('train', 'val', 'test'))
        print(f"{info['title']}: {len(info['classes'])} classes, {info['image_size']}x{info['image_size']} "
              f"{'colour' if info['channels'] == 3 else 'grey'}; {counts}")
    return splits, info


def reload_dataset(info, quiet=True):
    """The data set that info (from a tokenizer checkpoint) describes, loaded again the same way; a
    warning if its images are no longer the ones the tokenizer saw."""
    splits, again = load_dataset(info['dataset'], info.get('idx_dir', ''), info['image_size'], quiet=quiet)
    if again['fingerprint'] != info['fingerprint']:
        print(f"warning: the images of {info['title']} differ from those the tokenizer was trained on (files added "
              f"or changed since vqvae.py ran); going on with the images as they are now")
    return splits, again


