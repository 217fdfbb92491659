"""
Settings, nanoGPT style. Every script keeps its settings as plain module globals and then calls

    from configurator import configure
    config = configure(globals())

Each command-line argument is either a config file (plain Python, e.g. config/train_mnist_vlm_seed.py)
or --key=value. Unlike nanoGPT's exec trick, a key the script does not have, or a value of the wrong
type, is a one-line error instead of a silently ignored setting.
"""
import os
import sys
from ast import literal_eval

SIMPLE = (bool, int, float, str, type(None))


def _coerce(key, old, new, where):
    """Check `new` against the type of the default `old`; an int may stand for a float."""
    if old is None or new is None or type(new) is type(old):
        return new
    if isinstance(old, float) and type(new) is int:
        return float(new)
    raise SystemExit(f"error: {key} expects a {type(old).__name__} (default {old!r}), "
                     f"got {type(new).__name__} {new!r} from {where}")


def configure(g, argv=None):
    """Override the simple globals of `g` from argv; return the resulting {key: value} for logging."""
    argv = sys.argv[1:] if argv is None else argv
    keys = sorted(k for k, v in g.items()  # UPPERCASE names are constants, not settings
                  if not k.startswith('_') and not k.isupper() and isinstance(v, SIMPLE))
    script = os.path.basename(str(g.get('__file__', 'this script')))

    def put(key, value, where):
        if key not in keys:
            raise SystemExit(f"error: unknown config key '{key}' from {where} for {script}; "
                             f"known keys: {', '.join(keys)}")
        g[key] = _coerce(key, g[key], value, where)

    for arg in argv:
        if arg.startswith('--'):
            key, eq, text = arg[2:].partition('=')
            if not eq:
                raise SystemExit(f"error: expected --key=value, got '{arg}'")
            if isinstance(g.get(key), str):
                value = text  # a string setting takes the text as written (--digits=007 stays '007')
                if len(text) >= 2 and text[0] == text[-1] and text[0] in '\'"':
                    value = text[1:-1]
            else:
                try:
                    value = literal_eval(text)
                except (ValueError, SyntaxError):
                    value = text  # not a Python literal: a string, which _coerce judges
            put(key, value, arg)
        else:
            if not os.path.isfile(arg):
                raise SystemExit(f"error: config file '{arg}' not found (expected a Python file of "
                                 f"key = value lines, or --key=value)")
            print(f"Overriding config with {arg}:")
            with open(arg) as f:
                source = f.read()
            print(source)
            ns = {}
            try:
                exec(compile(source, arg, 'exec'), ns)
            except Exception as e:
                raise SystemExit(f"error: config file '{arg}' failed: {type(e).__name__}: {e}")
            for key, value in ns.items():
                if not key.startswith('_') and not key.isupper() and isinstance(value, SIMPLE):
                    put(key, value, arg)
    return {k: g[k] for k in keys}
