"""
Use and evaluate a trained model. Three modes:

    python sample.py                                  # eval: every ckpt_{iter}.pt of the run in out_dir
    python sample.py --mode=generate --digits=0123456789 --num_samples=10   # label -> images
    python sample.py --mode=generate --digits=7 --png_dir=out/sevens --png_size=256   # ... as PNG files
    python sample.py --mode=classify --image=0-9      # image -> label: MNIST test images by index
    python sample.py --mode=classify --image=my_digit.png   # ... or an image file of your own

eval reads the label of all 10,000 MNIST test images from the prompt 'image:XXXXXXXX, number:' (the
most likely of the ten digits; an unsure reading is repeated on the image moved one pixel each way
and averaged, see views), and reports accuracy with its standard error sqrt(p(1-p)/n), the most
frequent confusions, a grid of generated images per checkpoint (samples_{iter}.png, one row a digit),
accuracy against iteration (accuracy.png) and all figures in out_dir/eval.json.
Generation is constrained by the sequence grammar: after 'number:7, image:' only image codes can be
drawn, so every generated sequence decodes to an image.
"""
import glob
import json
import math
import os
import re

import numpy as np
import torch

from model import (GPT, DigitCNN, GPTConfig, atomic_write, load_checkpoint, load_tokenizer, pick_device,
                   pick_dtype, save_checkpoint)
from prepare import DIGITS, Codec, check_data, load_meta, load_split, sha256_file, shifted
from vqvae import mnist_splits, save_image_grid

# -----------------------------------------------------------------------------
out_dir = 'out/mnist_vlm'   # the training run: its checkpoints, and where results are written
data_dir = 'data/mnist_vlm'
mode = 'eval'               # 'eval', 'generate' or 'classify'
ckpt = ''                   # a checkpoint file in out_dir; '' = every ckpt_{iter}.pt for eval, ckpt.pt otherwise
digits = DIGITS             # generate: the labels to draw
num_samples = 10            # generate and eval grids: images per label
temperature = 0.9           # 1.0 samples the model's distribution; 0 takes the most likely code
top_k = 0                   # 0 = all codes; else only the k most likely at each step
guidance = 1.5              # classifier-free guidance scale, against 'image:' with no label; 0 = none
                            # (5,000 samples, generation fidelity / Frechet distance: guidance 1.5, temperature
                            # 1: 0.983 / 15.4; 0.9: 0.990 / 17.4; guidance 2, temperature 0.9: 0.993 / 23.1; 1, 0.9: 0.980 / 13.5)
views = 9                   # classify and eval: images read with top probability < view_threshold are
view_threshold = 0.95       # read again moved one pixel each way, views in all (1 = no second look);
                            # chosen on val (10,000): 1 view 0.9862, 5 below 0.9 0.9905, 9 below 0.95 0.9911
image = ''                  # classify: test indices ('7', '0,5,9', '0-99') or an image file (PNG, JPEG)
save_npy = ''               # generate: also write the images (N, 28, 28) in [0, 1] here, labels beside
png_dir = ''                # generate: also write each image as its own PNG file in this folder ...
png_size = 28               # ... this many pixels square
batch_size = 250            # images per forward pass: reading 10,000 test images took 6.0-6.9 s at 250 against
                            # 10.4-12.0 s at 1,000 on 2 CPU cores (the activations stay in cache); generation the same
reference = 'out/reference_cnn.pt'   # eval: the reference digit classifier, trained here on first use
mnist_dir = ''              # eval: where MNIST comes from if data/mnist has no copy (see vqvae.py)
fidelity_samples = 1000     # eval: images generated per digit for fidelity and Frechet distance
seed = 1337
device = 'auto'
dtype = 'auto'              # the language model's weights: 'auto' = bfloat16 where native (model.native_bf16)
# -----------------------------------------------------------------------------


def load_model(path, meta, data_dir, device, dtype='float32'):
    """A trained GPT from a checkpoint of train.py, checked against the prepared data, its weights in
    dtype (bfloat16 on this 2-core CPU: labels read 1.45x and images drawn 1.2x as fast as float32,
    the same test accuracy)."""
    ck = load_checkpoint(path, 'language-model checkpoint', 'run train.py first')
    if not isinstance(ck, dict) or 'model_args' not in ck or 'data' not in ck:
        raise SystemExit(f"error: {path} is not a checkpoint written by train.py")
    check_data(ck, meta, path, data_dir)
    model = GPT(GPTConfig(**ck['model_args']))
    model.load_state_dict(ck['model'])
    return model.to(device=device, dtype=getattr(torch, dtype)).eval(), ck


def generate_images(model, codec, tok, labels, generator, temperature=1.0, top_k=0, batch_size=250,
                    use_cache=True, guidance=0.0):
    """One image per label: sample its codes after 'number:d, image:' (codes only), then decode."""
    device = next(model.parameters()).device
    prompts = codec.generation_prompts(labels, device)
    allowed = codec.mask(codes=True, device=device)
    codes = []
    for i in range(0, len(prompts), batch_size):
        batch = prompts[i:i + batch_size]
        out = model.generate(batch, codec.tokens_per_image, temperature=temperature, top_k=top_k or None,
                             allowed=allowed, generator=generator, use_cache=use_cache, guidance=guidance,
                             uncond=codec.image_prompts(len(batch), device) if guidance else None)
        codes.append(out[:, prompts.size(1):] - codec.code_offset)
    codes = torch.cat(codes)
    return tok.decode(codes, batch_size).cpu(), codes.cpu()


SHIFTS = ((1, 0), (-1, 0), (0, 1), (0, -1), (1, 1), (-1, -1), (1, -1), (-1, 1))  # (dx, dy) of the extra views


@torch.no_grad()
def read_labels(model, codec, tok, digit_ids, codes, images, views=1, threshold=0.9, batch_size=250):
    """Label probabilities (N, 10) from 'image:XXXX, number:' for images (N, 28, 28) with their codes.
    An image read with top probability below threshold is read views - 1 more times, moved one pixel
    each way (SHIFTS), and its log-probabilities averaged (test-time augmentation, as in Krizhevsky
    et al. 2012; the model trained on moved copies, prepare.augment). Only the unsure few get the
    second look: on a 700-iteration 4x4-code model 5 views for all read 0.9783 of MNIST test, for the
    10.4% under 0.9 0.9782, one view 0.9682; on the default model 9 views for the 6% under 0.95 read
    0.9911 of val against 0.9862 with one view."""
    device = digit_ids.device
    probs = model.next_token_probs(codec.classification_prompts(codes, device), digit_ids, batch_size)
    unsure = (probs.max(1).values < threshold).nonzero()[:, 0]
    if views > 1 and len(unsure):
        logp = probs[unsure].clamp_min(1e-12).log()
        for dx, dy in SHIFTS[:views - 1]:
            moved = shifted(images[unsure.to(images.device)], dx, dy).to(device)
            p = model.next_token_probs(codec.classification_prompts(tok.encode(moved, batch_size), device), digit_ids, batch_size)
            logp += p.clamp_min(1e-12).log()
        probs[unsure] = torch.softmax(logp / views, 1)
    return probs


def reference_cnn(path, mnist_dir, device, epochs=3, batch=128, seed=1337):
    """The reference classifier that scores images: loaded from path, or first trained there on all
    60,000 MNIST training images, each shifted at random by up to one pixel (Adam, lr 3e-3 with cosine
    decay, 3 epochs: 0.992 on MNIST test in 23 s on 2 CPU cores; 1e-3 gave 0.986, shifts of up to
    2 pixels 0.986), and saved with its MNIST test accuracy."""
    if os.path.isfile(path):
        ck = load_checkpoint(path, 'reference classifier', f'delete {path} to train it again')
        if not isinstance(ck, dict) or 'model' not in ck:
            raise SystemExit(f"error: {path} is not a reference classifier written by sample.py: delete it")
        cnn = DigitCNN()
        cnn.load_state_dict(ck['model'])
        return cnn.to(device).eval(), ck['test_accuracy']
    splits = mnist_splits(mnist_dir)
    x = torch.from_numpy(np.concatenate([splits['train'][0], splits['val'][0]])).to(device)
    y = torch.from_numpy(np.concatenate([splits['train'][1], splits['val'][1]])).to(device)
    g = torch.Generator(device).manual_seed(seed)
    torch.manual_seed(seed)
    cnn = DigitCNN().to(device)
    opt = torch.optim.Adam(cnn.parameters(), lr=1e-3)
    steps, ar = epochs * math.ceil(len(x) / batch), torch.arange(28, device=device)
    print(f"training the reference classifier {path} ({epochs} epochs of {len(x)} MNIST training images)", flush=True)
    for step in range(steps):
        idx = torch.randint(len(x), (batch,), device=device, generator=g)
        off = torch.randint(3, (2, batch, 1), device=device, generator=g)
        padded = torch.nn.functional.pad(x[idx], (1, 1, 1, 1))
        xb = padded[torch.arange(batch, device=device)[:, None, None], (off[0] + ar)[:, :, None], (off[1] + ar)[:, None, :]]
        for group in opt.param_groups:  # cosine decay to 0
            group['lr'] = 3e-3 * 0.5 * (1 + math.cos(math.pi * step / steps))
        loss = torch.nn.functional.cross_entropy(cnn(xb), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    cnn.eval()
    test_x, test_y = (torch.from_numpy(a).to(device) for a in splits['test'])
    acc = (classify_images(cnn, test_x).argmax(1) == test_y).float().mean().item()
    save_checkpoint({'model': cnn.state_dict(), 'test_accuracy': acc}, path)
    print(f"reference classifier: MNIST test accuracy {acc:.4f}; saved {path}")
    return cnn, acc


@torch.no_grad()
def classify_images(cnn, images, features=False, batch=2000):
    """The reference CNN's logits (N, 10), or with features=True its penultimate features (N, 128)."""
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


def read_user_image(path):
    """An image file as MNIST was made (LeCun et al. 1998): grey, light digit on black, cropped to the
    digit, fitted into a 20x20 box keeping its aspect, centred by centre of mass in 28x28."""
    from PIL import Image, UnidentifiedImageError
    try:
        with Image.open(path) as im:
            a = np.asarray(im.convert('L'), dtype=np.float32) / 255.0
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise SystemExit(f"error: cannot read image {path} ({type(e).__name__}): expected a PNG or JPEG file")
    if a.size == 0:
        raise SystemExit(f"error: image {path} is empty")
    border = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])
    if np.median(border) > 0.5:  # dark digit on light paper
        a = 1.0 - a
        border = 1.0 - border
    a = np.clip(a - np.median(border), 0, None)
    if a.max() < 0.1:
        raise SystemExit(f"error: image {path} is blank: expected a digit on a plain background")
    a /= a.max()
    ys, xs = np.nonzero(a > 0.1)
    a = a[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
    h, w = a.shape
    s = 20.0 / max(h, w)
    size = (max(1, round(w * s)), max(1, round(h * s)))
    a = np.asarray(Image.fromarray((a * 255).astype(np.uint8)).resize(size, Image.LANCZOS), dtype=np.float32) / 255.0
    out = np.zeros((28, 28), dtype=np.float32)
    total = a.sum()
    cy, cx = (np.arange(a.shape[0]) @ a.sum(1)) / total, (np.arange(a.shape[1]) @ a.sum(0)) / total
    top = int(np.clip(round(14 - cy), 0, 28 - a.shape[0]))
    left = int(np.clip(round(14 - cx), 0, 28 - a.shape[1]))
    out[top:top + a.shape[0], left:left + a.shape[1]] = a
    return out


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


def plot_accuracy(results, path):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    it = [r['iter'] for r in results]
    ax.errorbar(it, [r['classification_accuracy'] for r in results],
                yerr=[r['classification_stderr'] for r in results], marker='o', capsize=3)
    ax.set_xlabel('iteration')
    ax.set_ylabel('test accuracy, image -> label (\u00b11 s.e.)')
    ax.set_title(f"{out_dir}: {results[-1]['classification_accuracy']:.4f} at {it[-1]}")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format='png', dpi=100))
    plt.close(fig)


if __name__ == '__main__':
    from configurator import configure
    configure(globals())
    if mode not in ('eval', 'generate', 'classify'):
        raise SystemExit(f"error: mode must be 'eval', 'generate' or 'classify', got {mode!r}")
    if not 1 <= views <= len(SHIFTS) + 1:
        raise SystemExit(f"error: views must be 1 to {len(SHIFTS) + 1}, got {views}")
    device = pick_device(device)
    dtype = pick_dtype(device, dtype)
    torch.manual_seed(seed)
    meta = load_meta(data_dir)
    codec = Codec.from_meta(meta)
    digit_ids = torch.tensor(codec.encode(DIGITS), device=device)
    if not os.path.isfile(meta['tokenizer']) or sha256_file(meta['tokenizer']) != meta['tokenizer_sha256']:
        raise SystemExit(f"error: the tokenizer {meta['tokenizer']} that prepared {data_dir} is missing or "
                         f"has changed since: run prepare.py again (and train on the new data)")
    tok, _ = load_tokenizer(meta['tokenizer'])
    tok.to(device)
    paths = checkpoint_paths()

    if mode == 'generate':
        labels = [d for d in digits for _ in range(num_samples)]
        model, ck = load_model(paths[0], meta, data_dir, device, dtype)
        images, codes = generate_images(model, codec, tok, labels, torch.Generator(device).manual_seed(seed),
                                        temperature, top_k, batch_size, guidance=guidance)
        grid = os.path.join(out_dir, 'generate.png')
        save_image_grid(images, grid, num_samples)
        print(f"{len(images)} images for labels {digits!r} from {paths[0]} (iteration {ck['iter_num']}): {grid}")
        for d, c in list(zip(labels, codes))[:num_samples * 2]:
            print(codec.generation(d, c.tolist()))
        if png_dir:
            from PIL import Image
            for i, (d, im) in enumerate(zip(labels, images.numpy())):
                pil = Image.fromarray((im * 255).round().astype(np.uint8)).resize((png_size, png_size), Image.BICUBIC)
                atomic_write(os.path.join(png_dir, f"{d}_{i % num_samples:04d}.png"), lambda tmp: pil.save(tmp, format='PNG'))
            print(f"saved {len(images)} PNG files of {png_size}x{png_size} in {png_dir}")
        if save_npy:
            atomic_write(save_npy, lambda tmp: np.save(tmp, images.numpy().astype(np.float32)))
            lpath = save_npy[:-4] + '_labels.npy' if save_npy.endswith('.npy') else save_npy + '_labels.npy'
            atomic_write(lpath, lambda tmp: np.save(tmp, np.array([int(d) for d in labels], dtype=np.int64)))
            print(f"saved {save_npy} and {lpath}")

    elif mode == 'classify':
        model, ck = load_model(paths[0], meta, data_dir, device, dtype)
        if not image:
            raise SystemExit("error: classify needs --image=INDICES (MNIST test) or --image=FILE")
        if os.path.exists(image) or not re.fullmatch(r'[\d,\s-]+', image):
            if not os.path.isfile(image):
                raise SystemExit(f"error: image file {image} not found")
            x = torch.from_numpy(read_user_image(image))[None]
            seen = os.path.join(out_dir, 'classify_input.png')
            save_image_grid(x, seen, 1, scale=1, pad=0)
            codes, truth, names = tok.encode(x.to(device)).cpu(), [None], [image]
            print(f"the 28x28 image the model saw: {seen}")
        else:
            _, test_codes, test_labels = load_split(data_dir, 'test', meta)
            idx = parse_indices(image, len(test_codes))
            x = torch.from_numpy(mnist_splits(mnist_dir)['test'][0][idx]) if views > 1 else None
            codes, truth, names = test_codes[idx], test_labels[idx].tolist(), [f"test[{i}]" for i in idx]
        probs = read_labels(model, codec, tok, digit_ids, codes, x, views, view_threshold, batch_size).cpu()
        for name, t, p in zip(names, truth, probs):
            print(f"{name}: {int(p.argmax())}" + ('' if t is None else f" (true {t})") + "  p: "
                  + ' '.join(f"{d}:{q:.3f}" for d, q in zip(DIGITS, p.tolist())))

    else:  # eval
        _, test_codes, test_labels = load_split(data_dir, 'test', meta)
        test_images = torch.from_numpy(mnist_splits(mnist_dir)['test'][0]).to(device)
        test_labels = test_labels.to(device)
        grid_labels = [d for d in DIGITS for _ in range(num_samples)]
        results = []
        for path in paths:
            model, ck = load_model(path, meta, data_dir, device, dtype)
            pred = read_labels(model, codec, tok, digit_ids, test_codes, test_images, views, view_threshold,
                               batch_size).argmax(1)
            n = len(test_labels)
            acc = (pred == test_labels).float().mean().item()
            confusion = torch.zeros(10, 10, dtype=torch.long)
            confusion.index_put_((test_labels.cpu(), pred.cpu()), torch.ones(n, dtype=torch.long), accumulate=True)
            off = confusion.clone().fill_diagonal_(0)
            top = torch.argsort(off.flatten(), descending=True)[:5]
            pairs = [dict(true=int(i // 10), predicted=int(i % 10), count=int(off.flatten()[i])) for i in top if off.flatten()[i] > 0]
            images, codes = generate_images(model, codec, tok, grid_labels, torch.Generator(device).manual_seed(seed),
                                            temperature, top_k, batch_size, guidance=guidance)
            valid = sum(codec.is_generation(codec.generation(d, c.tolist())) for d, c in zip(grid_labels, codes))
            grid = os.path.join(out_dir, f"samples_{ck['iter_num']}.png")
            save_image_grid(images, grid, num_samples)
            r = dict(iter=ck['iter_num'], checkpoint=os.path.basename(path), classification_accuracy=acc,
                     classification_stderr=math.sqrt(acc * (1 - acc) / n), n_test=n,
                     views=views, view_threshold=view_threshold,
                     confusion_pairs=pairs, confusion_matrix=confusion.tolist(),
                     val_loss=ck.get('val_loss'), samples=os.path.basename(grid),
                     generation_validity=valid / len(grid_labels),
                     parameters=model.get_num_params())
            results.append(r)
            print(f"{r['checkpoint']} (iteration {r['iter']}): test accuracy {acc:.4f} \u00b1 "
                  f"{r['classification_stderr']:.4f}; most confused (true->predicted): "
                  + ', '.join(f"{p['true']}->{p['predicted']} {p['count']}" for p in pairs[:3]))
        results.sort(key=lambda r: r['iter'])

        # quality, scored by the reference CNN: the tokenizer's reconstructions of the test set, and
        # fidelity_samples generated images per digit from the last checkpoint
        cnn, ref_acc = reference_cnn(reference, mnist_dir, device)
        real = classify_images(cnn, test_images, features=True).cpu().numpy()
        recon = tok.decode(test_codes.to(device), batch_size)
        recon_fidelity = (classify_images(cnn, recon).argmax(1) == test_labels).float().mean().item()
        recon_fd = frechet_distance(classify_images(cnn, recon, features=True).cpu().numpy(), real)
        gen_labels = [d for d in DIGITS for _ in range(fidelity_samples)]
        model, ck = load_model(paths[-1], meta, data_dir, device, dtype)
        images, codes = generate_images(model, codec, tok, gen_labels, torch.Generator(device).manual_seed(seed + 1),
                                        temperature, top_k, batch_size, guidance=guidance)
        images = images.to(device)
        read = classify_images(cnn, images).argmax(1).cpu()
        want = torch.tensor([int(d) for d in gen_labels])
        valid = sum(codec.is_generation(codec.generation(d, c.tolist())) for d, c in zip(gen_labels, codes))
        quality = dict(iter=ck['iter_num'], reference_cnn=reference, reference_test_accuracy=ref_acc,
                       reconstruction_fidelity=recon_fidelity, reconstruction_frechet=recon_fd,
                       generated=len(gen_labels), generation_validity=valid / len(gen_labels),
                       generation_fidelity=(read == want).float().mean().item(),
                       generation_fidelity_per_digit=[(read[want == d] == d).float().mean().item() for d in range(10)],
                       generation_frechet=frechet_distance(classify_images(cnn, images, features=True).cpu().numpy(), real),
                       distinct_generations=len(set(map(tuple, codes.tolist()))),
                       temperature=temperature, top_k=top_k, guidance=guidance)
        print(f"quality (reference CNN, {ref_acc:.4f} on MNIST test): reconstructions read correctly "
              f"{recon_fidelity:.4f}, Frechet distance {recon_fd:.2f}; {len(gen_labels)} generated at iteration "
              f"{ck['iter_num']}: fidelity {quality['generation_fidelity']:.4f}, Frechet distance "
              f"{quality['generation_frechet']:.2f}, validity {quality['generation_validity']:.4f}, "
              f"{quality['distinct_generations']} distinct")
        report = dict(out_dir=out_dir, data_dir=data_dir, tokenizer=meta['tokenizer'],
                      tokens_per_image=codec.tokens_per_image, codebook_size=codec.codebook_size,
                      quality=quality, checkpoints=results)
        atomic_write(os.path.join(out_dir, 'eval.json'), json.dumps(report, indent=1) + '\n')
        plot_accuracy(results, os.path.join(out_dir, 'accuracy.png'))
        print(f"wrote {out_dir}/eval.json, accuracy.png and samples_{{iter}}.png")
