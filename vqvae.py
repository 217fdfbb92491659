"""
Train the image tokenizer, a VQ-VAE (van den Oord et al. 2017, https://arxiv.org/abs/1711.00937), on a
data set's training split with early stopping on its validation split, and report it on its test split.

    python vqvae.py                              # MNIST: a 7x7 grid of codes from 125 (FSQ 5,5,5)
    python vqvae.py --idx_dir=../shared/mnist    # no network: take the IDX files from a local folder
    python vqvae.py --dataset=fashion --idx_dir=../shared/fashion-mnist
    python vqvae.py --dataset=path/to/my_images  # a folder of class folders (see tinyvlm/datasets.py); for colour
                                                 # drawings in one ink on one paper: two colour codes, then a grid
    python vqvae.py config/vqvae_seed.py         # the published MLP tokenizer: 8 tokens from 26 codes
    python vqvae.py --kind=1d --tokens_per_image=16          # 16 tokens in no place (TiTok)
    python vqvae.py --grid=4 --stages=2 --levels=8,5,5,5     # a 4x4 grid, then its detail (residual FSQ)

The tokenizer's kind and capacity follow the data unless set (kind='', levels='', hidden=0): grey
images get MNIST's; colour images that one ink on one paper explains (letters, drawings, shapes) the ink
tokenizer, which codes the two colours and the place apart from the shape; other colour images (photos)
more codes and channels. FSQ rather than a learned codebook for the conv tokenizer: it has no codebook to collapse and
needs no auxiliary losses. Binary cross-entropy needs the decoder's output bias to start at the mean pixel's
logit and a learning-rate warm-up: without them every image can get the same code. The checkpoint
carries the data set (datasets.load_dataset's info), so prepare.py, train.py and sample.py need not
be told it again. With class_weight a small classifier of the quantized latents joins the loss, as
tokenizers meant for understanding as well as drawing are trained with a semantic objective beside
reconstruction (VILA-U, Wu et al. 2024, https://arxiv.org/abs/2409.04429; UniTok, Ma et al. 2025,
https://arxiv.org/abs/2502.20321): the codes keep more of what tells the classes apart, and each epoch
says how many val images that classifier reads right (metrics.json: that of the epoch saved, the one of
the lowest validation loss).
"""
import math
import os
import time

import numpy as np
import torch
import torch.nn as nn
from torch.nn import functional as F

from tinyvlm.checkpoints import save_checkpoint
from tinyvlm.configurator import configure, parse_levels
from tinyvlm.datasets import load_dataset
from tinyvlm.images import as_float, save_image_grid
from tinyvlm.plumbing import Progress, autocast, pick_device, pick_dtype, start_script, write_json
from tinyvlm.tokenizers import make_tokenizer, two_colour_share

start_script()  # errors the user can fix end in one line

# -----------------------------------------------------------------------------
# default config values: a convolutional tokenizer with finite scalar quantisation (FSQ)
out_dir = 'out/vqvae'      # the checkpoint (ckpt.pt), metrics.json and reconstructions.png go here
dataset = 'mnist'          # 'mnist', 'fashion', or a folder of class folders (see tinyvlm/datasets.py)
idx_dir = ''               # mnist/fashion: a folder holding the four IDX .gz files; '' = download from the mirrors
image_size = 0             # images are resized to image_size x image_size; 0 = the data set's own (28 for MNIST)
kind = ''                  # 'conv': a grid x grid map of codes; 'ink': the colours of one ink and one paper and the
                           # drawing's place, then a conv grid of the ink, centred; '1d': tokens_per_image latent
                           # tokens (TiTok); 'mlp': the published 784 -> hidden -> latent_dim; '' = from the data: 'ink' for colour images that
                           # ink_and_paper keeps at least INK_SHARE of, else 'conv'
quantizer = 'fsq'          # 'fsq': finite scalar quantisation with levels; 'vq': a learned codebook
levels = ''                # fsq: values per latent channel, the codebook their product; '' = from the data (FITTED)
grid = 0                   # conv: codes per side; 1d: patches per side; 0 = image_size / 4 (7 for MNIST)
hidden = 0                 # conv: channels; mlp: hidden units; 0 = from the data (FITTED)
latent_dim = 32            # vq: mlp: the whole latent, cut into tokens_per_image chunks; conv: per cell
tokens_per_image = 8       # mlp and 1d (conv has grid * grid)
depth = 0                  # conv: residual blocks at the grid, each side; 1d: transformer layers, each side (at least 1)
stages = 1                 # conv + fsq: codes per grid cell, coarse to fine (residual FSQ); tokens: stage by stage
latent_norm = False        # fsq: standardise each latent channel (batch statistics) so that none sticks at one level
                           # (a hidden from the data turns it on where it chooses 128 channels)
codebook_size = 26         # vq only: 26 or fewer codes become the letters A..Z
beta = 0.25                # vq only: commitment cost
loss = 'bce'               # 'bce': pixels as Bernoulli logits (sharper); 'mse': squared error (the published MLP's)
class_weight = 0.0         # > 0: a classifier of the quantized latents adds this times its cross-entropy to the loss
                           # (the docstring says why); it is not saved: the codes are what it leaves behind
learning_rate = 1e-3       # Adam
warmup_iters = 200         # linear learning-rate warm-up (bce without it can send every image to one code)
batch_size = 128
max_epochs = 4
min_iters = 1500           # at least this many optimizer steps: a small folder of images gets MNIST's 4 epochs' worth
patience = 5               # early stopping: epochs without a better validation loss
kmeans_samples = 10000     # vq: encoder outputs of this many training images initialise the codebook
seed = 1337
device = 'auto'            # 'auto' picks cuda, then mps, then cpu
dtype = 'auto'             # training: bfloat16 autocast where faster here (plumbing.fast_bf16), else float32
# -----------------------------------------------------------------------------
# what levels='' and hidden=0 become, by the kind and the images' channels (docs/experiments.md): grey images and
# ink maps get MNIST's capacity (5,5,5: an ink tokenizer's colours in 5 steps a channel; 8,8,8 drew worse letters);
# other colour images need more codes and channels (each place says its colours as well as its shape), and 128
# channels need latent_norm to keep every code in use
FITTED = {('conv', 1): dict(levels='5,5,5', hidden=64), ('ink', 3): dict(levels='5,5,5', hidden=64),
          ('conv', 3): dict(levels='8,5,5,5', hidden=128, latent_norm=True)}
INK_SHARE = 0.8  # drawings on shaded paper with specks keep less than flat ones, photos far less (docs/experiments.md)


@torch.no_grad()
def tokenizer_metrics(tok, images):
    """Reconstruction MSE / PSNR and codebook usage (perplexity, dead codes) over images (N, C, S, S)."""
    tok.eval()
    codes = tok.encode(images)
    mse = F.mse_loss(tok.decode(codes), images).item()
    counts = torch.bincount(codes.flatten().cpu(), minlength=tok.codebook_size).float()
    p = counts / counts.sum()
    return dict(mse=mse, psnr=float(10 * np.log10(1.0 / mse)),
                perplexity=float(torch.exp(-(p[p > 0] * p[p > 0].log()).sum())),
                codes_used=int((counts > 0).sum()), dead_codes=int((counts == 0).sum()))


config = configure(globals())
device = pick_device(device)
torch.manual_seed(seed)
g = torch.Generator().manual_seed(seed)
t0 = time.time()
splits, info = load_dataset(dataset, idx_dir, image_size)
train, val, test = (as_float(splits[s][0], device) for s in ('train', 'val', 'test'))
train_y, val_y = (torch.as_tensor(splits[s][1]).to(device) for s in ('train', 'val'))
fitted = {}
if kind == '':
    share = two_colour_share(train[:2000]) if info['channels'] == 3 else 0.0
    ink_fits = quantizer == 'fsq' and stages == 1 and (levels == '' or len(parse_levels(levels)) == 3)  # as set
    fitted['kind'] = 'ink' if share >= INK_SHARE and ink_fits else 'conv'
fits = FITTED.get((fitted.get('kind', kind), info['channels']), FITTED[('conv', info['channels'])])
if fitted.get('kind', kind) == 'ink' and info['image_size'] > 125:
    fits = dict(fits, levels='8,8,8')  # an ink tokenizer codes each row and column: more than 125 need more codes
fitted.update({k: v for k, v in fits.items()
               if ((config['hidden'] == 0 and quantizer == 'fsq') if k == 'latent_norm' else config[k] in ('', 0))})
if fitted:
    globals().update(fitted)
    config.update(fitted)
    print(f"from the data ({'colour' if info['channels'] == 3 else 'grey'} images"
          + (f", {share:.2f} of them one ink on one paper" if info['channels'] == 3 and 'kind' in fitted else '') + "): "
          + ', '.join(f"{k}={v}" for k, v in fitted.items()))

tok = make_tokenizer(kind=kind, quantizer=quantizer, image_size=info['image_size'], channels=info['channels'],
                     hidden=hidden, latent_dim=latent_dim, tokens_per_image=tokens_per_image, codebook_size=codebook_size,
                     beta=beta, levels=parse_levels(levels), grid=grid, loss=loss, depth=depth, stages=stages,
                     latent_norm=latent_norm).to(device)
if loss == 'bce':  # start from the mean image's brightness, not from grey, so the first steps do not
    with torch.no_grad():  # push every latent the same way (without this and the warm-up: one code for all)
        mean = tok.targets(train).mean().item()
        tok.output_bias().fill_(math.log(mean / (1 - mean)))
if quantizer == 'vq':
    with torch.no_grad():  # k-means initialisation of the codebook on the untrained encoder's outputs
        sample = train[torch.randperm(len(train), generator=g)[:kmeans_samples].to(device)]
        z = tok.encode_latents(sample)
        tok.quantizer.init_kmeans(z.reshape(-1, z.size(-1)).cpu(), generator=g)
print(f"{kind} tokenizer, {quantizer}: {tok.tokens_per_image} tokens per image from {tok.codebook_size} codes, "
      f"{sum(p.numel() for p in tok.parameters()):,} parameters", flush=True)
head = None
if class_weight > 0:  # latents of every token, flattened -> a hidden layer -> the classes
    with torch.no_grad():
        width = tok.eval()(train[:1])[3].flatten(1).size(1)
    head = nn.Sequential(nn.Flatten(), nn.Linear(width, 256), nn.ReLU(), nn.Linear(256, len(info['classes']))).to(device)
    print(f"and a classifier of its latents ({sum(p.numel() for p in head.parameters()):,} parameters), "
          f"weighted {class_weight}")
optimizer = torch.optim.Adam(list(tok.parameters()) + (list(head.parameters()) if head else []), lr=learning_rate)
dtype = pick_dtype(device, dtype)
ctx = autocast(device, dtype)


def loss_of(x, y):
    """The tokenizer's loss on images x, with class_weight the classifier's on their labels y as well, and
    that classifier's logits (None without one)."""
    _, _, loss, zq = tok(x)
    if head is None:
        return loss, None
    logits = head(zq).float()
    return loss + class_weight * F.cross_entropy(logits, y), logits


@torch.no_grad()
def evaluate():
    """The validation loss, and the share of val images the classifier of the codes reads right (None
    without one): what the codes keep of the classes."""
    tok.eval()
    total, right = 0.0, 0
    with ctx:
        for i in range(0, len(val), 2000):
            loss, logits = loss_of(val[i:i + 2000], val_y[i:i + 2000])
            total += loss.item() * len(val[i:i + 2000])
            right += 0 if logits is None else (logits.argmax(1) == val_y[i:i + 2000]).sum().item()
    tok.train()
    return total / len(val), right / len(val) if head else None


best, best_state, best_reading, bad_epochs, step = float('inf'), None, None, 0, 0
batches = math.ceil(len(train) / batch_size)
for epoch in range(max(max_epochs, math.ceil(min_iters / batches))):
    tok.train()
    perm = torch.randperm(len(train), generator=g).to(device)
    progress = Progress(f"epoch {epoch + 1}", batches, 'batches')
    for i in range(0, len(train), batch_size):
        for group in optimizer.param_groups:
            group['lr'] = learning_rate * min(1.0, (step + 1) / (warmup_iters + 1))
        with ctx:
            batch_loss = loss_of(train[perm[i:i + batch_size]], train_y[perm[i:i + batch_size]])[0]
        optimizer.zero_grad(set_to_none=True)
        batch_loss.backward()
        optimizer.step()
        step += 1
        progress.update()
    vl, va = evaluate()
    if vl < best - 1e-6:
        best, best_reading, bad_epochs = vl, va, 0
        best_state = {k: v.detach().clone() for k, v in tok.state_dict().items()}
    else:
        bad_epochs += 1
    print(f"epoch {epoch + 1}: train loss {batch_loss.item():.4f}, val loss {vl:.4f}"
          f"{'' if bad_epochs else ' (best)'}{'' if va is None else f', its classifier reads val {va:.4f}'} "
          f"[{time.time() - t0:.0f}s]", flush=True)
    if bad_epochs >= patience:
        print(f"early stop: no better validation loss for {patience} epochs")
        break
tok.load_state_dict(best_state)
tok.eval()

metrics = dict(test=tokenizer_metrics(tok, test), train=tokenizer_metrics(tok, train),
               epochs=epoch + 1, val_loss=best, seconds=time.time() - t0,  # train.py's time_limit counts them
               **({} if head is None else dict(val_class_accuracy=best_reading)))
m = metrics['test']
print(f"test reconstruction MSE {m['mse']:.5f}, PSNR {m['psnr']:.2f} dB; codebook perplexity "
      f"{m['perplexity']:.1f} of {tok.codebook_size}, dead codes on train {metrics['train']['dead_codes']}")
ckpt_path = os.path.join(out_dir, 'ckpt.pt')
save_checkpoint({'model': tok.state_dict(), 'model_args': tok.model_args, 'dataset': info, 'config': config,
                 'metrics': metrics}, ckpt_path)
write_json(os.path.join(out_dir, 'metrics.json'), metrics)
x = test[:16]
save_image_grid(torch.cat([x, tok.decode(tok.encode(x))]).cpu(), os.path.join(out_dir, 'reconstructions.png'), 16)
print(f"saved {ckpt_path} and {out_dir}/reconstructions.png (originals over reconstructions)")
