"""The four scripts run as a user runs them, with tiny settings: on real MNIST (tokenizer -> prepare ->
train -> sample, resume, several processes) and on a folder of colour images that the test makes; and
the one-line errors for bad input."""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from conftest import REPO, TINY, error_line, run_script
from make_data import make_folder


def torchrun():
    """The command that starts several training processes: torchrun, or its module where no script is on PATH."""
    script = shutil.which('torchrun')
    return [script] if script else [sys.executable, '-m', 'torch.distributed.run']


def code_class(meta):
    """A regex character class of the prepared data's image-code characters."""
    return '[' + re.escape(''.join(meta['vocab'][meta['code_offset']:])) + ']'


@pytest.mark.parametrize('name, tokens, codes', [('vqvae', 49, 125), ('vqvae_seed', 8, 26)])
def test_tokenizer_outputs(work, name, tokens, codes):
    ckpt = torch.load(work / f'out/{name}/ckpt.pt', weights_only=True)
    assert ckpt['model_args']['tokens_per_image'] == tokens and ckpt['model_args']['codebook_size'] == codes
    m = json.loads((work / f'out/{name}/metrics.json').read_text())['test']
    assert m['psnr'] > 10 and 1 <= m['perplexity'] <= codes and m['codes_used'] + m['dead_codes'] == codes
    assert (work / f'out/{name}/reconstructions.png').stat().st_size > 0


@pytest.mark.parametrize('name, block, tokens, vocab, train', [
    ('vlm', 56, 49, 141, 100000),    # the default: 7x7 grid of 125 codes, one moved copy (--augment=1)
    ('seed_vlm', 16, 8, 42, 50000)])    # the published tokenizer: 8 letters
def test_prepared_data(work, name, block, tokens, vocab, train):
    d = work / 'data' / name
    meta = json.loads((d / 'meta.json').read_text(encoding='utf-8'))
    assert meta['block_size'] == block and meta['tokens_per_image'] == tokens and meta['vocab_size'] == vocab
    assert meta['classes'] == list('0123456789') and meta['key'] == 'number' and meta['dataset']['name'] == 'mnist'
    code = code_class(meta)
    codes = meta['vocab'][meta['code_offset']:]
    assert codes == list('ABCDEFGHIJKLMNOPQRSTUVWXYZ') if tokens == 8 else all(c.isprintable() and ord(c) < 0xE000 for c in codes)
    for split, n in (('train', train), ('val', 10000), ('test', 10000)):
        lines = (d / f'{split}.txt').read_text(encoding='utf-8').splitlines()
        # 17 characters of text in 4 tokens ('number:', the digit, ', image:', '.'), padded to block tokens
        assert len(lines) == n and all(len(s) == tokens + 17 + block - (tokens + 4) for s in lines)
        pat = re.compile(rf'(number:\d, image:{code}{{{tokens}}}\.|image:{code}{{{tokens}}}, number:\d\.)#+')
        assert all(pat.fullmatch(s) for s in lines)
        gen = sum(s.startswith('number') for s in lines) / n
        assert 0.45 < gen < 0.55  # the two tasks 50/50
        ids = np.fromfile(d / f'{split}.bin', dtype=np.uint16).reshape(n, block)
        assert ''.join(meta['vocab'][i] for i in ids[0]) == lines[0]
        assert np.load(d / f'{split}_codes.npy').shape == (n, tokens)
        assert np.load(d / f'{split}_images.npy').shape == (n if split != 'train' else 50000, 1, 28, 28)
    assert np.load(d / 'code_features.npy').shape[0] == vocab - 16
    assert (d / 'logo.png').stat().st_size > 0
    assert not [f for f in os.listdir(d) if f.startswith('.')]  # no temporary files left
    # a fixed seed makes it reproducible
    before = (d / 'train.txt').read_bytes()
    tokenizer = 'out/vqvae/ckpt.pt' if name == 'vlm' else 'out/vqvae_seed/ckpt.pt'
    run_script('prepare.py', f'--data_dir=data/{name}', f'--tokenizer={tokenizer}',
               '--augment=1' if name == 'vlm' else '--augment=0', cwd=work)
    assert (d / 'train.txt').read_bytes() == before
    # a failed run leaves what was prepared as it was
    files = {f: (d / f).read_bytes() for f in ('meta.json', 'test.bin', 'logo.png')}
    assert 'block_size 8 is too short' in error_line(run_script(
        'prepare.py', f'--data_dir=data/{name}', f'--tokenizer={tokenizer}', '--block_size=8', cwd=work, check=False))
    assert all((d / f).read_bytes() == b for f, b in files.items())


def test_train_and_sample(work):
    run_script('train.py', *TINY, '--max_iters=30', '--eval_interval=15', '--out_dir=out/run', cwd=work)  # an older run
    run_script('train.py', *TINY, '--max_iters=20', '--eval_interval=10', '--out_dir=out/run', cwd=work)
    out = work / 'out/run'
    assert {'ckpt.pt', 'ckpt_10.pt', 'ckpt_20.pt'} <= set(os.listdir(out))
    p = run_script('sample.py', '--out_dir=out/run', '--num_samples=2', '--fidelity_samples=30', '--sweep=0.5,1.0',
                   '--sweep_guidance=1,2', '--sweep_images=200', '--fit_images=50', cwd=work)
    meta = json.loads((work / 'data/vlm/meta.json').read_text(encoding='utf-8'))
    report = json.loads((out / 'eval.json').read_text())
    assert [r['iter'] for r in report['checkpoints']] == [10, 20]  # the newest run's only
    assert 'left out, from other runs: ckpt_15.pt, ckpt_30.pt' in p.stdout
    q = report['quality']
    assert q['iter'] == 20 and q['generated'] == 300 and q['generation_validity'] == 1.0
    assert 0 <= q['generation_fidelity'] <= 1 and list(q['generation_fidelity_per_class']) == list('0123456789')
    assert q['reference_test_accuracy'] > 0.97 and q['reconstruction_fidelity'] > 0.5  # a real CNN, a 1-epoch tokenizer
    assert q['generation_frechet'] > 0 and q['reconstruction_frechet'] > 0 and 1 <= q['distinct_generations'] <= 300
    assert q['reference'].endswith(os.path.join('assets', 'reference_mnist.pt'))  # MNIST's own, shipped
    assert not (work / 'out/reference_mnist.pt').exists()
    assert report['dataset'] == 'MNIST' and 'quality (reference classifier' in p.stdout
    for r in report['checkpoints']:
        assert r['n_test'] == 10000 and 0 <= r['classification_accuracy'] <= 1 and r['generation_validity'] == 1.0
        assert abs(r['classification_stderr'] - (r['classification_accuracy'] * (1 - r['classification_accuracy']) / 1e4) ** 0.5) < 1e-9
    assert (out / 'accuracy.png').is_file() and (out / 'samples_20.png').is_file()
    assert 'test accuracy' in p.stdout
    fit = report['checkpoints'][-1]['fit']  # the last checkpoint's reading of each split's first images, one view
    assert 'fit' not in report['checkpoints'][0] and list(fit) == ['train', 'val', 'test']
    assert all(f['images'] == 50 and 0 <= f['accuracy'] <= 1 and f['nll'] >= 0 for f in fit.values())
    assert "each split's first 50 images (or all it has) read once, unmoved" in p.stdout
    sweep = report['sweep']  # the guidance and temperature chosen on validation images, then used for every drawing
    assert [(r['guidance'], r['temperature']) for r in sweep['rows']] == [(1, 0.5), (1, 1.0), (2, 0.5), (2, 1.0)]
    chosen = sweep['chosen']
    assert sweep['images'] == 200 and chosen in [{k: r[k] for k in chosen} for r in sweep['rows']]
    assert (q['guidance'], q['temperature']) == (chosen['guidance'], chosen['temperature'])
    assert f"chosen guidance {chosen['guidance']:g}, temperature {chosen['temperature']:g}" in p.stdout
    assert (out / 'sweep.png').is_file()

    p = run_script('sample.py', '--out_dir=out/run', '--mode=generate', '--labels=38', '--num_samples=3',
                   '--save_npy=out/run/gen.npy', '--png_dir=out/run/png', '--png_size=64', cwd=work)
    assert f"temperature {chosen['temperature']:g}, guidance {chosen['guidance']:g}, as the evaluation chose" in p.stdout
    images, labels = np.load(out / 'gen.npy'), np.load(out / 'gen_labels.npy')
    assert images.shape == (6, 1, 28, 28) and images.dtype == np.float32 and 0 <= images.min() <= images.max() <= 1
    assert labels.tolist() == [3, 3, 3, 8, 8, 8]
    from PIL import Image
    assert sorted(os.listdir(out / 'png'))[:2] == ['3_0000.png', '3_0001.png'] and len(os.listdir(out / 'png')) == 6
    assert Image.open(out / 'png' / '8_0002.png').size == (64, 64)
    assert re.search(rf'number:8, image:{code_class(meta)}{{49}}\.', p.stdout)

    p = run_script('sample.py', '--out_dir=out/run', '--mode=classify', '--image=0-2,7', cwd=work)
    assert len(re.findall(r'test\[\d+\]: \d \(true \d\)', p.stdout)) == 4

    # a user's own drawing: dark digit on light paper, any size, RGB
    from PIL import Image
    canvas = np.full((90, 70, 3), 240, dtype=np.uint8)
    canvas[20:70, 30:38] = 20  # a thick vertical stroke: a one
    Image.fromarray(canvas).save(work / 'one.png')
    p = run_script('sample.py', '--out_dir=out/run', '--mode=classify', '--image=one.png', cwd=work)
    assert re.search(r'one\.png: \d  p: 0:', p.stdout)
    seen = np.asarray(Image.open(out / 'classify_input.png').convert('L'))
    assert seen.shape == (28, 28) and seen.max() > 200  # light digit on black, as MNIST

    # only reading (a speedrun's evaluation): no reference, no sweep, no drawings judged
    p = run_script('sample.py', '--out_dir=out/run', '--judge=False', '--num_samples=2', cwd=work)
    report = json.loads((out / 'eval.json').read_text())
    assert report['quality'] == {'iter': 20} and report['sweep'] is None and 'reference' not in p.stdout
    assert [r['iter'] for r in report['checkpoints']] == [10, 20] and 'test accuracy' in p.stdout
    assert all(0 <= r['classification_accuracy'] <= 1 for r in report['checkpoints'])


def test_tasks_of_two_images(work):
    """MNIST addition (sums alone, and with the work shown) and next written, trained and scored end to
    end: with the single-image tasks, and the benchmark's setting of sums alone (no label ever shown),
    where training and evaluation read sums."""
    run_script('prepare.py', '--augment=0', '--shares=1,1,1,1,0,0,1', '--data_dir=data/two', cwd=work)
    meta = json.loads((work / 'data/two/meta.json').read_text(encoding='utf-8'))
    assert list(meta['tasks']) == ['generation', 'classification', 'addition', 'next', 'worked_addition']
    assert meta['block_size'] == 112
    code = code_class(meta)
    lines = (work / 'data/two/test.txt').read_text(encoding='utf-8').splitlines()
    adds = [re.fullmatch(rf'image:{code}{{49}} plus image:{code}{{49}}, sum:(\d+)\.#*', s) for s in lines]
    assert 0.15 < sum(m is not None for m in adds) / len(lines) < 0.25 and {int(m[1]) for m in adds if m} == set(range(19))
    nexts = [re.fullmatch(rf'image:{code}{{49}}, next:(\d), image:{code}{{49}}\.#*', s) for s in lines]
    assert 0.15 < sum(m is not None for m in nexts) / len(lines) < 0.25
    worked = [re.fullmatch(rf'image:{code}{{49}}, number:(\d) plus image:{code}{{49}}, number:(\d), sum:(\d+)\.#*', s)
              for s in lines]
    assert 0.15 < sum(m is not None for m in worked) / len(lines) < 0.25
    assert all(int(m[1]) + int(m[2]) == int(m[3]) for m in worked if m)
    run_script('train.py', *TINY, '--max_iters=10', '--eval_interval=10', '--data_dir=data/two', '--out_dir=out/two',
               cwd=work)
    p = run_script('sample.py', '--out_dir=out/two', '--num_samples=1', '--fidelity_samples=5', '--sweep=', cwd=work)
    report = json.loads((work / 'out/two/eval.json').read_text())
    r, q = report['checkpoints'][-1], report['quality']
    assert report['tasks'] == ['addition', 'classification', 'generation', 'next', 'worked_addition']
    assert r['sum_pairs'] == 10000 and 0 <= r['sum_accuracy'] <= 1 and 0 <= r['classification_accuracy'] <= 1
    assert r['worked_sum_pairs'] == 10000 and 0 <= r['worked_sum_accuracy'] <= 1 and 0 <= r['worked_digits'] <= 1
    assert 'worked sums of 10000 test pairs' in p.stdout and 'both digits named right' in p.stdout
    assert q['next_images'] == 2000 and 0 <= q['next_fidelity'] <= 1 and 0 <= q['next_named'] <= 1
    assert q['generated'] == 50 and 'sums of 10000 test pairs' in p.stdout and 'the class named is the next' in p.stdout
    p = run_script('sample.py', '--out_dir=out/two', '--mode=add', '--image=0-3', cwd=work)
    assert len(re.findall(r'test\[\d\] \+ test\[\d\]: \d+ \(true \d \+ \d = \d+\)  p: ', p.stdout)) == 2
    p = run_script('sample.py', '--out_dir=out/two', '--mode=next', '--image=0,1', '--num_samples=2', cwd=work)
    assert re.search(r'test\[1\]: next:\d', p.stdout) and (work / 'out/two/next.png').is_file()
    assert 'in pairs: give an even number of them, not 3' in error_line(
        run_script('sample.py', '--out_dir=out/two', '--mode=add', '--image=0-2', cwd=work, check=False))

    run_script('prepare.py', '--augment=0', '--shares=0,0,1', '--data_dir=data/sums', cwd=work)
    assert all(' plus image:' in s for s in (work / 'data/sums/val.txt').read_text(encoding='utf-8').splitlines())
    p = run_script('train.py', *TINY, '--max_iters=10', '--eval_interval=10', '--data_dir=data/sums', '--out_dir=out/sums',
                   cwd=work)
    assert 'val accuracy' in p.stdout
    p = run_script('sample.py', '--out_dir=out/sums', cwd=work)
    report = json.loads((work / 'out/sums/eval.json').read_text())
    assert report['tasks'] == ['addition'] and 'classification_accuracy' not in report['checkpoints'][-1]
    assert 'generation_fidelity' not in report['quality'] and report['sweep'] is None
    assert (work / 'out/sums/accuracy.png').is_file() and not list((work / 'out/sums').glob('samples_*.png'))
    assert 'was not trained on next' in error_line(
        run_script('sample.py', '--out_dir=out/sums', '--mode=next', '--image=0', cwd=work, check=False))
    assert 'did not learn classification' in error_line(
        run_script('sample.py', '--out_dir=out/sums', '--fit_images=10', cwd=work, check=False))


def test_resume_continues_exactly(work):
    """Stopped at 20 and resumed to 40, a run ends with the same weights as one that never stopped."""
    run_script('train.py', *TINY, '--max_iters=40', '--eval_interval=20', '--out_dir=out/straight', cwd=work)
    run_script('train.py', *TINY, '--max_iters=20', '--eval_interval=20', '--out_dir=out/resumed', cwd=work)
    p = run_script('train.py', *TINY, '--max_iters=40', '--eval_interval=20', '--out_dir=out/resumed',
                   '--init_from=resume', cwd=work)
    assert 'resuming from out/resumed/ckpt.pt at iteration 20' in p.stdout
    a = torch.load(work / 'out/straight/ckpt_40.pt', weights_only=True)['model']
    b = torch.load(work / 'out/resumed/ckpt_40.pt', weights_only=True)['model']
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    ck = torch.load(work / 'out/resumed/ckpt.pt', weights_only=True)  # the average is saved, the trained weights kept
    assert ck['trained'].keys() == a.keys() and not all(torch.equal(ck['trained'][k], a[k]) for k in a)
    runs = [torch.load(work / f'out/resumed/ckpt_{i}.pt', weights_only=True)['run'] for i in (20, 40)]
    assert runs[0] == runs[1]  # a resumed run is the same run
    p = run_script('train.py', *TINY, '--max_iters=60', '--eval_interval=20', '--out_dir=out/resumed', '--init_from=resume',
                   '--muon=False', cwd=work, check=False)
    assert error_line(p) == "error: out/resumed/ckpt.pt was trained with muon=True: resume with that setting"


def test_cycles_follow_the_reading(work):
    """A cycle's end starts another (from the full learning rate, SGDR) exactly when its val accuracy rose
    over the cycle's last evaluation interval by more than two standard errors; the run's last
    checkpoint is where it stopped."""
    p = run_script('train.py', *[a for a in TINY if a != '--cycles=1'], '--cycles=3', '--max_iters=10',
                   '--eval_interval=5', '--lr_decay_iters=10', '--warmup_iters=2', '--learning_rate=1e-2',
                   '--log_interval=1', '--out_dir=out/cycles', cwd=work)
    acc = {int(i): float(a) for i, a in re.findall(r'step (\d+): .* val accuracy ([\d.]+)', p.stdout)}
    lr = {int(i): float(v) for i, v in re.findall(r'iter (\d+): .* lr ([\d.e+-]+)', p.stdout)}
    end = 10
    while True:
        se = (max(acc[end] * (1 - acc[end]), 1 / 100) / 100) ** 0.5
        rising = acc[end] - acc[end - 5] > 2 * se
        assert (f'another cycle of 10 iterations, to {end + 10}' in p.stdout) == (rising and end < 30)
        if not rising or end == 30:
            break
        assert lr[end + 1] == 1e-2 and lr[end] < 1e-2  # a warm restart at the new cycle's first step
        end += 10
    assert max(acc) == end and (work / f'out/cycles/ckpt_{end}.pt').is_file()
    assert torch.load(work / 'out/cycles/ckpt.pt', weights_only=True)['end_iter'] == end


def test_time_limit_cuts_the_cosine_to_fit(work, tmp_path):
    """time_limit counts the tokenizer's and prepare.py's seconds (data_dir/meta.json) and train.py's own:
    a run it cannot fit ends early, its cosine decayed to min_lr by then without a jump however often the
    pace cuts it again, and, killed part way, resumes to the end its checkpoint holds; a run that fits
    trains the very weights it would without the limit; a limit already spent is a one-line error."""
    seconds = json.loads((work / 'data/vlm/meta.json').read_text())['seconds']
    spent = seconds['tokenizer'] + seconds['prepare']
    args = [*TINY, '--max_iters=20000', '--lr_decay_iters=20000', '--eval_interval=100', '--log_interval=1',
            f'--time_limit={spent + 20:.0f}', '--out_dir=out/limited']
    out = work / 'out/limited'
    with open(tmp_path / 'log', 'w') as log:
        proc = subprocess.Popen([sys.executable, os.path.join(REPO, 'train.py'), *args], cwd=work, stdout=log,
                                stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONUNBUFFERED='1'))
        deadline = time.time() + 300
        while not (out / 'ckpt_200.pt').exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.1)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    first = (tmp_path / 'log').read_text()
    cut = int(re.search(r'([\d,]+) iterations fit, not 20,000: the cosine is cut to them', first).group(1).replace(',', ''))
    assert 400 < cut < 20000, first[-2000:]
    ck = torch.load(out / 'ckpt.pt', weights_only=True)
    assert 100 <= ck['iter_num'] < ck['time_cut']['max_iters']  # ckpt.pt: the one before ckpt_200.pt, or that one
    p = run_script('train.py', *args, '--init_from=resume', cwd=work)
    lr = {int(i): float(v) for i, v in re.findall(r'iter (\d+): .* lr ([\d.e+-]+)', first + p.stdout)}
    end = ck['time_cut']['max_iters']  # the length the checkpoint resumed from holds
    ck = torch.load(out / 'ckpt.pt', weights_only=True)  # saved by the resumed run: the cut goes on with it
    assert ck['iter_num'] == ck['end_iter'] == ck['time_cut']['max_iters'] == end
    assert max(lr) == end and lr[end] < 3.1e-4
    down = [lr[i] for i in sorted(lr) if i > 5]  # past the warm-up: down the cosine, cut or cut again, never a jump
    assert all(0 <= a - b < 0.02 * (3e-3 - 3e-4) for a, b in zip(down, down[1:]))
    short = [*TINY, '--max_iters=80', '--lr_decay_iters=80', '--eval_interval=40']
    p = run_script('train.py', *short, f'--time_limit={spent + 600:.0f}', '--out_dir=out/fits', cwd=work)
    assert 'all 80 iterations fit' in p.stdout
    run_script('train.py', *short, '--out_dir=out/unlimited', cwd=work)
    a, b = (torch.load(work / f'out/{d}/ckpt.pt', weights_only=True)['trained'] for d in ('fits', 'unlimited'))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert 'no time for more than 60 iterations: raise time_limit' in error_line(run_script(
        'train.py', *short, f'--time_limit={spent:.0f}', '--out_dir=out/spent', cwd=work, check=False))


def test_tail_average_is_the_mean_of_the_last_weights(work):
    """With tail_average, the weights saved at the end are the plain mean of those after each of the last steps."""
    run_script('train.py', *TINY, '--max_iters=4', '--eval_interval=1', '--ema=0', '--out_dir=out/last', cwd=work)
    run_script('train.py', *TINY, '--max_iters=4', '--eval_interval=4', '--ema=0', '--tail_average=0.5',
               '--out_dir=out/tail', cwd=work)
    w3, w4, mean = (torch.load(work / f'out/{d}/ckpt_{i}.pt', weights_only=True)['model']
                    for d, i in (('last', 3), ('last', 4), ('tail', 4)))
    assert not all(torch.equal(w3[k], w4[k]) for k in w3)
    assert all(torch.allclose(mean[k], (w3[k] + w4[k]) / 2, atol=1e-6) for k in mean)


def test_killed_run_resumes(work):
    """SIGKILL a real training process part way; the checkpoint it left loads and training resumes."""
    out = work / 'out/killed'
    proc = subprocess.Popen([sys.executable, os.path.join(REPO, 'train.py'), *TINY, '--max_iters=100000',
                             '--eval_interval=10', '--out_dir=out/killed'], cwd=work,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (out / 'ckpt_20.pt').exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (out / 'ckpt_20.pt').exists()
    it = torch.load(out / 'ckpt.pt', weights_only=True)['iter_num']
    p = run_script('train.py', *TINY, f'--max_iters={it + 10}', '--eval_interval=10', '--out_dir=out/killed',
                   '--init_from=resume', cwd=work)
    assert f'resuming from out/killed/ckpt.pt at iteration {it}' in p.stdout
    assert torch.load(out / 'ckpt.pt', weights_only=True)['iter_num'] == it + 10


def test_processes_and_nodes_train_as_one(work):
    """torchrun with two CPU processes (gloo), on one node or as two nodes of one process each (the
    README's multi-node command, rendezvous on 127.0.0.1), ends with the weights of one process over the
    same global batch: in float32, equal up to the order of the gradient's sums."""
    cmd = torchrun()
    args = [os.path.join(REPO, 'train.py'), *TINY, '--max_iters=20', '--eval_interval=10', '--dtype=float32']
    run_script('train.py', *args[1:], '--out_dir=out/one', cwd=work)
    p = subprocess.run(cmd + ['--standalone', '--nproc_per_node=2', *args, '--out_dir=out/ddp'], cwd=work,
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    assert '2 process(es)' in p.stdout and 'step 20:' in p.stdout
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    nodes = [subprocess.Popen(cmd + ['--nnodes=2', '--nproc_per_node=1', f'--node_rank={r}', '--master_addr=127.0.0.1',
                                     f'--master_port={port}', *args, '--out_dir=out/nodes'],
                              cwd=work, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in (0, 1)]
    outs = [n.communicate(timeout=600) for n in nodes]
    assert all(n.returncode == 0 for n in nodes), [o[1][-3000:] for o in outs]
    assert '2 process(es)' in outs[0][0] and 'step 20:' in outs[0][0]
    one = torch.load(work / 'out/one/ckpt.pt', weights_only=True)
    for run in ('ddp', 'nodes'):
        other = torch.load(work / f'out/{run}/ckpt.pt', weights_only=True)
        for key in ('trained', 'model'):  # the trained weights, and their average that is evaluated
            assert all(torch.allclose(one[key][k], other[key][k], rtol=0, atol=1e-5) for k in one[key]), (run, key)
        assert abs(other['val_loss'] - one['val_loss']) < 1e-4


def test_compile_auto_trains_as_the_cached_choice(work, tmp_path):
    """compile='auto' times the model both ways on its first run here; that run must then train the same
    weights as a later run that reads its choice from the cache. Two processes, one thread each (as
    Fashion-MNIST's config trains; bit for bit there): compiled outside DDP while it was timed and
    inside DDP later, the model's graphs differed (one per gradient bucket inside) and so did the
    weights. The default model's size: the tiny one fills one bucket. Where compiling does not pay on
    the machine, both runs train eager and the test only checks that timing left the weights alone."""
    cmd = torchrun()
    args = [os.path.join(REPO, 'train.py'), f"--data_dir={work / 'data/vlm'}", '--batch_size=32', '--eval_iters=2',
            '--cycles=1', '--eval_classify=100', '--warmup_iters=5', '--max_iters=30', '--lr_decay_iters=30',
            '--eval_interval=30']

    def train(out, compile):
        p = subprocess.run(cmd + ['--standalone', '--nproc_per_node=2', *args, f'--out_dir={out}',
                                  f'--compile={compile}'], cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
        return p.stdout, torch.load(tmp_path / out / 'ckpt.pt', weights_only=True)['trained']

    timed, a = train('out/timed', 'auto')
    choice = re.search(r"compile='auto': (compiling|not compiling)", timed)
    assert choice and (tmp_path / 'out/compile_auto.json').is_file(), timed[-2000:]
    _, b = train('out/cached', choice.group(1) == 'compiling')
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_clear_errors(work, tmp_path):
    empty = tmp_path / 'empty'
    empty.mkdir()
    cases = [
        (('prepare.py',), empty, 'no tokenizer checkpoint at out/vqvae/ckpt.pt: run vqvae.py first'),
        (('train.py',), empty, 'run prepare.py first'),
        (('sample.py',), empty, 'no ckpt_{iter}.pt in out/vlm: run train.py first'),
        (('train.py', '--nope=1'), work, "unknown config key 'nope'"),
        (('train.py', '--n_layer=two'), work, 'n_layer expects a whole number'),
        (('train.py', '--init_from=resume', '--out_dir=out/none'), work, 'no checkpoint to resume at out/none/ckpt.pt'),
        (('sample.py', '--out_dir=out/none'), work, 'no ckpt_{iter}.pt in out/none: run train.py first'),
        (('vqvae.py', f'--idx_dir={tmp_path}', '--out_dir=out/v'), empty, 'idx_dir must hold the four MNIST files'),
        (('vqvae.py', '--dataset=nowhere', '--out_dir=out/v'), empty, "dataset must be 'mnist', 'fashion' or a folder"),
    ]
    for args, cwd, message in cases:
        assert message in error_line(run_script(*args, cwd=cwd, check=False)), args
    # errors that need a trained model
    # warm-up as long as the decay: the schedule ends at min_lr with no division by zero
    run_script('train.py', *TINY, '--max_iters=10', '--eval_interval=10', '--warmup_iters=10', '--lr_decay_iters=10',
               '--out_dir=out/err', cwd=work)
    (work / 'bad.png').write_bytes(b'')
    (work / 'noise.png').write_text('not an image')
    for args, message in [
        (('--mode=generate', '--labels=7x'), "unknown class 'x'"),
        (('--mode=classify', '--image=bad.png'), 'cannot read image bad.png'),
        (('--mode=classify', '--image=noise.png'), 'cannot read image noise.png'),
        (('--mode=classify', '--image=99999'), 'test indices must be 0..9999'),
        (('--mode=classify', '--image=missing.png'), 'image file missing.png not found'),
        (('--mode=classify', '--image=0,missing.png'), "test indices ('0-9') or image files, not both: '0' is not"),
        (('--mode=fly',), "mode='fly' is not allowed: mode must be one of 'eval', 'generate', 'classify'"),
    ]:
        assert message in error_line(run_script('sample.py', '--out_dir=out/err', *args, cwd=work, check=False)), args
    from PIL import Image
    Image.new('L', (40, 40), 255).save(work / 'blank.png')
    assert 'is blank' in error_line(run_script('sample.py', '--out_dir=out/err', '--mode=classify',
                                               '--image=blank.png', cwd=work, check=False))
    # a run whose loss turns NaN stops with a message and writes no checkpoint of the broken model
    run_script('train.py', *TINY, '--max_iters=10', '--eval_interval=10', '--out_dir=out/nan', cwd=work)
    ck = torch.load(work / 'out/nan/ckpt.pt', weights_only=True)
    next(iter(ck['model'].values())).fill_(float('nan'))
    torch.save(ck, work / 'out/nan/ckpt.pt')
    p = run_script('train.py', *TINY, '--init_from=resume', '--log_interval=1', '--max_iters=20', '--eval_interval=20',
                   '--out_dir=out/nan', cwd=work, check=False)
    assert 'loss is not finite' in error_line(p)
    assert not (work / 'out/nan/ckpt_20.pt').exists()
    # a data folder whose files are not the ones its meta.json describes (prepare.py interrupted)
    shutil.copytree(work / 'data/vlm', work / 'data/mixed')
    (work / 'data/mixed/val.bin').write_bytes((work / 'data/vlm/train.bin').read_bytes()[:640000])
    assert 'is not the file data/mixed/meta.json describes' in error_line(run_script(
        'train.py', '--data_dir=data/mixed', cwd=work, check=False))
    # a checkpoint used with data prepared differently
    run_script('prepare.py', '--block_size=80', '--data_dir=data/other', cwd=work)
    assert 'was trained on other data' in error_line(run_script(
        'sample.py', '--out_dir=out/err', '--data_dir=data/other', cwd=work, check=False))
    assert 'was trained on other data' in error_line(run_script(
        'train.py', '--out_dir=out/err', '--data_dir=data/other', '--init_from=resume', cwd=work, check=False))


def test_colour_folder_through_the_whole_pipeline(tmp_path):
    """A user's folder of colour glyphs (ink and paper of any colours, several fonts, moved and turned;
    class names with a space and a non-ASCII letter; one file that is not an image) through all four
    scripts: the data set is named once, to vqvae.py, which sees one ink on one paper and gives the
    colours two codes before a grid of where the ink is."""
    from make_data import GLYPHS, make_glyphs
    classes = sorted(GLYPHS)
    root = make_glyphs(str(tmp_path / 'my images'), 10, size=24)
    (tmp_path / 'my images' / 'grand Ω' / 'broken.png').write_bytes(b'\x89PNG\r\n\x1a\n but cut short')
    p = run_script('vqvae.py', f'--dataset={root}', '--image_size=16', '--max_epochs=1', '--min_iters=0', cwd=tmp_path)
    assert 'warning: skipped 1 unreadable image file' in p.stdout and '16x16 colour' in p.stdout
    assert re.search(r'from the data \(colour images, 0\.\d\d of them one ink on one paper\): kind=ink, levels=5,5,5, '
                     r'hidden=64', p.stdout)
    ck = torch.load(tmp_path / 'out/vqvae/ckpt.pt', weights_only=True)
    assert ck['dataset']['classes'] == classes and ck['model_args']['channels'] == 3
    assert (ck['model_args']['kind'], ck['model_args']['levels'], ck['model_args']['tokens_per_image']) == ('ink', [5, 5, 5], 20)
    run_script('prepare.py', '--augment=1', '--shares=1,3', cwd=tmp_path)
    meta = json.loads((tmp_path / 'data/vlm/meta.json').read_text(encoding='utf-8'))
    assert meta['shares'] == {'generation': 1.0, 'classification': 3.0}
    assert 100 <= meta['splits']['train']['classification'] <= 140  # about 3/4 of 160
    assert meta['classes'] == classes and meta['key'] == 'class' and meta['tokens_per_image'] == 20
    assert (meta['lead'], meta['grid']) == (4, 4)  # the two colours and the place, then a 4x4 grid of codes for 16x16 images
    lines = (tmp_path / 'data/vlm/train.txt').read_text(encoding='utf-8').splitlines()
    names = '|'.join(re.escape(c) for c in sorted(classes, key=len, reverse=True))
    code = code_class(meta)
    pat = re.compile(rf'(class:({names}), image:{code}{{20}}\.|image:{code}{{20}}, class:({names})\.)#*')
    assert len(lines) == 2 * 80 and all(pat.fullmatch(s) for s in lines)
    assert any('class:grand Ω' in s for s in lines) and any('class:é' in s for s in lines)
    assert np.load(tmp_path / 'data/vlm/test_images.npy').shape == (10, 3, 16, 16)
    run_script('train.py', *TINY, '--max_iters=20', '--eval_interval=10', '--eval_classify=8', cwd=tmp_path)
    p = run_script('sample.py', '--num_samples=3', '--fidelity_samples=2', '--views=3', '--fit_images=1000', cwd=tmp_path)
    report = json.loads((tmp_path / 'out/vlm/eval.json').read_text(encoding='utf-8'))
    fit = report['checkpoints'][-1]['fit']  # more than the splits hold: each read whole, the moved copies left out
    val = len(np.load(tmp_path / 'data/vlm/val_images.npy'))
    assert {k: f['images'] for k, f in fit.items()} == dict(train=80, val=val, test=10) and val > 0
    q = report['quality']
    assert report['classes'] == classes and q['generated'] == 20
    assert q['reference'] == 'out/reference_my-images.pt' and (tmp_path / 'out/reference_my-images.pt').is_file()
    assert 'moved as prepare.py moves them' in p.stdout
    # 80 training images teach the reference little: it says so, in the log and in eval.json
    assert q['reference_test_accuracy'] < 0.9 and 'reference classifier reads only' in q['reference_warning']
    assert 'warning: the reference classifier reads only' in p.stdout
    assert [r['iter'] for r in report['checkpoints']] == [10, 20] and report['checkpoints'][-1]['n_test'] == 10
    assert set(q['generation_fidelity_per_class']) == set(classes)
    assert len(report['sweep']['rows']) == 21 and report['sweep']['chosen'] == {k: q[k] for k in ('guidance', 'temperature')}
    from PIL import Image
    grid = Image.open(tmp_path / 'out/vlm/samples_20.png')
    assert grid.mode == 'RGB' and grid.width > 3 * 2 * 18 + 40  # three images a row and the class names left of them
    p = run_script('sample.py', '--mode=generate', '--labels=é,grand Ω', '--num_samples=2',
                   '--png_dir=out/png', cwd=tmp_path)
    assert re.search(rf'class:é, image:{code}{{20}}\.', p.stdout)
    assert sorted(os.listdir(tmp_path / 'out/png')) == ['grand-Ω_0000.png', 'grand-Ω_0001.png', 'é_0000.png', 'é_0001.png']
    Image.open(os.path.join(root, 'B', '00003.png')).resize((50, 40)).save(tmp_path / 'mine.jpg')
    p = run_script('sample.py', '--mode=classify', '--image=mine.jpg', cwd=tmp_path)
    assert re.search(rf'mine\.jpg: ({names})  p: ', p.stdout)
    assert Image.open(tmp_path / 'out/vlm/classify_input.png').size == (16, 16)
    assert "unknown class 'C'" in error_line(run_script('sample.py', '--mode=generate', '--labels=C',
                                                        cwd=tmp_path, check=False))

    # the same folder with captions of its own (metadata.jsonl, as Hugging Face's imagefolder): captions both ways
    files = sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs if f.endswith('.png'))
    rows = [dict(file_name=f, text=f"glyph nº {i} of {os.path.dirname(f)}") for i, f in enumerate(files)]
    bad = os.path.join(root, 'metadata.jsonl')
    with open(bad, 'w', encoding='utf-8') as f:
        f.write('\n'.join(json.dumps(r, ensure_ascii=False) for r in rows + [dict(file_name='gone.png', text='x')]) + '\n')
    assert f"line {len(rows) + 1}: 'gone.png' is not a file" in error_line(run_script(
        'prepare.py', '--shares=1,1,0,0,1,1', '--data_dir=data/cap', cwd=tmp_path, check=False))
    assert not (tmp_path / 'data/cap/meta.json').exists()  # nothing half-written
    with open(bad, 'w', encoding='utf-8') as f:
        f.write('\n'.join(json.dumps(r, ensure_ascii=False) for r in rows) + '\n')
    run_script('prepare.py', '--augment=0', '--shares=1,1,0,0,1,1', '--data_dir=data/cap', cwd=tmp_path)
    meta = json.loads((tmp_path / 'data/cap/meta.json').read_text(encoding='utf-8'))
    assert meta['captions']['source'] == 'metadata' and meta['caption_length'] == max(len(r['text']) for r in rows)
    lines = (tmp_path / 'data/cap/train.txt').read_text(encoding='utf-8').splitlines()
    assert any(re.fullmatch(rf'caption:glyph nº \d+ of ({names}), image:{code}{{20}}\.#*', s) for s in lines)
    assert any(re.fullmatch(rf'image:{code}{{20}}, caption:glyph nº \d+ of ({names})\.#*', s) for s in lines)
    run_script('train.py', *TINY, '--max_iters=20', '--eval_interval=20', '--eval_classify=8', '--data_dir=data/cap',
               '--out_dir=out/cap', cwd=tmp_path)
    p = run_script('sample.py', '--out_dir=out/cap', '--num_samples=2', '--fidelity_samples=2', '--sweep=', cwd=tmp_path)
    q = json.loads((tmp_path / 'out/cap/eval.json').read_text(encoding='utf-8'))['quality']
    assert q['caption_images'] == q['captioned'] == 10 and 0 <= q['caption_exact'] <= 1 and 'style_obeyed' not in q
    assert 'captions -> images: 10 test captions drawn' in p.stdout and 'images -> captions: 10 test images' in p.stdout
    p = run_script('sample.py', '--out_dir=out/cap', '--mode=generate', '--prompt=a zebra of grand Ω', '--num_samples=2',
                   cwd=tmp_path)  # a word never seen, spelled
    assert re.search(rf'caption:a zebra of grand Ω, image:{code}{{20}}\.', p.stdout)
    p = run_script('sample.py', '--out_dir=out/cap', '--mode=caption', '--image=0-2', cwd=tmp_path)
    assert len(re.findall(r'test\[\d\]: .*  \(its caption: glyph nº \d+ of ', p.stdout)) == 3
    for prompt, message in (('a ☃', "never seen: '☃'"), ('   ', 'cannot be empty'), ('x' * 99, 'at most')):
        assert message in error_line(run_script('sample.py', '--out_dir=out/cap', '--mode=generate', f'--prompt={prompt}',
                                                cwd=tmp_path, check=False))
    assert 'not trained on captioning' in error_line(run_script('sample.py', '--mode=caption', '--image=0', cwd=tmp_path,
                                                                check=False))


def test_tokenizer_follows_the_data(tmp_path):
    """vqvae.py's kind and capacity by the data: grey images get MNIST's, colour photos (smooth fields of
    many colours, not one ink on one paper) a conv tokenizer with more codes and channels; what is set
    stays set."""
    from PIL import Image
    rng = np.random.default_rng(0)
    for name in ('a', 'b'):
        (tmp_path / 'photos' / name).mkdir(parents=True)
        for i in range(6):
            field = torch.nn.functional.interpolate(torch.tensor(rng.random((1, 3, 3, 3)), dtype=torch.float32),
                                                    size=16, mode='bilinear')[0].permute(1, 2, 0).numpy()
            Image.fromarray((field * 255).astype(np.uint8)).save(tmp_path / 'photos' / name / f'{i}.png')
    p = run_script('vqvae.py', '--dataset=photos', '--max_epochs=1', '--min_iters=0', '--out_dir=out/p', cwd=tmp_path)
    assert re.search(r'one ink on one paper\): kind=conv, levels=8,5,5,5, hidden=128, latent_norm=True', p.stdout)
    p = run_script('vqvae.py', '--dataset=photos', '--max_epochs=1', '--min_iters=0', '--out_dir=out/q', '--hidden=32',
                   '--kind=conv', cwd=tmp_path)
    assert 'from the data (colour images): levels=8,5,5,5\n' in p.stdout  # latent_norm comes with a fitted hidden
    args = torch.load(tmp_path / 'out/q/ckpt.pt', weights_only=True)['model_args']
    assert (args['kind'], args['hidden'], args['latent_norm']) == ('conv', 32, False)
    make_folder(tmp_path / 'grey', ['x', 'y'], n=6, size=16, grey=True)
    p = run_script('vqvae.py', '--dataset=grey', '--max_epochs=1', '--min_iters=0', '--out_dir=out/g', cwd=tmp_path)
    assert 'from the data (grey images): kind=conv, levels=5,5,5, hidden=64\n' in p.stdout


@pytest.mark.parametrize('kind', ['conv', 'ink'])
def test_tokenizer_trained_to_tell_classes_apart(tmp_path, kind):
    """vqvae.py --class_weight: a classifier of the quantized latents joins the loss, for a grid of any
    kind; the checkpoint holds the tokenizer alone, which prepare.py uses as any other."""
    from make_data import make_shapes
    from tinyvlm.tokenizers import make_tokenizer
    root = make_shapes(str(tmp_path / 'shapes'), 8, size=16)
    p = run_script('vqvae.py', f'--dataset={root}', f'--kind={kind}', '--hidden=16', '--max_epochs=1', '--min_iters=0',
                   '--class_weight=1', cwd=tmp_path)
    assert re.search(r'and a classifier of its latents \([\d,]+ parameters\), weighted 1\.0', p.stdout)
    assert re.search(r'epoch 1: .*, its classifier reads val [01]\.\d{4} ', p.stdout)
    metrics = json.loads((tmp_path / 'out/vqvae/metrics.json').read_text(encoding='utf-8'))
    assert 0 <= metrics['val_class_accuracy'] <= 1
    ck = torch.load(tmp_path / 'out/vqvae/ckpt.pt', weights_only=True)
    assert ck['config']['class_weight'] == 1.0
    assert ck['model'].keys() == make_tokenizer(**ck['model_args']).state_dict().keys()  # the tokenizer's weights alone
    run_script('prepare.py', '--augment=0', cwd=tmp_path)
    assert json.loads((tmp_path / 'data/vlm/meta.json').read_text(encoding='utf-8'))['tokens_per_image'] > 0


@pytest.mark.parametrize('design', [['--kind=1d', '--tokens_per_image=16', '--grid=4'],
                                    ['--grid=2', '--stages=4', '--latent_norm=True']])
def test_tokens_in_no_grid_downstream(tmp_path, design):
    """Tokenizers whose tokens are not one raster grid, TiTok-style 1D (tokens in no place in the image)
    and residual FSQ (4 stages of a 2x2 grid, its latents standardised), through prepare, training,
    guided generation and completion: completion keeps the first tokens (not rows, though 16 is a square)."""
    from make_data import make_shapes
    root = make_shapes(str(tmp_path / 'shapes'), 8, size=16)
    run_script('vqvae.py', f'--dataset={root}', *design, '--hidden=32', '--levels=5,5', '--max_epochs=1',
               '--min_iters=0', cwd=tmp_path)
    run_script('prepare.py', '--augment=0', cwd=tmp_path)
    meta = json.loads((tmp_path / 'data/vlm/meta.json').read_text(encoding='utf-8'))
    assert meta['tokens_per_image'] == 16 and meta['grid'] == 0 and meta['codebook_size'] == 25
    assert (tmp_path / 'data/vlm/logo.png').stat().st_size > 0
    run_script('train.py', *TINY, '--max_iters=10', '--eval_interval=10', '--eval_classify=8', cwd=tmp_path)
    p = run_script('sample.py', '--mode=generate', '--labels=circle', '--num_samples=2', cwd=tmp_path)
    assert len(re.findall(rf'class:circle, image:{code_class(meta)}{{16}}\.', p.stdout)) == 2
    p = run_script('sample.py', '--mode=complete', '--image=0', '--keep=5', '--num_samples=2', cwd=tmp_path)
    assert 'from their first 5 token(s) of codes' in p.stdout and (tmp_path / 'out/vlm/complete.png').is_file()
    assert 'keep must be at most 16, the tokens of codes' in error_line(run_script(
        'sample.py', '--mode=complete', '--image=0', '--keep=17', cwd=tmp_path, check=False))
