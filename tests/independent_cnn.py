"""
An independent judge of generated images, for the README's own-images figures: a CNN of another
design than tinyvlm's reference (reference.py: global pooling, no dropout), with max pooling and
dropout, trained on a prepared data_dir's training split with its own augmentation (shifts, and the
colour channels permuted and inverted: colour must not matter), then reading the real test split and
the images that `sample.py --mode=generate --save_npy=...` wrote.

    python sample.py --mode=generate --num_samples=70 --save_npy=out/gen.npy
    python tests/independent_cnn.py data/vlm out/gen.npy
"""
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


def block(i, o):
    return [nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(), nn.Conv2d(o, o, 3, padding=1),
            nn.BatchNorm2d(o), nn.ReLU(), nn.MaxPool2d(2)]


def augmented(x):
    """A batch with its channels in a random order, half of it inverted, all moved by up to 4 pixels."""
    x = x[:, torch.randperm(x.size(1))]
    x = torch.where(torch.rand(len(x), 1, 1, 1) < 0.5, 1 - x, x)
    dx, dy = torch.randint(-4, 5, (2,)).tolist()
    return torch.roll(x, (dy, dx), (2, 3))


def main(data_dir, generated, steps=1500, batch=128):
    torch.manual_seed(0)
    load = lambda name: np.load(f'{data_dir}/{name}.npy')
    train = torch.from_numpy(load('train_images')).float() / 255
    test = torch.from_numpy(load('test_images')).float() / 255
    y_train = torch.from_numpy(load('train_labels')[:len(train)].astype(np.int64))  # the originals come first
    y_test = torch.from_numpy(load('test_labels')[:len(test)].astype(np.int64))
    drawn = torch.from_numpy(np.load(generated)).float()
    y_drawn = torch.from_numpy(np.load(generated[:-4] + '_labels.npy'))
    side, channels = train.shape[-1], train.shape[1]
    net = nn.Sequential(*block(channels, 32), *block(32, 64), *block(64, 96), nn.Flatten(), nn.Dropout(0.3),
                        nn.Linear(96 * (side // 8) ** 2, 128), nn.ReLU(), nn.Linear(128, int(y_train.max()) + 1))
    opt = torch.optim.AdamW(net.parameters(), 2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 2e-3, total_steps=steps)
    t0 = time.time()
    for _ in range(steps):
        i = torch.randint(0, len(train), (batch,))
        loss = F.cross_entropy(net(augmented(train[i])), y_train[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    net.eval()
    with torch.no_grad():
        read = lambda x: torch.cat([net(x[i:i + 500]).argmax(1) for i in range(0, len(x), 500)])
        print(f"independent CNN ({time.time() - t0:.0f} s of training): the real test images "
              f"{(read(test) == y_test).float().mean():.4f} of {len(test)}; the generated "
              f"{(read(drawn) == y_drawn).float().mean():.4f} of {len(drawn)}")


if __name__ == '__main__':
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(*sys.argv[1:])
