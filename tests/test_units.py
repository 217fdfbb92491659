"""Unit tests: settings, the data sets and images, the codec and sequence tasks, batching, the models."""
import gzip
import os
import unicodedata

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import configurator
import dataset
from common import atomic_write, load_checkpoint, pick_dtype, save_checkpoint
from dataset import augmented, shifted
from model import FSQ, GPT, GPTConfig, ImageCNN, Muon, ResidualFSQ, VQVAE
from prepare import PAD, Codec, code_alphabet, label_targets, training_pairs
from sample import frechet_distance, read_labels

DIGITS = list('0123456789')
FASHION = dataset.IDX_SETS['fashion']['classes']


def mnist_codec(codebook_size=26, tokens=8, block=32):
    return Codec(DIGITS, 'number', codebook_size, tokens, block)


# settings ---------------------------------------------------------------------------------------------

def settings():
    return dict(__file__='x.py', lr=1e-3, n=4, name='a', flag=False, opt=None, _private=1, CONSTANT='c')


@pytest.fixture(autouse=True)
def rules_for_these_settings(monkeypatch):
    """The made-up settings above have no rule but their type."""
    monkeypatch.setattr(configurator, 'RULES', dict(configurator.RULES, lr=None, n=None, name=None, flag=None, opt=None))


def test_configure_overrides_and_types(tmp_path):
    cfg = tmp_path / 'c.py'
    cfg.write_text("lr = 3e-4\nn = 8\n")
    g = settings()
    out = configurator.configure(g, [str(cfg), '--n=16', '--name=007', '--flag=True', '--lr=1'])
    assert (g['lr'], g['n'], g['name'], g['flag']) == (1.0, 16, '007', True)
    assert isinstance(g['lr'], float) and out['n'] == 16 and '_private' not in out and 'CONSTANT' not in out


@pytest.mark.parametrize('argv, message', [
    (['--nope=1'], "unknown config key 'nope'"),
    (['--CONSTANT=d'], "unknown config key 'CONSTANT'"),
    (['--n=abc'], 'n expects a whole number'),
    (['--flag=1'], 'flag expects True or False'),
    (['--n'], 'expected --key=value'),
    (['missing_config.py'], "config file 'missing_config.py' not found"),
])
def test_configure_errors(argv, message):
    with pytest.raises(SystemExit, match=message):
        configurator.configure(settings(), argv)


# IDX data sets ----------------------------------------------------------------------------------------

def write_idx(path, arr, magic_type=0x08):
    header = bytes([0, 0, magic_type, arr.ndim]) + b''.join(int(d).to_bytes(4, 'big') for d in arr.shape)
    with gzip.open(path, 'wb') as f:
        f.write(header + arr.astype(np.uint8).tobytes())


def test_read_idx_round_trip(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    labels = np.arange(5, dtype=np.uint8)
    write_idx(tmp_path / 'im.gz', images)
    write_idx(tmp_path / 'lb.gz', labels)
    assert np.array_equal(dataset.read_idx(str(tmp_path / 'im.gz')), images)
    assert np.array_equal(dataset.read_idx(str(tmp_path / 'lb.gz')), labels)


def test_read_idx_errors(tmp_path):
    images = np.zeros((5, 28, 28), dtype=np.uint8)
    write_idx(tmp_path / 'ok.gz', images)
    raw = (tmp_path / 'ok.gz').read_bytes()
    (tmp_path / 'cut.gz').write_bytes(raw[:len(raw) // 2])
    with pytest.raises(SystemExit, match='not a complete gzip file'):
        dataset.read_idx(str(tmp_path / 'cut.gz'))
    with gzip.open(tmp_path / 'short.gz', 'wb') as f:  # valid gzip, IDX data cut short
        f.write(gzip.decompress(raw)[:-100])
    with pytest.raises(SystemExit, match='truncated or corrupted'):
        dataset.read_idx(str(tmp_path / 'short.gz'))
    write_idx(tmp_path / 'float.gz', images, magic_type=0x0D)
    with pytest.raises(SystemExit, match='not an IDX file of unsigned bytes'):
        dataset.read_idx(str(tmp_path / 'float.gz'))
    (tmp_path / 'plain.gz').write_bytes(b'not gzip at all')
    with pytest.raises(SystemExit, match='not a complete gzip file'):
        dataset.read_idx(str(tmp_path / 'plain.gz'))
    assert dataset.read_idx(str(tmp_path / 'ok.gz'), sha256='0' * 64) is None  # checksum mismatch


def test_load_idx_missing_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match='idx_dir must hold the four MNIST files'):
        dataset.load_idx('mnist', str(tmp_path / 'nowhere'))
    with pytest.raises(SystemExit, match='idx_dir must hold the four Fashion-MNIST files'):
        dataset.load_idx('fashion', str(tmp_path / 'nowhere'))


def small_fashion(folder, n_train=60, n_test=20):
    """A small Fashion-MNIST in IDX files, and the SHA-256 of its decompressed contents."""
    import hashlib
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 256, (n_train, 28, 28)), np.arange(n_train) % 10,
              rng.integers(0, 256, (n_test, 28, 28)), np.arange(n_test) % 10]
    shas = []
    folder.mkdir(exist_ok=True)
    for name, a in zip(dataset.IDX_NAMES, arrays):
        write_idx(folder / (name + '.gz'), a)
        shas.append(hashlib.sha256(gzip.decompress((folder / (name + '.gz')).read_bytes())).hexdigest())
    return arrays, shas


def test_fashion_loader_on_a_small_idx_set(tmp_path, monkeypatch):
    """Fashion-MNIST reads as MNIST does, with its class names and 'class:' key; every file is checked
    against the SHA-256 of its contents, and a wrong file is an error, not a silent swap."""
    monkeypatch.chdir(tmp_path)
    arrays, shas = small_fashion(tmp_path / 'src')
    with pytest.raises(SystemExit, match='does not match the SHA-256 of Fashion-MNIST'):
        dataset.load_idx('fashion', str(tmp_path / 'src'))
    monkeypatch.setitem(dataset.IDX_SETS['fashion'], 'sha256', shas)
    monkeypatch.setattr(dataset, 'N_TRAIN', 50)
    splits, info = dataset.load_dataset('fashion', str(tmp_path / 'src'), quiet=True)
    assert [len(splits[s][1]) for s in ('train', 'val', 'test')] == [50, 10, 20]
    assert splits['train'][0].shape == (50, 1, 28, 28) and splits['train'][0].dtype == np.uint8
    assert np.array_equal(splits['test'][0][:, 0], arrays[2]) and np.array_equal(splits['val'][1], arrays[1][50:])
    assert info['classes'] == FASHION and info['key'] == 'class' and info['channels'] == 1
    assert info['classes'][0] == 'T-shirt/top' and info['classes'][9] == 'Ankle boot'
    assert os.path.isfile(os.path.join('data', 'fashion', 't10k-labels-idx1-ubyte.gz'))  # cached
    again, info2 = dataset.load_dataset('fashion', '', quiet=True)  # from the cache, no source needed
    assert info2['fingerprint'] == info['fingerprint']
    with pytest.raises(SystemExit, match='image_size must be 0'):
        dataset.load_dataset('fashion', '', image_size=32, quiet=True)


def test_load_idx_checksum_mismatch_is_fetched_once_more(tmp_path, monkeypatch):
    """A corrupted copy is removed and fetched again; if the source is bad too, a clear error."""
    monkeypatch.chdir(tmp_path)
    src = tmp_path / 'src'
    src.mkdir()
    for name in dataset.IDX_NAMES:
        write_idx(src / (name + '.gz'), np.zeros((3, 2, 2), dtype=np.uint8))
    with pytest.raises(SystemExit, match='does not match the SHA-256 of MNIST'):
        dataset.load_idx('mnist', str(src))
    assert not os.path.exists(os.path.join('data', 'mnist', 'train-images-idx3-ubyte.gz'))


def test_load_mnist_from_dir(mnist_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    splits = dataset.idx_splits('mnist', mnist_dir)
    assert [len(splits[s][0]) for s in ('train', 'val', 'test')] == [50000, 10000, 10000]
    assert splits['train'][0].shape[1:] == (1, 28, 28) and splits['train'][0].max() == 255
    assert os.path.isfile(os.path.join('data', 'mnist', 't10k-labels-idx1-ubyte.gz'))  # cached
    # a corrupted cache file is replaced from the source
    with open(os.path.join('data', 'mnist', 't10k-labels-idx1-ubyte.gz'), 'r+b') as f:
        f.seek(100)
        f.write(b'\xff\xff\xff')
    assert np.array_equal(dataset.load_idx('mnist', mnist_dir)['test_labels'], splits['test'][1].astype(np.uint8))


# a folder of class folders ----------------------------------------------------------------------------

def draw(shape, colour, size=40, seed=0):
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
            a = draw('circle' if k % 2 else 'square', (200, 60 * k % 255, 40), size, seed=10 * k + i)
            im = Image.fromarray(a).convert('L') if grey else Image.fromarray(a)
            im.save(root / name / f'{i}.{"jpg" if i % 3 == 0 else "png"}')
    return root


def test_folder_of_class_folders(tmp_path):
    root = make_folder(tmp_path / 'imgs', ['red square', 'Ünïcode círcle', 'third'], n=10)
    (root / 'third' / 'broken.png').write_bytes(b'\x89PNG not really')
    (root / 'third' / 'notes.txt').write_text('not an image, not counted')
    splits, info = dataset.load_dataset(str(root), quiet=True)
    assert info['classes'] == sorted(['red square', unicodedata.normalize('NFC', 'Ünïcode círcle'), 'third'])
    assert info['channels'] == 3 and info['image_size'] == 40 and info['key'] == 'class' and info['fit'] is None
    assert [len(splits[s][1]) for s in ('train', 'val', 'test')] == [24, 3, 3]  # 10 per class: 8/1/1
    for s in ('train', 'val', 'test'):
        assert splits[s][0].shape[1:] == (3, 40, 40) and sorted(set(splits[s][1].tolist())) == [0, 1, 2]
    again, info2 = dataset.load_dataset(str(root), quiet=True)  # the same split every time
    assert info2['fingerprint'] == info['fingerprint'] and np.array_equal(again['test'][0], splits['test'][0])
    grey, ginfo = dataset.load_dataset(str(make_folder(tmp_path / 'grey', ['a', 'b'], grey=True)), image_size=16, quiet=True)
    assert ginfo['channels'] == 1 and grey['train'][0].shape[1:] == (1, 16, 16)


def test_folder_with_its_own_splits(tmp_path):
    for split in ('train', 'test'):
        make_folder(tmp_path / 'set' / split, ['cat', 'dog'], n=10)
    splits, info = dataset.load_dataset(str(tmp_path / 'set'), quiet=True)
    assert info['classes'] == ['cat', 'dog'] and len(splits['test'][1]) == 20
    assert len(splits['val'][1]) == 2 and len(splits['train'][1]) == 18  # val: a tenth of train/


@pytest.mark.parametrize('setup, message', [
    (lambda r: make_folder(r, ['only']), r'has 1 class folder \(only\)'),
    (lambda r: (make_folder(r, ['a', 'b']), (r / 'empty').mkdir()), "class folder 'empty'.*has no readable images"),
    (lambda r: make_folder(r, ['a', 'b'], n=2), "class 'a' has 2 readable images: each class needs at least 3"),
    (lambda r: make_folder(r, ['a', 'b#c']), "cannot hold '#'"),
    (lambda r: (make_folder(r / 'train', ['a', 'b']), make_folder(r / 'val', ['a', 'b'])), 'needs train/ and test/'),
    (lambda r: r.mkdir(), 'has 0 class folders'),
])
def test_folder_errors(tmp_path, setup, message):
    root = tmp_path / 'imgs'
    setup(root)
    with pytest.raises(SystemExit, match=message):
        dataset.load_dataset(str(root), quiet=True)
    with pytest.raises(SystemExit, match='is not a folder'):
        dataset.load_dataset(str(tmp_path / 'nowhere'), quiet=True)


def test_mixed_sizes_are_resized_with_a_counted_warning(tmp_path, capsys):
    from PIL import Image
    root = make_folder(tmp_path / 'imgs', ['a', 'b'], n=4)
    Image.fromarray(draw('circle', (0, 200, 0), 50)[:, :30]).save(root / 'a' / 'tall.png')
    splits, info = dataset.load_dataset(str(root))
    out = capsys.readouterr().out
    assert info['image_size'] == 32 and 'resized every image to 32x32' in out and '1 image not square' in out
    assert splits['train'][0].shape[2:] == (32, 32)


# images -------------------------------------------------------------------------------------------------

def test_prepare_image_as_the_data_set_was_made(tmp_path):
    """A dark drawing on light paper, any size, becomes MNIST's light digit on black in 28x28; a
    transparent background is seen as paper; a folder image is centre-cropped and resized."""
    from PIL import Image
    canvas = np.full((90, 70, 3), 240, dtype=np.uint8)
    canvas[20:70, 30:38] = 20  # a thick vertical stroke
    Image.fromarray(canvas).save(tmp_path / 'one.png')
    mnist = dict(image_size=28, channels=1, fit=dataset.IDX_SETS['mnist']['fit'])
    a = dataset.read_image_file(str(tmp_path / 'one.png'), mnist)
    assert a.shape == (1, 28, 28) and a.max() > 0.8 and a[0, :4].max() == 0  # light on black, in the 20x20 box
    assert a[0, 4:24].max(1).min() > 0.5  # the stroke fills the box's height
    rgba = np.zeros((60, 60, 4), dtype=np.uint8)
    rgba[10:50, 28:32] = (0, 0, 0, 255)  # dark strokes, transparent elsewhere
    Image.fromarray(rgba, 'RGBA').save(tmp_path / 'alpha.png')
    b = dataset.read_image_file(str(tmp_path / 'alpha.png'), mnist)
    assert b.max() > 0.8 and b[0, 14, 14] > 0.5
    colour = dataset.read_image_file(str(tmp_path / 'one.png'), dict(image_size=16, channels=3, fit=None))
    assert colour.shape == (3, 16, 16)
    Image.new('L', (40, 40), 255).save(tmp_path / 'blank.png')
    with pytest.raises(SystemExit, match='is blank'):
        dataset.read_image_file(str(tmp_path / 'blank.png'), mnist)
    (tmp_path / 'noise.png').write_text('not an image')
    with pytest.raises(SystemExit, match='cannot read image'):
        dataset.read_image_file(str(tmp_path / 'noise.png'), mnist)


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
    dataset.save_image_grid(images, tmp_path / 'g.png', 3, row_labels=['T-shirt/top', 'Ünïcode'])
    im = Image.open(tmp_path / 'g.png')
    plain = Image.open((dataset.save_image_grid(images, tmp_path / 'p.png', 3), tmp_path / 'p.png')[1])
    assert im.mode == 'RGB' and im.height == plain.height and im.width > plain.width + 40


# codec and sequence tasks -------------------------------------------------------------------------------

@pytest.mark.parametrize('codebook_size, tokens', [(26, 8), (10, 4), (1000, 16), (6400, 49)])
def test_codec_round_trip(codebook_size, tokens):
    codec = mnist_codec(codebook_size, tokens, block=tokens + 20)
    codes = np.random.default_rng(0).integers(0, codebook_size, tokens)
    text = codec.image_text(codes)
    assert len(text) == tokens and np.array_equal(codec.image_codes(text), codes)
    seq, ids = codec.line('generation', 3, codes)
    assert len(ids) == codec.block_size and codec.decode(ids) == seq
    assert codec.parse(seq) == ('generation', 3, pytest.approx(codes))
    ids = codec.encode(text)
    assert min(ids) >= codec.code_offset and codec.vocab_size == codec.code_offset + codebook_size
    assert not set(text) & set(codec.itos[:codec.code_offset])  # codes are disjoint from the text
    if codebook_size <= 26:
        assert set(text) <= set('ABCDEFGHIJKLMNOPQRSTUVWXYZ')


def test_code_characters_are_printable():
    """Codebooks above 26 use letters a terminal shows: no Private Use Area, no combining marks, no
    right-to-left scripts, never a character of the text."""
    chars = code_alphabet(6400, exclude='éÀ')
    assert len(set(chars)) == 6400 and 'é' not in chars and 'À' not in chars
    for c in chars:
        assert c.isprintable() and not 0xE000 <= ord(c) <= 0xF8FF
        assert unicodedata.category(c) in ('Lu', 'Ll', 'Lo') and unicodedata.bidirectional(c) == 'L'
    codec = Codec(['café', 'thé'], 'class', 125, 49, 80)
    assert not set(codec.code_chars) & set('caféthé')


def test_templates_and_padding():
    codec = mnist_codec()
    codes = [15, 19, 10, 17, 22, 2, 8, 20]
    assert codec.image_text(codes) == 'PTKRWCIU'
    assert codec.line('generation', 7, codes)[0] == 'number:7, image:PTKRWCIU.' + '#' * 20  # 12 tokens of 32
    assert codec.line('classification', 7, codes)[0] == 'image:PTKRWCIU, number:7.' + '#' * 20
    assert codec.text('generation', 7, upto='image') == 'number:7, image:'
    assert codec.text('classification', codes=codes, upto='label') == 'image:PTKRWCIU, number:'
    assert codec.decode(codec.tokens('classification', upto='image')) == 'image:'
    assert codec.itos[:codec.code_offset] == ['#', ', image:', ', number:', '.', *DIGITS, 'image:', 'number:']
    assert codec.vocab_size == 42 and codec.label_ids == [codec.stoi[d] for d in DIGITS]
    assert codec.parse('number:7, image:PTKRWCIU.####')[:2] == ('generation', 7)
    for bad in ('number:7, image:PTKRWCI.', 'number:x, image:PTKRWCIU.', 'number:7, image:PTKRWCIU',
                'number:7, image:PTKRWCI5.', 'image:PTKRWCIU, number:72.'):
        assert codec.parse(bad) is None
    assert codec.label_position('generation') == 1 and codec.label_position('classification') == 10
    with pytest.raises(SystemExit, match='block_size 11 is too short'):
        mnist_codec(block=11)
    with pytest.raises(SystemExit, match="class name '.' is also a piece of the sequence format"):
        Codec(['a', '.'], 'class', 26, 8, 32)


def test_data_prepared_with_a_token_per_character():
    """A vocabulary of single characters (data prepared before template pieces were tokens) still reads."""
    new = mnist_codec()
    chars = sorted(set('number:, image:.#') | set(DIGITS))
    old = Codec(DIGITS, 'number', 26, 8, 32, vocab=chars + list(new.code_chars), tasks=new.tasks)
    codes = [15, 19, 10, 17, 22, 2, 8, 20]
    for task in new.tasks:
        text, ids = old.line(task, 7, codes)
        assert text == new.line(task, 7, codes)[0].replace('#', '') + '#' * 7 and old.decode(ids) == text
    assert old.label_position('generation') == 7 and old.label_position('classification') == 23


def test_class_names_as_words():
    """The text shows the class name; the model sees it as one token."""
    codec = Codec(FASHION, 'class', 125, 49, 72)
    codes = list(range(49))
    s, ids = codec.line('classification', 0, codes)
    assert s.startswith('image:') and s.split('#')[0].endswith(', class:T-shirt/top.')
    assert len(ids) == 72 and ids.index(codec.stoi['T-shirt/top']) == 1 + 49 + 1 and codec.decode(ids) == s
    assert codec.line('generation', 9, codes)[0].startswith('class:Ankle boot, image:')
    assert codec.parse(s)[:2] == ('classification', 0)
    assert len(codec.tokens('generation', 9, codes)) == len(codec.tokens('generation', 8, codes)) == 1 + 1 + 1 + 49 + 1
    assert codec.labels('Sneaker,bag') == [7, 8] and codec.labels('') == list(range(10)) and codec.labels('3') == [3]
    assert mnist_codec().labels('0123') == [0, 1, 2, 3] and mnist_codec().labels('7') == [7]
    for bad in ('Sneakers', '10', 'x7'):
        with pytest.raises(SystemExit, match='unknown class'):
            codec.label(bad)
    with pytest.raises(SystemExit, match='unknown class'):
        mnist_codec().labels('7x')
    assert ids[codec.label_position('classification')] == codec.label_ids[0]
    other = Codec(['Shirt', 'Shirts', 'Bag'], 'class', 26, 8, 40)  # whole names, one token each, even a name's prefix
    assert [other.itos[i] for i in other.label_ids] == ['Shirt', 'Shirts', 'Bag'] and len(set(other.label_ids)) == 3


@pytest.mark.parametrize('bad', ['x', '10', '-1', '7.5'])
def test_bad_labels_and_characters(bad):
    codec = mnist_codec()
    with pytest.raises(SystemExit, match='unknown class'):
        codec.label(bad)
    with pytest.raises(SystemExit, match='not in the vocabulary'):
        codec.encode('image:ABC!, number:')
    with pytest.raises(SystemExit, match='8 code characters'):
        codec.image_codes('ABC')


def test_training_pairs_start_at_sequence_starts():
    codec = mnist_codec()
    rng = np.random.default_rng(0)
    pairs = [codec.line('generation' if d % 2 else 'classification', d, rng.integers(0, 26, 8)) for d in range(10)]
    lines = [s for s, _ in pairs]
    seqs = torch.tensor([ids for _, ids in pairs])
    X, Y = training_pairs(seqs, codec.stoi[PAD])
    assert X.shape == Y.shape == (10, 11)  # 12 tokens ('number:', '7', ', image:', 8 codes, '.'): 11 predict 11
    for line, x, y, ids in zip(lines, X, Y, seqs):
        assert codec.decode(x) == line[:line.index('.')]  # every row is one whole sequence from its start
        assert torch.equal(y, ids[1:12]) and codec.decode(y).endswith('.')


def test_label_targets_come_from_the_tasks():
    """The targets that are a class name, found from the task table."""
    codec = Codec(FASHION, 'class', 26, 8, 40)
    tasks, labels = torch.tensor([0, 1, 0, 1]), torch.tensor([0, 0, 8, 9])
    pairs = [codec.line(list(codec.tasks)[t], y, [1] * 8) for t, y in zip(tasks.tolist(), labels.tolist())]
    X, Y = training_pairs(torch.tensor([ids for _, ids in pairs]), codec.stoi[PAD])
    mask = label_targets(codec, tasks, X.size(1))
    assert (mask.sum(1) == 1).all()
    assert [codec.decode(y[m]) for y, m in zip(Y, mask)] == ['T-shirt/top', 'T-shirt/top', 'Bag', 'Ankle boot']


# models -----------------------------------------------------------------------------------------------

def tiny_gpt(vocab_size=50):
    torch.manual_seed(0)
    return GPT(GPTConfig(block_size=32, vocab_size=vocab_size, n_layer=2, n_head=2, n_embd=32)).eval()


def test_kv_cache_gives_the_same_tokens():
    """Greedy generation with the cache draws what the whole prefix read again at every step draws."""
    codec = mnist_codec()
    model = tiny_gpt(codec.vocab_size)
    idx = codec.prompts('generation', 'image', labels=range(10))
    mask = codec.code_mask()
    out = model.generate(idx, 8, temperature=0, allowed=mask)
    assert (out[:, idx.size(1):] >= codec.code_offset).all()  # only image codes were drawn
    plain = idx
    for _ in range(8):  # nanoGPT's loop: the whole prefix every step
        logits, _ = model(plain, targets=torch.zeros_like(plain))
        plain = torch.cat([plain, logits[:, -1].masked_fill(~mask, -float('inf')).argmax(-1, keepdim=True)], 1)
    assert torch.equal(out, plain)
    cache = [[None, None] for _ in model.transformer.h]  # prefix + several tokens at once == one pass
    full, _ = model(out, targets=torch.zeros(10, 11, dtype=torch.long))  # 3 prompt tokens, 8 codes
    model(out[:, :5], kv_cache=cache)
    part, _ = model(out[:, 5:], kv_cache=cache)
    assert torch.allclose(part[:, -1], full[:, 10], atol=1e-5)


def test_guidance_changes_the_distribution():
    """Classifier-free guidance against 'image:': other tokens than without guidance, still codes only."""
    codec = mnist_codec()
    model = tiny_gpt(codec.vocab_size)
    idx, uncond = codec.prompts('generation', 'image', labels=range(10)), codec.prompts('classification', 'image', labels=[None] * 10)
    assert codec.decode(uncond[0]) == 'image:'
    run = lambda g: model.generate(idx, 8, allowed=codec.code_mask(), generator=torch.Generator().manual_seed(1),
                                   guidance=g, uncond=uncond)
    guided = run(2.0)
    assert torch.equal(guided, run(2.0)) and not torch.equal(guided, run(0.0))
    assert (guided[:, idx.size(1):] >= codec.code_offset).all()


def test_weighted_loss():
    """weights of ones give the plain loss; padding targets (-1) stay out whatever their weight."""
    model = tiny_gpt()
    x, y = torch.randint(50, (4, 16)), torch.randint(50, (4, 16))
    y[:, -3:] = -1
    plain = model(x, y)[1]
    assert torch.allclose(model(x, y, weights=torch.ones(4, 16))[1], plain)
    w = torch.ones(4, 16)
    w[:, -3:] = 100.0
    assert torch.allclose(model(x, y, weights=w)[1], plain)
    w[:, 0] = 10.0
    assert not torch.allclose(model(x, y, weights=w)[1], plain)


@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
@pytest.mark.parametrize('shape', [(32, 96), (96, 32), (64, 64)])
def test_muon_orthogonalizes(shape, dtype):
    """Muon's update has the gradient's shape and every singular value near 1, the gradient's spread over
    a decade."""
    torch.manual_seed(0)
    k = min(shape)
    u0, v0 = torch.linalg.qr(torch.randn(shape[0], k))[0], torch.linalg.qr(torch.randn(shape[1], k))[0]
    g = u0 @ torch.diag(torch.logspace(0, 1, k)) @ v0.T  # singular values from 1 to 10
    u = Muon.orthogonalize(g, 5, dtype)
    s = torch.linalg.svdvals(u.float())
    assert u.shape == g.shape and u.dtype == dtype and s.min() > 0.5 and s.max() < 1.5
    assert (u.float() * g).sum() > 0  # a descent direction


def test_optimizers_split_the_parameters():
    """With muon, the blocks' matrices go to Muon and everything else (tied embeddings, norms) to AdamW,
    each parameter once; a step with Muon changes every parameter that has a gradient."""
    model = tiny_gpt().train()
    adamw, muon = model.configure_optimizers(0.1, 1e-3, (0.9, 0.99), 'cpu', muon=True)
    hidden = [p for p in model.transformer.h.parameters() if p.dim() == 2]
    in_muon = [p for g in muon.param_groups for p in g['params']]
    in_adamw = [p for g in adamw.param_groups for p in g['params']]
    assert {id(p) for p in in_muon} == {id(p) for p in hidden} and not {id(p) for p in in_muon} & {id(p) for p in in_adamw}
    assert len(in_muon) + len(in_adamw) == len(list(model.parameters()))
    assert len(model.configure_optimizers(0.1, 1e-3, (0.9, 0.99), 'cpu')) == 1  # AdamW alone
    before = [p.detach().clone() for p in model.parameters()]
    x = torch.randint(50, (4, 16))
    model(x, x)[1].backward()
    adamw.step()
    muon.step()
    assert all(not torch.equal(a, p) for a, p in zip(before, model.parameters()))


def test_code_features_tie_codes_together():
    """GPT.embeddings: with code_features, codes with the same features get the same learned part, text
    tokens none; the buffer travels in the state dict; logits use the same (tied) matrix."""
    torch.manual_seed(0)
    q = FSQ((5, 3))
    feats = q.features()
    assert feats.shape == (15, 2 + 5 + 3) and torch.equal(feats[:, 2:].sum(1), torch.full((15,), 2.0))
    cfg = GPTConfig(block_size=32, vocab_size=24 + 15, n_layer=1, n_head=2, n_embd=32, code_offset=24,
                    code_features=feats.size(1))
    model = GPT(cfg).eval()
    model.code_features.copy_(feats)
    with torch.no_grad():
        model.transformer.wte.weight.zero_()
    emb = model.embeddings()
    assert emb.shape == (39, 32) and (emb[:24] == 0).all() and (emb[24:].abs().sum(1) > 0).all()
    assert torch.allclose(emb[24:], model.code_proj(feats))
    other = GPT(cfg)
    other.load_state_dict(model.state_dict())
    assert torch.equal(other.code_features, feats)
    x = torch.randint(39, (2, 10))
    logits, _ = model(x, torch.zeros_like(x))
    h = model.transformer.ln_f(model.transformer.h[0](F.embedding(x, emb) + model.transformer.wpe(torch.arange(10))))
    assert torch.allclose(logits, h @ emb.t(), atol=1e-5)


def test_bfloat16_attention_matches():
    """On a CPU in bfloat16 the attention is spelled out (faster backward); it must agree with the fused
    kernel, and with the key/value cache."""
    model = tiny_gpt()
    x = torch.randint(50, (4, 20))
    ref, _ = model(x, torch.zeros_like(x))
    model16 = tiny_gpt().to(torch.bfloat16)
    out, _ = model16(x, torch.zeros_like(x))
    assert (out.float() - ref).abs().max() < 0.05
    cache = [[None, None] for _ in model16.transformer.h]
    model16(x[:, :12], kv_cache=cache)
    part, _ = model16(x[:, 12:], kv_cache=cache)
    assert (part[:, -1].float() - ref[:, -1]).abs().max() < 0.05


def test_next_token_probs_only_over_the_classes():
    """Reading: the next token's distribution over the class tokens only."""
    codec = Codec(FASHION, 'class', 26, 8, 40)
    model = tiny_gpt(codec.vocab_size)
    idx = codec.prompts('classification', 'label', codes=[[0] * 8, [3] * 8, [5] * 8])
    assert codec.decode(idx[0]) == 'image:AAAAAAAA, class:'
    p = model.next_token_probs(idx, codec.label_ids, batch_size=2)
    logits, _ = model(idx)
    assert p.shape == (3, 10) and torch.allclose(p, F.softmax(logits[:, -1, codec.label_ids], -1))


def test_read_labels_second_look():
    """Only images read below the threshold get the extra views; threshold 0 is one plain reading."""
    torch.manual_seed(0)
    tok = VQVAE(kind='conv', quantizer='fsq', hidden=16, grid=4).eval()
    codec = mnist_codec(1000, 16, 40)
    model = tiny_gpt(vocab_size=codec.vocab_size)
    x = torch.rand(6, 1, 28, 28)
    codes = tok.encode(x)
    once = model.next_token_probs(codec.prompts('classification', 'label', codes=codes), codec.label_ids)
    assert torch.allclose(read_labels(model, codec, tok, codes, x, views=5, threshold=0.0), once)
    again = read_labels(model, codec, tok, codes, x, views=5, threshold=1.0, batch_size=4)
    assert again.shape == (6, 10) and torch.allclose(again.sum(1), torch.ones(6)) and not torch.allclose(again, once)
    # mirror: the second view is the mirror image
    flipped = tok.encode(x.flip(3))
    both = once.log() + model.next_token_probs(codec.prompts('classification', 'label', codes=flipped), codec.label_ids).log()
    two = read_labels(model, codec, tok, codes, x, views=2, threshold=1.0, mirror=True)
    assert torch.allclose(two, torch.softmax(both / 2, 1), atol=1e-5)


@pytest.mark.parametrize('tokens, codes', [(8, 26), (4, 300)])
def test_vqvae_shapes_and_kmeans(tokens, codes):
    torch.manual_seed(0)
    tok = VQVAE(tokens_per_image=tokens, codebook_size=codes, latent_dim=32)
    x = torch.rand(64, 1, 28, 28)
    recon, c, loss = tok(x)
    assert recon.shape == x.shape and c.shape == (64, tokens) and loss.item() > 0
    z = tok.encode_latents(x).reshape(-1, 32 // tokens).detach()
    tok.quantizer.init_kmeans(z[:max(codes, 64 * tokens)], iters=2, generator=torch.Generator().manual_seed(0))
    assert torch.equal(tok.encode(x), tok.quantizer.codes(tok.encode_latents(x)))
    assert tok.decode(tok.encode(x)).shape == (64, 1, 28, 28)


@pytest.mark.parametrize('kind', ['conv', 'mlp'])
def test_vqvae_bce_decodes_logits(kind):
    torch.manual_seed(0)
    tok = VQVAE(kind=kind, quantizer='fsq', hidden=16, levels=(5, 3), tokens_per_image=4, loss='bce')
    x = (torch.rand(5, 1, 28, 28) > 0.8).float()
    recon, codes, loss = tok(x)
    assert 0 < recon.min() <= recon.max() < 1 and loss.item() > 0
    assert torch.allclose(loss, torch.nn.functional.binary_cross_entropy(recon, x), atol=1e-4)
    assert torch.allclose(tok.decode(codes), recon, atol=1e-6)
    with pytest.raises(SystemExit, match="loss 'mse' or 'bce'"):
        VQVAE(kind=kind, loss='l1')


def test_fsq_codes_round_trip():
    q = FSQ((8, 5, 5, 5))
    assert q.codebook_size == 1000
    codes = torch.arange(1000)
    v = q.vectors(codes)
    assert v.shape == (1000, 4) and v.min() >= -1 and v.max() <= 1
    assert len(set(map(tuple, v.tolist()))) == 1000  # every code its own vector
    assert q.codes(torch.atanh(torch.rand(100000, 4) * 1.998 - 0.999)).unique().numel() == 1000  # all reachable
    z = torch.randn(50, 7, 4, requires_grad=True)
    zq, c, loss = q(z)
    assert c.shape == (50, 7) and c.min() >= 0 and c.max() < 1000 and loss.item() == 0
    assert torch.allclose(zq, q.vectors(c)) and torch.equal(c, q.codes(z))
    zq.sum().backward()  # straight-through: the encoder gets a gradient
    assert z.grad.abs().sum() > 0


@pytest.mark.parametrize('grid, quantizer, size, channels', [(4, 'fsq', 28, 1), (7, 'fsq', 28, 1), (4, 'vq', 28, 1),
                                                         (8, 'fsq', 32, 3), (4, 'fsq', 32, 3), (6, 'fsq', 24, 3)])
def test_conv_tokenizer_grid(grid, quantizer, size, channels):
    torch.manual_seed(0)
    tok = VQVAE(kind='conv', quantizer=quantizer, grid=grid, hidden=16, levels=(5, 3), codebook_size=40, latent_dim=6,
                image_size=size, channels=channels)
    x = torch.rand(5, channels, size, size)
    recon, codes, loss = tok(x)
    assert tok.tokens_per_image == grid * grid and codes.shape == (5, grid * grid)
    assert tok.codebook_size == (15 if quantizer == 'fsq' else 40) and codes.max() < tok.codebook_size
    assert recon.shape == x.shape and torch.equal(tok.encode(x), codes)
    out = tok.decode(codes)
    assert out.shape == x.shape and 0 <= out.min() <= out.max() <= 1
    # raster order: changing the top-left corner of the image changes the first code, not the last
    y = x.clone()
    y[:, :, :6, :6] = 1 - y[:, :, :6, :6]
    assert (tok.encode(y)[:, -1] == codes[:, -1]).all()
    with pytest.raises(SystemExit, match='halves'):
        VQVAE(kind='conv', quantizer='fsq', grid=5, image_size=size)


def test_residual_fsq_coarse_to_fine():
    """Residual FSQ: the first stage's codes are plain FSQ's, each later stage refines what is left, the
    codes come stage by stage, and codes -> vectors gives back the quantised latents."""
    torch.manual_seed(0)
    z = (torch.rand(64, 9, 4) * 1.6 - 0.8).requires_grad_()
    q3 = ResidualFSQ((8, 5, 5, 5), 3)
    zq, codes, loss = q3(z)
    assert codes.shape == (64, 27) and codes.max() < 1000 and loss.item() == 0 and q3.codebook_size == 1000
    assert torch.equal(codes[:, :9], FSQ((8, 5, 5, 5)).codes(z)) and torch.equal(codes, q3.codes(z))
    assert torch.allclose(q3.vectors(codes), zq, atol=1e-6)
    errors = [(ResidualFSQ((8, 5, 5, 5), s)(z)[0] - z).abs().mean().item() for s in (1, 2, 3)]
    assert errors[0] > 2 * errors[1] > 4 * errors[2]
    zq.sum().backward()
    assert z.grad.abs().sum() > 0
    tok = VQVAE(kind='conv', quantizer='fsq', grid=4, hidden=16, levels=(5, 3), stages=2)
    x = torch.rand(5, 1, 28, 28)
    recon, codes, _ = tok(x)
    assert tok.tokens_per_image == 32 and codes.shape == (5, 32) and torch.equal(tok.encode(x), codes)
    assert tok.decode(codes).shape == x.shape and tok.model_args['stages'] == 2
    with pytest.raises(SystemExit, match="stages above 1 need kind 'conv'"):
        VQVAE(kind='1d', quantizer='fsq', stages=2)


def test_latent_norm_keeps_every_channel_moving():
    """An encoder whose latents sit deep in tanh's tail gives every image the same code (each channel
    stuck at one level); latent_norm standardises them first, so the codes differ again, and its
    running statistics travel with the weights."""
    torch.manual_seed(0)
    x = torch.rand(8, 1, 28, 28)
    stuck = VQVAE(kind='conv', quantizer='fsq', hidden=16, levels=(5, 3))
    normed = VQVAE(kind='conv', quantizer='fsq', hidden=16, levels=(5, 3), latent_norm=True)
    normed.load_state_dict(stuck.state_dict(), strict=False)  # the same encoder and decoder
    for tok in (stuck, normed):
        with torch.no_grad():
            tok.encoder[-1].bias.fill_(20.0)
    assert stuck(x)[1].unique().numel() == 1
    normed.latent_norm.momentum = None  # a cumulative average: after one batch, the running statistics are its own
    codes = normed(x)[1]  # training mode: the batch's own statistics
    assert codes.unique().numel() > 5 and normed.model_args['latent_norm'] is True
    again = VQVAE(**normed.model_args)
    again.load_state_dict(normed.state_dict())
    again.eval()  # the saved running statistics (their variance unbiased: a rare code may differ)
    assert (again.encode(x) == codes).float().mean() > 0.95
    with pytest.raises(SystemExit, match="latent_norm needs quantizer 'fsq'"):
        VQVAE(kind='conv', quantizer='vq', latent_norm=True)


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


def test_pick_dtype():
    assert pick_dtype('cpu') in ('float32', 'bfloat16') and pick_dtype('mps') == 'float32'
    assert pick_dtype('cpu', 'float32') == 'float32'
    with pytest.raises(SystemExit, match="dtype must be 'auto', 'float32', 'bfloat16' or 'float16'"):
        pick_dtype('cpu', 'float64')


def test_checkpoints_are_atomic_and_safe(tmp_path):
    path = str(tmp_path / 'ckpt.pt')
    save_checkpoint({'a': torch.ones(2), 'meta': {'n': 1}}, path)
    assert load_checkpoint(path, 'thing')['meta'] == {'n': 1}
    assert os.listdir(tmp_path) == ['ckpt.pt']  # no temporary file left behind

    def fail(tmp):
        open(tmp, 'w').write('half')
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, fail)
    assert load_checkpoint(path, 'thing')['meta'] == {'n': 1} and os.listdir(tmp_path) == ['ckpt.pt']
    with pytest.raises(SystemExit, match='no thing at'):
        load_checkpoint(str(tmp_path / 'none.pt'), 'thing')
    (tmp_path / 'bad.pt').write_bytes(b'garbage')
    with pytest.raises(SystemExit, match='is not a readable thing'):
        load_checkpoint(str(tmp_path / 'bad.pt'), 'thing')


class Evil:
    def __reduce__(self):
        return (os.system, ('echo pwned',))


def test_checkpoints_never_run_code(tmp_path):
    path = str(tmp_path / 'evil.pt')
    torch.save({'x': Evil()}, path)
    with pytest.raises(SystemExit, match='is not a readable thing'):
        load_checkpoint(path, 'thing')


def test_download_from_mirrors(mnist_dir, tmp_path, monkeypatch):
    """With no idx_dir the files come from the mirrors, in order; a corrupted download is removed and
    fetched once more; the result is cached under data/mnist."""
    import io
    import urllib.error
    monkeypatch.chdir(tmp_path)
    calls = []

    def urlopen(url, timeout):
        calls.append(url)
        name = url.rsplit('/', 1)[1]
        if url.startswith(dataset.IDX_SETS['mnist']['mirrors'][0]):
            raise urllib.error.URLError('mirror down')
        data = open(os.path.join(mnist_dir, name), 'rb').read()
        if name.startswith('t10k-labels') and sum(c.endswith(name) for c in calls) == 2:
            data = data[:1000]  # the first download that got through is cut short
        return io.BytesIO(data)
    monkeypatch.setattr(dataset.urllib.request, 'urlopen', urlopen)
    m = dataset.load_idx('mnist', '')
    assert m['test_labels'].shape == (10000,) and m['train_images'].shape == (60000, 28, 28)
    assert sum('t10k-labels' in c for c in calls) == 4  # mirror 1 down, mirror 2 bad; again: down, good
    assert sorted(os.listdir(os.path.join('data', 'mnist'))) == sorted(n + '.gz' for n in dataset.IDX_NAMES)


def test_no_network_and_no_files(tmp_path, monkeypatch):
    import urllib.error
    monkeypatch.chdir(tmp_path)

    def urlopen(url, timeout):
        raise urllib.error.URLError('no network')
    monkeypatch.setattr(dataset.urllib.request, 'urlopen', urlopen)
    with pytest.raises(SystemExit, match='could not be downloaded.*pass --idx_dir=DIR'):
        dataset.load_idx('fashion', '')
