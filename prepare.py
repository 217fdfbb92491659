"""
Turn a data set into text: every image is encoded by the tokenizer, its codes become characters, and
each image becomes one sequence of one of the TASKS, chosen at random with a fixed seed in the `shares` given:

    generation      number:7, image:ÀÁÆ...Ŀ.###        class:Ankle boot, image:ÀÁÆ...Ŀ.###
    classification  image:ÀÁÆ...Ŀ, number:7.###        image:ÀÁÆ...Ŀ, class:Ankle boot.###

MNIST keeps the published key 'number'; other data sets say 'class' and the class name. Sequences are
padded with '#' to block_size tokens ('number:', the class name, ', image:' and '.' are one token each:
see Codec). The data set is the one the tokenizer was trained on (vqvae.py
--dataset=...). Writes to data_dir, per split (train, val, test): SPLIT.txt (one sequence per line),
SPLIT.bin (uint16 token ids, block_size per sequence), SPLIT_codes.npy, SPLIT_labels.npy and
SPLIT_tasks.npy (every sequence's image codes, class and task), SPLIT_images.npy (the original images,
which evaluation and the reference classifier use), code_features.npy, logo.png (how predictable each
code position is per class), and last meta.json (data set, class names, vocabulary, format, and the
SHA-256 of every file, so a half-rewritten folder is noticed). A failed run leaves an earlier
data_dir as it was: every file is written under a temporary name and renamed in place at the end.

    python prepare.py

This file also holds the Codec: the one definition of the letter codec and the sequence tasks.
"""
import os
import re
import unicodedata

import numpy as np
import torch

from common import Progress, atomic_write, load_tokenizer, lock_folder, sha256_file, write_json
from dataset import as_float, augmented, reload_dataset

# -----------------------------------------------------------------------------
tokenizer = 'out/vqvae/ckpt.pt'   # written by vqvae.py; it also names the data set
data_dir = 'data/vlm'             # where the prepared sequences go
block_size = 0                    # every sequence is padded to this many tokens; 0 = the
                                  # longest sequence rounded up to a multiple of 8
augment = 4                       # train: this many randomly moved copies of each image besides it
shift = 2.0                       # ... each moved up to this many pixels,
rotate = 10.0                     # ... rotated up to this many degrees
scale = 0.1                       # ... and scaled by up to 1 +- this;
flip = False                      # ... and half of them mirrored left to right, for images whose mirror
                                  # image is as likely (not digits); sample.py then reads mirror images too
shares = '1,1'                    # how the sequences divide among the TASKS, in their order: '1,3' makes
                                  # a quarter of them generation and three quarters classification
seed = 1337
# -----------------------------------------------------------------------------

PAD = '#'
END = '.'
TASKS = {  # name: template; adding a task is adding a line (and a number to shares)
    'generation': '{key}:{label}, image:{image}' + END,
    'classification': 'image:{image}, {key}:{label}' + END,
}
CODE_RANGES = ((0xC0, 0x530), (0x1E00, 0x2000), (0x4E00, 0xA000))  # Latin, Greek, Cyrillic letters; then CJK


def code_alphabet(n, exclude=''):
    """n characters for n image codes: A..Z for up to 26, else letters that every terminal prints
    (Latin-1 and Latin Extended, IPA, Greek, Cyrillic, then CJK ideographs: left-to-right, no combining
    marks), never one of the text's characters."""
    if n <= 26:
        return ''.join(chr(65 + i) for i in range(n))
    chars = (chr(c) for a, b in CODE_RANGES for c in range(a, b))
    ok = [c for c in chars if unicodedata.category(c) in ('Lu', 'Ll', 'Lo') and unicodedata.bidirectional(c) == 'L'
          and c.isprintable() and c not in exclude]
    if n > len(ok):
        raise SystemExit(f"error: a codebook of {n} codes is larger than the {len(ok)} code characters there are")
    return ''.join(ok[:n])


def square_side(n):
    """The grid of data prepared before meta.json named it: a square token count was a conv grid."""
    side = int(n ** 0.5)
    return side if side * side == n else 0


class Codec:
    """The sequence format in one place: image code <-> character, class name <-> label, the TASKS,
    padding, and text <-> token ids. The text between a template's fields ('number:', ', image:', '.')
    is one token per piece, as a class name is one token however long: both are fixed, so spelling
    them out would only lengthen every sequence (a fifth of its positions) without telling the model
    anything. An image code is a token with a character of its own, disjoint from the text, so that
    the .txt files read as the sequences the model sees. Data prepared when every template character
    was a token (a vocabulary of single characters) keeps that."""

    def __init__(self, classes, key, codebook_size, tokens_per_image, block_size, vocab=None, tasks=None, grid=0):
        self.classes, self.key = list(classes), key
        self.codebook_size, self.tokens_per_image, self.block_size = codebook_size, tokens_per_image, block_size
        self.grid = grid  # codes per side of a spatial grid in raster order (conv tokenizer); 0: tokens in no place
        self.rows = grid or tokens_per_image  # what completion keeps the first of: grid rows, else single tokens
        self.tasks = tasks or {name: t.replace('{key}', key) for name, t in TASKS.items()}
        if vocab is None:
            pieces = set(p for t in self.tasks.values() for p in re.split(r'\{\w+\}', t) if p) | {PAD}
            clash = sorted(pieces & set(classes))
            if clash:
                raise SystemExit(f"error: class name {clash[0]!r} is also a piece of the sequence format; rename it")
            text = sorted(pieces | set(classes))
            vocab = text + list(code_alphabet(codebook_size, exclude=''.join(text)))
        self.itos = list(vocab)
        self.stoi = {c: i for i, c in enumerate(self.itos)}
        self.code_offset = len(self.itos) - codebook_size  # token id of code i is code_offset + i
        self.code_chars = ''.join(self.itos[self.code_offset:])
        self.label_ids = [self.stoi[c] for c in self.classes]  # what reading chooses from
        longest = max(len(self.tokens(t, k, [0] * tokens_per_image)) for t in self.tasks for k in range(len(classes)))
        if longest > block_size:
            raise SystemExit(f"error: block_size {block_size} is too short: a sequence with {tokens_per_image} image "
                             f"tokens takes {longest}")
        self._patterns = {t: re.compile(re.escape(s).replace(r'\{label\}', '(?P<label>' + '|'.join(
            re.escape(c) for c in sorted(self.classes, key=len, reverse=True)) + ')').replace(
            r'\{image\}', f'(?P<image>[{re.escape(self.code_chars)}]{{{tokens_per_image}}})'))
            for t, s in self.tasks.items()}

    @classmethod
    def from_meta(cls, meta):
        grid = meta['grid'] if 'grid' in meta else square_side(meta['tokens_per_image'])
        return cls(meta['classes'], meta['key'], meta['codebook_size'], meta['tokens_per_image'], meta['block_size'],
                   meta['vocab'], meta['tasks'], grid)

    @property
    def vocab_size(self):
        return len(self.itos)

    # image codes <-> characters
    def image_text(self, codes):
        return ''.join(self.code_chars[int(c)] for c in codes)

    def image_codes(self, text):
        if len(text) != self.tokens_per_image or any(c not in self.code_chars for c in text):
            raise SystemExit(f"error: an image is {self.tokens_per_image} code characters, got {text!r}")
        return np.array([self.stoi[c] - self.code_offset for c in text], dtype=np.int64)

    # class names <-> labels
    def label(self, name):
        """A class by its name (exactly, else ignoring case), or by its number 0..K-1."""
        name = unicodedata.normalize('NFC', str(name).strip())
        if name in self.classes:
            return self.classes.index(name)
        folded = [i for i, c in enumerate(self.classes) if c.casefold() == name.casefold()]
        if len(folded) == 1:
            return folded[0]
        if name.isdigit() and int(name) < len(self.classes):
            return int(name)
        shown = ', '.join(self.classes[:12]) + (', ...' if len(self.classes) > 12 else '')
        raise SystemExit(f"error: unknown class {name!r}: expected one of {shown} (or a number 0-{len(self.classes) - 1})")

    def labels(self, spec):
        """Comma-separated class names -> labels; '' = every class. Where every class name is one
        character (MNIST's digits), a run of them also works: '0123456789'."""
        if not str(spec).strip():
            return list(range(len(self.classes)))
        parts = str(spec).split(',')
        if len(parts) == 1 and all(len(c) == 1 for c in self.classes) and len(parts[0]) > 1:
            parts = list(parts[0])
        return [self.label(p) for p in parts]

    # the tasks
    def text(self, task, label=None, codes=None, upto=None):
        """A task's sequence for a class and an image as text, without padding; with upto ('label' or
        'image'), only what comes before that field."""
        head = self.tasks[task].split('{' + upto + '}')[0] if upto else self.tasks[task]
        return head.format(label=self.classes[label] if label is not None else '',
                           image=self.image_text(codes) if codes is not None else '')

    def tokens(self, task, label=None, codes=None, upto=None):
        """The same as token ids: each piece of template text one token, the class name one, each code one."""
        ids = []
        for part in re.split(r'(\{\w+\})', self.tasks[task]):
            if part == '{' + str(upto) + '}':
                break
            if part == '{label}':
                ids.append(self.label_ids[label])
            elif part == '{image}':
                ids.extend(self.code_offset + int(c) for c in codes)
            elif part in self.stoi:
                ids.append(self.stoi[part])
            else:  # data prepared with one token per template character
                ids.extend(self.encode(part))
        return ids

    def line(self, task, label, codes):
        """One sequence padded to block_size: (its text, its token ids)."""
        ids = self.tokens(task, label, codes)
        pad = self.block_size - len(ids)
        return self.text(task, label, codes) + PAD * pad, ids + [self.stoi[PAD]] * pad

    def prompts(self, task, field, labels=None, codes=None, device='cpu'):
        """Token ids (N, T) of a task's beginning before field, one row per label or per image's codes."""
        n = len(labels) if labels is not None else len(codes)
        rows = [self.tokens(task, None if labels is None else labels[i], None if codes is None else codes[i], field)
                for i in range(n)]
        return torch.tensor(rows, dtype=torch.long, device=device)

    def label_position(self, task):
        """The position of the class name's token in a task's sequence."""
        return len(self.tokens(task, 0, [0] * self.tokens_per_image, 'label'))

    def parse(self, s):
        """A sequence's text (padding and all) -> (task, label, codes) if it follows a task, else None."""
        s = s.split(PAD)[0]
        for task, pattern in self._patterns.items():
            m = pattern.fullmatch(s)
            if m:
                return task, self.classes.index(m['label']), self.image_codes(m['image'])
        return None

    # text <-> token ids
    def encode(self, s):
        """Plain text, one token per character (each must be one of the vocabulary's)."""
        bad = sorted(set(c for c in s if c not in self.stoi))
        if bad:
            raise SystemExit(f"error: characters {''.join(bad)!r} are not in the vocabulary "
                             f"({self.code_offset} text tokens and {self.codebook_size} image codes)")
        return [self.stoi[c] for c in s]

    def decode(self, ids):
        return ''.join(self.itos[int(i)] for i in ids)

    def code_mask(self, device='cpu'):
        """Bool mask over the vocabulary: the image codes."""
        m = torch.zeros(self.vocab_size, dtype=torch.bool, device=device)
        m[self.code_offset:] = True
        return m


def training_pairs(seqs, pad_id):
    """Whole sequences (N, block_size) -> inputs and targets for next-token training: inputs are each
    sequence but its last token, targets the same shifted by one, padding targets -1 (no loss). Every
    row starts at a sequence start. Columns whose targets are all padding are cropped: the model is
    causal, so they change no other position's loss."""
    targets = seqs[:, 1:].clone()
    targets[targets == pad_id] = -1
    width = int((targets != -1).any(0).nonzero().max()) + 1
    return seqs[:, :width], targets[:, :width]


def label_targets(codec, tasks, width):
    """Bool (N, width): which target of each sequence (training_pairs' targets) is its class name."""
    mask = torch.zeros(len(tasks), width, dtype=torch.bool)
    for t, name in enumerate(codec.tasks):
        pos = codec.label_position(name) - 1  # target j is token j + 1
        if pos < width:
            mask[tasks == t, pos] = True
    return mask


def draw_logo(codes, labels, codec, title, path):
    """Sequence logo per class (Schneider & Stephens 1990): at each image position, the code letters
    stacked by frequency, the stack as high as the position's information content in bits. For more
    than 26 codes only the heights are drawn, laid out as the grid of positions for a conv tokenizer (raster
    order), else as a row: where each class is predictable. Up to 20 classes are drawn."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    import matplotlib.transforms as mtransforms
    from matplotlib.font_manager import FontProperties
    from matplotlib.patches import PathPatch
    from matplotlib.textpath import TextPath
    K, n = codec.codebook_size, codec.tokens_per_image
    letters = K <= 26
    shape = (codec.grid, codec.grid) if codec.grid else (1, n)
    shown = min(len(codec.classes), 20)
    cols = min(5, shown)
    rows = -(-shown // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.5 * cols * max(1, n / 8) if letters else 2.5 * cols, 2.75 * rows),
                             sharey=letters, squeeze=False)
    font = FontProperties(family='DejaVu Sans Mono', weight='bold')
    colors = plt.get_cmap('tab20', max(K, 2))
    for d, ax in enumerate(axes.flat):
        if d >= shown:
            ax.axis('off')
            continue
        c = codes[labels == d]
        freq = np.stack([np.bincount(c[:, p], minlength=K) for p in range(n)]) / max(len(c), 1)
        bits = np.log2(K) + np.where(freq > 0, freq * np.log2(np.where(freq > 0, freq, 1)), 0).sum(1)
        ax.set_title(codec.classes[d][:24])
        if not letters:
            im = ax.imshow(bits.reshape(shape), cmap='viridis', vmin=0, vmax=np.log2(K))
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
        if d % cols == 0:
            ax.set_ylabel('bits')
    if not letters:
        fig.colorbar(im, ax=axes, label='bits')
    fig.suptitle(f'image codes per position and class ({title} train)' if letters else
                 f'information content of the code at each grid position, per class ({title} train)')
    if letters:
        fig.tight_layout()
    fig.savefig(path, format='png', dpi=80)
    plt.close(fig)


if __name__ == '__main__':
    from configurator import configure
    config = configure(globals())
    task_names, weights = list(TASKS), [float(w) for w in shares.split(',')]
    if len(weights) != len(TASKS):
        raise SystemExit(f"error: shares={shares!r} is not allowed: shares must be {len(TASKS)} numbers, one per "
                         f"task in order ({', '.join(TASKS)})")
    bounds = np.cumsum(weights)
    bounds /= bounds[-1]
    tok, tok_ckpt = load_tokenizer(tokenizer)
    splits, info = reload_dataset(tok_ckpt['dataset'], quiet=False)
    key, classes = info['key'], info['classes']
    if block_size == 0:
        roomy = Codec(classes, key, tok.codebook_size, tok.tokens_per_image, 1 << 16)
        block_size = -(-max(len(roomy.tokens(t, 0, [0] * tok.tokens_per_image)) for t in TASKS) // 8) * 8
    grid = tok.grid if tok.kind == 'conv' and tok.stages == 1 else 0  # one raster grid; else tokens in sequence
    codec = Codec(classes, key, tok.codebook_size, tok.tokens_per_image, block_size, grid=grid)
    g = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    dtype = np.uint16
    if codec.vocab_size > np.iinfo(dtype).max:
        raise SystemExit(f"error: a vocabulary of {codec.vocab_size} tokens does not fit uint16 token ids")
    lock = lock_folder(data_dir, 'prepare.py')  # one prepare.py per data_dir
    counts, files, staged = {}, {}, []

    def stage(name, write):
        """Write data_dir/name under a temporary name; all are renamed in place once every one is written."""
        path = os.path.join(data_dir, f'.new.{name}')
        atomic_write(path, write)
        files[name] = sha256_file(path)
        staged.append(path)
        return path

    try:
        for split, (images, labels) in splits.items():
            x = as_float(images)
            copies = 1 + (augment if split == 'train' else 0)
            progress = Progress(f"{split}: encoding", copies * len(x), 'images')
            codes = []
            for k in range(copies):  # the image itself, then its moved copies
                moved = x if k == 0 else augmented(x, g, shift, rotate, scale, flip)
                for i in range(0, len(x), 10000):
                    codes.append(tok.encode(moved[i:i + 10000]))
                    progress.update(len(codes[-1]))
            codes = torch.cat(codes).numpy()
            labels = np.tile(labels, copies)
            tasks = np.searchsorted(bounds, rng.random(len(codes)), side='right')
            progress = Progress(f"{split}: writing", len(codes), 'sequences')
            lines, ids = [], np.zeros((len(codes), block_size), dtype=dtype)
            for i, (c, y, t) in enumerate(zip(codes, labels, tasks)):
                text, ids[i] = codec.line(task_names[t], y, c)
                lines.append(text)
                progress.update()
            stage(f'{split}.txt', '\n'.join(lines) + '\n')
            stage(f'{split}.bin', ids.tobytes())
            stage(f'{split}_codes.npy', lambda tmp: np.save(tmp, codes.astype(np.int16)))
            stage(f'{split}_labels.npy', lambda tmp: np.save(tmp, labels.astype(np.int32)))
            stage(f'{split}_tasks.npy', lambda tmp: np.save(tmp, tasks.astype(np.uint8)))
            stage(f'{split}_images.npy', lambda tmp: np.save(tmp, images))
            counts[split] = dict(sequences=len(lines), **{t: int((tasks == i).sum()) for i, t in enumerate(task_names)})
            print(f"{split}: {len(lines)} sequences ({', '.join(f'{counts[split][t]} {t}' for t in task_names)}), "
                  f"e.g. {lines[0]}", flush=True)
            if split == 'train':
                stage('logo.png', lambda tmp: draw_logo(codes, labels, codec, info['title'], tmp))
        features = tok.quantizer.features().numpy().astype(np.float32)  # each code's features, for GPT.embeddings
        stage('code_features.npy', lambda tmp: np.save(tmp, features))
        for name in files:
            os.replace(os.path.join(data_dir, f'.new.{name}'), os.path.join(data_dir, name))
    finally:  # a failed run leaves the folder as it was
        for path in staged:
            if os.path.exists(path):
                os.remove(path)
    meta = dict(dataset=info, classes=classes, key=key, tasks=codec.tasks, vocab=codec.itos,
                vocab_size=codec.vocab_size, block_size=block_size, tokens_per_image=codec.tokens_per_image, grid=grid,
                codebook_size=codec.codebook_size, code_offset=codec.code_offset, tokenizer=tokenizer,
                tokenizer_sha256=sha256_file(tokenizer), dtype='uint16', seed=seed, augment=augment,
                moves=dict(shift=shift, rotate=rotate, scale=scale, flip=flip), splits=counts,
                shares=dict(zip(task_names, weights)),
                files=files)
    write_json(os.path.join(data_dir, 'meta.json'), meta)
    pieces = [t for t in codec.itos[:codec.code_offset] if t not in codec.classes]
    print(f"vocabulary of {codec.vocab_size} tokens: {len(pieces)} of text {pieces}, {len(codec.classes)} class "
          f"names, {codec.codebook_size} codes {codec.code_chars[:8]}...; wrote {data_dir}/meta.json and logo.png")
