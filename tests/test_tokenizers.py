"""tokenizers: each architecture over its quantizer, images <-> codes."""
import pytest
import torch

from tinyvlm import Error
from tinyvlm.tokenizers import make_tokenizer


@pytest.mark.parametrize('tokens, codes', [(8, 26), (4, 300)])
def test_vqvae_shapes_and_kmeans(tokens, codes):
    torch.manual_seed(0)
    tok = make_tokenizer(kind='mlp', quantizer='vq', hidden=128, loss='mse', tokens_per_image=tokens, codebook_size=codes,
                         latent_dim=32)
    x = torch.rand(64, 1, 28, 28)
    recon, c, loss, _ = tok(x)
    assert recon.shape == x.shape and c.shape == (64, tokens) and loss.item() > 0
    z = tok.encode_latents(x).reshape(-1, 32 // tokens).detach()
    tok.quantizer.init_kmeans(z[:max(codes, 64 * tokens)], iters=2, generator=torch.Generator().manual_seed(0))
    assert torch.equal(tok.encode(x), tok.quantizer.codes(tok.encode_latents(x)))
    assert tok.decode(tok.encode(x)).shape == (64, 1, 28, 28)


@pytest.mark.parametrize('kind', ['conv', 'mlp'])
def test_vqvae_bce_decodes_logits(kind):
    torch.manual_seed(0)
    tok = make_tokenizer(kind=kind, quantizer='fsq', hidden=16, levels=(5, 3), tokens_per_image=4, loss='bce')
    x = (torch.rand(5, 1, 28, 28) > 0.8).float()
    recon, codes, loss, _ = tok(x)
    assert 0 < recon.min() <= recon.max() < 1 and loss.item() > 0
    assert torch.allclose(loss, torch.nn.functional.binary_cross_entropy(recon, x), atol=1e-4)
    assert torch.allclose(tok.decode(codes), recon, atol=1e-6)


@pytest.mark.parametrize('grid, quantizer, size, channels', [(4, 'fsq', 28, 1), (7, 'fsq', 28, 1), (4, 'vq', 28, 1),
                                                         (8, 'fsq', 32, 3), (4, 'fsq', 32, 3), (6, 'fsq', 24, 3)])
def test_conv_tokenizer_grid(grid, quantizer, size, channels):
    torch.manual_seed(0)
    tok = make_tokenizer(kind='conv', quantizer=quantizer, grid=grid, hidden=16, levels=(5, 3), codebook_size=40, latent_dim=6,
                image_size=size, channels=channels)
    x = torch.rand(5, channels, size, size)
    recon, codes, loss, _ = tok(x)
    assert tok.tokens_per_image == grid * grid and codes.shape == (5, grid * grid)
    assert tok.codebook_size == (15 if quantizer == 'fsq' else 40) and codes.max() < tok.codebook_size
    assert recon.shape == x.shape and torch.equal(tok.encode(x), codes)
    out = tok.decode(codes)
    assert out.shape == x.shape and 0 <= out.min() <= out.max() <= 1
    # raster order: changing the top-left corner of the image changes the first code, not the last
    y = x.clone()
    y[:, :, :6, :6] = 1 - y[:, :, :6, :6]
    assert (tok.encode(y)[:, -1] == codes[:, -1]).all()
    with pytest.raises(Error, match='halves'):
        make_tokenizer(kind='conv', quantizer='fsq', grid=5, image_size=size)


def test_latent_norm_keeps_every_channel_moving():
    """An encoder whose latents sit deep in tanh's tail gives every image the same code (each channel
    stuck at one level); latent_norm standardises them first, so the codes differ again, and its
    running statistics travel with the weights."""
    torch.manual_seed(0)
    x = torch.rand(8, 1, 28, 28)
    stuck = make_tokenizer(kind='conv', quantizer='fsq', hidden=16, levels=(5, 3))
    normed = make_tokenizer(kind='conv', quantizer='fsq', hidden=16, levels=(5, 3), latent_norm=True)
    normed.load_state_dict(stuck.state_dict(), strict=False)  # the same encoder and decoder
    for tok in (stuck, normed):
        with torch.no_grad():
            tok.encoder[-1].bias.fill_(20.0)
    assert stuck(x)[1].unique().numel() == 1
    normed.latent_norm.momentum = None  # a cumulative average: after one batch, the running statistics are its own
    codes = normed(x)[1]  # training mode: the batch's own statistics
    assert codes.unique().numel() > 5 and normed.model_args['latent_norm'] is True
    again = make_tokenizer(**normed.model_args)
    again.load_state_dict(normed.state_dict())
    again.eval()  # the saved running statistics (their variance unbiased: a rare code may differ)
    assert (again.encode(x) == codes).float().mean() > 0.95


def test_ink_tokenizer_codes_the_shape_apart_from_the_colours():
    """An ink tokenizer's first four codes are the paper's and the ink's colours and the drawing's row and
    column; the grid after them codes only the ink, centred, so one drawing in other colours and at
    another place gets the same grid codes, and it decodes to the drawing in the colours of its codes."""
    from tinyvlm.tokenizers import two_colour_share
    torch.manual_seed(0)
    tok = make_tokenizer(kind='ink', image_size=16, channels=3, hidden=16, levels=(8, 8, 8)).eval()
    shape = torch.zeros(1, 1, 16, 16)
    shape[..., 3:13, 6:9] = 1
    paint = lambda paper, ink: torch.tensor(paper)[None, :, None, None] * (1 - shape) + torch.tensor(ink)[None, :, None, None] * shape
    a, b = paint([1.0, 0.0, 0.0], [0.0, 0.0, 0.0]), paint([0.0, 1 / 7, 3 / 7], [1.0, 1.0, 5 / 7])
    b = b.roll((-2, 3), (2, 3))  # moved up 2 and right 3
    ca, cb = tok.encode(a), tok.encode(b)
    assert tok.tokens_per_image == 4 + 16 and ca.shape == (1, 20) and ca[:, 4:].equal(cb[:, 4:])
    assert not ca[:, :2].equal(cb[:, :2])
    assert ca[0, 2:4].tolist() == [8, 7] and cb[0, 2:4].tolist() == [6, 10]  # rows 3-12 and columns 6-8: 7.5, 7
    colours = tok.colours(cb[0, :2])
    assert torch.allclose(colours.flatten(1), torch.tensor([[0.0, 1 / 7, 3 / 7], [1.0, 1.0, 5 / 7]]))
    out = tok.decode(cb)  # every pixel between the two colours (the untrained decoder's ink map is about 0.5)
    paper, ink = colours[0].flatten(), colours[1].flatten()
    t = ((out[0] - paper[:, None, None]) / (ink - paper)[:, None, None])
    assert out.shape == (1, 3, 16, 16) and (t.std(0) < 1e-5).all() and 0 <= t.min() <= t.max() <= 1
    assert two_colour_share(torch.cat([a, b])) > 0.99 and two_colour_share(torch.rand(4, 3, 16, 16)) < 0.5
    with pytest.raises(Error, match='colour images'):
        make_tokenizer(kind='ink', channels=1, levels=(8, 8, 8))
    with pytest.raises(Error, match='at least 40 codes'):
        make_tokenizer(kind='ink', image_size=40, channels=3, levels=(3, 3, 3))
    with pytest.raises(Error, match='three numbers'):
        make_tokenizer(kind='ink', channels=3, levels=(8, 5, 5, 5))
