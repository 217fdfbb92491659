"""quantizers: FSQ and residual FSQ codes and vectors."""
import torch

from tinyvlm.quantizers import FSQ, ResidualFSQ
from tinyvlm.tokenizers import make_tokenizer


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


def test_residual_fsq_coarse_to_fine():
    """Residual FSQ: the first stage's codes are plain FSQ's, each later stage refines what is left, the
    codes come stage by stage, and codes -> vectors gives back the quantised latents."""
    torch.manual_seed(0)
    z = (torch.rand(64, 9, 4) * 1.6 - 0.8).requires_grad_()
    q3 = ResidualFSQ((8, 5, 5, 5), 3)
    zq, codes, loss = q3(z)
    assert codes.shape == (64, 27) and codes.max() < 1000 and loss.item() == 0 and q3.codebook_size == 1000
    assert torch.equal(codes[:, :9], FSQ((8, 5, 5, 5)).codes(z)) and torch.equal(codes, q3.codes(z))
    assert torch.allclose(q3.vectors(codes), zq, atol=1e-6)
    errors = [(ResidualFSQ((8, 5, 5, 5), s)(z)[0] - z).abs().mean().item() for s in (1, 2, 3)]
    assert errors[0] > 2 * errors[1] > 4 * errors[2]
    zq.sum().backward()
    assert z.grad.abs().sum() > 0
    tok = make_tokenizer(kind='conv', quantizer='fsq', grid=4, hidden=16, levels=(5, 3), stages=2)
    x = torch.rand(5, 1, 28, 28)
    recon, codes, _, _ = tok(x)
    assert tok.tokens_per_image == 32 and codes.shape == (5, 32) and torch.equal(tok.encode(x), codes)
    assert tok.decode(codes).shape == x.shape and tok.model_args['stages'] == 2
