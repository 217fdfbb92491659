"""Every setting checked before any work starts (one rule each, in configurator.RULES), images as people
have them, and one training run per out_dir."""
import hashlib
import os
import random
import re
import signal
import struct
import subprocess
import sys
import time
import zlib

import numpy as np
import pytest

import configurator
import dataset
from conftest import REPO, run_script

SCRIPTS = ('vqvae.py', 'prepare.py', 'train.py', 'sample.py', 'bench.py')


def settings_of(script):
    """A script's settings and defaults: its block between the two '# ---' lines, run on its own."""
    lines = open(os.path.join(REPO, script), encoding='utf-8').read().splitlines()
    marks = [i for i, line in enumerate(lines) if line.startswith('# ----')]
    ns = {}
    exec('\n'.join(lines[marks[0] + 1:marks[1]]), ns)
    return dict(ns, __file__=os.path.join(REPO, script))


def configure(script, *argv):
    return configurator.configure(settings_of(script), list(argv))


@pytest.mark.parametrize('script', SCRIPTS)
def test_every_setting_has_a_rule_and_its_default_passes(script, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    s = settings_of(script)
    for key in configurator.configure(dict(s), []):
        configurator.rule_of(key, script)  # KeyError if a setting has no rule


BAD = [  # script, setting, value, what the error says is allowed (at least one per rule)
    ('vqvae.py', 'dataset', 'no/such/folder', "'mnist', 'fashion' or a folder"),
    ('vqvae.py', 'idx_dir', 'no/such/folder', 'an existing folder'),
    ('vqvae.py', 'out_dir', 'README.md', 'a folder (README.md is a file)'),
    ('vqvae.py', 'out_dir', '', 'a folder path'),
    ('vqvae.py', 'image_size', 7, '8 to 128'),
    ('vqvae.py', 'image_size', 1000, '8 to 128'),
    ('vqvae.py', 'kind', 'transformer', "one of 'conv', '1d', 'mlp'"),
    ('vqvae.py', 'depth', -1, 'from 0 to 24'),
    ('vqvae.py', 'stages', 0, 'a whole number from 1 to 8'),
    ('vqvae.py', 'quantizer', 'lfq', "one of 'fsq', 'vq'"),
    ('vqvae.py', 'loss', 'l1', "one of 'bce', 'mse'"),
    ('vqvae.py', 'levels', '5,x', 'whole numbers separated by commas'),
    ('vqvae.py', 'levels', '1,5', 'whole numbers of 2 to 64'),
    ('vqvae.py', 'levels', '64,64,64', 'product (the codebook) is at most'),
    ('vqvae.py', 'grid', -1, 'a whole number from 0 to 64'),
    ('vqvae.py', 'hidden', 1, 'from 2 to 4096'),
    ('vqvae.py', 'latent_dim', 0, 'from 1 to 65536'),
    ('vqvae.py', 'tokens_per_image', 0, 'from 1 to 4096'),
    ('vqvae.py', 'codebook_size', 0, 'from 1 to 22352'),
    ('vqvae.py', 'beta', -0.5, 'at least 0'),
    ('vqvae.py', 'learning_rate', 0, 'more than 0'),
    ('vqvae.py', 'learning_rate', float('nan'), 'a number more than 0'),
    ('vqvae.py', 'warmup_iters', -1, 'at least 0'),
    ('vqvae.py', 'batch_size', 0, 'a positive whole number'),
    ('vqvae.py', 'max_epochs', 0, 'a positive whole number'),
    ('vqvae.py', 'patience', -3, 'a positive whole number'),
    ('vqvae.py', 'min_iters', -1, 'a whole number of at least 0'),
    ('vqvae.py', 'kmeans_samples', 0, 'a positive whole number'),
    ('vqvae.py', 'seed', -1, 'a whole number from 0'),
    ('vqvae.py', 'device', 'cuda', 'no CUDA device'),
    ('vqvae.py', 'device', 'tpu', "'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'"),
    ('vqvae.py', 'dtype', 'float64', "'auto', 'float32', 'bfloat16' or 'float16'"),
    ('prepare.py', 'tokenizer', ' ', 'a path'),
    ('prepare.py', 'data_dir', '', 'a folder path'),
    ('prepare.py', 'block_size', 4, '0 (as long as needed) or 8 to 65535'),
    ('prepare.py', 'augment', -1, 'from 0 to 100'),
    ('prepare.py', 'scale', 1.0, 'less than 1'),
    ('prepare.py', 'shares', '1,-1', 'numbers of at least 0 separated by commas'),
    ('prepare.py', 'shares', '0,0', 'not all 0'),
    ('prepare.py', 'shares', 'x', 'one per task'),
    ('train.py', 'init_from', 'gpt2', "one of 'scratch', 'resume'"),
    ('train.py', 'data_dir', '', 'a path'),
    ('train.py', 'eval_interval', 0, 'a positive whole number'),
    ('train.py', 'log_interval', 0, 'a positive whole number'),
    ('train.py', 'eval_iters', 0, 'a positive whole number'),
    ('train.py', 'eval_classify', 0, 'a positive whole number'),
    ('train.py', 'n_layer', 0, 'from 1 to 256'),
    ('train.py', 'n_head', 0, 'from 1 to 256'),
    ('train.py', 'n_embd', 0, 'from 1 to 65536'),
    ('train.py', 'dropout', 1.0, 'at least 0 and less than 1'),
    ('train.py', 'label_weight', 0, 'more than 0'),
    ('train.py', 'batch_size', 0, 'a positive whole number'),
    ('train.py', 'gradient_accumulation_steps', 0, 'a positive whole number'),
    ('train.py', 'max_iters', -5, 'a positive whole number'),
    ('train.py', 'weight_decay', -0.1, 'at least 0'),
    ('train.py', 'beta2', -0.1, 'at least 0'),
    ('train.py', 'beta1', 1.0, 'less than 1'),
    ('train.py', 'grad_clip', -1, 'at least 0'),
    ('train.py', 'ema', 1.0, 'at least 0 and less than 1'),
    ('train.py', 'tail_average', 1.5, 'at least 0 and at most 1'),
    ('train.py', 'lr_decay_iters', 0, 'a positive whole number'),
    ('train.py', 'min_lr', -1e-4, 'at least 0'),
    ('train.py', 'backend', 'tcp', "one of '', 'gloo', 'nccl', 'mpi'"),
    ('sample.py', 'mode', 'fly', "one of 'eval', 'generate', 'classify'"),
    ('sample.py', 'num_samples', 0, 'from 1 to 10000'),
    ('sample.py', 'temperature', -1, 'at least 0'),
    ('sample.py', 'temperature', float('inf'), 'at most 10'),
    ('sample.py', 'top_k', -1, 'at least 0'),
    ('sample.py', 'guidance', -0.5, 'at least 0'),
    ('sample.py', 'views', 10, 'from 1 to 9'),
    ('sample.py', 'view_threshold', 1.5, 'at most 1'),
    ('sample.py', 'save_npy', 'README.md/x.npy', 'a file path in a folder that can be written'),
    ('sample.py', 'png_dir', 'README.md', 'a folder (README.md is a file)'),
    ('sample.py', 'png_size', 5000, 'from 0 to 4096'),
    ('sample.py', 'reference', 'tests', 'a file path'),
    ('sample.py', 'fidelity_samples', 0, 'from 1 to 100000'),
    ('sample.py', 'data_dir', 'README.md', 'a folder (README.md is a file)'),
    ('bench.py', 'repeats', 0, 'a positive whole number'),
    ('bench.py', 'n_samples', 0, 'a positive whole number'),
    ('bench.py', 'train_window', 0, 'a positive whole number'),
    ('bench.py', 'train_procs', '1,0', 'process counts separated by commas'),
]
CROSS = [
    ('vqvae.py', ['--stages=2', '--kind=1d'], "stages above 1 need kind 'conv' and quantizer 'fsq'"),
    ('train.py', ['--n_embd=100', '--n_head=3'], 'n_embd (100) must be a multiple of n_head (3)'),
    ('train.py', ['--batch_size=10', '--gradient_accumulation_steps=3'], 'must be a multiple of gradient_accumulation_steps'),
    ('train.py', ['--min_lr=0.1', '--learning_rate=0.01'], 'min_lr (0.1) must be at most learning_rate (0.01)'),
    ('train.py', ['--max_iters=50', '--lr_decay_iters=50'], 'warmup_iters (100) must be at most lr_decay_iters (50)'),
    ('train.py', ['--device=cpu', '--dtype=float16'], "dtype 'float16' needs a GPU"),
]


@pytest.mark.parametrize('script, key, value, allowed', BAD)
def test_bad_value_is_one_line_naming_setting_value_and_rule(script, key, value, allowed, monkeypatch):
    monkeypatch.chdir(REPO)
    if key == 'device' and value == 'cuda':
        import torch
        if torch.cuda.is_available():
            pytest.skip('this machine has CUDA')
    with pytest.raises(SystemExit) as e:
        configure(script, f'--{key}={value}')
    message = str(e.value)
    assert message.startswith(f"error: {key}=") and repr(value) in message and allowed in message
    assert '\n' not in message


@pytest.mark.parametrize('script, argv, message', CROSS)
def test_settings_that_must_agree(script, argv, message, monkeypatch):
    monkeypatch.chdir(REPO)
    with pytest.raises(SystemExit, match=re.escape(message)):
        configure(script, *argv)


def snapshot(folder):
    out = {}
    for root, _, files in os.walk(folder):
        for f in files:
            p = os.path.join(root, f)
            out[p] = hashlib.sha256(open(p, 'rb').read()).hexdigest()
    return out


@pytest.mark.parametrize('args', [
    ('train.py', '--max_iters=-5'),
    ('train.py', '--batch_size=0'),
    ('train.py', '--device=cuda:7'),
    ('sample.py', '--mode=generate', '--num_samples=0'),
    ('sample.py', '--temperature=-1'),
    ('vqvae.py', '--levels=5,,5'),
    ('prepare.py', '--augment=1.5'),
    ('prepare.py', '--shares=1,2,3'),
    ('vqvae.py', '--dataset=nowhere'),
])
def test_bad_settings_end_to_end(args, tmp_path):
    """As a user runs them: exit status 1, one 'error:' line, no traceback, nothing under out/ or data/ changed."""
    for d in ('out/vlm', 'data/vlm'):
        os.makedirs(tmp_path / d)
        (tmp_path / d / 'keep.txt').write_text('a file a user has')
    before = snapshot(tmp_path)
    p = run_script(*args, cwd=tmp_path, check=False)
    assert p.returncode == 1 and 'Traceback' not in p.stderr + p.stdout
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('error: '), p.stderr
    assert snapshot(tmp_path) == before


def test_random_settings_never_raise_anything_but_a_clear_error(tmp_path, monkeypatch):
    """Random --key=value combinations (fixed seed) for every script: configure returns or says one
    'error:' line; it never raises anything else."""
    monkeypatch.chdir(tmp_path)
    rng = random.Random(1234)
    values = ['0', '-1', '1', '3', '7', '100000', '1e9', '-1e-9', '0.5', 'nan', 'inf', '-inf', 'True', 'None',
              "''", 'x', '5,5,5', '8,', 'cuda', 'cpu', 'mps', 'auto', 'float16', 'bfloat16', '/', '\\x00',
              '../..', 'out/x', '[1, 2]', '{}', '9' * 5000, '1,2,3', 'conv', 'mlp', 'fsq', 'é', ' ']
    for script in SCRIPTS:
        keys = sorted(configurator.configure(settings_of(script), []))
        for _ in range(150):
            argv = [f"--{rng.choice(keys)}={rng.choice(values)}" for _ in range(rng.randint(1, 4))]
            try:
                configure(script, *argv)
            except SystemExit as e:
                assert str(e).startswith('error: ') and '\n' not in str(e), (script, argv, str(e))


# images as people have them ------------------------------------------------------------------------------

MNIST_INFO = dict(image_size=28, channels=1, fit=dataset.IDX_SETS['mnist']['fit'])


def stroke(size=(60, 80), dark=True):
    """A grey picture of a vertical bar: dark on light paper, or light on black."""
    a = np.full(size[::-1], 235 if dark else 10, dtype=np.uint8)
    half = max(1, size[0] // 15)
    a[size[1] // 5: 4 * size[1] // 5, size[0] // 2 - half: size[0] // 2 + half] = 20 if dark else 240
    return a


def is_bar(a, vertical=True):
    """A prepared image (1, 28, 28) holds one light bar on black, standing (or lying)."""
    ys, xs = np.nonzero(a[0] > 0.5)
    assert len(ys) and a[0, 0, 0] < 0.1
    return (np.ptp(ys) > 2 * np.ptp(xs)) if vertical else (np.ptp(xs) > 2 * np.ptp(ys))


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


@pytest.mark.parametrize('kind, suffix', [('alpha, dark strokes', 'png'), ('alpha, light strokes', 'png'),
                                          ('palette', 'png'), ('16-bit', 'png'), ('CMYK JPEG', 'jpg'),
                                          ('EXIF-rotated photo', 'jpg'), ('animated GIF', 'gif'),
                                          ('large JPEG scan', 'jpg'), ('tiny', 'png')])
def test_image_kinds_read_correctly(kind, suffix, tmp_path):
    path = str(tmp_path / f'img.{suffix}')
    make_kind(kind, path)
    a = dataset.read_image_file(path, MNIST_INFO)
    assert a.shape == (1, 28, 28) and 0 <= a.min() <= a.max() <= 1 and is_bar(a)
    rgb = dataset.read_image_file(path, dict(image_size=16, channels=3, fit=None))
    assert rgb.shape == (3, 16, 16)


def huge_png(path, w, h):
    """A PNG whose header claims w x h pixels (its data is a few bytes: a decompression bomb's header)."""
    chunk = lambda kind, data: struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data))
    with open(path, 'wb') as f:
        f.write(b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', w, h, 8, 0, 0, 0, 0))
                + chunk(b'IDAT', zlib.compress(b'\x00' * 100)) + chunk(b'IEND', b''))


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
    with pytest.raises(SystemExit) as e:
        dataset.read_image_file(path, MNIST_INFO)
    assert str(e.value).startswith('error: ') and message in str(e.value) and '\n' not in str(e.value)


# one training run per out_dir ----------------------------------------------------------------------------

def test_one_training_run_per_out_dir(tmp_path):
    """A second train.py on a busy out_dir is refused; once the first is killed, the lock is free."""
    from test_units import mnist_codec
    from common import write_json
    codec = mnist_codec(26, 8, 32)  # a tiny prepared data set, made here
    d = tmp_path / 'data' / 'vlm'
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    files = {}
    for split, n in (('train', 200), ('val', 50)):
        codes, labels, tasks = rng.integers(0, 26, (n, 8)), rng.integers(0, 10, n), rng.integers(0, 2, n)
        ids = np.array([codec.line(list(codec.tasks)[t], y, c)[1] for c, y, t in zip(codes, labels, tasks)], dtype=np.uint16)
        for name, write in ((f'{split}.bin', lambda p: ids.tofile(p)), (f'{split}_codes.npy', lambda p: np.save(p, codes)),
                            (f'{split}_labels.npy', lambda p: np.save(p, labels)), (f'{split}_tasks.npy', lambda p: np.save(p, tasks))):
            write(str(d / name))
            files[name] = hashlib.sha256((d / name).read_bytes()).hexdigest()
    write_json(str(d / 'meta.json'), dict(dataset={}, classes=codec.classes, key='number', tasks=codec.tasks, vocab=codec.itos,
                                          block_size=32, tokens_per_image=8, codebook_size=26, tokenizer='none',
                                          tokenizer_sha256='', dtype='uint16', files=files))
    tiny = ['--n_layer=1', '--n_head=2', '--n_embd=32', '--batch_size=8', '--eval_iters=1', '--eval_classify=10',
            '--embed_codes=False', '--log_interval=1']
    first = subprocess.Popen([sys.executable, os.path.join(REPO, 'train.py'), *tiny, '--max_iters=1000000',
                              '--eval_interval=100000'], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and first.poll() is None:
            lock = tmp_path / 'out' / 'vlm' / '.lock'
            if lock.exists() and lock.read_text().strip() == str(first.pid):
                break
            time.sleep(0.2)
        assert first.poll() is None, first.stderr.read()
        p = run_script('train.py', *tiny, '--max_iters=2', '--eval_interval=1', cwd=tmp_path, check=False)
        assert p.returncode == 1 and p.stderr.strip() == (
            f"error: another train.py is running in out/vlm (pid {first.pid}): wait for it to end, or choose another folder")
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    p = run_script('train.py', *tiny, '--max_iters=2', '--eval_interval=1', cwd=tmp_path)  # the killed run left no stuck lock
    assert (tmp_path / 'out' / 'vlm' / 'ckpt_2.pt').is_file()
