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
