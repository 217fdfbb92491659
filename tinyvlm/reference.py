"""
The reference classifier that scores images objectively (generated ones, the tokenizer's
reconstructions), one per data set, trained on its training images on first use; and the Frechet
distance between feature sets (as FID does with Inception, Heusel et al. 2017,
https://arxiv.org/abs/1706.08500).
"""
import math
import os

import numpy as np
import torch
import torch.nn as nn

from tinyvlm import Error
from tinyvlm.checkpoints import save_checkpoint
from tinyvlm.images import augmented
from tinyvlm.plumbing import FORMAT, Progress, autocast, safe_name
from tinyvlm.prepared import load_images

ASSETS = os.path.join(  # the repo's assets/, wherever the scripts run from
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'assets')


class ImageCNN(nn.Module):
    """The reference classifier that scores images objectively, for images (B, C, S, S) of n_classes: a
    5x5 convolution, then 3x3 ones (VGG, Simonyan & Zisserman 2014), each batch-normalised (Ioffe &
    Szegedy 2015: it learns colour images of any ink and paper as readily as grey ones), halving twice,
    and global average pooling (Lin et al. 2013) into 128 features, where Frechet distances are
    measured (features())."""

    def __init__(self, channels=1, image_size=28, n_classes=10, width=16):
        super().__init__()
        block = lambda i, o, k: [nn.Conv2d(i, o, k, padding=k // 2, bias=False), nn.BatchNorm2d(o), nn.ReLU()]
        self.conv = nn.Sequential(*block(channels, width, 5), nn.MaxPool2d(2),
                                  *block(width, 2 * width, 3), *block(2 * width, 2 * width, 3), nn.MaxPool2d(2),
                                  *block(2 * width, 128, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(128, n_classes)

    def features(self, x):
        return self.conv(x)

    def forward(self, x):
        return self.head(self.features(x))


def shipped_or_trained(meta):
    """Where this data set's reference classifier is: the one in assets/ (reference_NAME.pt: trained by
    reference_classifier on MNIST's or Fashion-MNIST's training images and kept, so that every run
    on every machine is judged by one classifier, as FID judges by one Inception network), where it
    learned these very images; else out/reference_NAME.pt, trained there on first use."""
    name = f"reference_{safe_name(meta['dataset']['name'])}.pt"
    shipped = os.path.join(ASSETS, name)
    return os.path.relpath(shipped) if _load(shipped, meta) else os.path.join('out', name)


def _load(path, meta):
    """The classifier at path and its test accuracy, if it was saved by this code for this data set's
    images; else None."""
    info = meta['dataset']
    args = dict(channels=info['channels'], image_size=info['image_size'], n_classes=len(meta['classes']))
    try:
        ck = torch.load(path, map_location='cpu', weights_only=True)
    except Exception:  # missing or unreadable: trained (again)
        return None
    if not isinstance(ck, dict) or (ck.get('format'), ck.get('fingerprint'), ck.get('args')) != (
            FORMAT, info['fingerprint'], args):
        return None
    cnn = ImageCNN(**args)
    cnn.load_state_dict(ck['model'])
    return cnn.eval(), ck['test_accuracy']


def reference_classifier(path, meta, data_dir, device, dtype='float32', batch=128, seed=1337, epochs=8, min_steps=2000):
    """The reference classifier for this data set: loaded from path, or first trained there on the
    training images, each batch moved as prepare.py moves its copies (meta's moves: shifts, turns,
    scales, mirror images where they are as likely), by Adam with cosine decay for `epochs` epochs but at
    least min_steps steps (a small folder's 8 epochs are a few hundred steps, too few to learn its
    classes), keeping the weights that read the validation images best (measured every epoch, at least
    every 200 steps). In bfloat16 when dtype is bfloat16, channels last (convolutions on a CPU run
    fastest so). Saved with its test accuracy and the fingerprint of the data it learned, so that a
    classifier of other data (or of an older format) is trained anew rather than used.
    -> (the classifier, its test accuracy)."""
    info = meta['dataset']
    args = dict(channels=info['channels'], image_size=info['image_size'], n_classes=len(meta['classes']))
    found = _load(path, meta)
    if found:
        return found[0].to(device), found[1]
    if os.path.exists(path) and os.path.dirname(os.path.abspath(path)) == ASSETS:  # never overwrite a shipped one
        raise Error(f"{path} is the reference shipped for other images than {info['title']}'s: give another "
                    f"--reference path (or '' for out/reference_NAME.pt)")
    if os.path.exists(path):
        print(f"{path} was trained on other images than {info['title']}'s, or by older code, or is unreadable: training it again")
    x, y = (t.to(device) for t in load_images(data_dir, 'train', meta))
    val_x, val_y = (t.to(device) for t in load_images(data_dir, 'val', meta))
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    cnn = ImageCNN(**args).to(device, memory_format=torch.channels_last)
    ctx = autocast(device, 'bfloat16' if dtype == 'bfloat16' else 'float32')  # float16 would need a loss scaler
    opt = torch.optim.Adam(cnn.parameters())
    moves = meta['moves']
    round_steps = max(200, math.ceil(len(x) / batch))
    steps = max(min_steps, epochs * math.ceil(len(x) / batch))
    print(f"training the reference classifier {path} ({steps:,} steps over {len(x):,} {info['title']} training "
          f"images, moved as prepare.py moves them)", flush=True)
    best, best_state = -1.0, None
    for start in range(0, steps, round_steps):
        cnn.train()
        n = min(round_steps, steps - start)
        progress = Progress(f"reference classifier, steps {start + 1}-{start + n}", n, 'batches')
        for step in range(start, start + n):
            for group in opt.param_groups:  # cosine decay to 0
                group['lr'] = 3e-3 * 0.5 * (1 + math.cos(math.pi * step / steps))
            idx = torch.randint(len(x), (batch,), generator=g).to(device)
            xb = augmented(x[idx].cpu(), g, moves['shift'], moves['rotate'], moves['scale'], moves['flip'])
            with ctx:
                loss = torch.nn.functional.cross_entropy(cnn(xb.to(device).contiguous(memory_format=torch.channels_last)),
                                                         y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            progress.update()
        cnn.eval()
        acc = (classify_images(cnn, val_x).argmax(1) == val_y).float().mean().item()
        if acc >= best:
            best, best_state = acc, {k: v.clone() for k, v in cnn.state_dict().items()}
        print(f"reference classifier: step {start + n:,}, validation accuracy {acc:.4f} (best {best:.4f})", flush=True)
    cnn.load_state_dict(best_state)
    cnn.eval()
    test_x, test_y = (t.to(device) for t in load_images(data_dir, 'test', meta))
    acc = (classify_images(cnn, test_x).argmax(1) == test_y).float().mean().item()
    save_checkpoint({'model': cnn.state_dict(), 'args': args, 'test_accuracy': acc, 'steps': steps,
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


def precision_recall(real, fake, k=3, chunk=1000):
    """Improved precision and recall (Kynkaanniemi et al. 2019, https://arxiv.org/abs/1904.06991) of
    two feature sets (N, D): precision is the share of fake samples inside the real manifold (the union
    of balls around each real sample reaching its k-th nearest real neighbour), how faithful they are;
    recall the share of real samples inside the fake manifold, how much of the data they cover."""
    real, fake = torch.as_tensor(real, dtype=torch.float32), torch.as_tensor(fake, dtype=torch.float32)

    def radii(x):  # each sample's distance to its k-th nearest neighbour in x, itself excluded (topk: faster than kthvalue)
        return torch.cat([torch.cdist(x[i:i + chunk], x).topk(k + 1, dim=1, largest=False).values[:, -1]
                          for i in range(0, len(x), chunk)])

    def inside(x, y, r):  # the share of x within r of some sample of y
        near = [(torch.cdist(x[i:i + chunk], y) <= r).any(1) for i in range(0, len(x), chunk)]
        return torch.cat(near).float().mean().item()

    return inside(fake, real, radii(real)), inside(real, fake, radii(fake))
