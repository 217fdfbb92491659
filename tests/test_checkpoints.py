"""checkpoints: written atomically, never running code when loaded, refused with a one-line reason
when written by older code."""
import os

import pytest
import torch

from tinyvlm import Error
from tinyvlm.checkpoints import load_checkpoint, save_checkpoint
from tinyvlm.plumbing import atomic_write


def test_checkpoints_are_atomic_and_safe(tmp_path):
    path = str(tmp_path / 'ckpt.pt')
    save_checkpoint({'a': torch.ones(2), 'meta': {'n': 1}}, path)
    assert load_checkpoint(path, 'thing', 'x.py')['meta'] == {'n': 1}
    assert os.listdir(tmp_path) == ['ckpt.pt']  # no temporary file left behind

    def fail(tmp):
        open(tmp, 'w').write('half')
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, fail)
    assert load_checkpoint(path, 'thing', 'x.py')['meta'] == {'n': 1} and os.listdir(tmp_path) == ['ckpt.pt']
    with pytest.raises(Error, match='no thing at'):
        load_checkpoint(str(tmp_path / 'none.pt'), 'thing', 'x.py')
    (tmp_path / 'bad.pt').write_bytes(b'garbage')
    with pytest.raises(Error, match='is not a readable thing'):
        load_checkpoint(str(tmp_path / 'bad.pt'), 'thing', 'x.py')


class Evil:
    def __reduce__(self):
        return (os.system, ('echo pwned',))


def test_checkpoints_never_run_code(tmp_path):
    path = str(tmp_path / 'evil.pt')
    torch.save({'x': Evil()}, path)
    with pytest.raises(Error, match='is not a readable thing'):
        load_checkpoint(path, 'thing', 'x.py')


def test_older_format_names_the_script_to_run_again(tmp_path):
    path = str(tmp_path / 'ckpt.pt')
    torch.save({'model': {}, 'model_args': {}, 'dataset': {}}, path)  # no format: written by older code
    with pytest.raises(Error, match=r'written by an older vqvae.py \(format 1, this code reads \d+\): run vqvae.py again'):
        load_checkpoint(path, 'tokenizer checkpoint', 'vqvae.py', ('model',))
    save_checkpoint({'model': {}}, path)
    with pytest.raises(Error, match='is not a tokenizer checkpoint written by vqvae.py'):
        load_checkpoint(path, 'tokenizer checkpoint', 'vqvae.py', ('model', 'model_args'))
