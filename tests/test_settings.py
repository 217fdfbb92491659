"""Every setting checked before any work starts (one rule each, in configurator.RULES), and one training
run per out_dir."""
import hashlib
import os
import random
import re
import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO, run_script
from make_data import tiny_prepared
from tinyvlm import Error, configurator

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
    ('vqvae.py', 'kind', 'transformer', "one of '', 'conv', 'ink', '1d', 'mlp'"),
    ('vqvae.py', 'depth', -1, 'from 0 to 24'),
    ('vqvae.py', 'stages', 0, 'a whole number from 1 to 8'),
    ('vqvae.py', 'quantizer', 'lfq', "one of 'fsq', 'vq'"),
    ('vqvae.py', 'loss', 'l1', "one of 'bce', 'mse'"),
    ('vqvae.py', 'levels', '5,x', 'whole numbers separated by commas'),
    ('vqvae.py', 'levels', '1,5', 'whole numbers of 2 to 64'),
    ('vqvae.py', 'levels', '64,64,64', 'product (the codebook) is at most'),
    ('vqvae.py', 'grid', -1, 'a whole number from 0 to 64'),
    ('vqvae.py', 'hidden', 1, '0 (from the data) or 2 to 4096'),
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
    ('sample.py', 'temperature', -0.5, '-1 (the one the evaluation chose) or a number from 0 to 10'),
    ('sample.py', 'temperature', float('inf'), 'or a number from 0 to 10'),
    ('sample.py', 'sweep', '0.5,hot', 'temperatures separated by commas'),
    ('sample.py', 'sweep_images', 0, 'a whole number from 1 to 100000'),
    ('sample.py', 'fit_images', -1, 'a whole number from 0 to 100000'),
    ('sample.py', 'top_k', -1, 'at least 0'),
    ('sample.py', 'guidance', -0.5, '-1 (the one the evaluation chose) or a number from 0 to 100'),
    ('sample.py', 'sweep_guidance', '1,strong', 'guidance scales separated by commas'),
    ('sample.py', 'views', 10, 'from 1 to 9'),
    ('sample.py', 'view_threshold', 1.5, 'at most 1'),
    ('sample.py', 'save_npy', 'README.md/x.npy', 'a file path in a folder that can be written'),
    ('sample.py', 'png_dir', 'README.md', 'a folder (README.md is a file)'),
    ('sample.py', 'png_size', 5000, 'from 0 to 4096'),
    ('sample.py', 'reference', 'tests', 'a file path'),
    ('sample.py', 'fidelity_samples', -1, 'from 0 to 100000'),
    ('sample.py', 'data_dir', 'README.md', 'a folder (README.md is a file)'),
    ('bench.py', 'repeats', 0, 'a positive whole number'),
    ('bench.py', 'n_samples', 0, 'a positive whole number'),
    ('bench.py', 'train_window', 0, 'a positive whole number'),
    ('bench.py', 'train_procs', '1,0', 'process counts separated by commas'),
    ('bench.py', 'pipeline_config', 'nosuch', "where config/SCRIPT_NAME.py files exist, like 'speedrun'"),
]
CROSS = [
    ('vqvae.py', ['--stages=2', '--kind=1d'], "stages above 1 need kind 'conv' and quantizer 'fsq'"),
    ('vqvae.py', ['--latent_norm=True', '--quantizer=vq'], "latent_norm needs quantizer 'fsq'"),
    ('train.py', ['--n_embd=100', '--n_head=3'], 'n_embd (100) must be a multiple of n_head (3)'),
    ('train.py', ['--batch_size=10', '--gradient_accumulation_steps=3'], 'must be a multiple of gradient_accumulation_steps'),
    ('train.py', ['--min_lr=0.1', '--learning_rate=0.01'], 'min_lr (0.1) must be at most learning_rate (0.01)'),
    ('train.py', ['--max_iters=50', '--lr_decay_iters=50'], 'warmup_iters (100) must be at most lr_decay_iters (50)'),
    ('train.py', ['--device=cpu', '--dtype=float16'], "dtype 'float16' needs a GPU"),    ('bench.py', ['--pipeline_config=speedrun'], 'add --pipeline=True'),
]


@pytest.mark.parametrize('script, key, value, allowed', BAD)
def test_bad_value_is_one_line_naming_setting_value_and_rule(script, key, value, allowed, monkeypatch):
    monkeypatch.chdir(REPO)
    if key == 'device' and value == 'cuda':
        import torch
        if torch.cuda.is_available():
            pytest.skip('this machine has CUDA')
    with pytest.raises(Error) as e:
        configure(script, f'--{key}={value}')
    message = str(e.value)
    assert message.startswith(f"{key}=") and repr(value) in message and allowed in message
    assert '\n' not in message


@pytest.mark.parametrize('script, argv, message', CROSS)
def test_settings_that_must_agree(script, argv, message, monkeypatch):
    monkeypatch.chdir(REPO)
    with pytest.raises(Error, match=re.escape(message)):
        configure(script, *argv)


def test_a_setting_of_either_type_takes_either_after_a_config_file(monkeypatch):
    """compile is True, False or 'auto': a config file's 'auto' does not make --compile=False a string."""
    monkeypatch.chdir(REPO)
    for arg, value in (('--compile=False', False), ('--compile=True', True), ('--compile=auto', 'auto')):
        got = configure('train.py', 'config/train_fashion.py', arg)['compile']
        assert got == value and type(got) is type(value)
    with pytest.raises(Error, match="compile='maybe' is not allowed"):
        configure('train.py', 'config/train_fashion.py', '--compile=maybe')


def test_every_config_file_is_one_of_its_scripts(monkeypatch):
    """config/SCRIPT_*.py sets only SCRIPT.py's settings, each allowed by its rule: a config file that a
    rename or a new rule left behind fails here, not in a user's half-hour run."""
    monkeypatch.chdir(REPO)
    files = sorted(f for f in os.listdir('config') if f.endswith('.py'))
    assert 'train_fashion_limit.py' in files
    for f in files:
        script = f.split('_')[0] + '.py'
        assert script in SCRIPTS, f
        configure(script, os.path.join('config', f))


def test_the_limit_config_trains_alone_as_atop_its_base(monkeypatch):
    """config/train_fashion_limit.py alone sets what config/train_fashion.py and it stacked set: given
    without its base, it once trained with the script's defaults (another learning rate and label weight)."""
    monkeypatch.chdir(REPO)
    alone = configure('train.py', 'config/train_fashion_limit.py')
    assert alone == configure('train.py', 'config/train_fashion.py', 'config/train_fashion_limit.py')
    assert alone != configure('train.py', 'config/train_fashion.py')


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
    ('sample.py', '--temperature=-2'),
    ('vqvae.py', '--levels=5,,5'),
    ('prepare.py', '--augment=1.5'),
    ('prepare.py', '--shares=1,2,3,4,5,6,7'),
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
            except Error as e:
                assert '\n' not in str(e), (script, argv, str(e))


# one training run per out_dir ----------------------------------------------------------------------------

def test_one_training_run_per_out_dir(tmp_path):
    """A second train.py on a busy out_dir is refused; once the first is killed, the lock is free."""
    tiny_prepared(tmp_path / 'data' / 'vlm')  # a tiny prepared data set, made here
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
