"""
The plumbing that is not a model: atomic writes, checkpoints (saving, safe loading, rebuilding the
models), prepared data checked against its meta.json, and the choice of device and dtype.

Every file is written under a temporary name and renamed into place, so a kill never leaves half a
file; every checkpoint loads with weights_only=True, so loading never runs code; every data file is
compared with the SHA-256 that meta.json holds, so a half-rewritten folder is noticed.
"""
import atexit
import hashlib
import json
import os
from contextlib import nullcontext

import numpy as np
import torch


# ----------------------------------------------------------------------------------------------------
# files

def atomic_write(path, write):
    """Fill a temporary file beside `path`, then rename it onto `path`. write: text (UTF-8), bytes,
    or a function that writes the file whose name it is given."""
    folder, name = os.path.split(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".tmp{os.getpid()}.{name}")  # same folder (rename is atomic), same ending
    try:
        if callable(write):
            write(tmp)
        elif isinstance(write, str):
            with open(tmp, 'w', encoding='utf-8') as f:
                f.write(write)
        else:
            with open(tmp, 'wb') as f:
                f.write(write)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_json(path, obj):
    atomic_write(path, json.dumps(obj, indent=1, ensure_ascii=False) + '\n')


def save_npy(path, array):
    atomic_write(path, lambda tmp: np.save(tmp, array))


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            h.update(block)
    return h.hexdigest()


def lock_folder(folder, what):
    """Hold folder/.lock while this process runs, so that a second run on the same folder is refused;
    the operating system lets go of it when the process ends, however it ends, and a clean exit removes
    the file. Keep the returned file."""
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, '.lock')
    try:
        import fcntl
    except ImportError:  # not a POSIX system: no lock
        return None
    while True:
        f = open(path, 'a+')
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            pid = f.read().strip() or '?'
            f.close()
            raise SystemExit(f"error: another {what} is running in {folder} (pid {pid}): wait for it to end, or "
                             f"choose another folder")
        try:  # the file we locked may be one that its last holder removed as it exited: then lock the new one
            if os.path.samestat(os.fstat(f.fileno()), os.stat(path)):
                break
        except FileNotFoundError:
            pass
        f.close()
    os.ftruncate(f.fileno(), 0)
    f.write(f"{os.getpid()}\n")
    f.flush()
    atexit.register(_unlock, f, path)
    return f


def _unlock(f, path):
    try:
        os.unlink(path)  # removed while still held, so that no other run can lock this file afterwards
    except OSError:
        pass
    f.close()


# ----------------------------------------------------------------------------------------------------
# checkpoints

def save_checkpoint(obj, path):
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def load_checkpoint(path, what, hint=''):
    """torch.load with weights_only=True, and a one-line error for a missing or unreadable file."""
    if not os.path.isfile(path):
        raise SystemExit(f"error: no {what} at {path}" + (f": {hint}" if hint else ''))
    try:
        return torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:
        raise SystemExit(f"error: {path} is not a readable {what} ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''})")


def load_tokenizer(path):
    """Rebuild a VQVAE from the one checkpoint vqvae.py writes (weights, model_args, the data set)."""
    from model import VQVAE
    ckpt = load_checkpoint(path, 'tokenizer checkpoint', 'run vqvae.py first')
    if not isinstance(ckpt, dict) or not {'model_args', 'model', 'dataset'} <= set(ckpt):
        raise SystemExit(f"error: {path} is not a tokenizer checkpoint written by this vqvae.py: run vqvae.py again")
    try:
        tok = VQVAE(**ckpt['model_args'])
        tok.load_state_dict(ckpt['model'])
    except (TypeError, RuntimeError) as e:
        raise SystemExit(f"error: {path} does not fit this code's tokenizer ({str(e).splitlines()[0][:100]}): "
                         f"run vqvae.py again")
    return tok.eval(), ckpt


def load_model(path, meta, data_dir, device, dtype='float32'):
    """A trained GPT from a checkpoint of train.py, checked against the prepared data, its weights in
    dtype (bfloat16 where native: faster reading and drawing at the same accuracy)."""
    from model import GPT, GPTConfig
    ck = load_checkpoint(path, 'language-model checkpoint', 'run train.py first')
    if not isinstance(ck, dict) or 'model_args' not in ck or 'data' not in ck:
        raise SystemExit(f"error: {path} is not a checkpoint written by train.py")
    check_data(ck, meta, path, data_dir)
    try:
        model = GPT(GPTConfig(**ck['model_args']))
        model.load_state_dict(ck['model'])
    except (TypeError, RuntimeError) as e:
        raise SystemExit(f"error: {path} does not fit this code's GPT ({str(e).splitlines()[0][:100]}): train again")
    return model.to(device=device, dtype=getattr(torch, dtype)).eval(), ck


# ----------------------------------------------------------------------------------------------------
# prepared data

def load_meta(data_dir):
    """meta.json of a prepared data_dir, or a one-line error saying to run prepare.py."""
    path = os.path.join(data_dir, 'meta.json')
    if not os.path.isfile(path):
        raise SystemExit(f"error: no prepared data in {data_dir} ({path} is missing): run prepare.py first")
    try:
        with open(path, encoding='utf-8') as f:
            meta = json.load(f)
    except ValueError as e:
        raise SystemExit(f"error: {path} is not valid JSON ({e}): run prepare.py again")
    if not isinstance(meta, dict) or 'dataset' not in meta or 'files' not in meta:
        raise SystemExit(f"error: {path} was written by an older prepare.py: run prepare.py again")
    return meta


def load_array(data_dir, name, meta):
    """One data file of a prepared folder (.npy or .bin), after checking it is the file meta.json
    describes."""
    path = os.path.join(data_dir, name)
    if not os.path.isfile(path):
        raise SystemExit(f"error: {path} is missing: run prepare.py again")
    if meta['files'].get(name) != sha256_file(path):
        raise SystemExit(f"error: {path} is not the file {data_dir}/meta.json describes (prepare.py "
                         f"still running, or interrupted?): run prepare.py again")
    if name.endswith('.npy'):
        return np.load(path)
    return np.fromfile(path, dtype=meta['dtype'])


def load_split(data_dir, split, meta):
    """(sequences (N, block_size), codes (N, tokens_per_image), labels (N,), tasks (N,)), int64 tensors."""
    seqs = load_array(data_dir, f'{split}.bin', meta)
    if len(seqs) % meta['block_size']:
        raise SystemExit(f"error: {data_dir}/{split}.bin is not a whole number of {meta['block_size']}-token "
                         f"sequences: run prepare.py again")
    out = [seqs.reshape(-1, meta['block_size'])] + [load_array(data_dir, f'{split}_{k}.npy', meta)
                                                    for k in ('codes', 'labels', 'tasks')]
    return tuple(torch.from_numpy(a.astype(np.int64)) for a in out)


def load_images(data_dir, split, meta):
    """The split's original images (N, C, S, S), float32 in [0, 1], and their labels (N,) (the moved
    training copies are not kept)."""
    images = load_array(data_dir, f'{split}_images.npy', meta)
    labels = load_array(data_dir, f'{split}_labels.npy', meta)[:len(images)]  # the originals come first
    return torch.from_numpy(images).float() / 255.0, torch.from_numpy(labels.astype(np.int64))


def data_signature(meta):
    """What a language-model checkpoint must agree on with the prepared data it is used with."""
    return {k: meta[k] for k in ('vocab', 'block_size', 'tokens_per_image', 'codebook_size', 'classes', 'tasks',
                                 'tokenizer_sha256')}


def check_data(ckpt, meta, path, data_dir):
    if ckpt.get('data') != data_signature(meta):
        raise SystemExit(f"error: {path} was trained on other data than {data_dir} (its vocabulary, classes or "
                         f"tokenizer differ from {data_dir}/meta.json): use the data_dir it was trained on")


def check_tokenizer(meta, data_dir):
    """The tokenizer that prepared data_dir, unchanged since."""
    path = meta['tokenizer']
    if not os.path.isfile(path) or sha256_file(path) != meta['tokenizer_sha256']:
        raise SystemExit(f"error: the tokenizer {path} that prepared {data_dir} is missing or has changed "
                         f"since: run prepare.py again (and train on the new data)")
    return load_tokenizer(path)[0]


# ----------------------------------------------------------------------------------------------------
# device and dtype

def keep_freed_memory():
    """Have glibc's malloc keep freed blocks of up to 32 MB for reuse. By default it maps blocks of a
    few MB afresh from the operating system and hands them back when freed, so on a CPU every training
    step pays page faults and zeroing for its large activations (README, performance); the usual cure
    is another allocator (jemalloc, tcmalloc), this needs none. Elsewhere (macOS, Windows) a no-op."""
    import ctypes
    import sys
    if not sys.platform.startswith('linux'):
        return
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(-1, 2 ** 30)  # M_TRIM_THRESHOLD: keep up to 1 GB free at the top of the heap
        libc.mallopt(-3, 2 ** 25)  # M_MMAP_THRESHOLD: serve blocks up to 32 MB (glibc's maximum) from the heap
    except (OSError, AttributeError):  # a C library without mallopt
        pass


keep_freed_memory()  # every script imports this module before any work


def pick_device(device='auto'):
    """'auto' -> cuda if there is one, else mps (Apple), else cpu."""
    if device != 'auto':
        return device
    if torch.cuda.is_available():
        return 'cuda'
    if getattr(torch.backends, 'mps', None) is not None and torch.backends.mps.is_available():
        return 'mps'
    return 'cpu'


def matmul_rate(device, dtype, n=1024, reps=5):
    """GFLOP/s of an n x n matmul in dtype on device, the best of reps (after a warm-up)."""
    import time
    a = torch.randn(n, n, device=device, dtype=getattr(torch, dtype))
    b = torch.randn(n, n, device=device, dtype=getattr(torch, dtype))
    best = float('inf')
    for i in range(reps + 1):
        if device.startswith('cuda'):
            torch.cuda.synchronize()
        t = time.perf_counter()
        a @ b
        if device.startswith('cuda'):
            torch.cuda.synchronize()
        if i:
            best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best / 1e9


def fast_bf16(device, cache=os.path.join('out', 'dtype_auto.json')):
    """Is bfloat16 faster than float32 here? cuda: where supported (Ampere or newer). A CPU: timed once
    per machine (bfloat16 must run matmuls 1.2x float32's rate to pay for its conversions; CPUs that
    emulate it, or lack AMX next to AVX512-BF16, run it slower), the answer cached in out/ so that
    every run on this machine trains in the same dtype."""
    if device.startswith('cuda'):
        return torch.cuda.is_bf16_supported()
    if device != 'cpu':
        return False
    import platform
    key = f"{platform.processor() or platform.machine()} {os.cpu_count()} cores, {torch.get_num_threads()} threads, torch {torch.__version__}"
    try:
        with open(cache, encoding='utf-8') as f:
            known = json.load(f)
    except (OSError, ValueError):
        known = {}
    if key not in known:
        rates = {d: matmul_rate('cpu', d) for d in ('float32', 'bfloat16')}
        known[key] = dict(bfloat16=rates['bfloat16'] >= 1.2 * rates['float32'], gflops=rates)
        try:
            write_json(cache, known)
        except OSError:
            pass  # a read-only folder: time it again next run
    return known[key]['bfloat16']


def pick_dtype(device, dtype='auto'):
    """'auto' -> 'bfloat16' where it is faster than float32 here (fast_bf16), else 'float32'."""
    if dtype == 'auto':
        return 'bfloat16' if fast_bf16(device) else 'float32'
    if dtype not in ('float32', 'bfloat16', 'float16'):
        raise SystemExit(f"error: dtype must be 'auto', 'float32', 'bfloat16' or 'float16', got {dtype!r}")
    return dtype


def autocast(device, dtype):
    """Mixed precision for dtype (weights stay float32), or nothing for float32."""
    if dtype == 'float32':
        return nullcontext()
    return torch.autocast(device.split(':')[0], dtype=getattr(torch, dtype))


# ----------------------------------------------------------------------------------------------------
# progress

class Progress:
    """Progress of a long step: count, rate and time left, on one updating line in a terminal, or a
    plain line every few seconds when the output goes to a file (so no step stays silent long)."""

    def __init__(self, what, total, unit='', every=5.0):
        import sys
        import time
        self.what, self.total, self.unit, self.every = what, total, unit, every
        self.tty, self.clock = sys.stdout.isatty(), time.time
        self.start = self.last = self.clock()
        self.done = 0

    def update(self, n=1):
        self.done += n
        now = self.clock()
        if now - self.last >= (0.2 if self.tty else self.every) or self.done >= self.total:
            self.last = now
            rate = self.done / max(now - self.start, 1e-9)
            left = (self.total - self.done) / rate if rate > 0 else 0
            line = (f"{self.what}: {self.done:,}/{self.total:,}{' ' + self.unit if self.unit else ''} "
                    f"({rate:,.1f}/s, {left:.0f}s left)")
            print(('\r' + line + '\033[K') if self.tty else line, end='' if self.tty else '\n', flush=True)
        if self.done >= self.total and self.tty:
            print(flush=True)
