"""
Use and evaluate a trained model. Modes:

    python sample.py                                  # eval: every ckpt_{iter}.pt of the run in out_dir
    python sample.py --mode=generate --labels=3,7     # class -> images (class names: --labels=Sneaker,Bag)
    python sample.py --mode=generate --labels=7 --png_dir=out/sevens --png_size=256   # ... as PNG files
    python sample.py --mode=classify --image=0-9      # image -> class: test images by index
    python sample.py --mode=classify --image=my_digit.png   # ... or an image file of your own
    python sample.py --mode=complete --image=0-4 --keep=3   # the first 3 rows of codes kept, the rest drawn
    python sample.py --mode=add --image=0-9           # a run that learnt MNIST addition: the sums of pairs 0+1, 2+3, ...
    python sample.py --mode=next --image=0-4          # a run that learnt next: digits of the next class drawn after each
    python sample.py --mode=generate --prompt="a thick slanted 7"   # a run that learnt captions: caption -> images
    python sample.py --mode=caption --image=0-9       # ... image -> caption
    python sample.py --mode=serve                     # the web page, http://localhost:8000/

The data set, its class names and the prepared data come with the checkpoint (its data_dir and that
folder's meta.json). eval reads the class of every test image from the prompt 'image:XXXX, number:'
(the most likely class name, scored only over the class names; an unsure reading is repeated on the
image moved one pixel each way and averaged, see views), and reports accuracy with its standard error,
the most frequent confusions, a grid of generated images per checkpoint (samples_{iter}.png, one row a
class), accuracy against iteration (accuracy.png), the quality of the tokenizer's reconstructions and
of generated images as a reference classifier sees them (not with --judge=False, which only reads and
draws the grids, as the speedrun does), and all figures in out_dir/eval.json. Its
drawings are made at the temperature and guidance it chooses on the validation split (sweep,
sweep_guidance; sweep.png), which the other modes then take too. A run that learnt tasks of two images
(prepare.py's shares) is scored on those too: the sums of as many test pairs as test images, and what
it draws after each of next_images test images for 'next'; and on the caption tasks: images drawn from
the captions of caption_images test images (their class and, for MNIST's and Fashion-MNIST's captions,
each style word measured on them), and the captions written of those images. With fit_images, the last
checkpoint also reads that many images of the training, validation and test splits once each: a model
that reads its training images far better than the others fits them rather than the task.
"""
import json
import os
import re

import numpy as np
import torch

from tinyvlm import Error
from tinyvlm.checkpoints import check_tokenizer, load_model, run_checkpoints, trained_data_dir
from tinyvlm.configurator import configure
from tinyvlm.evaluation import (addition_scores, caption_scores, fit_scores, knee, next_scores, quality,
                                reading_scores, sampling_sweep, validity)
from tinyvlm.images import read_image_file, save_image_grid, save_png
from tinyvlm.inference import (answer_next, complete_images, draw_captions, generate_images, kept_rows, kept_view,
                               mirrored, read_labels, read_sums, write_captions)
from tinyvlm.plots import plot_accuracy, plot_sweep
from tinyvlm.plumbing import Progress, pick_device, pick_dtype, safe_name, start_script, write_json, write_npy
from tinyvlm.prepared import load_array, load_captions, load_images, load_meta, load_split
from tinyvlm.reference import reference_classifier, shipped_or_trained
from tinyvlm.sequences import Codec
from tinyvlm.server import Page, serve

start_script()  # errors the user can fix end in one line
# -----------------------------------------------------------------------------
out_dir = 'out/vlm'         # the training run: its checkpoints, and where results are written
data_dir = ''               # the prepared data; '' = the data_dir the checkpoint was trained on
mode = 'eval'               # 'eval', 'generate', 'classify', 'complete', 'add', 'next', 'caption' or 'serve' (a web page)
ckpt = ''                   # a checkpoint file in out_dir; '' = every ckpt_{iter}.pt for eval, ckpt.pt otherwise
labels = ''                 # generate: class names or numbers, comma-separated ('' = every class; MNIST: also '0123')
prompt = ''                 # generate: a caption to draw instead ('a thick slanted 7'), for a run that learnt captions
num_samples = 10            # generate and eval grids: images per class
temperature = -1.0          # 1.0 samples the model's distribution; 0 takes the most likely code; -1 = eval chooses
                            # from sweep, and the other modes take its choice (out_dir/eval.json; 0.9 before any eval)
guidance = -1.0             # classifier-free guidance scale, against 'image:' with no class; 0 = none; -1 = eval
                            # chooses from sweep_guidance, as the temperature (1.5 before any eval)
sweep = '0.4,0.5,0.6,0.7,0.8,0.9,1.0'  # eval with temperature -1: the temperatures tried on the validation split,
sweep_guidance = '1,1.5,2'  # ... with guidance -1: the guidance scales tried at each,
sweep_images = 500          # ... each (guidance, temperature) on up to this many of its images
top_k = 0                   # 0 = all codes; else only the k most likely at each step
views = 9                   # classify and eval: images read with top probability < view_threshold are read
view_threshold = 0.95       # again moved one pixel each way (and mirrored where prepare.py's flip), views readings
                            # in all (1 = no second look)
image = ''                  # classify, complete, add, next, caption: test indices ('7', '0,5,9', '0-99') or an
                            # image file (PNG, JPEG, ...); add reads them in pairs
keep = 3                    # complete: rows of codes kept from each image (a 1D tokenizer's row is one token)
save_npy = ''               # generate: also write the images (N, C, S, S) in [0, 1] here, labels beside
png_dir = ''                # generate: also write each image as its own PNG file in this folder ...
png_size = 0                # ... this many pixels square (0 = the data set's image size)
batch_size = 250            # images per forward pass (a CPU reads small batches faster: they stay in cache)
reference = ''              # eval: the reference classifier; '' = assets/reference_NAME.pt where it learned these images
                            # (MNIST, Fashion-MNIST), else out/reference_NAME.pt, trained there on first use
caption_images = 2000       # eval: test images whose captions are drawn and written (caption tasks)
next_images = 2000          # eval: test images answered with the next class, named and drawn (next)
fit_images = 0              # eval: also read this many images of each split (train, val, test) once, unmoved, at the
                            # last checkpoint: accuracy and the true class's mean NLL, how much better the model reads
                            # the images it trained on than new ones (0 = not)
judge = True                # eval: also judge the drawings (and the tokenizer's reconstructions) by the reference
                            # classifier: the sweep, fidelity, Frechet distance, the drawing tasks' scores; False =
                            # only read every checkpoint and draw its grid (a speedrun's evaluation)
fidelity_samples = 0        # eval: images generated per class for fidelity and Frechet distance; 0 = as many as the
                            # test split holds of it (a Frechet distance is biased by the sizes of its two sets)
host = '127.0.0.1'          # serve: the address to listen on (127.0.0.1: this machine only; 0.0.0.0: every network)
port = 8000                 # serve: the port (0 = any free one)
seed = 1337
device = 'auto'
dtype = 'auto'              # the language model's weights: 'auto' = bfloat16 where faster here (plumbing.fast_bf16)
# -----------------------------------------------------------------------------
configure(globals())
UNSWEPT = dict(temperature=0.9, guidance=1.5)  # where no evaluation has chosen them


def parse_indices(spec, n):
    """'7', '0,5,9' or '0-99' -> test indices, each below n."""
    idx = []
    for part in spec.split(','):
        m = re.fullmatch(r'\s*(\d{1,9})\s*(?:-\s*(\d{1,9})\s*)?', part)
        if not m:
            raise Error(f"image must be test indices like '7', '0,5,9' or '0-99', or an image file; got {spec!r}")
        a, b = int(m.group(1)), int(m.group(2) or m.group(1))
        if max(a, b) >= n:
            raise Error(f"test indices must be 0..{n - 1}, got {spec!r}")
        idx.extend(range(a, b + 1))
    if not idx:
        raise Error(f"no test index in {spec!r}")
    return idx


def inputs(image, mode, meta, data_dir, out_dir):
    """The images that --image names: test images by index, or image files (comma-separated), prepared
    as the data set's. -> images (N, C, S, S), true labels (None for a file), names."""
    if not image:
        raise Error(f"{mode} needs --image=INDICES (test images) or --image=FILE")
    if os.path.exists(image) or not re.fullmatch(r'[\d,\s-]+', image):
        files = [image] if os.path.exists(image) else [f.strip() for f in image.split(',')]
        mixed = [f for f in files if re.fullmatch(r'[\d\s-]+', f) and not os.path.exists(f)]
        if mixed:
            raise Error(f"image must be test indices ('0-9') or image files, not both: {mixed[0]!r} is not a file in {image!r}")
        x = torch.stack([torch.from_numpy(read_image_file(f, meta['dataset'])) for f in files])
        seen = os.path.join(out_dir, f'{mode}_input.png')
        if len(x) > 1:
            save_image_grid(x, seen, len(x))
        else:
            save_png(x[0], seen)
        print(f"the {x.size(-1)}x{x.size(-1)} image{'s' if len(x) > 1 else ''} the model saw: {seen}")
        return x, [None] * len(x), files
    images, truth = load_images(data_dir, 'test', meta)
    idx = parse_indices(image, len(images))
    return images[idx], truth[idx].tolist(), [f"test[{i}]" for i in idx]


def show_probs(p, classes):
    """'name:0.123 ...' for every class when there are at most 10, else the 5 most likely."""
    order = range(len(p)) if len(p) <= 10 else torch.argsort(p, descending=True)[:5].tolist()
    return ' '.join(f"{classes[k]}:{p[k]:.3f}" for k in order)


def generate(model, ck, codec, tok, ys, prompt, num_samples, sampling, generator, out_dir, png_dir, png_size,
             save_npy):
    """ys: the classes to draw (or prompt, a caption), num_samples images each -> a grid, printed token
    strings, and optionally PNG files (png_size pixels square, 0: as drawn) and a .npy file."""
    if prompt:
        codec.learnt('illustration', use='--prompt')
        names = [prompt.strip()]
        images, codes = draw_captions(model, codec, tok, [prompt] * num_samples, generator, **sampling)
        texts = [codec.text('illustration', codes=c.tolist(), caption=prompt) for c in codes]
    else:
        ys = [y for y in ys for _ in range(num_samples)]
        names = [codec.classes[y] for y in ys[::num_samples]]
        images, codes = generate_images(model, codec, tok, ys, generator, **sampling)
        texts = [codec.text('generation', y, c.tolist()) for y, c in zip(ys, codes)]
    grid = os.path.join(out_dir, 'generate.png')
    save_image_grid(images, grid, num_samples, row_labels=names)
    print(f"{len(images)} images of {', '.join(map(repr, dict.fromkeys(names)))} (iteration {ck['iter_num']}): {grid}")
    for t in texts[:num_samples * 2]:
        print(t)
    if png_dir:
        for i, im in enumerate(images.numpy()):
            name = names[i // num_samples]
            save_png(im, os.path.join(png_dir, f"{safe_name(name)}_{i % num_samples:04d}.png"), png_size or None)
        print(f"saved {len(images)} PNG files of {png_size or images.size(-1)} pixels square in {png_dir}")
    if save_npy:
        write_npy(save_npy, images.numpy().astype(np.float32))
        if prompt:  # no class to write beside them
            print(f"saved {save_npy}")
            return
        labels_path = save_npy[:-4] + '_labels.npy' if save_npy.endswith('.npy') else save_npy + '_labels.npy'
        write_npy(labels_path, np.array(ys, dtype=np.int64))
        print(f"saved {save_npy} and {labels_path}")


def classify(model, codec, tok, x, truth, names, reading):
    """Print the class each image is read as, and the probabilities."""
    device = next(model.parameters()).device
    codes = tok.encode(x.to(device)).cpu()
    probs = read_labels(model, codec, tok, codes, x.to(device), **reading).cpu()
    for name, t, p in zip(names, truth, probs):
        print(f"{name}: {codec.classes[int(p.argmax())]}" + ('' if t is None else f" (true {codec.classes[t]})")
              + "  p: " + show_probs(p, codec.classes))


def complete(model, codec, tok, x, truth, names, label, keep, num_samples, sampling, generator, out_dir):
    """num_samples completions of each image from its first `keep` rows of codes (as the class label, or
    none), as a PNG grid: per image the original, the kept part, then the completions."""
    kept = kept_rows(codec, keep)
    codes = tok.encode(x.to(next(model.parameters()).device)).cpu()
    images, full, probs = complete_images(model, codec, tok, codes, kept, label, num_samples, generator, **sampling)
    grid = torch.cat([torch.cat([x[i:i + 1], kept_view(x[i:i + 1], codec, keep), images[i * num_samples:(i + 1) * num_samples]])
                      for i in range(len(x))])
    path = os.path.join(out_dir, 'complete.png')
    save_image_grid(grid, path, num_samples + 2, row_labels=names)
    print(f"completions of {len(x)} image(s) from their first {keep} {'row' if codec.grid else 'token'}(s) of codes"
          + (f", as {codec.classes[label]}" if label is not None else ', no class given') + f": {path} "
          "(per row: the original, the kept part, the completions)")
    for i, name in enumerate(names):
        said = [codec.classes[int(p.argmax())] for p in probs[i * num_samples:(i + 1) * num_samples]]
        print(f"{name}" + (f" (true {codec.classes[truth[i]]})" if truth[i] is not None else '')
              + f": the model names its completions {', '.join(said)}")


def add(model, codec, tok, task, x, truth, names, reading):
    """Print the sum the model reads of each pair of images (the first and second, the third and
    fourth, ...) in an addition task, the digits it names first where it shows its work, and the most
    likely sums."""
    if len(x) % 2:
        raise Error(f"add reads images in pairs: give an even number of them, not {len(x)}")
    x = x.to(next(model.parameters()).device)
    codes = tok.encode(x)
    probs, digits = read_sums(model, codec, tok, task, codes[0::2], codes[1::2], x[0::2], x[1::2], **reading)
    for i, p in enumerate(probs.cpu()):
        a, b = truth[2 * i], truth[2 * i + 1]
        top = torch.argsort(p, descending=True)[:3].tolist()
        work = '' if digits is None else f"{codec.classes[digits[i, 0]]} + {codec.classes[digits[i, 1]]} = "
        print(f"{names[2 * i]} + {names[2 * i + 1]}: {work}{codec.sums[top[0]]}" + (
            '' if a is None or b is None else f" (true {codec.classes[a]} + {codec.classes[b]} = "
                                              f"{codec.sums[codec.sum_of(a, b)]})")
              + "  p: " + ' '.join(f"{codec.sums[k]}:{p[k]:.3f}" for k in top))


def caption(model, codec, tok, x, names, captions):
    """Print the caption the model writes of each image (its most likely), and the true one where
    known."""
    written = write_captions(model, codec, tok.encode(x.to(next(model.parameters()).device)))
    for name, w, c in zip(names, written, captions):
        print(f"{name}: {w}" + ('' if c is None else f"  (its caption: {c})"))


def draw_next(model, codec, tok, x, names, num_samples, sampling, generator, out_dir):
    """num_samples answers to each image in the 'next' task (the class the model names, then the image
    it draws), as a PNG grid: per row the image, then its answers."""
    codes = tok.encode(x.to(next(model.parameters()).device)).cpu()
    drawn, _, named = answer_next(model, codec, tok, codes.repeat_interleave(num_samples, 0), generator, **sampling)
    grid = torch.cat([torch.cat([x[i:i + 1], drawn[i * num_samples:(i + 1) * num_samples]]) for i in range(len(x))])
    path = os.path.join(out_dir, 'next.png')
    save_image_grid(grid, path, num_samples + 1, row_labels=names)
    print(f"the next class after {len(x)} image(s), named and drawn: {path} (per row: the image, then {num_samples} "
          "answers)")
    for i, name in enumerate(names):
        print(f"{name}: next:{codec.classes[int(named[i * num_samples])]}")


def evaluate(paths, meta, data_dir, codec, tok, device, dtype, sampling, reading, num_samples, seed, out_dir,
             judge, reference, fidelity_samples, grid, sweep_images, caption_images, next_images, fit_images):
    """Each task the run learnt, scored on the test split: the sampling setting chosen on the validation
    split (of a grid of (guidance, temperature), if given: evaluation.knee), then every checkpoint of the
    run read (the class of every test image; the sums of as many test pairs), with a grid of num_samples drawings per
    class; then the last one's drawings (fidelity_samples per class, 0: the test split's classes), the
    tokenizer's reconstructions and the images it answers next_images test images with ('next') scored
    by the reference classifier (all that it judges, only if judge)."""
    info, classes = meta['dataset'], codec.classes
    learnt = {t for t, w in meta['shares'].items() if w}
    if fit_images and 'classification' not in learnt:
        raise Error(f"fit_images reads images' classes: the run in {out_dir} did not learn classification")
    test_codes = load_split(data_dir, 'test', meta)[1]
    test_images, test_labels = (t.to(device) for t in load_images(data_dir, 'test', meta))
    to_judge = learnt if judge else set()  # the tasks whose drawings the reference classifier judges
    if judge:
        ref_path = reference or shipped_or_trained(meta)
        cnn, ref_acc = reference_classifier(ref_path, meta, data_dir, device, dtype)
    swept = None
    if grid and 'generation' in to_judge:
        model = load_model(paths[-1], meta, data_dir, device, dtype)[0]
        val_images, val_labels = (t[:sweep_images].to(device) for t in load_images(data_dir, 'val', meta))
        val_codes = load_split(data_dir, 'val', meta)[1][:sweep_images]
        recon, rows = sampling_sweep(model, codec, tok, cnn, val_images, val_labels, val_codes, grid, sampling, seed + 2)
        chosen, limit = knee(rows, recon, len(val_labels))
        swept = dict(images=len(val_labels), reconstruction_frechet=recon, frechet_limit=limit,
                     chosen={k: chosen[k] for k in ('guidance', 'temperature')}, rows=rows)
        print(f"sampling sweep ({len(val_labels)} validation images each; guidance, temperature: fidelity / Frechet "
              f"distance, the reconstructions' {recon:.2f}, at most {limit:.2f}): "
              + ', '.join(f"{r['guidance']:g}, {r['temperature']:g}: {r['fidelity']:.4f} / {r['frechet']:.2f}" for r in rows)
              + f"; chosen guidance {chosen['guidance']:g}, temperature {chosen['temperature']:g}", flush=True)
        plot_sweep(rows, recon, limit, chosen, os.path.join(out_dir, 'sweep.png'), f"{info['title']}, {out_dir}")
        sampling = dict(sampling, **swept['chosen'])
    shown = list(range(min(len(classes), 20)))  # the sample grids show up to 20 classes
    grid_labels = [y for y in shown for _ in range(num_samples)]
    results = []
    for path in paths:
        model, ck = load_model(path, meta, data_dir, device, dtype)
        r = dict(iter=ck['iter_num'], checkpoint=os.path.basename(path), val_loss=ck['val_loss'],
                 parameters=model.get_num_params())
        said = []
        if 'classification' in learnt:
            progress = Progress(f"{os.path.basename(path)}: reading", len(test_codes), 'test images')
            pred = read_labels(model, codec, tok, test_codes, test_images, **reading, progress=progress).argmax(1)
            r.update(reading_scores(pred, test_labels, classes), views=reading['views'],
                     view_threshold=reading['threshold'])
            said.append(f"test accuracy {r['classification_accuracy']:.4f} \u00b1 {r['classification_stderr']:.4f}; "
                        "most confused (true->predicted): "
                        + ', '.join(f"{p['true']}->{p['predicted']} {p['count']}" for p in r['confusion_pairs'][:3]))
        for task in sorted(learnt & {'addition', 'worked_addition'}):
            s = addition_scores(model, codec, tok, task, test_codes, test_images, test_labels, seed + 3, reading)
            r.update(s)
            key = 'sum' if task == 'addition' else 'worked_sum'
            said.append(f"{'sums' if task == 'addition' else 'worked sums'} of {s[key + '_pairs']} test pairs "
                        f"{s[key + '_accuracy']:.4f} \u00b1 {s[key + '_stderr']:.4f}"
                        + (f" (both digits named right {s['worked_digits']:.4f})" if 'worked_digits' in s else ''))
        if 'generation' in learnt:
            images, codes = generate_images(model, codec, tok, grid_labels, torch.Generator(device).manual_seed(seed),
                                            **sampling)
            grid = os.path.join(out_dir, f"samples_{ck['iter_num']}.png")
            save_image_grid(images, grid, num_samples, row_labels=[classes[y] for y in shown])
            r.update(samples=os.path.basename(grid), generation_validity=validity(codec, grid_labels, codes))
        results.append(r)
        print(f"{r['checkpoint']} (iteration {r['iter']}): " + ('; '.join(said) or f"val loss {r['val_loss']:.4f}"),
              flush=True)

    if fit_images:
        splits = {}
        for split in ('train', 'val', 'test'):
            images, labels = load_images(data_dir, split, meta)
            n = min(fit_images, len(images))  # the originals come first, then the training split's moved copies
            codes = torch.from_numpy(load_array(data_dir, f'{split}_codes.npy', meta)[:n].astype(np.int64))
            splits[split] = (images[:n].to(device), labels[:n], codes)
        fit = results[-1]['fit'] = fit_scores(model, codec, tok, splits, reading['batch_size'])
        print(f"{results[-1]['checkpoint']}, each split's first {fit_images} images (or all it has) read once, unmoved: "
              "accuracy (the true class's mean NLL, images) "
              + ', '.join(f"{k} {v['accuracy']:.4f} ({v['nll']:.3f}, {v['images']:,})" for k, v in fit.items()))
    q = dict(iter=ck['iter_num'])
    read = results[-1].get('classification_accuracy')
    if judge:
        q.update(reference=ref_path, reference_test_accuracy=ref_acc, reference_warning=None)
    # a judge that reads real images worse than the model does cannot tell its drawings' errors from its own
    if judge and (ref_acc < 0.9 or read is not None and ref_acc < read - results[-1]['classification_stderr']):
        q['reference_warning'] = (f"the reference classifier reads only {ref_acc:.4f} of the real test images (the "
                                  f"model {read:.4f}): fidelity figures are bounded by its errors as much as by the model's")
        print(f"warning: {q['reference_warning']}")
    if 'generation' in to_judge:
        q.update(quality(model, codec, tok, cnn, test_images, test_labels, test_codes, fidelity_samples, sampling,
                         seed + 1))
        print(f"quality (reference classifier, {ref_acc:.4f} on {info['title']} test): reconstructions read correctly "
              f"{q['reconstruction_fidelity']:.4f}, Frechet distance {q['reconstruction_frechet']:.2f}, precision "
              f"{q['reconstruction_precision']:.3f}, recall {q['reconstruction_recall']:.3f}; {q['generated']} generated "
              f"at iteration {q['iter']}, guidance {q['guidance']:g}, temperature {q['temperature']:g}: fidelity {q['generation_fidelity']:.4f}, "
              f"Frechet distance {q['generation_frechet']:.2f}, precision {q['generation_precision']:.3f}, recall "
              f"{q['generation_recall']:.3f}, validity {q['generation_validity']:.4f}, {q['distinct_generations']} "
              "distinct")
    if 'next' in to_judge:
        n = min(next_images, len(test_codes))
        q.update(next_scores(model, codec, tok, cnn, test_codes[:n], test_labels[:n], sampling, seed + 4))
        print(f"next: after {q['next_images']} test images, the class named is the next {q['next_named']:.4f}, the "
              f"image drawn read as it {q['next_fidelity']:.4f} \u00b1 {q['next_stderr']:.4f} (reference classifier)")
    if to_judge & {'illustration', 'captioning'}:
        n = min(caption_images, len(test_codes))
        q.update(caption_scores(model, codec, tok, cnn, learnt, load_captions(data_dir, 'test', meta)[:n],
                                test_images[:n], test_labels[:n], test_codes[:n], meta['captions'], sampling,
                                seed + 5))
        if 'illustration' in learnt:
            obeyed = q.get('style_obeyed', {})
            ceiling = q.get('style_obeyed_reconstructions', {})
            print(f"captions -> images: {n} test captions drawn, read as the class captioned "
                  f"{q['caption_fidelity']:.4f} \u00b1 {q['caption_fidelity_stderr']:.4f}"
                  + ('; style words obeyed (strictly; the reconstructions): ' if obeyed else '')
                  + ', '.join(f"{w} {r['obeyed']:.3f} ({r['strict']:.3f}; {ceiling[w]['obeyed']:.3f})"
                              for w, r in obeyed.items()))
        if 'captioning' in learnt:
            words, ceiling = q.get('caption_words', {}), q.get('caption_words_reconstructions', {})
            print(f"images -> captions: {n} test images, caption exactly right {q['caption_exact']:.4f}"
                  + (f", class {q['caption_class']:.4f}, words (the reconstructions') " if words else '')
                  + ', '.join(f"{k} {v:.3f} ({ceiling[k]:.3f})" for k, v in words.items()) + "; e.g. "
                  + '; '.join(f"{e['written']!r} ({e['true']!r})" for e in q['caption_examples'][:3]))
    write_json(os.path.join(out_dir, 'eval.json'), dict(
        out_dir=out_dir, data_dir=data_dir, dataset=info['title'], classes=classes, tokenizer=meta['tokenizer'],
        tokens_per_image=codec.tokens_per_image, codebook_size=codec.codebook_size, tasks=sorted(learnt), quality=q,
        sweep=swept, checkpoints=results))
    plot_accuracy(results, os.path.join(out_dir, 'accuracy.png'), f"{info['title']}, {out_dir}")
    print(f"wrote {out_dir}/eval.json, accuracy.png, {'sweep.png, ' if swept else ''}samples_{{iter}}.png")


def chosen_sampling(out_dir, wanted):
    """The temperature and guidance the evaluation of the run in out_dir chose, for those of wanted that
    are -1, or UNSWEPT's where none has."""
    try:
        with open(os.path.join(out_dir, 'eval.json'), encoding='utf-8') as f:
            q = json.load(f)['quality']
        chosen = {k: float(q[k]) for k, v in wanted.items() if v == -1}
    except (OSError, ValueError, KeyError, TypeError):
        chosen = {k: UNSWEPT[k] for k, v in wanted.items() if v == -1}
        print(', '.join(f"{k} {v:g}" for k, v in chosen.items())
              + f" (no evaluation in {out_dir} has chosen one yet: run sample.py)")
        return dict(wanted, **chosen)
    print(', '.join(f"{k} {v:g}" for k, v in chosen.items()) + f", as the evaluation chose ({out_dir}/eval.json; "
          + ', '.join(f"--{k}=X" for k in chosen) + " for another)")
    return dict(wanted, **chosen)


device = pick_device(device)
dtype = pick_dtype(device, dtype)
torch.manual_seed(seed)
if ckpt:
    paths = [os.path.join(out_dir, ckpt)]
else:
    paths = run_checkpoints(out_dir) if mode == 'eval' else [os.path.join(out_dir, 'ckpt.pt')]
data_dir = data_dir or trained_data_dir(paths[-1])
meta = load_meta(data_dir)
codec = Codec.from_meta(meta)
tok = check_tokenizer(meta, data_dir).to(device)
wanted = dict(temperature=temperature, guidance=guidance)
unset = [k for k, v in wanted.items() if v == -1]
if unset and mode in ('generate', 'complete', 'next', 'serve'):  # the modes that draw
    wanted = chosen_sampling(out_dir, wanted)
# eval sweeps the grid of what is left at -1 (the rest at its one value)
floats = lambda spec: [float(x) for x in spec.split(',') if x.strip()]
guidances = floats(sweep_guidance) if guidance == -1 else [guidance]
temperatures = floats(sweep) if temperature == -1 else [temperature]
grid = [(g, t) for g in guidances for t in temperatures] if unset else []
sampling = dict({k: UNSWEPT[k] if v == -1 else v for k, v in wanted.items()}, top_k=top_k, batch_size=batch_size)
reading = dict(views=views, threshold=view_threshold, mirror=mirrored(meta), batch_size=batch_size)
if mode == 'eval':
    evaluate(paths, meta, data_dir, codec, tok, device, dtype, sampling, reading, num_samples, seed, out_dir, judge,
             reference, fidelity_samples, grid, sweep_images, caption_images, next_images, fit_images)
else:
    model, ck = load_model(paths[0], meta, data_dir, device, dtype)
    generator = torch.Generator(device).manual_seed(seed)
    if mode == 'generate':
        generate(model, ck, codec, tok, codec.labels(labels), prompt, num_samples, sampling, generator, out_dir, png_dir,
                 png_size, save_npy)
    elif mode == 'classify':
        classify(model, codec, tok, *inputs(image, mode, meta, data_dir, out_dir), reading)
    elif mode == 'caption':
        codec.learnt('captioning', use='--mode=caption')
        x, truth, names = inputs(image, mode, meta, data_dir, out_dir)
        if truth[0] is None:  # image files: no caption to compare with
            caption(model, codec, tok, x, names, [None] * len(x))
        else:
            known = load_captions(data_dir, 'test', meta)
            caption(model, codec, tok, x, names, [known[i] for i in parse_indices(image, len(known))])
    elif mode in ('add', 'next'):
        task = codec.learnt(*(['addition', 'worked_addition'] if mode == 'add' else ['next']), use=f'--mode={mode}')
        x, truth, names = inputs(image, mode, meta, data_dir, out_dir)
        if mode == 'add':
            add(model, codec, tok, task, x, truth, names, reading)
        else:
            draw_next(model, codec, tok, x, names, num_samples, sampling, generator, out_dir)
    elif mode == 'complete':
        label = codec.label(labels) if labels.strip() else None
        complete(model, codec, tok, *inputs(image, mode, meta, data_dir, out_dir), label, keep, num_samples, sampling,
                 generator, out_dir)
    else:
        test_images, test_labels = load_images(data_dir, 'test', meta)
        serve(Page(model, ck, codec, tok, meta['dataset'], test_images, test_labels, sampling, reading, keep, seed,
                   paths[0], load_captions(data_dir, 'test', meta) if meta.get('captions') else None), host, port)
