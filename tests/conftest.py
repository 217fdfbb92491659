import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
SHARED_MNIST = os.path.join(REPO, '..', 'shared', 'mnist')


def run_script(script, *args, cwd, check=True, timeout=600):
    """Run one of the repo's scripts as a user would, in cwd; returns the CompletedProcess."""
    env = dict(os.environ, PYTHONUNBUFFERED='1')
    p = subprocess.run([sys.executable, os.path.join(REPO, script), *args], cwd=cwd, env=env,
                       capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"{script} {' '.join(args)} failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return p


@pytest.fixture(scope='session')
def mnist_dir():
    """The real MNIST files: ../shared/mnist beside the repo, or the repo's own data/mnist cache."""
    for d in (SHARED_MNIST, os.path.join(REPO, 'data', 'mnist')):
        if all(os.path.isfile(os.path.join(d, f)) for f in (
                'train-images-idx3-ubyte.gz', 'train-labels-idx1-ubyte.gz',
                't10k-images-idx3-ubyte.gz', 't10k-labels-idx1-ubyte.gz')):
            return os.path.abspath(d)
    pytest.skip('MNIST files not found in ../shared/mnist or data/mnist')


TINY = ['--n_layer=1', '--n_head=2', '--n_embd=32', '--batch_size=32', '--eval_iters=2',
        '--eval_classify=100', '--warmup_iters=5', '--lr_decay_iters=40', '--log_interval=10']


def error_line(p):
    """A failed script must say one line, 'error: ...', and exit non-zero: no traceback."""
    assert p.returncode != 0
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('error: '), p.stderr[-2000:]
    return lines[0]


@pytest.fixture(scope='session')
def work(mnist_dir, tmp_path_factory):
    """A folder where vqvae.py and prepare.py have run with their defaults (one epoch of the tokenizer),
    and the published MLP tokenizer beside them (out/vqvae_seed, data/seed_vlm)."""
    w = tmp_path_factory.mktemp('work')
    p = run_script('vqvae.py', f'--idx_dir={mnist_dir}', '--max_epochs=1', '--min_iters=0', cwd=w)
    assert 'PSNR' in p.stdout
    run_script('prepare.py', '--augment=1', cwd=w)
    run_script('vqvae.py', os.path.join(REPO, 'config/vqvae_seed.py'), '--max_epochs=1', '--min_iters=0', '--kmeans_samples=2000', cwd=w)
    run_script('prepare.py', '--tokenizer=out/vqvae_seed/ckpt.pt', '--data_dir=data/seed_vlm', '--augment=0', cwd=w)
    return w
