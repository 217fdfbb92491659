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
