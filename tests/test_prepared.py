"""prepared: a data folder read only when meta.json is of this code's format and every file is the one it
describes."""
import json

import pytest

from make_data import tiny_prepared
from tinyvlm import Error
from tinyvlm.prepared import load_meta, load_split


def test_prepared_folder_is_checked(tmp_path):
    d = tiny_prepared(tmp_path / 'vlm')
    meta = load_meta(str(d))
    seqs, codes, labels, tasks = load_split(str(d), 'train', meta)
    assert seqs.shape == (200, 32) and codes.shape == (200, 8) and labels.shape == tasks.shape == (200,)
    (d / 'train_codes.npy').write_bytes((d / 'val_codes.npy').read_bytes())  # a file replaced behind meta.json's back
    with pytest.raises(Error, match='is not the file .* describes'):
        load_split(str(d), 'train', meta)
    (d / 'meta.json').write_text(json.dumps(dict(meta, format=1)))
    with pytest.raises(Error, match='written by an older prepare.py .*: run prepare.py again'):
        load_meta(str(d))
    (d / 'meta.json').write_text('{not json')
    with pytest.raises(Error, match='not valid JSON'):
        load_meta(str(d))
    with pytest.raises(Error, match='run prepare.py first'):
        load_meta(str(tmp_path / 'none'))
