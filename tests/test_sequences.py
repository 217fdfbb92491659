"""sequences: the codec (image codes <-> characters, class names <-> labels), the task table, padding,
and the training pairs."""
import unicodedata

import numpy as np
import pytest
import torch

from make_data import DIGITS, mnist_codec
from tinyvlm import Error
from tinyvlm.datasets import IDX_SETS
from tinyvlm.gpt import GPT, GPTConfig
from tinyvlm.sequences import (PAD, TASKS, Codec, answer_targets, code_alphabet, free_text, length_groups,
                               second_images, training_pairs)

FASHION = IDX_SETS['fashion']['classes']


@pytest.mark.parametrize('codebook_size, tokens', [(26, 8), (10, 4), (1000, 16), (6400, 49)])
def test_codec_round_trip(codebook_size, tokens):
    codec = mnist_codec(codebook_size, tokens, block=tokens + 20)
    codes = np.random.default_rng(0).integers(0, codebook_size, tokens)
    text = codec.image_text(codes)
    assert len(text) == tokens and np.array_equal(codec.image_codes(text), codes)
    seq, ids = codec.line('generation', 3, codes)
    assert len(ids) == codec.block_size and codec.decode(ids) == seq
    parsed = codec.parse(seq)
    assert parsed['task'] == 'generation' and parsed['label'] == 3 and np.array_equal(parsed['image'], codes)
    ids = [codec.stoi[c] for c in text]
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
    assert codec.parse('number:7, image:PTKRWCIU.####') == dict(task='generation', label=7, image=pytest.approx(codes))
    for bad in ('number:7, image:PTKRWCI.', 'number:x, image:PTKRWCIU.', 'number:7, image:PTKRWCIU',
                'number:7, image:PTKRWCI5.', 'image:PTKRWCIU, number:72.'):
        assert codec.parse(bad) is None
    assert codec.answer_positions('generation') == [1] and codec.answer_positions('classification') == [10]
    with pytest.raises(Error, match='block_size 11 is too short'):
        mnist_codec(block=11)
    with pytest.raises(Error, match="class name '.' is also a piece of the sequence format"):
        Codec(['a', '.'], 'class', 26, 8, 32)


def test_class_names_as_words():
    """The text shows the class name; the model sees it as one token."""
    codec = Codec(FASHION, 'class', 125, 49, 72)
    codes = list(range(49))
    s, ids = codec.line('classification', 0, codes)
    assert s.startswith('image:') and s.split('#')[0].endswith(', class:T-shirt/top.')
    assert len(ids) == 72 and ids.index(codec.stoi['T-shirt/top']) == 1 + 49 + 1 and codec.decode(ids) == s
    assert codec.line('generation', 9, codes)[0].startswith('class:Ankle boot, image:')
    assert codec.parse(s)['task'] == 'classification' and codec.parse(s)['label'] == 0
    assert len(codec.tokens('generation', 9, codes)) == len(codec.tokens('generation', 8, codes)) == 1 + 1 + 1 + 49 + 1
    assert codec.labels('Sneaker,bag') == [7, 8] and codec.labels('') == list(range(10)) and codec.labels('3') == [3]
    assert mnist_codec().labels('0123') == [0, 1, 2, 3] and mnist_codec().labels('7') == [7]
    for bad in ('Sneakers', '10', 'x7'):
        with pytest.raises(Error, match='unknown class'):
            codec.label(bad)
    with pytest.raises(Error, match='unknown class'):
        mnist_codec().labels('7x')
    assert ids[codec.answer_positions('classification')[0]] == codec.label_ids[0]
    other = Codec(['Shirt', 'Shirts', 'Bag'], 'class', 26, 8, 40)  # whole names, one token each, even a name's prefix
    assert [other.itos[i] for i in other.label_ids] == ['Shirt', 'Shirts', 'Bag'] and len(set(other.label_ids)) == 3


@pytest.mark.parametrize('bad', ['x', '10', '-1', '7.5'])
def test_bad_labels_and_characters(bad):
    codec = mnist_codec()
    with pytest.raises(Error, match='unknown class'):
        codec.label(bad)
    with pytest.raises(Error, match='8 code characters'):
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


def test_length_groups_crop_padding_and_keep_the_gradient():
    """A batch that mixes sequences of one image and of two runs as groups of rows of similar length, each
    cropped to its longest: the fewest tokens, each group charged batch tokens / 32; the groups' weighted
    losses add up to the whole batch's loss and gradient."""
    codec = Codec(DIGITS, 'number', 26, 8, tasks=['generation', 'classification', 'addition', 'next'])
    rng = np.random.default_rng(0)
    tasks = rng.integers(0, 4, 64)
    rows = [codec.line(list(codec.tasks)[t], int(rng.integers(10)), rng.integers(0, 26, 8),
                       *((int(rng.integers(10)), rng.integers(0, 26, 8)) if t > 1 else ()))[1] for t in tasks]
    X, Y = training_pairs(torch.tensor(rows), codec.stoi[PAD])
    groups = length_groups(Y)
    assert sorted(torch.cat([r for r, _ in groups]).tolist()) == list(range(64))
    lengths = ((Y != -1) * torch.arange(1, Y.size(1) + 1)).amax(1)
    assert [w for _, w in groups] == sorted(set(lengths.tolist()))  # one image: 11 targets, two: 20
    assert all((lengths[r] == w).all() for r, w in groups)
    assert length_groups(Y[tasks < 2])[0][1] == 11 and len(length_groups(Y[tasks < 2])) == 1
    # the charge: a group of 2 rows 2 tokens shorter saves 4 tokens, less than 64 * 12 / 32
    Z = torch.full((64, 12), 1)
    Z[:2, 10:] = -1
    assert len(length_groups(Z)) == 1
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=codec.block_size, vocab_size=codec.vocab_size, n_layer=1, n_head=2, n_embd=16))
    W = torch.where(Y != -1, 1 + 9 * torch.rand(Y.shape), 0.0)
    loss = model(X, Y, weights=W)[1]
    loss.backward()
    expected = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    total = 0
    for r, w in groups:
        part = model(X[r, :w], Y[r, :w], weights=W[r, :w])[1] * (W[r, :w].sum() / W.sum())
        part.backward()
        total += part.item()
    assert total == pytest.approx(loss.item(), rel=1e-5)
    for p, g in zip(model.parameters(), expected):
        assert torch.allclose(p.grad, g, rtol=1e-4, atol=1e-7)


def test_answer_targets_come_from_the_tasks():
    """The targets that are a class name, found from the task table."""
    codec = Codec(FASHION, 'class', 26, 8, 40)
    tasks, labels = torch.tensor([0, 1, 0, 1]), torch.tensor([0, 0, 8, 9])
    pairs = [codec.line(list(codec.tasks)[t], y, [1] * 8) for t, y in zip(tasks.tolist(), labels.tolist())]
    X, Y = training_pairs(torch.tensor([ids for _, ids in pairs]), codec.stoi[PAD])
    mask = answer_targets(codec, tasks, X.size(1))
    assert (mask.sum(1) == 1).all()
    assert [codec.decode(y[m]) for y, m in zip(Y, mask)] == ['T-shirt/top', 'T-shirt/top', 'Bag', 'Ankle boot']


def test_tasks_of_two_images_round_trip():
    """Every task, those of two images included, writes a line that parses back to what was written."""
    codec = Codec(DIGITS, 'number', 26, 8, tasks=['generation', 'classification', 'addition', 'next'])
    a, b = [15, 19, 10, 17, 22, 2, 8, 20], [0, 1, 2, 3, 4, 5, 6, 25]
    assert codec.line('addition', 7, a, 5, b)[0] == 'image:PTKRWCIU plus image:ABCDEFGZ, sum:12.' + '#' * 3
    assert codec.line('next', 7, a, 8, b)[0] == 'image:PTKRWCIU, next:8, image:ABCDEFGZ.' + '#' * 3
    assert codec.block_size == 24 and codec.sums == list(range(19))
    for task in codec.tasks:
        s, ids = codec.line(task, 7, a, 5, b)
        assert codec.decode(ids) == s and len(ids) == codec.block_size
        parsed = codec.parse(s)
        assert parsed['task'] == task and np.array_equal(parsed['image'], a)
        assert ('image2' in parsed) == ('{image2}' in TASKS[task])
        if task == 'addition':
            assert codec.sums[parsed['sum']] == 12 and ids[codec.answer_positions(task)[0]] == codec.stoi['12']
        if task == 'next':
            assert parsed['label2'] == 5 and ids[codec.answer_positions(task)[0]] == codec.label_ids[5]
    assert codec.text('addition', codes=a, codes2=b, upto='sum') == 'image:PTKRWCIU plus image:ABCDEFGZ, sum:'
    assert codec.decode(codec.prompts('next', 'image2', codes=[a], labels2=[8])[0]) == 'image:PTKRWCIU, next:8, image:'
    assert codec.decode(codec.prompts('next', 'label2', codes=[a])[0]) == 'image:PTKRWCIU, next:'
    for bad in ('image:PTKRWCIU plus image:ABCDEFGZ, sum:19.', 'image:PTKRWCIU plus image:ABCDEFG, sum:12.',
                'image:PTKRWCIU, next:image:ABCDEFGZ.', 'image:PTKRWCIU, next:x, image:ABCDEFGZ.'):
        assert codec.parse(bad) is None
    with pytest.raises(Error, match="adds class names that are numbers.*'T-shirt/top'"):
        Codec(FASHION, 'class', 26, 8, tasks=['generation', 'addition'])
    assert Codec(FASHION, 'class', 26, 8, tasks=['next']).tasks == {'next': TASKS['next']}


def test_second_images_and_answers():
    """'next' pairs an image with one of the class after its own; addition with any; the answer targets
    are the class names (the one 'next' names too) and the sums, never an image."""
    codec = Codec(DIGITS, 'number', 26, 8, tasks=['generation', 'classification', 'addition', 'next'])
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 400)
    tasks = rng.integers(0, 4, 400)
    second = second_images(list(codec.tasks), tasks, labels, 10, rng)
    assert (second[tasks < 2] == -1).all() and (second[tasks >= 2] >= 0).all()
    nxt = tasks == 3
    assert ((labels[second[nxt]] - labels[nxt]) % 10 == 1).all()
    assert len(set(labels[second[tasks == 2]].tolist())) == 10
    pairs = [codec.line(list(codec.tasks)[t], y, [1] * 8, *((labels[j], [2] * 8) if j >= 0 else ()))
             for t, y, j in zip(tasks, labels, second)]
    X, Y = training_pairs(torch.tensor([ids for _, ids in pairs]), codec.stoi[PAD])
    mask = answer_targets(codec, torch.from_numpy(tasks), X.size(1))
    assert (mask.sum(1) == 1).all()
    got = [codec.decode(y[m]) for y, m in zip(Y, mask)]
    assert all(g == str(labels[i] + labels[second[i]]) for i, g in enumerate(got) if tasks[i] == 2)
    assert all(g == str((labels[i] + 1) % 10) for i, g in enumerate(got) if tasks[i] == 3)
    with pytest.raises(Error, match="images of every class"):
        second_images(['next'], np.zeros(5), np.array([0, 0, 1, 1, 2]), 4, rng)


def test_captions_round_trip():
    """Captions are spelled a character a token: spaces, non-ASCII letters and words never seen all
    round-trip, and the image codes keep clear of every character a caption can hold."""
    codec = Codec(DIGITS, 'number', 26, 8, tasks=list(TASKS), caption_length=24, caption_chars='éß')
    assert not set(codec.code_chars) & set(codec.caption_chars) and 'A' in codec.caption_chars
    a, b = [15, 19, 10, 17, 22, 2, 8, 20], [0, 1, 2, 3, 4, 5, 6, 25]
    for caption in ('a thick slanted 7', 'une fée, ß. ok', 'x', 'Zebra-7 (new!)'):
        for task in ('illustration', 'captioning'):
            s, ids = codec.line(task, 7, a, caption=caption)
            assert codec.decode(ids) == s and len(ids) == codec.block_size
            assert len(ids) - s.count('#') == len(codec.tokens(task, codes=a, caption=caption))
            parsed = codec.parse(s)
            assert parsed['task'] == task and parsed['caption'] == caption and np.array_equal(parsed['image'], a)
        assert codec.text('illustration', caption=caption, upto='image') == f'caption:{caption}, image:'
    for task in ('generation', 'classification', 'addition', 'next'):  # the other tasks as before
        s, ids = codec.line(task, 7, a, 5, b)
        assert codec.parse(s)['task'] == task
    assert codec.decode(codec.prompts('captioning', 'caption', codes=[a])[0]).endswith(', caption:')
    assert codec.block_size >= len(codec.tokens('captioning', codes=a, caption='x' * 24)) + 1
    again = Codec.from_meta(dict(classes=codec.classes, key='number', codebook_size=26, tokens_per_image=8,
                                 block_size=codec.block_size, vocab=codec.itos, tasks=codec.tasks, grid=0, lead=0,
                                 caption_length=24))
    assert again.caption_chars == codec.caption_chars and again.parse(codec.line('captioning', 0, a, caption='é')[0])
    for bad, match in (('', 'cannot be empty'), ('   ', 'cannot be empty'), ('x' * 25, 'at most 24 characters'),
                       ('a ☃ 7', "never seen: '☃'"), ('a # 7', "never seen: '#'"), ('Ä', "never seen: 'Ä'")):
        with pytest.raises(Error, match=match):
            codec.tokens('illustration', caption=bad, upto='image')
    with pytest.raises(Error, match='not trained on captions'):
        Codec(DIGITS, 'number', 26, 8).caption_ids('a 7')
    assert codec.learnt('addition', 'worked_addition', use='x') == 'addition'
    with pytest.raises(Error, match=r"--mode=add: this model was not trained on addition or worked_addition \(.*them none"):
        Codec(DIGITS, 'number', 26, 8).learnt('addition', 'worked_addition', use='--mode=add')
    with pytest.raises(Error, match='needs caption_length'):
        Codec(DIGITS, 'number', 26, 8, tasks=['captioning'])


def test_free_text_ends_with_padding():
    """A caption's end is learnt (the first padding after it is a target), so that a caption may hold the
    end '.'; the other tasks' padding stays out of the loss, as before."""
    codec = Codec(DIGITS, 'number', 26, 8, tasks=list(TASKS), caption_length=12)
    names = list(codec.tasks)
    rows = [codec.line('generation', 3, [1] * 8)[1], codec.line('captioning', 3, [1] * 8, caption='Dr. Who.')[1]]
    tasks = torch.tensor([names.index('generation'), names.index('captioning')])
    X, Y = training_pairs(torch.tensor(rows), codec.stoi[PAD], free_text(codec, tasks))
    assert (Y[0] == codec.stoi[PAD]).sum() == 0 and (Y[1] == codec.stoi[PAD]).sum() == 1
    written = codec.decode([t for t in Y[1].tolist() if t != -1])
    assert written.endswith(', caption:Dr. Who..#') and len(rows[1]) == codec.block_size
    assert codec.block_size > len(codec.tokens('captioning', codes=[1] * 8, caption='x' * 12))


def test_worked_addition_names_the_digits_then_the_sum():
    """The addition that shows its work: each digit named where classification names it, then the sum;
    all three are answers, weighed as such."""
    codec = Codec(DIGITS, 'number', 26, 8, tasks=['generation', 'classification', 'worked_addition'])
    a, b = [15, 19, 10, 17, 22, 2, 8, 20], [0, 1, 2, 3, 4, 5, 6, 25]
    s, ids = codec.line('worked_addition', 3, a, 9, b)
    assert s.startswith('image:PTKRWCIU, number:3 plus image:ABCDEFGZ, number:9, sum:12.')
    p = codec.parse(s)
    assert (p['task'], p['label'], p['label2'], codec.sums[p['sum']]) == ('worked_addition', 3, 9, 12)
    assert np.array_equal(p['image'], a) and np.array_equal(p['image2'], b)
    assert [codec.decode([ids[p]]) for p in codec.answer_positions('worked_addition')] == ['3', '9', '12']
    assert codec.text('worked_addition', codes=a, upto='label') == codec.text('classification', codes=a, upto='label')
    tasks = torch.tensor([0, 1, 2])
    rows = torch.tensor([codec.line('generation', 3, a)[1], codec.line('classification', 3, a)[1], ids])
    X, Y = training_pairs(rows, codec.stoi[PAD])
    assert answer_targets(codec, tasks, X.size(1)).sum(1).tolist() == [1, 1, 3]
