"""
Use and evaluate a trained model. Modes:

    python sample.py                                  # eval: every ckpt_{iter}.pt of the run in out_dir
    python sample.py --mode=generate --labels=3,7     # class -> images (class names: --labels=Sneaker,Bag)
    python sample.py --mode=generate --labels=7 --png_dir=out/sevens --png_size=256   # ... as PNG files
    python sample.py --mode=classify --image=0-9      # image -> class: test images by index
    python sample.py --mode=classify --image=my_digit.png   # ... or an image file of your own

The data set, its class names and the prepared data come with the checkpoint (its data_dir and that
folder's meta.json). eval reads the class of every test image from the prompt 'image:XXXX, number:'
(the most likely class name, scored only over the class names; an unsure reading is repeated on the
image moved one pixel each way and averaged, see views), and reports accuracy with its standard error
sqrt(p(1-p)/n), the most frequent confusions, a grid of generated images per checkpoint
(samples_{iter}.png, one row a class), accuracy against iteration (accuracy.png), the quality of the
tokenizer's reconstructions and of generated images as a reference classifier sees them, and all
figures in out_dir/eval.json. Generation is constrained by the sequence grammar: after
'number:7, image:' only image codes can be drawn, so every generated sequence decodes to an image.
"""
import glob
import math
import os
import re

import numpy as np
import torch

from common import (Progress, atomic_write, autocast, check_tokenizer, load_checkpoint, load_images, load_meta,
                    load_model, load_split, pick_device, pick_dtype, save_checkpoint, write_json)
from common import save_npy as write_npy
from dataset import ImageError, open_image, prepare_image, read_image_file, save_image_grid, save_png, shifted, to_pil
from model import ImageCNN
from prepare import Codec

# -----------------------------------------------------------------------------
out_dir = 'out/vlm'         # the training run: its checkpoints, and where results are written
data_dir = ''               # the prepared data; '' = the data_dir the checkpoint was trained on
mode = 'eval'               # 'eval', 'generate', 'classify', 'complete' or 'serve' (a web page to play with)
ckpt = ''                   # a checkpoint file in out_dir; '' = every ckpt_{iter}.pt for eval, ckpt.pt otherwise
labels = ''                 # generate: class names or numbers, comma-separated ('' = every class; MNIST: also '0123')
num_samples = 10            # generate and eval grids: images per class
temperature = 0.9           # 1.0 samples the model's distribution; 0 takes the most likely code
top_k = 0                   # 0 = all codes; else only the k most likely at each step
guidance = 1.5              # classifier-free guidance scale, against 'image:' with no class; 0 = none
views = 9                   # classify and eval: images read with top probability < view_threshold are read
view_threshold = 0.95       # again moved one pixel each way (and mirrored where prepare.flip), views readings in
                            # all (1 = no second look)
image = ''                  # classify, complete: test indices ('7', '0,5,9', '0-99') or an image file (PNG, JPEG, ...)
keep = 3                    # complete: rows of codes kept from each image (a 1D tokenizer's row is one token)
save_npy = ''               # generate: also write the images (N, C, S, S) in [0, 1] here, labels beside
png_dir = ''                # generate: also write each image as its own PNG file in this folder ...
png_size = 0                # ... this many pixels square (0 = the data set's image size)
batch_size = 250            # images per forward pass (a CPU reads small batches faster: they stay in cache)
reference = ''              # eval: the reference classifier; '' = out/reference_NAME.pt, trained there on first use
fidelity_samples = 1000     # eval: images generated per class for fidelity and Frechet distance
host = '127.0.0.1'          # serve: the address to listen on (127.0.0.1: this machine only; 0.0.0.0: every network)
port = 8000                 # serve: the port (0 = any free one)
seed = 1337
device = 'auto'
dtype = 'auto'              # the language model's weights: 'auto' = bfloat16 where faster here (common.fast_bf16)
# -----------------------------------------------------------------------------
SHIFTS = ((1, 0), (-1, 0), (0, 1), (0, -1), (1, 1), (-1, -1), (1, -1), (-1, 1))  # (dx, dy) of the extra views


def generate_images(model, codec, tok, labels, generator, temperature=1.0, top_k=0, batch_size=250, guidance=0.0,
                    progress=None):
    """One image per label: sample its codes after 'number:7, image:' (codes only), then decode.
    batch_size images at a time.
    -> images (N, C, S, S) on the CPU, codes (N, tokens_per_image)."""
    device = next(model.parameters()).device
    allowed = codec.code_mask(device)
    codes = []
    for i in range(0, len(labels), batch_size):
        j = min(i + batch_size, len(labels))
        prompts = codec.prompts('generation', 'image', labels=labels[i:j], device=device)
        uncond = codec.prompts('classification', 'image', labels=[None] * (j - i), device=device) if guidance else None
        out = model.generate(prompts, codec.tokens_per_image, temperature, top_k or None, allowed, generator,
                             guidance, uncond)
        codes.append(out[:, prompts.size(1):] - codec.code_offset)
        if progress:
            progress.update(j - i)
    codes = torch.cat(codes)
    return tok.decode(codes, batch_size).cpu(), codes.cpu()


def mirrored(meta):
    """Whether the model trained on mirrored copies (prepare.flip), so that reading looks at mirror images too."""
    return meta.get('moves', {}).get('flip', False)


@torch.no_grad()
def read_labels(model, codec, tok, codes, images, views=1, threshold=0.9, batch_size=250, progress=None,
                mirror=False):
    """Class probabilities (N, K) from 'image:XXXX, number:' for images (N, C, S, S) with their codes,
    scored over the class names only (GPT.next_token_probs). An image read with top probability below
    threshold is read views - 1 more times, moved one pixel each way (SHIFTS), and its
    log-probabilities averaged (test-time augmentation, as in Krizhevsky et al. 2012; the model
    trained on moved copies, prepare.augment): only the unsure few get the second look. With mirror (the
    model trained on mirrored copies too, prepare.flip), the mirror image comes first, then each shift
    both ways round."""
    device = next(model.parameters()).device
    read = lambda c: model.next_token_probs(codec.prompts('classification', 'label', codes=c, device=device),
                                            codec.label_ids, batch_size)
    probs = []
    for i in range(0, len(codes), 4 * batch_size):
        probs.append(read(codes[i:i + 4 * batch_size]))
        if progress:
            progress.update(len(probs[-1]))
    probs = torch.cat(probs)
    unsure = (probs.max(1).values < threshold).nonzero()[:, 0]
    if views > 1 and len(unsure):
        logp = probs[unsure].clamp_min(1e-12).log()
        moves = [(dx, dy, False) for dx, dy in SHIFTS]  # (dx, dy, mirrored) of each extra view
        if mirror:  # the mirror image first, then each shift both ways round
            moves = [(0, 0, True)] + [(dx, dy, f) for dx, dy, _ in moves for f in (False, True)]
        for dx, dy, f in moves[:views - 1]:
            moved = shifted(images[unsure.to(images.device)], dx, dy).to(device)
            moved = moved.flip(3) if f else moved
            logp += read(tok.encode(moved, batch_size)).clamp_min(1e-12).log()
        probs[unsure] = torch.softmax(logp / views, 1)
    return probs


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
    """Tokens kept when `keep` rows of codes are kept: a grid's rows, else single tokens."""
    return keep * codec.grid if codec.grid else keep


def kept_view(images, codec, keep):
    """What of each image the kept codes cover: a grid tokenizer's first rows (the rest black); the
    tokens of a 1D tokenizer have no place in the image, so it is shown whole."""
    out = images.clone()
    if codec.grid:
        out[..., round(keep * images.size(-2) / codec.grid):, :] = 0
    return out


def reference_classifier(path, meta, data_dir, device, dtype='float32', epochs=8, batch=128, seed=1337):
    """The reference classifier that scores images, for this data set: loaded from path, or first
    trained there on its training and validation images, each shifted at random by up to one pixel
    (Adam, lr 3e-3 with cosine decay; in bfloat16 when dtype is bfloat16, and channels last, which
    convolutions on a CPU run fastest), and saved with its test accuracy and the fingerprint of the
    data it learned, so that a classifier of other data is trained anew rather than used."""
    info = meta['dataset']
    if os.path.isfile(path):
        ck = load_checkpoint(path, 'reference classifier', f'delete {path} to train it again')
        if not isinstance(ck, dict) or 'model' not in ck or 'args' not in ck:
            raise SystemExit(f"error: {path} is not a reference classifier written by sample.py: delete it")
        if ck.get('fingerprint') == info['fingerprint']:
            cnn = ImageCNN(**ck['args'])
            cnn.load_state_dict(ck['model'])
            return cnn.to(device).eval(), ck['test_accuracy']
        print(f"{path} was trained on other images than {info['title']}'s: training it again")
    x, y = (torch.cat(t).to(device) for t in zip(*(load_images(data_dir, s, meta) for s in ('train', 'val'))))
    g = torch.Generator(device).manual_seed(seed)
    torch.manual_seed(seed)
    args = dict(channels=info['channels'], image_size=info['image_size'], n_classes=len(meta['classes']))
    cnn = ImageCNN(**args).to(device, memory_format=torch.channels_last)
    ctx = autocast(device, 'bfloat16' if dtype == 'bfloat16' else 'float32')  # float16 would need a loss scaler
    opt = torch.optim.Adam(cnn.parameters(), lr=1e-3)
    steps = epochs * math.ceil(len(x) / batch)
    print(f"training the reference classifier {path} ({epochs} epochs of {len(x):,} {info['title']} training images)",
          flush=True)
    progress = Progress('reference classifier', steps, 'batches')
    for step in range(steps):
        idx = torch.randint(len(x), (batch,), device=device, generator=g)
        off = torch.randint(3, (2, batch), device=device, generator=g)
        xb = shifted(x[idx], 1 - off[1], 1 - off[0]).contiguous(memory_format=torch.channels_last)
        for group in opt.param_groups:  # cosine decay to 0
            group['lr'] = 3e-3 * 0.5 * (1 + math.cos(math.pi * step / steps))
        with ctx:
            loss = torch.nn.functional.cross_entropy(cnn(xb), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        progress.update()
    cnn.eval()
    test_x, test_y = (t.to(device) for t in load_images(data_dir, 'test', meta))
    acc = (classify_images(cnn, test_x).argmax(1) == test_y).float().mean().item()
    save_checkpoint({'model': cnn.state_dict(), 'args': args, 'test_accuracy': acc,
                     'fingerprint': info['fingerprint'], 'dataset': info['title']}, path)
    print(f"reference classifier: {info['title']} test accuracy {acc:.4f}; saved {path}")
    return cnn, acc


@torch.no_grad()
def classify_images(cnn, images, features=False, batch=2000):
    """The reference classifier's logits (N, K), or with features=True its penultimate features (N, 128)."""
    f = cnn.features if features else cnn
    return torch.cat([f(images[i:i + batch]) for i in range(0, len(images), batch)])


def frechet_distance(a, b):
    """Frechet distance between Gaussians fitted to two feature sets (N, D): |mu_a - mu_b|^2 +
    tr(S_a + S_b - 2 (S_a S_b)^1/2), the trace of the root computed as that of the symmetric
    S_a^1/2 S_b S_a^1/2 (no scipy)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    mu_a, mu_b, s_a, s_b = a.mean(0), b.mean(0), np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    w, v = np.linalg.eigh(s_a)
    root_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(root_a @ s_b @ root_a), 0, None)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2 * cross)


def parse_indices(spec, n):
    idx = []
    for part in spec.split(','):
        m = re.fullmatch(r'\s*(\d+)\s*(?:-\s*(\d+)\s*)?', part)
        if not m:
            raise SystemExit(f"error: image must be test indices like '7', '0,5,9' or '0-99', or an image file; got {spec!r}")
        a, b = int(m.group(1)), int(m.group(2) or m.group(1))
        idx.extend(range(a, b + 1))
    if not idx or max(idx) >= n:
        raise SystemExit(f"error: test indices must be 0..{n - 1}, got {spec!r}")
    return idx


def checkpoint_paths():
    """The checkpoint to use, or for eval every ckpt_{iter}.pt of the newest run in out_dir."""
    if ckpt:
        return [os.path.join(out_dir, ckpt)]
    if mode != 'eval':
        return [os.path.join(out_dir, 'ckpt.pt')]
    paths = glob.glob(os.path.join(out_dir, 'ckpt_*.pt'))
    paths = sorted((p for p in paths if re.fullmatch(r'ckpt_\d+\.pt', os.path.basename(p))),
                   key=lambda p: int(re.findall(r'\d+', os.path.basename(p))[0]))
    if not paths:
        raise SystemExit(f"error: no ckpt_{{iter}}.pt in {out_dir}: run train.py first")

    def run(p):  # train.py stamps every checkpoint with its run; mmap reads only what is asked for
        try:
            return torch.load(p, map_location='cpu', weights_only=True, mmap=True).get('run')
        except Exception:
            return None  # load_model says what is wrong with it, if it is evaluated
    newest = run(max(paths, key=os.path.getmtime))
    kept = [p for p in paths if run(p) == newest]
    if len(kept) < len(paths):
        print(f"evaluating the newest run in {out_dir} ({len(kept)} checkpoints); left out, from other runs: "
              + ', '.join(os.path.basename(p) for p in paths if p not in kept))
    return kept


def trained_data_dir(path):
    """The data_dir a checkpoint of train.py was trained on."""
    ck = load_checkpoint(path, 'language-model checkpoint', 'run train.py first')
    if not isinstance(ck, dict) or 'config' not in ck:
        raise SystemExit(f"error: {path} is not a checkpoint written by train.py")
    return ck['config']['data_dir']


def plot_accuracy(results, path, title):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    it = [r['iter'] for r in results]
    ax.errorbar(it, [r['classification_accuracy'] for r in results],
                yerr=[r['classification_stderr'] for r in results], marker='o', capsize=3)
    ax.set_xlabel('iteration')
    ax.set_ylabel('test accuracy, image -> class (\u00b11 s.e.)')
    ax.set_title(f"{title}: {results[-1]['classification_accuracy']:.4f} at {it[-1]}")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format='png', dpi=100))
    plt.close(fig)


def safe_name(name):
    """A class name as part of a file name."""
    return re.sub(r'[\\/:*?"<>|\s]+', '-', name).strip('-') or 'class'


def show_probs(p):
    """'name:0.123 ...' for every class when there are at most 10, else the 5 most likely."""
    order = range(len(p)) if len(p) <= 10 else torch.argsort(p, descending=True)[:5].tolist()
    return ' '.join(f"{codec.classes[k]}:{p[k]:.3f}" for k in order)


# ----------------------------------------------------------------------------------------------------
# the modes

def generate():
    ys = codec.labels(labels)
    ys = [y for y in ys for _ in range(num_samples)]
    model, ck = load_model(paths[0], meta, data_dir, device, dtype)
    images, codes = generate_images(model, codec, tok, ys, torch.Generator(device).manual_seed(seed), temperature,
                                    top_k, batch_size, guidance)
    grid = os.path.join(out_dir, 'generate.png')
    save_image_grid(images, grid, num_samples, row_labels=[codec.classes[y] for y in ys[::num_samples]])
    print(f"{len(images)} images of {', '.join(dict.fromkeys(codec.classes[y] for y in ys))} from {paths[0]} "
          f"(iteration {ck['iter_num']}): {grid}")
    for y, c in list(zip(ys, codes))[:num_samples * 2]:
        print(codec.text('generation', y, c.tolist()))
    if png_dir:
        for i, (y, im) in enumerate(zip(ys, images.numpy())):
            save_png(im, os.path.join(png_dir, f"{safe_name(codec.classes[y])}_{i % num_samples:04d}.png"),
                     png_size or None)
        print(f"saved {len(images)} PNG files of {png_size or meta['dataset']['image_size']} pixels square in {png_dir}")
    if save_npy:
        write_npy(save_npy, images.numpy().astype(np.float32))
        lpath = save_npy[:-4] + '_labels.npy' if save_npy.endswith('.npy') else save_npy + '_labels.npy'
        write_npy(lpath, np.array(ys, dtype=np.int64))
        print(f"saved {save_npy} and {lpath}")


def classify():
    model, ck = load_model(paths[0], meta, data_dir, device, dtype)
    x, truth, names = inputs()
    codes = tok.encode(x.to(device)).cpu()
    probs = read_labels(model, codec, tok, codes, x.to(device), views, view_threshold, batch_size, mirror=mirror).cpu()
    for name, t, p in zip(names, truth, probs):
        print(f"{name}: {codec.classes[int(p.argmax())]}" + ('' if t is None else f" (true {codec.classes[t]})")
              + "  p: " + show_probs(p))


def evaluate():
    test_codes = load_split(data_dir, 'test', meta)[1]
    test_images, test_labels = (t.to(device) for t in load_images(data_dir, 'test', meta))
    K, classes = len(codec.classes), codec.classes
    shown = list(range(min(K, 20)))  # the sample grids show up to 20 classes
    grid_labels = [y for y in shown for _ in range(num_samples)]
    results = []
    for path in paths:
        model, ck = load_model(path, meta, data_dir, device, dtype)
        reading = Progress(f"{os.path.basename(path)}: reading", len(test_codes), 'test images')
        pred = read_labels(model, codec, tok, test_codes, test_images, views, view_threshold, batch_size, reading,
                           mirror).argmax(1)
        n = len(test_labels)
        acc = (pred == test_labels).float().mean().item()
        confusion = torch.zeros(K, K, dtype=torch.long)
        confusion.index_put_((test_labels.cpu(), pred.cpu()), torch.ones(n, dtype=torch.long), accumulate=True)
        off = confusion.clone().fill_diagonal_(0).flatten()
        top = torch.argsort(off, descending=True)[:5]
        pairs = [dict(true=classes[int(i) // K], predicted=classes[int(i) % K], count=int(off[i])) for i in top if off[i] > 0]
        images, codes = generate_images(model, codec, tok, grid_labels, torch.Generator(device).manual_seed(seed),
                                        temperature, top_k, batch_size, guidance)
        valid = sum(codec.parse(codec.text('generation', y, c.tolist())) is not None for y, c in zip(grid_labels, codes))
        grid = os.path.join(out_dir, f"samples_{ck['iter_num']}.png")
        save_image_grid(images, grid, num_samples, row_labels=[classes[y] for y in shown])
        r = dict(iter=ck['iter_num'], checkpoint=os.path.basename(path), classification_accuracy=acc,
                 classification_stderr=math.sqrt(acc * (1 - acc) / n), n_test=n, views=views,
                 view_threshold=view_threshold, confusion_pairs=pairs, confusion_matrix=confusion.tolist(),
                 val_loss=ck.get('val_loss'), samples=os.path.basename(grid),
                 generation_validity=valid / len(grid_labels), parameters=model.get_num_params())
        results.append(r)
        print(f"{r['checkpoint']} (iteration {r['iter']}): test accuracy {acc:.4f} \u00b1 "
              f"{r['classification_stderr']:.4f}; most confused (true->predicted): "
              + ', '.join(f"{p['true']}->{p['predicted']} {p['count']}" for p in pairs[:3]), flush=True)
    results.sort(key=lambda r: r['iter'])

    # quality, scored by the reference classifier: the tokenizer's reconstructions of the test set, and
    # fidelity_samples generated images per class from the last checkpoint
    ref_path = reference or os.path.join('out', f"reference_{safe_name(info['name'])}.pt")
    cnn, ref_acc = reference_classifier(ref_path, meta, data_dir, device, dtype)
    real = classify_images(cnn, test_images, features=True).cpu().numpy()
    recon = tok.decode(test_codes.to(device), batch_size)
    recon_fidelity = (classify_images(cnn, recon).argmax(1) == test_labels).float().mean().item()
    recon_fd = frechet_distance(classify_images(cnn, recon, features=True).cpu().numpy(), real)
    gen_labels = [y for y in range(K) for _ in range(fidelity_samples)]
    model, ck = load_model(paths[-1], meta, data_dir, device, dtype)
    images, codes = generate_images(model, codec, tok, gen_labels, torch.Generator(device).manual_seed(seed + 1),
                                    temperature, top_k, batch_size, guidance, Progress('generating', len(gen_labels), 'images'))
    images = images.to(device)
    read = classify_images(cnn, images).argmax(1).cpu()
    want = torch.tensor(gen_labels)
    valid = sum(codec.parse(codec.text('generation', y, c.tolist())) is not None for y, c in zip(gen_labels, codes))
    quality = dict(iter=ck['iter_num'], reference=ref_path, reference_test_accuracy=ref_acc,
                   reconstruction_fidelity=recon_fidelity, reconstruction_frechet=recon_fd,
                   generated=len(gen_labels), generation_validity=valid / len(gen_labels),
                   generation_fidelity=(read == want).float().mean().item(),
                   generation_fidelity_per_class={classes[y]: (read[want == y] == y).float().mean().item() for y in range(K)},
                   generation_frechet=frechet_distance(classify_images(cnn, images, features=True).cpu().numpy(), real),
                   distinct_generations=len(set(map(tuple, codes.tolist()))),
                   temperature=temperature, top_k=top_k, guidance=guidance)
    print(f"quality (reference classifier, {ref_acc:.4f} on {info['title']} test): reconstructions read correctly "
          f"{recon_fidelity:.4f}, Frechet distance {recon_fd:.2f}; {len(gen_labels)} generated at iteration "
          f"{ck['iter_num']}: fidelity {quality['generation_fidelity']:.4f}, Frechet distance "
          f"{quality['generation_frechet']:.2f}, validity {quality['generation_validity']:.4f}, "
          f"{quality['distinct_generations']} distinct")
    report = dict(out_dir=out_dir, data_dir=data_dir, dataset=info['title'], classes=classes, tokenizer=meta['tokenizer'],
                  tokens_per_image=codec.tokens_per_image, codebook_size=codec.codebook_size,
                  quality=quality, checkpoints=results)
    write_json(os.path.join(out_dir, 'eval.json'), report)
    plot_accuracy(results, os.path.join(out_dir, 'accuracy.png'), f"{info['title']}, {out_dir}")
    print(f"wrote {out_dir}/eval.json, accuracy.png and samples_{{iter}}.png")


def complete():
    """Completions of test images or an image file from their first rows of codes, as a PNG grid: per
    image the original, the kept part, then the completions."""
    model, ck = load_model(paths[0], meta, data_dir, device, dtype)
    unit = 'row' if codec.grid else 'token'  # a 1D tokenizer's tokens have no rows
    if keep > codec.rows:
        raise SystemExit(f"error: keep={keep} is not allowed: keep must be at most {codec.rows}, the {unit}s of codes "
                         f"of an image")
    x, truth, names = inputs()
    codes = tok.encode(x.to(device)).cpu()
    label = codec.label(labels) if labels.strip() else None
    images, full, probs = complete_images(model, codec, tok, codes, kept_rows(codec, keep), label, num_samples,
                                          torch.Generator(device).manual_seed(seed), temperature, top_k, guidance)
    grid = torch.cat([torch.cat([x[i:i + 1], kept_view(x[i:i + 1], codec, keep), images[i * num_samples:(i + 1) * num_samples]])
                      for i in range(len(x))])
    path = os.path.join(out_dir, 'complete.png')
    save_image_grid(grid, path, num_samples + 2, row_labels=names)
    print(f"completions of {len(x)} image(s) from their first {keep} {unit}(s) of codes"
          + (f", as {codec.classes[label]}" if label is not None else ', no class given') + f": {path} "
          "(per row: the original, the kept part, the completions)")
    for i, name in enumerate(names):
        said = [codec.classes[int(p.argmax())] for p in probs[i * num_samples:(i + 1) * num_samples]]
        print(f"{name}" + (f" (true {codec.classes[truth[i]]})" if truth[i] is not None else '')
              + f": the model names its completions {', '.join(said)}")


def inputs():
    """The images that --image names: test images by index, or an image file, prepared as the data
    set's. -> images (N, C, S, S), true labels (None for a file), names."""
    if not image:
        raise SystemExit(f"error: {mode} needs --image=INDICES (test images) or --image=FILE")
    if os.path.exists(image) or not re.fullmatch(r'[\d,\s-]+', image):
        x = torch.from_numpy(read_image_file(image, info))[None]
        seen = os.path.join(out_dir, f'{mode}_input.png')
        save_png(x[0], seen)
        print(f"the {x.size(-1)}x{x.size(-1)} image the model saw: {seen}")
        return x, [None], [image]
    images, truth = load_images(data_dir, 'test', meta)
    idx = parse_indices(image, len(images))
    return images[idx], truth[idx].tolist(), [f"test[{i}]" for i in idx]


# ----------------------------------------------------------------------------------------------------
# the web page: python sample.py --mode=serve

MAX_BODY = 4 << 20  # bytes: a request's body is refused above this


class BadRequest(Exception):
    """A request the page cannot answer, with the reason for the user."""


def data_url(image, size=None):
    """An image (C, S, S) in [0, 1] as a PNG data URL."""
    import base64
    import io
    buf = io.BytesIO()
    to_pil(image, size).save(buf, format='PNG')
    return 'data:image/png;base64,' + base64.b64encode(buf.getvalue()).decode()


def image_from(request):
    """The image a request carries as a data URL (a drawing or an upload), prepared as image files are
    (dataset.prepare_image); a request never names a file."""
    import base64
    import binascii
    import io
    url = request.get('image')
    if not isinstance(url, str) or not url.startswith('data:image/') or ';base64,' not in url:
        raise BadRequest("image must be an image as a data URL ('data:image/png;base64,...')")
    try:
        raw = base64.b64decode(url.split(';base64,', 1)[1], validate=True)
        return torch.from_numpy(prepare_image(open_image(io.BytesIO(raw), 'the image'), info, name='the image'))
    except (binascii.Error, ValueError):
        raise BadRequest('image is not valid base64')
    except ImageError as e:
        raise BadRequest(str(e))


def setting(request, key, default, kind):
    """A sampling setting of a request, checked by the command line's rule (configurator.RULES)."""
    from configurator import check
    value = request.get(key, default)
    if kind is float and type(value) is int:
        value = float(value)
    if type(value) is not kind:
        raise BadRequest(f"{key} must be a {kind.__name__}, got {value!r}")
    try:
        check(key, value, 'sample.py')
    except SystemExit as e:
        raise BadRequest(str(e).removeprefix('error: '))
    return value


def class_of(request, optional=False):
    name = request.get('label', '')
    if optional and name in ('', None):
        return None
    try:
        return codec.label(name)
    except SystemExit as e:
        raise BadRequest(str(e).removeprefix('error: '))


class Page:
    """What the page asks, answered by the model of out_dir; one request computes at a time (the
    server's threads queue on a lock), so two browsers each get their own answer."""

    def __init__(self):
        import threading
        self.model, self.ck = load_model(paths[0], meta, data_dir, device, dtype)
        self.test_images, self.test_labels = load_images(data_dir, 'test', meta)
        self.lock = threading.Lock()
        self.calls = 0

    def info(self, request):
        return dict(title=info['title'], classes=codec.classes, key=codec.key, image_size=info['image_size'],
                    channels=info['channels'], tokens_per_image=codec.tokens_per_image, grid=codec.grid, rows=codec.rows,
                    test_images=len(self.test_images), checkpoint=paths[0], iteration=self.ck['iter_num'],
                    defaults=dict(n=4, temperature=temperature, guidance=guidance, keep=keep))

    def index(self, request):
        i = request.get('index')
        if type(i) is not int or not 0 <= i < len(self.test_images):
            raise BadRequest(f"index must be a test image number 0..{len(self.test_images) - 1}, got {i!r}")
        return i

    def test(self, request):
        i = self.index(request)
        return dict(image=data_url(self.test_images[i]), label=codec.classes[int(self.test_labels[i])])

    def classify(self, request):
        x = image_from(request)[None].to(device)
        codes = tok.encode(x)
        p = read_labels(self.model, codec, tok, codes, x, views, view_threshold, mirror=mirror)[0].cpu()
        return dict(classes=codec.classes, probs=p.tolist(), label=codec.classes[int(p.argmax())], seen=data_url(x[0]),
                    tokens=codec.image_text(codes[0].tolist()))

    def generate(self, request):
        y = class_of(request)
        n = setting(request, 'num_samples', 4, int)
        if n > 64:
            raise BadRequest(f"num_samples must be at most 64 on the page, got {n}")
        g = torch.Generator(device).manual_seed(seed + self.calls)
        images, codes = generate_images(self.model, codec, tok, [y] * n, g, setting(request, 'temperature', temperature, float),
                                        top_k, batch_size, setting(request, 'guidance', guidance, float))
        return dict(label=codec.classes[y], images=[data_url(im) for im in images],
                    tokens=[codec.text('generation', y, c.tolist()) for c in codes])

    def complete(self, request):
        y = class_of(request, optional=True)
        n = setting(request, 'num_samples', 4, int)
        rows = self.info(request)['rows']
        k = setting(request, 'keep', keep, int)
        if n > 16 or k > rows:
            raise BadRequest(f"num_samples must be at most 16 and keep at most {rows}, got {n} and {k}")
        if 'index' in request:
            x = self.test_images[self.index(request)][None]
        else:
            x = image_from(request)[None]
        g = torch.Generator(device).manual_seed(seed + self.calls)
        images, codes, probs = complete_images(self.model, codec, tok, tok.encode(x.to(device)).cpu(), kept_rows(codec, k), y,
                                               n, g, setting(request, 'temperature', temperature, float), top_k,
                                               setting(request, 'guidance', guidance, float))
        task = 'generation' if y is not None else 'classification'
        return dict(original=data_url(x[0]), kept=data_url(kept_view(x, codec, k)[0]),
                    completions=[dict(image=data_url(im), tokens=codec.text(task, int(p.argmax()), c.tolist()),
                                      name=codec.classes[int(p.argmax())], p=float(p.max()))
                                 for im, c, p in zip(images, codes, probs)])

    def answer(self, name, request):
        with self.lock, torch.no_grad():
            self.calls += 1
            return getattr(self, name)(request)


def serve():
    """A small web server from the standard library over the model of out_dir: the page, and its JSON API."""
    import json
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    page = Page()
    routes = {'/api/info': 'info', '/api/test': 'test', '/api/classify': 'classify', '/api/generate': 'generate',
              '/api/complete': 'complete'}

    class Handler(BaseHTTPRequestHandler):
        def reply(self, status, body, kind='application/json'):
            data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
            self.send_response(status)
            self.send_header('Content-Type', kind + '; charset=utf-8')
            self.send_header('Content-Length', str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            if self.path in ('/', '/index.html'):
                return self.reply(200, PAGE, 'text/html')
            if self.path == '/api/info':
                return self.reply(200, page.answer('info', {}))
            self.reply(404, dict(error=f"no page {self.path}: the page is at /"))

        def do_POST(self):
            route = routes.get(self.path)
            if route is None:
                return self.reply(404, dict(error=f"no API {self.path}: expected one of {', '.join(routes)}"))
            try:
                length = int(self.headers.get('Content-Length') or -1)
            except ValueError:
                length = -1
            if length < 0:
                return self.reply(411, dict(error='a request needs a Content-Length'))
            if length > MAX_BODY:
                self.close_connection = True  # the body is not read
                return self.reply(413, dict(error=f"the request is {length:,} bytes; the limit is {MAX_BODY:,}"))
            try:
                request = json.loads(self.rfile.read(length) or b'null')
            except (ValueError, UnicodeDecodeError) as e:
                return self.reply(400, dict(error=f"the request is not JSON ({e})"))
            if not isinstance(request, dict):
                return self.reply(400, dict(error='the request must be a JSON object'))
            try:
                return self.reply(200, page.answer(route, request))
            except BadRequest as e:
                return self.reply(400, dict(error=str(e)))

        def log_message(self, fmt, *args):  # one short line per request
            print(f"{self.address_string()} {fmt % args}", flush=True)

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    shown = 'localhost' if host in ('127.0.0.1', '') else host
    print(f"serving {info['title']} ({len(codec.classes)} classes, {paths[0]}, iteration {page.ck['iter_num']}) at "
          f"http://{shown}:{server.server_address[1]}/  (Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print('stopped')
    finally:
        server.server_close()


PAGE = r"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>tinyvlm</title>
<style>
 body { font: 15px/1.4 system-ui, sans-serif; margin: 0 auto; max-width: 1100px; padding: 12px; color: #222; }
 h1 { font-size: 22px; margin: 4px 0 12px; } h2 { font-size: 17px; margin: 0 0 8px; }
 section { border: 1px solid #ddd; border-radius: 8px; padding: 12px; margin-bottom: 14px; }
 .row { display: flex; gap: 18px; flex-wrap: wrap; align-items: flex-start; }
 canvas { border: 1px solid #888; touch-action: none; cursor: crosshair; background: #000; }
 img.px { image-rendering: pixelated; width: 112px; height: 112px; border: 1px solid #aaa; background: #000; }
 img.small { width: 84px; height: 84px; }
 .bar { display: flex; align-items: center; gap: 6px; margin: 2px 0; }
 .bar .name { width: 120px; text-align: right; overflow: hidden; white-space: nowrap; }
 .bar .fill { background: #4a7bd0; height: 14px; } .bar.top .fill { background: #d0662a; }
 .tok { font-family: ui-monospace, monospace; font-size: 11px; max-width: 230px; word-break: break-all; color: #555; }
 .cell { display: inline-flex; flex-direction: column; align-items: center; margin: 0 8px 8px 0; }
 .err { color: #b00; } label { margin-right: 10px; } input[type=number] { width: 64px; }
 button { padding: 4px 12px; }
</style></head><body>
<h1>tinyvlm: <span id="title"></span></h1>
<section><h2>Draw, and the model reads it</h2><div class="row">
 <div><canvas id="pad" width="280" height="280"></canvas><br>
  <button id="clear">clear</button> <label>pen <input id="pen" type="color" value="#ffffff"></label> <span id="readerr" class="err"></span></div>
 <div><div>what the model saw:</div><img id="seen" class="px" alt=""><div id="seentok" class="tok"></div></div>
 <div id="bars"></div></div></section>
<section><h2>Ask for a class, and the model draws it</h2>
 <label>class <select id="genclass"></select></label><label>images <input id="gen_n" type="number" min="1" max="64"></label>
 <label>temperature <input id="gen_t" type="number" step="0.1" min="0"></label>
 <label>guidance <input id="gen_g" type="number" step="0.5" min="0"></label> <button id="gen">draw</button>
 <span id="generr" class="err"></span><div id="gens" class="row" style="margin-top:10px"></div></section>
<section><h2>Cut an image, and the model completes it</h2>
 <label>from <select id="src"><option value="test">test image</option><option value="drawing">the drawing</option></select></label>
 <label>test image <input id="idx" type="number" min="0" value="0"></label><button id="rand">random</button>
 <label>keep <span id="keepunit">rows</span> <input id="keep" type="number" min="0"></label>
 <label>as <select id="compclass"><option value="">(no class: the model names it)</option></select></label>
 <label>completions <input id="comp_n" type="number" min="1" max="16" value="4"></label> <button id="comp">complete</button>
 <span id="comperr" class="err"></span><div id="comps" class="row" style="margin-top:10px"></div></section>
<script>
const $ = id => document.getElementById(id);
let info = null;
async function api(path, body) {
  const r = await fetch(path, body === undefined ? {} : {method: 'POST', headers: {'Content-Type': 'application/json'}, body: JSON.stringify(body)});
  const j = await r.json();
  if (!r.ok) throw new Error(j.error || r.statusText);
  return j;
}
function img(src, cls, title) { const i = document.createElement('img'); i.src = src; i.className = 'px ' + (cls || ''); if (title) i.title = title; return i; }
function cell(image, caption, tokens, cls) {
  const d = document.createElement('div'); d.className = 'cell'; d.appendChild(img(image, cls));
  if (caption) { const c = document.createElement('div'); c.textContent = caption; c.className = 'caption'; d.appendChild(c); }
  if (tokens) { const t = document.createElement('div'); t.textContent = tokens; t.className = 'tok'; d.appendChild(t); }
  return d;
}
// drawing
const pad = $('pad'), ctx = pad.getContext('2d');
function clearPad() { ctx.fillStyle = '#000'; ctx.fillRect(0, 0, pad.width, pad.height); $('bars').innerHTML = ''; $('seen').removeAttribute('src'); }
let drawing = false, last = null, dirty = false;
function at(e) { const r = pad.getBoundingClientRect(); return [(e.clientX - r.left) * pad.width / r.width, (e.clientY - r.top) * pad.height / r.height]; }
pad.addEventListener('pointerdown', e => { drawing = true; last = at(e); pad.setPointerCapture(e.pointerId); stroke(last); });
pad.addEventListener('pointermove', e => { if (drawing) stroke(at(e)); });
['pointerup', 'pointercancel'].forEach(k => pad.addEventListener(k, () => { if (drawing) { drawing = false; read(); } }));
function stroke(p) {
  ctx.strokeStyle = $('pen').value; ctx.lineWidth = 20; ctx.lineCap = 'round'; ctx.lineJoin = 'round';
  ctx.beginPath(); ctx.moveTo(last[0], last[1]); ctx.lineTo(p[0] + 0.01, p[1]); ctx.stroke(); last = p; dirty = true;
}
async function read() {
  $('readerr').textContent = '';
  try {
    const r = await api('/api/classify', {image: pad.toDataURL('image/png')});
    $('seen').src = r.seen; $('seentok').textContent = r.tokens;
    const bars = $('bars'); bars.innerHTML = '';
    r.classes.forEach((c, k) => {
      const b = document.createElement('div'); b.className = 'bar' + (c === r.label ? ' top' : '');
      b.innerHTML = '<span class="name"></span><span class="fill"></span><span class="p"></span>';
      b.querySelector('.name').textContent = c; b.querySelector('.fill').style.width = Math.round(200 * r.probs[k]) + 'px';
      b.querySelector('.p').textContent = r.probs[k].toFixed(3); bars.appendChild(b);
    });
  } catch (e) { $('readerr').textContent = e.message; }
}
$('clear').onclick = clearPad;
// generation
$('gen').onclick = async () => {
  $('generr').textContent = ''; $('gens').innerHTML = '';
  try {
    const r = await api('/api/generate', {label: $('genclass').value, num_samples: +$('gen_n').value,
                                          temperature: +$('gen_t').value, guidance: +$('gen_g').value});
    r.images.forEach((src, k) => $('gens').appendChild(cell(src, r.label, r.tokens[k])));
  } catch (e) { $('generr').textContent = e.message; }
};
// completion
$('rand').onclick = () => { $('idx').value = Math.floor(Math.random() * info.test_images); };
$('comp').onclick = async () => {
  $('comperr').textContent = ''; $('comps').innerHTML = '';
  const body = {keep: +$('keep').value, label: $('compclass').value, num_samples: +$('comp_n').value,
                temperature: +$('gen_t').value, guidance: +$('gen_g').value};
  if ($('src').value === 'test') body.index = +$('idx').value; else body.image = pad.toDataURL('image/png');
  try {
    const r = await api('/api/complete', body);
    $('comps').appendChild(cell(r.original, 'original')); $('comps').appendChild(cell(r.kept, 'kept'));
    r.completions.forEach(c => $('comps').appendChild(cell(c.image, c.name + ' ' + c.p.toFixed(2), c.tokens)));
  } catch (e) { $('comperr').textContent = e.message; }
};
(async () => {
  info = await api('/api/info');
  $('title').textContent = info.title + ', ' + info.classes.length + ' classes, iteration ' + info.iteration;
  info.classes.forEach(c => { for (const s of ['genclass', 'compclass']) { const o = document.createElement('option'); o.value = o.textContent = c; $(s).appendChild(o); } });
  $('gen_n').value = info.defaults.n; $('gen_t').value = info.defaults.temperature; $('gen_g').value = info.defaults.guidance;
  $('keep').value = info.defaults.keep; $('keep').max = info.rows; if (!info.grid) $('keepunit').textContent = 'tokens'; $('idx').max = info.test_images - 1;
  if (info.channels === 1) $('pen').parentElement.style.display = 'none';
  clearPad();
})();
</script></body></html>
"""


MODES = {'eval': evaluate, 'generate': generate, 'classify': classify, 'complete': complete, 'serve': serve}

if __name__ == '__main__':
    from configurator import configure
    configure(globals())
    device = pick_device(device)
    dtype = pick_dtype(device, dtype)
    torch.manual_seed(seed)
    paths = checkpoint_paths()
    data_dir = data_dir or trained_data_dir(paths[-1])
    meta = load_meta(data_dir)
    info = meta['dataset']
    codec = Codec.from_meta(meta)
    mirror = mirrored(meta)
    tok = check_tokenizer(meta, data_dir).to(device)
    MODES[mode]()
