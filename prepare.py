"""
Turn MNIST into text: every image is encoded by the tokenizer, its codes become characters, and each
image becomes one sequence of one of two tasks, chosen 50/50 at random with a fixed seed:

    generation      number:7, image:PTKRWCIU.#######
    classification  image:PTKRWCIU, number:7.#######

padded with '#' to block_size. Writes to data_dir, per split (train = MNIST train[:50000], val =
train[50000:], test = MNIST test): SPLIT.txt (one sequence per line), SPLIT.bin (uint16 token ids,
block_size per sequence), SPLIT_codes.npy and SPLIT_labels.npy (every image's codes and digit, which
evaluation prompts are built from), logo.png (which code each digit puts at each position), and last
meta.json (vocabulary, format, and the SHA-256 of every file, so a half-rewritten folder is noticed).

    python prepare.py

This file also holds the Codec, the one definition of the letter codec and the sequence format.
"""
import hashlib
import json
import math
import os

import numpy as np
import torch

from model import atomic_write, load_tokenizer

# -----------------------------------------------------------------------------
tokenizer = 'out/vqvae/ckpt.pt'   # written by vqvae.py
data_dir = 'data/mnist_vlm'       # where the prepared sequences go
mnist_dir = ''                    # see vqvae.py
block_size = 0                    # every sequence is padded to this many characters; 0 = the
                                  # longest sequence rounded up to a multiple of 8
augment = 4                       # train: this many randomly moved copies of each image besides it
seed = 1337
# -----------------------------------------------------------------------------

PAD = '#'
END = '.'
GENERATION = 'number:{label}, image:{image}' + END
CLASSIFICATION = 'image:{image}, number:{label}' + END
DIGITS = '0123456789'
TEXT_CHARS = sorted(set(GENERATION.format(label='', image='') + CLASSIFICATION.format(label='', image='')
                        + DIGITS + PAD))
PUA = 0xE000  # Unicode Private Use Area: 6400 characters that no text uses


class Codec:
    """The sequence format in one place: image code <-> character, the two templates, padding, and
    character <-> token id. Codes get characters (and token ids) of their own, disjoint from the text:
    A..Z when there are at most 26 codes, else one character each from the Private Use Area, so the
    .txt files stay one character per token for any codebook up to 6400 entries."""

    def __init__(self, codebook_size, tokens_per_image, block_size):
        if not 1 <= codebook_size <= 6400:
            raise SystemExit(f"error: codebook_size must be 1..6400, got {codebook_size}")
        self.codebook_size, self.tokens_per_image, self.block_size = codebook_size, tokens_per_image, block_size
        self.code_chars = ''.join(chr((65 if codebook_size <= 26 else PUA) + i) for i in range(codebook_size))
        self.itos = list(TEXT_CHARS) + list(self.code_chars)
        self.stoi = {c: i for i, c in enumerate(self.itos)}
        self.code_offset = len(TEXT_CHARS)  # token id of code i is code_offset + i
        longest = len(GENERATION.format(label='0', image='x' * tokens_per_image))
        if longest > block_size:
            raise SystemExit(f"error: block_size {block_size} is too short: a sequence with "
                             f"{tokens_per_image} image tokens takes {longest} characters")

    @classmethod
    def from_meta(cls, meta):
        return cls(meta['codebook_size'], meta['tokens_per_image'], meta['block_size'])

    @property
    def vocab_size(self):
        return len(self.itos)

    # image codes <-> characters
    def image_text(self, codes):
        return ''.join(self.code_chars[int(c)] for c in codes)

    def image_codes(self, text):
        if len(text) != self.tokens_per_image or any(self.stoi.get(c, -1) < self.code_offset for c in text):
            raise SystemExit(f"error: an image is {self.tokens_per_image} code characters, got {text!r}")
        return np.array([self.stoi[c] - self.code_offset for c in text], dtype=np.int64)

    # the two tasks
    def generation(self, label, codes):
        return GENERATION.format(label=label, image=self.image_text(codes))

    def classification(self, codes, label):
        return CLASSIFICATION.format(label=label, image=self.image_text(codes))

    def generation_prompt(self, label):
        if str(label) not in DIGITS or len(str(label)) != 1:
            raise SystemExit(f"error: a label is one digit 0-9, got {label!r}")
        return GENERATION.split('{image}')[0].format(label=label)

    def classification_prompt(self, codes):
        return CLASSIFICATION.split('{label}')[0].format(image=self.image_text(codes))

    def is_generation(self, s):
        """Does s (unpadded) follow the generation template, with tokens_per_image image codes?"""
        head, _, rest = s.partition(', image:')
        return (len(head) == len('number:0') and head[:-1] == 'number:' and head[-1] in DIGITS
                and rest[-1:] == END and len(rest) == self.tokens_per_image + 1
                and all(c in self.code_chars for c in rest[:-1]))

    def generation_prompts(self, labels, device='cpu'):
        """Token ids (N, T) of 'number:d, image:' for each label."""
        return torch.tensor([self.encode(self.generation_prompt(d)) for d in labels], device=device)

    def image_prompts(self, n, device='cpu'):
        """Token ids (n, T) of 'image:', how a classification sequence starts: an image with no label
        before it, which classifier-free guidance samples against."""
        return torch.tensor([self.encode(CLASSIFICATION.split('{image}')[0])] * n, device=device)

    def classification_prompts(self, codes, device='cpu'):
        """Token ids (N, T) of 'image:XXXXXXXX, number:' for each row of codes."""
        return torch.tensor([self.encode(self.classification_prompt(c)) for c in codes], device=device)

    def pad(self, s):
        if len(s) > self.block_size:
            raise SystemExit(f"error: sequence of {len(s)} characters is longer than block_size {self.block_size}: {s!r}")
        return s + PAD * (self.block_size - len(s))

    # characters <-> token ids
    def encode(self, s):
        bad = sorted(set(c for c in s if c not in self.stoi))
        if bad:
            raise SystemExit(f"error: characters {''.join(bad)!r} are not in the vocabulary "
                             f"(text {''.join(TEXT_CHARS)!r} and {self.codebook_size} image codes)")
        return [self.stoi[c] for c in s]

    def decode(self, ids):
        return ''.join(self.itos[int(i)] for i in ids)

    def mask(self, chars=None, codes=False, device='cpu'):
        """Bool mask over the vocabulary: the given characters, and all image codes if codes=True."""
        m = torch.zeros(self.vocab_size, dtype=torch.bool, device=device)
        if chars:
            m[self.encode(chars)] = True
        if codes:
            m[self.code_offset:] = True
        return m


def augmented(images, generator, shift=2.0, rotate=10.0, scale=0.1):
    """Randomly moved copies of images (N, H, W): shifted up to shift pixels, rotated up to rotate
    degrees, scaled by up to 1 +- scale (the usual MNIST augmentation, e.g. Simard et al. 2003)."""
    import torch.nn.functional as F
    n, h, w = images.shape
    u = lambda: torch.rand(n, generator=generator) * 2 - 1
    a, s = u() * math.radians(rotate), 1 + u() * scale
    theta = torch.stack([torch.stack([torch.cos(a) / s, -torch.sin(a) / s, u() * 2 * shift / w], 1),
                         torch.stack([torch.sin(a) / s, torch.cos(a) / s, u() * 2 * shift / h], 1)], 1)
    grid = F.affine_grid(theta, (n, 1, h, w), align_corners=False)
    return F.grid_sample(images[:, None], grid, align_corners=False)[:, 0].clamp(0, 1)


def shifted(images, dx, dy):
    """images (N, H, W) moved dx pixels right and dy down (|dx|, |dy| <= 2), zeros coming in."""
    import torch.nn.functional as F
    return torch.roll(F.pad(images, (2, 2, 2, 2)), (dy, dx), (1, 2))[:, 2:-2, 2:-2]


def load_meta(data_dir):
    """meta.json of a prepared data_dir, or a one-line error saying to run prepare.py."""
    path = os.path.join(data_dir, 'meta.json')
    if not os.path.isfile(path):
        raise SystemExit(f"error: no prepared data in {data_dir} ({path} is missing): run prepare.py first")
    try:
        with open(path, encoding='utf-8') as f:
            return json.load(f)
    except ValueError as e:
        raise SystemExit(f"error: {path} is not valid JSON ({e}): run prepare.py again")


def load_split(data_dir, split, meta):
    """(sequences (N, block_size) int64, codes (N, tokens_per_image) int64, labels (N,) int64)."""
    base = os.path.join(data_dir, split)
    for p in (base + '.bin', base + '_codes.npy', base + '_labels.npy'):
        if not os.path.isfile(p):
            raise SystemExit(f"error: {p} is missing: run prepare.py first")
        if meta.get('files', {}).get(os.path.basename(p)) != sha256_file(p):
            raise SystemExit(f"error: {p} is not the file {data_dir}/meta.json describes (prepare.py "
                             f"still running, or interrupted?): run prepare.py again")
    seqs = np.fromfile(base + '.bin', dtype=meta['dtype'])
    if len(seqs) % meta['block_size']:
        raise SystemExit(f"error: {base}.bin is not a whole number of {meta['block_size']}-token sequences: run prepare.py again")
    seqs = torch.from_numpy(seqs.astype(np.int64).reshape(-1, meta['block_size']))
    codes = torch.from_numpy(np.load(base + '_codes.npy').astype(np.int64))
    labels = torch.from_numpy(np.load(base + '_labels.npy').astype(np.int64))
    return seqs, codes, labels


def training_pairs(seqs, pad_id):
    """Whole sequences (N, block_size) -> inputs and targets for next-token training: inputs are each
    sequence but its last token, targets the same shifted by one, padding targets -1 (no loss). Every
    row starts at a sequence start. Columns whose targets are all padding are cropped: the model is
    causal, so they change no other position's loss."""
    targets = seqs[:, 1:].clone()
    targets[targets == pad_id] = -1
    width = int((targets != -1).any(0).nonzero().max()) + 1
    return seqs[:, :width], targets[:, :width]


def data_signature(meta):
    """What a language-model checkpoint must agree on with the prepared data it is used with."""
    return {k: meta[k] for k in ('vocab', 'block_size', 'tokens_per_image', 'codebook_size', 'tokenizer_sha256')}


def check_data(ckpt, meta, path, data_dir):
    if ckpt.get('data') != data_signature(meta):
        raise SystemExit(f"error: {path} was trained on other data than {data_dir} (its vocabulary or "
                         f"tokenizer differs from {data_dir}/meta.json): use the data_dir it was trained on")


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            h.update(block)
    return h.hexdigest()


def draw_logo(codes, labels, codec, path):
    """Sequence logo per digit (Schneider & Stephens 1990): at each image position, the code letters
    stacked by frequency, the stack as high as the position's information content in bits. Private Use
    Area characters have no glyphs, so for more than 26 codes only the heights are drawn, laid out as
    the square grid of positions (the conv tokenizer's, raster order): where each digit is predictable."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    import matplotlib.transforms as mtransforms
    from matplotlib.font_manager import FontProperties
    from matplotlib.patches import PathPatch
    from matplotlib.textpath import TextPath
    K, n = codec.codebook_size, codec.tokens_per_image
    letters = K <= 26
    side = math.isqrt(n)
    shape = (side, side) if side * side == n else (1, n)
    fig, axes = plt.subplots(2, 5, figsize=(2.5 * 5 * max(1, n / 8) if letters else 12.5, 5.5), sharey=letters)
    font = FontProperties(family='DejaVu Sans Mono', weight='bold')
    colors = plt.get_cmap('tab20', max(K, 2))
    for d, ax in enumerate(axes.flat):
        c = codes[labels == d]
        freq = np.stack([np.bincount(c[:, p], minlength=K) for p in range(n)]) / max(len(c), 1)
        bits = np.log2(K) + np.where(freq > 0, freq * np.log2(np.where(freq > 0, freq, 1)), 0).sum(1)
        if not letters:
            im = ax.imshow(bits.reshape(shape), cmap='viridis', vmin=0, vmax=np.log2(K))
            ax.set_title(f"digit {d}")
            ax.set_xticks([])
            ax.set_yticks([])
            continue
        for p in range(n):
            y = 0.0
            for k in np.argsort(freq[p]):
                h = freq[p, k] * bits[p]
                if h < 0.02:
                    continue
                tp = TextPath((0, 0), codec.code_chars[k], size=1, prop=font)
                bb = tp.get_extents()
                t = (mtransforms.Affine2D().translate(-bb.x0, -bb.y0)
                     .scale(0.9 / bb.width, h / bb.height).translate(p + 0.05, y))
                ax.add_patch(PathPatch(t.transform_path(tp), color=colors(k), lw=0))
                y += h
        ax.set_xlim(0, n)
        ax.set_ylim(0, np.log2(K))
        ax.set_xticks(np.arange(n) + 0.5, [str(i) for i in range(n)])
        ax.set_title(f"digit {d}")
        if d % 5 == 0:
            ax.set_ylabel('bits')
    if not letters:
        fig.colorbar(im, ax=axes, label='bits')
    fig.suptitle('image codes per position and digit (MNIST train)' if letters else
                 'information content of the code at each grid position, per digit (MNIST train)')
    if letters:
        fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format='png', dpi=80))
    plt.close(fig)


if __name__ == '__main__':
    from configurator import configure
    from vqvae import mnist_splits
    config = configure(globals())
    tok, _ = load_tokenizer(tokenizer)
    if block_size == 0:
        block_size = -(-len(GENERATION.format(label='0', image='x' * tok.tokens_per_image)) // 8) * 8
    codec = Codec(tok.codebook_size, tok.tokens_per_image, block_size)
    g = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    dtype = np.uint16
    assert codec.vocab_size <= np.iinfo(dtype).max
    os.makedirs(data_dir, exist_ok=True)
    counts, files = {}, {}
    for split, (images, labels) in mnist_splits(mnist_dir).items():
        images = torch.from_numpy(images)
        if split == 'train' and augment:
            images = torch.cat([images] + [augmented(images, g) for _ in range(augment)])
            labels = np.tile(labels, augment + 1)
        codes = tok.encode(images).numpy()
        generation = rng.random(len(codes)) < 0.5
        lines = [codec.pad(codec.generation(y, c) if gen else codec.classification(c, y))
                 for c, y, gen in zip(codes, labels, generation)]
        ids = np.array([codec.encode(s) for s in lines], dtype=dtype)
        base = os.path.join(data_dir, split)
        atomic_write(base + '.txt', '\n'.join(lines) + '\n')
        atomic_write(base + '.bin', ids.tobytes())
        atomic_write(base + '_codes.npy', lambda tmp: np.save(tmp, codes.astype(np.int16)))
        atomic_write(base + '_labels.npy', lambda tmp: np.save(tmp, labels.astype(np.uint8)))
        files.update({os.path.basename(base + e): sha256_file(base + e) for e in ('.bin', '_codes.npy', '_labels.npy')})
        counts[split] = dict(sequences=len(lines), generation=int(generation.sum()),
                             classification=int((~generation).sum()))
        print(f"{split}: {len(lines)} sequences ({counts[split]['generation']} generation), e.g. {lines[0]}")
        if split == 'train':
            draw_logo(codes, labels, codec, os.path.join(data_dir, 'logo.png'))
    features = tok.quantizer.features().numpy().astype(np.float32)  # each code's features, for GPT.embeddings
    atomic_write(os.path.join(data_dir, 'code_features.npy'), lambda tmp: np.save(tmp, features))
    files['code_features.npy'] = sha256_file(os.path.join(data_dir, 'code_features.npy'))
    meta = dict(vocab=codec.itos, vocab_size=codec.vocab_size, block_size=block_size,
                tokens_per_image=codec.tokens_per_image, codebook_size=codec.codebook_size,
                code_offset=codec.code_offset, tokenizer=tokenizer, tokenizer_sha256=sha256_file(tokenizer),
                dtype='uint16', seed=seed, augment=augment, splits=counts, files=files)
    atomic_write(os.path.join(data_dir, 'meta.json'), json.dumps(meta, indent=1) + '\n')
    print(f"vocabulary of {codec.vocab_size} tokens: {''.join(TEXT_CHARS)!r} + {codec.codebook_size} codes; "
          f"wrote {data_dir}/meta.json and logo.png")
