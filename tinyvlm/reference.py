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

from tinyvlm.checkpoints import save_checkpoint
from tinyvlm.images import shifted
from tinyvlm.plumbing import FORMAT, Progress, autocast
from tinyvlm.prepared import load_images


class ImageCNN(nn.Module):
    """The reference classifier that scores images objectively (LeNet-style, LeCun et al. 1998: two 5x5
    convolutions with max pooling, then two linear layers), for images (B, C, S, S) of n_classes.
    features() is its 128-wide penultimate layer, where Frechet distances are measured."""

    def __init__(self, channels=1, image_size=28, n_classes=10, width=16):
        super().__init__()
        s = image_size // 4
        self.conv = nn.Sequential(nn.Conv2d(channels, width, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
                                  nn.Conv2d(width, 2 * width, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                                  nn.Linear(2 * width * s * s, 128), nn.ReLU())
        self.head = nn.Linear(128, n_classes)

    def features(self, x):
        return self.conv(x)

    def forward(self, x):
        return self.head(self.features(x))


def reference_classifier(path, meta, data_dir, device, dtype='float32', epochs=8, batch=128, seed=1337):
    """The reference classifier for this data set: loaded from path, or first trained there on its
    training and validation images, each shifted at random by up to one pixel (Adam, lr 3e-3 with
    cosine decay; in bfloat16 when dtype is bfloat16, and channels last, which convolutions on a CPU
    run fastest), and saved with its test accuracy and the fingerprint of the data it learned, so that
    a classifier of other data (or of an older format) is trained anew rather than used.
    -> (the classifier, its test accuracy)."""
    info = meta['dataset']
    args = dict(channels=info['channels'], image_size=info['image_size'], n_classes=len(meta['classes']))
    if os.path.isfile(path):
        try:
            ck = torch.load(path, map_location='cpu', weights_only=True)
        except Exception:  # unreadable: trained again below
            ck = None
        if isinstance(ck, dict) and (ck.get('format'), ck.get('fingerprint'), ck.get('args')) == (
                FORMAT, info['fingerprint'], args):
            cnn = ImageCNN(**args)
            cnn.load_state_dict(ck['model'])
            return cnn.to(device).eval(), ck['test_accuracy']
        print(f"{path} was trained on other images than {info['title']}'s, or by older code, or is unreadable: training it again")
    x, y = (torch.cat(t).to(device) for t in zip(*(load_images(data_dir, s, meta) for s in ('train', 'val'))))
    g = torch.Generator(device).manual_seed(seed)
    torch.manual_seed(seed)
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
