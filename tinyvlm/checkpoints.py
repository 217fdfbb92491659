"""
Checkpoints: written atomically, loaded with weights_only=True (so loading never runs code), and
stamped with FORMAT, so that a file an older version of this code wrote is a one-line error naming
the script that writes it again, not a mismatch deep inside torch.
"""
import glob
import os
import re

import torch

from tinyvlm import Error
from tinyvlm.gpt import GPT, GPTConfig
from tinyvlm.plumbing import FORMAT, atomic_write, sha256_file
from tinyvlm.prepared import check_data
from tinyvlm.tokenizers import make_tokenizer


def save_checkpoint(obj, path):
    atomic_write(path, lambda tmp: torch.save(dict(obj, format=FORMAT), tmp))


def load_checkpoint(path, what, script, keys=()):
    """A checkpoint that `script` wrote with this code's FORMAT and holding `keys`, or an Error that says
    what is wrong and which script to run (again)."""
    if not os.path.isfile(path):
        raise Error(f"no {what} at {path}: run {script} first")
    try:
        ck = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:
        raise Error(f"{path} is not a readable {what} ({type(e).__name__}: "
                    f"{str(e).splitlines()[0] if str(e) else ''})")
    if not isinstance(ck, dict) or not set(keys) <= set(ck):
        raise Error(f"{path} is not a {what} written by {script}")
    if ck.get('format') != FORMAT:
        raise Error(f"{path} was written by an older {script} (format {ck.get('format', 1)}, this code reads "
                    f"{FORMAT}): run {script} again")
    return ck


def load_tokenizer(path):
    """The tokenizer vqvae.py saved at path (in eval mode), and its checkpoint (model_args, the data set,
    metrics)."""
    ck = load_checkpoint(path, 'tokenizer checkpoint', 'vqvae.py', ('model_args', 'model', 'dataset'))
    tok = make_tokenizer(**ck['model_args'])
    tok.load_state_dict(ck['model'])
    return tok.eval(), ck


def load_model(path, meta, data_dir, device, dtype='float32'):
    """A trained GPT from a checkpoint of train.py, checked against the prepared data, its weights in
    dtype (bfloat16 where native: faster reading and drawing at the same accuracy)."""
    ck = load_checkpoint(path, 'language-model checkpoint', 'train.py', ('model_args', 'model', 'data'))
    check_data(ck, meta, path, data_dir)
    model = GPT(GPTConfig(**ck['model_args']))
    model.load_state_dict(ck['model'])
    return model.to(device=device, dtype=getattr(torch, dtype)).eval(), ck


def check_tokenizer(meta, data_dir):
    """The tokenizer that prepared data_dir, unchanged since."""
    path = meta['tokenizer']
    if not os.path.isfile(path) or sha256_file(path) != meta['tokenizer_sha256']:
        raise Error(f"the tokenizer {path} that prepared {data_dir} is missing or has changed since: run prepare.py "
                    f"again (and train on the new data)")
    return load_tokenizer(path)[0]


def run_checkpoints(out_dir):
    """Every ckpt_{iter}.pt in out_dir of the newest training run there, in order of iteration (train.py
    stamps each checkpoint with its run; older runs' leftovers are named and left out)."""
    paths = [p for p in glob.glob(os.path.join(out_dir, 'ckpt_*.pt')) if re.fullmatch(r'ckpt_\d+\.pt', os.path.basename(p))]
    paths.sort(key=lambda p: int(re.findall(r'\d+', os.path.basename(p))[0]))
    if not paths:
        raise Error(f"no ckpt_{{iter}}.pt in {out_dir}: run train.py first")

    def run(p):  # mmap reads only what is asked for
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
    return load_checkpoint(path, 'language-model checkpoint', 'train.py', ('config',))['config']['data_dir']
