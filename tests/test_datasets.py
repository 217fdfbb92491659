"""datasets: MNIST and Fashion-MNIST from IDX files (checked, cached, downloaded), folders of class folders."""
import gzip
import os
import unicodedata

import numpy as np
import pytest

from make_data import draw_blob, make_folder, small_fashion, write_idx
from tinyvlm import Error, datasets

FASHION = datasets.IDX_SETS['fashion']['classes']


def test_read_idx_round_trip(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    labels = np.arange(5, dtype=np.uint8)
    write_idx(tmp_path / 'im.gz', images)
    write_idx(tmp_path / 'lb.gz', labels)
    assert np.array_equal(datasets.read_idx(str(tmp_path / 'im.gz')), images)
    assert np.array_equal(datasets.read_idx(str(tmp_path / 'lb.gz')), labels)


def test_read_idx_errors(tmp_path):
    images = np.zeros((5, 28, 28), dtype=np.uint8)
    write_idx(tmp_path / 'ok.gz', images)
    raw = (tmp_path / 'ok.gz').read_bytes()
    (tmp_path / 'cut.gz').write_bytes(raw[:len(raw) // 2])
    with pytest.raises(Error, match='not a complete gzip file'):
        datasets.read_idx(str(tmp_path / 'cut.gz'))
    with gzip.open(tmp_path / 'short.gz', 'wb') as f:  # valid gzip, IDX data cut short
        f.write(gzip.decompress(raw)[:-100])
    with pytest.raises(Error, match='truncated or corrupted'):
        datasets.read_idx(str(tmp_path / 'short.gz'))
    write_idx(tmp_path / 'float.gz', images, magic_type=0x0D)
    with pytest.raises(Error, match='not an IDX file of unsigned bytes'):
        datasets.read_idx(str(tmp_path / 'float.gz'))
    (tmp_path / 'plain.gz').write_bytes(b'not gzip at all')
    with pytest.raises(Error, match='not a complete gzip file'):
        datasets.read_idx(str(tmp_path / 'plain.gz'))
    assert datasets.read_idx(str(tmp_path / 'ok.gz'), sha256='0' * 64) is None  # checksum mismatch


def test_load_idx_missing_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(Error, match='idx_dir must hold the four MNIST files'):
        datasets.load_idx('mnist', str(tmp_path / 'nowhere'))
    with pytest.raises(Error, match='idx_dir must hold the four Fashion-MNIST files'):
        datasets.load_idx('fashion', str(tmp_path / 'nowhere'))


def test_fashion_loader_on_a_small_idx_set(tmp_path, monkeypatch):
    """Fashion-MNIST reads as MNIST does, with its class names and 'class:' key; every file is checked
    against the SHA-256 of its contents, and a wrong file is an error, not a silent swap."""
    monkeypatch.chdir(tmp_path)
    arrays, shas = small_fashion(tmp_path / 'src')
    with pytest.raises(Error, match='does not match the SHA-256 of Fashion-MNIST'):
        datasets.load_idx('fashion', str(tmp_path / 'src'))
    monkeypatch.setitem(datasets.IDX_SETS['fashion'], 'sha256', shas)
    monkeypatch.setattr(datasets, 'N_TRAIN', 50)
    splits, info = datasets.load_dataset('fashion', str(tmp_path / 'src'), quiet=True)
    assert [len(splits[s][1]) for s in ('train', 'val', 'test')] == [50, 10, 20]
    assert splits['train'][0].shape == (50, 1, 28, 28) and splits['train'][0].dtype == np.uint8
    assert np.array_equal(splits['test'][0][:, 0], arrays[2]) and np.array_equal(splits['val'][1], arrays[1][50:])
    assert info['classes'] == FASHION and info['key'] == 'class' and info['channels'] == 1
    assert info['classes'][0] == 'T-shirt/top' and info['classes'][9] == 'Ankle boot'
    assert os.path.isfile(os.path.join('data', 'fashion', 't10k-labels-idx1-ubyte.gz'))  # cached
    again, info2 = datasets.load_dataset('fashion', '', quiet=True)  # from the cache, no source needed
    assert info2['fingerprint'] == info['fingerprint']
    with pytest.raises(Error, match='image_size must be 0'):
        datasets.load_dataset('fashion', '', image_size=32, quiet=True)


def test_load_idx_checksum_mismatch_is_fetched_once_more(tmp_path, monkeypatch):
    """A corrupted copy is removed and fetched again; if the source is bad too, a clear error."""
    monkeypatch.chdir(tmp_path)
    src = tmp_path / 'src'
    src.mkdir()
    for name in datasets.IDX_NAMES:
        write_idx(src / (name + '.gz'), np.zeros((3, 2, 2), dtype=np.uint8))
    with pytest.raises(Error, match='does not match the SHA-256 of MNIST'):
        datasets.load_idx('mnist', str(src))
    assert not os.path.exists(os.path.join('data', 'mnist', 'train-images-idx3-ubyte.gz'))


def test_load_mnist_from_dir(mnist_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    splits = datasets.idx_splits('mnist', mnist_dir)
    assert [len(splits[s][0]) for s in ('train', 'val', 'test')] == [50000, 10000, 10000]
    assert splits['train'][0].shape[1:] == (1, 28, 28) and splits['train'][0].max() == 255
    assert os.path.isfile(os.path.join('data', 'mnist', 't10k-labels-idx1-ubyte.gz'))  # cached
    # a corrupted cache file is replaced from the source
    with open(os.path.join('data', 'mnist', 't10k-labels-idx1-ubyte.gz'), 'r+b') as f:
        f.seek(100)
        f.write(b'\xff\xff\xff')
    assert np.array_equal(datasets.load_idx('mnist', mnist_dir)['test_labels'], splits['test'][1].astype(np.uint8))


def test_folder_of_class_folders(tmp_path):
    root = make_folder(tmp_path / 'imgs', ['red square', 'Ünïcode círcle', 'third'], n=10)
    (root / 'third' / 'broken.png').write_bytes(b'\x89PNG not really')
    (root / 'third' / 'notes.txt').write_text('not an image, not counted')
    splits, info = datasets.load_dataset(str(root), quiet=True)
    assert info['classes'] == sorted(['red square', unicodedata.normalize('NFC', 'Ünïcode círcle'), 'third'])
    assert info['channels'] == 3 and info['image_size'] == 40 and info['key'] == 'class' and info['fit'] is None
    assert [len(splits[s][1]) for s in ('train', 'val', 'test')] == [24, 3, 3]  # 10 per class: 8/1/1
    for s in ('train', 'val', 'test'):
        assert splits[s][0].shape[1:] == (3, 40, 40) and sorted(set(splits[s][1].tolist())) == [0, 1, 2]
    again, info2 = datasets.load_dataset(str(root), quiet=True)  # the same split every time
    assert info2['fingerprint'] == info['fingerprint'] and np.array_equal(again['test'][0], splits['test'][0])
    grey, ginfo = datasets.load_dataset(str(make_folder(tmp_path / 'grey', ['a', 'b'], grey=True)), image_size=16, quiet=True)
    assert ginfo['channels'] == 1 and grey['train'][0].shape[1:] == (1, 16, 16)


def test_folder_with_its_own_splits(tmp_path):
    for split in ('train', 'test'):
        make_folder(tmp_path / 'set' / split, ['cat', 'dog'], n=10)
    splits, info = datasets.load_dataset(str(tmp_path / 'set'), quiet=True)
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
    with pytest.raises(Error, match=message):
        datasets.load_dataset(str(root), quiet=True)
    with pytest.raises(Error, match='is not a folder'):
        datasets.load_dataset(str(tmp_path / 'nowhere'), quiet=True)


def test_mixed_sizes_are_resized_with_a_counted_warning(tmp_path, capsys):
    from PIL import Image
    root = make_folder(tmp_path / 'imgs', ['a', 'b'], n=4)
    Image.fromarray(draw_blob('circle', (0, 200, 0), 50)[:, :30]).save(root / 'a' / 'tall.png')
    splits, info = datasets.load_dataset(str(root))
    out = capsys.readouterr().out
    assert info['image_size'] == 32 and 'resized every image to 32x32' in out and '1 image not square' in out
    assert splits['train'][0].shape[2:] == (32, 32)


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
        if url.startswith(datasets.IDX_SETS['mnist']['mirrors'][0]):
            raise urllib.error.URLError('mirror down')
        data = open(os.path.join(mnist_dir, name), 'rb').read()
        if name.startswith('t10k-labels') and sum(c.endswith(name) for c in calls) == 2:
            data = data[:1000]  # the first download that got through is cut short
        return io.BytesIO(data)
    monkeypatch.setattr(datasets.urllib.request, 'urlopen', urlopen)
    m = datasets.load_idx('mnist', '')
    assert m['test_labels'].shape == (10000,) and m['train_images'].shape == (60000, 28, 28)
    assert sum('t10k-labels' in c for c in calls) == 4  # mirror 1 down, mirror 2 bad; again: down, good
    assert sorted(os.listdir(os.path.join('data', 'mnist'))) == sorted(n + '.gz' for n in datasets.IDX_NAMES)


def test_no_network_and_no_files(tmp_path, monkeypatch):
    import urllib.error
    monkeypatch.chdir(tmp_path)

    def urlopen(url, timeout):
        raise urllib.error.URLError('no network')
    monkeypatch.setattr(datasets.urllib.request, 'urlopen', urlopen)
    with pytest.raises(Error, match='could not be downloaded.*pass --idx_dir=DIR'):
        datasets.load_idx('fashion', '')
