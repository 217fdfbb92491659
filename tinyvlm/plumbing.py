"""
What every script needs and no model does: one-line errors, files written atomically, one run per
folder, the choice of device and dtype, and progress lines.

Every file is written under a temporary name and renamed into place, so a kill never leaves half a file.
"""
import atexit
import ctypes
import hashlib
import json
import os
import platform
import re
import sys
import time
from contextlib import nullcontext

import numpy as np
import torch

from tinyvlm import Error

FORMAT = 4  # of every checkpoint and meta.json: raised whenever what they hold changes


def start_script():
    """What each script does first: errors the user can fix (tinyvlm.Error, and what the system refuses:
    a file or folder, a full disk) end the script with one line, 'error: ...', and status 1, never a
    traceback; and freed memory is kept for reuse (keep_freed_memory)."""
    def hook(kind, value, tb):
        if issubclass(kind, Error):
            print(f"error: {value}", file=sys.stderr)
        elif issubclass(kind, OSError):
            print(f"error: {str(value.filename) + ': ' if value.filename else ''}{value.strerror or value}",
                  file=sys.stderr)
        else:  # a bug: the whole traceback
            sys.__excepthook__(kind, value, tb)
    sys.excepthook = hook
    keep_freed_memory()


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


def write_npy(path, array):
    atomic_write(path, lambda tmp: np.save(tmp, array))


def safe_name(name):
    """A name (a class's, a data set's) as part of a file name."""
    return re.sub(r'[\\/:*?"<>|\s]+', '-', name).strip('-') or 'class'


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
            raise Error(f"another {what} is running in {folder} (pid {pid}): wait for it to end, or choose another "
                        f"folder")
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
# device and dtype

def keep_freed_memory():
    """Have glibc's malloc keep freed blocks of up to 32 MB for reuse. By default it maps blocks of a
    few MB afresh from the operating system and hands them back when freed, so on a CPU every training
    step pays page faults and zeroing for its large activations; the usual cure is another allocator
    (jemalloc, tcmalloc), this needs none. Elsewhere (macOS, Windows) a no-op."""
    if not sys.platform.startswith('linux'):
        return
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(-1, 2 ** 30)  # M_TRIM_THRESHOLD: keep up to 1 GB free at the top of the heap
        libc.mallopt(-3, 2 ** 25)  # M_MMAP_THRESHOLD: serve blocks up to 32 MB (glibc's maximum) from the heap
    except (OSError, AttributeError):  # a C library without mallopt
        pass


def has_mps():
    """An Apple GPU that torch can use."""
    return getattr(torch.backends, 'mps', None) is not None and torch.backends.mps.is_available()


def pick_device(device='auto'):
    """'auto' -> cuda if there is one, else mps (Apple), else cpu."""
    if device != 'auto':
        return device
    return 'cuda' if torch.cuda.is_available() else 'mps' if has_mps() else 'cpu'


def matmul_rates(device, dtypes=('float32', 'bfloat16'), n=1024, rounds=5):
    """{dtype: GFLOP/s} of an n x n matmul on device, the best of `rounds` timings each (after a warm-up).
    The dtypes are timed in turn, round after round, so that a load that comes and goes meanwhile (another
    program taking a core) weighs on each alike, not on whichever happened to be timed then."""
    pairs = {d: (torch.randn(n, n, device=device, dtype=getattr(torch, d)),
                 torch.randn(n, n, device=device, dtype=getattr(torch, d))) for d in dtypes}
    best = {d: float('inf') for d in dtypes}
    for i in range(rounds + 1):
        for d, (a, b) in pairs.items():
            if device.startswith('cuda'):
                torch.cuda.synchronize()
            t = time.perf_counter()
            a @ b
            if device.startswith('cuda'):
                torch.cuda.synchronize()
            if i:
                best[d] = min(best[d], time.perf_counter() - t)
    return {d: 2 * n ** 3 / t / 1e9 for d, t in best.items()}


def machine_key():
    """This machine as far as speed goes: its processor, cores, threads and torch."""
    return (f"{platform.processor() or platform.machine()} {os.cpu_count()} cores, {torch.get_num_threads()} threads, "
            f"torch {torch.__version__}")


def once_per_machine(cache, key, measure):
    """What measure() found on this machine (key: machine_key() and whatever else it depends on), from
    the JSON file cache in out/, measured and added there the first time; a read-only folder measures
    it again next run."""
    try:
        with open(cache, encoding='utf-8') as f:
            known = json.load(f)
    except (OSError, ValueError):
        known = {}
    if key not in known:
        known[key] = measure()
        try:
            write_json(cache, known)
        except OSError:
            pass
    return known[key]


def fast_bf16(device, cache=os.path.join('out', 'dtype_auto.json')):
    """Is bfloat16 faster than float32 here? cuda: where supported (Ampere or newer). A CPU: timed once
    per machine (bfloat16 must run matmuls 1.2x float32's rate to pay for its conversions; some CPUs
    only emulate it), the answer cached in out/ so that every run on this machine trains in the same
    dtype."""
    if device.startswith('cuda'):
        return torch.cuda.is_bf16_supported()
    if device != 'cpu':
        return False
    def measure():
        rates = matmul_rates('cpu', n=512)  # smaller first: where bfloat16 is emulated, 1024 takes seconds a matmul
        if rates['bfloat16'] >= rates['float32'] / 4:  # not plainly emulated: decided at the larger size
            rates = matmul_rates('cpu')
        return dict(bfloat16=rates['bfloat16'] >= 1.2 * rates['float32'], gflops=rates)

    return once_per_machine(cache, machine_key(), measure)['bfloat16']


def compile_pays(model, step, steps, config, device, cache=os.path.join('out', 'compile_auto.json'), warmup=6,
                 rounds=4, window=3):
    """Does torch.compile pay for `steps` training steps of model here? step(m, i) runs one (a forward
    and backward of m over batch i; the gradients it leaves are cleared). Timed once per machine and
    config (model and batch shapes, dtype: config, a dict): warmup steps each way (compiled, the
    compiling, once per shape it meets), then `rounds` windows of `window` steps each way over the same
    batches, alternating, so that a machine whose speed drifts weighs on both alike; the times cached
    in out/. A run that timed it compiles if a compiled step is faster (the compiling is done); a later
    one if the time saved over its steps is more than the compiling took.
    Where compiling fails (no C compiler, say), the run trains eager and the cache says why ('failed').
    -> (whether to compile, {'eager', 'compiled': seconds per step (None where it failed), 'compiling':
    seconds}, the model compiled if it was timed now, else None)"""
    key = f"{machine_key()} {device}: " + json.dumps(config, sort_keys=True)
    ways = {}

    def run(m, batches):
        t = time.perf_counter()
        for i in batches:
            step(m, i)
        if device.startswith('cuda'):
            torch.cuda.synchronize()
        return time.perf_counter() - t

    def measure():
        ways.update(eager=model, compiled=torch.compile(model))
        warm = run(model, range(warmup))
        try:
            first = run(ways['compiled'], range(warmup))
        except Exception as e:  # no C compiler, a platform inductor does not support: eager it is, and why
            model.zero_grad(set_to_none=True)
            why = (str(e).strip().splitlines() or [''])[0][:300]
            return dict(eager=warm / warmup, compiled=None, compiling=0.0, failed=f"{type(e).__name__}: {why}")
        spent = dict(eager=0.0, compiled=0.0)
        for r in range(rounds):
            batches = range(warmup + r * window, warmup + (r + 1) * window)
            for way in (('eager', 'compiled') if r % 2 else ('compiled', 'eager')):
                spent[way] += run(ways[way], batches)
        model.zero_grad(set_to_none=True)
        t = {way: s / (rounds * window) for way, s in spent.items()}
        return dict(t, compiling=max(0.0, first - warmup * t['compiled']))

    t = once_per_machine(cache, key, measure)
    if t['compiled'] is None:
        return False, t, None
    if ways:  # timed now: the compiling is done
        return t['compiled'] < t['eager'], t, ways['compiled']
    return (t['eager'] - t['compiled']) * steps > t['compiling'], t, None


def pick_dtype(device, dtype='auto'):
    """'auto' -> 'bfloat16' where it is faster than float32 here (fast_bf16), else 'float32'; any
    other dtype as given (configurator's rule has checked it)."""
    if dtype == 'auto':
        return 'bfloat16' if fast_bf16(device) else 'float32'
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
        self.what, self.total, self.unit, self.every = what, total, unit, every
        self.tty = sys.stdout.isatty()
        self.start = self.last = time.time()
        self.done = 0

    def update(self, n=1):
        self.done += n
        now = time.time()
        if now - self.last >= (0.2 if self.tty else self.every) or self.done >= self.total:
            self.last = now
            rate = self.done / max(now - self.start, 1e-9)
            left = (self.total - self.done) / rate if rate > 0 else 0
            line = (f"{self.what}: {self.done:,}/{self.total:,}{' ' + self.unit if self.unit else ''} "
                    f"({rate:,.1f}/s, {left:.0f}s left)")
            print(('\r' + line + '\033[K') if self.tty else line, end='' if self.tty else '\n', flush=True)
        if self.done >= self.total and self.tty:
            print(flush=True)
