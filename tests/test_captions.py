"""Captions (tinyvlm/captions.py): the style measures on drawn strokes, words and captions read back,
how obeying a word is counted, and a folder's own captions (metadata.jsonl / .csv) with every bad
line a one-line error naming it."""
import json

import numpy as np
import pytest
import torch

from make_data import make_folder
from tinyvlm import Error
from tinyvlm.captions import (check_caption, measure_style, read_caption, read_metadata, style_bounds, style_caption,
                              style_obeyed, style_words)
from tinyvlm.datasets import load_dataset

DIGITS = list('0123456789')


def bar(thick=2, lean=0.0, width=0, size=28):
    """A white stroke on black: a vertical bar (thick pixels across) leaning lean pixels right per pixel
    up, or with width, a filled box that wide."""
    im = np.zeros((size, size), dtype=np.float32)
    for y in range(4, 24):
        x0 = 14 + lean * (14 - y) - (width or thick) / 2
        im[y, int(round(x0)):int(round(x0)) + (width or thick)] = 1
    return torch.from_numpy(im)[None]


def test_style_measures_what_they_say():
    x = torch.stack([bar(2), bar(5), bar(2, lean=0.5), bar(2, lean=-0.4), bar(width=12)])
    m = measure_style(x, 'strokes')
    assert 1.5 < m['thickness'][0] < 2.6 and 4.5 < m['thickness'][1] < 7.0  # area / skeleton length
    assert abs(m['slant'][0]) < 0.05 and 0.4 < m['slant'][2] < 0.6 and -0.5 < m['slant'][3] < -0.3
    assert abs(m['width'][2] - m['width'][0]) < 1.5  # the slant undone: a leaning bar is as narrow as an upright one
    assert m['width'][4] > 10 > 3 > m['width'][0]
    s = measure_style(torch.stack([bar(width=6) * 0.7, bar(width=14)]), 'shapes')
    assert s['size'][1] > 2 * s['size'][0] and s['ink'][1] > s['ink'][0]
    inverted = measure_style(1 - torch.stack([bar(width=6) * 0.7, bar(width=14)]), 'shapes')  # dark on light paper
    assert np.allclose(inverted['size'], s['size']) and np.allclose(inverted['ink'], s['ink'])


def test_words_captions_and_obeying():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 3000)
    m = {k: rng.normal(size=3000) + labels for k in ('width', 'thickness', 'slant')}  # each class its own scale
    bounds = style_bounds(m, labels, 10)
    words = style_words(m, labels, bounds, 'strokes')
    assert 0.3 < np.mean(['thickness' in w for w in words]) < 0.7  # the outer thirds: two in three say a word
    caps = [style_caption(w, DIGITS[y], 'strokes') for w, y in zip(words, labels)]
    assert all(read_caption(c, DIGITS, 'strokes') == (y, w) for c, w, y in zip(caps, words, labels))
    assert style_caption({'thickness': 'thick', 'slant': 'upright', 'width': 'wide'}, '7', 'strokes') == 'a wide thick upright 7'
    assert style_caption({}, 'Ankle boot', 'shapes') == 'an Ankle boot'
    assert read_caption('an Ankle boot', ['Bag', 'Ankle boot'], 'shapes') == (1, {})
    for bad in ('thick 7', 'a thick thin 7', 'a fat 7', 'a thick', 'a 77'):
        assert read_caption(bad, DIGITS, 'strokes') is None
    # the images themselves obey their own words always (side of the median) and strictly (their third)
    obeyed = style_obeyed(m, labels, words, bounds, 'strokes')
    assert set(obeyed) == {'narrow', 'wide', 'thin', 'thick', 'upright', 'slanted'}
    assert all(r['obeyed'] == 1.0 and r['strict'] == 1.0 and r['asked'] > 500 for r in obeyed.values())
    flipped = style_obeyed({k: -v + 2 * labels for k, v in m.items()}, labels, words, bounds, 'strokes')
    assert all(r['obeyed'] == 0.0 for r in flipped.values())


def write(path, text):
    path.write_text(text, encoding='utf-8')
    return path


def test_a_folders_own_captions(tmp_path):
    root = make_folder(tmp_path / 'set', ['cat', 'dog'], n=10)
    lines = [dict(file_name=f'{c}/{i}.{"jpg" if i % 3 == 0 else "png"}', text=f'a  {c} named  Zoë {i}')
             for c in ('cat', 'dog') for i in range(10) if (c, i) != ('dog', 9)]
    write(root / 'metadata.jsonl', '\n'.join(map(json.dumps, lines)) + '\n\n')
    got = read_metadata(str(root))
    assert len(got) == 19 and got[str(root / 'cat' / '1.png')] == 'a cat named Zoë 1'  # spaces folded, NFC
    splits, info = load_dataset(str(root), quiet=True)
    assert info['captions'] == 'metadata'
    for s in ('train', 'val', 'test'):
        images, labels, captions = splits[s]
        assert len(captions) == len(labels)
        assert all(c == 'dog' or c.startswith(f"a {['cat', 'dog'][y]} named") for c, y in zip(captions, labels))
    assert sum(c == 'dog' for s in splits.values() for c in s[2]) == 1  # the one without a caption: its class name
    (root / 'metadata.jsonl').unlink()
    write(root / 'metadata.csv', 'file_name,text\ncat/1.png,"a cat, sitting"\n')
    assert read_metadata(str(root)) == {str(root / 'cat' / '1.png'): 'a cat, sitting'}
    assert load_dataset(str(make_folder(tmp_path / 'plain', ['a', 'b'])), quiet=True)[1]['captions'] == 'class names'


@pytest.mark.parametrize('name, text, message', [
    ('metadata.jsonl', '{"file_name": "cat/1.png", "text": "ok"}\n{"file_name": "cat/2.png", "text": "x"\n',
     'metadata.jsonl line 2 is not JSON'),
    ('metadata.jsonl', '{"file_name": "cat/1.png"}\n', 'line 1: expected a file_name and a text'),
    ('metadata.jsonl', '["cat/1.png", "x"]\n', 'line 1: expected a file_name and a text'),
    ('metadata.jsonl', '{"file_name": "cat/99.png", "text": "x"}\n', "line 1: 'cat/99.png' is not a file"),
    ('metadata.jsonl', '{"file_name": "cat/1.png", "text": "x"}\n{"file_name": "cat/./1.png", "text": "y"}\n',
     "line 2: 'cat/./1.png' has a caption already"),
    ('metadata.jsonl', '{"file_name": "cat/1.png", "text": "  "}\n', 'line 1: a caption must be non-empty text'),
    ('metadata.jsonl', '{"file_name": "cat/1.png", "text": "a #1"}\n', "line 1: a caption cannot hold '#'"),
    ('metadata.csv', 'file_name,text\ncat/1.png,a cat\ncat/2.png\n', 'line 3: expected a file_name and a text'),
    ('metadata.csv', 'name,caption\ncat/1.png,a cat\n', 'line 2: expected a file_name and a text'),
    ('metadata.csv', 'file_name,text\ncat/1.png,' + 'long ' * 60 + '\n', 'line 2: a caption is at most 256 characters'),
])
def test_bad_metadata_is_one_line(tmp_path, name, text, message):
    root = make_folder(tmp_path / 'set', ['cat', 'dog'], n=4)
    write(root / name, text)
    with pytest.raises(Error, match=message) as e:
        load_dataset(str(root), quiet=True)
    assert '\n' not in str(e.value)


def test_both_metadata_files_are_one_too_many(tmp_path):
    root = make_folder(tmp_path / 'set', ['cat', 'dog'], n=4)
    write(root / 'metadata.csv', 'file_name,text\n')
    write(root / 'metadata.jsonl', '')
    with pytest.raises(Error, match='both metadata.jsonl and metadata.csv'):
        read_metadata(str(root))
    assert check_caption(' a\tcaption ', 'x') == 'a caption'
    (root / 'metadata.jsonl').unlink()
    (root / 'metadata.csv').write_bytes('file_name,text\ncat/1.png,un café\n'.encode('latin-1'))
    with pytest.raises(Error, match='metadata.csv is not UTF-8 text'):
        read_metadata(str(root))


def test_what_prepare_writes():
    """A plan says where captions come from; every caption it writes is within the bounds it gives
    (length and characters), for measured styles, a folder's own and class names."""
    from tinyvlm.captions import caption_bounds, caption_plan, captions_of
    images = (torch.stack([bar(t, lean) for t in (1, 2, 3, 4) for lean in (-0.3, 0, 0.3)] * 5) * 255).to(torch.uint8)
    labels = np.repeat(np.arange(10), 6)
    plan = caption_plan(dict(captions='style', dataset='mnist', classes=DIGITS), images.numpy(), labels)
    assert plan['source'] == 'style' and plan['kind'] == 'strokes' and len(plan['bounds']['slant']) == 10
    caps = captions_of(plan, images.float() / 255, labels, None, DIGITS)
    longest, chars = caption_bounds(plan, DIGITS, [])
    assert max(map(len, caps)) <= longest == len('a narrow thick slanted 0') and set(''.join(caps)) <= set(chars)
    assert any('thick' in c for c in caps) and all(read_caption(c, DIGITS, 'strokes')[0] == y for c, y in zip(caps, labels))
    named = dict(source='class names', kind='shapes', bounds=None)
    assert captions_of(named, images, labels[:3], None, DIGITS) == ['0', '0', '0']
    assert caption_bounds(named, DIGITS, []) == (1, '0123456789')
    own = dict(source='metadata', kind='shapes', bounds=None)
    assert captions_of(own, images[:2], labels[:2], ['a', 'b c'], DIGITS) == ['a', 'b c']
    assert caption_bounds(own, DIGITS, ['a', 'b c']) == (3, ' abc')
