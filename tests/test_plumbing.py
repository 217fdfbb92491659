"""plumbing: one-line errors at a script's entry point, the dtype choice, names safe for files."""
import subprocess
import sys

from conftest import REPO
from tinyvlm.plumbing import pick_dtype, safe_name


def test_pick_dtype():
    assert pick_dtype('cpu') in ('float32', 'bfloat16') and pick_dtype('mps') == 'float32'
    assert pick_dtype('cpu', 'float32') == 'float32'


def test_safe_name():
    assert safe_name('T-shirt/top') == 'T-shirt-top' and safe_name('hollow square') == 'hollow-square'
    assert safe_name('étoile') == 'étoile' and safe_name('///') == 'class'


def run(code):
    return subprocess.run([sys.executable, '-c', f"import sys; sys.path.insert(0, {REPO!r}); "
                           f"from tinyvlm.plumbing import start_script; start_script(); {code}"],
                          capture_output=True, text=True)


def test_entry_point_turns_errors_into_one_line():
    """An Error, or a file the system refuses, ends a script with 'error: ...' and status 1; a bug keeps
    its traceback."""
    p = run("from tinyvlm import Error; raise Error('what went wrong')")
    assert p.returncode == 1 and p.stderr == 'error: what went wrong\n'
    p = run("open('/proc/version/x', 'w')")
    assert p.returncode == 1 and p.stderr.startswith('error: /proc/version/x: ') and len(p.stderr.splitlines()) == 1
    p = run("import socket; socket.create_server(('no.such.host.invalid', 0))")
    assert p.returncode == 1 and p.stderr.startswith('error: ') and len(p.stderr.splitlines()) == 1
    p = run("1 / 0")
    assert p.returncode == 1 and 'Traceback' in p.stderr and 'ZeroDivisionError' in p.stderr


def test_dtype_auto_is_not_decided_by_a_passing_load(tmp_path, monkeypatch):
    """dtype='auto' times float32 and bfloat16 matmuls in turn, so that another program taking a core
    partway through slows both rather than whichever was being timed; the answer is cached per machine.
    A fake clock: a bfloat16 matmul takes half a float32's time, and three times as long from the fifth on."""
    import json

    import torch

    from tinyvlm import plumbing
    now, done = [0.0], []

    def matmul(a, b):
        done.append(a.dtype)
        now[0] += (2.0 if a.dtype == torch.float32 else 1.0) * (3 if len(done) > 4 else 1)
        return a

    monkeypatch.setattr(torch.Tensor, '__matmul__', matmul)
    monkeypatch.setattr(plumbing.time, 'perf_counter', lambda: now[0])
    cache = tmp_path / 'dtype_auto.json'
    assert plumbing.fast_bf16('cpu', cache=str(cache)) is True
    assert set(done) == {torch.float32, torch.bfloat16} and done[:4] == [torch.float32, torch.bfloat16] * 2
    (entry,) = json.loads(cache.read_text()).values()
    assert entry['bfloat16'] is True and entry['gflops']['bfloat16'] == 2 * entry['gflops']['float32']
    n = len(done)
    assert plumbing.fast_bf16('cpu', cache=str(cache)) is True and len(done) == n  # from the cache


def test_compile_pays_when_it_saves_more_than_it_costs(tmp_path, monkeypatch):
    """compile='auto': timed once per machine and config (warm-up, then alternating windows both ways),
    the gradients it left cleared; then decided from the cache for each run's number of steps."""
    import json

    import torch

    from tinyvlm.plumbing import compile_pays
    monkeypatch.setattr(torch, 'compile', lambda m: m)  # the timing and the decision, not the compiler
    calls, cache = [], tmp_path / 'compile_auto.json'
    model = torch.nn.Linear(2, 2)

    def step(m, i):
        calls.append(i)
        m(torch.ones(1, 2)).sum().backward()

    _, times, compiled = compile_pays(model, step, 1000, dict(n_layer=1), 'cpu', cache=str(cache), warmup=2, rounds=2,
                                      window=3)
    assert len(calls) == 2 * (2 + 2 * 3) and set(times) == {'eager', 'compiled', 'compiling'}
    assert compiled is model and model.weight.grad is None  # the module it timed, to train with
    known = json.loads(cache.read_text())
    (key,) = known
    known[key] = dict(eager=0.2, compiled=0.1, compiling=30.0)
    cache.write_text(json.dumps(known))
    assert compile_pays(model, step, 1000, dict(n_layer=1), 'cpu', cache=str(cache))[::2] == (True, None)  # 100 s for 30
    assert not compile_pays(model, step, 100, dict(n_layer=1), 'cpu', cache=str(cache))[0]  # 10 s for 30
    assert len(calls) == 16  # from the cache: not timed again
    compile_pays(model, step, 100, dict(n_layer=2), 'cpu', cache=str(cache), warmup=1, rounds=2, window=1)  # another config
    assert len(calls) == 16 + 2 * (1 + 2) and len(json.loads(cache.read_text())) == 2


def test_compile_that_fails_trains_eager_and_says_why(tmp_path, monkeypatch):
    import json

    import torch

    from tinyvlm.plumbing import compile_pays

    class Broken(torch.nn.Module):
        def forward(self, x):
            raise RuntimeError('no C compiler found')

    monkeypatch.setattr(torch, 'compile', lambda m: Broken())
    model, cache = torch.nn.Linear(2, 2), tmp_path / 'compile_auto.json'
    step = lambda m, i: m(torch.ones(1, 2)).sum().backward()
    pays, times, compiled = compile_pays(model, step, 10 ** 6, dict(n_layer=1), 'cpu', cache=str(cache))
    assert not pays and compiled is None and times['compiled'] is None and 'no C compiler' in times['failed']
    assert model.weight.grad is None
    assert compile_pays(model, step, 10 ** 6, dict(n_layer=1), 'cpu', cache=str(cache))[0] is False  # cached
    assert 'no C compiler' in json.loads(cache.read_text())[next(iter(json.loads(cache.read_text())))]['failed']


def test_dtype_auto_spends_no_time_where_bfloat16_is_emulated(tmp_path, monkeypatch):
    """Where a CPU emulates bfloat16 (a hundred times slower than float32), small matmuls show it: the
    large ones that would take seconds each are never run."""
    import torch

    from tinyvlm import plumbing
    now, sizes = [0.0], []

    def matmul(a, b):
        sizes.append(a.size(0))
        now[0] += a.size(0) ** 3 * (1e-9 if a.dtype == torch.float32 else 1e-7)
        return a

    monkeypatch.setattr(torch.Tensor, '__matmul__', matmul)
    monkeypatch.setattr(plumbing.time, 'perf_counter', lambda: now[0])
    assert plumbing.fast_bf16('cpu', cache=str(tmp_path / 'dtype_auto.json')) is False
    assert set(sizes) == {512}
