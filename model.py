"""
The models, and the optimizer that trains GPT (nanoGPT keeps that here too).

1) GPT: a causal transformer over the mixed text/image-token sequences, after nanoGPT
   (https://github.com/karpathy/nanoGPT), with a key/value cache for fast batched sampling; Muon, the
   optimizer of its blocks' matrices.
2) VQVAE: the image tokenizer (van den Oord et al. 2017, "Neural Discrete Representation Learning",
   https://arxiv.org/abs/1711.00937): an encoder, a quantiser that snaps each latent to a code, and a
   decoder. Its model_args say how many tokens an image becomes and how many codes there are; nothing
   else in the project assumes either.
3) ImageCNN: the reference classifier that scores generated images, for any image size, channel count
   and number of classes.
"""
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.nn import functional as F


# ----------------------------------------------------------------------------------------------------
# GPT

class CausalSelfAttention(nn.Module):

    def __init__(self, config):
        super().__init__()
        assert config.n_embd % config.n_head == 0
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.dropout = config.dropout

    def forward(self, x, cache=None):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        past = 0
        if cache is not None:  # cache = [k, v] of the positions already seen, or [None, None]
            if cache[0] is not None:
                past = cache[0].size(2)
                k = torch.cat([cache[0], k], dim=2)
                v = torch.cat([cache[1], v], dim=2)
            cache[0], cache[1] = k, v
        dropout = self.dropout if self.training else 0.0
        if past == 0 and x.device.type == 'cpu' and q.dtype == torch.bfloat16:
            # the CPU's fused attention is slower than plain matmuls backward in bfloat16 at these sizes
            # and no faster forward (README, performance), so spell it out as nanoGPT's fallback does
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
            att = att.masked_fill(~torch.ones(T, T, dtype=torch.bool, device=x.device).tril(), float('-inf'))
            att = F.dropout(F.softmax(att.float(), dim=-1).to(v.dtype), dropout, self.training)
            y = att @ v
        elif past == 0:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True)
        elif T == 1:  # one new token attends to everything before it
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)
        else:  # several new tokens after a cached prefix: causal mask shifted by the prefix
            mask = torch.ones(T, past + T, dtype=torch.bool, device=x.device).tril(diagonal=past)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x, cache=None):
        x = x + self.attn(self.ln_1(x), cache)
        return x + self.mlp(self.ln_2(x))


@dataclass
class GPTConfig:
    block_size: int = 32
    vocab_size: int = 64
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    bias: bool = False
    code_offset: int = 0     # token id of image code 0; codes run to the end of the vocabulary
    code_features: int = 0   # width of each code's fixed feature vector (0: codes are plain tokens)


class GPT(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            wpe=nn.Embedding(config.block_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=nn.LayerNorm(config.n_embd, bias=config.bias),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # weight tying (Press & Wolf 2016)
        if config.code_features:  # filled from the tokenizer by train.py, saved with the weights
            self.register_buffer('code_features', torch.zeros(config.vocab_size - config.code_offset, config.code_features))
            self.code_proj = nn.Linear(config.code_features, config.n_embd, bias=False)
        self.apply(self._init_weights)
        for pn, p in self.named_parameters():  # scaled init of the residual projections (GPT-2)
            if pn.endswith('c_proj.weight'):
                torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def get_num_params(self, non_embedding=True):
        n = sum(p.numel() for p in self.parameters())
        return n - self.transformer.wpe.weight.numel() if non_embedding else n

    def embeddings(self):
        """The (vocab_size, n_embd) token embeddings, which are also the output layer (tied). With
        code_features, image code i's row is its own vector plus a learned map of its fixed features
        (FSQ: its level in each channel), so codes that are near in the tokenizer are near here too and a
        rare code borrows what its neighbours learned; at the output, a code's logit is likewise a sum
        over its channels' levels plus its own part."""
        w = self.transformer.wte.weight
        if not self.config.code_features:
            return w
        off = self.config.code_offset
        return torch.cat([w[:off], w[off:] + self.code_proj(self.code_features).to(w.dtype)])

    def forward(self, idx, targets=None, kv_cache=None, weights=None):
        """Logits for every position with targets (and the mean loss over targets >= 0, weighted by
        weights where given), else for the last position only. kv_cache: a list of [k, v] per layer,
        extended in place."""
        B, T = idx.size()
        past = 0 if kv_cache is None or kv_cache[0][0] is None else kv_cache[0][0].size(2)
        assert past + T <= self.config.block_size, f"sequence of {past + T} > block size {self.config.block_size}"
        pos = torch.arange(past, past + T, dtype=torch.long, device=idx.device)
        emb = self.embeddings()
        x = self.transformer.drop(F.embedding(idx, emb) + self.transformer.wpe(pos))
        for i, block in enumerate(self.transformer.h):
            x = block(x, None if kv_cache is None else kv_cache[i])
        x = self.transformer.ln_f(x)
        if targets is not None:
            logits = F.linear(x, emb)
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1,
                                   reduction='mean' if weights is None else 'none')
            if weights is not None:
                w = weights.reshape(-1) * (targets.reshape(-1) != -1)
                loss = (loss * w).sum() / w.sum()
            return logits, loss
        return F.linear(x[:, [-1], :], emb), None

    def configure_optimizers(self, weight_decay, learning_rate, betas, device_type, muon=False, dtype='float32'):
        """AdamW; weight decay on matrices only (not on biases and norms), as nanoGPT. With muon, the
        blocks' matrices learn with Muon instead (the embeddings, which are also the output layer, and
        the norms stay with AdamW, as in Jordan et al. 2024). -> a list of optimizers, stepped together."""
        params = [p for p in self.parameters() if p.requires_grad]
        hidden = {id(p) for p in self.transformer.h.parameters() if p.dim() == 2} if muon else set()
        groups = [{'params': [p for p in params if p.dim() >= 2 and id(p) not in hidden], 'weight_decay': weight_decay},
                  {'params': [p for p in params if p.dim() < 2], 'weight_decay': 0.0}]
        extra = dict(fused=True) if device_type == 'cuda' else dict()
        optimizers = [torch.optim.AdamW(groups, lr=learning_rate, betas=betas, **extra)]
        if muon:
            optimizers.append(Muon([p for p in params if id(p) in hidden], lr=learning_rate, weight_decay=weight_decay,
                                   dtype=torch.bfloat16 if dtype == 'bfloat16' else torch.float32))
        return optimizers

    def estimate_flops_per_token(self, T=None):
        """Training FLOPs per token (forward + backward), PaLM appendix B: 6N + 12 L H Q T."""
        cfg = self.config
        T = cfg.block_size if T is None else T
        return 6 * self.get_num_params() + 12 * cfg.n_layer * cfg.n_embd * T

    @torch.no_grad()
    def next_token_probs(self, idx, candidates, batch_size=250):
        """Distribution of the next token over the candidate ids only, for each row of idx (B, T):
        reading a class this way can only answer with a class. -> (B, len(candidates))."""
        out = []
        for i in range(0, len(idx), batch_size):
            logits, _ = self(idx[i:i + batch_size])
            out.append(F.softmax(logits[:, -1, candidates].float(), dim=-1))
        return torch.cat(out)

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, allowed=None, generator=None,
                 guidance=0.0, uncond=None):
        """Extend every row of idx (B, T) by max_new_tokens sampled tokens, with a key/value cache.
        allowed: None, a (vocab,) bool mask, or a list of one mask per new token; tokens outside the
        mask are never drawn, so the output obeys the sequence grammar by construction.
        temperature 0 takes the most likely token.
        guidance > 0 with uncond (B, T') is classifier-free guidance (Ho & Salimans 2022,
        https://arxiv.org/abs/2207.12598), as autoregressive image models use it (Make-A-Scene, Gafni
        et al. 2022): logits given idx + guidance x (logits given idx - logits given uncond), every
        drawn token appended to both."""
        streams = [idx] + ([uncond] if guidance else [])
        caches = [[[None, None] for _ in self.transformer.h] for _ in streams]
        inputs = streams
        for i in range(max_new_tokens):
            out = [self(x, kv_cache=c)[0][:, -1, :].float() for x, c in zip(inputs, caches)]
            logits = out[0] + guidance * (out[0] - out[1]) if guidance else out[0]
            mask = allowed[i] if isinstance(allowed, (list, tuple)) else allowed
            if mask is not None:
                logits = logits.masked_fill(~mask, float('-inf'))
            if temperature == 0:
                idx_next = logits.argmax(dim=-1, keepdim=True)
            else:
                logits = logits / temperature
                if top_k is not None:
                    v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
                    logits[logits < v[:, [-1]]] = -float('Inf')
                probs = F.softmax(logits, dim=-1)
                idx_next = torch.multinomial(probs, num_samples=1, generator=generator)
            idx = torch.cat((idx, idx_next), dim=1)
            inputs = [idx_next] * len(streams)
        return idx


class Muon(torch.optim.Optimizer):
    """Muon (Jordan et al. 2024, https://kellerjordan.github.io/posts/muon/): SGD with Nesterov momentum
    whose update of each weight matrix is orthogonalized (its singular values pushed towards 1 by a
    Newton-Schulz iteration), so that the rare directions of a gradient move as far as the dominant one.
    The update is scaled to AdamW's RMS, 0.2 sqrt(max(rows, cols)) (Liu et al. 2025, "Muon is Scalable
    for LLM Training", https://arxiv.org/abs/2502.16982), so that one learning rate and weight decay
    serve both. The iteration runs in dtype: bfloat16, as in the original, where it is fast; float32 on
    a CPU that only emulates bfloat16 (there it would take seconds per step)."""

    def __init__(self, params, lr, weight_decay=0.0, momentum=0.95, ns_steps=5, dtype=torch.bfloat16):
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, momentum=momentum, ns_steps=ns_steps))
        self.dtype = dtype

    @staticmethod
    def orthogonalize(g, steps, dtype):
        """About U V^T for each g = U S V^T of a stack (..., rows, cols): a quintic Newton-Schulz iteration whose
        coefficients maximise the slope at 0 (Jordan et al.), so that a few steps take every singular value
        to about 0.7..1.2."""
        a, b, c = 3.4445, -4.7750, 2.0315
        x = g.to(dtype).reshape(-1, *g.shape[-2:])  # one matrix or a stack of them
        tall = x.size(-2) > x.size(-1)
        x = x.mT if tall else x  # so that x x^T is the smaller square
        x = x / x.norm(dim=(-2, -1), keepdim=True).clamp_min(1e-7)  # spectral norm <= Frobenius norm = 1
        for _ in range(steps):
            xxt = x @ x.mT
            x = torch.baddbmm(x, torch.baddbmm(xxt, xxt, xxt, beta=b, alpha=c), x, beta=a)
        return (x.mT if tall else x).reshape(g.shape)

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            shapes = {}  # matrices of one shape are orthogonalized together: a CPU pays per call at these sizes
            for p in group['params']:
                if p.grad is None:
                    continue
                buf = self.state[p].setdefault('momentum_buffer', torch.zeros_like(p))
                buf.lerp_(p.grad, 1 - group['momentum'])
                shapes.setdefault(p.shape, []).append((p, p.grad.lerp(buf, group['momentum'])))
            for pairs in shapes.values():
                updates = self.orthogonalize(torch.stack([g for _, g in pairs]), group['ns_steps'], self.dtype)
                for (p, _), update in zip(pairs, updates):
                    p.mul_(1 - group['lr'] * group['weight_decay'])
                    p.add_(update.to(p.dtype), alpha=-group['lr'] * 0.2 * math.sqrt(max(p.shape)))


# ----------------------------------------------------------------------------------------------------
# VQ-VAE image tokenizer

class VectorQuantizer(nn.Module):
    """Nearest-neighbour codebook with the straight-through estimator and the VQ-VAE losses:
    ||sg[z] - e||^2 moves the codes, beta * ||z - sg[e]||^2 commits the encoder (beta = 0.25)."""

    def __init__(self, codebook_size, code_dim, beta):
        super().__init__()
        self.beta = beta
        self.codebook = nn.Parameter(torch.randn(codebook_size, code_dim) / code_dim ** 0.5)

    def codes(self, z):
        """z (..., D) -> index of the nearest codebook entry (...)."""
        flat = z.reshape(-1, z.size(-1))
        d = (flat.pow(2).sum(1, keepdim=True) - 2 * flat @ self.codebook.t()
             + self.codebook.pow(2).sum(1)[None, :])
        return d.argmin(dim=1).view(z.shape[:-1])

    def vectors(self, codes):
        return self.codebook[codes]

    @torch.no_grad()
    def features(self):
        """(codebook_size, code_dim): the codebook, standardised per dimension (see GPT.embeddings)."""
        return (self.codebook - self.codebook.mean(0)) / (self.codebook.std(0) + 1e-8)

    def forward(self, z):
        codes = self.codes(z)
        zq = self.codebook[codes]
        loss = F.mse_loss(zq, z.detach()) + self.beta * F.mse_loss(z, zq.detach())
        return z + (zq - z).detach(), codes, loss

    @torch.no_grad()
    def init_kmeans(self, z, iters=20, generator=None):
        """Set the codebook to k-means centroids of encoder outputs z (N, D) (k-means++ seeding), so
        that every code starts where the data is and none starts dead."""
        K = self.codebook.size(0)
        centers = z[torch.randint(len(z), (1,), generator=generator)]
        for _ in range(1, K):
            d = torch.cdist(z, centers).min(dim=1).values.pow(2)
            centers = torch.cat([centers, z[torch.multinomial(d / d.sum(), 1, generator=generator)]])
        for _ in range(iters):
            assign = torch.cdist(z, centers).argmin(dim=1)
            for k in range(K):
                members = z[assign == k]
                if len(members):
                    centers[k] = members.mean(dim=0)
        self.codebook.copy_(centers)


class FSQ(nn.Module):
    """Finite scalar quantisation (Mentzer et al. 2023, https://arxiv.org/abs/2309.15505): each of the
    len(levels) latent channels is squashed by tanh and rounded (straight-through) to one of levels[i]
    values; the code is the mixed-radix number of those values. There is no codebook to learn and no
    auxiliary loss; a channel can still stick at one level when its latents drift into tanh's flat tails
    (see VQVAE's latent_norm). levels (8,5,5,5) gives 1000 codes."""

    def __init__(self, levels):
        super().__init__()
        levels = torch.tensor(levels, dtype=torch.long)
        self.register_buffer('levels', levels, persistent=False)
        self.register_buffer('basis', torch.cumprod(torch.cat([torch.ones(1, dtype=torch.long), levels[:-1]]), 0),
                             persistent=False)
        self.codebook_size = int(levels.prod())

    def _round(self, z):
        """z (..., D) -> integer levels in [0, L) (float, straight-through gradient)."""
        half = (self.levels - 1) * (1 - 1e-3) / 2
        offset = (self.levels % 2 == 0) * 0.5  # even L: values are -L/2 .. L/2 - 1
        bounded = torch.tanh(z + torch.atanh(offset / half)) * half - offset
        return bounded + (bounded.round() - bounded).detach() + self.levels // 2

    def vectors(self, codes):
        """codes (...) -> quantised latents (..., D) in [-1, 1]."""
        digits = (codes[..., None] // self.basis) % self.levels
        return (digits - self.levels // 2).float() / (self.levels // 2).float()

    def features(self):
        """(codebook_size, D + sum(levels)): each code's vector, standardised, and its level in each channel,
        one-hot, so that codes which are near or share a level share that part of a language model's
        embedding (see GPT.embeddings)."""
        codes = torch.arange(self.codebook_size, device=self.levels.device)
        digits = (codes[:, None] // self.basis) % self.levels
        v = self.vectors(codes)
        return torch.cat([(v - v.mean(0)) / v.std(0)] + [F.one_hot(digits[:, i], int(n)).float()
                                                         for i, n in enumerate(self.levels)], 1)

    def _index(self, q):
        """integer levels (..., D) -> code (...), the mixed-radix number."""
        return (q.detach().round().long() * self.basis).sum(-1)

    def codes(self, z):
        return self._index(self._round(z))

    def forward(self, z):
        q = self._round(z)
        return (q - self.levels // 2) / (self.levels // 2), self._index(q), z.new_zeros(())


class ResidualFSQ(nn.Module):
    """Coarse-to-fine codes: `stages` FSQ codes per latent (residual quantisation as in RQ-VAE, Lee et al.
    2022, https://arxiv.org/abs/2203.01941). Stage s quantises what the stages before it left over,
    scaled up by (levels - 1) ** s so that it fills FSQ's range; the latent is the sum of the stages.
    The codes come stage by stage (every latent's first code, then every latent's second, ...), so a
    sequence carries the whole coarse image before any detail."""

    def __init__(self, levels, stages):
        super().__init__()
        self.fsq = FSQ(levels)
        self.stages, self.codebook_size = stages, self.fsq.codebook_size
        steps = torch.arange(stages, dtype=torch.float)[:, None]
        self.register_buffer('scales', (self.fsq.levels.float() - 1) ** -steps, persistent=False)  # (stages, D)

    def forward(self, z):
        """z (B, N, D) -> the quantised latents (B, N, D), codes (B, stages * N), no auxiliary loss."""
        out, residual, codes = 0, z, []
        for scale in self.scales:
            q, c, _ = self.fsq(residual / scale)
            out, residual = out + q * scale, residual - (q * scale).detach()
            codes.append(c)
        return out, torch.cat(codes, -1), z.new_zeros(())

    def codes(self, z):
        return self(z)[1]

    def vectors(self, codes):
        """codes (B, stages * N) -> latents (B, N, D): the stages' vectors, scaled and summed."""
        staged = codes.reshape(*codes.shape[:-1], self.stages, -1)
        return (self.fsq.vectors(staged) * self.scales[:, None, :]).sum(-3)

    def features(self):
        return self.fsq.features()  # every stage draws from one FSQ alphabet; its position tells the stage


class Residual(nn.Module):
    """x + conv1x1(relu(conv3x3(x))), then ReLU: a residual block as in the VQ-VAE paper's encoder and
    decoder, widening what each code sees."""

    def __init__(self, h):
        super().__init__()
        self.block = nn.Sequential(nn.Conv2d(h, h, 3, 1, 1), nn.ReLU(), nn.Conv2d(h, h, 1))

    def forward(self, x):
        return F.relu(x + self.block(x))


class VQVAE(nn.Module):
    """The image tokenizer: encoder -> quantiser -> decoder, images (B, C, S, S) in [0, 1] <-> codes.

    kind='mlp' is the published tokenizer (github.com/suyashss/mnist_vlm): C*S*S -> hidden -> latent_dim
    with ReLUs, the last one included (a non-negative latent reconstructs better and its codes are
    easier to read), the latent cut into tokens_per_image chunks, each snapped to one of codebook_size
    codes, MLP decoder with a sigmoid.
    kind='conv' is a small convolutional encoder/decoder (stride-2 convolutions, as in the VQ-VAE
    paper) that maps the image to a grid x grid map of codes read in raster order: each token is a
    place in the image. grid 0 means S/4 (two stride-2 steps: 7 for 28x28); a smaller grid takes more
    steps (28 -> 14 -> 7 -> 4).
    kind='1d' reads the image as patches (grid x grid of them) together with tokens_per_image learned
    latent tokens in a transformer, and only the latents become codes: tokens that each may speak for
    the whole image, in no spatial order (TiTok, Yu et al. 2024, "An Image is Worth 32 Tokens for
    Reconstruction and Generation", https://arxiv.org/abs/2406.07550); its decoder is a transformer
    over the codes and one query per patch. depth: layers of each (conv: residual blocks at the grid).
    stages > 1 (conv, FSQ) gives each grid cell that many codes, coarse to fine (ResidualFSQ): the image
    is then stages * grid * grid tokens, the first grid of them a coarse picture.
    quantizer='vq' is a learned codebook (k-means initialised by vqvae.py); 'fsq' is FSQ with levels.
    latent_norm (FSQ) standardises each latent channel by its batch statistics (BatchNorm, Ioffe &
    Szegedy 2015) before FSQ bounds it with tanh: a channel that drifts into tanh's flat tails gets no
    gradient and sticks at one level, and the codes of its other levels die with it.
    loss='mse': squared error against the decoder's output (the published MLP's ends in a sigmoid; the
    conv decoder's is linear, clamped to [0, 1] when decoding, because squared error through a sigmoid
    sent every image to one FSQ code). loss='bce': the decoder's outputs are the logits of Bernoulli
    pixels (Kingma & Welling 2013 model MNIST so), trained by binary cross-entropy: sharper images."""

    def __init__(self, kind='mlp', quantizer='vq', image_size=28, channels=1, hidden=128, latent_dim=32,
                 tokens_per_image=8, codebook_size=26, beta=0.25, levels=(8, 5, 5, 5), grid=0, loss='mse', depth=0,
                 stages=1, latent_norm=False):
        super().__init__()
        if kind not in ('mlp', 'conv', '1d') or quantizer not in ('vq', 'fsq') or loss not in ('mse', 'bce'):
            raise SystemExit(f"error: tokenizer kind must be 'mlp', 'conv' or '1d', quantizer 'vq' or 'fsq' and loss "
                             f"'mse' or 'bce', got {kind!r}, {quantizer!r} and {loss!r}")
        if latent_norm and quantizer != 'fsq':
            raise SystemExit(f"error: latent_norm needs quantizer 'fsq', got {quantizer!r}")
        if stages != 1 and (kind, quantizer) != ('conv', 'fsq'):
            raise SystemExit(f"error: stages above 1 need kind 'conv' and quantizer 'fsq', got stages={stages} with "
                             f"{kind!r} and {quantizer!r}")
        if quantizer == 'fsq':
            self.quantizer = FSQ(levels) if stages == 1 else ResidualFSQ(levels, stages)
            codebook_size, code_dim = self.quantizer.codebook_size, len(levels)
        sizes = [image_size]  # the conv encoder's map sizes, halved (rounding up) until the grid
        if kind == 'conv':
            grid = grid or -(-image_size // 4)
            while sizes[-1] > grid:
                sizes.append(-(-sizes[-1] // 2))
            if sizes[-1] != grid or len(sizes) < 2:
                raise SystemExit(f"error: a conv tokenizer halves {image_size}x{image_size} images to grids of "
                                 f"{', '.join(str(s) for s in sizes[1:])}; got grid {grid}")
            tokens_per_image = stages * grid * grid
            code_dim = code_dim if quantizer == 'fsq' else latent_dim
        elif kind == '1d':
            grid = grid or -(-image_size // 4)
            if image_size % grid:
                raise SystemExit(f"error: a 1d tokenizer cuts {image_size}x{image_size} images into grid x grid square "
                                 f"patches: grid must divide {image_size}, got {grid}")
            code_dim = code_dim if quantizer == 'fsq' else latent_dim
        elif quantizer == 'vq':
            if latent_dim % tokens_per_image:
                raise SystemExit(f"error: latent_dim {latent_dim} must be a multiple of tokens_per_image "
                                 f"{tokens_per_image}")
            code_dim = latent_dim // tokens_per_image
        if quantizer == 'vq':
            self.quantizer = VectorQuantizer(codebook_size, code_dim, beta)
        self.model_args = dict(kind=kind, quantizer=quantizer, image_size=image_size, channels=channels, hidden=hidden,
                               latent_dim=latent_dim, tokens_per_image=tokens_per_image,
                               codebook_size=codebook_size, beta=beta, levels=list(levels), grid=grid, loss=loss,
                               depth=depth, stages=stages, latent_norm=latent_norm)
        self.kind, self.stages, self.image_size, self.channels = kind, stages, image_size, channels
        self.grid, self.loss = grid, loss
        self.tokens_per_image, self.codebook_size, self.code_dim = tokens_per_image, codebook_size, code_dim
        self.latent_norm = nn.BatchNorm1d(code_dim, affine=False) if latent_norm else None
        n, h = channels * image_size * image_size, hidden
        if kind == 'mlp':
            zdim = code_dim * tokens_per_image
            self.encoder = nn.Sequential(nn.Linear(n, h), nn.ReLU(), nn.Linear(h, zdim), nn.ReLU())
            self.decoder = nn.Sequential(nn.Linear(zdim, h), nn.ReLU(), nn.Linear(h, n),
                                         *([nn.Sigmoid()] if loss == 'mse' else []))
        elif kind == '1d':
            p, P, K = image_size // grid, grid * grid, tokens_per_image
            layer = lambda: nn.TransformerEncoderLayer(h, max(1, h // 32), 4 * h, dropout=0.0, activation='gelu',
                                                       batch_first=True, norm_first=True)
            self.patch = p
            self.embed = nn.Linear(channels * p * p, h)
            self.latent = nn.Parameter(torch.randn(K, h) * 0.02)       # the learned latent tokens
            self.pos = nn.Parameter(torch.randn(P + K, h) * 0.02)      # where each patch is; which latent
            self.encoder = nn.TransformerEncoder(layer(), max(depth, 1), enable_nested_tensor=False)
            self.to_code = nn.Sequential(nn.LayerNorm(h), nn.Linear(h, code_dim))
            self.from_code = nn.Linear(code_dim, h)
            self.queries = nn.Parameter(torch.randn(P + K, h) * 0.02)  # one per patch to rebuild; the codes' places
            self.decoder = nn.TransformerEncoder(layer(), max(depth, 1), enable_nested_tensor=False)
            self.to_pixels = nn.Sequential(nn.LayerNorm(h), nn.Linear(h, channels * p * p))
        else:
            steps = len(sizes) - 1
            width = [channels] + [h // 2 if i == 0 and steps > 1 else h for i in range(steps)]
            k = [4 if s % 2 == 0 else 3 for s in sizes[:-1]]  # 4 halves an even size, 3 an odd one (rounding up)
            down, up = {}, {}
            # made in this order (the first two steps down, their mirrors up, then each further step) so
            # that a given seed starts from the same weights whatever the number of steps
            for i in list(range(min(steps, 2))) + [None] + list(range(2, steps)):
                if i is None:
                    for j in reversed(range(min(steps, 2))):
                        up[j] = nn.ConvTranspose2d(width[j + 1], width[j], k[j], 2, 1)
                    continue
                down[i] = nn.Conv2d(width[i], width[i + 1], k[i], 2, 1)
                if i >= 2:
                    up[i] = nn.ConvTranspose2d(width[i + 1], width[i], k[i], 2, 1)
            relu = lambda layers: [m for layer in layers for m in (layer, nn.ReLU())]
            self.encoder = nn.Sequential(*relu(down[i] for i in range(steps)), nn.Conv2d(h, h, 3, 1, 1), nn.ReLU(),
                                         *[Residual(h) for _ in range(depth)], nn.Conv2d(h, code_dim, 1))
            self.decoder = nn.Sequential(nn.Conv2d(code_dim, h, 3, 1, 1), nn.ReLU(), *[Residual(h) for _ in range(depth)],
                                         *relu(up[i] for i in reversed(range(steps)))[:-1])

    def encode_latents(self, x):
        """images (B, C, S, S) in [0, 1] -> latents (B, tokens_per_image, code_dim), one per token."""
        B = x.size(0)
        if self.kind == 'mlp':
            z = self.encoder(x.reshape(B, -1)).view(B, self.tokens_per_image, -1)
        elif self.kind == '1d':
            patches = self.embed(F.unfold(x, self.patch, stride=self.patch).transpose(1, 2))
            seq = torch.cat([patches, self.latent.expand(B, -1, -1)], 1) + self.pos
            z = self.to_code(self.encoder(seq)[:, patches.size(1):])
        else:
            z = self.encoder(x).flatten(2).transpose(1, 2)  # raster order
        if self.latent_norm is not None:  # statistics over every image and place of the batch, in float32
            z = self.latent_norm(z.float().transpose(1, 2)).transpose(1, 2)
        return z

    def decode_latents(self, zq):
        B = zq.size(0)
        if self.kind == 'mlp':
            return self.decoder(zq.reshape(B, -1)).view(B, self.channels, self.image_size, self.image_size)
        if self.kind == '1d':
            P = self.grid * self.grid
            seq = self.queries + torch.cat([zq.new_zeros(B, P, self.queries.size(1)), self.from_code(zq)], 1)
            out = self.to_pixels(self.decoder(seq)[:, :P])
            return F.fold(out.transpose(1, 2), self.image_size, self.patch, stride=self.patch)
        return self.decoder(zq.transpose(1, 2).reshape(B, -1, self.grid, self.grid))

    def output_bias(self):
        """The bias of the layer that makes the pixels (vqvae.py starts it at the mean pixel)."""
        return (self.to_pixels if self.kind == '1d' else self.decoder)[-1].bias

    def to_image(self, out):
        """decoder output -> image in [0, 1]."""
        return torch.sigmoid(out) if self.loss == 'bce' else out.clamp(0, 1)

    def forward(self, x):
        """-> reconstruction (B, C, S, S) in [0, 1], codes (B, tokens_per_image), loss (reconstruction +
        quantiser)."""
        zq, codes, q_loss = self.quantizer(self.encode_latents(x))
        out = self.decode_latents(zq).float()
        rec_loss = F.binary_cross_entropy_with_logits(out, x) if self.loss == 'bce' else F.mse_loss(out, x)
        return self.to_image(out), codes, rec_loss + q_loss

    @torch.no_grad()
    def encode(self, x, batch_size=1000):
        """images (B, C, S, S) in [0, 1] -> codes (B, tokens_per_image), long; batch_size images at a time
        (batches that keep the activations in cache run faster on a CPU than one big batch)."""
        return torch.cat([self.quantizer.codes(self.encode_latents(x[i:i + batch_size]))
                          for i in range(0, len(x), batch_size)])

    @torch.no_grad()
    def decode(self, codes, batch_size=1000):
        """codes (B, tokens_per_image) -> images (B, C, S, S) in [0, 1], batch_size at a time."""
        return torch.cat([self.to_image(self.decode_latents(self.quantizer.vectors(codes[i:i + batch_size])))
                          for i in range(0, len(codes), batch_size)])


class ImageCNN(nn.Module):
    """The reference classifier that scores images objectively (LeNet-style, LeCun et al. 1998: two 5x5
    convolutions with max pooling, then two linear layers), for images (B, C, S, S) of n_classes.
    features() is its 128-wide penultimate layer, from which sample.py computes Frechet distances (as
    FID does with Inception, Heusel et al. 2017, https://arxiv.org/abs/1706.08500)."""

    def __init__(self, channels=1, image_size=28, n_classes=10, width=16):
        super().__init__()
        s = image_size // 4
        self.conv = nn.Sequential(nn.Conv2d(channels, width, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
                                  nn.Conv2d(width, 2 * width, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                                  nn.Linear(2 * width * s * s, 128), nn.ReLU())
        self.head = nn.Linear(128, n_classes)

    def features(self, x):
        return self.conv(x)

    def forward(self, x):
        return self.head(self.features(x))
