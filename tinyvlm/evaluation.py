"""
A trained model scored on the test split: how well it reads (accuracy with its standard error, the
most frequent confusions), and, by the data set's reference classifier (reference.py), how well the
tokenizer's reconstructions and the model's drawings keep the class (fidelity) and look like the real
images (the Frechet distance between the reference's features). The sampling temperature and guidance
are chosen on the validation split (sampling_sweep, knee): drawings as faithful as they get while they
stay near the real images.
"""
import math

import torch

from tinyvlm.captions import STYLES, measure_style, read_caption, style_obeyed, style_words
from tinyvlm.inference import (answer_next, draw_captions, generate_images, read_labels, read_sums, sum_pairs,
                               write_captions)
from tinyvlm.plumbing import Progress
from tinyvlm.reference import classify_images, frechet_distance, precision_recall


def reading_scores(pred, truth, classes):
    """Accuracy of predicted labels against true ones, its standard error sqrt(p(1-p)/n), the confusion
    matrix and its five largest off-diagonal cells."""
    K, n = len(classes), len(truth)
    pred, truth = pred.cpu(), truth.cpu()
    acc = (pred == truth).float().mean().item()
    confusion = torch.zeros(K, K, dtype=torch.long)
    confusion.index_put_((truth, pred), torch.ones(n, dtype=torch.long), accumulate=True)
    off = confusion.clone().fill_diagonal_(0).flatten()
    pairs = [dict(true=classes[int(i) // K], predicted=classes[int(i) % K], count=int(off[i]))
             for i in torch.argsort(off, descending=True)[:5] if off[i] > 0]
    return dict(classification_accuracy=acc, classification_stderr=math.sqrt(acc * (1 - acc) / n), n_test=n,
                confusion_pairs=pairs, confusion_matrix=confusion.tolist())


def fit_scores(model, codec, tok, splits, batch_size=250):
    """How well the model reads the images it trained on against new ones: each split's images read once,
    unmoved (no second look), with the accuracy and the mean negative log-likelihood of the true class.
    A model that reads its training images far better than the validation split's fits them rather than
    the task. splits: {name: (images, labels, codes)} -> {name: dict(images, accuracy, nll)}."""
    out = {}
    for name, (images, labels, codes) in splits.items():
        probs = read_labels(model, codec, tok, codes, images, views=1, batch_size=batch_size).cpu()
        truth = labels.cpu()
        out[name] = dict(images=len(truth), accuracy=(probs.argmax(1) == truth).float().mean().item(),
                         nll=-probs[torch.arange(len(truth)), truth].clamp_min(1e-12).log().mean().item())
    return out


def addition_scores(model, codec, tok, task, codes, images, labels, seed, reading):
    """MNIST addition: each image paired with another of the same split (inference.sum_pairs), the sum
    read (inference.read_sums with reading's second look: 'addition', or 'worked_addition', which names
    the digits first). -> its accuracy, standard error, pairs (keys 'sum_...', or 'worked_sum_...' and
    the digits named)."""
    second, truth = sum_pairs(codec, labels.cpu(), seed)
    probs, digits = read_sums(model, codec, tok, task, codes, codes[second], images, images[second.to(images.device)],
                              **reading)
    acc = (probs.argmax(1).cpu() == truth).float().mean().item()
    key = 'sum' if task == 'addition' else 'worked_sum'
    out = {f'{key}_accuracy': acc, f'{key}_stderr': math.sqrt(acc * (1 - acc) / len(truth)), f'{key}_pairs': len(truth)}
    if digits is not None:
        y = labels.cpu()
        out['worked_digits'] = ((digits[:, 0] == y) & (digits[:, 1] == y[second])).float().mean().item()
    return out


def next_scores(model, codec, tok, cnn, codes, labels, sampling, seed):
    """Images answered by images: for each image, the class the model names after 'image:A, next:' and
    the image it then draws, read by the reference classifier cnn, against the class after A's (the
    last class's next is the first)."""
    device = labels.device
    drawn, _, named = answer_next(model, codec, tok, codes, torch.Generator(device).manual_seed(seed), **sampling,
                                  progress=Progress('next', len(codes), 'images'))
    want = ((labels + 1) % len(codec.classes)).cpu()
    acc = (classify_images(cnn, drawn.to(device)).argmax(1).cpu() == want).float().mean().item()
    return dict(next_fidelity=acc, next_stderr=math.sqrt(acc * (1 - acc) / len(labels)), next_images=len(labels),
                next_named=(named == want).float().mean().item())


def caption_scores(model, codec, tok, cnn, learnt, captions, images, labels, codes, plan, sampling, seed):
    """The caption tasks on test images: images drawn from their captions ('illustration'), read by the
    reference classifier cnn as the class of the image captioned, and with style captions
    (captions.py), each style word measured on the drawings, as on the reconstructions of the images
    captioned (the tokenizer's ceiling); and the captions written of the images ('captioning'), exactly
    right, their class right, and each measure's word right (a word where the truth has one, none where
    it has none), beside the words measured on the reconstructions (the most the codes can tell)."""
    device, out = labels.device, {}
    y = labels.cpu()
    style = plan if plan['source'] == 'style' else None
    recon = tok.decode(codes.to(device), sampling['batch_size']).cpu() if style else None
    if 'illustration' in learnt:
        drawn = draw_captions(model, codec, tok, captions, torch.Generator(device).manual_seed(seed), **sampling,
                              progress=Progress('drawing captions', len(captions), 'images'))[0]
        acc = (classify_images(cnn, drawn.to(device)).argmax(1).cpu() == y).float().mean().item()
        out.update(caption_images=len(captions), caption_fidelity=acc,
                   caption_fidelity_stderr=math.sqrt(acc * (1 - acc) / len(captions)))
        if style:
            kind = style['kind']
            asked = [(read_caption(c, codec.classes, kind) or (None, {}))[1] for c in captions]
            out.update(style_obeyed=style_obeyed(measure_style(drawn, kind), y.numpy(), asked, style['bounds'], kind),
                       style_obeyed_reconstructions=style_obeyed(measure_style(recon, kind), y.numpy(), asked,
                                                                 style['bounds'], kind))
    if 'captioning' in learnt:
        written = write_captions(model, codec, codes.to(device), sampling['batch_size'])
        exact = sum(w == c for w, c in zip(written, captions)) / len(captions)
        out.update(captioned=len(captions), caption_exact=exact,
                   caption_exact_stderr=math.sqrt(exact * (1 - exact) / len(captions)),
                   caption_examples=[dict(true=c, written=w) for c, w in list(zip(captions, written))[:8]])
        if style:
            kind = style['kind']
            truth = [read_caption(c, codec.classes, kind) for c in captions]
            said = [read_caption(w, codec.classes, kind) or (None, None) for w in written]
            out['caption_class'] = sum(s[0] == t[0] for s, t in zip(said, truth)) / len(captions)
            out['caption_words'] = {k: sum(s[1] is not None and s[1].get(k) == t[1].get(k) for s, t in zip(said, truth))
                                    / len(captions) for k in STYLES[kind]}
            # the ceiling: the words of the reconstructions (what the model sees) against the images' own
            seen = style_words(measure_style(recon, kind), y.numpy(), style['bounds'], kind)
            out['caption_words_reconstructions'] = {k: sum(w.get(k) == t[1].get(k) for w, t in zip(seen, truth))
                                                    / len(captions) for k in STYLES[kind]}
    return out


def validity(codec, labels, codes):
    """The share of generated sequences that follow the generation task's grammar."""
    return sum(codec.parse(codec.text('generation', y, c.tolist())) is not None for y, c in zip(labels, codes)) / len(labels)


def judged(cnn, images, real):
    """Images (N, C, S, S) as the reference classifier sees them, against the real images' features
    (numpy): its readings (N,) on the CPU, the Frechet distance of its features to the real ones, and
    their precision and recall (reference.precision_recall: faithful apart from diverse)."""
    features = classify_images(cnn, images, features=True)
    with torch.no_grad():  # the logits from the same features: the convolutions run once
        read = cnn.head(features).argmax(1).cpu()
    features = features.cpu().numpy()
    precision, recall = precision_recall(real, features)
    return dict(read=read, frechet=frechet_distance(features, real), precision=precision, recall=recall)


def quality(model, codec, tok, cnn, test_images, test_labels, test_codes, per_class, sampling, seed):
    """The tokenizer's reconstructions of the test images and per_class generated images of each class
    (per_class 0: one for each test image, of its class), drawn with sampling (generate_images'
    settings), as the reference classifier cnn sees them: fidelity (read as the class they should be),
    Frechet distance to the real test images, precision and recall, validity and distinct token strings
    of the generated."""
    device = test_images.device
    K, classes = len(codec.classes), codec.classes
    real = classify_images(cnn, test_images, features=True).cpu().numpy()
    recon = judged(cnn, tok.decode(test_codes.to(device), sampling['batch_size']), real)
    labels = [y for y in range(K) for _ in range(per_class)] if per_class else sorted(test_labels.tolist())
    images, codes = generate_images(model, codec, tok, labels, torch.Generator(device).manual_seed(seed), **sampling,
                                    progress=Progress('generating', len(labels), 'images'))
    drawn = judged(cnn, images.to(device), real)
    want, read = torch.tensor(labels), drawn['read']
    return dict(reconstruction_fidelity=(recon['read'] == test_labels.cpu()).float().mean().item(),
                reconstruction_frechet=recon['frechet'], reconstruction_precision=recon['precision'],
                reconstruction_recall=recon['recall'],
                generated=len(labels), generation_validity=validity(codec, labels, codes),
                generation_fidelity=(read == want).float().mean().item(),
                generation_fidelity_per_class={classes[y]: (read[want == y] == y).float().mean().item() for y in range(K)},
                generation_frechet=drawn['frechet'], generation_precision=drawn['precision'],
                generation_recall=drawn['recall'], distinct_generations=len(set(map(tuple, codes.tolist()))),
                **{k: sampling[k] for k in ('temperature', 'top_k', 'guidance')})


def sampling_sweep(model, codec, tok, cnn, images, labels, codes, grid, sampling, seed):
    """Drawings of images' classes (one per image) at each (guidance, temperature) of grid, judged as
    quality() judges them against images (the validation split: the setting is chosen without the test
    split). -> the reconstructions' Frechet distance, and per setting its fidelity, Frechet distance,
    precision and recall."""
    real = classify_images(cnn, images, features=True).cpu().numpy()
    recon = judged(cnn, tok.decode(codes.to(images.device), sampling['batch_size']), real)['frechet']
    rows = []
    for g, t in grid:
        drawn = generate_images(model, codec, tok, labels.tolist(), torch.Generator(images.device).manual_seed(seed),
                                **dict(sampling, guidance=g, temperature=t),
                                progress=Progress(f"guidance {g:g}, temperature {t:g}", len(labels), 'images'))[0]
        j = judged(cnn, drawn.to(images.device), real)
        rows.append(dict(guidance=g, temperature=t, fidelity=(j['read'] == labels.cpu()).float().mean().item(),
                         frechet=j['frechet'], precision=j['precision'], recall=j['recall']))
    return recon, rows


def knee(rows, recon_frechet, n, within=3.0):
    """The setting whose drawings read as their class most often among those whose Frechet distance is
    at most `within` times the reconstructions' (the tokenizer's own floor: lower temperatures draw more
    faithfully but alike), the smallest Frechet distance breaking ties
    within one standard error of the best fidelity. Without any that near, the nearest.
    -> (its row, the distance allowed)"""
    limit = within * recon_frechet
    near = [r for r in rows if r['frechet'] <= limit]
    if not near:
        return min(rows, key=lambda r: r['frechet']), limit
    best = max(r['fidelity'] for r in near)
    p = (best * n + 2) / (n + 4)  # Agresti and Coull's: a perfect score still has an error (1,000 of 1,000 ties 999)
    tied = [r for r in near if r['fidelity'] >= best - math.sqrt(p * (1 - p) / n)]
    return min(tied, key=lambda r: r['frechet']), limit
