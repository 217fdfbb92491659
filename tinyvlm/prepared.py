"""
A folder of prepared sequences (prepare.py's data_dir): its meta.json, and every data file checked
against the SHA-256 that meta.json holds, so that a half-rewritten folder is noticed.
"""
import json
import os

import numpy as np
import torch

from tinyvlm import Error
from tinyvlm.plumbing import FORMAT, sha256_file


def load_meta(data_dir):
    """meta.json of a prepared data_dir, or an Error saying to run prepare.py."""
    path = os.path.join(data_dir, 'meta.json')
    if not os.path.isfile(path):
        raise Error(f"no prepared data in {data_dir} ({path} is missing): run prepare.py first")
    try:
        with open(path, encoding='utf-8') as f:
            meta = json.load(f)
    except ValueError as e:
        raise Error(f"{path} is not valid JSON ({e}): run prepare.py again")
    if not isinstance(meta, dict) or meta.get('format') != FORMAT:
        raise Error(f"{path} was written by an older prepare.py (this code reads format {FORMAT}): run prepare.py again")
    return meta


def load_array(data_dir, name, meta):
    """One data file of a prepared folder (.npy, .bin, or .txt: its lines), after checking it is the file meta.json
    describes."""
    path = os.path.join(data_dir, name)
    if not os.path.isfile(path):
        raise Error(f"{path} is missing: run prepare.py again")
    if meta['files'].get(name) != sha256_file(path):
        raise Error(f"{path} is not the file {data_dir}/meta.json describes (prepare.py still running, or "
                    f"interrupted?): run prepare.py again")
    if name.endswith('.npy'):
        return np.load(path)
    if name.endswith('.txt'):  # one line each
        with open(path, encoding='utf-8') as f:
            return f.read().split('\n')[:-1]
    return np.fromfile(path, dtype=meta['dtype'])


def load_split(data_dir, split, meta):
    """(sequences (N, block_size), codes (N, tokens_per_image), labels (N,), tasks (N,)), int64 tensors."""
    seqs = load_array(data_dir, f'{split}.bin', meta)
    if len(seqs) % meta['block_size']:
        raise Error(f"{data_dir}/{split}.bin is not a whole number of {meta['block_size']}-token sequences: run "
                    f"prepare.py again")
    out = [seqs.reshape(-1, meta['block_size'])] + [load_array(data_dir, f'{split}_{k}.npy', meta)
                                                    for k in ('codes', 'labels', 'tasks')]
    return tuple(torch.from_numpy(a.astype(np.int64)) for a in out)


def load_images(data_dir, split, meta):
    """The split's original images (N, C, S, S), float32 in [0, 1], and their labels (N,) (the moved
    training copies are not kept)."""
    images = load_array(data_dir, f'{split}_images.npy', meta)
    labels = load_array(data_dir, f'{split}_labels.npy', meta)[:len(images)]  # the originals come first
    return torch.from_numpy(images).float() / 255.0, torch.from_numpy(labels.astype(np.int64))


def load_captions(data_dir, split, meta):
    """The captions of a split's original images (prepare.py's caption tasks), a list of strings."""
    if not meta.get('captions'):
        raise Error(f"{data_dir} has no captions: prepare.py's shares gave the caption tasks none")
    n = len(load_array(data_dir, f'{split}_images.npy', meta))
    return load_array(data_dir, f'{split}_captions.txt', meta)[:n]


def data_signature(meta):
    """What a language-model checkpoint must agree on with the prepared data it is used with."""
    return {k: meta[k] for k in ('vocab', 'block_size', 'tokens_per_image', 'codebook_size', 'classes', 'tasks',
                                 'tokenizer_sha256')}


def check_data(ckpt, meta, path, data_dir):
    if ckpt.get('data') != data_signature(meta):
        raise Error(f"{path} was trained on other data than {data_dir} (its vocabulary, classes or tokenizer differ "
                    f"from {data_dir}/meta.json): use the data_dir it was trained on")

