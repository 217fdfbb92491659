"""
Measure this code on this machine, after nanoGPT's bench.py. Prints one JSON line per figure: the median
of `repeats` timed runs after a warm-up, with their min and max.

    python bench.py                  # needs the default pipeline's outputs (out/vqvae, data/vlm, out/vlm)
    python bench.py --pipeline=True --idx_dir=../shared/mnist   # first run the four scripts here, timed
    python bench.py --pipeline=True --pipeline_config=speedrun --idx_dir=../shared/mnist   # config/*_speedrun.py

- matmul_peak: the device's dense matmul rate in float32 and in bfloat16; the faster is the yardstick for
  model FLOPs utilisation (MFU), so that training in the slower dtype cannot look efficient
- train_*: train.py itself, run for a few iterations with the default config and the published one
  (config/train_mnist_vlm_seed.py), as one process and as two under torchrun (train_*_2procs);
  tokens/s and MFU = FLOPs per token x tokens/s / matmul peak
- generate: 10,000 class -> image samples (grammar-constrained, with guidance, key/value cache)
- classify: the classes of the 10,000 test images read once; classify_views: with a second look at
  unsure images (views); tokenizer_encode / tokenizer_decode: 10,000 images
- pipeline_*: wall time of vqvae.py, prepare.py, train.py and sample.py with their defaults (once), or
  with config/SCRIPT_NAME.py where it exists for pipeline_config NAME
The sampling settings below are sample.py's (before an evaluation chooses them), repeated here so that
the bench measures the same work whatever sample.py is told.
"""
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

import torch

from tinyvlm import Error
from tinyvlm.checkpoints import check_tokenizer, load_model
from tinyvlm.configurator import configure, read_config
from tinyvlm.inference import generate_images, mirrored, read_labels
from tinyvlm.plumbing import matmul_rates, pick_device, pick_dtype, start_script
from tinyvlm.prepared import load_images, load_meta, load_split
from tinyvlm.sequences import Codec

start_script()  # errors the user can fix end in one line

# -----------------------------------------------------------------------------
device = 'auto'
repeats = 5
out_dir = 'out/vlm'            # the trained default model that sampling is timed with
data_dir = 'data/vlm'
n_samples = 10000
batch_size = 250               # sample.py's defaults: images per forward pass, ...
temperature = 0.9              # ... its sampling before an evaluation has chosen one (the time does not depend on it),
guidance = 1.5
views = 9                      # ... the second look at unsure readings
view_threshold = 0.95
train_configs = 'default,config/train_mnist_vlm_seed.py'
train_window = 10              # iterations per timed training window (repeats windows after one warm-up)
train_procs = '1,2'            # train.py run as this many processes (torchrun, which share the cores)
pipeline = False               # also run the whole default pipeline (minutes) and time each stage
pipeline_config = ''           # NAME: each script with config/SCRIPT_NAME.py where that exists ('speedrun')
idx_dir = ''                   # MNIST for the pipeline: see vqvae.py
seed = 1337
# -----------------------------------------------------------------------------
configure(globals())
device = pick_device(device)
HERE = os.path.dirname(os.path.abspath(__file__))


def sync():
    if device.startswith('cuda'):
        torch.cuda.synchronize()
    elif device == 'mps':
        torch.mps.synchronize()


def timed(fn, n=repeats):
    fn()  # warm-up
    times = []
    for _ in range(n):
        sync()
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    return times


def report(name, values, unit, **extra):
    line = dict(name=name, median=statistics.median(values), min=min(values), max=max(values), n=len(values),
                unit=unit, device=device, **extra)
    print(json.dumps(line), flush=True)
    return line['median']


def matmul_peak(name='matmul_peak'):
    """Dense matmul rate in float32 and in bfloat16; the faster is the yardstick, so that training in
    a slow dtype cannot look efficient."""
    reps = 20 if device.startswith('cuda') else 3
    peaks = {}
    for dtype in ('float32', 'bfloat16'):
        dt = getattr(torch, dtype)
        # a dtype the device emulates (bfloat16 on a CPU without it) is timed on smaller matrices, so
        # that each timing takes about a second rather than minutes
        fits = int((matmul_rates(device, (dtype,), n=256, rounds=2)[dtype] * 1e9 / (2 * reps)) ** (1 / 3))
        n = min(4096 if device.startswith('cuda') else 2048, max(256, 1 << (max(fits, 1).bit_length() - 1)))
        a, b = torch.randn(n, n, device=device, dtype=dt), torch.randn(n, n, device=device, dtype=dt)
        def f():
            for _ in range(reps):
                a @ b
        peaks[dtype] = report(f'{name}_{dtype}', [2 * n ** 3 * reps / t / 1e9 for t in timed(f)], 'GFLOP/s', size=n)
    best = max(peaks, key=peaks.get)
    print(json.dumps(dict(name=name, value=peaks[best], dtype=best, auto=pick_dtype(device), unit='GFLOP/s')), flush=True)
    return peaks[best]


def train_throughput(cfg, procs):
    """Run train.py (as procs processes under torchrun when more than one) for (repeats + 1) x
    train_window iterations; the first window is the warm-up. MFU is against the matmul peak measured
    again right after, so that both see the machine in the same state (on a shared machine the peak
    itself moves over minutes)."""
    name = 'default' if cfg == 'default' else os.path.splitext(os.path.basename(cfg))[0]
    name += f'_{procs}procs' if procs > 1 else ''
    gpus = torch.cuda.device_count() if device.startswith('cuda') else 0
    if gpus and procs > gpus:  # one GPU per process
        print(json.dumps(dict(name=f'train_{name}', skipped=f'{procs} processes on {gpus} GPU(s)')))
        return
    with tempfile.TemporaryDirectory() as tmp:
        args = [] if cfg == 'default' else [os.path.join(HERE, cfg)]
        launch = ['-m', 'torch.distributed.run', '--standalone', f'--nproc_per_node={procs}'] if procs > 1 else []
        cmd = [sys.executable, *launch, os.path.join(HERE, 'train.py'), *args, f'--data_dir={os.path.abspath(data_dir)}',
               f'--out_dir={tmp}', f'--max_iters={train_window * (repeats + 1)}', '--cycles=1', f'--log_interval={train_window}',
               '--eval_interval=100000', '--eval_iters=1', '--eval_classify=10', f'--device={device}']
        p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode:
        raise Error(f"train.py failed for {cfg} on {procs} process(es): {p.stderr.strip().splitlines()[-1]}")
    tokens = int(re.search(r'([\d,]+) tokens per iteration', p.stdout).group(1).replace(',', ''))
    mflop = float(re.search(r'([\d.]+) MFLOP per token', p.stdout).group(1))
    params = int(re.search(r'([\d,]+) parameters', p.stdout).group(1).replace(',', ''))
    ms = [float(x) for x in re.findall(r'([\d.]+) ms/iter', p.stdout)][1:]
    tps = [tokens / (m / 1000) for m in ms]
    peak = matmul_peak(f'matmul_peak_after_{name}')
    report(f'train_{name}_ms_per_iter', ms, 'ms', parameters=params, tokens_per_iter=tokens)
    med = report(f'train_{name}_tokens_per_s', tps, 'tokens/s')
    report(f'train_{name}_mfu', [t * mflop * 1e6 / 1e9 / peak for t in tps], 'fraction of matmul_peak',
           gflops=med * mflop / 1e3)


def sampling():
    meta = load_meta(data_dir)
    codec = Codec.from_meta(meta)
    mirror = mirrored(meta)
    tok = check_tokenizer(meta, data_dir).to(device)
    model, _ = load_model(os.path.join(out_dir, 'ckpt.pt'), meta, data_dir, device, pick_dtype(device))
    ys = sorted(i % len(codec.classes) for i in range(n_samples))
    gen = lambda: generate_images(model, codec, tok, ys, torch.Generator(device).manual_seed(seed),
                                  temperature=temperature, batch_size=batch_size, guidance=guidance)
    report('generate', [n_samples / t for t in timed(gen)], 'images/s', images=n_samples)
    codes = load_split(data_dir, 'test', meta)[1][:n_samples]
    test, labels = (t[:n_samples] for t in load_images(data_dir, 'test', meta))
    test = test.to(device)
    for name, v in (('classify', 1), ('classify_views', views)):
        read = lambda: read_labels(model, codec, tok, codes, test, v, view_threshold, batch_size, mirror=mirror)
        acc = (read().argmax(1).cpu() == labels).float().mean().item()
        report(name, [len(codes) / t for t in timed(read)], 'images/s', images=len(codes), views=v, accuracy=acc)
    codes = codes[:n_samples].to(device)
    images = tok.decode(codes, batch_size)
    report('tokenizer_encode', [len(images) / t for t in timed(lambda: tok.encode(images, batch_size))], 'images/s')
    report('tokenizer_decode', [len(codes) / t for t in timed(lambda: tok.decode(codes, batch_size))], 'images/s')


def whole_pipeline():
    """The four scripts with their defaults (or pipeline_config's files), here, as a user runs them: their
    outputs replace those in out/ and data/, and the sampling figures then use them. -> (out_dir, data_dir)"""
    total, out = 0.0, 'out/vlm'
    for script, args in (('vqvae.py', [f'--idx_dir={os.path.abspath(idx_dir)}'] if idx_dir else []),
                         ('prepare.py', []), ('train.py', []), ('sample.py', [])):
        args += [] if script == 'prepare.py' else [f'--device={device}']
        cfg = os.path.join(HERE, 'config', f'{script[:-3]}_{pipeline_config}.py')
        if pipeline_config and os.path.isfile(cfg):
            args.insert(0, cfg)
            if script == 'sample.py':  # where its eval.json goes
                out = read_config(cfg)[1].get('out_dir', out)
        t = time.perf_counter()
        p = subprocess.run([sys.executable, os.path.join(HERE, script), *args], capture_output=True, text=True)
        dt = time.perf_counter() - t
        if p.returncode:
            raise Error(f"{script} failed in the pipeline: {p.stderr.strip().splitlines()[-1]}")
        total += dt
        report(f'pipeline_{script[:-3]}', [dt], 's')
    ev = json.load(open(os.path.join(out, 'eval.json'), encoding='utf-8'))
    q = ev['quality']  # what sample.py judged (nothing with judge=False)
    report('pipeline_total', [total], 's', classification_accuracy=ev['checkpoints'][-1]['classification_accuracy'],
           **{k: q[k] for k in ('generation_fidelity', 'generation_frechet', 'generation_validity',
                                'distinct_generations', 'reconstruction_fidelity', 'reconstruction_frechet') if k in q})
    return out, ev['data_dir']


torch.manual_seed(seed)
print(json.dumps(dict(name='machine', device=device, torch=torch.__version__, threads=torch.get_num_threads(),
                      cpu_count=os.cpu_count(), gpu=torch.cuda.get_device_name() if device.startswith('cuda') else None)))
matmul_peak()
if pipeline:
    out_dir, data_dir = whole_pipeline()
for cfg in filter(None, train_configs.split(',')):
    for procs in (int(n) for n in str(train_procs).split(',')):
        train_throughput(cfg, procs)
sampling()
