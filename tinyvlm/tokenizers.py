"""
The image tokenizers: VQ-VAEs (van den Oord et al. 2017, "Neural Discrete Representation Learning",
https://arxiv.org/abs/1711.00937), images (B, C, S, S) in [0, 1] <-> codes (B, tokens_per_image).
Each architecture is a class of its own over one quantizer (quantizers.py); make_tokenizer builds the
one that a checkpoint's model_args (or vqvae.py's settings) describe. Nothing else in the project
assumes how many tokens an image becomes or how many codes there are.

    conv   stride-2 convolutions to a grid x grid map of codes read in raster order (the default)
    ink    drawings in one ink on one paper: the two colours and the place, then a conv grid of the ink
    1d     patches and learned latent tokens in a transformer; only the latents become codes (TiTok)
    mlp    the published tokenizer (github.com/suyashss/mnist_vlm): C*S*S -> hidden -> latent

loss='bce': the decoder's outputs are the logits of Bernoulli pixels (Kingma & Welling 2013 model
MNIST so), trained by binary cross-entropy: sharper images. loss='mse': squared error against the
decoder's output (the published MLP's ends in a sigmoid; the conv decoder's is linear, clamped to
[0, 1] when decoding, because squared error through a sigmoid sent every image to one FSQ code).
latent_norm (FSQ) standardises each latent channel by its batch statistics (BatchNorm, Ioffe &
Szegedy 2015) before FSQ bounds it with tanh: a channel that drifts into tanh's flat tails gets no
gradient and sticks at one level, and the codes of its other levels die with it.
"""
import torch
import torch.nn as nn
from torch.nn import functional as F

from tinyvlm import Error
from tinyvlm.images import background, shifted
from tinyvlm.quantizers import make_quantizer


class Tokenizer(nn.Module):
    """What every architecture shares: the quantizer between encoder and decoder, the optional latent
    standardisation, the loss, and batched encoding and decoding. A subclass makes its layers and
    says how images become latents (latents) and latents images (pixels)."""

    def __init__(self, quantizer, image_size, channels, tokens_per_image, grid, loss, latent_norm):
        super().__init__()
        self.quantizer = quantizer
        self.image_size, self.channels, self.tokens_per_image, self.grid, self.loss = (
            image_size, channels, tokens_per_image, grid, loss)
        self.codebook_size, self.code_dim = quantizer.codebook_size, quantizer.code_dim
        self.latent_norm = nn.BatchNorm1d(self.code_dim, affine=False) if latent_norm else None

    def encode_latents(self, x):
        """images (B, C, S, S) in [0, 1] -> latents (B, tokens_per_image, code_dim), one per token."""
        z = self.latents(x)
        if self.latent_norm is not None:  # statistics over every image and place of the batch, in float32
            z = self.latent_norm(z.float().transpose(1, 2)).transpose(1, 2)
        return z

    def targets(self, x):
        """What the decoder's pixels are trained to be for images x: the images themselves."""
        return x

    def to_image(self, out):
        """decoder output -> image in [0, 1]."""
        return torch.sigmoid(out) if self.loss == 'bce' else out.clamp(0, 1)

    def forward(self, x):
        """-> reconstruction (B, C, S, S) in [0, 1], codes (B, tokens_per_image), loss (reconstruction +
        quantiser), and the quantized latents the decoder read (what vqvae.py's class_weight classifies)."""
        zq, codes, q_loss = self.quantizer(self.encode_latents(x))
        out = self.pixels(zq).float()
        rec_loss = F.binary_cross_entropy_with_logits(out, x) if self.loss == 'bce' else F.mse_loss(out, x)
        return self.to_image(out), codes, rec_loss + q_loss, zq

    @torch.no_grad()
    def encode(self, x, batch_size=1000):
        """images (B, C, S, S) in [0, 1] -> codes (B, tokens_per_image), long; batch_size images at a time
        (batches that keep the activations in cache run faster on a CPU than one big batch)."""
        return torch.cat([self.quantizer.codes(self.encode_latents(x[i:i + batch_size]))
                          for i in range(0, len(x), batch_size)])

    @torch.no_grad()
    def decode(self, codes, batch_size=1000):
        """codes (B, tokens_per_image) -> images (B, C, S, S) in [0, 1], batch_size at a time."""
        return torch.cat([self.to_image(self.pixels(self.quantizer.vectors(codes[i:i + batch_size])))
                          for i in range(0, len(codes), batch_size)])


class Residual(nn.Module):
    """x + conv1x1(relu(conv3x3(x))), then ReLU: a residual block as in the VQ-VAE paper's encoder and
    decoder, widening what each code sees."""

    def __init__(self, h):
        super().__init__()
        self.block = nn.Sequential(nn.Conv2d(h, h, 3, 1, 1), nn.ReLU(), nn.Conv2d(h, h, 1))

    def forward(self, x):
        return F.relu(x + self.block(x))


class ConvTokenizer(Tokenizer):
    """Stride-2 convolutions (as in the VQ-VAE paper) take the image to a grid x grid map of codes read
    in raster order: each token is a place in the image. grid 0 means S/4 (two stride-2 steps: 7 for
    28x28); a smaller grid takes more steps (28 -> 14 -> 7 -> 4). depth: residual blocks at the grid,
    each side. With residual FSQ, each cell gets `stages` codes, coarse to fine: stages * grid * grid
    tokens, the first grid of them a coarse picture."""

    def __init__(self, quantizer, image_size, channels, hidden, grid, depth, loss, latent_norm):
        grid = grid or -(-image_size // 4)
        sizes = [image_size]  # the map sizes, halved (rounding up) until the grid
        while sizes[-1] > grid:
            sizes.append(-(-sizes[-1] // 2))
        if sizes[-1] != grid or len(sizes) < 2:
            raise Error(f"a conv tokenizer halves {image_size}x{image_size} images to grids of "
                        f"{', '.join(str(s) for s in sizes[1:])}; got grid {grid}")
        stages = getattr(quantizer, 'stages', 1)
        super().__init__(quantizer, image_size, channels, stages * grid * grid, grid, loss, latent_norm)
        h, steps, code_dim = hidden, len(sizes) - 1, self.code_dim
        width = [channels] + [h // 2 if i == 0 and steps > 1 else h for i in range(steps)]
        k = [4 if s % 2 == 0 else 3 for s in sizes[:-1]]  # 4 halves an even size, 3 an odd one (rounding up)
        down = [nn.Conv2d(width[i], width[i + 1], k[i], 2, 1) for i in range(steps)]
        up = [nn.ConvTranspose2d(width[i + 1], width[i], k[i], 2, 1) for i in reversed(range(steps))]
        relu = lambda layers: [m for layer in layers for m in (layer, nn.ReLU())]
        self.encoder = nn.Sequential(*relu(down), nn.Conv2d(h, h, 3, 1, 1), nn.ReLU(),
                                     *[Residual(h) for _ in range(depth)], nn.Conv2d(h, code_dim, 1))
        self.decoder = nn.Sequential(nn.Conv2d(code_dim, h, 3, 1, 1), nn.ReLU(), *[Residual(h) for _ in range(depth)],
                                     *relu(up)[:-1])

    def latents(self, x):
        return self.encoder(x).flatten(2).transpose(1, 2)  # raster order

    def pixels(self, zq):
        return self.decoder(zq.transpose(1, 2).reshape(zq.size(0), -1, self.grid, self.grid))

    def output_bias(self):
        """The bias of the layer that makes the pixels (vqvae.py starts it at the mean pixel)."""
        return self.decoder[-1].bias


def ink_and_paper(x):
    """Images (B, 3, S, S) seen as one ink on one paper -> the paper's colour (the median of the border),
    the ink's (the mean of the pixels at least half as far from the paper as the farthest), each
    (B, 3, 1, 1), and the ink map (B, 1, S, S): how far each pixel lies from the paper towards the ink,
    0 to 1. paper + map * (ink - paper) gives the image back wherever it holds those two colours."""
    paper = background(x)
    d = x - paper
    dist = d.norm(dim=1, keepdim=True)
    far = (dist >= 0.5 * dist.amax((2, 3), keepdim=True)).float()
    v = (d * far).sum((2, 3), keepdim=True) / far.sum((2, 3), keepdim=True).clamp(min=1)
    ink_map = ((d * v).sum(1, keepdim=True) / (v * v).sum(1, keepdim=True).clamp(min=1e-6)).clamp(0, 1)
    return paper, paper + v, ink_map


def two_colour_share(x):
    """How much of the images' (B, 3, S, S) variance about their mean colours ink_and_paper keeps: near 1
    for drawings in one ink on one paper, far lower for photos."""
    paper, ink, ink_map = ink_and_paper(x)
    lost = (x - paper - ink_map * (ink - paper)).pow(2).mean()
    return 1 - (lost / (x - x.mean((2, 3), keepdim=True)).pow(2).mean().clamp(min=1e-12)).item()


def ink_place(ink_map):
    """Where a drawing lies: ink maps (B, 1, S, S) -> (B, 2) long, the row and column of its centre of
    mass (pixels at least a quarter inked), moved as little as needed for centred() to keep every such
    pixel in the frame. The middle for a blank map."""
    S = ink_map.size(-1)
    mass = ink_map[:, 0] * (ink_map[:, 0] >= 0.25)
    at = torch.arange(S, dtype=mass.dtype, device=mass.device)
    place = []
    for dim in (2, 1):  # rows: mass summed over columns; columns: over rows
        m = mass.sum(dim)
        total = m.sum(1)
        centre = ((m * at).sum(1) / total.clamp(min=1e-6)).round().long()
        inked = m > 0
        first = torch.where(inked, at.long(), S).amin(1)
        last = torch.where(inked, at.long(), -1).amax(1)
        # centred() moves by S//2 - centre: keep first + that >= 0 and last + that <= S - 1
        centre = torch.maximum(torch.minimum(centre, S // 2 + first), S // 2 - (S - 1 - last))
        place.append(torch.where(total > 0, centre, S // 2).clamp(0, S - 1))
    return torch.stack(place, 1)


def centred(ink_map, place, back=False):
    """Ink maps (B, 1, S, S) moved so that the place (B, 2: row, column) comes to the middle, or with back,
    from the middle to the place; what comes in is blank."""
    d = (ink_map.size(-1) // 2 - place) * (-1 if back else 1)
    return shifted(ink_map, d[:, 1], d[:, 0], fill=0.0)


class InkTokenizer(ConvTokenizer):
    """Drawings in one ink on one paper, of any two colours, anywhere in the frame (a letter in red on
    green, a digit in black on yellow): each image becomes four codes, its paper's colour, its ink's and
    the row and column of the drawing's centre (ink_place), and then a conv grid of its ink map
    (ink_and_paper) moved to the middle, coded as a conv tokenizer codes MNIST's centred digits. What a
    drawing is, is coded apart from its colours and its place: the same glyph in any colours, anywhere,
    gets the same grid codes, which a language model learns once instead of once per pair of colours
    and place, and a drawing it writes cannot drift off its own middle (without the place codes, rows
    of blank paper at low temperature ran into empty frames). A colour's code is its three channels
    rounded to the quantizer's three levels (5,5,5: steps of 1/4), in FSQ's mixed radix, so that its
    code features say how red, green and blue it is; a place's code is its pixel row or column.
    4 + grid * grid tokens."""

    lead = 4

    def __init__(self, quantizer, image_size, hidden, grid, depth, loss, latent_norm):
        if not hasattr(quantizer, 'levels') or quantizer.code_dim != 3 or getattr(quantizer, 'stages', 1) != 1:
            raise Error("an ink tokenizer gives a colour one code: it needs fsq levels of three numbers (like 5,5,5) "
                        "and stages 1")
        if quantizer.codebook_size < image_size:
            raise Error(f"an ink tokenizer gives each row and column of a {image_size}x{image_size} image a code: it needs "
                        f"at least {image_size} codes, got {quantizer.codebook_size}")
        super().__init__(quantizer, image_size, 1, hidden, grid, depth, loss, latent_norm)
        self.channels, self.tokens_per_image = 3, self.lead + self.grid * self.grid

    def targets(self, x):
        ink_map = ink_and_paper(x)[2]
        return centred(ink_map, ink_place(ink_map))

    def colour_codes(self, colours):
        """colours (B, 3, 1, 1) in [0, 1] -> codes (B,)"""
        q = self.quantizer
        return ((colours.flatten(1).clamp(0, 1) * (q.levels - 1)).round().long() * q.basis).sum(1)

    def colours(self, codes):
        q = self.quantizer
        return (((codes[:, None] // q.basis) % q.levels).float() / (q.levels - 1))[..., None, None]

    def split(self, x):
        """images -> the lead codes (paper, ink, row, column) and the centred ink map"""
        paper, ink, ink_map = ink_and_paper(x)
        place = ink_place(ink_map)
        return torch.cat([self.colour_codes(paper)[:, None], self.colour_codes(ink)[:, None], place], 1), centred(ink_map, place)

    def compose(self, lead, centred_map):
        """The lead codes and a centred ink map -> the image: the map moved back to its place, in its colours."""
        paper, ink = self.colours(lead[:, 0]), self.colours(lead[:, 1])
        place = lead[:, 2:4].clamp(0, self.image_size - 1)  # a language model may write any code there
        return paper + centred(centred_map, place, back=True) * (ink - paper)

    def forward(self, x):
        lead, target = self.split(x)
        zq, grid_codes, q_loss = self.quantizer(self.encode_latents(target))
        out = self.pixels(zq).float()
        rec_loss = (F.binary_cross_entropy_with_logits(out, target) if self.loss == 'bce' else
                    F.mse_loss(out, target))
        return self.compose(lead, self.to_image(out)), torch.cat([lead, grid_codes], 1), rec_loss + q_loss, zq

    @torch.no_grad()
    def encode(self, x, batch_size=1000):
        out = []
        for i in range(0, len(x), batch_size):
            lead, target = self.split(x[i:i + batch_size])
            out.append(torch.cat([lead, self.quantizer.codes(self.encode_latents(target))], 1))
        return torch.cat(out)

    @torch.no_grad()
    def decode(self, codes, batch_size=1000):
        L = self.lead
        return torch.cat([self.compose(c[:, :L], self.to_image(self.pixels(self.quantizer.vectors(c[:, L:]))))
                          for c in codes.split(batch_size)])


class LatentTokenizer(Tokenizer):
    """Reads the image as grid x grid patches together with tokens_per_image learned latent tokens in a
    transformer, and only the latents become codes: tokens that each may speak for the whole image, in
    no spatial order (TiTok, Yu et al. 2024, "An Image is Worth 32 Tokens for Reconstruction and
    Generation", https://arxiv.org/abs/2406.07550). The decoder is a transformer over the codes and one
    query per patch. depth: layers of each (at least 1)."""

    def __init__(self, quantizer, image_size, channels, hidden, grid, depth, tokens_per_image, loss, latent_norm):
        grid = grid or -(-image_size // 4)
        if image_size % grid:
            raise Error(f"a 1d tokenizer cuts {image_size}x{image_size} images into grid x grid square patches: grid "
                        f"must divide {image_size}, got {grid}")
        super().__init__(quantizer, image_size, channels, tokens_per_image, grid, loss, latent_norm)
        h, p, P, K = hidden, image_size // grid, grid * grid, tokens_per_image
        layer = lambda: nn.TransformerEncoderLayer(h, max(1, h // 32), 4 * h, dropout=0.0, activation='gelu',
                                                   batch_first=True, norm_first=True)
        self.patch = p
        self.embed = nn.Linear(channels * p * p, h)
        self.latent = nn.Parameter(torch.randn(K, h) * 0.02)       # the learned latent tokens
        self.pos = nn.Parameter(torch.randn(P + K, h) * 0.02)      # where each patch is; which latent
        self.encoder = nn.TransformerEncoder(layer(), max(depth, 1), enable_nested_tensor=False)
        self.to_code = nn.Sequential(nn.LayerNorm(h), nn.Linear(h, self.code_dim))
        self.from_code = nn.Linear(self.code_dim, h)
        self.queries = nn.Parameter(torch.randn(P + K, h) * 0.02)  # one per patch to rebuild; the codes' places
        self.decoder = nn.TransformerEncoder(layer(), max(depth, 1), enable_nested_tensor=False)
        self.to_pixels = nn.Sequential(nn.LayerNorm(h), nn.Linear(h, channels * p * p))

    def latents(self, x):
        patches = self.embed(F.unfold(x, self.patch, stride=self.patch).transpose(1, 2))
        seq = torch.cat([patches, self.latent.expand(x.size(0), -1, -1)], 1) + self.pos
        return self.to_code(self.encoder(seq)[:, patches.size(1):])

    def pixels(self, zq):
        P = self.grid * self.grid
        seq = self.queries + torch.cat([zq.new_zeros(zq.size(0), P, self.queries.size(1)), self.from_code(zq)], 1)
        out = self.to_pixels(self.decoder(seq)[:, :P])
        return F.fold(out.transpose(1, 2), self.image_size, self.patch, stride=self.patch)

    def output_bias(self):
        return self.to_pixels[-1].bias


class MLPTokenizer(Tokenizer):
    """The published tokenizer: C*S*S -> hidden -> code_dim * tokens_per_image with ReLUs, the last one
    included (a non-negative latent reconstructs better and its codes are easier to read), the latent
    cut into tokens_per_image chunks, each snapped to a code; an MLP decoder (with a sigmoid for mse)."""

    def __init__(self, quantizer, image_size, channels, hidden, tokens_per_image, loss, latent_norm):
        super().__init__(quantizer, image_size, channels, tokens_per_image, 0, loss, latent_norm)
        n, h, zdim = channels * image_size * image_size, hidden, self.code_dim * tokens_per_image
        self.encoder = nn.Sequential(nn.Linear(n, h), nn.ReLU(), nn.Linear(h, zdim), nn.ReLU())
        self.decoder = nn.Sequential(nn.Linear(zdim, h), nn.ReLU(), nn.Linear(h, n),
                                     *([nn.Sigmoid()] if loss == 'mse' else []))

    def latents(self, x):
        return self.encoder(x.reshape(x.size(0), -1)).view(x.size(0), self.tokens_per_image, -1)

    def pixels(self, zq):
        return self.decoder(zq.reshape(zq.size(0), -1)).view(-1, self.channels, self.image_size, self.image_size)

    def output_bias(self):
        return self.decoder[2].bias


def make_tokenizer(kind='conv', quantizer='fsq', image_size=28, channels=1, hidden=64, latent_dim=32,
                   tokens_per_image=8, codebook_size=26, beta=0.25, levels=(5, 5, 5), grid=0, loss='bce', depth=0,
                   stages=1, latent_norm=False):
    """The tokenizer these settings describe (vqvae.py's, or a checkpoint's model_args), its model_args
    stored on it as they were resolved (the grid, the token count, the codebook). vq's code vectors are
    latent_dim wide, for the mlp a chunk of it."""
    if kind == 'mlp' and quantizer == 'vq' and latent_dim % tokens_per_image:
        raise Error(f"latent_dim {latent_dim} must be a multiple of tokens_per_image {tokens_per_image}")
    code_dim = latent_dim // tokens_per_image if kind == 'mlp' else latent_dim
    q = make_quantizer(quantizer, tuple(levels), stages, codebook_size, code_dim, beta)
    common = dict(image_size=image_size, channels=channels, hidden=hidden, loss=loss, latent_norm=latent_norm)
    if kind == 'conv':
        tok = ConvTokenizer(q, grid=grid, depth=depth, **common)
    elif kind == 'ink':
        if channels != 3:
            raise Error("kind 'ink' is for colour images (one ink on one paper); these are grey: use kind 'conv'")
        tok = InkTokenizer(q, grid=grid, depth=depth, **{k: v for k, v in common.items() if k != 'channels'})
    elif kind == '1d':
        tok = LatentTokenizer(q, grid=grid, depth=depth, tokens_per_image=tokens_per_image, **common)
    else:
        tok = MLPTokenizer(q, tokens_per_image=tokens_per_image, **common)
    tok.kind = kind
    tok.model_args = dict(kind=kind, quantizer=quantizer, latent_dim=latent_dim, beta=beta, levels=list(levels),
                          depth=depth, stages=stages, grid=tok.grid, tokens_per_image=tok.tokens_per_image,
                          codebook_size=tok.codebook_size, **common)
    return tok
