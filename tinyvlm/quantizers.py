"""
Quantizers: each turns latent vectors into discrete codes and back, and gives each code a fixed
feature vector that the language model's embeddings share structure through (GPT.embeddings).
Every tokenizer (tokenizers.py) uses one of them.

    FSQ          finite scalar quantisation: no codebook to learn (the default)
    ResidualFSQ  several FSQ codes per latent, coarse to fine
    VectorQuantizer  a learned codebook (the published MLP tokenizer's)
"""
import torch
import torch.nn as nn
from torch.nn import functional as F

class VectorQuantizer(nn.Module):
    """Nearest-neighbour codebook with the straight-through estimator and the VQ-VAE losses:
    ||sg[z] - e||^2 moves the codes, beta * ||z - sg[e]||^2 commits the encoder (beta = 0.25)."""

    def __init__(self, codebook_size, code_dim, beta):
        super().__init__()
        self.beta, self.codebook_size, self.code_dim = beta, codebook_size, code_dim
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
    (see the tokenizers' latent_norm). levels (8,5,5,5) gives 1000 codes."""

    def __init__(self, levels):
        super().__init__()
        levels = torch.tensor(levels, dtype=torch.long)
        self.register_buffer('levels', levels, persistent=False)
        self.register_buffer('basis', torch.cumprod(torch.cat([torch.ones(1, dtype=torch.long), levels[:-1]]), 0),
                             persistent=False)
        self.codebook_size, self.code_dim = int(levels.prod()), len(levels)

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
        self.stages, self.codebook_size, self.code_dim = stages, self.fsq.codebook_size, self.fsq.code_dim
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



def make_quantizer(quantizer, levels, stages, codebook_size, code_dim, beta):
    """'fsq': FSQ with levels (ResidualFSQ with stages > 1); 'vq': a codebook of codebook_size vectors
    of code_dim, with commitment cost beta."""
    if quantizer == 'fsq':
        return FSQ(levels) if stages == 1 else ResidualFSQ(levels, stages)
    return VectorQuantizer(codebook_size, code_dim, beta)
