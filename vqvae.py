"""
Train the image tokenizer, a VQ-VAE (van den Oord et al. 2017, https://arxiv.org/abs/1711.00937), on
MNIST train[:50000] with early stopping on train[50000:], and report it on MNIST test.

    python vqvae.py                            # the default: a 7x7 grid of codes from 125 (FSQ 5,5,5)
    python vqvae.py --mnist_dir=../shared/mnist   # no network: take MNIST from a local folder
    python vqvae.py config/vqvae_seed.py       # the published MLP tokenizer: 8 tokens from 26 codes

FSQ rather than a learned codebook for the conv tokenizer: it has no codebook to collapse and needs no
auxiliary losses. (A k-means-initialised learned codebook on the conv encoder was not compared.)
Why a 7x7 grid of 125 codes with binary cross-entropy (measured on 2 CPU cores, 4 epochs, bfloat16;
'read' is the share of MNIST test reconstructions the reference CNN of sample.py reads correctly, FD
their Frechet distance to the real test images in its features):

    grid  levels (codes)      loss  PSNR      read    FD
    4x4   8,5,5,5 (1000)      mse   20.5 dB   0.9834  23.7   (the previous default; 8 epochs: 21.3 dB, 0.9846)
    4x4   8,8,8,8 (4096)      mse   20.4 dB   0.9821  28.7   (these three with cosine decay, which alone cost 0.6 dB:
    4x4   7,5,5,5,5 (4375)    mse   20.3 dB   0.9813  25.9    19.9 dB, 0.9779 on 8,5,5,5; 96 channels: 21.0 dB, 0.9819)
    4x4   8,5,5,5 (1000)      bce   20.5 dB   0.9777  10.9   (+2 residual blocks each side: 21.2 dB, 0.9824, FD 4.5)
    7x7   5,5 (25)            bce   22.7 dB   0.9879   2.6
    7x7   4,4,4 (64)          bce   23.6 dB   0.9890   1.4
    7x7   5,5,5 (125)         bce   24.1 dB   0.9894   0.8   (the default; 8 epochs: 24.9 dB, 0.9901, 102 s)
    7x7   8,5,5,5 (1000)      bce   24.5 dB   0.9889   1.4

A 4x4 grid tops out near 0.983 however wide its codebook; 49 tokens keep the strokes that tell a 4
from a 9. The language model pays twice the tokens per sequence, but at equal training time it read
as well from 7x7 codes as from 4x4 (val accuracy 0.9806 at 1,200 iterations against 0.9803 at 2,400).
Binary cross-entropy needs two things: the decoder's output bias starts at the mean pixel's logit, and
the learning rate warms up over 200 steps. Without them every image got the same code in two of four
settings (4x4 8,5,5,5 and 7x7 5,5), and the others trained worse (7x7 5,5,5: 22.2 dB, 0.9862; 4,4,4:
21.7 dB, 0.9843).

This file also holds the MNIST loader (load_mnist, mnist_splits) and the image-grid writer that the
other scripts import.
"""
import gzip
import hashlib
import json
import math
import os
import shutil
import time
import urllib.request
import zlib
from contextlib import nullcontext

import numpy as np
import torch
from torch.nn import functional as F

from model import VQVAE, atomic_write, pick_device, pick_dtype, save_checkpoint

# -----------------------------------------------------------------------------
# default config values: a convolutional tokenizer with finite scalar quantisation (FSQ)
out_dir = 'out/vqvae'      # the checkpoint (ckpt.pt), metrics.json and reconstructions.png go here
mnist_dir = ''             # a folder holding the four MNIST .gz files; '' = download from the mirrors
kind = 'conv'              # 'conv': a grid x grid map of codes; 'mlp': the published 784 -> hidden -> latent_dim
quantizer = 'fsq'          # 'fsq': finite scalar quantisation with levels; 'vq': a learned codebook
levels = '5,5,5'           # fsq: values per latent channel; the codebook is their product (125)
grid = 7                   # conv: 7 (49 tokens per image) or 4 (16)
hidden = 64                # conv: channels; mlp: hidden units
latent_dim = 32            # vq: mlp: the whole latent, cut into tokens_per_image chunks; conv: per cell
tokens_per_image = 8       # mlp only (conv has grid * grid)
codebook_size = 26         # vq only: 26 or fewer codes become the letters A..Z
beta = 0.25                # vq only: commitment cost
loss = 'bce'               # 'bce': pixels as Bernoulli logits (sharper); 'mse': squared error (the published MLP's)
learning_rate = 1e-3       # Adam
warmup_iters = 200         # linear learning-rate warm-up (bce without it: one code for every image, see above)
batch_size = 128
max_epochs = 4
patience = 5               # early stopping: epochs without a better validation loss
kmeans_samples = 10000     # vq: encoder outputs of this many training images initialise the codebook
seed = 1337
device = 'auto'            # 'auto' picks cuda, then mps, then cpu
dtype = 'auto'             # training: bfloat16 autocast where native (model.native_bf16), else float32
# -----------------------------------------------------------------------------

# MNIST (Y. LeCun, C. Cortes, C. J. C. Burges). The SHA-256 are of the decompressed IDX files, which
# are the same for every faithful copy whatever its gzip compression.
MNIST_FILES = {
    'train-images-idx3-ubyte': 'ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db',
    'train-labels-idx1-ubyte': '65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5',
    't10k-images-idx3-ubyte': '0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7',
    't10k-labels-idx1-ubyte': 'ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2',
}
MNIST_MIRRORS = [
    'https://ossci-datasets.s3.amazonaws.com/mnist/',
    'https://storage.googleapis.com/cvdf-datasets/mnist/',
    'http://yann.lecun.com/exdb/mnist/',
]
MNIST_CACHE = os.path.join('data', 'mnist')
N_TRAIN = 50000  # train[:50000] trains, train[50000:] validates, as published


def read_idx(path, sha256=None):
    """Read one gzipped IDX file into a numpy array (uint8 data only, as MNIST has). With sha256,
    return None if the file does not decompress or its bytes do not match it (a bad download)."""
    try:
        with gzip.open(path, 'rb') as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as e:
        if sha256 is not None:
            return None
        raise SystemExit(f"error: {path} is not a complete gzip file ({type(e).__name__}: {e}); "
                         f"expected a gzipped MNIST IDX file")
    if sha256 is not None and hashlib.sha256(raw).hexdigest() != sha256:
        return None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise SystemExit(f"error: {path} is not an IDX file of unsigned bytes (expected magic 0x0000080N)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise SystemExit(f"error: {path} is truncated: its IDX header needs {header} bytes, has {len(raw)}")
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], 'big') for i in range(ndim)]
    size = int(np.prod(dims)) if dims else 0
    if len(raw) != header + size:
        raise SystemExit(f"error: {path} holds {len(raw) - header} data bytes, expected {size} for shape "
                         f"{tuple(dims)}: the file is truncated or corrupted")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _fetch(name, mnist_dir, dest):
    """Put NAME.gz at dest: copied from mnist_dir when given, else downloaded from the mirrors."""
    if mnist_dir:
        src = os.path.join(mnist_dir, name + '.gz')
        if not os.path.isfile(src):
            raise SystemExit(f"error: {src} not found: mnist_dir must hold the four MNIST files "
                             f"({', '.join(n + '.gz' for n in MNIST_FILES)})")
        atomic_write(dest, lambda tmp: shutil.copyfile(src, tmp))
        return
    errors = []
    for mirror in MNIST_MIRRORS:
        url = mirror + name + '.gz'
        try:
            print(f"downloading {url}")
            with urllib.request.urlopen(url, timeout=30) as r:
                data = r.read()
            atomic_write(dest, data)
            return
        except Exception as e:  # any network failure: try the next mirror
            errors.append(f"{mirror}: {type(e).__name__}")
    raise SystemExit(f"error: MNIST file {name}.gz is not in {MNIST_CACHE} and could not be downloaded "
                     f"({'; '.join(errors)}); with no network, pass --mnist_dir=DIR, a folder with "
                     f"the four MNIST .gz files")


def load_mnist(mnist_dir=''):
    """The four MNIST arrays, from the cache data/mnist/ (filled from mnist_dir or the mirrors on
    first use). Every file is checked against its SHA-256; a bad one is removed and fetched once more.
    Returns dict of uint8 arrays: train_images (60000, 28, 28), train_labels, test_images, test_labels."""
    out = {}
    for name, sha in MNIST_FILES.items():
        path = os.path.join(MNIST_CACHE, name + '.gz')
        for attempt in range(2):
            if not os.path.isfile(path):
                _fetch(name, mnist_dir, path)
            arr = read_idx(path, sha)
            if arr is not None:
                break
            os.remove(path)
            print(f"{path} is corrupted (SHA-256 or gzip check failed): removed" + (", fetching it again" if attempt == 0 else ''))
        else:
            raise SystemExit(f"error: {name}.gz from {mnist_dir or 'the mirrors'} does not match the "
                             f"SHA-256 of MNIST ({sha[:16]}...): the file is corrupted")
        out[('train_' if name.startswith('train') else 'test_') + name.split('-')[1]] = arr
    return out


def mnist_splits(mnist_dir=''):
    """{'train', 'val', 'test'} -> (images float32 (N, 28, 28) in [0, 1], labels int64 (N,))."""
    m = load_mnist(mnist_dir)
    to = lambda im, lb: (im.astype(np.float32) / 255.0, lb.astype(np.int64))
    return {'train': to(m['train_images'][:N_TRAIN], m['train_labels'][:N_TRAIN]),
            'val': to(m['train_images'][N_TRAIN:], m['train_labels'][N_TRAIN:]),
            'test': to(m['test_images'], m['test_labels'])}


def save_image_grid(images, path, nrow, scale=2, pad=2):
    """images (N, H, W) floats in [0, 1] (numpy or torch) -> one PNG, nrow images per row, white on black."""
    from PIL import Image
    images = np.clip(np.asarray(images, dtype=np.float32), 0, 1)
    n, h, w = images.shape
    rows = (n + nrow - 1) // nrow
    grid = np.full((rows * (h + pad) + pad, nrow * (w + pad) + pad), 0.5, dtype=np.float32)
    for i in range(n):
        r, c = divmod(i, nrow)
        grid[pad + r * (h + pad): pad + r * (h + pad) + h, pad + c * (w + pad): pad + c * (w + pad) + w] = images[i]
    img = Image.fromarray((grid * 255).round().astype(np.uint8)).resize(
        (grid.shape[1] * scale, grid.shape[0] * scale), Image.NEAREST)
    atomic_write(path, lambda tmp: img.save(tmp, format='PNG'))


@torch.no_grad()
def tokenizer_metrics(tok, images):
    """Reconstruction MSE / PSNR and codebook usage (perplexity, dead codes) over images (N, H, W)."""
    tok.eval()
    codes = tok.encode(images)
    mse = F.mse_loss(tok.decode(codes), images).item()
    counts = torch.bincount(codes.flatten().cpu(), minlength=tok.codebook_size).float()
    p = counts / counts.sum()
    return dict(mse=mse, psnr=float(10 * np.log10(1.0 / mse)),
                perplexity=float(torch.exp(-(p[p > 0] * p[p > 0].log()).sum())),
                codes_used=int((counts > 0).sum()), dead_codes=int((counts == 0).sum()))


if __name__ == '__main__':
    from configurator import configure
    config = configure(globals())
    device = pick_device(device)
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    t0 = time.time()
    data = {k: torch.from_numpy(v[0]).to(device) for k, v in mnist_splits(mnist_dir).items()}
    train, val, test = data['train'], data['val'], data['test']

    try:
        levels_ = tuple(int(v) for v in str(levels).split(','))
    except ValueError:
        raise SystemExit(f"error: levels must be integers separated by commas, like 8,5,5,5; got {levels!r}")
    tok = VQVAE(kind=kind, quantizer=quantizer, hidden=hidden, latent_dim=latent_dim, tokens_per_image=tokens_per_image,
                codebook_size=codebook_size, beta=beta, levels=levels_, grid=grid, loss=loss).to(device)
    if loss == 'bce':  # start from the mean image's brightness, not from grey, so the first steps do not
        with torch.no_grad():  # push every latent the same way (without this and the warm-up: one code for all)
            mean = train.mean().item()
            tok.decoder[-1].bias.fill_(math.log(mean / (1 - mean)))
    if quantizer == 'vq':
        with torch.no_grad():  # k-means initialisation of the codebook on the untrained encoder's outputs
            sample = train[torch.randperm(len(train), generator=g)[:kmeans_samples].to(device)]
            z = tok.encode_latents(sample)
            tok.quantizer.init_kmeans(z.reshape(-1, z.size(-1)).cpu(), generator=g)
    print(f"{kind} tokenizer, {quantizer}: {tok.tokens_per_image} tokens per image from {tok.codebook_size} codes, "
          f"{sum(p.numel() for p in tok.parameters()):,} parameters", flush=True)
    optimizer = torch.optim.Adam(tok.parameters(), lr=learning_rate)
    dtype = pick_dtype(device, dtype)
    ctx = nullcontext() if dtype == 'float32' else torch.autocast(device.split(':')[0], dtype=getattr(torch, dtype))

    @torch.no_grad()
    def val_loss():
        tok.eval()
        with ctx:
            vl = sum(tok(val[i:i + 2000])[2].item() * len(val[i:i + 2000]) for i in range(0, len(val), 2000)) / len(val)
        tok.train()
        return vl

    best, best_state, bad_epochs, step = float('inf'), None, 0, 0
    for epoch in range(max_epochs):
        tok.train()
        perm = torch.randperm(len(train), generator=g).to(device)
        for i in range(0, len(train), batch_size):
            for group in optimizer.param_groups:
                group['lr'] = learning_rate * min(1.0, (step + 1) / (warmup_iters + 1))
            with ctx:
                _, _, batch_loss = tok(train[perm[i:i + batch_size]])
            optimizer.zero_grad(set_to_none=True)
            batch_loss.backward()
            optimizer.step()
            step += 1
        vl = val_loss()
        if vl < best - 1e-6:
            best, bad_epochs = vl, 0
            best_state = {k: v.detach().clone() for k, v in tok.state_dict().items()}
        else:
            bad_epochs += 1
        print(f"epoch {epoch + 1}: train loss {batch_loss.item():.4f}, val loss {vl:.4f}"
              f"{'' if bad_epochs else ' (best)'} [{time.time() - t0:.0f}s]", flush=True)
        if bad_epochs >= patience:
            print(f"early stop: no better validation loss for {patience} epochs")
            break
    tok.load_state_dict(best_state)
    tok.eval()

    metrics = dict(test=tokenizer_metrics(tok, test), train=tokenizer_metrics(tok, train),
                   epochs=epoch + 1, best_val_loss=best, train_seconds=time.time() - t0)
    m = metrics['test']
    print(f"test reconstruction MSE {m['mse']:.5f}, PSNR {m['psnr']:.2f} dB; codebook perplexity "
          f"{m['perplexity']:.1f} of {tok.codebook_size}, dead codes on train {metrics['train']['dead_codes']}")
    ckpt_path = os.path.join(out_dir, 'ckpt.pt')
    save_checkpoint({'model': tok.state_dict(), 'model_args': tok.model_args, 'config': config,
                     'metrics': metrics}, ckpt_path)
    atomic_write(os.path.join(out_dir, 'metrics.json'), json.dumps(metrics, indent=2) + '\n')
    x = test[:16]
    save_image_grid(torch.cat([x, tok.decode(tok.encode(x))]).cpu(), os.path.join(out_dir, 'reconstructions.png'), 16)
    print(f"saved {ckpt_path} and {out_dir}/reconstructions.png (originals over reconstructions)")
