"""
Captions: free text about an image, spelled in characters.

A folder data set may carry its own, as Hugging Face's `imagefolder` does: a metadata.jsonl (or
metadata.csv) beside the images, one {"file_name": ..., "text": ...} per image (read_metadata).
MNIST and Fashion-MNIST get captions made from the image itself, as Morpho-MNIST measures digits
(Castro et al. 2019, https://arxiv.org/abs/1809.10780): stroke thickness (the area over the length of
the skeleton), slant (the shear of the second moments) and width (after the slant is undone); for clothes,
size (the silhouette's area) and ink (how dark the garment is). measure_style measures them, and each
measure becomes a word where an image lies in the outer third of its class ('a thick slanted 7',
'a narrow 1'): thirds of each class, so that 'wide' means wide for a 1 as much as for a 0. The same
function scores a model: draw from a caption, measure the drawing, count how often each word is obeyed
(style_obeyed).
"""
import csv
import json
import os
import unicodedata

import numpy as np
import torch

from tinyvlm import Error
from tinyvlm.images import as_float, background

# measure: (the word for its lowest third, the word for its highest third), in the order words are written
STYLES = {
    'strokes': {'width': ('narrow', 'wide'), 'thickness': ('thin', 'thick'), 'slant': ('upright', 'slanted')},
    'shapes': {'size': ('small', 'large'), 'ink': ('light', 'dark')},
}
INK = 0.5  # a pixel is ink (of the digit, of the garment) above this
MAX_CAPTION = 256  # characters: every sequence is padded to the longest, so a page of text would cost every row


def style_kind(info):
    """Which measures suit a data set: strokes (digits: MNIST) or shapes (anything else)."""
    return 'strokes' if info.get('dataset') == 'mnist' else 'shapes'


def _thinning_tables():
    """Zhang & Suen's two sub-iterations as tables over the 256 neighbourhoods of a pixel (P2..P9, bit i
    the (i+2)th neighbour): whether an ink pixel with that neighbourhood is removed."""
    ring = (torch.arange(256)[:, None] >> torch.arange(8)) & 1  # P2..P9 of each neighbourhood
    b = ring.sum(1)
    a = sum((ring[:, i] == 0) & (ring[:, (i + 1) % 8] == 1) for i in range(8))
    p2, p4, p6, p8 = ring[:, 0], ring[:, 2], ring[:, 4], ring[:, 6]
    keep = (b >= 2) & (b <= 6) & (a == 1)
    return (keep & (p2 * p4 * p6 == 0) & (p4 * p6 * p8 == 0),
            keep & (p2 * p4 * p8 == 0) & (p2 * p6 * p8 == 0))


THINNING = _thinning_tables()
RING = [(0, -1), (1, -1), (1, 0), (1, 1), (0, 1), (-1, 1), (-1, 0), (-1, -1)]  # P2..P9 as (dx, dy)


def _skeleton(ink):
    """Zhang & Suen's thinning (1984) of bool images (N, H, W), all at once: the one-pixel-wide
    skeleton whose length measures a stroke."""
    x = ink.clone()
    h, w = x.shape[1:]
    for _ in range(64):
        changed = False
        for table in THINNING:
            p = torch.nn.functional.pad(x, (1, 1, 1, 1)).to(torch.uint8)
            code = sum(p[:, 1 + dy:1 + dy + h, 1 + dx:1 + dx + w] << i for i, (dx, dy) in enumerate(RING))
            drop = x & table[code.int()]  # as an index, not a mask
            if drop.any():
                x = x & ~drop
                changed = True
        if not changed:
            break
    return x


def measure_style(images, kind):
    """Each image's style measures (images (N, C, H, W) float in [0, 1], any channels) -> {measure: float
    array (N,)} for the measures of STYLES[kind], in pixels (thickness, width, size: pixels of ink) or
    as a slope (slant: horizontal pixels per vertical pixel, positive leaning right) or a mean (ink)."""
    images = torch.as_tensor(images).float()
    x = (images - background(images)).abs().mean(1)  # how far each pixel is from the paper: ink, whatever the colours
    out = {}
    for i in range(0, len(x), 5000):
        g = x[i:i + 5000]
        ink = g > INK
        n, h, w = ink.shape
        area = ink.flatten(1).sum(1).float().clamp_min(1)
        ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing='ij')
        m = g.flatten(1).sum(1).clamp_min(1e-6)
        cy, cx = (g * ys).flatten(1).sum(1) / m, (g * xs).flatten(1).sum(1) / m
        dy, dx = ys - cy[:, None, None], xs - cx[:, None, None]
        mu11, mu02 = (g * dx * dy).flatten(1).sum(1), (g * dy * dy).flatten(1).sum(1).clamp_min(1e-6)
        shear = -mu11 / mu02  # image rows count downwards: a right lean has x falling as y grows
        values = {}
        if kind == 'strokes':
            length = _skeleton(ink).flatten(1).sum(1).float().clamp_min(1)
            values['thickness'] = area / length  # a stroke's area is about its width times its length
            values['slant'] = shear
            upright = torch.where(ink, dx + shear[:, None, None] * dy, torch.nan)  # x with the slant undone
            values['width'] = (upright.flatten(1).nan_to_num(-1e9).max(1).values
                               - upright.flatten(1).nan_to_num(1e9).min(1).values + 1).clamp_min(0)
        else:
            values['size'] = area
            values['ink'] = (g * ink).flatten(1).sum(1) / area
        for k, v in values.items():
            out.setdefault(k, []).append(v.numpy())
    return {k: np.concatenate(v).astype(np.float64) for k, v in out.items()}


def style_bounds(measures, labels, num_classes):
    """Each class's thirds of each measure: {measure: [[lower third's top, upper third's bottom, median]
    per class]} (JSON, for meta.json)."""
    out = {}
    for k, v in measures.items():
        rows = []
        for c in range(num_classes):
            vc = v[labels == c]
            rows.append([float(q) for q in np.quantile(vc, [1 / 3, 2 / 3, 0.5])] if len(vc) else [0.0, 0.0, 0.0])
        out[k] = rows
    return out


def style_words(measures, labels, bounds, kind):
    """-> per image, {measure: word} for the measures where it lies in an outer third of its class."""
    words = [dict() for _ in range(len(labels))]
    for k, (low, high) in STYLES[kind].items():
        b = np.asarray(bounds[k])[labels]
        v = measures[k]
        for i in np.flatnonzero(v <= b[:, 0]):
            words[i][k] = low
        for i in np.flatnonzero(v >= b[:, 1]):
            words[i][k] = high
    return words


def style_caption(words, class_name, kind):
    """'a thick slanted 7': the words in STYLES' order, then the class name."""
    said = [words[k] for k in STYLES[kind] if k in words] + [class_name]
    return ('an ' if said[0][:1].lower() in 'aeiou' else 'a ') + ' '.join(said)


def read_caption(text, classes, kind):
    """A style caption -> (class index or None, {measure: word}); None where it is not one."""
    text = text.strip()
    for article in ('a ', 'an '):
        if text.startswith(article):
            text = text[len(article):]
            break
    else:
        return None
    cls = max((c for c in range(len(classes)) if text == classes[c] or text.endswith(' ' + classes[c])),
              key=lambda c: len(classes[c]), default=None)
    if cls is None:
        return None
    rest = text[:len(text) - len(classes[cls])].split()
    which = {w: k for k, pair in STYLES[kind].items() for w in pair}
    words = {}
    for w in rest:
        if w not in which or which[w] in words:
            return None
        words[which[w]] = w
    return cls, words


def style_obeyed(measures, labels, asked, bounds, kind):
    """How often each word asked for was obeyed by the images drawn for it: an image obeys a word when
    its measure lies on the word's side of its class's median (and, strictly, in the word's third).
    asked: per image, {measure: word}. -> {word: dict(asked, obeyed, strict)}."""
    out = {}
    for k, (low, high) in STYLES[kind].items():
        b = np.asarray(bounds[k])[labels]
        v = measures[k]
        for word, side, third in ((low, v < b[:, 2], v <= b[:, 0]), (high, v > b[:, 2], v >= b[:, 1])):
            rows = np.array([a.get(k) == word for a in asked], dtype=bool)
            if rows.any():
                out[word] = dict(asked=int(rows.sum()), obeyed=float(side[rows].mean()), strict=float(third[rows].mean()))
    return out


# ----------------------------------------------------------------------------------------------------
# what prepare.py writes

def caption_plan(info, train_images, train_labels):
    """Where a data set's captions come from (JSON, for meta.json): {'source': 'metadata' (a folder's
    own), 'style' (measured: MNIST, Fashion-MNIST) or 'class names' (a folder without them), and for
    'style' the measures' 'kind' and each class's thirds of them ('bounds', measured on the training
    images)}."""
    plan = dict(source=info['captions'], kind=style_kind(info), bounds=None)
    if plan['source'] == 'style':
        plan['bounds'] = style_bounds(measure_style(as_float(train_images), plan['kind']),
                                      train_labels, len(info['classes']))
    return plan


def captions_of(plan, images, labels, own, classes):
    """Each image's caption (images (N, C, H, W) float in [0, 1], each measured anew: a moved copy
    turns its slant too): its own (own: the folder's, in order), its measured style, or its class name."""
    if plan['source'] == 'metadata':
        return list(own)
    if plan['source'] == 'style':
        words = style_words(measure_style(images, plan['kind']), labels, plan['bounds'], plan['kind'])
        return [style_caption(w, classes[y], plan['kind']) for w, y in zip(words, labels)]
    return [classes[y] for y in labels]


def caption_bounds(plan, classes, own):
    """The longest caption a plan writes and every character its captions hold: of the folder's own (own),
    of the style captions (each measure's longer word, every word's letters), or of the class names."""
    texts = list(own) if plan['source'] == 'metadata' else list(classes)
    if plan['source'] == 'style':
        words = STYLES[plan['kind']]
        texts = [style_caption({k: max(pair, key=len) for k, pair in words.items()}, c, plan['kind']) for c in classes]
        texts.append('an ' + ' '.join(w for pair in words.values() for w in pair))  # for its characters only
        return max(map(len, texts[:-1])), ''.join(sorted(set(''.join(texts))))
    return max(map(len, texts), default=0), ''.join(sorted(set(''.join(texts))))


# ----------------------------------------------------------------------------------------------------
# a folder's own captions

def check_caption(text, where):
    """A caption as the sequences hold it (NFC, one line), or an Error."""
    if not isinstance(text, str) or not text.strip():
        raise Error(f"{where}: a caption must be non-empty text, got {text!r}")
    text = unicodedata.normalize('NFC', ' '.join(text.split()))
    if len(text) > MAX_CAPTION:
        raise Error(f"{where}: a caption is at most {MAX_CAPTION} characters, got {len(text)}")
    if '#' in text or any(unicodedata.category(c).startswith('C') for c in text):
        raise Error(f"{where}: a caption cannot hold '#' or control characters (they are part of the sequence "
                    f"format), got {text[:40]!r}")
    return text


def read_metadata(folder):
    """A folder's captions from its metadata.jsonl or metadata.csv (Hugging Face imagefolder's layout:
    one file_name, relative to the folder, and one text per image) -> {absolute path: caption}; {}
    without one. A bad line, a missing file or a file named twice is an Error naming the line."""
    jsonl, csv_path = os.path.join(folder, 'metadata.jsonl'), os.path.join(folder, 'metadata.csv')
    if os.path.isfile(jsonl) and os.path.isfile(csv_path):
        raise Error(f"{folder} has both metadata.jsonl and metadata.csv: keep one")
    try:
        if os.path.isfile(jsonl):
            path, rows = jsonl, []
            with open(jsonl, encoding='utf-8') as f:
                for n, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        row = json.loads(line)
                    except ValueError as e:
                        raise Error(f"{jsonl} line {n} is not JSON ({e.msg}): expected "
                                    '{"file_name": "cat/1.png", "text": "a caption"}')
                    rows.append((n, row))
        elif os.path.isfile(csv_path):
            path = csv_path
            with open(csv_path, encoding='utf-8', newline='') as f:
                try:
                    rows = [(n + 2, row) for n, row in enumerate(csv.DictReader(f))]
                except csv.Error as e:
                    raise Error(f"{csv_path} is not CSV ({e}): expected a header file_name,text and one row per image")
        else:
            return {}
    except UnicodeDecodeError as e:
        raise Error(f"{jsonl if os.path.isfile(jsonl) else csv_path} is not UTF-8 text (byte {e.start}): save it as UTF-8")
    out = {}
    for n, row in rows:
        if not isinstance(row, dict) or not isinstance(row.get('file_name'), str) or row.get('text') is None:
            raise Error(f"{path} line {n}: expected a file_name and a text, got {str(row)[:80]}")
        file = os.path.normpath(os.path.join(folder, row['file_name']))
        if not os.path.isfile(file):
            raise Error(f"{path} line {n}: {row['file_name']!r} is not a file in {folder}")
        if file in out:
            raise Error(f"{path} line {n}: {row['file_name']!r} has a caption already (each file once)")
        out[file] = check_caption(row['text'], f"{path} line {n}")
    return out
