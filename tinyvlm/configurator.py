"""
Settings, nanoGPT style. Every script keeps its settings as plain module globals and then calls

    from tinyvlm.configurator import configure
    config = configure(globals())

Each command-line argument is either a config file (plain Python, e.g. config/train_mnist_vlm_seed.py)
or --key=value; --help lists the settings. Unlike nanoGPT's exec trick, a key the script does not
have, or a value of the wrong type, is a one-line error instead of a silently ignored setting; and
every setting is then checked against its rule in RULES (one table for all the scripts: a setting
that several scripts share has one rule) before any work starts, so a bad value is one line naming
the setting, the value and what is allowed. The web page's settings go through the same rules (check).
"""
import math
import os
import sys
from ast import literal_eval

from tinyvlm import Error
from tinyvlm.sequences import MAX_CODES, TASKS

SIMPLE = (bool, int, float, str, type(None))
CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'config')  # the repo's config/


# ----------------------------------------------------------------------------------------------------
# rules: each takes the value and says what is wrong with it (None: nothing)

def integer(lo=None, hi=None):
    def rule(v):
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            return (f"a whole number from {lo} to {hi}" if hi is not None else
                    'a positive whole number' if lo == 1 else f"a whole number of at least {lo}")
    return rule


def number(lo=None, hi=None, lo_open=False, hi_open=False):
    def rule(v):
        bad = (not math.isfinite(v) or (lo is not None and (v <= lo if lo_open else v < lo))
               or (hi is not None and (v >= hi if hi_open else v > hi)))
        if bad:
            left = '' if lo is None else f"{'more than' if lo_open else 'at least'} {lo}"
            right = '' if hi is None else f"{'less than' if hi_open else 'at most'} {hi}"
            return 'a number ' + ' and '.join(s for s in (left, right) if s)
    return rule


def numbers(lo, hi, what, example):
    """A comma-separated list of numbers from lo to hi, or '' for none (sample.py's sweeps)."""
    def rule(v):
        if v.strip() and not all(_is_number(x, lo, hi) for x in v.split(',')):
            return f"{what} separated by commas, like {example}, each from {lo} to {hi} (or '' for none)"
    return rule


def one_of(*choices):
    def rule(v):
        if v not in choices:
            return 'one of ' + ', '.join(repr(c) for c in choices)
    return rule


def writable_folder(v, empty_ok=False):
    """A folder that exists and can be written, or that can be created (nothing is created here)."""
    if not v:
        return None if empty_ok else 'a folder path'
    p = os.path.abspath(v)
    if os.path.exists(p) and not os.path.isdir(p):
        return f"a folder ({v} is a file)"
    while not os.path.exists(p):
        p = os.path.dirname(p)
    if not os.path.isdir(p) or not os.access(p, os.W_OK | os.X_OK):
        return f"a folder that can be created and written ({p} cannot be written)"


def optional_folder(v):
    if v and not os.path.isdir(v):
        return "'' or an existing folder"


def writable_file(v):
    if v and (os.path.isdir(v) or writable_folder(os.path.dirname(os.path.abspath(v)))):
        return "'' or a file path in a folder that can be written"


def path(v):
    if not v.strip():
        return 'a path'


def dataset(v):
    if v not in ('mnist', 'fashion') and not os.path.isdir(v):
        return "'mnist', 'fashion' or a folder of class folders"


def parse_levels(v):
    """'8,5,5,5' -> (8, 5, 5, 5); ValueError if it is not whole numbers separated by commas."""
    return tuple(int(x) for x in str(v).split(','))


def levels(v):
    if v == '':
        return None  # vqvae.py: from the data
    try:
        ls = parse_levels(v)
    except ValueError:
        return 'whole numbers separated by commas, like 8,5,5,5'
    if not ls or min(ls) < 2 or max(ls) > 64 or math.prod(ls) > MAX_CODES:
        return f"whole numbers of 2 to 64 separated by commas, whose product (the codebook) is at most {MAX_CODES}"


def parse_shares(v):
    """'1,3' -> {task: weight} in the order of sequences.TASKS, for as many tasks as are given (the
    rest have none); ValueError if it is not numbers."""
    ws = [float(x) for x in str(v).split(',')]
    if len(ws) > len(TASKS):
        raise ValueError(v)
    return dict(zip(TASKS, ws))


def shares(v):
    try:
        ws = list(parse_shares(v).values())
    except ValueError:
        ws = []
    if not ws or not all(math.isfinite(w) and w >= 0 for w in ws) or sum(ws) <= 0:
        return (f"up to {len(TASKS)} numbers of at least 0 separated by commas, one per task in the order "
                f"{', '.join(TASKS)} (those left out get none), not all 0, like 1,3")


def device(v):
    import torch
    from tinyvlm.plumbing import has_mps
    kind, _, index = v.partition(':')
    if kind == 'cuda':
        if not torch.cuda.is_available():
            return "'auto' or 'cpu': this machine has no CUDA device"
        if index and (not index.isdigit() or int(index) >= torch.cuda.device_count()):
            return f"'cuda' or 'cuda:0' to 'cuda:{torch.cuda.device_count() - 1}'"
    elif v == 'mps':
        if not has_mps():
            return "'auto' or 'cpu': this machine has no Apple GPU (mps)"
    elif v not in ('auto', 'cpu'):
        return "'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'"


def dtype(v):
    if v not in ('auto', 'float32', 'bfloat16', 'float16'):
        return "'auto', 'float32', 'bfloat16' or 'float16'"


RULES = {
    # data and files
    'dataset': dataset,
    'idx_dir': optional_folder,
    'out_dir': writable_folder,
    'data_dir': lambda v: writable_folder(v, empty_ok=True),
    'prepare.py:data_dir': writable_folder,
    'train.py:data_dir': path,
    'tokenizer': path,
    'image_size': lambda v: None if v == 0 or 8 <= v <= 128 else '0 (the data set\'s own) or 8 to 128',
    'augment': integer(0, 100),
    'shift': number(0, 64),
    'rotate': number(0, 180),
    'scale': number(0, 1, hi_open=True),
    'shares': shares,
    'block_size': lambda v: None if v == 0 or 8 <= v <= 65535 else '0 (as long as needed) or 8 to 65535',
    # the tokenizer
    'kind': one_of('', 'conv', 'ink', '1d', 'mlp'),
    'depth': integer(0, 24),
    'stages': integer(1, 8),
    'quantizer': one_of('fsq', 'vq'),
    'loss': one_of('bce', 'mse'),
    'levels': levels,
    'grid': integer(0, 64),
    'hidden': lambda v: None if v == 0 or 2 <= v <= 4096 else '0 (from the data) or 2 to 4096',
    'latent_dim': integer(1, 65536),
    'tokens_per_image': integer(1, 4096),
    'codebook_size': integer(1, MAX_CODES),
    'beta': number(0, 100),
    'class_weight': number(0, 100),
    'max_epochs': integer(1),
    'min_iters': integer(0),
    'patience': integer(1),
    'kmeans_samples': integer(1),
    # the language model and its training
    'init_from': one_of('scratch', 'resume'),
    'eval_interval': integer(1),
    'log_interval': integer(1),
    'eval_iters': integer(1),
    'eval_classify': integer(1),
    'n_layer': integer(1, 256),
    'n_head': integer(1, 256),
    'n_embd': integer(1, 65536),
    'dropout': number(0, 1, hi_open=True),
    'label_weight': number(0, 1000, lo_open=True),
    'batch_size': integer(1),
    'gradient_accumulation_steps': integer(1),
    'learning_rate': number(0, 10, lo_open=True),
    'max_iters': integer(1),
    'cycles': integer(1, 100),
    'time_limit': number(0),
    'weight_decay': number(0, 10),
    'beta1': number(0, 1, hi_open=True),
    'beta2': number(0, 1, hi_open=True),
    'grad_clip': number(0),
    'ema': number(0, 1, hi_open=True),
    'tail_average': number(0, 1),
    'warmup_iters': integer(0),
    'lr_decay_iters': integer(1),
    'min_lr': number(0, 10),
    'backend': one_of('', 'gloo', 'nccl', 'mpi'),
    'device': device,
    'dtype': dtype,
    'compile': lambda v: None if v is True or v is False or v == 'auto' else "True, False or 'auto' (compile where it pays, timed here)",
    'seed': integer(0, 2 ** 63 - 1),
    'bias': None, 'muon': None, 'embed_codes': None, 'decay_lr': None, 'pipeline': None,
    'flip': None, 'latent_norm': None, 'judge': None,  # bools: the type says it all
    # using the model
    'mode': one_of('eval', 'generate', 'classify', 'complete', 'add', 'next', 'caption', 'serve'),
    'prompt': None,                     # a caption: checked against the model's characters when it is read
    'keep': integer(0, 4096),
    'host': lambda v: None if v.strip() else 'an address to listen on, like 127.0.0.1',
    'port': integer(0, 65535),
    'ckpt': None,                       # a file name in out_dir: missing files are reported when loaded
    'labels': None,                     # class names: checked against the data set's when loaded
    'image': None,                      # test indices or a file: checked when read
    'num_samples': integer(1, 10000),
    'temperature': number(0, 10),
    'sample.py:temperature': lambda v: None if v == -1 or 0 <= v <= 10 else
                             '-1 (the one the evaluation chose) or a number from 0 to 10',
    'sweep': numbers(0, 10, 'temperatures', '0.6,0.8,1.0'),
    'top_k': integer(0),
    'guidance': number(0, 100),
    'sample.py:guidance': lambda v: None if v == -1 or 0 <= v <= 100 else
                          '-1 (the one the evaluation chose) or a number from 0 to 100',
    'sweep_guidance': numbers(0, 100, 'guidance scales', '1,1.5,2'),
    'views': integer(1, 9),
    'view_threshold': number(0, 1),
    'save_npy': writable_file,
    'png_dir': lambda v: writable_folder(v, empty_ok=True),
    'png_size': integer(0, 4096),
    'reference': writable_file,
    'fidelity_samples': integer(0, 100000),
    'caption_images': integer(1, 100000),
    'next_images': integer(1, 100000),
    'fit_images': integer(0, 100000),
    'sweep_images': integer(1, 100000),
    # bench
    'repeats': integer(1),
    'n_samples': integer(1),
    'train_configs': None,              # config files: a missing one is reported when train.py reads it
    'train_window': integer(1),
    'pipeline_config': lambda v: None if not v or any(os.path.isfile(os.path.join(CONFIG, f'{s}_{v}.py'))
                                                      for s in ('vqvae', 'prepare', 'train', 'sample')) else
                       "'' (the defaults) or NAME where config/SCRIPT_NAME.py files exist, like 'speedrun'",
    'train_procs': lambda v: None if all(x.strip().isdigit() and int(x) >= 1 for x in str(v).split(',')) else
                   'process counts separated by commas, like 1,2',
}

CROSS = [  # rules over several settings of one script: (settings, rule taking their values in order)
    (('stages', 'kind', 'quantizer'), lambda s, k, q: None if s == 1 or (k in ('', 'conv') and q == 'fsq') else
     "stages above 1 need kind 'conv' and quantizer 'fsq'"),
    (('kind', 'quantizer'), lambda k, q: None if k != 'ink' or q == 'fsq' else "kind 'ink' needs quantizer 'fsq'"),
    (('latent_norm', 'quantizer'), lambda n, q: None if not n or q == 'fsq' else "latent_norm needs quantizer 'fsq'"),
    (('n_embd', 'n_head'), lambda e, h: None if e % h == 0 else f"n_embd ({e}) must be a multiple of n_head ({h})"),
    (('batch_size', 'gradient_accumulation_steps'), lambda b, s: None if b % s == 0 else
     f"batch_size ({b}) must be a multiple of gradient_accumulation_steps ({s})"),
    (('min_lr', 'learning_rate'), lambda lo, hi: None if lo <= hi else f"min_lr ({lo}) must be at most learning_rate ({hi})"),
    (('pipeline_config', 'pipeline'), lambda c, p: None if not c or p else
     "pipeline_config names the configs of a pipeline run: add --pipeline=True"),
    (('warmup_iters', 'lr_decay_iters'), lambda w, d: None if w <= d else
     f"warmup_iters ({w}) must be at most lr_decay_iters ({d}): the learning rate warms up, then decays"),
    (('device', 'dtype'), lambda d, t: "dtype 'float16' needs a GPU (device 'cuda' or 'mps'); use 'bfloat16' or "
     "'float32' on a CPU" if t == 'float16' and (d == 'cpu' or (d == 'auto' and not _has_gpu())) else None),
]


def _is_number(x, lo, hi):
    try:
        return lo <= float(x) <= hi
    except ValueError:
        return False


def _has_gpu():
    import torch
    from tinyvlm.plumbing import has_mps
    return torch.cuda.is_available() or has_mps()


def rule_of(key, script=''):
    for k in (f'{script}:{key}', key):
        if k in RULES:
            return RULES[k]
    raise KeyError(key)


def check(key, value, script=''):
    """Raise the one-line Error for a value its rule refuses."""
    rule = rule_of(key, script)
    try:
        why = rule(value) if rule else None
    except (ValueError, OSError) as e:  # a path with a NUL byte, say
        why = f"a usable value ({type(e).__name__}: {e})"
    if why:
        raise Error(f"{key}={value!r} is not allowed: {key} must be {why}")


def check_all(settings, script=''):
    """Every setting against its rule, then the rules over several settings."""
    for key, value in settings.items():
        check(key, value, script)
    for keys, rule in CROSS:
        if all(k in settings for k in keys):
            why = rule(*(settings[k] for k in keys))
            if why:
                raise Error(f"{why} (got {', '.join(f'{k}={settings[k]!r}' for k in keys)})")


EITHER = {'compile'}  # a bool, or 'auto'


def _coerce(key, old, new, where, default):
    """Check `new` against the type of `old` (the default, or what a config file set); an int may stand
    for a float; a setting of EITHER types is left to its rule. The error names the script's default."""
    if old is None or type(new) is type(old) or key in EITHER:
        return new
    if isinstance(old, float) and type(new) is int:
        return float(new)
    kind = {int: 'a whole number', float: 'a number', bool: 'True or False', str: 'a string'}.get(type(old), type(old).__name__)
    raise Error(f"{key} expects {kind} (default {default!r}), "
                f"got {type(new).__name__} {new!r} from {where}")


def read_config(path):
    """A config file's text and the settings it sets (its simple, lower-case globals)."""
    try:
        with open(path, encoding='utf-8') as f:
            source = f.read()
        ns = {}
        exec(compile(source, path, 'exec'), ns)
    except Exception as e:
        raise Error(f"config file '{path}' failed: {type(e).__name__}: {e}")
    return source, {k: v for k, v in ns.items() if not k.startswith('_') and not k.isupper() and isinstance(v, SIMPLE)}


def configure(g, argv=None):
    """Override the simple globals of `g` from argv, check them all; return the resulting {key: value}."""
    argv = sys.argv[1:] if argv is None else argv
    keys = sorted(k for k, v in g.items()  # UPPERCASE names are constants, not settings
                  if not k.startswith('_') and not k.isupper() and isinstance(v, SIMPLE))
    script = os.path.basename(str(g.get('__file__', 'this script')))
    defaults = {k: g[k] for k in keys}
    if '--help' in argv or '-h' in argv:
        print(f"python {script} [config.py ...] [--key=value ...]; the settings and their defaults:")
        for k in keys:
            print(f"  --{k}={g[k]!r}")
        sys.exit(0)  # as argparse does: asking for help is not running the script

    def put(key, value, where):
        if key not in keys:
            raise Error(f"unknown config key '{key}' from {where} for {script}; "
                        f"known keys: {', '.join(keys)}")
        g[key] = _coerce(key, g[key], value, where, defaults[key])

    for arg in argv:
        if arg.startswith('--'):
            key, eq, text = arg[2:].partition('=')
            if not eq:
                raise Error(f"expected --key=value, got '{arg}'")
            if isinstance(g.get(key), str) and key not in EITHER:  # a config file's compile='auto' may become False
                value = text  # a string setting takes the text as written (--labels=007 stays '007')
                if len(text) >= 2 and text[0] == text[-1] and text[0] in '\'"':
                    value = text[1:-1]
            else:
                try:
                    value = literal_eval(text)
                except (ValueError, SyntaxError, MemoryError, RecursionError):
                    try:  # nan and inf are floats, which the rules judge
                        value = float(text) if isinstance(g.get(key), float) else text
                    except ValueError:
                        value = text  # not a Python literal: a string, which _coerce judges
            put(key, value, arg)
        else:
            if not os.path.isfile(arg):
                raise Error(f"config file '{arg}' not found (expected a Python file of key = value lines, or "
                            f"--key=value)")
            print(f"Overriding config with {arg}:")
            source, values = read_config(arg)
            print(source)
            for key, value in values.items():
                put(key, value, arg)
    config = {k: g[k] for k in keys}
    check_all(config, script)
    return config
