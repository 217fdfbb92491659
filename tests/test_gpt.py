"""gpt: the causal transformer (key/value cache, guidance, weighted loss, code features, reading) and Muon."""
import pytest
import torch
import torch.nn.functional as F

from make_data import mnist_codec
from tinyvlm.datasets import IDX_SETS
from tinyvlm.gpt import GPT, GPTConfig, Muon
from tinyvlm.quantizers import FSQ
from tinyvlm.sequences import Codec

FASHION = IDX_SETS['fashion']['classes']


def tiny_gpt(vocab_size=50):
    torch.manual_seed(0)
    return GPT(GPTConfig(block_size=32, vocab_size=vocab_size, n_layer=2, n_head=2, n_embd=32)).eval()


def test_kv_cache_gives_the_same_tokens():
    """Greedy generation with the cache draws what the whole prefix read again at every step draws."""
    codec = mnist_codec()
    model = tiny_gpt(codec.vocab_size)
    idx = codec.prompts('generation', 'image', labels=range(10))
    mask = codec.code_mask()
    out = model.generate(idx, 8, temperature=0, allowed=mask)
    assert (out[:, idx.size(1):] >= codec.code_offset).all()  # only image codes were drawn
    plain = idx
    for _ in range(8):  # nanoGPT's loop: the whole prefix every step
        logits, _ = model(plain, targets=torch.zeros_like(plain))
        plain = torch.cat([plain, logits[:, -1].masked_fill(~mask, -float('inf')).argmax(-1, keepdim=True)], 1)
    assert torch.equal(out, plain)
    cache = [[None, None] for _ in model.transformer.h]  # prefix + several tokens at once == one pass
    full, _ = model(out, targets=torch.zeros(10, 11, dtype=torch.long))  # 3 prompt tokens, 8 codes
    model(out[:, :5], kv_cache=cache)
    part, _ = model(out[:, 5:], kv_cache=cache)
    assert torch.allclose(part[:, -1], full[:, 10], atol=1e-5)


def test_guidance_changes_the_distribution():
    """Classifier-free guidance against 'image:': other tokens than without guidance, still codes only."""
    codec = mnist_codec()
    model = tiny_gpt(codec.vocab_size)
    idx, uncond = codec.prompts('generation', 'image', labels=range(10)), codec.prompts('classification', 'image', labels=[None] * 10)
    assert codec.decode(uncond[0]) == 'image:'
    run = lambda g: model.generate(idx, 8, allowed=codec.code_mask(), generator=torch.Generator().manual_seed(1),
                                   guidance=g, uncond=uncond)
    guided = run(2.0)
    assert torch.equal(guided, run(2.0)) and not torch.equal(guided, run(0.0))
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


@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
@pytest.mark.parametrize('shape', [(32, 96), (96, 32), (64, 64)])
def test_muon_orthogonalizes(shape, dtype):
    """Muon's update has the gradient's shape and every singular value near 1, the gradient's spread over
    a decade."""
    torch.manual_seed(0)
    k = min(shape)
    u0, v0 = torch.linalg.qr(torch.randn(shape[0], k))[0], torch.linalg.qr(torch.randn(shape[1], k))[0]
    g = u0 @ torch.diag(torch.logspace(0, 1, k)) @ v0.T  # singular values from 1 to 10
    u = Muon.orthogonalize(g, 5, dtype)
    s = torch.linalg.svdvals(u.float())
    assert u.shape == g.shape and u.dtype == dtype and s.min() > 0.5 and s.max() < 1.5
    assert (u.float() * g).sum() > 0  # a descent direction


def test_optimizers_split_the_parameters():
    """With muon, the blocks' matrices go to Muon and everything else (tied embeddings, norms) to AdamW,
    each parameter once; a step with Muon changes every parameter that has a gradient."""
    model = tiny_gpt().train()
    adamw, muon = model.configure_optimizers(0.1, 1e-3, (0.9, 0.99), 'cpu', muon=True)
    hidden = [p for p in model.transformer.h.parameters() if p.dim() == 2]
    in_muon = [p for g in muon.param_groups for p in g['params']]
    in_adamw = [p for g in adamw.param_groups for p in g['params']]
    assert {id(p) for p in in_muon} == {id(p) for p in hidden} and not {id(p) for p in in_muon} & {id(p) for p in in_adamw}
    assert len(in_muon) + len(in_adamw) == len(list(model.parameters()))
    assert len(model.configure_optimizers(0.1, 1e-3, (0.9, 0.99), 'cpu')) == 1  # AdamW alone
    before = [p.detach().clone() for p in model.parameters()]
    x = torch.randint(50, (4, 16))
    model(x, x)[1].backward()
    adamw.step()
    muon.step()
    assert all(not torch.equal(a, p) for a, p in zip(before, model.parameters()))


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


def test_next_token_probs_only_over_the_classes():
    """Reading: the next token's distribution over the class tokens only."""
    codec = Codec(FASHION, 'class', 26, 8, 40)
    model = tiny_gpt(codec.vocab_size)
    idx = codec.prompts('classification', 'label', codes=[[0] * 8, [3] * 8, [5] * 8])
    assert codec.decode(idx[0]) == 'image:AAAAAAAA, class:'
    p = model.next_token_probs(idx, codec.label_ids, batch_size=2)
    logits, _ = model(idx)
    assert p.shape == (3, 10) and torch.allclose(p, F.softmax(logits[:, -1, codec.label_ids], -1))
