"""
The sequence format, in one place: every character and limit of it is defined here.

Each image becomes one sequence of one of the TASKS, a table of templates:

    generation      number:7, image:ÀÁÆ...Ŀ.###        class:Ankle boot, image:ÀÁÆ...Ŀ.###
    classification  image:ÀÁÆ...Ŀ, number:7.###        image:ÀÁÆ...Ŀ, class:Ankle boot.###

MNIST keeps the published key 'number'; other data sets say 'class' and the class name. Sequences are
padded with PAD to block_size tokens. Adding a task is adding a line to TASKS (and a number to
prepare.py's shares).
"""
import re
import unicodedata

import numpy as np
import torch

from tinyvlm import Error

PAD = '#'
END = '.'
TASKS = {  # name: template
    'generation': '{key}:{label}, image:{image}' + END,
    'classification': 'image:{image}, {key}:{label}' + END,
}
CODE_RANGES = ((0xC0, 0x530), (0x1E00, 0x2000), (0x4E00, 0xA000))  # Latin, Greek, Cyrillic letters; then CJK


def _letters():
    chars = (chr(c) for a, b in CODE_RANGES for c in range(a, b))
    return [c for c in chars if unicodedata.category(c) in ('Lu', 'Ll', 'Lo') and unicodedata.bidirectional(c) == 'L'
            and c.isprintable()]


CODE_LETTERS = ''.join(_letters())
MAX_CODES = len(CODE_LETTERS)  # the largest codebook whose codes all get a character


def code_alphabet(n, exclude=''):
    """n characters for n image codes: A..Z for up to 26, else letters that every terminal prints
    (Latin-1 and Latin Extended, IPA, Greek, Cyrillic, then CJK ideographs: left-to-right, no combining
    marks), never one of the text's characters."""
    if n <= 26:
        return ''.join(chr(65 + i) for i in range(n))
    ok = [c for c in CODE_LETTERS if c not in exclude]
    if n > len(ok):
        raise Error(f"a codebook of {n} codes is larger than the {len(ok)} code characters there are")
    return ''.join(ok[:n])


def check_class_name(name, where):
    """A class name as the sequences hold it (NFC), or an Error if it cannot be one."""
    if PAD in name or any(unicodedata.category(c).startswith('C') for c in name):
        raise Error(f"class {name!r} ({where}): a class name cannot hold {PAD!r} or control characters (they are part "
                    f"of the sequence format): rename it")
    return unicodedata.normalize('NFC', name)


class Codec:
    """The sequence format: image code <-> character, class name <-> label, the TASKS, padding, and
    text <-> token ids. The text between a template's fields ('number:', ', image:', '.') is one token
    per piece, as a class name is one token however long: both are fixed, so spelling them out would
    only lengthen every sequence (a fifth of its positions) without telling the model anything. An
    image code is a token with a character of its own, disjoint from the text, so that the .txt files
    read as the sequences the model sees. block_size 0: the longest sequence rounded up to a multiple
    of 8."""

    def __init__(self, classes, key, codebook_size, tokens_per_image, block_size=0, vocab=None, tasks=None, grid=0,
                 lead=0):
        self.classes, self.key = list(classes), key
        self.codebook_size, self.tokens_per_image = codebook_size, tokens_per_image
        self.grid = grid  # codes per side of a spatial grid in raster order (conv tokenizer); 0: tokens in no place
        self.lead = lead  # codes of the whole image before the grid's (the ink tokenizer's paper and ink colours and the drawing's place)
        self.rows = grid or tokens_per_image  # what completion keeps the first of: grid rows, else single tokens
        self.tasks = tasks or {name: t.replace('{key}', key) for name, t in TASKS.items()}
        if vocab is None:
            pieces = set(p for t in self.tasks.values() for p in re.split(r'\{\w+\}', t) if p) | {PAD}
            clash = sorted(pieces & set(classes))
            if clash:
                raise Error(f"class name {clash[0]!r} is also a piece of the sequence format; rename it")
            text = sorted(pieces | set(classes))
            vocab = text + list(code_alphabet(codebook_size, exclude=''.join(text)))
        self.itos = list(vocab)
        self.stoi = {c: i for i, c in enumerate(self.itos)}
        self.code_offset = len(self.itos) - codebook_size  # token id of code i is code_offset + i
        self.code_chars = ''.join(self.itos[self.code_offset:])
        self.label_ids = [self.stoi[c] for c in self.classes]  # what reading chooses from
        longest = max(len(self.tokens(t, k, [0] * tokens_per_image)) for t in self.tasks for k in range(len(classes)))
        self.block_size = block_size or -(-longest // 8) * 8
        if longest > self.block_size:
            raise Error(f"block_size {block_size} is too short: a sequence with {tokens_per_image} image tokens takes "
                        f"{longest}")
        self._patterns = {t: re.compile(re.escape(s).replace(r'\{label\}', '(?P<label>' + '|'.join(
            re.escape(c) for c in sorted(self.classes, key=len, reverse=True)) + ')').replace(
            r'\{image\}', f'(?P<image>[{re.escape(self.code_chars)}]{{{tokens_per_image}}})'))
            for t, s in self.tasks.items()}

    @classmethod
    def from_meta(cls, meta):
        return cls(meta['classes'], meta['key'], meta['codebook_size'], meta['tokens_per_image'], meta['block_size'],
                   meta['vocab'], meta['tasks'], meta['grid'], meta['lead'])

    @property
    def vocab_size(self):
        return len(self.itos)

    # image codes <-> characters
    def image_text(self, codes):
        return ''.join(self.code_chars[int(c)] for c in codes)

    def image_codes(self, text):
        if len(text) != self.tokens_per_image or any(c not in self.code_chars for c in text):
            raise Error(f"an image is {self.tokens_per_image} code characters, got {text!r}")
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
        if re.fullmatch(r'[0-9]{1,6}', name) and int(name) < len(self.classes):
            return int(name)
        shown = ', '.join(self.classes[:12]) + (', ...' if len(self.classes) > 12 else '')
        raise Error(f"unknown class {name[:40]!r}: expected one of {shown} (or a number 0-{len(self.classes) - 1})")

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
            elif part:
                ids.append(self.stoi[part])
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
