"""
The causal transformer over the mixed text/image-token sequences, after nanoGPT
(https://github.com/karpathy/nanoGPT), with a key/value cache for fast batched sampling and
classifier-free guidance; and Muon, the optimizer of its blocks' matrices (nanoGPT keeps the
optimizer's configuration with the model too).
"""
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.nn import functional as F

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
            # and no faster forward, so spell it out as nanoGPT's fallback does
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

