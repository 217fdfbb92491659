"""
Using a trained model: drawing (class -> image), reading (image -> class) and completing (the first
codes of an image -> the rest). Generation is constrained by the sequence grammar: after
'number:7, image:' only image codes can be drawn, so every generated sequence decodes to an image.
"""
import numpy as np
import torch
import torch.nn.functional as F

from tinyvlm import Error
from tinyvlm.images import shifted
from tinyvlm.sequences import END, PAD, second_images

SHIFTS = ((1, 0), (-1, 0), (0, 1), (0, -1), (1, 1), (-1, -1), (1, -1), (-1, 1))  # (dx, dy) of the extra views


def draw_codes(model, codec, prompts_of, n, generator, temperature=1.0, top_k=0, batch_size=250, guidance=0.0,
               progress=None):
    """An image's codes sampled after each of n prompts (codes only), batch_size at a time (prompts_of(i, j):
    rows i..j-1), guided against 'image:'. -> codes (N, tokens_per_image) on the model's device."""
    device = next(model.parameters()).device
    allowed = codec.code_mask(device)
    codes = []
    for i in range(0, n, batch_size):
        j = min(i + batch_size, n)
        prompts = prompts_of(i, j)
        uncond = codec.prompts('classification', 'image', labels=[None] * (j - i), device=device) if guidance else None
        out = model.generate(prompts, codec.tokens_per_image, temperature, top_k or None, allowed, generator,
                             guidance, uncond)
        codes.append(out[:, prompts.size(1):] - codec.code_offset)
        if progress:
            progress.update(j - i)
    return torch.cat(codes)


def generate_images(model, codec, tok, labels, generator, batch_size=250, **sampling):
    """One image per label: its codes sampled after 'number:7, image:' (draw_codes), then decoded.
    -> images (N, C, S, S) on the CPU, codes (N, tokens_per_image)."""
    device = next(model.parameters()).device
    codes = draw_codes(model, codec, lambda i, j: codec.prompts('generation', 'image', labels=labels[i:j], device=device),
                       len(labels), generator, batch_size=batch_size, **sampling)
    return tok.decode(codes, batch_size).cpu(), codes.cpu()


def draw_captions(model, codec, tok, captions, generator, batch_size=250, **sampling):
    """One image per caption, drawn after 'caption:a thick 7, image:' (draw_codes; captions of one
    length at a time, since every row of a batch starts at its sequence's start).
    -> images (N, C, S, S) on the CPU, codes (N, tokens_per_image)."""
    device = next(model.parameters()).device
    ids = [codec.tokens('illustration', caption=c, upto='image') for c in captions]
    codes = torch.zeros(len(captions), codec.tokens_per_image, dtype=torch.long, device=device)
    for n in sorted(set(map(len, ids))):
        rows = [i for i, x in enumerate(ids) if len(x) == n]
        prompts = torch.tensor([ids[i] for i in rows], device=device)
        codes[rows] = draw_codes(model, codec, lambda i, j: prompts[i:j], len(rows), generator, batch_size=batch_size,
                                 **sampling)
    return tok.decode(codes, batch_size).cpu(), codes.cpu()


@torch.no_grad()
def write_captions(model, codec, codes, batch_size=250):
    """Each image's caption, its most likely character at each step after 'image:..., caption:' until the
    sequence ends (the model writes '.' and then padding). codes (N, T) -> a list of N strings."""
    device = next(model.parameters()).device
    allowed = torch.zeros(codec.vocab_size, dtype=torch.bool, device=device)
    allowed[[codec.stoi[c] for c in codec.caption_chars] + [codec.stoi[PAD]]] = True
    out = []
    for i in range(0, len(codes), batch_size):
        prompts = codec.prompts('captioning', 'caption', codes=codes[i:i + batch_size], device=device)
        steps = min(codec.caption_length + 1, codec.block_size - prompts.size(1))
        written = model.generate(prompts, steps, temperature=0, allowed=allowed)[:, prompts.size(1):]
        for row in written.tolist():
            text = codec.decode(row).split(PAD)[0]
            out.append(text[:-1] if text.endswith(END) else text[:codec.caption_length])  # unended: cut at the longest
    return out


@torch.no_grad()
def answer_next(model, codec, tok, codes, generator, batch_size=250, **sampling):
    """The 'next' task: after 'image:A, next:' the model names a class (its most likely), then draws one
    after ', image:'. codes: the images A's (N, T).
    -> the images drawn (N, C, S, S) and their codes, on the CPU, and the classes named (N,)."""
    device = next(model.parameters()).device
    codes = torch.as_tensor(codes)
    named = model.next_token_probs(codec.prompts('next', 'label2', codes=codes, device=device), codec.label_ids,
                                   batch_size).argmax(1).tolist()
    drawn = draw_codes(model, codec, lambda i, j: codec.prompts('next', 'image2', codes=codes[i:j], labels2=named[i:j],
                                                                device=device),
                       len(codes), generator, batch_size=batch_size, **sampling)
    return tok.decode(drawn, batch_size).cpu(), drawn.cpu(), torch.tensor(named)


def sum_pairs(codec, labels, seed):
    """Each image paired with another of them (sequences.second_images, drawn with seed): the second's
    index (N,) and the right sums (N,) as indices into codec.sums."""
    second = torch.from_numpy(second_images(['addition'], np.zeros(len(labels)), labels.numpy(), len(codec.classes),
                                            np.random.default_rng(seed)))
    return second, torch.tensor([codec.sum_of(a, b) for a, b in zip(labels.tolist(), labels[second].tolist())])


def sum_probe(codec, codes, labels, seed, device='cpu'):
    """The prompts 'image:A plus image:B, sum:' (N, T) of sum_pairs, and the right sums (N,)."""
    second, truth = sum_pairs(codec, labels, seed)
    return codec.prompts('addition', 'sum', codes=codes, codes2=codes[second], device=device), truth.to(device)


@torch.no_grad()
def read_sums(model, codec, tok, task, codes, codes2, images, images2, views=1, threshold=0.9, mirror=False,
              batch_size=250):
    """The sum of each pair of images (images, images2: (N, C, S, S) with their codes) in an addition
    task: 'addition' reads it after 'image:A plus image:B, sum:'; 'worked_addition' first names each
    digit (its most likely; an unsure one looked at again as read_labels does, the other image and the
    digit named before it kept), then the sum after them, each prompt extending the last through a
    key/value cache. -> the probabilities of the sums (N, len(codec.sums)), and the digits named (N, 2)
    (None for 'addition')."""
    device = next(model.parameters()).device
    if task == 'addition':
        return model.next_token_probs(codec.prompts(task, 'sum', codes=codes, codes2=codes2, device=device),
                                      codec.sum_ids, batch_size), None
    sums, digits = [], []
    for i in range(0, len(codes), batch_size):
        a, b = codes[i:i + batch_size], codes2[i:i + batch_size]
        cache, seen, named = [[None, None] for _ in range(model.config.n_layer)], 0, {}
        for field, answers in (('label', codec.label_ids), ('label2', codec.label_ids), ('sum', codec.sum_ids)):
            prompt = codec.prompts(task, field, codes=a, codes2=b, device=device, **named)
            logits, _ = model(prompt[:, seen:], kv_cache=cache)  # the tokens since the last answer
            seen = prompt.size(1)
            probs = F.softmax(logits[:, -1, answers].float(), dim=-1)
            if field == 'sum':
                break
            if field == 'label':  # the first digit moved, alone before its answer
                read = lambda c, rows: model.next_token_probs(codec.prompts(task, field, codes=c, device=device),
                                                              answers, batch_size)
            else:  # the second moved, after the first image and the digit named of it
                read = lambda c, rows: model.next_token_probs(codec.prompts(
                    task, field, codes=a[rows], codes2=c, labels=[named['labels'][r] for r in rows.tolist()],
                    device=device), answers, batch_size)
            moved = (images if field == 'label' else images2)[i:i + batch_size]
            probs = second_look(probs, read, tok, moved, views, threshold, mirror, batch_size)
            named['labels' if field == 'label' else 'labels2'] = probs.argmax(1).tolist()
        sums.append(probs)
        digits.append(torch.tensor([named['labels'], named['labels2']]).T)
    return torch.cat(sums), torch.cat(digits)


def reading_probe(codec, shares, codes, labels, seed, device='cpu'):
    """What a run's reading is judged by: the class of each image ('image:A, number:' over the class
    names), or in a run that learns sums and no classes, the sum of each and another (sum_probe).
    -> prompts (N, T), the answer token ids, the right answers (N,) as indices into them."""
    if shares.get('classification') or not shares.get('addition'):
        return codec.prompts('classification', 'label', codes=codes, device=device), codec.label_ids, labels.to(device)
    prompts, truth = sum_probe(codec, codes, labels, seed, device)
    return prompts, codec.sum_ids, truth


def mirrored(meta):
    """Whether the model trained on mirrored copies (prepare.py's flip), so that reading looks at mirror
    images too."""
    return meta['moves']['flip']


def second_look(probs, read, tok, images, views, threshold, mirror=False, batch_size=250):
    """probs (N, K) of an answer about images (N, C, S, S): an image answered with top probability below
    threshold is read views - 1 more times, moved one pixel each way (SHIFTS), and its log-probabilities
    averaged (test-time augmentation, as in Krizhevsky et al. 2012; the model trained on moved copies,
    prepare.py's augment): only the unsure few get the second look. With mirror (the model trained on
    mirrored copies too), the mirror image comes first, then each shift both ways round. read(codes,
    rows) -> the probabilities (M, K) of the answer with the images of rows (M,) replaced by codes."""
    unsure = (probs.max(1).values < threshold).nonzero()[:, 0]
    if views <= 1 or not len(unsure):
        return probs
    moves = [(dx, dy, False) for dx, dy in SHIFTS]  # (dx, dy, mirrored) of each extra view
    if mirror:
        moves = [(0, 0, True)] + [(dx, dy, f) for dx, dy, _ in moves for f in (False, True)]
    moves, seen = moves[:views - 1], images[unsure.to(images.device)]
    moved = torch.cat([(lambda m: m.flip(3) if f else m)(shifted(seen, dx, dy)) for dx, dy, f in moves])
    logp = read(tok.encode(moved.to(probs.device), batch_size), unsure.repeat(len(moves))).clamp_min(1e-12).log()
    logp = logp.view(len(moves), len(unsure), -1).sum(0) + probs[unsure].clamp_min(1e-12).log()
    probs = probs.clone()
    probs[unsure] = torch.softmax(logp / (len(moves) + 1), 1)
    return probs


@torch.no_grad()
def read_labels(model, codec, tok, codes, images, views=1, threshold=0.9, batch_size=250, progress=None,
                mirror=False):
    """Class probabilities (N, K) from 'image:XXXX, number:' for images (N, C, S, S) with their codes,
    scored over the class names only (GPT.next_token_probs); unsure readings looked at again
    (second_look)."""
    device = next(model.parameters()).device
    read = lambda c, rows=None: model.next_token_probs(codec.prompts('classification', 'label', codes=c, device=device),
                                                       codec.label_ids, batch_size)
    probs = []
    for i in range(0, len(codes), 4 * batch_size):
        probs.append(read(codes[i:i + 4 * batch_size]))
        if progress:
            progress.update(len(probs[-1]))
    return second_look(torch.cat(probs), read, tok, images, views, threshold, mirror, batch_size)


@torch.no_grad()
def complete_images(model, codec, tok, codes, keep, label, n, generator, temperature=1.0, top_k=0, guidance=0.0,
                    batch_size=250):
    """n completions of each image's codes (M, T) from its first `keep` codes: after 'number:7, image:'
    and the kept codes when label is given (guided against 'image:' and the kept codes), else after
    'image:' and the kept codes. Then, as a classification sequence goes on after the image, the model
    names what it completed ('..., number:' scored over the class names).
    -> images (M*n, C, S, S), codes (M*n, T), class probabilities (M*n, K), all on the CPU."""
    device = next(model.parameters()).device
    kept = torch.as_tensor(codes)[:, :keep].repeat_interleave(n, 0).to(device) + codec.code_offset
    head = lambda task, labels: torch.cat([codec.prompts(task, 'image', labels=labels, device=device), kept], 1)
    if label is None:
        prompts, uncond, guidance = head('classification', [None] * len(kept)), None, 0.0
    else:
        prompts, uncond = head('generation', [label] * len(kept)), head('classification', [None] * len(kept))
    out = model.generate(prompts, codec.tokens_per_image - keep, temperature, top_k or None, codec.code_mask(device),
                         generator, guidance, uncond if guidance else None)
    full = out[:, -codec.tokens_per_image:] - codec.code_offset
    probs = model.next_token_probs(codec.prompts('classification', 'label', codes=full, device=device), codec.label_ids,
                                   batch_size)
    return tok.decode(full, batch_size).cpu(), full.cpu(), probs.cpu()


def kept_rows(codec, keep):
    """Tokens kept when `keep` rows of codes are kept: a grid's rows (after the codes of the whole
    image, which are always kept), else single tokens (a 1D tokenizer's tokens have no rows)."""
    if keep > codec.rows:
        raise Error(f"keep must be at most {codec.rows}, the {'row' if codec.grid else 'token'}s of codes of an image, "
                    f"got {keep}")
    return codec.lead + keep * codec.grid if codec.grid else keep


def kept_view(images, codec, keep):
    """What of each image the kept codes cover: a grid tokenizer's first rows (the rest black); the
    tokens of a 1D tokenizer have no place in the image, so it is shown whole."""
    out = images.clone()
    if codec.grid:
        out[..., round(keep * images.size(-2) / codec.grid):, :] = 0
    return out

