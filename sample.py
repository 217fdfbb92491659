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

from common import (atomic_write, check_tokenizer, load_checkpoint, load_images, load_meta, load_model, load_split,
                    pick_device, pick_dtype, save_checkpoint, write_json)
from common import save_npy as write_npy
from dataset import read_image_file, save_image_grid, save_png, shifted
from model import ImageCNN
from prepare import Codec

# -----------------------------------------------------------------------------
out_dir = 'out/vlm'         # the training run: its checkpoints, and where results are written
data_dir = ''               # the prepared data; '' = the data_dir the checkpoint was trained on
mode = 'eval'               # 'eval', 'generate' or 'classify'
ckpt = ''                   # a checkpoint file in out_dir; '' = every ckpt_{iter}.pt for eval, ckpt.pt otherwise
labels = ''                 # generate: class names or numbers, comma-separated ('' = every class; MNIST: also '0123')
num_samples = 10            # generate and eval grids: images per class
temperature = 0.9           # 1.0 samples the model's distribution; 0 takes the most likely code
top_k = 0                   # 0 = all codes; else only the k most likely at each step
guidance = 1.5              # classifier-free guidance scale, against 'image:' with no class; 0 = none
views = 9                   # classify and eval: images read with top probability < view_threshold are read
view_threshold = 0.95       # again moved one pixel each way, views readings in all (1 = no second look)
image = ''                  # classify: test indices ('7', '0,5,9', '0-99') or an image file (PNG, JPEG, ...)
save_npy = ''               # generate: also write the images (N, C, S, S) in [0, 1] here, labels beside
png_dir = ''                # generate: also write each image as its own PNG file in this folder ...
png_size = 0                # ... this many pixels square (0 = the data set's image size)
batch_size = 250            # images per forward pass (a CPU reads small batches faster: they stay in cache)
reference = ''              # eval: the reference classifier; '' = out/reference_NAME.pt, trained there on first use
fidelity_samples = 1000     # eval: images generated per class for fidelity and Frechet distance
seed = 1337
device = 'auto'
dtype = 'auto'              # the language model's weights: 'auto' = bfloat16 where native (common.native_bf16)
# -----------------------------------------------------------------------------
SHIFTS = ((1, 0), (-1, 0), (0, 1), (0, -1), (1, 1), (-1, -1), (1, -1), (-1, 1))  # (dx, dy) of the extra views


def generate_images(model, codec, tok, labels, generator, temperature=1.0, top_k=0, batch_size=250, guidance=0.0):
    """One image per label: sample its codes after 'number:7, image:' (codes only), then decode.
    Labels whose prompts are equally long are drawn together, batch_size at a time.
    -> images (N, C, S, S) on the CPU, codes (N, tokens_per_image)."""
    device = next(model.parameters()).device
    allowed = codec.code_mask(device)
    length = [len(codec.prefix('generation', 'image', y)) for y in labels]
    codes, i = [], 0
    while i < len(labels):
        j = i + 1
        while j < len(labels) and j - i < batch_size and length[j] == length[i]:
            j += 1
        prompts = codec.prompts('generation', 'image', labels=labels[i:j], device=device)
        uncond = codec.prompts('classification', 'image', labels=[None] * (j - i), device=device) if guidance else None
        out = model.generate(prompts, codec.tokens_per_image, temperature, top_k or None, allowed, generator,
                             guidance, uncond)
        codes.append(out[:, prompts.size(1):] - codec.code_offset)
        i = j
    codes = torch.cat(codes)
    return tok.decode(codes, batch_size).cpu(), codes.cpu()


@torch.no_grad()
def read_labels(model, codec, tok, codes, images, views=1, threshold=0.9, batch_size=250):
    """Class probabilities (N, K) from 'image:XXXX, number:' for images (N, C, S, S) with their codes,
    scored over the class names only (GPT.choice_probs). An image read with top probability below
    threshold is read views - 1 more times, moved one pixel each way (SHIFTS), and its
    log-probabilities averaged (test-time augmentation, as in Krizhevsky et al. 2012; the model
    trained on moved copies, prepare.augment): only the unsure few get the second look."""
    device = next(model.parameters()).device
    read = lambda c: model.choice_probs(codec.prompts('classification', 'label', codes=c, device=device),
                                        codec.choices, batch_size)
    probs = read(codes)
    unsure = (probs.max(1).values < threshold).nonzero()[:, 0]
    if views > 1 and len(unsure):
        logp = probs[unsure].clamp_min(1e-12).log()
        for dx, dy in SHIFTS[:views - 1]:
            moved = shifted(images[unsure.to(images.device)], dx, dy).to(device)
            logp += read(tok.encode(moved, batch_size)).clamp_min(1e-12).log()
        probs[unsure] = torch.softmax(logp / views, 1)
    return probs


def reference_classifier(path, meta, data_dir, device, epochs=3, batch=128, seed=1337):
    """The reference classifier that scores images, for this data set: loaded from path, or first
    trained there on its training and validation images, each shifted at random by up to one pixel
    (Adam, lr 3e-3 with cosine decay), and saved with its test accuracy and the fingerprint of the
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
    cnn = ImageCNN(**args).to(device)
    opt = torch.optim.Adam(cnn.parameters(), lr=1e-3)
    steps = epochs * math.ceil(len(x) / batch)
    print(f"training the reference classifier {path} ({epochs} epochs of {len(x):,} {info['title']} training images)",
          flush=True)
    for step in range(steps):
        idx = torch.randint(len(x), (batch,), device=device, generator=g)
        off = torch.randint(3, (2, batch), device=device, generator=g)
        xb = shifted(x[idx], 1 - off[1], 1 - off[0])
        for group in opt.param_groups:  # cosine decay to 0
            group['lr'] = 3e-3 * 0.5 * (1 + math.cos(math.pi * step / steps))
        loss = torch.nn.functional.cross_entropy(cnn(xb), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
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
    if not image:
        raise SystemExit("error: classify needs --image=INDICES (test images) or --image=FILE")
    if os.path.exists(image) or not re.fullmatch(r'[\d,\s-]+', image):
        x = torch.from_numpy(read_image_file(image, meta['dataset']))[None]
        seen = os.path.join(out_dir, 'classify_input.png')
        save_png(x[0], seen)
        codes, truth, names = tok.encode(x.to(device)).cpu(), [None], [image]
        print(f"the {x.size(-1)}x{x.size(-1)} image the model saw: {seen}")
    else:
        _, test_codes, test_labels, _ = load_split(data_dir, 'test', meta)
        idx = parse_indices(image, len(test_codes))
        x = load_images(data_dir, 'test', meta)[0][idx]
        codes, truth, names = test_codes[idx], test_labels[idx].tolist(), [f"test[{i}]" for i in idx]
    probs = read_labels(model, codec, tok, codes, x.to(device), views, view_threshold, batch_size).cpu()
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
        pred = read_labels(model, codec, tok, test_codes, test_images, views, view_threshold, batch_size).argmax(1)
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
    cnn, ref_acc = reference_classifier(ref_path, meta, data_dir, device)
    real = classify_images(cnn, test_images, features=True).cpu().numpy()
    recon = tok.decode(test_codes.to(device), batch_size)
    recon_fidelity = (classify_images(cnn, recon).argmax(1) == test_labels).float().mean().item()
    recon_fd = frechet_distance(classify_images(cnn, recon, features=True).cpu().numpy(), real)
    gen_labels = [y for y in range(K) for _ in range(fidelity_samples)]
    model, ck = load_model(paths[-1], meta, data_dir, device, dtype)
    images, codes = generate_images(model, codec, tok, gen_labels, torch.Generator(device).manual_seed(seed + 1),
                                    temperature, top_k, batch_size, guidance)
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


MODES = {'eval': evaluate, 'generate': generate, 'classify': classify}

if __name__ == '__main__':
    from configurator import configure
    configure(globals())
    if mode not in MODES:
        raise SystemExit(f"error: mode must be {', '.join(repr(m) for m in MODES)}, got {mode!r}")
    if not 1 <= views <= len(SHIFTS) + 1:
        raise SystemExit(f"error: views must be 1 to {len(SHIFTS) + 1}, got {views}")
    device = pick_device(device)
    dtype = pick_dtype(device, dtype)
    torch.manual_seed(seed)
    paths = checkpoint_paths()
    data_dir = data_dir or trained_data_dir(paths[-1])
    meta = load_meta(data_dir)
    info = meta['dataset']
    codec = Codec.from_meta(meta)
    tok = check_tokenizer(meta, data_dir).to(device)
    MODES[mode]()
