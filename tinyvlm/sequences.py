"""
The sequence format, in one place: every character and limit of it is defined here.

Each image becomes one sequence of one of the TASKS, a table of templates:

    generation      number:7, image:ÀÁÆ...Ŀ.###        class:Ankle boot, image:ÀÁÆ...Ŀ.###
    classification  image:ÀÁÆ...Ŀ, number:7.###        image:ÀÁÆ...Ŀ, class:Ankle boot.###
    addition        image:ÀÁÆ...Ŀ plus image:ÈÒÆ...Ŀ, sum:12.
    next            image:ÀÁÆ...Ŀ, next:8, image:ÈÒÆ...Ŀ.
    illustration    caption:a thick slanted 7, image:ÀÁÆ...Ŀ.
    captioning      image:ÀÁÆ...Ŀ, caption:a thick slanted 7.
    worked_addition image:ÀÁÆ...Ŀ, number:3 plus image:ÈÒÆ...Ŀ, number:9, sum:12.

A template's fields are {label} (the class of its image, one token), {image} (its codes), and in a
task of two images (early fusion: any interleaving of text and images is one sequence, as in
Chameleon, Chameleon Team 2024) {image2} and {label2}, the second image's codes and class, and {sum},
the sum of the two classes (the MNIST addition of Manhaeve et al. 2018, DeepProbLog; one token), and
{caption}, free text spelled one character a token (tinyvlm/captions.py: where captions come from),
so that a word never seen in training can still be written.
second_images says which image is the second. MNIST keeps the published key 'number'; other data sets say 'class' and the
class name. Sequences are padded with PAD to block_size tokens. Adding a task is adding a line to
TASKS (and a number to prepare.py's shares).
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
    'addition': 'image:{image} plus image:{image2}, sum:{sum}' + END,
    'next': 'image:{image}, next:{label2}, image:{image2}' + END,  # name the class after the image's, then draw one
    'illustration': 'caption:{caption}, image:{image}' + END,  # free text -> image
    'captioning': 'image:{image}, caption:{caption}' + END,  # image -> free text
    # addition with its work shown (a scratchpad, Nye et al. 2021): each digit read as classification reads it
    'worked_addition': 'image:{image}, {key}:{label} plus image:{image2}, {key}:{label2}, sum:{sum}' + END,
}
SINGLE = ('generation', 'classification')  # the tasks of one image: a data set's default
TEXT = ''.join(chr(c) for c in range(0x20, 0x7F) if chr(c) != PAD)  # what any caption can spell
CODE_RANGES = ((0xC0, 0x530), (0x1E00, 0x2000), (0x4E00, 0xA000))  # Latin, Greek, Cyrillic letters; then CJK


def _letters():
    chars = (chr(c) for a, b in CODE_RANGES for c in range(a, b))
    return [c for c in chars if unicodedata.category(c) in ('Lu', 'Ll', 'Lo') and unicodedata.bidirectional(c) == 'L'
            and c.isprintable()]


CODE_LETTERS = ''.join(_letters())
MAX_CODES = len(CODE_LETTERS)  # the largest codebook whose codes all get a character


def code_alphabet(n, exclude='', letters=False):
    """n characters for n image codes: A..Z for up to 26 (unless letters: captions spell them), else
    letters that every terminal prints (Latin-1 and Latin Extended, IPA, Greek, Cyrillic, then CJK
    ideographs: left-to-right, no combining marks), never one of the text's characters."""
    if n <= 26 and not letters:
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
    """The sequence format: image code <-> character, class name <-> label, the tasks, padding, and
    text <-> token ids. The text between a template's fields ('number:', ', image:', '.') is one token
    per piece, as a class name or a sum is one token however long: both are fixed, so spelling them
    out would only lengthen every sequence (a fifth of its positions) without telling the model
    anything. An image code is a token with a character of its own, disjoint from the text, so that the
    .txt files read as the sequences the model sees. tasks: names in TASKS (default SINGLE), or the
    templates themselves (meta.json's). block_size 0: the longest sequence rounded up to a multiple of 8.
    A task with a {caption} spells it in characters: printable ASCII and caption_chars (the others that
    the data's captions hold), at most caption_length of them."""

    def __init__(self, classes, key, codebook_size, tokens_per_image, block_size=0, vocab=None, tasks=None, grid=0,
                 lead=0, caption_length=0, caption_chars=''):
        self.classes, self.key = list(classes), key
        self.codebook_size, self.tokens_per_image = codebook_size, tokens_per_image
        self.grid = grid  # codes per side of a spatial grid in raster order (conv tokenizer); 0: tokens in no place
        self.lead = lead  # codes of the whole image before the grid's (the ink tokenizer's paper and ink colours and the drawing's place)
        self.rows = grid or tokens_per_image  # what completion keeps the first of: grid rows, else single tokens
        if not isinstance(tasks, dict):
            tasks = {name: TASKS[name].replace('{key}', key) for name in (tasks or SINGLE)}
        self.tasks = tasks
        self._split = {}  # each task's template in pieces (_parts)
        self.sums = []  # the values a {sum} can take, in the order reading scores them
        if any('{sum}' in t for t in tasks.values()):
            if not all(re.fullmatch(r'[0-9]{1,6}', c) for c in self.classes):
                shown = next(c for c in self.classes if not re.fullmatch(r'[0-9]{1,6}', c))
                raise Error(f"the addition task adds class names that are numbers (MNIST's digits), not {shown!r}")
            self.sums = sorted({int(a) + int(b) for a in self.classes for b in self.classes})
        self.caption_length = caption_length if any('{caption}' in t for t in tasks.values()) else 0
        if self.caption_length <= 0 and any('{caption}' in t for t in tasks.values()):
            raise Error("a task with captions needs caption_length, the longest caption, above 0")
        if vocab is None:
            pieces = set(p for t in self.tasks.values() for p in re.split(r'\{\w+\}', t) if p) | {PAD}
            clash = sorted(pieces & set(classes))
            if clash:
                raise Error(f"class name {clash[0]!r} is also a piece of the sequence format; rename it")
            chars = set(TEXT + caption_chars) - {PAD} if self.caption_length else set()
            text = sorted(pieces | set(classes) | {str(s) for s in self.sums} | chars)
            vocab = text + list(code_alphabet(codebook_size, exclude=''.join(text), letters=bool(chars)))
        self.itos = list(vocab)
        self.stoi = {c: i for i, c in enumerate(self.itos)}
        self.code_offset = len(self.itos) - codebook_size  # token id of code i is code_offset + i
        self.code_chars = ''.join(self.itos[self.code_offset:])
        self.label_ids = [self.stoi[c] for c in self.classes]  # what reading chooses from
        self.sum_ids = [self.stoi[str(s)] for s in self.sums]  # ... and reading a sum
        # the characters a caption can hold: every text token of one character (the end '.' and digits too)
        self.caption_chars = ''.join(c for c in self.itos[:self.code_offset] if len(c) == 1 and c != PAD) \
            if self.caption_length else ''
        blank = [0] * tokens_per_image
        longest = max(len(self.tokens(t, k, blank, label2=0, codes2=blank, caption='x' * self.caption_length or None))
                      + ('{caption}' in self.tasks[t])  # free text ends with padding (training_pairs)
                      for t in self.tasks for k in range(len(classes)))
        self.block_size = block_size or -(-longest // 8) * 8
        if longest > self.block_size:
            raise Error(f"block_size {block_size} is too short: a sequence with {tokens_per_image} image tokens takes "
                        f"{longest}")
        one_of = lambda names: '|'.join(re.escape(c) for c in sorted(names, key=len, reverse=True))
        image = f'[{re.escape(self.code_chars)}]{{{tokens_per_image}}}'
        self._patterns = {t: re.compile(re.escape(s).replace(r'\{label\}', f'(?P<label>{one_of(self.classes)})')
                                        .replace(r'\{label2\}', f'(?P<label2>{one_of(self.classes)})')
                                        .replace(r'\{sum\}', f'(?P<sum>{one_of(map(str, self.sums))})')
                                        .replace(r'\{image\}', f'(?P<image>{image})')
                                        .replace(r'\{image2\}', f'(?P<image2>{image})')
                                        .replace(r'\{caption\}', f'(?P<caption>[{re.escape(self.caption_chars)}]+)'))
                          for t, s in self.tasks.items()}

    @classmethod
    def from_meta(cls, meta):
        return cls(meta['classes'], meta['key'], meta['codebook_size'], meta['tokens_per_image'], meta['block_size'],
                   meta['vocab'], meta['tasks'], meta['grid'], meta['lead'], meta.get('caption_length', 0))

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

    def learnt(self, *tasks, use):
        """The first of tasks this codec's model learnt, or an Error that says use needs one of them."""
        task = next((t for t in tasks if t in self.tasks), None)
        if task is None:
            raise Error(f"{use}: this model was not trained on {' or '.join(tasks)} (prepare.py's shares give "
                        f"{'them' if len(tasks) > 1 else 'it'} none)")
        return task

    def caption_ids(self, text):
        """A caption's token ids, one per character (its spaces folded as captions.check_caption folds
        them); an Error for one the model cannot take."""
        text = ' '.join(unicodedata.normalize('NFC', str(text)).split())
        if not self.caption_length:
            raise Error("this model was not trained on captions (prepare.py's shares give the caption tasks none)")
        if not text:
            raise Error("a caption cannot be empty: write some text, like 'a thick 7'")
        if len(text) > self.caption_length:
            raise Error(f"a caption is at most {self.caption_length} characters (the longest the model was trained "
                        f"on), got {len(text)}")
        unknown = sorted(set(c for c in text if c not in self.caption_chars))
        if unknown:
            extra = ''.join(c for c in self.caption_chars if ord(c) > 126)
            raise Error(f"the caption holds characters the model has never seen: {''.join(unknown)!r} (it spells "
                        f"printable ASCII but {PAD!r}{', and ' + extra if extra else ''})")
        return [self.stoi[c] for c in text]

    def sum_of(self, label, label2):
        """The sum of two classes as an index into self.sums."""
        return self.sums.index(int(self.classes[label]) + int(self.classes[label2]))

    # the tasks
    def _values(self, label, codes, label2, codes2, caption=None):
        """Each field's text and token ids, of the fields whose values are given."""
        fields = {}
        if caption is not None:
            ids = self.caption_ids(caption)
            fields['caption'] = (''.join(self.itos[i] for i in ids), ids)
        if label is not None:
            fields['label'] = (self.classes[label], [self.label_ids[label]])
        if label2 is not None:
            fields['label2'] = (self.classes[label2], [self.label_ids[label2]])
        for field, cs in (('image', codes), ('image2', codes2)):
            if cs is not None:  # an array's own tolist(): prepare.py writes millions of codes
                cs = cs.tolist() if hasattr(cs, 'tolist') else [int(c) for c in cs]
                fields[field] = (self.image_text(cs), [self.code_offset + c for c in cs])
        if label is not None and label2 is not None and self.sums:
            s = self.sum_of(label, label2)
            fields['sum'] = (str(self.sums[s]), [self.sum_ids[s]])
        return fields

    def _parts(self, task, upto):
        """A task's template split into text pieces and '{field}'s, up to (not including) field upto
        (split once per task: prepare.py writes a sequence for every image)."""
        if task not in self._split:
            self._split[task] = [p for p in re.split(r'(\{\w+\})', self.tasks[task]) if p]
        parts = self._split[task]
        return parts[:parts.index('{' + upto + '}')] if upto else parts

    def _text(self, parts, values):  # the template's parts filled with the fields' text (_values)
        return ''.join(values.get(p[1:-1], ('',))[0] if p.startswith('{') else p for p in parts)

    def _ids(self, parts, values):  # ... and with their token ids
        return [i for p in parts for i in (values[p[1:-1]][1] if p.startswith('{') else [self.stoi[p]])]

    def text(self, task, label=None, codes=None, upto=None, label2=None, codes2=None, caption=None):
        """A task's sequence for a class and an image (and a second, for a task of two; a caption) as
        text, without padding; with upto (a field: 'label', 'image', 'image2', 'sum', 'caption'), only what
        comes before it."""
        return self._text(self._parts(task, upto), self._values(label, codes, label2, codes2, caption))

    def tokens(self, task, label=None, codes=None, upto=None, label2=None, codes2=None, caption=None):
        """The same as token ids: each piece of template text one token, the class name one, each code
        one, each character of a caption one."""
        return self._ids(self._parts(task, upto), self._values(label, codes, label2, codes2, caption))

    def line(self, task, label, codes, label2=None, codes2=None, caption=None):
        """One sequence padded to block_size: (its text, its token ids)."""
        parts, values = self._parts(task, None), self._values(label, codes, label2, codes2, caption)
        ids = self._ids(parts, values)
        pad = self.block_size - len(ids)
        return self._text(parts, values) + PAD * pad, ids + [self.stoi[PAD]] * pad

    def prompts(self, task, field, labels=None, codes=None, device='cpu', labels2=None, codes2=None, captions=None):
        """Token ids (N, T) of a task's beginning before field, one row per label or per image's codes
        (and second image's, labels2 and codes2; or per caption: captions of one length)."""
        n = next(len(xs) for xs in (labels, codes, captions) if xs is not None)
        pick = lambda xs, i: None if xs is None else xs[i]
        rows = [self.tokens(task, pick(labels, i), pick(codes, i), field, pick(labels2, i), pick(codes2, i),
                            pick(captions, i)) for i in range(n)]
        return torch.tensor(rows, dtype=torch.long, device=device)

    def answer_positions(self, task):
        """The positions of the tokens that answer a task: its class names, its sum, the class it names
        before drawing ('next'); none for a task of free text."""
        template, blank = self.tasks[task], [0] * self.tokens_per_image
        return [len(self.tokens(task, 0, blank, f, 0, blank)) for f in ('label', 'label2', 'sum')
                if '{' + f + '}' in template]

    def parse(self, s):
        """A sequence's text (padding and all) -> its task and fields {'task', 'label', 'image', ...}
        (labels and sums as indices, images as codes) if it follows a task, else None."""
        s = s.split(PAD)[0]
        for task, pattern in self._patterns.items():
            m = pattern.fullmatch(s)
            if m:
                out = dict(task=task)
                for field, value in m.groupdict().items():
                    out[field] = (self.classes.index(value) if field in ('label', 'label2') else
                                  self.sums.index(int(value)) if field == 'sum' else
                                  value if field == 'caption' else self.image_codes(value))
                return out
        return None

    def decode(self, ids):
        return ''.join(self.itos[int(i)] for i in ids)

    def code_mask(self, device='cpu'):
        """Bool mask over the vocabulary: the image codes."""
        m = torch.zeros(self.vocab_size, dtype=torch.bool, device=device)
        m[self.code_offset:] = True
        return m


def second_images(task_names, tasks, labels, num_classes, rng):
    """Each sequence's second image, an index into the same rows (-1 where its task has one image): for
    'next', an image of the class after its first's (the last class's next is the first); for other
    tasks of two images, any image. tasks: indices into task_names."""
    partner = np.full(len(tasks), -1, dtype=np.int64)
    by_class = [np.flatnonzero(labels == c) for c in range(num_classes)]
    for t, name in enumerate(task_names):
        rows = np.flatnonzero(tasks == t)
        if '{image2}' not in TASKS[name] or not len(rows):
            continue
        if name != 'next':
            partner[rows] = rng.integers(len(tasks), size=len(rows))
            continue
        want = (labels[rows] + 1) % num_classes
        for c in np.unique(want):
            if not len(by_class[c]):
                raise Error(f"the 'next' task needs images of every class in each split: there are none of class {c}")
            r = rows[want == c]
            partner[r] = by_class[c][rng.integers(len(by_class[c]), size=len(r))]
    return partner


def training_pairs(seqs, pad_id, ends=None):
    """Whole sequences (N, block_size) -> inputs and targets for next-token training: inputs are each
    sequence but its last token, targets the same shifted by one, padding targets -1 (no loss), but for
    the rows of ends (bool (N,)), whose first padding is a target: free text (a caption) can hold the
    end '.', so the model says where it ends with padding. Every row starts at a sequence start.
    Columns whose targets are all padding are cropped: the model is causal, so they change no other
    position's loss."""
    targets = seqs[:, 1:].clone()
    pad = targets == pad_id
    if ends is not None:
        first = pad & (pad.cumsum(1) == 1)
        pad &= ~(first & ends[:, None])
    targets[pad] = -1
    width = int((targets != -1).any(0).nonzero().max()) + 1
    return seqs[:, :width], targets[:, :width]


def length_groups(Y):
    """The rows of a batch (targets Y) as up to three groups of rows of similar length, each with the width
    it is cropped to: a batch that mixes short sequences (one image) with long ones (two images) then
    computes little padding. The model is causal, so a row's loss is the same cropped, and the groups'
    gradients add up to the whole batch's. The cuts are those that leave the fewest tokens, each group
    charged batch tokens / 32 more, as it costs a forward and backward pass of its own."""
    n, T = Y.shape
    lengths, order = ((Y != -1) * torch.arange(1, T + 1, device=Y.device)).amax(1).sort(stable=True)  # one group: as drawn
    L = lengths.tolist()
    starts = [k for k in range(1, n) if L[k] != L[k - 1]]  # a group may start where the length changes

    def cost(cuts):
        edges = [0, *cuts, n]
        return sum((b - a) * L[b - 1] for a, b in zip(edges, edges[1:])) + len(cuts) * n * L[-1] / 32
    options = [()] + [(a,) for a in starts] + [(a, b) for a in starts for b in starts if a < b]
    edges = [0, *min(options, key=cost), n]
    return [(order[a:b], L[b - 1]) for a, b in zip(edges, edges[1:])]


def free_text(codec, tasks):
    """Bool (N,): the sequences whose task writes free text (a caption), whose end is learnt
    (training_pairs)."""
    return torch.tensor(['{caption}' in t for t in codec.tasks.values()], dtype=torch.bool)[tasks]


def answer_targets(codec, tasks, width):
    """Bool (N, width): which targets of each sequence (training_pairs' targets) are its answers: class
    names, sums."""
    mask = torch.zeros(len(tasks), width, dtype=torch.bool)
    for t, name in enumerate(codec.tasks):
        for pos in codec.answer_positions(name):
            if pos - 1 < width:  # target j is token j + 1
                mask[tasks == t, pos - 1] = True
    return mask
