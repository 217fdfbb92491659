"""
Turn a data set into text: every image is encoded by the tokenizer, its codes become characters, and
each image becomes one sequence of one of the tasks (tinyvlm/sequences.py), chosen at random with a
fixed seed in the `shares` given:

    number:7, image:ÀÁÆ...Ŀ.###        image:ÀÁÆ...Ŀ, class:Ankle boot.###

A task of two images (MNIST addition, next) pairs each image with a second drawn from the same split
(sequences.second_images): python prepare.py --shares=1,1,1,1 makes all four. The caption tasks
(illustration, captioning: --shares=1,1,0,0,1,1) write each image's caption: a folder's own
(metadata.jsonl), else for MNIST and Fashion-MNIST words measured on the image itself (each moved copy
measured anew: 'a thick slanted 7', tinyvlm/captions.py), else the class name.

The data set is the one the tokenizer was trained on (vqvae.py --dataset=...). Writes to data_dir,
per split (train, val, test): SPLIT.txt (one sequence per line), SPLIT.bin (uint16 token ids,
block_size per sequence), SPLIT_codes.npy, SPLIT_labels.npy and SPLIT_tasks.npy (every sequence's image
codes, class and task; with the caption tasks, SPLIT_captions.txt their captions), SPLIT_images.npy (the
original images, which evaluation and the reference classifier use), code_features.npy, logo.png (how
predictable each code position is per class), and last meta.json (data set, class names, vocabulary,
format, and the SHA-256 of every file, so a half-rewritten folder is noticed). A failed run leaves an
earlier data_dir as it was: every file is written under a temporary name and renamed in place at the end.

    python prepare.py
    python prepare.py config/prepare_fashion.py
"""
import os
import time

import numpy as np
import torch

from tinyvlm import Error
from tinyvlm.captions import caption_bounds, caption_plan, captions_of
from tinyvlm.checkpoints import load_tokenizer
from tinyvlm.configurator import configure, parse_shares
from tinyvlm.datasets import reload_dataset
from tinyvlm.images import as_float, augmented
from tinyvlm.plots import draw_logo
from tinyvlm.plumbing import FORMAT, Progress, atomic_write, lock_folder, sha256_file, start_script, write_json
from tinyvlm.sequences import SINGLE, TASKS, Codec, second_images

start_script()  # errors the user can fix end in one line
# -----------------------------------------------------------------------------
tokenizer = 'out/vqvae/ckpt.pt'   # written by vqvae.py; it also names the data set
data_dir = 'data/vlm'             # where the prepared sequences go
block_size = 0                    # every sequence is padded to this many tokens; 0 = the
                                  # longest sequence rounded up to a multiple of 8
augment = 4                       # train: this many randomly moved copies of each image besides it
shift = 2.0                       # ... each moved up to this many pixels,
rotate = 10.0                     # ... rotated up to this many degrees
scale = 0.1                       # ... and scaled by up to 1 +- this;
flip = False                      # ... and half of them mirrored left to right, for images whose mirror
                                  # image is as likely (not digits); sample.py then reads mirror images too
shares = '1,1'                    # how the sequences divide among the tasks, in their order (generation,
                                  # classification, addition, next): '1,3' makes a quarter of them generation
                                  # and three quarters classification, and none of the tasks of two images
seed = 1337
# -----------------------------------------------------------------------------
configure(globals())
t0 = time.time()
weights = parse_shares(shares)
tok, tok_ckpt = load_tokenizer(tokenizer)
splits, info = reload_dataset(tok_ckpt['dataset'], quiet=False)
grid = tok.grid if tok.kind in ('conv', 'ink') and tok_ckpt['model_args']['stages'] == 1 else 0  # one raster grid, or none
lead = tok.tokens_per_image - grid * grid if grid else 0  # codes of the whole image before the grid's
learnt = [t for t in TASKS if t in SINGLE or weights.get(t)]
# the caption tasks: where the captions come from (a folder's own, measured, or class names)
plan = caption_plan(info, *splits['train'][:2]) if any('{caption}' in TASKS[t] for t in learnt) else None
own = [c for s in splits.values() for c in s[2] or []]  # a folder's own captions
longest, chars = caption_bounds(plan, info['classes'], own) if plan else (0, '')
# the single-image tasks are in every codec: their prompts read and draw (and guide) whatever the shares
codec = Codec(info['classes'], info['key'], tok.codebook_size, tok.tokens_per_image, block_size, grid=grid, lead=lead,
              tasks=learnt, caption_length=longest, caption_chars=chars)
task_names = list(codec.tasks)
bounds = np.cumsum([weights.get(t, 0.0) for t in task_names])
bounds /= bounds[-1]
if codec.vocab_size > np.iinfo(np.uint16).max:
    raise Error(f"a vocabulary of {codec.vocab_size} tokens does not fit uint16 token ids")
g = torch.Generator().manual_seed(seed)
rng = np.random.default_rng(seed)
lock = lock_folder(data_dir, 'prepare.py')  # one prepare.py per data_dir
counts, files, staged = {}, {}, []


def stage(name, write):
    """Write data_dir/name under a temporary name; all are renamed in place once every one is written."""
    path = os.path.join(data_dir, f'.new.{name}')
    atomic_write(path, write)
    files[name] = sha256_file(path)
    staged.append(path)


try:
    for split, (images, labels, own) in splits.items():
        x = as_float(images)
        copies = 1 + (augment if split == 'train' else 0)
        progress = Progress(f"{split}: encoding", copies * len(x), 'images')
        codes, captions = [], []
        for k in range(copies):  # the image itself, then its moved copies
            moved = x if k == 0 else augmented(x, g, shift, rotate, scale, flip)
            for i in range(0, len(x), 10000):
                codes.append(tok.encode(moved[i:i + 10000]))
                progress.update(len(codes[-1]))
            if plan:
                captions += captions_of(plan, moved, labels, own, info['classes'])
        codes = torch.cat(codes).numpy()
        labels = np.tile(labels, copies)
        tasks = np.searchsorted(bounds, rng.random(len(codes)), side='right')
        second = second_images(task_names, tasks, labels, len(codec.classes), rng)
        progress = Progress(f"{split}: writing", len(codes), 'sequences')
        lines, ids = [], np.zeros((len(codes), codec.block_size), dtype=np.uint16)
        for i, (c, y, t, j) in enumerate(zip(codes, labels, tasks, second)):
            text, ids[i] = codec.line(task_names[t], y, c, *((labels[j], codes[j]) if j >= 0 else ()),
                                      caption=captions[i] if '{caption}' in codec.tasks[task_names[t]] else None)
            lines.append(text)
            progress.update()
        stage(f'{split}.txt', '\n'.join(lines) + '\n')
        stage(f'{split}.bin', ids.tobytes())
        stage(f'{split}_codes.npy', lambda tmp: np.save(tmp, codes.astype(np.int16)))
        stage(f'{split}_labels.npy', lambda tmp: np.save(tmp, labels.astype(np.int32)))
        stage(f'{split}_tasks.npy', lambda tmp: np.save(tmp, tasks.astype(np.uint8)))
        stage(f'{split}_images.npy', lambda tmp: np.save(tmp, images))
        if plan:
            stage(f'{split}_captions.txt', '\n'.join(captions) + '\n')
        counts[split] = dict(sequences=len(lines), **{t: int((tasks == i).sum()) for i, t in enumerate(task_names)})
        print(f"{split}: {len(lines)} sequences ({', '.join(f'{counts[split][t]} {t}' for t in task_names)}), "
              f"e.g. {lines[0]}", flush=True)
        if split == 'train':
            stage('logo.png', lambda tmp: draw_logo(codes, labels, codec, info['title'], tmp))
    features = tok.quantizer.features().numpy().astype(np.float32)  # each code's features, for GPT.embeddings
    stage('code_features.npy', lambda tmp: np.save(tmp, features))
    for name in files:
        os.replace(os.path.join(data_dir, f'.new.{name}'), os.path.join(data_dir, name))
finally:  # a failed run leaves the folder as it was
    for path in staged:
        if os.path.exists(path):
            os.remove(path)
meta = dict(format=FORMAT, dataset=info, classes=codec.classes, key=codec.key, tasks=codec.tasks, vocab=codec.itos,
            vocab_size=codec.vocab_size, block_size=codec.block_size, tokens_per_image=codec.tokens_per_image, grid=grid, lead=lead,
            codebook_size=codec.codebook_size, code_offset=codec.code_offset, tokenizer=tokenizer,
            caption_length=codec.caption_length, captions=plan,
            tokenizer_sha256=sha256_file(tokenizer), dtype='uint16', seed=seed, augment=augment,
            moves=dict(shift=shift, rotate=rotate, scale=scale, flip=flip), splits=counts, shares=weights, files=files,
            seconds=dict(tokenizer=tok_ckpt.get('metrics', {}).get('seconds'), prepare=time.time() - t0))  # time_limit's
write_json(os.path.join(data_dir, 'meta.json'), meta)
pieces = [t for t in codec.itos[:codec.code_offset] if t not in codec.classes and t not in set(codec.caption_chars)]
print(f"vocabulary of {codec.vocab_size} tokens: {len(pieces)} of text {pieces}, {len(codec.classes)} class "
      f"names, " + (f"{len(codec.caption_chars)} characters of captions (of up to {codec.caption_length}), "
                    if plan else '')
      + f"{codec.codebook_size} codes {codec.code_chars[:8]}...; wrote {data_dir}/meta.json and logo.png")
