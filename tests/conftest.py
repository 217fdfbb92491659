import http.client
import json
import os
import re
import subprocess
import sys
import threading

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


TINY = ['--n_layer=1', '--n_head=2', '--n_embd=32', '--batch_size=32', '--eval_iters=2', '--cycles=1',
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


@pytest.fixture(scope='session')
def server(work):
    """python sample.py --mode=serve over a tiny model trained here on every single-image task, captions
    both ways too, on a free port of 127.0.0.1."""
    run_script('prepare.py', '--augment=0', '--shares=1,1,0,0,1,1', '--data_dir=data/captioned', cwd=work)
    run_script('train.py', *TINY, '--max_iters=20', '--eval_interval=20', '--out_dir=out/serve', '--data_dir=data/captioned',
               cwd=work)
    proc = subprocess.Popen([sys.executable, os.path.join(REPO, 'sample.py'), '--mode=serve', '--port=0',
                             '--out_dir=out/serve'], cwd=work, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=dict(os.environ, PYTHONUNBUFFERED='1'))
    lines = []
    while not (lines and re.search(r'at http://localhost:(\d+)/', lines[-1])) and len(lines) < 20:
        lines.append(proc.stdout.readline())
        if not lines[-1]:
            break
    m = re.search(r'at http://localhost:(\d+)/', lines[-1])
    if not m:
        proc.kill()
    assert m, ''.join(lines)
    threading.Thread(target=proc.stdout.read, daemon=True).start()  # keep its log flowing
    yield int(m.group(1))
    proc.terminate()
    proc.wait(10)


def request(port, method, path, body=None, headers=None):
    """One HTTP request to the server -> (status, the JSON answer or None, the response's headers)."""
    c = http.client.HTTPConnection('127.0.0.1', port, timeout=60)
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    c.request(method, path, body=data, headers={'Content-Type': 'application/json'} if headers is None else headers)
    r = c.getresponse()
    raw = r.read()
    out = r.status, json.loads(raw) if raw and r.getheader('Content-Type', '').startswith('application/json') else raw or None, r
    c.close()
    return out
