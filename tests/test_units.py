"""Unit tests: settings, the MNIST reader, the codec and sequence format, batching, the models."""
import gzip
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import configurator
import vqvae
from model import FSQ, GPT, DigitCNN, GPTConfig, VQVAE, atomic_write, load_checkpoint, pick_dtype, save_checkpoint
from prepare import DIGITS, PAD, Codec, augmented, shifted, training_pairs
from sample import frechet_distance, read_labels


# settings ---------------------------------------------------------------------------------------------

def settings():
    return dict(__file__='x.py', lr=1e-3, n=4, name='a', flag=False, opt=None, _private=1, CONSTANT='c')


def test_configure_overrides_and_types(tmp_path):
    cfg = tmp_path / 'c.py'
    cfg.write_text("lr = 3e-4\nn = 8\n")
    g = settings()
    out = configurator.configure(g, [str(cfg), '--n=16', '--name=007', '--flag=True', '--lr=1'])
    assert (g['lr'], g['n'], g['name'], g['flag']) == (1.0, 16, '007', True)
    assert isinstance(g['lr'], float) and out['n'] == 16 and '_private' not in out and 'CONSTANT' not in out


@pytest.mark.parametrize('argv, message', [
    (['--nope=1'], "unknown config key 'nope'"),
    (['--CONSTANT=d'], "unknown config key 'CONSTANT'"),
    (['--n=abc'], 'n expects a int'),
    (['--flag=1'], 'flag expects a bool'),
    (['--n'], 'expected --key=value'),
    (['missing_config.py'], "config file 'missing_config.py' not found"),
])
def test_configure_errors(argv, message):
    with pytest.raises(SystemExit, match=message):
        configurator.configure(settings(), argv)


# MNIST reader -----------------------------------------------------------------------------------------

def write_idx(path, arr, magic_type=0x08):
    header = bytes([0, 0, magic_type, arr.ndim]) + b''.join(int(d).to_bytes(4, 'big') for d in arr.shape)
    with gzip.open(path, 'wb') as f:
        f.write(header + arr.astype(np.uint8).tobytes())


def test_read_idx_round_trip(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    labels = np.arange(5, dtype=np.uint8)
    write_idx(tmp_path / 'im.gz', images)
    write_idx(tmp_path / 'lb.gz', labels)
    assert np.array_equal(vqvae.read_idx(str(tmp_path / 'im.gz')), images)
    assert np.array_equal(vqvae.read_idx(str(tmp_path / 'lb.gz')), labels)


def test_read_idx_errors(tmp_path):
    images = np.zeros((5, 28, 28), dtype=np.uint8)
    write_idx(tmp_path / 'ok.gz', images)
    raw = (tmp_path / 'ok.gz').read_bytes()
    (tmp_path / 'cut.gz').write_bytes(raw[:len(raw) // 2])
    with pytest.raises(SystemExit, match='not a complete gzip file'):
        vqvae.read_idx(str(tmp_path / 'cut.gz'))
    with gzip.open(tmp_path / 'short.gz', 'wb') as f:  # valid gzip, IDX data cut short
        f.write(gzip.decompress(raw)[:-100])
    with pytest.raises(SystemExit, match='truncated or corrupted'):
        vqvae.read_idx(str(tmp_path / 'short.gz'))
    write_idx(tmp_path / 'float.gz', images, magic_type=0x0D)
    with pytest.raises(SystemExit, match='not an IDX file of unsigned bytes'):
        vqvae.read_idx(str(tmp_path / 'float.gz'))
    (tmp_path / 'plain.gz').write_bytes(b'not gzip at all')
    with pytest.raises(SystemExit, match='not a complete gzip file'):
        vqvae.read_idx(str(tmp_path / 'plain.gz'))
    assert vqvae.read_idx(str(tmp_path / 'ok.gz'), sha256='0' * 64) is None  # checksum mismatch


def test_load_mnist_missing_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match='mnist_dir must hold the four MNIST files'):
        vqvae.load_mnist(str(tmp_path / 'nowhere'))


def test_load_mnist_checksum_mismatch_is_fetched_once_more(tmp_path, monkeypatch):
    """A corrupted copy is removed and fetched again; if the source is bad too, a clear error."""
    monkeypatch.chdir(tmp_path)
    src = tmp_path / 'src'
    src.mkdir()
    for name in vqvae.MNIST_FILES:
        write_idx(src / (name + '.gz'), np.zeros((3, 2, 2), dtype=np.uint8))
    with pytest.raises(SystemExit, match='does not match the SHA-256 of MNIST'):
        vqvae.load_mnist(str(src))
    assert not os.path.exists(os.path.join('data', 'mnist', 'train-images-idx3-ubyte.gz'))


def test_load_mnist_from_dir(mnist_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    splits = vqvae.mnist_splits(mnist_dir)
    assert [len(splits[s][0]) for s in ('train', 'val', 'test')] == [50000, 10000, 10000]
    assert splits['train'][0].shape[1:] == (28, 28) and splits['train'][0].max() == 1.0
    assert os.path.isfile(os.path.join('data', 'mnist', 't10k-labels-idx1-ubyte.gz'))  # cached
    # a corrupted cache file is replaced from the source
    with open(os.path.join('data', 'mnist', 't10k-labels-idx1-ubyte.gz'), 'r+b') as f:
        f.seek(100)
        f.write(b'\xff\xff\xff')
    assert np.array_equal(vqvae.load_mnist(mnist_dir)['test_labels'], (splits['test'][1]).astype(np.uint8))


# codec and sequence format ----------------------------------------------------------------------------

@pytest.mark.parametrize('codebook_size, tokens', [(26, 8), (10, 4), (1000, 16), (6400, 49)])
def test_codec_round_trip(codebook_size, tokens):
    codec = Codec(codebook_size, tokens, block_size=tokens + 20)
    codes = np.random.default_rng(0).integers(0, codebook_size, tokens)
    text = codec.image_text(codes)
    assert len(text) == tokens and np.array_equal(codec.image_codes(text), codes)
    seq = codec.pad(codec.generation(3, codes))
    assert codec.decode(codec.encode(seq)) == seq
    ids = codec.encode(text)
    assert min(ids) >= codec.code_offset and codec.vocab_size == codec.code_offset + codebook_size
    assert not set(text) & set(codec.itos[:codec.code_offset])  # codes are disjoint from the text
    if codebook_size <= 26:
        assert set(text) <= set('ABCDEFGHIJKLMNOPQRSTUVWXYZ')


def test_templates_and_padding():
    codec = Codec(26, 8, 32)
    codes = [15, 19, 10, 17, 22, 2, 8, 20]
    assert codec.image_text(codes) == 'PTKRWCIU'
    assert codec.pad(codec.generation(7, codes)) == 'number:7, image:PTKRWCIU.#######'
    assert codec.pad(codec.classification(codes, 7)) == 'image:PTKRWCIU, number:7.#######'
    assert codec.generation_prompt(7) == 'number:7, image:'
    assert codec.classification_prompt(codes) == 'image:PTKRWCIU, number:'
    assert codec.image_text(codes) == 'PTKRWCIU' and codec.vocab_size == 50
    assert codec.is_generation('number:7, image:PTKRWCIU.')
    for bad in ('number:7, image:PTKRWCI.', 'number:x, image:PTKRWCIU.', 'number:7, image:PTKRWCIU',
                'number:7, image:PTKRWCI5.', 'image:PTKRWCIU, number:7.'):
        assert not codec.is_generation(bad)
    with pytest.raises(SystemExit, match='longer than block_size'):
        codec.pad('x' * 33)
    with pytest.raises(SystemExit, match='block_size 20 is too short'):
        Codec(26, 8, 20)


@pytest.mark.parametrize('bad', ['x', '10', '-1', 7.5])
def test_bad_labels_and_characters(bad):
    codec = Codec(26, 8, 32)
    with pytest.raises(SystemExit, match='one digit 0-9'):
        codec.generation_prompt(bad)
    with pytest.raises(SystemExit, match='not in the vocabulary'):
        codec.encode('image:ABC!, number:')
    with pytest.raises(SystemExit, match='8 code characters'):
        codec.image_codes('ABC')


def test_training_pairs_start_at_sequence_starts():
    codec = Codec(26, 8, 32)
    rng = np.random.default_rng(0)
    lines = [codec.pad(codec.generation(d, rng.integers(0, 26, 8)) if d % 2 else
                       codec.classification(rng.integers(0, 26, 8), d)) for d in range(10)]
    seqs = torch.tensor([codec.encode(s) for s in lines])
    X, Y = training_pairs(seqs, codec.stoi[PAD])
    assert X.shape == Y.shape == (10, 24)  # 'number:7, image:PTKRWCIU.': 24 inputs predict 24 targets
    for line, x, y in zip(lines, X, Y):
        assert codec.decode(x) == line[:24]  # every row is one whole sequence from its start
        n = line.index('.') + 1
        assert codec.decode(y[:n - 1]) == line[1:n] and (y[n - 1:] == -1).all()


# models -----------------------------------------------------------------------------------------------

def tiny_gpt(vocab_size=50):
    torch.manual_seed(0)
    return GPT(GPTConfig(block_size=32, vocab_size=vocab_size, n_layer=2, n_head=2, n_embd=32)).eval()


def test_kv_cache_gives_the_same_tokens():
    model = tiny_gpt()
    codec = Codec(26, 8, 32)
    idx = codec.generation_prompts(DIGITS)
    mask = codec.mask(codes=True)
    outs = [model.generate(idx, 8, allowed=mask, use_cache=c, generator=torch.Generator().manual_seed(1))
            for c in (True, False)]
    assert torch.equal(outs[0], outs[1])
    assert (outs[0][:, idx.size(1):] >= codec.code_offset).all()  # only image codes were drawn
    cache = [[None, None] for _ in model.transformer.h]  # prefix + several tokens at once == one pass
    full, _ = model(outs[0][:, :20], targets=torch.zeros(10, 20, dtype=torch.long))
    model(outs[0][:, :12], kv_cache=cache)
    part, _ = model(outs[0][:, 12:20], kv_cache=cache)
    assert torch.allclose(part[:, -1], full[:, 19], atol=1e-5)


def test_guidance_with_and_without_cache():
    """Classifier-free guidance: the same tokens with and without the cache, and other tokens than
    without guidance (the unconditional stream changes the distribution)."""
    model = tiny_gpt()
    codec = Codec(26, 8, 32)
    idx, uncond = codec.generation_prompts(DIGITS), codec.image_prompts(10)
    assert codec.decode(uncond[0]) == 'image:'
    mask = codec.mask(codes=True)
    run = lambda c, g: model.generate(idx, 8, allowed=mask, use_cache=c, generator=torch.Generator().manual_seed(1),
                                      guidance=g, uncond=uncond)
    guided = run(True, 2.0)
    assert torch.equal(guided, run(False, 2.0)) and not torch.equal(guided, run(True, 0.0))
    assert (guided[:, idx.size(1):] >= codec.code_offset).all()


def test_weighted_loss():
    """weights of ones give the plain loss; padding targets (-1) stay out whatever their weight."""
    model = tiny_gpt()
    x, y = torch.randint(50, (4, 16)), torch.randint(50, (4, 16))
    y[:, -3:] = -1
    plain = model(x, y)[1]
    assert torch.allclose(model(x, y, weights=torch.ones(4, 16))[1], plain)
    w = torch.ones(4, 16)
    w[:, -3:] = 100.0
    assert torch.allclose(model(x, y, weights=w)[1], plain)
    w[:, 0] = 10.0
    assert not torch.allclose(model(x, y, weights=w)[1], plain)


def test_code_features_tie_codes_together():
    """GPT.embeddings: with code_features, codes with the same features get the same learned part, text
    tokens none; the buffer travels in the state dict; logits use the same (tied) matrix."""
    torch.manual_seed(0)
    q = FSQ((5, 3))
    feats = q.features()
    assert feats.shape == (15, 2 + 5 + 3) and torch.equal(feats[:, 2:].sum(1), torch.full((15,), 2.0))
    cfg = GPTConfig(block_size=32, vocab_size=24 + 15, n_layer=1, n_head=2, n_embd=32, code_offset=24,
                    code_features=feats.size(1))
    model = GPT(cfg).eval()
    model.code_features.copy_(feats)
    with torch.no_grad():
        model.transformer.wte.weight.zero_()
    emb = model.embeddings()
    assert emb.shape == (39, 32) and (emb[:24] == 0).all() and (emb[24:].abs().sum(1) > 0).all()
    assert torch.allclose(emb[24:], model.code_proj(feats))
    other = GPT(cfg)
    other.load_state_dict(model.state_dict())
    assert torch.equal(other.code_features, feats)
    x = torch.randint(39, (2, 10))
    logits, _ = model(x, torch.zeros_like(x))
    h = model.transformer.ln_f(model.transformer.h[0](F.embedding(x, emb) + model.transformer.wpe(torch.arange(10))))
    assert torch.allclose(logits, h @ emb.t(), atol=1e-5)


def test_bfloat16_attention_matches():
    """On a CPU in bfloat16 the attention is spelled out (faster backward); it must agree with the fused
    kernel, and with the key/value cache."""
    model = tiny_gpt()
    x = torch.randint(50, (4, 20))
    ref, _ = model(x, torch.zeros_like(x))
    model16 = tiny_gpt().to(torch.bfloat16)
    out, _ = model16(x, torch.zeros_like(x))
    assert (out.float() - ref).abs().max() < 0.05
    cache = [[None, None] for _ in model16.transformer.h]
    model16(x[:, :12], kv_cache=cache)
    part, _ = model16(x[:, 12:], kv_cache=cache)
    assert (part[:, -1].float() - ref[:, -1]).abs().max() < 0.05


def test_next_token_probs_only_over_candidates():
    model = tiny_gpt()
    codec = Codec(26, 8, 32)
    idx = codec.classification_prompts([[0] * 8] * 3)
    p = model.next_token_probs(idx, torch.tensor(codec.encode(DIGITS)), batch_size=2)
    assert p.shape == (3, 10) and torch.allclose(p.sum(1), torch.ones(3))


def test_read_labels_second_look():
    """Only images read below the threshold get the extra views; threshold 0 is one plain reading."""
    torch.manual_seed(0)
    model, tok = tiny_gpt(vocab_size=26 + 1000), VQVAE(kind='conv', quantizer='fsq', hidden=16).eval()
    codec = Codec(1000, 16, 40)
    x = torch.rand(6, 28, 28)
    codes, digit_ids = tok.encode(x), torch.tensor(codec.encode(DIGITS))
    once = model.next_token_probs(codec.classification_prompts(codes), digit_ids)
    assert torch.allclose(read_labels(model, codec, tok, digit_ids, codes, x, views=5, threshold=0.0), once)
    again = read_labels(model, codec, tok, digit_ids, codes, x, views=5, threshold=1.0, batch_size=4)
    assert again.shape == (6, 10) and torch.allclose(again.sum(1), torch.ones(6)) and not torch.allclose(again, once)


def test_shifted_moves_pixels():
    x = torch.zeros(1, 28, 28)
    x[0, 10, 12] = 1
    assert shifted(x, 1, 0)[0, 10, 13] == 1 and shifted(x, 0, -1)[0, 9, 12] == 1 and shifted(x, 0, 0).equal(x)


@pytest.mark.parametrize('tokens, codes', [(8, 26), (4, 300)])
def test_vqvae_shapes_and_kmeans(tokens, codes):
    torch.manual_seed(0)
    tok = VQVAE(tokens_per_image=tokens, codebook_size=codes, latent_dim=32)
    x = torch.rand(64, 28, 28)
    recon, c, loss = tok(x)
    assert recon.shape == x.shape and c.shape == (64, tokens) and loss.item() > 0
    z = tok.encode_latents(x).reshape(-1, 32 // tokens).detach()
    tok.quantizer.init_kmeans(z[:max(codes, 64 * tokens)], iters=2, generator=torch.Generator().manual_seed(0))
    assert torch.equal(tok.encode(x), tok.quantizer.codes(tok.encode_latents(x)))
    assert tok.decode(tok.encode(x)).shape == (64, 28, 28)


@pytest.mark.parametrize('kind', ['conv', 'mlp'])
def test_vqvae_bce_decodes_logits(kind):
    torch.manual_seed(0)
    tok = VQVAE(kind=kind, quantizer='fsq', hidden=16, levels=(5, 3), tokens_per_image=4, loss='bce')
    x = (torch.rand(5, 28, 28) > 0.8).float()
    recon, codes, loss = tok(x)
    assert 0 < recon.min() <= recon.max() < 1 and loss.item() > 0
    assert torch.allclose(loss, torch.nn.functional.binary_cross_entropy(recon, x), atol=1e-4)
    assert torch.allclose(tok.decode(codes), recon, atol=1e-6)
    with pytest.raises(SystemExit, match="loss 'mse' or 'bce'"):
        VQVAE(kind=kind, loss='l1')


def test_fsq_codes_round_trip():
    q = FSQ((8, 5, 5, 5))
    assert q.codebook_size == 1000
    codes = torch.arange(1000)
    v = q.vectors(codes)
    assert v.shape == (1000, 4) and v.min() >= -1 and v.max() <= 1
    assert len(set(map(tuple, v.tolist()))) == 1000  # every code its own vector
    assert q.codes(torch.atanh(torch.rand(100000, 4) * 1.998 - 0.999)).unique().numel() == 1000  # all reachable
    z = torch.randn(50, 7, 4, requires_grad=True)
    zq, c, loss = q(z)
    assert c.shape == (50, 7) and c.min() >= 0 and c.max() < 1000 and loss.item() == 0
    assert torch.allclose(zq, q.vectors(c)) and torch.equal(c, q.codes(z))
    zq.sum().backward()  # straight-through: the encoder gets a gradient
    assert z.grad.abs().sum() > 0


@pytest.mark.parametrize('grid, quantizer', [(4, 'fsq'), (7, 'fsq'), (4, 'vq')])
def test_conv_tokenizer_grid(grid, quantizer):
    torch.manual_seed(0)
    tok = VQVAE(kind='conv', quantizer=quantizer, grid=grid, hidden=16, levels=(5, 3), codebook_size=40, latent_dim=6)
    x = torch.rand(5, 28, 28)
    recon, codes, loss = tok(x)
    assert tok.tokens_per_image == grid * grid and codes.shape == (5, grid * grid)
    assert tok.codebook_size == (15 if quantizer == 'fsq' else 40) and codes.max() < tok.codebook_size
    assert recon.shape == x.shape and torch.equal(tok.encode(x), codes)
    out = tok.decode(codes)
    assert out.shape == x.shape and 0 <= out.min() <= out.max() <= 1
    # raster order: changing the top-left corner of the image changes the first code, not the last
    y = x.clone()
    y[:, :6, :6] = 1 - y[:, :6, :6]
    assert (tok.encode(y)[:, -1] == codes[:, -1]).all()


def test_augmented_images_move_but_keep_ink():
    x = torch.zeros(200, 28, 28)
    x[:, 10:18, 12:16] = 1
    y = augmented(x, torch.Generator().manual_seed(0))
    assert y.shape == x.shape and 0 <= y.min() <= y.max() <= 1
    assert not torch.equal(x, y)
    assert (y.sum((1, 2)) / x.sum((1, 2)) - 1).abs().max() < 0.3  # moved, rotated, scaled a little
    assert torch.equal(augmented(x, torch.Generator().manual_seed(0)), y)


def test_frechet_distance():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(4000, 5))
    assert abs(frechet_distance(a, a)) < 1e-6
    b = rng.normal(size=(4000, 5)) * 2 + 1  # N(1, 4I) vs N(0, I): 5 * 1 + 5 * (1 + 4 - 2 * 2) = 10
    assert abs(frechet_distance(a, b) - 10) < 0.5


def test_reference_cnn_shapes():
    cnn = DigitCNN()
    x = torch.rand(3, 28, 28)
    assert cnn(x).shape == (3, 10) and cnn.features(x).shape == (3, 128)


def test_pick_dtype():
    assert pick_dtype('cpu') in ('float32', 'bfloat16') and pick_dtype('mps') == 'float32'
    assert pick_dtype('cpu', 'float32') == 'float32'
    with pytest.raises(SystemExit, match="dtype must be 'auto', 'float32', 'bfloat16' or 'float16'"):
        pick_dtype('cpu', 'float64')


def test_checkpoints_are_atomic_and_safe(tmp_path):
    path = str(tmp_path / 'ckpt.pt')
    save_checkpoint({'a': torch.ones(2), 'meta': {'n': 1}}, path)
    assert load_checkpoint(path, 'thing')['meta'] == {'n': 1}
    assert os.listdir(tmp_path) == ['ckpt.pt']  # no temporary file left behind

    def fail(tmp):
        open(tmp, 'w').write('half')
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, fail)
    assert load_checkpoint(path, 'thing')['meta'] == {'n': 1} and os.listdir(tmp_path) == ['ckpt.pt']
    with pytest.raises(SystemExit, match='no thing at'):
        load_checkpoint(str(tmp_path / 'none.pt'), 'thing')
    (tmp_path / 'bad.pt').write_bytes(b'garbage')
    with pytest.raises(SystemExit, match='is not a readable thing'):
        load_checkpoint(str(tmp_path / 'bad.pt'), 'thing')


class Evil:
    def __reduce__(self):
        return (os.system, ('echo pwned',))


def test_checkpoints_never_run_code(tmp_path):
    path = str(tmp_path / 'evil.pt')
    torch.save({'x': Evil()}, path)
    with pytest.raises(SystemExit, match='is not a readable thing'):
        load_checkpoint(path, 'thing')


def test_download_from_mirrors(mnist_dir, tmp_path, monkeypatch):
    """With no mnist_dir the files come from the mirrors, in order; a corrupted download is removed and
    fetched once more; the result is cached under data/mnist."""
    import io
    import urllib.error
    monkeypatch.chdir(tmp_path)
    calls = []

    def urlopen(url, timeout):
        calls.append(url)
        name = url.rsplit('/', 1)[1]
        if url.startswith(vqvae.MNIST_MIRRORS[0]):
            raise urllib.error.URLError('mirror down')
        data = open(os.path.join(mnist_dir, name), 'rb').read()
        if name.startswith('t10k-labels') and sum(c.endswith(name) for c in calls) == 2:
            data = data[:1000]  # the first download that got through is cut short
        return io.BytesIO(data)
    monkeypatch.setattr(vqvae.urllib.request, 'urlopen', urlopen)
    m = vqvae.load_mnist('')
    assert m['test_labels'].shape == (10000,) and m['train_images'].shape == (60000, 28, 28)
    assert sum('t10k-labels' in c for c in calls) == 4  # mirror 1 down, mirror 2 bad; again: down, good
    assert sorted(os.listdir(os.path.join('data', 'mnist'))) == sorted(n + '.gz' for n in vqvae.MNIST_FILES)


def test_no_network_and_no_files(tmp_path, monkeypatch):
    import urllib.error
    monkeypatch.chdir(tmp_path)

    def urlopen(url, timeout):
        raise urllib.error.URLError('no network')
    monkeypatch.setattr(vqvae.urllib.request, 'urlopen', urlopen)
    with pytest.raises(SystemExit, match='could not be downloaded.*pass --mnist_dir=DIR'):
        vqvae.load_mnist('')
